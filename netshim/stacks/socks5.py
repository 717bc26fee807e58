"""Socks5Stack: TCP and UDP through a SOCKS5 proxy (RFC 1928, RFC 1929 passwords).

The client role of :mod:`netshim.protocols.socks5`.  ``socks5://`` resolves
names here (through ``resolver``, the host network by default) and sends
the proxy an IP; ``socks5h://`` sends the name and lets the proxy resolve
it, as curl spells the two.  The proxy is reached over plain TCP, or over a
WebSocket when the URL says ``socks5+ws://`` / ``socks5h+wss://`` (a
websockify in front of the SOCKS5 server, as in the r-wasm ws-proxy); the
URL's path then names the WebSocket, e.g.
``socks5h+ws://gateway:8080/127.0.0.1:1080``.

``CONNECT`` gives a stream on the control connection itself, with real
half-close over TCP.  ``UDP ASSOCIATE`` keeps the control connection open
for the life of the UDP socket and wraps each datagram in the RFC 1928
section 7 header; it needs plain TCP to the proxy.  Reply codes become the
errors a socket gives: 0x05 ``ConnectionRefusedError``, 0x04
``EHOSTUNREACH``, 0x03 ``ENETUNREACH``, 0x06 ``TimeoutError``, 0x02 a
:class:`~netshim.policy.DestinationBlockedError` naming the destination.
"""

from __future__ import annotations

import errno
import socket
import ssl
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from .._addresses import Address, check_host, parse_ip
from .._errors import RemoteProtocolError, message_too_long, os_error
from ..policy import DestinationBlockedError
from ..protocols import socks5
from ..stack import AddrInfo, Stack, TcpStream, UdpSocket
from ..transports._url import parse_websocket_url
from ._tunnel import UNKNOWN_LOCAL, TunnelStack

__all__ = ["Socks5Stack", "error_for_reply"]

MAX_DATAGRAM = 65507
HANDSHAKE_READ = 512


def error_for_reply(code: int, host: str, port: int, proxy: str) -> OSError:
    """The exception for a failed SOCKS5 reply ``code`` to a request for ``host:port``."""
    where = f"{host}:{port} via SOCKS5 proxy {proxy}"
    try:
        name = socks5.ReplyCode(code).name
    except ValueError:
        name = f"0x{code:02x}"
    if code == socks5.ReplyCode.NOT_ALLOWED:
        return DestinationBlockedError(
            f"{host}:{port}",
            f"the SOCKS5 proxy {proxy} does not allow it (reply 0x02 NOT_ALLOWED)",
            "ask the proxy's operator to allow it",
        )
    codes: dict[int, int] = {
        socks5.ReplyCode.CONNECTION_REFUSED: errno.ECONNREFUSED,
        socks5.ReplyCode.HOST_UNREACHABLE: errno.EHOSTUNREACH,
        socks5.ReplyCode.NETWORK_UNREACHABLE: errno.ENETUNREACH,
        socks5.ReplyCode.TTL_EXPIRED: errno.ETIMEDOUT,
        socks5.ReplyCode.COMMAND_NOT_SUPPORTED: errno.EOPNOTSUPP,
        socks5.ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED: errno.EAFNOSUPPORT,
    }
    # A general failure says only that the proxy could not connect.
    return os_error(codes.get(code, errno.ECONNREFUSED), f"{where}, {name}")


class _Socks5TcpStream(TcpStream):
    """The stream after a successful CONNECT: the control connection, renamed."""

    def __init__(self, inner: TcpStream, remote: Address, early: bytes) -> None:
        self.inner = inner
        self.remote = remote
        self.early = early

    @property
    def local_address(self) -> Address:
        return UNKNOWN_LOCAL

    @property
    def remote_address(self) -> Address:
        return self.remote

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self.early:
            data, self.early = self.early[:max_bytes], self.early[max_bytes:]
            await anyio.lowlevel.checkpoint()
            return data
        return await self.inner.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self.inner.send(item)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def abort(self) -> None:
        await self.inner.abort()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return TcpStream.extra_attributes.fget(self)  # type: ignore[attr-defined,no-any-return]


