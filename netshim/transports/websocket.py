"""A WebSocket client over any Stack, on the websockets library's sans-I/O protocol.

The tunnel stacks (Wisp, websockify, SOCKS5 behind a websockify) all sit on
a WebSocket.  Driving ``websockets.client.ClientProtocol`` by hand, instead
of using the library's asyncio client, keeps them on anyio (so they run under
asyncio and trio) and lets the TCP connection itself come from any
:class:`~netshim.Stack`: normally the host network, but a VirtualNetwork host
works as well, which is how the tests put a gateway inside a virtual network.

Reading and writing are independent: :meth:`ClientWebSocket.receive` holds a
receive lock and :meth:`ClientWebSocket.send` a send lock, so one task may
read while another writes, and two writers never interleave frames.  Control
frames the protocol answers by itself (pongs, the close echo) are flushed by
whichever of the two next holds the send lock.

Throughput.  The protocol parses the handshake, control frames and the
closing handshake; data frames take the short path of
:mod:`netshim.transports._frames` both ways (one copy per byte: unmasking
in, masking out).  A receive asks the TCP stream for up to
:data:`READ_SIZE` bytes and turns everything that arrived into messages at
once, so one read serves many messages, and the send lock is only taken on
the receive side when the protocol has something to answer.  The locks skip
their scheduling point when nobody else holds them: the socket reads and
writes under them already let other tasks run.

On asyncio and uvloop a plain TCP connection of the host network is read by
:class:`_TransportReader`, a protocol set on the connection's transport in
place of anyio's: anyio's stream resumes the transport before each wait and
pauses it after (a selector registration and removal per read, 12.6 % of a
download's client CPU under asyncio), while this reader leaves it reading
and pauses it only when :data:`READ_AHEAD` bytes wait unconsumed, so that a
program that does not read still stops the client's reading, the kernel's
buffers fill and the gateway stops sending.  Writes go into the same
transport directly (:meth:`ClientWebSocket.send_nowait`: header and masked
payload in one ``writelines``, no lock, no scheduling point), with a
high-water mark of :data:`WRITE_HIGH_WATER` instead of anyio's 0 (a wait
for every write the kernel did not take whole); a sender waits through
:meth:`ClientWebSocket.drain` only above it.  Anything the protocol writes
(pongs, the close) takes anyio's stream under the send lock, and a direct
write waits while that lock is held, so frames never interleave.  Trio,
TLS and the other stacks read through ``receive()`` and write through
anyio's stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from typing import Any, cast

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.streams.tls
from websockets.client import ClientProtocol
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Subprotocol

from .._errors import connection_reset
from ..stack import Stack
from ._frames import FrameReader, close_reason, masked_frame, masked_frame_parts
from ._url import WebSocketEndpoint as WebSocketEndpoint
from ._url import parse_websocket_url as parse_websocket_url

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_OPEN_TIMEOUT",
    "ClientWebSocket",
    "WebSocketEndpoint",
    "WebSocketHandshakeError",
    "open_websocket",
    "parse_websocket_url",
]

# The websockets library's default limit for one incoming message.
DEFAULT_MAX_MESSAGE_SIZE = 1 << 20
# Connecting and upgrading: the same bound the Wisp drafts give a handshake
# (five seconds), doubled because it includes a TCP connect and maybe TLS.
DEFAULT_OPEN_TIMEOUT = 10.0
# asyncio reads up to 256 KiB from a socket at a time and anyio returns at
# most what was asked, copying the rest of a larger chunk it holds; asking for
# more than asyncio ever reads takes each chunk whole, with no copy.
READ_SIZE = 1 << 20
# How much a :class:`_TransportReader` takes in ahead of its consumer before
# it pauses the transport: four of asyncio's largest reads.
READ_AHEAD = 1 << 20
# Frames written straight into a host connection's transport wait for it
# only while more than this waits in its buffer (until a quarter of it is
# left): the kernel's socket buffer takes the rest.  anyio's own limit is 0,
# a wait for every write that the kernel did not take whole.
WRITE_HIGH_WATER = 256 * 1024
# A server's response head (status line and headers) fits in this.
MAX_RESPONSE_HEAD = 64 * 1024


class WebSocketHandshakeError(ConnectionRefusedError):
    """The server answered the upgrade with something other than ``101``.

    A ``ConnectionRefusedError`` so that code expecting socket errors treats
    it as a refused connection; ``status`` and ``body`` say what the server said.
    """

    def __init__(self, url: str, status: int | None, body: str) -> None:
        detail = f"HTTP {status}" if status is not None else "no valid HTTP response"
        text = body.strip().splitlines()[0][:200] if body.strip() else ""
        super().__init__(
            111, f"WebSocket upgrade to {url} refused: {detail}" + (f": {text}" if text else "")
        )
        self.status = status
        self.body = body


class _TransportReader(asyncio.Protocol):
    """Takes an asyncio transport's reads in place of anyio's protocol (see the module docs).

    ``inner`` is anyio's protocol, which anyio's stream still uses for
    writing and closing: write flow control, the end of the stream and the
    connection's loss are passed on to it.
    """

    def __init__(self, transport: Any, inner: Any) -> None:
        self.transport = transport
        self.inner = inner
        # What anyio's protocol queued before the hand-over comes first.
        self.chunks: deque[bytes] = deque(inner.read_queue)
        inner.read_queue.clear()
        self.buffered = sum(len(chunk) for chunk in self.chunks)
        self.eof = bool(inner.is_at_eof) or transport.is_closing()
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused = not transport.is_reading()
        # Write flow control for frames written straight into the transport
        # (ClientWebSocket.send_nowait): whether the transport's buffer is
        # above WRITE_HIGH_WATER, and who waits for it to drain.
        self.writing_paused = not inner.write_event.is_set()
        self.drainers: list[asyncio.Future[None]] = []
        self.lost = False
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_HIGH_WATER // 4)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered >= READ_AHEAD and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        # Keep the transport open: the close handshake may still be sent.
        return bool(self.inner.eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self.lost = True
        self._wake()
        self._wake_drainers()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake_drainers()
        self.inner.resume_writing()

    def _wake_drainers(self) -> None:
        drainers, self.drainers = self.drainers, []
        for drainer in drainers:
            if not drainer.done():
                drainer.set_result(None)

    async def drain(self) -> None:
        """Wait until the transport's buffer is under its low-water mark, or the connection lost."""
        while self.writing_paused and not self.lost:
            drainer = asyncio.get_running_loop().create_future()
            self.drainers.append(drainer)
            await drainer

    def _wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self) -> list[bytes]:
        """Everything that arrived, waiting for it if nothing did; empty at the end."""
        while not self.chunks and not self.eof:
            if self.paused:
                self.paused = False
                self.transport.resume_reading()
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        chunks = list(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        if self.paused and not self.eof:
            # Resumed now: the kernel's next reads overlap the parsing of these.
            self.paused = False
            self.transport.resume_reading()
        return chunks


def _transport_reader(stream: anyio.abc.ByteStream) -> _TransportReader | None:
    """A :class:`_TransportReader` set on the asyncio transport behind ``stream``, if it has one.

    Only a host TCP stream (anyio's socket stream inside) on asyncio or
    uvloop has one; anything else is read through ``receive()``.
    """
    socket_stream = getattr(stream, "_stream", None)
    transport: Any = getattr(socket_stream, "_transport", None)
    inner: Any = getattr(socket_stream, "_protocol", None)
    # uvloop's transports are not ``asyncio.Transport`` subclasses.
    if (
        not all(
            hasattr(transport, name)
            for name in ("set_protocol", "pause_reading", "resume_reading", "is_reading")
        )
        or not hasattr(inner, "read_queue")
        or not hasattr(inner, "is_at_eof")
        or transport.is_closing()
    ):
        return None
    reader = _TransportReader(transport, inner)
    transport.set_protocol(reader)
    return reader


class ClientWebSocket:
    """An open client WebSocket carrying binary messages."""

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        protocol: ClientProtocol,
        leftover: list[bytes],
        *,
        max_message_size: int,
    ) -> None:
        self.stream = stream
        self.protocol = protocol
        self.max_message_size = max_message_size
        self._leftover = leftover
        self._reader = FrameReader(
            protocol, masked=False, max_message_size=max_message_size, views=True
        )
        # Read-only views among them too (``views=True``).
        self._messages = cast("deque[bytes | str | memoryview]", self._reader.messages)
        self._send_lock = anyio.Lock(fast_acquire=True)
        self._receive_lock = anyio.Lock(fast_acquire=True)
        self._closed = False
        self._eof = False
        self.bytes_in = 0
        self.bytes_out = 0
        self._transport_reader = _transport_reader(stream)

    @property
    def subprotocol(self) -> str | None:
        return self.protocol.subprotocol

    @property
    def closed(self) -> bool:
        """Whether the connection ended (either side closed, or it broke)."""
        return self._closed or self._eof or self.protocol.state is State.CLOSED

    async def _flush(self) -> None:
        async with self._send_lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        for chunk in self.protocol.data_to_send():
            if self._closed:
                return
            if chunk:
                try:
                    await self.stream.send(chunk)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    self._closed = True
                    raise connection_reset() from None
                self.bytes_out += len(chunk)
            else:
                # The protocol is done with the TCP connection.
                await self._close_stream()

    @property
    def writable(self) -> bool:
        """Whether :meth:`send_nowait` may be called: a message goes out now, with no waiting.

        Only on asyncio and uvloop with a host connection (its transport is
        written directly), while the connection is open, nothing else is
        being sent, and the transport's buffer is below its high-water mark.
        """
        reader = self._transport_reader
        return (
            reader is not None
            and not reader.writing_paused
            and not reader.lost
            and not self._send_lock.locked()
            and not self.protocol.writes
            and not self._closed
            and not self._eof
            and self.protocol.state is State.OPEN
        )

    def send_nowait(self, data: bytes | memoryview, prefix: bytes = b"") -> None:
        """Write one binary message, ``prefix + data``, into the transport at once.

        Only while :attr:`writable`.  The frame is written as two parts (one
        ``writev`` on uvloop) with ``data`` masked straight from the caller's
        buffer; a caller that sends more should :meth:`drain` while
        :attr:`must_drain`.
        """
        reader = self._transport_reader
        if reader is None or not self.writable:
            raise connection_reset()
        head, payload = masked_frame_parts(data, prefix)
        reader.transport.writelines((head, payload))
        self.bytes_out += len(head) + len(payload)

    @property
    def must_drain(self) -> bool:
        """Whether a sender should :meth:`drain` before its next :meth:`send_nowait`."""
        reader = self._transport_reader
        return reader is not None and reader.writing_paused and not reader.lost

    async def drain(self) -> None:
        """Wait until what :meth:`send_nowait` wrote went out far enough to write more."""
        reader = self._transport_reader
        if reader is not None:
            await reader.drain()

    async def send(self, data: bytes, prefix: bytes = b"") -> None:
        """Send one binary message, ``prefix + data`` (joined as the frame is built).

        Where the connection is :attr:`writable`, the frame goes into the
        transport at once (no lock) and this waits for the transport only
        when its buffer is then above its high-water mark; it is a scheduling
        point either way, as anyio's ``send`` is (bulk senders that want none
        per message use :meth:`send_nowait`).  Raises
        ``ConnectionResetError`` once the connection is gone.
        """
        if self.writable:
            self.send_nowait(data, prefix)
            if self.must_drain:
                await self.drain()
            else:
                await anyio.lowlevel.checkpoint()
            return
        async with self._send_lock:
            if self.closed or self.protocol.state is not State.OPEN:
                raise connection_reset()
            # Whatever the protocol queued (a pong) goes first, then the frame.
            await self._flush_locked()
            frame = masked_frame(data, prefix)
            try:
                await self.stream.send(frame)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                self._closed = True
                raise connection_reset() from None
            self.bytes_out += len(frame)

    async def receive(self) -> bytes | None:
        """The next whole message (text arrives UTF-8 encoded); ``None`` once it ended.

        Returns at once, without a scheduling point, while messages from an
        earlier read are waiting.
        """
        message = await self.receive_view()
        return message if message is None or type(message) is bytes else bytes(message)

    async def receive_view(self) -> bytes | memoryview | None:
        """:meth:`receive`, where a message may come as a read-only view of what was read.

        Such a view never changes; taking it saves the copy :meth:`receive`
        makes of it.
        """
        if self._messages:
            return _as_bytes(self._messages.popleft())
        async with self._receive_lock:
            while not self._messages:
                if self.closed or self._reader.finished:
                    return None
                if self._leftover:
                    data = self._leftover.pop(0)
                elif self._transport_reader is not None:
                    chunks = await self._transport_reader.read()
                    if self._closed:
                        return None
                    if len(chunks) > 1:
                        # All but the last are fed here; the last takes the
                        # common path below (and an empty list is the end).
                        for chunk in chunks[:-1]:
                            self.bytes_in += len(chunk)
                            self._reader.feed(chunk)
                    data = chunks[-1] if chunks else b""
                else:
                    try:
                        data = await self.stream.receive(READ_SIZE)
                    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        data = b""
                    except anyio.ClosedResourceError:
                        self._closed = True
                        return None
                control = self._reader.control_frames
                if data:
                    self.bytes_in += len(data)
                    self._reader.feed(data)
                else:
                    self._eof = True
                    self._reader.feed_eof()
                # Only control frames, the end of the stream and protocol
                # errors (which leave the OPEN state) make the protocol write.
                if (
                    control != self._reader.control_frames
                    or not data
                    or self.protocol.state is not State.OPEN
                ):
                    with contextlib.suppress(ConnectionResetError):
                        await self._flush()
            return _as_bytes(self._messages.popleft())

    async def _close_stream(self) -> None:
        self._closed = True
        with anyio.CancelScope(shield=True):
            await self.stream.aclose()

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame if possible and close the TCP connection. Idempotent."""
        if self._closed:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(1):
            async with self._send_lock:
                if self.protocol.state is State.OPEN:
                    self.protocol.send_close(code, close_reason(reason))
                    with contextlib.suppress(ConnectionResetError):
                        await self._flush_locked()
        await self._close_stream()


async def open_websocket(
    endpoint: WebSocketEndpoint,
    *,
    stack: Stack | None = None,
    subprotocols: tuple[str, ...] = (),
    headers: dict[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    open_timeout: float = DEFAULT_OPEN_TIMEOUT,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> ClientWebSocket:
    """Connect to ``endpoint`` through ``stack`` (the host network by default) and upgrade.

    Raises what the stack's ``connect_tcp`` raises, ``TimeoutError`` after
    ``open_timeout`` seconds, and :class:`WebSocketHandshakeError` when the
    server does not switch protocols.
    """
    if stack is None:
        from ..stacks.host import HostStack

        stack = HostStack()
    from websockets.uri import parse_uri

    uri = parse_uri(endpoint.url)
    protocol = ClientProtocol(
        uri,
        subprotocols=[Subprotocol(p) for p in subprotocols] or None,
        max_size=max_message_size,
    )
    with anyio.fail_after(open_timeout):
        tcp = await stack.connect_tcp(endpoint.host, endpoint.port)
        stream: anyio.abc.ByteStream = tcp
        try:
            if endpoint.secure:
                context = ssl_context or ssl.create_default_context()
                stream = await anyio.streams.tls.TLSStream.wrap(
                    tcp, hostname=endpoint.host, ssl_context=context, standard_compatible=False
                )
            request = protocol.connect()
            for name, value in (headers or {}).items():
                request.headers[name] = value
            protocol.send_request(request)
            for chunk in protocol.data_to_send():
                await stream.send(chunk)
            response: Response | None = None
            # The protocol parses the response only: frames the server sent
            # right behind its 101 (a Wisp server's first packets) go to the
            # frame reader, which takes over from the first byte after it.
            buffered = b""
            head_done = False
            leftover: list[bytes] = []
            while response is None:
                try:
                    data = await stream.receive(READ_SIZE)
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    data = b""
                if not data:
                    protocol.receive_eof()
                elif head_done:
                    # The body of a response that is not a 101.
                    protocol.receive_data(data)
                else:
                    buffered += data
                    end = buffered.find(b"\r\n\r\n")
                    if end < 0:
                        if len(buffered) > MAX_RESPONSE_HEAD:
                            raise WebSocketHandshakeError(endpoint.url, None, "response too long")
                        continue
                    head_done = True
                    protocol.receive_data(buffered[: end + 4])
                    rest = buffered[end + 4 :]
                    response = _response_in(protocol)
                    if response is None:
                        # A response with a body (not a 101): the protocol needs it.
                        protocol.receive_data(rest)
                    elif rest:
                        leftover.append(rest)
                if response is None:
                    response = _response_in(protocol)
                if response is None and not data:
                    raise WebSocketHandshakeError(endpoint.url, None, "")
            if protocol.handshake_exc is not None or response.status_code != 101:
                body = (response.body or b"").decode("utf-8", "replace")
                raise WebSocketHandshakeError(endpoint.url, response.status_code, body)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            raise
    return ClientWebSocket(stream, protocol, leftover, max_message_size=max_message_size)


def _response_in(protocol: ClientProtocol) -> Response | None:
    """The HTTP response among the protocol's new events, if it parsed one."""
    for event in protocol.events_received():
        if isinstance(event, Response):
            return event
    return None


def _as_bytes(message: bytes | str | memoryview) -> bytes | memoryview:
    return message.encode() if isinstance(message, str) else message
