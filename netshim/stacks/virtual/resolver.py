"""Names on the virtual network: the DNS server and each host's stub resolver.

The server runs on the network's ``resolver`` host as callbacks (no task): a
UDP socket on port 53 that answers each query as it arrives, and a TCP
listener on port 53 whose connections are served as their bytes arrive.  Both
answer from the network's zone with :func:`netshim.protocols.dns.answer_query`.

Each host's :func:`getaddrinfo` behaves like glibc's with a plain
``/etc/hosts`` and ``resolv.conf``: ``localhost`` and the host's own name are
answered locally; other names are asked of the host's DNS servers in real DNS
messages over virtual UDP (AAAA and A), retried over TCP when the answer is
truncated, with glibc's timeout and attempts.  So the queries cross links,
suffer their faults and show up in captures like real ones.  Errors are
glibc's: ``EAI_NONAME`` for a name that does not exist, ``EAI_NODATA`` for a
name without addresses, ``EAI_AGAIN`` when no server answers.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import anyio

from ..._addresses import Address, IPAddress, parse_ip
from ..._addrinfo import resolve_addrinfo
from ..._errors import RemoteProtocolError, name_not_known, name_temporarily_unresolvable
from ..._ip_header import DEFAULT_HEADER, IpHeader
from ...dns._resolver import addresses_by_dns
from ...protocols.dns import (
    DnsResponse,
    DnsTcpFramer,
    Zone,
    answer_query,
    build_query,
    parse_response,
)
from ...stack import AddrInfo
from .link import LinkConditions
from .udp import VirtualUdpSocket

if TYPE_CHECKING:
    from .host import VirtualHost

__all__ = ["getaddrinfo", "getaddrinfo_now", "start_dns_server"]

DNS_PORT = 53
_RCODE_NXDOMAIN = 3
_PERFECT: Final = LinkConditions()
_IPV4_ANY: Final = ipaddress.IPv4Address("0.0.0.0")
_IPV6_ANY: Final = ipaddress.IPv6Address("::")


class _DnsUdpServer(VirtualUdpSocket):
    """A UDP socket that answers each query the moment it is delivered."""

    zone: Zone

    def deliver(
        self, at: float, data: bytes, source: Address, header: IpHeader = DEFAULT_HEADER
    ) -> None:
        if self.closed:
            return
        reply = answer_query(self.zone, data, max_udp_size=512)
        if reply is None:
            return
        ip = parse_ip(source[0])
        if ip is None:
            return
        # If the asker became unreachable, a real server would not notice either.
        with contextlib.suppress(OSError):
            self.host.route_datagram(self, ip, source[1], reply)


def _tcp_service(zone: Zone) -> type:
    class DnsTcpService:
        """One DNS-over-TCP connection (RFC 7766): answers each framed query in turn."""

        def __init__(self) -> None:
            self.framer = DnsTcpFramer()

        def data_received(self, data: bytes) -> bytes:
            try:
                self.framer.receive_data(data)
                replies = []
                while (message := self.framer.next_message()) is not None:
                    reply = answer_query(zone, message, max_udp_size=None)
                    if reply is not None:
                        replies.append(DnsTcpFramer.frame(reply))
            except RemoteProtocolError:
                return b""
            return b"".join(replies)

        def eof_received(self) -> bool:
            return True

    return DnsTcpService


def start_dns_server(host: VirtualHost, zone: Zone) -> None:
    """Serve ``zone`` on port 53 of ``host``, over UDP and TCP, for both families."""
    server = host.open_udp_now(None, DNS_PORT, socket_class=_DnsUdpServer)
    assert isinstance(server, _DnsUdpServer)
    server.zone = zone
    host.listen_now(None, DNS_PORT, service=_tcp_service(zone))


class _UnansweredError(Exception):
    """No server gave a usable answer."""


async def _ask_udp(
    host: VirtualHost, server: IPAddress, payload: bytes, query_id: int, name: str, qtype: str
) -> DnsResponse | None:
    network = host.network
    sock = host.open_udp_now("0.0.0.0" if server.version == 4 else "::", 0)
    try:
        sock.connect((str(server), DNS_PORT))
        await sock.send(payload)
        with anyio.move_on_after(network.dns_timeout):
            while True:
                data, _ = await sock.receive()
                try:
                    return parse_response(data, query_id=query_id, name=name, rtype=qtype)
                except RemoteProtocolError:
                    continue  # Not our answer (or garbage); keep waiting, as glibc does.
        return None
    except OSError:
        return None
    finally:
        sock.close_now()


async def _ask_tcp(
    host: VirtualHost, server: IPAddress, payload: bytes, query_id: int, name: str, qtype: str
) -> DnsResponse | None:
    network = host.network
    with anyio.move_on_after(network.dns_timeout):
        try:
            stream = await host.connect_tcp(str(server), DNS_PORT)
        except OSError:
            return None
        async with stream:
            framer = DnsTcpFramer()
            try:
                await stream.send(DnsTcpFramer.frame(payload))
                while True:
                    framer.receive_data(await stream.receive())
                    message = framer.next_message()
                    if message is not None:
                        return parse_response(message, query_id=query_id, name=name, rtype=qtype)
            except (OSError, anyio.EndOfStream, RemoteProtocolError):
                return None
    return None


def _servers(host: VirtualHost) -> list[IPAddress]:
    """The DNS servers ``host`` asks, in order: over a family it has, IPv4 first as glibc lists."""
    servers = [ip for text in host.resolvers if (ip := parse_ip(text)) is not None]
    own = host.ips(4) + host.ips(6)
    return [ip for ip in servers if ip.is_loopback or any(o.version == ip.version for o in own)]


async def query(host: VirtualHost, name: str, qtype: str) -> DnsResponse:
    """Ask ``host``'s DNS servers for ``name``/``qtype`` as glibc's stub resolver does."""
    network = host.network
    servers = _servers(host)
    for _ in range(max(1, network.dns_attempts)):
        for server in servers:
            query_id = network.rng.randrange(65536)
            payload = build_query(name, qtype, query_id)
            response = await _ask_udp(host, server, payload, query_id, name, qtype)
            if response is not None and response.truncated:
                response = await _ask_tcp(host, server, payload, query_id, name, qtype)
            if response is not None:
                return response
    raise _UnansweredError(name)


async def reverse_lookup(host: VirtualHost, ip: str) -> str:
    """The PTR name of ``ip``, or ``socket.herror`` as gethostbyaddr() raises."""
    address = parse_ip(ip)
    if address is None:
        raise socket.gaierror(socket.EAI_NONAME, f"Name or service not known ({ip!r})")
    if address.is_loopback:
        return "localhost"
    if host.owns(address) and not address.is_unspecified:
        return host.name
    try:
        response = await query(host, address.reverse_pointer, "PTR")
    except _UnansweredError:
        raise socket.herror(2, f"Host name lookup failure ({ip})") from None
    names = [answer.value for answer in response.answers if answer.rtype == "PTR"]
    if response.rcode != 0 or not names:
        raise socket.herror(1, f"Unknown host ({ip})")
    return names[0].rstrip(".")


async def _lookup(
    host: VirtualHost,
    name: str,
    family: int,
    ask_servers: Callable[[VirtualHost, str, str], Awaitable[DnsResponse]] = query,
) -> tuple[list[IPAddress], str]:
    qtypes = []
    prefer_ipv6 = bool(host.ips(6))
    if family in (0, socket.AF_INET6):
        qtypes.append("AAAA")
    if family in (0, socket.AF_INET):
        qtypes.append("A")
    if not prefer_ipv6:
        qtypes.reverse()

    async def ask(name: str, qtype: str) -> DnsResponse:
        # The first failure ends the lookup: one wait for a silent server, not one per type.
        try:
            response = await ask_servers(host, name, qtype)
        except _UnansweredError:
            raise name_temporarily_unresolvable(name) from None
        if response.rcode == _RCODE_NXDOMAIN:
            raise name_not_known(name)
        if response.rcode != 0:
            raise name_temporarily_unresolvable(name)
        return response

    return await addresses_by_dns(name, qtypes, ask)


async def getaddrinfo(
    host: VirtualHost,
    name: str | None,
    port: int,
    family: int,
    type: int,
    proto: int,
    flags: int,
    service_kinds: tuple[int, ...] | None = None,
    ask_servers: Callable[[VirtualHost, str, str], Awaitable[DnsResponse]] = query,
) -> list[AddrInfo]:
    """``socket.getaddrinfo`` on ``host`` (arguments already checked).

    ``ask_servers`` sends one DNS query (:func:`query`, or :func:`_query_now`
    for :func:`getaddrinfo_now`).
    """

    async def lookup(name: str, family: int) -> tuple[list[IPAddress], str]:
        if name == host.name:
            return host.ips(6) + host.ips(4), name
        return await _lookup(host, name, family, ask_servers)

    return await resolve_addrinfo(lookup, name, port, family, type, proto, flags, service_kinds)


class _CannotAnswerNowError(Exception):
    """A query would have to wait, or would be seen: ask over the network instead."""


def _first_server_now(host: VirtualHost) -> tuple[IPAddress, Zone] | None:
    """The server :func:`query` asks first and its zone, when nothing could delay or see its answer.

    That is: nobody observes the network, the link to the server is perfect
    (no partition, delay, loss, duplication or reordering) and the server is
    this network's own DNS server, listening; then :func:`query` would have
    its answer on the first try, with nothing in between.
    """
    network = host.network
    if network._observers:
        return None
    servers = _servers(host)
    if not servers:
        return None
    server = servers[0]
    try:
        server_host = host.route(server, DNS_PORT)
    except OSError:
        return None
    link = network.link(host, server_host)
    if link.partitioned or link.conditions != _PERFECT:
        return None
    listening = server_host._find_udp_socket(server, DNS_PORT)
    if not isinstance(listening, _DnsUdpServer) or listening.closed:
        return None
    return server, listening.zone


async def _query_now(host: VirtualHost, name: str, qtype: str) -> DnsResponse:
    """:func:`query`'s answer computed at once (see :func:`_first_server_now`); never waits."""
    first = _first_server_now(host)
    if first is None:
        raise _CannotAnswerNowError
    server, zone = first
    network = host.network
    # What query() would draw and bind, so that the network's random draws
    # and ephemeral ports go on as if it had asked over UDP.
    query_id = network.rng.randrange(65536)
    if server.version == 4:
        host.release(host.bind("udp", _IPV4_ANY, 0))
    else:
        host.release(host.bind("udp", _IPV6_ANY, 0, dual=True))
    payload = build_query(name, qtype, query_id)
    reply = answer_query(zone, payload, max_udp_size=512)
    if reply is None:
        raise _CannotAnswerNowError
    response = parse_response(reply, query_id=query_id, name=name, rtype=qtype)
    if response.truncated:
        raise _CannotAnswerNowError  # query() retries over TCP: let it
    return response


def getaddrinfo_now(
    host: VirtualHost,
    name: str | None,
    port: int,
    family: int,
    type: int,
    proto: int,
    flags: int,
    service_kinds: tuple[int, ...] | None = None,
) -> list[AddrInfo] | None:
    """:func:`getaddrinfo` answered at once, in any thread, or None when a query would wait.

    The same answer and errors, from the same zone, when the first DNS server
    answers over a perfect link nobody observes (see :func:`_first_server_now`).
    """

    coroutine = getaddrinfo(
        host, name, port, family, type, proto, flags, service_kinds, ask_servers=_query_now
    )
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    except _CannotAnswerNowError:
        return None
    coroutine.close()  # it tried to wait: nothing here does, but never block a caller
    return None