class _Socks5UdpSocket(UdpSocket):
    """A UDP association: datagrams to the proxy's relay, wrapped in the RFC 1928 header."""

    def __init__(
        self, control: TcpStream, relay: UdpSocket, relay_address: Address, remote: Address | None
    ) -> None:
        self.control = control
        self.relay = relay
        self.relay_address = relay_address
        self.remote = remote
        self.closed = False
        self._broadcast = False

    @property
    def local_address(self) -> Address:
        return self.relay.local_address

    @property
    def remote_address(self) -> Address | None:
        return self.remote

    @property
    def broadcast(self) -> bool:
        return self._broadcast

    @broadcast.setter
    def broadcast(self, enabled: bool) -> None:
        self._broadcast = bool(enabled)

    async def send(self, data: bytes, address: tuple[str, int] | None = None) -> None:
        if self.closed:
            raise anyio.ClosedResourceError
        if len(data) > MAX_DATAGRAM - 262:
            raise message_too_long(len(data), MAX_DATAGRAM - 262)
        if address is None:
            if self.remote is None:
                raise os_error(
                    errno.EDESTADDRREQ, "send() needs an address on an unconnected socket"
                )
            target = self.remote
        else:
            target = TunnelStack.destination(address[0], address[1], "send")
        datagram = socks5.UdpDatagram(target[0], target[1], bytes(data))
        await self.relay.send(datagram.emit(), self.relay_address)

    async def receive(self) -> tuple[bytes, Address]:
        if self.closed:
            raise anyio.ClosedResourceError
        while True:
            packet, source = await self.relay.receive()
            if source[1] != self.relay_address[1]:
                continue
            try:
                datagram = socks5.UdpDatagram.parse(packet)
            except RemoteProtocolError:
                continue
            if datagram.fragment:
                continue  # RFC 1928 lets a client drop fragments
            return datagram.data, (datagram.host, datagram.port)

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            await self.relay.aclose()
            await self.control.aclose()


