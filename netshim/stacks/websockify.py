"""WebsockifyStack: one WebSocket per TCP connection, as emscripten's SOCKFS and websockify use.

Two conventions, both with the ``binary`` subprotocol:

* **path per destination** (``ws://proxy:port/prefix/``): connecting to
  ``host:port`` opens ``ws://proxy:port/prefix/host:port``, as SOCKFS and
  the r-wasm ws-proxy do (our gateway's wsproxy mode);
* **fixed target** (``ws://proxy:port/?token=T``): a websockify with a
  token file (or a plain ``websockify PORT TARGET``) decides the
  destination; whatever ``connect_tcp`` is given, the stream goes there.

A WebSocket has no half-close, so :meth:`send_eof` closes it and the reply
that had not arrived yet is lost.  The server's close code becomes the
error: a normal close is the end of the stream, anything else
``ConnectionResetError`` (``ConnectionRefusedError`` when the server's reason
says the destination refused).
"""

from __future__ import annotations

import errno
import ssl
import urllib.parse
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

from .._addresses import Address
from .._errors import error_from_text, os_error
from ..stack import Stack, TcpStream, UdpSocket
from ..transports._url import WebSocketEndpoint, parse_websocket_url
from ._tunnel import UNKNOWN_LOCAL, ByteBuffer, TunnelStack

if TYPE_CHECKING:
    from ..transports.websocket import ClientWebSocket

__all__ = ["WebSocketStream", "WebsockifyStack"]


def _close_error(websocket: ClientWebSocket, where: str) -> OSError | None:
    """The error a WebSocket's close stands for; ``None`` for a normal end of stream."""
    received = websocket.protocol.close_rcvd
    if received is None or received.code in (1000, 1001, 1005):
        if received is None and not websocket.protocol.close_sent:
            # The TCP connection ended without a closing handshake.
            return os_error(errno.ECONNRESET, where)
        return None
    reason = received.reason or ""
    named = error_from_text(reason)
    if named is not None:
        # netshim's gateway closes with the error it met: hand over the same one.
        return named
    if "refused" in reason.lower() or "111" in reason:
        return os_error(errno.ECONNREFUSED, f"{where}: {reason}")
    if "unreachable" in reason.lower():
        return os_error(errno.EHOSTUNREACH, f"{where}: {reason}")
    return os_error(errno.ECONNRESET, f"{where}: WebSocket close {received.code} {reason}".strip())


class WebSocketStream(TcpStream):
    """A TCP stream carried by one WebSocket of binary messages."""

    def __init__(self, websocket: ClientWebSocket, remote: Address, where: str) -> None:
        self.websocket = websocket
        self.remote = remote
        self.where = where
        self.buffer = ByteBuffer()
        self.closed = False
        self.eof_sent = False

    def __repr__(self) -> str:
        return f"<WebSocketStream to {self.remote[0]}:{self.remote[1]} via {self.where}>"

    @property
    def local_address(self) -> Address:
        return UNKNOWN_LOCAL

    @property
    def remote_address(self) -> Address:
        return self.remote

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self.closed:
            raise anyio.ClosedResourceError
        while not self.buffer.ready:
            message = await self.websocket.receive()
            if self.closed:
                raise anyio.ClosedResourceError
            if message is None:
                error = _close_error(self.websocket, self.where)
                if error is None:
                    self.buffer.eof = True
                else:
                    self.buffer.error = error
            else:
                self.buffer.push(message)
        await anyio.lowlevel.checkpoint()
        return self.buffer.take(max_bytes)

    async def send(self, item: bytes) -> None:
        if self.closed:
            raise anyio.ClosedResourceError
        if self.eof_sent:
            raise os_error(errno.EPIPE, "send() after send_eof()")
        if self.websocket.closed:
            raise os_error(errno.EPIPE, self.where)
        if item:
            await self.websocket.send(bytes(item))

    async def send_eof(self) -> None:
        if self.closed:
            raise anyio.ClosedResourceError
        if not self.eof_sent:
            self.eof_sent = True
            await self.websocket.aclose()

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            await self.websocket.aclose()

    async def abort(self) -> None:
        if not self.closed:
            self.closed = True
            await self.websocket.aclose(1011, "aborted")


