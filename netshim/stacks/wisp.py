"""WispStack: TCP and UDP through one multiplexed WebSocket to a Wisp server.

The client role of :mod:`netshim.protocols.wisp` over
:mod:`netshim.transports.websocket`.  One WebSocket carries every stream;
it opens on first use and, if it drops, the next new stream opens a fresh
one (streams that were open on the old one fail with
``ConnectionResetError``).

Nobody owns a background task.  Whichever task is waiting for something
(bytes on its stream, credit to send, a confirmation) takes the WebSocket's
receive side, reads one message, hands it to the stream it belongs to, and
lets the next waiter look.  Because anyio's locks are fair, every waiter
gets its turn; because nothing runs between calls, the stack works the
same under asyncio, trio and the socket shim's engine, and leaks nothing
when a program simply stops using it.  The cost is that bytes for a stream
nobody reads wait in that stream's buffer: Wisp has no per-stream window
from server to client, as in every Wisp client.

Where the WebSocket calls us for each message (JavaScript's, in Pyodide:
the host's event loop owns that socket and reads it whatever Python does),
there is nothing to take turns at: each message is dispatched as it arrives
and waiters only wait for the dispatch.  Streams there also offer
``receive_nowait``, ``send_nowait`` and a readable callback, so that
netshim's asyncio transports move a request and its answer with no task
switch of their own (see :mod:`netshim.aio._transports`).

Flow control is the server's: each TCP stream may have as many DATA packets
outstanding as the last ``CONTINUE`` said.  A sender without credit waits
(reading messages meanwhile, so the ``CONTINUE`` is seen at once) for at most
``stall_timeout`` seconds, then the stream fails with ``TimeoutError``.

Close reasons become the errors a socket gives for the same event: 0x42
``EHOSTUNREACH``, 0x43 ``TimeoutError``, 0x44 ``ConnectionRefusedError``,
0x48 a :class:`~netshim.policy.DestinationBlockedError` naming the
destination, 0x03 and the rest ``ConnectionResetError``; 0x02 is a normal
end of stream.  Wisp has no half-close: :meth:`send_eof` closes the stream,
and the server then delivers no more of the reply.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import ssl
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

if TYPE_CHECKING:
    from ..transports.websocket import ClientWebSocket

from .._addresses import Address
from .._errors import (
    LocalProtocolError,
    RemoteProtocolError,
    connection_reset,
    message_too_long,
    os_error,
)
from ..policy import DestinationBlockedError
from ..protocols import wisp
from ..stack import Stack, TcpStream, UdpSocket
from ..transports._url import WebSocketEndpoint, parse_websocket_url
from ._tunnel import UNKNOWN_LOCAL, ByteBuffer, TunnelStack

__all__ = ["WispStack", "error_for_reason"]

# One DATA packet carries at most this much: the gateway's and the
# websockets library's default message limit is 1 MiB; wisp-js reads 64 KiB
# at a time.  Larger packets save per-message work; smaller ones keep other
# streams moving between them.
DEFAULT_PACKET_SIZE = 64 * 1024
# The v2 drafts give each side five seconds for its INFO.
HANDSHAKE_TIMEOUT = 5.0
# How long a sender waits for CONTINUE credit before the stream fails.
DEFAULT_STALL_TIMEOUT = 60.0
# IPv4's largest UDP payload; the contract raises EMSGSIZE above it.
MAX_DATAGRAM = 65507
# Datagrams kept per UDP socket for a reader that is not reading, as a
# socket's receive buffer would (and then drops).
MAX_QUEUED_DATAGRAMS = 1024


def error_for_reason(reason: int, host: str, port: int, server: str) -> OSError | None:
    """The exception a stream closed with ``reason`` raises; ``None`` for a normal end."""
    where = f"{host}:{port} via Wisp server {server}"
    name = wisp._reason_name(reason)
    if reason == wisp.CloseReason.VOLUNTARY:
        return None
    if reason == wisp.CloseReason.UNREACHABLE:
        return os_error(errno.EHOSTUNREACH, where)
    if reason in (wisp.CloseReason.TIMEOUT, wisp.CloseReason.TRANSFER_TIMEOUT):
        return os_error(errno.ETIMEDOUT, f"{where}, {name}")
    if reason == wisp.CloseReason.REFUSED:
        return os_error(errno.ECONNREFUSED, where)
    if reason == wisp.CloseReason.BLOCKED:
        return DestinationBlockedError(
            f"{host}:{port}",
            f"the Wisp server {server} blocked it (close reason 0x48 BLOCKED)",
            "ask the server's operator to allow it",
        )
    if reason in (
        wisp.CloseReason.AUTH_BAD_PASSWORD,
        wisp.CloseReason.AUTH_BAD_SIGNATURE,
        wisp.CloseReason.AUTH_MISSING_CREDENTIALS,
    ):
        return os_error(errno.EACCES, f"Wisp server {server} refused the credentials ({name})")
    return os_error(errno.ECONNRESET, f"{where}, close reason {name}")


class _Session:
    """One WebSocket and its Wisp connection, shared by the streams opened on it."""

    def __init__(self, stack: WispStack, websocket: ClientWebSocket, conn: wisp.WispConnection):
        self.stack = stack
        self.ws = websocket
        self.conn = conn
        self.streams: dict[int, _WispTcpStream | _WispUdpStream] = {}
        self.ids = itertools.count(1)
        # One task at a time reads the WebSocket, for everybody; the others
        # wait for the event it sets after each message (see pump_until).
        self._reading = False
        self._dispatched = anyio.Event()
        self.error: OSError | None = None
        # A WebSocket that calls us for each message (JsWebSocket) is read by
        # nobody: messages are dispatched on arrival (_on_message).
        self.pushed = hasattr(websocket, "set_message_handler")
        # What pushed waiters wait on; made by the first of them (in a task:
        # the dispatch runs in JavaScript's callback, outside any).
        self._pushed_event: anyio.Event | None = None
        if self.pushed:
            websocket.set_message_handler(self._on_message)  # type: ignore[attr-defined]

    @property
    def alive(self) -> bool:
        return self.error is None

    async def pump_until(self, ready: Callable[[], bool]) -> None:
        """Read and dispatch messages until ``ready()`` (or the session dies).

        Whoever waits while nobody reads becomes the reader; everybody else
        waits for the message it reads next, then looks again.  A waiter must
        not queue for the reader's role behind a lock: the reader could take
        it back at once and sit in a read for its own data while the waiter's
        data, already dispatched, waits for it behind the lock.
        """
        while not ready() and self.error is None:
            if self.pushed:
                if self._pushed_event is None:
                    self._pushed_event = anyio.Event()
                await self._pushed_event.wait()
                continue
            if self._reading:
                await self._dispatched.wait()
                continue
            self._reading = True
            wake = self._dispatched
            try:
                message = await self.ws.receive()
                if message is None:
                    self.die(connection_reset())
                else:
                    self.dispatch(message)
            finally:
                self._reading = False
                self._dispatched = anyio.Event()
                wake.set()

    def _on_message(self, message: bytes | None) -> None:
        """A pushed message (or ``None``: the WebSocket closed)."""
        if message is None:
            self.die(connection_reset())
        else:
            self.dispatch(message)
        self._wake_pushed()

    def _wake_pushed(self) -> None:
        # Only when somebody waits: making an Event costs more than the rest
        # of a small message's dispatch.
        wake, self._pushed_event = self._pushed_event, None
        if wake is not None:
            wake.set()

    def dispatch(self, message: bytes | bytearray) -> None:
        try:
            self.conn.receive_data(message)
            for event in self.conn.events():
                self._handle(event)
        except (RemoteProtocolError, LocalProtocolError) as exc:
            self.die(os_error(errno.ECONNRESET, f"Wisp protocol error from the server: {exc}"))

    def _handle(self, event: wisp.Event) -> None:
        if isinstance(event, wisp.Data):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_data(event.data)
        elif isinstance(event, wisp.Continue):
            tcp = self.streams.get(event.stream_id)
            if isinstance(tcp, _WispTcpStream):
                tcp.confirmed = True
        elif isinstance(event, wisp.Close):
            if event.stream_id == 0:
                reason = wisp._reason_name(event.reason)
                self.die(
                    os_error(errno.ECONNRESET, f"the Wisp server closed the connection ({reason})")
                )
                return
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                stream.on_close(event.reason)
        elif isinstance(event, wisp.PacketRejected):
            if event.stream_id:
                stream = self.streams.pop(event.stream_id, None)
                if stream is not None:
                    stream.on_close(wisp.CloseReason.INVALID_INFO)
        elif isinstance(event, wisp.ConnectionClosed):
            self.die(connection_reset())

    def die(self, error: OSError) -> None:
        if self.error is not None:
            return
        self.error = error
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.on_error(connection_reset())
        if self.pushed:
            self._wake_pushed()

    async def send(self, event: wisp.Event) -> None:
        if self.error is not None:
            raise connection_reset()
        try:
            message = self.conn.send(event)
        except LocalProtocolError:
            raise connection_reset() from None
        try:
            await self.ws.send(message)
        except ConnectionResetError:
            self.die(connection_reset())
            raise

    async def close_stream(self, stream_id: int, reason: int) -> None:
        """Tell the server a stream is done (nothing to do if it already forgot it)."""
        self.streams.pop(stream_id, None)
        if self.error is not None or self.conn.stream_type(stream_id) is None:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(5), contextlib.suppress(OSError):
            await self.send(wisp.Close(stream_id, reason))

    async def aclose(self) -> None:
        self.die(connection_reset())
        await self.ws.aclose()


class _WispTcpStream(TcpStream):
    def __init__(self, session: _Session, stream_id: int, host: str, port: int) -> None:
        self.session = session
        self.stream_id = stream_id
        self.host = host
        self.port = port
        self.buffer = ByteBuffer()
        self.confirmed = False
        self.closed = False
        self.eof_sent = False
        self.send_lock = anyio.Lock(fast_acquire=True)
        self.on_readable: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"<Wisp TCP stream {self.stream_id} to {self.host}:{self.port}>"

    @property
    def local_address(self) -> Address:
        return UNKNOWN_LOCAL

    @property
    def remote_address(self) -> Address:
        return (self.host, self.port)

    def on_data(self, data: bytes) -> None:
        self.buffer.push(data)
        if self.on_readable is not None:
            self.on_readable()

    def on_close(self, reason: int) -> None:
        error = error_for_reason(reason, self.host, self.port, self.session.stack.url)
        if error is None:
            self.buffer.eof = True
            if self.on_readable is not None:
                self.on_readable()
        else:
            self.on_error(error)

    def on_error(self, error: OSError) -> None:
        if not self.buffer.finished:
            self.buffer.error = error
        if self.on_readable is not None:
            self.on_readable()

    def set_readable_callback(self, callback: Callable[[], None] | None) -> bool:
        """Call ``callback()`` whenever data, the end or an error arrives.

        Returns whether arrivals come by themselves (a pushed session):
        otherwise they only come while some task waits in :meth:`receive`.
        The callback runs inside the dispatch of a message and must not raise.
        """
        self.on_readable = callback
        return self.session.pushed

    def receive_nowait(self, max_bytes: int = 65536) -> bytes:
        """What :meth:`receive` would return at once; ``anyio.WouldBlock`` if it would wait."""
        if self.closed:
            raise anyio.ClosedResourceError
        if not self.buffer.ready:
            raise anyio.WouldBlock
        return self.buffer.take(max_bytes)

    def send_nowait(self, item: bytes) -> bool:
        """Send ``item`` as one packet if that needs no waiting; whether it was sent.

        Only on a WebSocket that can send without waiting (``writable``),
        with credit, nothing else sending, and ``item`` no larger than a
        packet; otherwise nothing is sent and :meth:`send` is the way.
        """
        session = self.session
        conn = session.conn
        if (
            not item
            or self.closed
            or session.error is not None
            or not getattr(session.ws, "writable", False)
            or self.send_lock.locked()
            or len(item) > session.stack.packet_size
            or self._send_error() is not None
            or conn.stream_type(self.stream_id) is None
            or conn.credit(self.stream_id) <= 0
        ):
            return False
        session.ws.send_nowait(conn.send(wisp.Data(self.stream_id, bytes(item))))  # type: ignore[attr-defined]
        return True

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self.closed:
            raise anyio.ClosedResourceError
        if not self.buffer.ready:
            await self.session.pump_until(lambda: self.buffer.ready or self.closed)
            if self.closed:
                raise anyio.ClosedResourceError
        else:
            await anyio.lowlevel.checkpoint()
        return self.buffer.take(max_bytes)

    def _send_error(self) -> OSError | None:
        if self.eof_sent:
            return os_error(errno.EPIPE, "send() after send_eof()")
        if self.buffer.error is not None:
            error = self.buffer.error
            return os_error(error.errno or errno.EPIPE, str(error.strerror))
        if self.buffer.eof:
            return os_error(errno.EPIPE, "the Wisp server closed the stream")
        return None

    async def send(self, item: bytes) -> None:
        if self.closed:
            raise anyio.ClosedResourceError
        conn = self.session.conn
        view = memoryview(item)
        size = self.session.stack.packet_size
        async with self.send_lock:
            for offset in range(0, max(len(view), 1), size):
                # The usual write fits one packet: send the caller's bytes as they are.
                whole = offset == 0 and len(view) <= size and isinstance(item, bytes)
                chunk = item if whole else bytes(view[offset : offset + size])
                if not chunk:
                    break

                def ready() -> bool:
                    return (
                        self.closed
                        or self._send_error() is not None
                        or conn.stream_type(self.stream_id) is None
                        or conn.credit(self.stream_id) > 0
                    )

                if not ready():
                    with anyio.move_on_after(self.session.stack.stall_timeout) as scope:
                        await self.session.pump_until(ready)
                    if scope.cancelled_caught:
                        await self.session.close_stream(self.stream_id, wisp.CloseReason.TIMEOUT)
                        self.on_error(
                            os_error(errno.ETIMEDOUT, "the Wisp server gave no credit to send")
                        )
                if self.closed:
                    raise anyio.ClosedResourceError
                error = self._send_error()
                if error is not None:
                    raise error
                if conn.stream_type(self.stream_id) is None:
                    raise os_error(errno.EPIPE, "the Wisp stream is closed")
                await self.session.send(wisp.Data(self.stream_id, chunk))

    async def send_eof(self) -> None:
        if self.closed:
            raise anyio.ClosedResourceError
        if self.eof_sent:
            return
        self.eof_sent = True
        await self.session.close_stream(self.stream_id, wisp.CloseReason.VOLUNTARY)
        # The server forgets the stream: what it had not sent yet will not come.
        self.buffer.eof = True

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self.session.close_stream(self.stream_id, wisp.CloseReason.VOLUNTARY)

    async def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self.session.close_stream(self.stream_id, wisp.CloseReason.NETWORK_ERROR)


class _WispUdpStream:
    """One Wisp UDP stream: the datagrams to and from one destination."""

    def __init__(self, owner: _WispUdpSocket, session: _Session, stream_id: int, target: Address):
        self.owner = owner
        self.session = session
        self.stream_id = stream_id
        self.target = target

    def on_data(self, data: bytes) -> None:
        self.owner.on_datagram(data, self.target)

    def on_close(self, reason: int) -> None:
        self.owner.streams.pop(self.target, None)
        error = error_for_reason(reason, *self.target, self.session.stack.url)
        if error is not None:
            self.owner.pending_error = error

    def on_error(self, error: OSError) -> None:
        self.owner.streams.pop(self.target, None)


class _WispUdpSocket(UdpSocket):
    """A UDP socket whose every destination is its own Wisp UDP stream."""

    def __init__(self, stack: WispStack, remote: Address | None) -> None:
        self.stack = stack
        self.remote = remote
        self.streams: dict[Address, _WispUdpStream] = {}
        self.queue: deque[tuple[bytes, Address]] = deque()
        self.pending_error: OSError | None = None
        self.closed = False
        self._broadcast = False
        self.session: _Session | None = None

    @property
    def local_address(self) -> Address:
        return UNKNOWN_LOCAL

    @property
    def remote_address(self) -> Address | None:
        return self.remote

    @property
    def broadcast(self) -> bool:
        return self._broadcast

    @broadcast.setter
    def broadcast(self, enabled: bool) -> None:
        self._broadcast = bool(enabled)

    def on_datagram(self, data: bytes, source: Address) -> None:
        if len(self.queue) < MAX_QUEUED_DATAGRAMS:
            self.queue.append((data, source))

    async def _stream_for(self, target: Address) -> _WispUdpStream:
        stream = self.streams.get(target)
        if stream is not None and stream.session.alive:
            return stream
        session = await self.stack._session()
        self.session = session
        if not session.conn.udp_allowed:
            raise os_error(errno.EOPNOTSUPP, f"the Wisp server {self.stack.url} offers no UDP")
        stream_id = next(session.ids)
        stream = _WispUdpStream(self, session, stream_id, target)
        session.streams[stream_id] = stream
        await session.send(wisp.Connect(stream_id, target[0], target[1], wisp.StreamType.UDP))
        self.streams[target] = stream
        return stream

    async def send(self, data: bytes, address: tuple[str, int] | None = None) -> None:
        if self.closed:
            raise anyio.ClosedResourceError
        if len(data) > MAX_DATAGRAM:
            raise message_too_long(len(data), MAX_DATAGRAM)
        if address is None:
            if self.remote is None:
                raise os_error(
                    errno.EDESTADDRREQ, "send() needs an address on an unconnected socket"
                )
            target = self.remote
        else:
            target = TunnelStack.destination(address[0], address[1], "send")
        stream = await self._stream_for(target)
        await stream.session.send(wisp.Data(stream.stream_id, bytes(data)))

    async def receive(self) -> tuple[bytes, Address]:
        if self.closed:
            raise anyio.ClosedResourceError
        while not self.queue:
            if self.pending_error is not None:
                error, self.pending_error = self.pending_error, None
                raise error
            session = self.session
            if session is None or not session.alive:
                # Nothing sent yet (or the tunnel dropped): nothing can arrive
                # until a send opens a stream, so wait as an idle socket does.
                await anyio.sleep(0.05)
                if self.closed:
                    raise anyio.ClosedResourceError
                continue
            await session.pump_until(
                lambda: bool(self.queue) or self.closed or self.pending_error is not None
            )
            if self.closed:
                raise anyio.ClosedResourceError
        await anyio.lowlevel.checkpoint()
        return self.queue.popleft()

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        streams, self.streams = list(self.streams.values()), {}
        for stream in streams:
            await stream.session.close_stream(stream.stream_id, wisp.CloseReason.VOLUNTARY)


class WispStack(TunnelStack):
    """TCP and UDP through a Wisp server (``wisp://host:port/path/``, ``wisps://`` for TLS).

    ``url`` may also be ``ws://`` / ``wss://``; user and password in the URL
    (or ``username`` / ``password``) are sent with the v2 password
    extension.  ``version=1`` skips the v2 handshake; with 2 (the default) a
    server that answers as v1 is talked to as v1.  ``transport`` is the
    stack the WebSocket's own TCP connection goes through (the host network
    by default).  :attr:`motd` is the server's message of the day once
    connected (see :meth:`connect`).

    ``confirm_streams`` (the default) accepts a v2 server's stream
    confirmation: :meth:`connect_tcp` returns once the destination accepted,
    and raises its refusal, as a socket's ``connect`` does.  ``False`` sends
    data right behind ``CONNECT`` and reports a refusal on the first
    ``receive`` instead, one round trip to the server sooner.
    """

    kind = "Wisp"

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        version: int = 2,
        transport: Stack | None = None,
        ssl_context: ssl.SSLContext | None = None,
        headers: dict[str, str] | None = None,
        open_timeout: float = 10.0,
        connect_timeout: float = 30.0,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
        packet_size: int = DEFAULT_PACKET_SIZE,
        confirm_streams: bool = True,
    ) -> None:
        self.endpoint: WebSocketEndpoint = parse_websocket_url(
            url,
            schemes={"wisp": False, "wisps": True, "ws": False, "wss": True},
            what="Wisp URL",
        )
        if version not in (1, 2):
            raise ValueError(f"Wisp version must be 1 or 2, got {version!r}")
        if not 1 <= packet_size <= wisp.DEFAULT_MAX_MESSAGE_SIZE - wisp.HEADER_SIZE:
            raise ValueError(f"packet_size must be 1..{wisp.DEFAULT_MAX_MESSAGE_SIZE - 5}")
        for name, value in (
            ("open_timeout", open_timeout),
            ("connect_timeout", connect_timeout),
            ("stall_timeout", stall_timeout),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        self.username = username if username is not None else self.endpoint.username
        self.password = password if password is not None else self.endpoint.password
        if self.password is not None and self.username is None:
            self.username = ""
        if self.username is not None:
            # Validates the lengths now rather than at the first connect.
            wisp.PasswordCredentials(self.username, self.password or "")
        # Without the credentials: it appears in error messages.
        self.url = self._public_url()
        self.version = version
        self.transport = transport
        self.ssl_context = ssl_context
        self.headers = dict(headers or {})
        self.open_timeout = open_timeout
        self.connect_timeout = connect_timeout
        self.stall_timeout = stall_timeout
        self.packet_size = packet_size
        self.confirm_streams = confirm_streams
        self._sessions: dict[int, _Session] = {}
        self._opening: dict[int, anyio.Lock] = {}
        self._guard = threading.Lock()

    def _public_url(self) -> str:
        e = self.endpoint
        scheme = "wisps" if e.secure else "wisp"
        host = f"[{e.host}]" if ":" in e.host else e.host
        return f"{scheme}://{host}:{e.port}{e.path}"

    def __repr__(self) -> str:
        return f"WispStack({self.url!r})"

    # -- the connection

    @property
    def motd(self) -> str | None:
        """The server's message of the day (v2 MOTD extension), once connected."""
        session = self._sessions.get(threading.get_ident())
        return None if session is None else session.conn.motd

    @property
    def negotiated_version(self) -> int | None:
        """1 or 2 once connected; ``None`` before."""
        session = self._sessions.get(threading.get_ident())
        return None if session is None else session.conn.version

    async def connect(self) -> None:
        """Open the WebSocket and finish the Wisp handshake now rather than at first use.

        Raises ``ConnectionRefusedError`` (a
        :class:`~netshim.transports.websocket.WebSocketHandshakeError` when
        the HTTP upgrade failed), ``PermissionError`` when the server refused
        the credentials, ``TimeoutError``.
        """
        await self._session()

    async def _session(self) -> _Session:
        key = threading.get_ident()
        session = self._sessions.get(key)
        if session is not None and session.alive:
            return session
        with self._guard:
            lock = self._opening.setdefault(key, anyio.Lock())
        async with lock:
            session = self._sessions.get(key)
            if session is not None and session.alive:
                return session
            if session is not None:
                await session.aclose()
            session = await self._open_session()
            self._sessions[key] = session
            return session

    async def _open_session(self) -> _Session:
        subprotocols = ("wisp-v2",) if self.version == 2 else ()
        websocket: Any
        if sys.platform == "emscripten" and self.transport is None:
            # Pyodide: no sockets to build a WebSocket on; the host's WebSocket it is.
            from ..transports.jswebsocket import open_js_websocket

            websocket = await open_js_websocket(
                self.endpoint, subprotocols=subprotocols, open_timeout=self.open_timeout
            )
            try:
                conn = await self._handshake(websocket)
            except BaseException:
                await websocket.aclose()
                raise
            return _Session(self, websocket, conn)
        # Imported here: the websockets library is an optional dependency.
        from ..transports.websocket import open_websocket

        websocket = await open_websocket(
            self.endpoint,
            stack=self.transport,
            subprotocols=subprotocols,
            headers=self.headers,
            ssl_context=self.ssl_context,
            open_timeout=self.open_timeout,
        )
        try:
            conn = await self._handshake(websocket)
        except BaseException:
            await websocket.aclose()
            raise
        return _Session(self, websocket, conn)

    async def _handshake(self, websocket: ClientWebSocket) -> wisp.WispConnection:
        conn = wisp.WispConnection(wisp.Role.CLIENT, version=self.version)
        try:
            with anyio.fail_after(HANDSHAKE_TIMEOUT * 2):
                while conn.state is not wisp.ConnectionState.OPEN:
                    message = await websocket.receive()
                    if message is None:
                        raise os_error(
                            errno.ECONNRESET,
                            f"the Wisp server {self.url} closed the WebSocket during the handshake",
                        )
                    conn.receive_data(message)
                    for event in conn.events():
                        if isinstance(event, wisp.Info):
                            conn.local_extensions = self._answer(event)
                            await websocket.send(conn.send(conn.local_info()))
                        elif isinstance(event, wisp.Close) and event.stream_id == 0:
                            error = error_for_reason(event.reason, "", 0, self.url)
                            if (
                                event.reason
                                in (
                                    wisp.CloseReason.AUTH_BAD_PASSWORD,
                                    wisp.CloseReason.AUTH_MISSING_CREDENTIALS,
                                    wisp.CloseReason.AUTH_BAD_SIGNATURE,
                                )
                                and error is not None
                            ):
                                raise error
                            raise os_error(
                                errno.ECONNREFUSED,
                                f"the Wisp server {self.url} refused the connection "
                                f"({wisp._reason_name(event.reason)})",
                            )
                        elif isinstance(event, wisp.PacketRejected):
                            continue
        except TimeoutError:
            raise os_error(
                errno.ETIMEDOUT,
                f"no Wisp handshake from {self.url} within {HANDSHAKE_TIMEOUT * 2}s",
            ) from None
        except RemoteProtocolError as exc:
            raise os_error(
                errno.ECONNRESET, f"Wisp handshake with {self.url} failed: {exc}"
            ) from None
        return conn

    def _answer(self, info: wisp.Info) -> tuple[wisp.Extension, ...]:
        """Our INFO extensions: those of the server's we support, with our credentials."""
        answer: list[wisp.Extension] = []
        for extension in info.extensions:
            if isinstance(extension, wisp.UdpExtension):
                answer.append(wisp.UdpExtension())
            elif isinstance(extension, wisp.MotdExtension):
                answer.append(wisp.MotdExtension())
            elif isinstance(extension, wisp.StreamConfirmationExtension) and self.confirm_streams:
                answer.append(wisp.StreamConfirmationExtension())
            elif isinstance(extension, wisp.PasswordAuthExtension) and self.username is not None:
                answer.append(wisp.PasswordCredentials(self.username, self.password or ""))
        return tuple(answer)

    # -- the contract

    async def connect_tcp(
        self, host: str, port: int, *, local_address: tuple[str, int] | None = None
    ) -> TcpStream:
        """Open a Wisp TCP stream to ``host`` (a name is resolved by the server).

        When the server confirms streams (v2 stream confirmation), this
        waits for the confirmation and raises the mapped error of a refusal;
        otherwise a failure shows on the first ``receive``.  ``local_address``
        is not supported through a tunnel (``EADDRNOTAVAIL``).
        """
        host, port = self.destination(host, port, "connect_tcp")
        if local_address is not None:
            raise os_error(errno.EADDRNOTAVAIL, "a Wisp stream cannot bind a local address")
        if port == 0:
            raise os_error(errno.ECONNREFUSED, f"{host}:0")
        session = await self._session()
        stream_id = next(session.ids)
        stream = _WispTcpStream(session, stream_id, host, port)
        session.streams[stream_id] = stream
        try:
            await session.send(wisp.Connect(stream_id, host, port, wisp.StreamType.TCP))
            if session.conn.negotiated(wisp.ExtensionId.STREAM_CONFIRMATION):
                with anyio.move_on_after(self.connect_timeout) as scope:
                    await session.pump_until(lambda: stream.confirmed or stream.buffer.finished)
                if scope.cancelled_caught:
                    raise os_error(errno.ETIMEDOUT, f"{host}:{port} via Wisp server {self.url}")
                if stream.buffer.error is not None and not stream.buffer.chunks:
                    raise stream.buffer.error
        except BaseException:
            stream.closed = True
            await session.close_stream(stream_id, wisp.CloseReason.VOLUNTARY)
            raise
        return stream

    async def open_udp(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        *,
        remote: tuple[str, int] | None = None,
        ipv6_only: bool = False,
    ) -> UdpSocket:
        """A UDP socket: each destination it sends to is one Wisp UDP stream.

        The server must offer UDP (``OSError(EOPNOTSUPP)`` otherwise, at the
        first send).  The local address is not known through the tunnel.
        """
        connected = None if remote is None else self.destination(remote[0], remote[1], "open_udp")
        sock = _WispUdpSocket(self, connected)
        if connected is not None:
            session = await self._session()
            if not session.conn.udp_allowed:
                raise os_error(errno.EOPNOTSUPP, f"the Wisp server {self.url} offers no UDP")
        return sock

    async def aclose(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.aclose()