class Socks5Stack(TunnelStack):
    """TCP and UDP through a SOCKS5 proxy (see the module documentation).

    ``url`` is ``socks5://[user:password@]host:port`` (names resolved
    here), ``socks5h://...`` (names resolved by the proxy), or either with
    ``+ws`` / ``+wss`` and a path to reach the proxy through a WebSocket.
    ``transport`` carries the connection to the proxy (the host network by
    default); ``resolver`` answers ``getaddrinfo`` for ``socks5://``.
    """

    kind = "SOCKS5"

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        transport: Stack | None = None,
        resolver: Stack | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 30.0,
    ) -> None:
        if not isinstance(url, str):
            raise TypeError(f"SOCKS5 URL must be a str, not {type(url).__name__}")
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        base, _, carrier = scheme.partition("+")
        if base not in ("socks5", "socks5h") or carrier not in ("", "ws", "wss"):
            raise ValueError(
                f"SOCKS5 URL {url!r}: scheme {parts.scheme!r} is not one of socks5://, "
                "socks5h://, socks5+ws://, socks5h+ws://, socks5+wss://, socks5h+wss://"
            )
        self.remote_names = base == "socks5h"
        self.websocket = None
        if carrier:
            self.websocket = parse_websocket_url(
                f"{carrier}://{parts.netloc.rpartition('@')[2]}{parts.path or '/'}"
                + (f"?{parts.query}" if parts.query else ""),
                what="SOCKS5 URL",
            )
            self.proxy = (self.websocket.host, self.websocket.port)
        else:
            if not parts.hostname:
                raise ValueError(f"SOCKS5 URL {url!r}: no host")
            try:
                port = parts.port
            except ValueError:
                raise ValueError(
                    f"SOCKS5 URL {url!r}: bad port {parts.netloc.rpartition(':')[2]!r}"
                ) from None
            if port == 0:
                raise ValueError(f"SOCKS5 URL {url!r}: bad port 0")
            if parts.path not in ("", "/"):
                raise ValueError(
                    f"SOCKS5 URL {url!r}: a path needs socks5+ws:// (got {parts.path!r})"
                )
            self.proxy = (parts.hostname, port or 1080)
        user = username if username is not None else parts.username
        secret = password if password is not None else parts.password
        self.username = urllib.parse.unquote(user) if user is not None else None
        self.password = urllib.parse.unquote(secret) if secret is not None else None
        if self.username is not None or self.password is not None:
            # Checks the RFC 1929 lengths now rather than at the first connect.
            socks5.Credentials(self.username or "", self.password or "")
        self.resolves_remotely = self.remote_names
        self.transport = transport
        self.resolver = resolver
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        host = f"[{self.proxy[0]}]" if ":" in self.proxy[0] else self.proxy[0]
        self.url = f"{scheme}://{host}:{self.proxy[1]}" + (
            self.websocket.path if self.websocket else ""
        )

    def __repr__(self) -> str:
        return f"Socks5Stack({self.url!r})"

    def _transport(self) -> Stack:
        if self.transport is None:
            from .host import HostStack

            self.transport = HostStack()
        return self.transport

    async def getaddrinfo(
        self,
        host: str | bytes | None,
        port: str | bytes | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[AddrInfo]:
        if self.remote_names:
            return await super().getaddrinfo(host, port, family, type, proto, flags)
        if self.resolver is None:
            from .host import HostStack

            self.resolver = HostStack()
        return await self.resolver.getaddrinfo(host, port, family, type, proto, flags)

    async def _open_control(self) -> TcpStream:
        self._server_connecting()
        try:
            control = await self._connect_to_proxy()
        except (OSError, TimeoutError) as exc:
            self._server_lost(exc)
            raise
        self._server_answered()
        return control

    async def _connect_to_proxy(self) -> TcpStream:
        if self.websocket is None:
            return await self._transport().connect_tcp(*self.proxy)
        from ..transports.websocket import open_websocket
        from .websockify import WebSocketStream

        websocket = await open_websocket(
            self.websocket,
            stack=self.transport,
            subprotocols=("binary",),
            ssl_context=self.ssl_context,
        )
        return WebSocketStream(websocket, self.proxy, f"SOCKS5 proxy {self.url}")

    async def _target(self, host: str, port: int, transport: str) -> str:
        if self.remote_names or parse_ip(host) is not None:
            return host
        kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
        infos = await self.getaddrinfo(host, port, 0, kind)
        return str(infos[0][4][0])

    async def _request(
        self, control: TcpStream, command: socks5.Command, host: str, port: int
    ) -> tuple[socks5.Reply, bytes]:
        conn = socks5.Socks5Connection(socks5.Role.CLIENT)
        methods = [socks5.AuthMethod.NO_AUTHENTICATION]
        if self.username is not None:
            methods.insert(0, socks5.AuthMethod.USERNAME_PASSWORD)
        await control.send(conn.send(socks5.Greeting(tuple(methods))))
        while True:
            event = conn.next_event()
            if event is socks5.NEED_DATA:
                try:
                    data = await control.receive(HANDSHAKE_READ)
                except anyio.EndOfStream:
                    data = b""
                conn.receive_data(data)
                continue
            if isinstance(event, socks5.MethodChoice):
                if event.method == socks5.AuthMethod.NO_ACCEPTABLE:
                    raise os_error(
                        errno.EACCES,
                        f"the SOCKS5 proxy {self.url} accepts none of our authentication "
                        "methods" + ("" if self.username else " (it may want a user:password)"),
                    )
                if event.method == socks5.AuthMethod.USERNAME_PASSWORD:
                    if self.username is None:
                        raise os_error(
                            errno.EACCES, f"the SOCKS5 proxy {self.url} wants a password"
                        )
                    credentials = socks5.Credentials(self.username, self.password or "")
                    await control.send(conn.send(credentials))
                else:
                    await control.send(conn.send(socks5.Request(command, host, port)))
            elif isinstance(event, socks5.AuthResult):
                if not event.success:
                    raise os_error(
                        errno.EACCES, f"the SOCKS5 proxy {self.url} refused the username/password"
                    )
                await control.send(conn.send(socks5.Request(command, host, port)))
            elif isinstance(event, socks5.Reply):
                return event, conn.trailing_data()
            elif isinstance(event, socks5.ConnectionClosed):
                raise os_error(
                    errno.ECONNRESET, f"the SOCKS5 proxy {self.url} closed during the handshake"
                )

    async def connect_tcp(
        self, host: str, port: int, *, local_address: tuple[str, int] | None = None
    ) -> TcpStream:
        """CONNECT through the proxy; the reply's failure code becomes the error."""
        host, port = self.destination(host, port, "connect_tcp")
        if local_address is not None:
            raise os_error(errno.EADDRNOTAVAIL, "a SOCKS5 stream cannot bind a local address")
        if port == 0:
            raise os_error(errno.ECONNREFUSED, f"{host}:0")
        target = await self._target(host, port, "tcp")
        control = await self._open_control()
        try:
            with anyio.fail_after(self.connect_timeout):
                reply, early = await self._request(control, socks5.Command.CONNECT, target, port)
        except RemoteProtocolError as exc:
            await control.aclose()
            raise os_error(errno.ECONNRESET, f"SOCKS5 proxy {self.url}: {exc}") from None
        except BaseException:
            await control.aclose()
            raise
        if not reply.succeeded:
            await control.aclose()
            raise error_for_reply(reply.code, host, port, self.url)
        return _Socks5TcpStream(control, (host, port), early)

    async def open_udp(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        *,
        remote: tuple[str, int] | None = None,
        ipv6_only: bool = False,
    ) -> UdpSocket:
        """A UDP ASSOCIATE; needs plain TCP to the proxy (``EOPNOTSUPP`` over a WebSocket)."""
        if self.websocket is not None:
            raise os_error(errno.EOPNOTSUPP, "SOCKS5 UDP ASSOCIATE needs plain TCP to the proxy")
        connected = None if remote is None else self.destination(remote[0], remote[1], "open_udp")
        if connected is not None:
            connected = (await self._target(*connected, "udp"), connected[1])
        control = await self._open_control()
        try:
            with anyio.fail_after(self.connect_timeout):
                reply, _ = await self._request(control, socks5.Command.UDP_ASSOCIATE, "0.0.0.0", 0)
            if not reply.succeeded:
                raise error_for_reply(reply.code, "UDP", 0, self.url)
            relay_host = reply.host
            if parse_ip(relay_host) is None or parse_ip(relay_host).is_unspecified:  # type: ignore[union-attr]
                relay_host = check_host(self.proxy[0], "open_udp")
            bind = "::" if ":" in relay_host else "0.0.0.0"
            relay = await self._transport().open_udp(bind, 0)
        except BaseException:
            await control.aclose()
            raise
        return _Socks5UdpSocket(control, relay, (relay_host, reply.port), connected)