class WebsockifyStack(TunnelStack):
    """TCP through websockify-style WebSocket proxies (see the module documentation).

    ``transport`` is the stack the WebSocket's TCP connection uses (the
    host network by default).  UDP is not carried (``EOPNOTSUPP``).
    """

    kind = "websockify"

    def __init__(
        self,
        url: str,
        *,
        transport: Stack | None = None,
        ssl_context: ssl.SSLContext | None = None,
        headers: dict[str, str] | None = None,
        open_timeout: float = 10.0,
    ) -> None:
        self.endpoint: WebSocketEndpoint = parse_websocket_url(
            url,
            schemes={"ws": False, "wss": True, "websockify": False, "websockifys": True},
            what="websockify URL",
        )
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        self.fixed_target = "token" in query
        if not open_timeout > 0:
            raise ValueError(f"open_timeout must be positive, got {open_timeout!r}")
        self.transport = transport
        self.ssl_context = ssl_context
        self.headers = dict(headers or {})
        self.open_timeout = open_timeout
        self.url = self.endpoint.url

    def __repr__(self) -> str:
        return f"WebsockifyStack({self.url!r})"

    def _endpoint_for(self, host: str, port: int) -> WebSocketEndpoint:
        if self.fixed_target:
            return self.endpoint
        path, _, query = self.endpoint.path.partition("?")
        if not path.endswith("/"):
            path += "/"
        spelled = f"[{host}]" if ":" in host else host
        target = urllib.parse.quote(f"{spelled}:{port}", safe="[]:")
        return self.endpoint.with_path(path + target + (f"?{query}" if query else ""))

    async def connect_tcp(
        self, host: str, port: int, *, local_address: tuple[str, int] | None = None
    ) -> TcpStream:
        """Open one WebSocket for a connection to ``host:port``.

        websockify connects after the upgrade, so a refusal shows on the first
        ``receive`` (as ``ECONNREFUSED`` or ``ECONNRESET``); netshim's gateway
        connects first and refuses the upgrade, and the error it names
        (``PermissionError`` for its policy, ``ConnectionRefusedError``,
        ``socket.gaierror`` ...) is raised here.  Any other refused upgrade
        is ``ConnectionRefusedError``.
        """
        from ..transports.websocket import WebSocketHandshakeError, open_websocket

        host, port = self.destination(host, port, "connect_tcp")
        if local_address is not None:
            raise os_error(errno.EADDRNOTAVAIL, "a websockify stream cannot bind a local address")
        if port == 0:
            raise os_error(errno.ECONNREFUSED, f"{host}:0")
        endpoint = self._endpoint_for(host, port)
        self._server_connecting()
        try:
            websocket = await open_websocket(
                endpoint,
                stack=self.transport,
                subprotocols=("binary",),
                headers=self.headers,
                ssl_context=self.ssl_context,
                open_timeout=self.open_timeout,
            )
        except WebSocketHandshakeError as exc:
            # netshim's gateway connects before it answers the upgrade and
            # names the error it met in the body ("[Errno 13] netshim policy
            # refused ..."): raise that, as Wisp and SOCKS5 do.
            named = error_from_text(exc.body)
            if named is None:
                self._server_lost(exc)
                raise
            self._server_answered()
            raise named from exc
        except (OSError, TimeoutError) as exc:
            self._server_lost(exc)
            raise
        self._server_answered()
        return WebSocketStream(websocket, (host, port), f"{host}:{port} via {self.url}")

    async def open_udp(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        *,
        remote: tuple[str, int] | None = None,
        ipv6_only: bool = False,
    ) -> UdpSocket:
        """Always ``OSError(EOPNOTSUPP)``: websockify carries TCP only."""
        raise os_error(errno.EOPNOTSUPP, "websockify carries TCP only, no UDP")
