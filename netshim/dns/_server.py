"""A DNS server on any stack: a zone, a request handler, or forwarding to an upstream.

:func:`serve` binds UDP and TCP on the same port of a stack and answers each
query with :func:`netshim.protocols.dns.answer_query`, so wildcards, CNAME
chains, negative answers, EDNS0 and truncation (then the client retries over
TCP) behave the same whichever way the answer was produced.

Untrusted input is bounded, never fatal: a message that is not a query is
dropped, one that does not parse gets FORMERR; a handler that raises gets
SERVFAIL for that query only; at most ``max_in_flight`` UDP queries wait for
a handler or an upstream at once and further ones are dropped (the client
retries, as it would after loss); at most ``max_connections`` TCP
connections are served, each idle at most :data:`TCP_IDLE_TIMEOUT` seconds
with at most two messages buffered (:class:`~netshim.protocols.dns.DnsTcpFramer`).
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import logging
import random
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Literal, TypeAlias

import anyio
import anyio.abc
from dnslib import QTYPE, DNSRecord

from .._addresses import Address
from .._errors import RemoteProtocolError
from ..protocols.dns import (
    CLASSIC_UDP_SIZE,
    HEADER_SIZE,
    DnsTcpFramer,
    Zone,
    answer_query,
)
from ..stack import Stack, TcpListener, TcpStream, UdpSocket
from ._resolver import format_server, parse_server

__all__ = ["DnsServer", "Handler", "Record", "Request", "serve"]

# RFC 7766 section 6.2.3: a server should close idle connections; "on the
# order of seconds", and common servers use 10.
TCP_IDLE_TIMEOUT: Final = 10.0
# Queries waiting on a handler or upstream at once.  Each holds one message
# (at most 64 KiB, usually under 100 bytes) and one task; beyond this a flood
# is dropped, which UDP clients handle as loss.
logger = logging.getLogger("netshim.dns")

DEFAULT_MAX_IN_FLIGHT: Final = 256
DEFAULT_MAX_CONNECTIONS: Final = 128
# How long a forwarded query waits for the upstream: below a stub resolver's
# usual 5-second try, so the client hears SERVFAIL rather than nothing.
UPSTREAM_TIMEOUT: Final = 3.0

_RCODE_MASK: Final = 0x000F
# Errors after which a UDP socket will never receive again.
_SOCKET_GONE: Final = frozenset({errno.ENETDOWN, errno.EBADF, errno.ENOTSOCK})
_NOERROR: Final = 0
_SERVFAIL: Final = 2
_NXDOMAIN: Final = 3


@dataclass(frozen=True, slots=True)
class Request:
    """One valid query as a handler sees it.

    ``name`` is lower-case without the trailing dot; ``type`` the mnemonic
    (``"A"``, ``"TYPE65280"``); ``client`` the asker's address; ``message``
    the raw query.
    """

    name: str
    type: str
    client: Address
    transport: Literal["udp", "tcp"]
    message: bytes


@dataclass(frozen=True, slots=True)
class Record:
    """A record a handler answers with: rdata as zone-file text, as :meth:`Zone.add` takes.

    ``name`` defaults to the name asked.
    """

    type: str
    value: str
    ttl: int = 300
    name: str | None = None


HandlerResult: TypeAlias = Sequence[Record] | Zone | bytes | None
Handler: TypeAlias = Callable[[Request], "Awaitable[HandlerResult] | HandlerResult"]

_EMPTY_ZONE: Final = Zone()


def _with_rcode(reply: bytes, rcode: int) -> bytes:
    (flags,) = struct.unpack_from("!H", reply, 2)
    return reply[:2] + struct.pack("!H", (flags & ~_RCODE_MASK) | rcode) + reply[4:]


def _rcode(reply: bytes) -> int:
    return reply[3] & _RCODE_MASK


class DnsServer:
    """A running DNS server; use it as an async context manager (see :func:`serve`)."""

    def __init__(
        self,
        stack: Stack,
        source: Zone | Handler,
        host: str | None,
        port: int,
        *,
        upstream: str | None,
        max_in_flight: int,
        max_connections: int,
    ) -> None:
        self.stack = stack
        self.zone = source if isinstance(source, Zone) else None
        self.handler: Handler | None = None if isinstance(source, Zone) else source
        if self.handler is not None and not callable(self.handler):
            raise TypeError(f"serve() takes a Zone or a handler, not {type(source).__name__}")
        self.host = host
        self.requested_port = port
        self.upstream = parse_server(upstream) if upstream is not None else None
        self.max_in_flight = max_in_flight
        self.max_connections = max_connections
        self.queries = 0
        self.dropped = 0
        self.errors = 0
        self._in_flight = 0
        self._connections = 0
        self._udp: UdpSocket | None = None
        self._tcp: TcpListener | None = None
        self._group: anyio.abc.TaskGroup | None = None
        self._rng = random.SystemRandom()

    def __repr__(self) -> str:
        where = f"{self.address[0]}:{self.address[1]}" if self._udp else "not running"
        mode = "zone" if self.zone is not None else "handler"
        upstream = f" -> {format_server(self.upstream)}" if self.upstream else ""
        return f"<DnsServer {mode} on {where}{upstream}, {self.queries} queries>"

    @property
    def address(self) -> Address:
        """``(ip, port)`` the server is bound to (the real port when 0 was asked)."""
        if self._udp is None:
            raise RuntimeError("the server is not running")
        return self._udp.local_address

    @property
    def port(self) -> int:
        return self.address[1]

    async def __aenter__(self) -> DnsServer:
        await self._bind()
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group = group
        assert self._udp is not None
        assert self._tcp is not None
        group.start_soon(self._serve_udp, self._udp, group)
        group.start_soon(self._serve_tcp, self._tcp, group)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        group, self._group = self._group, None
        await self.aclose()
        if group is None:
            return None
        group.cancel_scope.cancel()
        return await group.__aexit__(kind, value, traceback)

    async def aclose(self) -> None:
        """Stop listening (idempotent); a running ``async with`` block also cancels its tasks."""
        udp, tcp, self._tcp = self._udp, self._tcp, None
        with anyio.CancelScope(shield=True):
            if tcp is not None:
                await tcp.aclose()
            if udp is not None:
                await udp.aclose()

    async def _bind(self) -> None:
        host = self.host if self.host is not None else "0.0.0.0"
        # UDP and TCP must share the port; with port 0 the UDP port is chosen
        # first and TCP may find it taken, so try a few times.
        for _ in range(16):
            udp = await self.stack.open_udp(host, self.requested_port)
            try:
                self._tcp = await self.stack.listen_tcp(host, udp.local_address[1])
            except OSError:
                await udp.aclose()
                if self.requested_port:
                    raise
                continue
            self._udp = udp
            return
        raise OSError("could not find a port free for both UDP and TCP")

    # -- answering ------------------------------------------------------------

    def _answer_now(self, message: bytes, transport: Literal["udp", "tcp"]) -> bytes | None:
        """The reply when it needs no waiting, else ``None`` (and ``None`` for a dropped query).

        Only a zone without an upstream answers everything at once.
        """
        if self.zone is None or self.upstream is not None:
            return None
        return answer_query(
            self.zone, message, max_udp_size=CLASSIC_UDP_SIZE if transport == "udp" else None
        )

    async def answer(
        self, message: bytes, client: Address, transport: Literal["udp", "tcp"]
    ) -> bytes | None:
        """The reply to ``message`` from ``client``, or ``None`` to send nothing."""
        max_udp = CLASSIC_UDP_SIZE if transport == "udp" else None
        if self.zone is not None:
            reply = answer_query(self.zone, message, max_udp_size=max_udp)
            if reply is not None and self.upstream is not None and _rcode(reply) == _NXDOMAIN:
                return await self._forward(message, transport) or reply
            return reply
        # Validate with an empty zone: errors come back as they are, a valid
        # query comes back NXDOMAIN, which is also the reply when nobody knows.
        fallback = answer_query(_EMPTY_ZONE, message, max_udp_size=max_udp)
        if fallback is None or _rcode(fallback) != _NXDOMAIN:
            return fallback
        request = _request(message, client, transport)
        if request is None:
            return fallback
        assert self.handler is not None
        try:
            result = self.handler(request)
            if inspect.isawaitable(result):
                result = await result
        except Exception:
            # One bad query must not stop the server; the client hears SERVFAIL.
            self.errors += 1
            return _with_rcode(fallback, _SERVFAIL)
        if result is None:
            if self.upstream is not None:
                return await self._forward(message, transport) or _with_rcode(fallback, _SERVFAIL)
            return fallback
        if isinstance(result, bytes | bytearray):
            reply = bytes(result)
            if len(reply) < HEADER_SIZE:
                self.errors += 1
                return _with_rcode(fallback, _SERVFAIL)
            return message[:2] + reply[2:]
        if isinstance(result, Zone):
            return answer_query(result, message, max_udp_size=max_udp)
        records = list(result)
        if not records:
            return _with_rcode(fallback, _NOERROR)
        zone = Zone()
        try:
            for record in records:
                zone.add(record.name or request.name, record.type, record.value, record.ttl)
        except (ValueError, TypeError):
            self.errors += 1
            return _with_rcode(fallback, _SERVFAIL)
        return answer_query(zone, message, max_udp_size=max_udp)

    async def _forward(self, message: bytes, transport: Literal["udp", "tcp"]) -> bytes | None:
        """Relay ``message`` to the upstream and its answer back, or ``None`` on failure."""
        assert self.upstream is not None
        query_id = self._rng.randrange(65536)
        outgoing = struct.pack("!H", query_id) + message[2:]
        reply: bytes | None = None
        with anyio.move_on_after(UPSTREAM_TIMEOUT):
            try:
                if transport == "udp":
                    reply = await self._forward_udp(outgoing, query_id)
                    if reply is not None and reply[2] & 0x02 == 0:
                        return message[:2] + reply[2:]
                reply = await self._forward_tcp(outgoing, query_id)
            except (OSError, RemoteProtocolError, anyio.EndOfStream):
                return None
        if reply is None:
            return None
        return message[:2] + reply[2:]

    async def _forward_udp(self, outgoing: bytes, query_id: int) -> bytes | None:
        assert self.upstream is not None
        local = "::" if ":" in self.upstream[0] else "0.0.0.0"
        async with await self.stack.open_udp(local, 0, remote=self.upstream) as sock:
            await sock.send(outgoing)
            while True:
                data, _ = await sock.receive()
                if len(data) >= HEADER_SIZE and data[:2] == outgoing[:2] and data[2] & 0x80:
                    return data

    async def _forward_tcp(self, outgoing: bytes, query_id: int) -> bytes | None:
        assert self.upstream is not None
        stream = await self.stack.connect_tcp(*self.upstream)
        async with stream:
            await stream.send(DnsTcpFramer.frame(outgoing))
            framer = DnsTcpFramer()
            while True:
                framer.receive_data(await stream.receive())
                message = framer.next_message()
                if message is not None:
                    return message if message[:2] == outgoing[:2] else None

    # -- UDP ------------------------------------------------------------------

    async def _serve_udp(self, sock: UdpSocket, group: anyio.abc.TaskGroup) -> None:
        while True:
            try:
                data, client = await sock.receive()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            except OSError as exc:
                if exc.errno in _SOCKET_GONE:
                    # The network under the socket is gone (an IpStack whose
                    # link closed): retrying would spin.
                    logger.info("dns-server-stopped reason=%r", str(exc))
                    return
                continue  # An ICMP error from an earlier reply; nothing to do.
            self.queries += 1
            reply = self._answer_now(data, "udp")
            if reply is not None:
                await self._send_udp(sock, reply, client)
            elif self.zone is not None and self.upstream is None:
                self.dropped += 1  # answer_query says: not a query at all.
            elif self._in_flight >= self.max_in_flight:
                self.dropped += 1
            else:
                self._in_flight += 1
                group.start_soon(self._answer_udp, sock, data, client)

    async def _answer_udp(self, sock: UdpSocket, data: bytes, client: Address) -> None:
        try:
            reply = await self.answer(data, client, "udp")
            if reply is not None:
                await self._send_udp(sock, reply, client)
            else:
                self.dropped += 1
        finally:
            self._in_flight -= 1

    @staticmethod
    async def _send_udp(sock: UdpSocket, reply: bytes, client: Address) -> None:
        # A client that vanished, or a socket closed under us, is not our failure.
        with contextlib.suppress(OSError, anyio.ClosedResourceError, anyio.BrokenResourceError):
            await sock.send(reply, client)

    # -- TCP ------------------------------------------------------------------

    async def _serve_tcp(self, listener: TcpListener, group: anyio.abc.TaskGroup) -> None:
        while True:
            try:
                stream = await listener.accept()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            except OSError as exc:
                if exc.errno in _SOCKET_GONE:
                    logger.info("dns-server-stopped reason=%r", str(exc))
                    return
                continue  # A connection that failed before it was accepted.
            if self._connections >= self.max_connections:
                self.dropped += 1
                await stream.aclose()
                continue
            self._connections += 1
            group.start_soon(self._serve_connection, stream)

    async def _serve_connection(self, stream: TcpStream) -> None:
        framer = DnsTcpFramer()
        client = stream.remote_address
        try:
            async with stream:
                while True:
                    data: bytes | None = None
                    with anyio.move_on_after(TCP_IDLE_TIMEOUT):
                        try:
                            data = await stream.receive()
                        except anyio.EndOfStream:
                            data = b""
                    if not data:
                        return  # Idle too long (None), or the client is done (b"").
                    framer.receive_data(data)
                    while (message := framer.next_message()) is not None:
                        self.queries += 1
                        reply = self._answer_now(message, "tcp")
                        if reply is None:
                            reply = await self.answer(message, client, "tcp")
                        if reply is not None:
                            await stream.send(DnsTcpFramer.frame(reply))
        except (OSError, RemoteProtocolError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.errors += 1
        finally:
            self._connections -= 1


def _request(message: bytes, client: Address, transport: Literal["udp", "tcp"]) -> Request | None:
    try:
        record = DNSRecord.parse(message)
        question = record.questions[0]
        name = str(question.qname).rstrip(".").lower()
        return Request(name, QTYPE[question.qtype], client, transport, message)
    except Exception:
        # answer_query accepted it, so this is only a defence in depth.
        return None


def serve(
    stack: Stack,
    handler_or_zone: Zone | Handler,
    host: str | None = None,
    port: int = 53,
    *,
    upstream: str | None = None,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> DnsServer:
    """A DNS server on ``stack`` at ``host:port``, UDP and TCP; use it with ``async with``.

    ``handler_or_zone`` is a :class:`~netshim.protocols.dns.Zone` to answer
    from, or a handler called with a :class:`Request` (plain or async) that
    returns a list of :class:`Record` (an empty list: the name exists without
    records of that type), a :class:`Zone` to answer from, a whole response
    message as bytes (its id is set to the query's), or ``None`` for "not
    mine": NXDOMAIN, or with ``upstream`` the upstream's answer.  With a zone,
    ``upstream`` answers the names the zone does not hold, as dnsmasq
    forwards what is not local.  ``upstream`` is ``"ip"`` or ``"ip:port"``.

    ``host`` ``None`` means every IPv4 address; port 0 picks one free for
    both UDP and TCP (see :attr:`DnsServer.port`).
    """
    return DnsServer(
        stack,
        handler_or_zone,
        host,
        port,
        upstream=upstream,
        max_in_flight=max_in_flight,
        max_connections=max_connections,
    )
