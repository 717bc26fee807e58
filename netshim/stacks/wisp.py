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
Where the WebSocket takes a message at once (``writable``: a host
connection under asyncio or uvloop, or JavaScript's), a packet with credit
is written straight into it, with no lock and no scheduling point; the
sender waits only for credit or for the WebSocket to drain, and lets other
tasks run after every :data:`UNPACED_BYTES` written without a wait.

Close reasons become the errors a socket gives for the same event: 0x42
``EHOSTUNREACH``, 0x43 ``TimeoutError``, 0x44 ``ConnectionRefusedError``,
0x48 a :class:`~netshim.policy.DestinationBlockedError` naming the
destination, 0x03 and the rest ``ConnectionResetError``; 0x02 is a normal
end of stream.  Wisp has no half-close: :meth:`send_eof` closes the stream,
and the server then delivers no more of the reply.

Listening, on a gateway that offers netshim's LAN extension (``docs/lan.md``):
a stack made with ``lan``, ``member`` and ``token`` joins that LAN when it
connects and gets an address and a DNS name there (:attr:`WispStack.lan_address`,
:attr:`~WispStack.lan_name`, :attr:`~WispStack.members`).  :meth:`WispStack.listen_tcp`
sends ``LISTEN`` and each connection to the listener arrives as an ``ACCEPT``
on a stream the server opened, which becomes the same stream class as an
outgoing connection; nobody reads for the listener in the background either,
so :meth:`accept` takes the reader's turn like any waiter, and connections
that arrive while nobody accepts wait in a backlog (beyond it they are
refused with ``CLOSE(REFUSED)``, as a full listen queue refuses).  A UDP
socket bound to a port of the LAN address is one UDP listener stream
carrying addressed datagrams.

The connection's changes are :class:`~netshim.stacks._tunnel.TunnelEvent`
(``connecting``, ``connected``, ``reconnecting``, ``closed``,
``member-joined``, ``member-left``).  When the WebSocket drops while
listeners exist, whoever waits in ``accept`` (or ``receive`` on a bound UDP
socket) reconnects, with exponential backoff and jitter, and registers every
listener again on the new connection with the port it had; a stack with no
listener reconnects at its next use, as before.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import itertools
import random
import ssl
import sys
import threading
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeAlias

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
from ..stack import DEFAULT_BACKLOG, Stack, TcpListener, TcpStream, UdpSocket
from ..transports._url import WebSocketEndpoint, parse_websocket_url
from ._tunnel import UNKNOWN_LOCAL, ByteBuffer, TunnelEvent, TunnelEventKind, TunnelStack

__all__ = ["WispStack", "error_for_reason"]

# One DATA packet carries at most this much: the gateway's and the
# websockets library's default message limit is 1 MiB; wisp-js reads 64 KiB
# at a time.  Larger packets save per-message work; smaller ones keep other
# streams moving between them.
DEFAULT_PACKET_SIZE = 64 * 1024
# A sender whose packets go out without waiting lets other tasks run after
# this many bytes (see _WispTcpStream._pace); a scheduling point per packet
# cost about a tenth of an upload's client CPU.
UNPACED_BYTES = 1 << 20
# The v2 drafts give each side five seconds for its INFO.
HANDSHAKE_TIMEOUT = 5.0
# How long a sender waits for CONTINUE credit before the stream fails.
DEFAULT_STALL_TIMEOUT = 60.0
# IPv4's largest UDP payload; the contract raises EMSGSIZE above it.
MAX_DATAGRAM = 65507
# Datagrams kept per UDP socket for a reader that is not reading, as a
# socket's receive buffer would (and then drops).
MAX_QUEUED_DATAGRAMS = 1024
# Connections one listener holds for accept() at most, whatever backlog is
# asked: Linux caps listen()'s backlog at net.core.somaxconn (4096 since
# 5.4); a tab's server needs far fewer, and each holds a stream's buffer.
MAX_BACKLOG = 1024
# Reconnection while listeners exist: the first retry at once, then
# exponential from this delay, capped (seconds), each wait jittered down to
# half so that the members of a LAN do not all come back in the same instant
# after the gateway restarts.
DEFAULT_RECONNECT_DELAY = 0.25
DEFAULT_RECONNECT_MAX_DELAY = 30.0
# Query parameters of a Wisp URL that are ours, not the server's.
LAN_QUERY_PARAMETERS = ("lan", "member", "token")
# Host values that mean "every address of this member" for listen and bind.
_WILDCARDS = (None, "", "0.0.0.0", "::")


def _take_lan_query(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without the ``lan``/``member``/``token`` query parameters, and their values."""
    parts = urllib.parse.urlsplit(url)
    if not parts.query:
        return url, {}
    kept: list[tuple[str, str]] = []
    taken: dict[str, str] = {}
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if key in LAN_QUERY_PARAMETERS:
            taken[key] = value
        else:
            kept.append((key, value))
    if not taken:
        return url, {}
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(kept))), taken


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__


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


def _stream_id_of(message: bytes | memoryview) -> int:
    """The stream id of a DATA packet (0, which no stream has, for anything else)."""
    if len(message) < wisp.HEADER_SIZE or message[0] != wisp.PacketType.DATA:
        return 0
    return int.from_bytes(message[1:5], "little")


class _Session:
    """One WebSocket and its Wisp connection, shared by the streams opened on it."""

    def __init__(self, stack: WispStack, websocket: ClientWebSocket, conn: wisp.WispConnection):
        self.stack = stack
        self.key = threading.get_ident()
        self.ws = websocket
        self.conn = conn
        self.streams: dict[int, _Endpoint] = {}
        self.ids = itertools.count(1)
        # Packets a dispatch decided to send (refusals of ACCEPTs): dispatch
        # cannot wait, so whoever next reads or sends does it.
        self.outbox: deque[wisp.Event] = deque()
        # The LAN's JOINED news for this connection, once it came, and whether
        # the roster behind it (a MEMBER_JOINED for each member already
        # there, before anything else) is complete.
        self.joined: wisp.Membership | None = None
        self.roster_complete = False
        # Events wait here until "connected" was told (a pushed WebSocket
        # dispatches the LAN news before the opener's task resumes).
        self.announced = False
        self.held: list[TunnelEvent] = []
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
        # Messages as views of what was read where the WebSocket offers them.
        self._receive: Callable[[], Awaitable[bytes | memoryview | None]] = getattr(
            websocket, "receive_view", websocket.receive
        )

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
                message = await self._receive()
                if message is None:
                    self.die(connection_reset())
                else:
                    self.dispatch(message)
                    if self.outbox:
                        await self.flush()
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
            if self.outbox:
                self._flush_nowait()
        self._wake_pushed()

    def queue_send(self, event: wisp.Event) -> None:
        """Send ``event`` as soon as some task can (see ``outbox``)."""
        self.outbox.append(event)

    def _flush_nowait(self) -> None:
        while self.outbox and self.error is None and getattr(self.ws, "writable", False):
            event = self.outbox.popleft()
            try:
                self.ws.send_nowait(self.conn.send(event))
            except LocalProtocolError:
                continue
            except OSError:
                self.die(connection_reset())

    async def flush(self) -> None:
        """Send what a dispatch queued."""
        while self.outbox and self.error is None:
            event = self.outbox.popleft()
            try:
                message = self.conn.send(event)
            except LocalProtocolError:
                continue
            try:
                await self.ws.send(message)
            except ConnectionResetError:
                self.die(connection_reset())

    def tell(self, event: TunnelEvent) -> None:
        """Emit ``event`` once this connection was announced, in order."""
        if self.announced:
            self.stack.emit(event)
        else:
            self.held.append(event)

    def announce(self) -> None:
        """Emit "connected", then what waited for it."""
        if self.announced or self.error is not None:
            return
        self.announced = True
        joined = self.joined
        self.stack.emit(
            TunnelEvent(
                TunnelEventKind.CONNECTED,
                address=None if joined is None else joined.host,
                name=None if joined is None else joined.name,
            )
        )
        held, self.held = self.held, []
        for event in held:
            self.stack.emit(event)

    def _wake_pushed(self) -> None:
        # Only when somebody waits: making an Event costs more than the rest
        # of a small message's dispatch.
        wake, self._pushed_event = self._pushed_event, None
        if wake is not None:
            wake.set()

    def dispatch(self, message: bytes | bytearray | memoryview) -> None:
        if isinstance(message, bytes) or (isinstance(message, memoryview) and message.readonly):
            # The bulk of a download: DATA for a TCP stream goes to its
            # buffer as a view of the message (which never changes), with no
            # event and no copy (the stream's reader copies what it takes).
            stream = self.streams.get(_stream_id_of(message))
            if type(stream) is _WispTcpStream and (self.roster_complete or self.joined is None):
                taken = self.conn.take_client_data(message)
                if taken is not None:
                    stream.on_data(taken[1])
                    return
        try:
            self.conn.receive_data(message)
            for event in self.conn.events():
                self._handle(event)
        except (RemoteProtocolError, LocalProtocolError) as exc:
            self.die(os_error(errno.ECONNRESET, f"Wisp protocol error from the server: {exc}"))

    def _handle(self, event: wisp.Event) -> None:
        if (
            not self.roster_complete
            and self.joined is not None
            and not isinstance(event, wisp.Membership)
        ):
            self.roster_complete = True
            self.stack._roster_complete(self)
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
                elif event.stream_id >= wisp.SERVER_STREAM_BASE:
                    # An ACCEPT for a listener we no longer have: the
                    # specification asks for CLOSE(REFUSED).
                    response = event.response()
                    if response is not None:
                        self.queue_send(response)
        elif isinstance(event, wisp.ConnectionClosed):
            self.die(connection_reset())
        elif isinstance(event, wisp.Listening):
            binding = self.streams.get(event.stream_id)
            if isinstance(binding, _LanBinding):
                binding.on_listening(event.host, event.port)
        elif isinstance(event, wisp.Accept):
            self._accept(event)
        elif isinstance(event, wisp.Membership):
            self.stack._on_membership(self, event)

    def _accept(self, event: wisp.Accept) -> None:
        binding = self.streams.get(event.listener_id)
        listener = binding.owner if isinstance(binding, _LanBinding) else None
        if not isinstance(listener, _WispListener) or not listener.takes_more():
            # Closed, not accepting yet, or its backlog is full: refused, as
            # a full listen queue refuses.
            self.queue_send(wisp.Close(event.stream_id, wisp.CloseReason.REFUSED))
            return
        assert isinstance(binding, _LanBinding)
        local = binding.address
        stream = _WispTcpStream(self, event.stream_id, event.host, event.port, local=local)
        stream.confirmed = True
        self.streams[event.stream_id] = stream
        listener.pending.append(stream)

    def die(self, error: OSError, *, announce: bool = True) -> None:
        if self.error is not None:
            return
        self.error = error
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.on_error(connection_reset())
        if announce and self.announced:
            self.stack._on_session_lost(self, error)
        if self.pushed:
            self._wake_pushed()

    async def send(self, event: wisp.Event) -> None:
        if self.error is not None:
            raise connection_reset()
        if self.outbox:
            await self.flush()
        try:
            message = self.conn.send(event)
        except LocalProtocolError:
            raise connection_reset() from None
        try:
            await self.ws.send(message)
        except ConnectionResetError:
            self.die(connection_reset())
            raise

    async def send_data(self, stream_id: int, data: bytes) -> None:
        """``send(wisp.Data(stream_id, data))`` without joining the packet first.

        The WebSocket joins the DATA header and ``data`` where it builds the
        frame: one copy of ``data`` fewer.
        """
        if self.error is not None:
            raise connection_reset()
        if self.outbox:
            await self.flush()
        try:
            header = self.conn.send_data_header(stream_id)
        except LocalProtocolError:
            raise connection_reset() from None
        try:
            await self.ws.send(data, prefix=header)
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
        self.die(connection_reset(), announce=False)
        await self.ws.aclose()


class _WispTcpStream(TcpStream):
    def __init__(
        self,
        session: _Session,
        stream_id: int,
        host: str,
        port: int,
        *,
        local: Address | None = None,
    ) -> None:
        self.session = session
        self.stream_id = stream_id
        self.host = host
        self.port = port
        self.local = local or UNKNOWN_LOCAL
        self.buffer = ByteBuffer()
        self.confirmed = False
        self.closed = False
        self.eof_sent = False
        self.send_lock = anyio.Lock(fast_acquire=True)
        # Bytes written since this stream's sender last let other tasks run.
        self.unpaced = 0
        self.on_readable: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"<Wisp TCP stream {self.stream_id} to {self.host}:{self.port}>"

    @property
    def local_address(self) -> Address:
        return self.local

    @property
    def remote_address(self) -> Address:
        return (self.host, self.port)

    def on_data(self, data: bytes | memoryview) -> None:
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
        if (
            not item
            or self.closed
            or self.send_lock.locked()
            or len(item) > self.session.stack.packet_size
        ):
            return False
        return self._write_now(item)

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

    def _write_now(self, chunk: bytes | memoryview) -> bool:
        """Write ``chunk`` as one DATA packet if that needs no waiting; whether it was written.

        Needs a WebSocket that takes a message at once (``writable``: a host
        connection under asyncio or uvloop, or JavaScript's), nothing queued
        before it and credit: the frame is then written straight from
        ``chunk`` (masked into its frame, no other copy), with no lock and no
        scheduling point.  Otherwise nothing is sent or taken.
        """
        session = self.session
        ws: Any = session.ws
        if session.outbox or session.error is not None or not getattr(ws, "writable", False):
            return False
        if self.closed or self._send_error() is not None:
            return False
        header = session.conn.take_data_header(self.stream_id)
        if header is None:
            return False
        try:
            ws.send_nowait(chunk, header)
        except ConnectionResetError:
            session.die(connection_reset())
            raise
        self.unpaced += len(chunk)
        return True

    async def _pace(self) -> None:
        """After written packets: wait for the WebSocket to drain, or let others run now and then.

        A sender whose writes never wait would otherwise keep the event loop
        to itself until its credit ran out.
        """
        ws: Any = self.session.ws
        if ws.must_drain:
            self.unpaced = 0
            await ws.drain()
        elif self.unpaced >= UNPACED_BYTES:
            self.unpaced = 0
            await anyio.lowlevel.checkpoint()

    async def send(self, item: bytes) -> None:
        if self.closed:
            raise anyio.ClosedResourceError
        session = self.session
        size = session.stack.packet_size
        if 0 < len(item) <= size and not self.send_lock.locked() and self._write_now(item):
            # The usual write: one packet, straight into the WebSocket.
            await self._pace()
            return
        conn = session.conn
        view = memoryview(item)

        def ready() -> bool:
            return (
                self.closed
                or self._send_error() is not None
                or conn.stream_type(self.stream_id) is None
                or conn.credit(self.stream_id) > 0
            )

        async with self.send_lock:
            for offset in range(0, max(len(view), 1), size):
                chunk = view[offset : offset + size]
                if not chunk:
                    break
                if self._write_now(chunk):
                    await self._pace()
                    continue
                if not ready():
                    with anyio.move_on_after(session.stack.stall_timeout) as scope:
                        await session.pump_until(ready)
                    if scope.cancelled_caught:
                        await session.close_stream(self.stream_id, wisp.CloseReason.TIMEOUT)
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
                if self._write_now(chunk):
                    await self._pace()
                    continue
                # The usual write fits one packet: send the caller's bytes as they are.
                whole = offset == 0 and len(view) <= size and isinstance(item, bytes)
                await session.send_data(self.stream_id, item if whole else bytes(chunk))

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


class _Waiters:
    """Cancel scopes of the tasks waiting on one object, to wake them when it closes.

    A waiter may be the one reading the WebSocket for everybody, in a read
    that only the next message would end; closing the object from another
    task must end that wait at once, as closing a socket wakes its
    ``accept``.  Cancelling a read between messages loses nothing (a timed
    ``connect_tcp`` does the same).
    """

    __slots__ = ("scopes",)

    def __init__(self) -> None:
        self.scopes: set[anyio.CancelScope] = set()

    async def pump(self, session: _Session, ready: Callable[[], bool]) -> None:
        with anyio.CancelScope() as scope:
            self.scopes.add(scope)
            try:
                await session.pump_until(ready)
            finally:
                self.scopes.discard(scope)

    def wake(self) -> None:
        for scope in self.scopes:
            scope.cancel()


class _LanBinding:
    """A LAN listener's stream (TCP or UDP), made again on each new connection.

    ``owner`` is the :class:`_WispListener` or bound :class:`_WispUdpSocket`
    it serves.  ``port`` is the port asked for, then the one the server
    bound, so that a new connection asks for the same one.
    """

    def __init__(
        self,
        stack: WispStack,
        owner: _WispListener | _WispUdpSocket,
        stream_type: wisp.StreamType,
        host: str,
        port: int,
    ) -> None:
        self.stack = stack
        self.owner = owner
        self.stream_type = stream_type
        self.host = host
        self.port = port
        self.key = threading.get_ident()
        self.session: _Session | None = None
        self.stream_id = 0
        self.address: Address | None = None
        self.answered = False
        self.error: OSError | None = None

    def __repr__(self) -> str:
        kind = self.stream_type.name
        return f"<Wisp LAN {kind} listener {self.stream_id} on {self.address or self.port}>"

    @property
    def live(self) -> bool:
        """Listening on a connection that is alive."""
        session = self.session
        return (
            session is not None
            and session.alive
            and self.address is not None
            and self.error is None
            and session.streams.get(self.stream_id) is self
        )

    async def register(self, session: _Session) -> None:
        """Send ``LISTEN`` on ``session``; the answer comes to ``on_listening`` or ``on_close``."""
        self.session = session
        self.stream_id = next(session.ids)
        self.answered = False
        self.address = None
        self.error = None
        session.streams[self.stream_id] = self
        await session.send(wisp.Listen(self.stream_id, self.port, self.host, self.stream_type))

    def on_listening(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.port = port
        self.answered = True

    def on_close(self, reason: int) -> None:
        self.error = self.stack._listen_error(reason, self)
        self.answered = True

    def on_error(self, error: OSError) -> None:
        # The connection died: not this listener's fault; it is made again
        # on the next connection (see WispStack._revive).
        self.answered = True
        self.owner.on_lost()

    def on_data(self, data: bytes) -> None:
        if isinstance(self.owner, _WispUdpSocket):
            try:
                host, port, payload = wisp.parse_datagram(data)
            except (ValueError, UnicodeDecodeError):
                return  # a malformed datagram is dropped, as a bad checksum is
            self.owner.on_datagram(payload, (host, port))

    async def close(self) -> None:
        session = self.session
        if session is not None and session.streams.get(self.stream_id) is self:
            await session.close_stream(self.stream_id, wisp.CloseReason.VOLUNTARY)


class _WispListener(TcpListener):
    """A TCP listener on the LAN address; connections come as ``ACCEPT`` (see the module docs)."""

    def __init__(self, stack: WispStack, host: str, port: int, backlog: int) -> None:
        self.stack = stack
        self.binding = _LanBinding(stack, self, wisp.StreamType.TCP, host, port)
        self.backlog = max(1, min(backlog, MAX_BACKLOG))
        self.pending: deque[_WispTcpStream] = deque()
        self.closed = False
        self.waiters = _Waiters()

    def __repr__(self) -> str:
        return f"<Wisp LAN listener on {self.local_address[0]}:{self.local_address[1]}>"

    @property
    def local_address(self) -> Address:
        if self.binding.address is not None:
            return self.binding.address
        return (self.stack.lan_address or "0.0.0.0", self.binding.port)

    def takes_more(self) -> bool:
        return not self.closed and self.accepting and len(self.pending) < self.backlog

    def on_lost(self) -> None:
        # Connections waiting for accept() died with the WebSocket.
        self.pending.clear()

    async def accept(self) -> TcpStream:
        """The next connection from a LAN member (``remote_address`` is the member's).

        Raises ``anyio.ClosedResourceError`` once the listener (or its stack)
        is closed; the server's refusal to listen again after a reconnection
        (``EADDRINUSE`` ...) or the last reconnection error when the stack
        gave up.
        """
        binding = self.binding
        while True:
            if self.closed:
                raise anyio.ClosedResourceError
            if self.pending:
                await anyio.lowlevel.checkpoint()
                return self.pending.popleft()
            if binding.error is not None:
                raise binding.error
            session = binding.session
            if session is None or not session.alive or not binding.live:
                await self.stack._revive(binding)
                continue
            await self.waiters.pump(session, partial(self._ready, session))

    def _ready(self, session: _Session) -> bool:
        binding = self.binding
        return (
            bool(self.pending)
            or self.closed
            or binding.error is not None
            or binding.session is not session
        )

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.waiters.wake()
        self.stack._bindings_of(self.binding.key).discard(self.binding)
        pending, self.pending = list(self.pending), deque()
        for stream in pending:
            await stream.abort()
        await self.binding.close()


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
    """A UDP socket whose every destination is its own Wisp UDP stream.

    Bound to a port of the LAN address (``binding``), datagrams to LAN
    members go through the one UDP listener stream instead, addressed, and
    the members' datagrams come back through it.
    """

    def __init__(self, stack: WispStack, remote: Address | None) -> None:
        self.stack = stack
        self.remote = remote
        self.streams: dict[Address, _WispUdpStream] = {}
        self.queue: deque[tuple[bytes, Address]] = deque()
        self.pending_error: OSError | None = None
        self.closed = False
        self._broadcast = False
        self.session: _Session | None = None
        self.binding: _LanBinding | None = None
        self.waiters = _Waiters()

    @property
    def local_address(self) -> Address:
        binding = self.binding
        if binding is not None:
            if binding.address is not None:
                return binding.address
            return (self.stack.lan_address or "0.0.0.0", binding.port)
        return UNKNOWN_LOCAL

    def on_lost(self) -> None:
        pass  # datagrams have no connection to lose

    def _bound_ready(self, binding: _LanBinding) -> bool:
        return bool(self.queue) or self.closed or self.pending_error is not None or not binding.live

    async def _send_on_lan(self, binding: _LanBinding, target: Address, data: bytes) -> None:
        if not binding.live:
            await self.stack._revive(binding)
            if binding.error is not None:
                raise binding.error
        session = binding.session
        if self.closed:
            raise anyio.ClosedResourceError
        if session is None or not binding.live:
            raise connection_reset()
        try:
            datagram = wisp.pack_datagram(target[0], target[1], data)
        except ValueError as exc:
            raise os_error(errno.EINVAL, str(exc)) from None
        await session.send(wisp.Data(binding.stream_id, datagram))

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
        binding = self.binding
        if binding is not None and self.stack._on_lan(target[0]):
            await self._send_on_lan(binding, target, bytes(data))
            return
        stream = await self._stream_for(target)
        await stream.session.send(wisp.Data(stream.stream_id, bytes(data)))

    async def receive(self) -> tuple[bytes, Address]:
        if self.closed:
            raise anyio.ClosedResourceError
        while not self.queue:
            if self.pending_error is not None:
                error, self.pending_error = self.pending_error, None
                raise error
            binding = self.binding
            if binding is not None:
                if binding.error is not None:
                    raise binding.error
                if not binding.live:
                    await self.stack._revive(binding)
                    if self.closed:
                        raise anyio.ClosedResourceError
                    continue
                session = binding.session
                assert session is not None
                await self.waiters.pump(session, partial(self._bound_ready, binding))
                if self.closed:
                    raise anyio.ClosedResourceError
                continue
            session = self.session
            if session is None or not session.alive:
                # Nothing sent yet (or the tunnel dropped): nothing can arrive
                # until a send opens a stream, so wait as an idle socket does.
                await anyio.sleep(0.05)
                if self.closed:
                    raise anyio.ClosedResourceError
                continue
            await self.waiters.pump(
                session, lambda: bool(self.queue) or self.closed or self.pending_error is not None
            )
            if self.closed:
                raise anyio.ClosedResourceError
        await anyio.lowlevel.checkpoint()
        return self.queue.popleft()

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.waiters.wake()
        streams, self.streams = list(self.streams.values()), {}
        for stream in streams:
            await stream.session.close_stream(stream.stream_id, wisp.CloseReason.VOLUNTARY)
        binding = self.binding
        if binding is not None:
            self.stack._bindings_of(binding.key).discard(binding)
            await binding.close()


_Endpoint: TypeAlias = "_WispTcpStream | _WispUdpStream | _LanBinding"


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

    ``lan``, ``member`` and ``token`` (or the URL's query parameters of the
    same names, which are not sent to the server) join a LAN of a netshim
    gateway: :meth:`listen_tcp` and :meth:`open_udp` with a port then listen
    on this member's LAN address, and :attr:`lan_address`, :attr:`lan_name`
    and :attr:`members` say where it is.  The token appears in no message
    and no ``repr``.  A LAN member is one WebSocket: use a stack that joins
    a LAN from one event loop (the socket shim's engine, after
    :func:`netshim.install`, is one); a second loop's connection would ask
    for the same name and be refused.

    ``reconnect_delay``, ``reconnect_max_delay`` and ``reconnect_attempts``
    (``None``: no limit) shape the reconnection that keeps listeners alive
    (see the module documentation); ``reconnect_seed`` seeds its jitter.
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
        lan: str | None = None,
        member: str | None = None,
        token: str | None = None,
        reconnect_delay: float = DEFAULT_RECONNECT_DELAY,
        reconnect_max_delay: float = DEFAULT_RECONNECT_MAX_DELAY,
        reconnect_attempts: int | None = None,
        reconnect_seed: int | None = None,
    ) -> None:
        if not isinstance(url, str):
            raise TypeError(f"Wisp URL must be a str, not {type(url).__name__}")
        url, query = _take_lan_query(url)
        self.endpoint: WebSocketEndpoint = parse_websocket_url(
            url,
            schemes={"wisp": False, "wisps": True, "ws": False, "wss": True},
            what="Wisp URL",
        )
        lan = lan if lan is not None else query.get("lan") or None
        member = member if member is not None else query.get("member")
        token = token if token is not None else query.get("token")
        if lan is None and (member or token):
            raise ValueError("member and token are only meaningful with lan (the LAN to join)")
        if lan is not None:
            if version == 1:
                raise ValueError("joining a LAN needs Wisp version 2 (its INFO carries the join)")
            # Validates the lengths now rather than at the first connect.
            wisp.LanExtension(lan, member or "", token or "")
        if not 0 < reconnect_delay <= reconnect_max_delay:
            raise ValueError(
                "reconnect_delay must be positive and at most reconnect_max_delay, got "
                f"{reconnect_delay!r} and {reconnect_max_delay!r}"
            )
        if reconnect_attempts is not None and reconnect_attempts < 1:
            raise ValueError(f"reconnect_attempts must be at least 1, got {reconnect_attempts!r}")
        self.lan = lan
        self.member = member or None
        self._token = token or ""
        self.reconnect_delay = reconnect_delay
        self.reconnect_max_delay = reconnect_max_delay
        self.reconnect_attempts = reconnect_attempts
        self._random = random.Random(reconnect_seed)
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
        self._reviving: dict[int, anyio.Lock] = {}
        self._bindings: dict[int, set[_LanBinding]] = {}
        self._guard = threading.Lock()
        # What the LAN said last (kept across reconnections; see members).
        self._joined: wisp.Membership | None = None
        self._members: dict[str, str] = {}
        self._before_rejoin: dict[str, str] = {}

    def _public_url(self) -> str:
        e = self.endpoint
        scheme = "wisps" if e.secure else "wisp"
        host = f"[{e.host}]" if ":" in e.host else e.host
        return f"{scheme}://{host}:{e.port}{e.path}"

    def __repr__(self) -> str:
        if self.lan is None:
            return f"WispStack({self.url!r})"
        return f"WispStack({self.url!r}, lan={self.lan!r}, member={self.member!r})"

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

    @property
    def lan_address(self) -> str | None:
        """This member's address on its LAN once joined (kept while reconnecting); else ``None``."""
        return None if self._joined is None else self._joined.host

    @property
    def lan_name(self) -> str | None:
        """This member's DNS name once joined (``"alice.demo"``); else ``None``."""
        return None if self._joined is None else self._joined.name

    @property
    def lan_prefix_length(self) -> int | None:
        """The LAN's prefix length once joined (24 for a ``/24``); else ``None``."""
        return None if self._joined is None else self._joined.prefix_length

    @property
    def members(self) -> Mapping[str, str]:
        """The other members of the LAN, DNS name -> address, as the server's news told.

        A read-only snapshot.  News arrives while some task waits on the
        stack (see the module documentation).  After a reconnection the
        server tells the members anew: only those new or moved are told as
        ``member-joined``, and those it no longer tells of as ``member-left``
        once the first packet after its list arrives.
        """
        return MappingProxyType(dict(self._members))

    async def connect(self) -> None:
        """Open the WebSocket and finish the Wisp handshake now rather than at first use.

        With ``lan``, also join the LAN: :attr:`lan_address` is set when this
        returns.  Raises ``ConnectionRefusedError`` (a
        :class:`~netshim.transports.websocket.WebSocketHandshakeError` when
        the HTTP upgrade failed), ``PermissionError`` when the server refused
        the credentials or the LAN's token (or the LAN is unknown),
        ``OSError(EADDRINUSE)`` when the member name is taken,
        ``OSError(EOPNOTSUPP)`` when the server has no LANs, ``TimeoutError``.
        """
        await self._session()

    async def _session(self, *, reviving: bool = False) -> _Session:
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
            self.emit(TunnelEvent(TunnelEventKind.CONNECTING))
            try:
                session = await self._open_session()
                self._sessions[key] = session
                await self._register_again(session)
            except Exception as exc:
                if not reviving:
                    self.emit(TunnelEvent(TunnelEventKind.CLOSED, reason=_describe(exc)))
                raise
            session.announce()
            return session

    async def _register_again(self, session: _Session) -> None:
        """Make this thread's listeners listen on a new connection, each on the port it had."""
        bindings = [b for b in self._bindings_of(session.key) if b.session is not session]
        if not bindings:
            return
        if not session.conn.lan_enabled:
            error = self._no_listening()
            for binding in bindings:
                binding.error = error
            return
        for binding in bindings:
            await binding.register(session)
        with anyio.move_on_after(self.connect_timeout):
            await session.pump_until(lambda: all(b.answered for b in bindings))
        if session.error is not None:
            raise session.error
        for binding in bindings:
            if not binding.answered:
                binding.error = os_error(
                    errno.ETIMEDOUT, f"the Wisp server {self.url} did not answer LISTEN"
                )

    def _bindings_of(self, key: int) -> set[_LanBinding]:
        with self._guard:
            return self._bindings.setdefault(key, set())

    def _on_session_lost(self, session: _Session, error: OSError) -> None:
        if self._sessions.get(session.key) is not session:
            return
        if self._bindings_of(session.key):
            event = TunnelEvent(
                TunnelEventKind.RECONNECTING, reason=_describe(error), attempt=1, delay=0.0
            )
        else:
            event = TunnelEvent(TunnelEventKind.CLOSED, reason=_describe(error))
        self.emit(event)

    def _backoff(self, failures: int) -> float:
        """The wait after ``failures`` failed attempts: exponential, capped, jittered."""
        delay = min(self.reconnect_max_delay, self.reconnect_delay * 2.0 ** min(failures - 1, 32))
        return float(delay * self._random.uniform(0.5, 1.0))

    async def _revive(self, binding: _LanBinding) -> None:
        """Reconnect (with backoff) until ``binding`` listens again, fails, or is closed.

        Run by whoever waits on a listener; the others wait for it.  A
        refusal of the credentials or the LAN (``PermissionError``) or a
        server without LANs ends the attempts; so does ``reconnect_attempts``.
        What ended them becomes the error of every listener of this thread.
        """
        key = binding.key
        with self._guard:
            lock = self._reviving.setdefault(key, anyio.Lock())
        async with lock:
            failures = 0
            while True:
                gone = binding not in self._bindings_of(key)
                if binding.live or binding.error is not None or gone:
                    return
                session = self._sessions.get(key)
                if session is not None and session.alive and binding.session is session:
                    if not binding.answered:
                        await session.pump_until(lambda: binding.answered)
                        continue
                    # Answered, yet not live: the listener's stream is gone.
                    binding.error = os_error(
                        errno.ECONNABORTED, f"the Wisp server {self.url} closed the listener"
                    )
                    return
                try:
                    if session is not None and session.alive:
                        # A connection opened by someone else before this
                        # listener was made again on it.
                        await self._register_again(session)
                    else:
                        await self._session(reviving=True)
                    continue
                except Exception as exc:
                    error = exc if isinstance(exc, OSError) else connection_reset()
                    failures += 1
                    fatal = isinstance(error, PermissionError) or error.errno == errno.EOPNOTSUPP
                    limit = self.reconnect_attempts
                    if fatal or (limit is not None and failures >= limit):
                        self.emit(TunnelEvent(TunnelEventKind.CLOSED, reason=_describe(error)))
                        for other in list(self._bindings_of(key)):
                            other.error = error
                        return
                    delay = self._backoff(failures)
                    self.emit(
                        TunnelEvent(
                            TunnelEventKind.RECONNECTING,
                            reason=_describe(error),
                            attempt=failures + 1,
                            delay=delay,
                        )
                    )
                    await anyio.sleep(delay)

    def _on_membership(self, session: _Session, event: wisp.Membership) -> None:
        change = event.change
        if change is wisp.MembershipChange.JOINED:
            session.joined = event
            self._joined = event
            # The server tells every member anew: only news is told on.
            self._before_rejoin, self._members = self._members, {}
        elif change is wisp.MembershipChange.MEMBER_JOINED:
            known = self._before_rejoin.pop(event.name, None)
            self._members[event.name] = event.host
            if known != event.host:
                session.tell(
                    TunnelEvent(TunnelEventKind.MEMBER_JOINED, address=event.host, name=event.name)
                )
        elif change is wisp.MembershipChange.MEMBER_LEFT:
            self._members.pop(event.name, None)
            self._before_rejoin.pop(event.name, None)
            session.tell(
                TunnelEvent(TunnelEventKind.MEMBER_LEFT, address=event.host, name=event.name)
            )

    def _roster_complete(self, session: _Session) -> None:
        """Members known before a reconnection and not told of again have left meanwhile."""
        gone, self._before_rejoin = self._before_rejoin, {}
        for name, address in gone.items():
            session.tell(TunnelEvent(TunnelEventKind.MEMBER_LEFT, address=address, name=name))

    def _on_lan(self, host: str) -> bool:
        """Whether ``host`` (an address or a name) is on this member's LAN."""
        joined = self._joined
        if joined is None or self.lan is None:
            return False
        name = host.lower().rstrip(".")
        if name.endswith("." + self.lan.lower()) or name in self._members:
            return True
        try:
            network = ipaddress.ip_network(f"{joined.host}/{joined.prefix_length}", strict=False)
            return ipaddress.ip_address(host.split("%")[0]) in network
        except ValueError:
            return False

    def _no_listening(self) -> OSError:
        return os_error(
            errno.EOPNOTSUPP,
            f"the Wisp server {self.url} does not offer listening (netshim's LAN extension, "
            "docs/lan.md): a tunnel to it only connects outwards",
        )

    def _listen_error(self, reason: int, binding: _LanBinding) -> OSError:
        """The error of a ``LISTEN`` the server answered with ``CLOSE(reason)``."""
        host = binding.host or self.lan_address or "this member's LAN address"
        where = f"{host}:{binding.port or '(any port)'}"
        kind = "UDP" if binding.stream_type is wisp.StreamType.UDP else "TCP"
        name = wisp._reason_name(reason)
        if binding.address is not None:
            return os_error(
                errno.ECONNABORTED,
                f"the Wisp server {self.url} closed the {kind} listener on {where} ({name})",
            )
        if reason == wisp.CloseReason.ADDRESS_IN_USE:
            return os_error(errno.EADDRINUSE, f"{kind} {where} on LAN {self.lan} (ADDRESS_IN_USE)")
        if reason == wisp.CloseReason.LISTEN_QUOTA:
            return os_error(
                errno.ENOBUFS,
                f"the Wisp server {self.url} allows this member no more listeners "
                "(LISTEN_QUOTA); close one first",
            )
        if reason == wisp.CloseReason.NOT_A_MEMBER:
            return os_error(
                errno.EADDRNOTAVAIL,
                f"not a member of a LAN at the Wisp server {self.url} (NOT_A_MEMBER): to listen, "
                "join one with WispStack(url, lan=..., member=..., token=...)",
            )
        if reason == wisp.CloseReason.BLOCKED:
            return DestinationBlockedError(
                f"listening on {kind} {where}",
                f"the Wisp server {self.url} blocked it (close reason 0x48 BLOCKED)",
                "ask the server's operator to allow the port",
            )
        return os_error(
            errno.ECONNREFUSED, f"the Wisp server {self.url} refused to listen on {where} ({name})"
        )

    def _listen_host(self, host: str | None, function: str) -> str:
        """What ``LISTEN`` names for a local ``host``: empty for every address, else ours."""
        if host in _WILDCARDS:
            return ""
        assert host is not None
        if self._joined is not None and host.lower() in (
            self._joined.host,
            self._joined.name.lower(),
        ):
            return self._joined.host
        where = (
            f"this member's LAN address is {self._joined.host}"
            if self._joined is not None
            else "this stack has no LAN address (join a LAN with lan=, member=, token=)"
        )
        raise os_error(
            errno.EADDRNOTAVAIL,
            f"{function}: {host} is not an address of this Wisp client; {where}, "
            "or listen on 0.0.0.0",
        )

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
                return await self._joined_session(websocket, conn)
            except BaseException:
                await websocket.aclose()
                raise
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
            return await self._joined_session(websocket, conn)
        except BaseException:
            await websocket.aclose()
            raise

    async def _joined_session(self, websocket: Any, conn: wisp.WispConnection) -> _Session:
        """The session on a WebSocket after the handshake, with the LAN joined if asked."""
        session = _Session(self, websocket, conn)
        if self.lan is None:
            return session
        if not conn.lan_enabled:
            raise os_error(
                errno.EOPNOTSUPP,
                f"the Wisp server {self.url} does not offer LANs (netshim's LAN extension, "
                f"docs/lan.md): cannot join LAN {self.lan!r}",
            )
        # The server tells the address right after accepting the connection.
        with anyio.move_on_after(HANDSHAKE_TIMEOUT):
            await session.pump_until(lambda: session.joined is not None)
        if session.error is not None:
            raise session.error
        if session.joined is None:
            raise os_error(
                errno.ETIMEDOUT,
                f"the Wisp server {self.url} did not tell the LAN address within "
                f"{HANDSHAKE_TIMEOUT}s",
            )
        return session

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
                            refusal = self._join_refusal(event.reason)
                            if refusal is not None:
                                raise refusal
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

    def _join_refusal(self, reason: int) -> OSError | None:
        """The error of a LAN join the server refused with ``reason`` (``None``: not a join's)."""
        if self.lan is None:
            return None
        who = self.member or "us"
        what = f"the Wisp server {self.url} refused to let {who} join LAN {self.lan!r}"
        if reason == wisp.CloseReason.AUTH_BAD_PASSWORD:
            credentials = " or the credentials" if self.username is not None else ""
            return os_error(
                errno.EACCES,
                f"{what}: unknown LAN or wrong token{credentials} (AUTH_BAD_PASSWORD)",
            )
        if reason == wisp.CloseReason.NAME_IN_USE:
            return os_error(
                errno.EADDRINUSE,
                f"{what}: the member name {self.member!r} is in use (NAME_IN_USE)",
            )
        return None

    def _answer(self, info: wisp.Info) -> tuple[wisp.Extension, ...]:
        """Our INFO extensions: those of the server's we support, with our credentials."""
        answer: list[wisp.Extension] = []
        for extension in info.extensions:
            if isinstance(extension, wisp.LanExtension):
                if self.lan is None:
                    answer.append(wisp.LanExtension())
                else:
                    answer.append(wisp.LanExtension(self.lan, self.member or "", self._token))
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

    async def listen_tcp(
        self,
        host: str | None = None,
        port: int = 0,
        *,
        backlog: int = DEFAULT_BACKLOG,
        ipv6_only: bool = False,
    ) -> TcpListener:
        """Listen on ``port`` (0: the server picks one) of this member's LAN address.

        ``host`` is ``None``, ``""``, ``"0.0.0.0"`` or ``"::"`` (every
        address of this member, which is its LAN address), or the LAN
        address or name itself.  Returns once the server listens; the
        listener's ``local_address`` is the LAN address and the port.
        Connections wait in a backlog of ``backlog`` (at most
        :data:`MAX_BACKLOG`) for :meth:`~TcpListener.accept`; beyond it they
        are refused.  Raises ``OSError`` with ``EADDRINUSE`` (the port is
        taken), ``ENOBUFS`` (the server's listener quota for this member is
        used up), ``EADDRNOTAVAIL`` (not a member of a LAN, or ``host`` is not
        this member's), ``EOPNOTSUPP`` (the server does not offer listening),
        a :class:`~netshim.policy.DestinationBlockedError` when the server's
        policy forbids the port, ``TimeoutError`` when the server does not
        answer within ``connect_timeout``.
        """
        from .._addresses import check_port

        port = check_port(port, "listen_tcp")
        wire_host = self._listen_host(host, "listen_tcp")
        session = await self._session()
        if not session.conn.lan_enabled:
            raise self._no_listening()
        listener = _WispListener(self, wire_host, port, backlog)
        await self._bind(session, listener.binding)
        return listener

    async def _bind(self, session: _Session, binding: _LanBinding) -> None:
        """Send ``binding``'s ``LISTEN`` and wait for the answer; raise a refusal."""
        bindings = self._bindings_of(binding.key)
        bindings.add(binding)
        try:
            await binding.register(session)
            with anyio.move_on_after(self.connect_timeout) as scope:
                await session.pump_until(lambda: binding.answered)
            if scope.cancelled_caught:
                raise os_error(
                    errno.ETIMEDOUT,
                    f"the Wisp server {self.url} did not answer LISTEN within "
                    f"{self.connect_timeout}s",
                )
            if binding.error is not None:
                raise binding.error
            if binding.address is None:
                raise session.error or connection_reset()
        except BaseException:
            bindings.discard(binding)
            await binding.close()
            raise

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

        On a stack that joins a LAN, a socket bound to a port (or to the
        LAN address) listens there: one UDP listener stream carries its
        datagrams to and from LAN members, ``receive`` returns each with the
        member's address, and ``local_address`` is the LAN address and port.
        Datagrams to destinations outside the LAN still go as above.
        Raises as :meth:`listen_tcp` for the binding.
        """
        connected = None if remote is None else self.destination(remote[0], remote[1], "open_udp")
        sock = _WispUdpSocket(self, connected)
        lan_bound = self.lan is not None and (
            (port != 0 and host in _WILDCARDS)
            or (self._joined is not None and host in (self._joined.host, self._joined.name))
        )
        if connected is not None or lan_bound:
            session = await self._session()
            if not session.conn.udp_allowed:
                raise os_error(errno.EOPNOTSUPP, f"the Wisp server {self.url} offers no UDP")
            if lan_bound:
                if not session.conn.lan_enabled:
                    raise self._no_listening()
                wire_host = self._listen_host(host, "open_udp")
                binding = _LanBinding(self, sock, wisp.StreamType.UDP, wire_host, port)
                await self._bind(session, binding)
                sock.binding = binding
        return sock

    async def aclose(self) -> None:
        """Close every connection and listener; the next use connects again.  Idempotent."""
        with self._guard:
            bindings = [b for group in self._bindings.values() for b in group]
            self._bindings.clear()
        for binding in bindings:
            binding.owner.closed = True
            binding.owner.waiters.wake()
        announced = any(s.announced and s.alive for s in self._sessions.values())
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.aclose()
        if announced:
            self.emit(TunnelEvent(TunnelEventKind.CLOSED, reason="the stack was closed"))
