"""A server WebSocket over any anyio byte stream, on the websockets library's sans-I/O protocol.

The library does the HTTP upgrade, the control frames and the closing
handshake; data frames in both directions take the short path of
:mod:`netshim.transports._frames` (one copy each way instead of several).

Using ``websockets.server.ServerProtocol`` directly (rather than its asyncio
server) keeps the gateway on anyio, so it runs under asyncio and trio and
can accept clients from any :class:`~netshim.Stack`, and it gives the
gateway the two properties the Wisp servers measured in the issue lacked:

* **one writer**: frames are appended to the protocol's output buffer by
  anyone, and only the writer task puts bytes on the TCP stream, so
  concurrent senders can never interleave or kill each other;
* **bounded output**: :meth:`WebSocket.send` waits while more than
  ``high_water`` bytes are queued, so a producer (a stream reading its
  upstream) stops reading when the client is slow, and memory stays bounded.
  Control replies (``CONTINUE``, ``CLOSE``, pongs) use :meth:`send_nowait`
  so that the reader never waits on the writer; past ``hard_limit``
  (``high_water`` plus 256 KiB) :meth:`WebSocket.receive` reads no more,
  because a client that floods us with requests (pings, say) while never
  reading is the only way to get there.

On asyncio and uvloop, when the byte stream is a socket's (anyio's asyncio
stream, or the host stack's around it), frames skip the writer task: each
goes straight into the socket's transport (``writelines``, so a header and a
payload leave in one ``writev`` on uvloop without being joined), in the order
they were made, and the transport's own buffer is the output that the bounds
above count.  A download then costs no task switch and no copy per message
on the gateway's side; profiles of one fast stream had the writer's wake-up,
anyio's checkpoint in ``send`` and the join at about a fifth of the
gateway's CPU time.  The writer task only ends the connection: once the
protocol asks for that, it waits for the transport to empty and closes it.
Elsewhere (trio, a virtual stack's streams) the writer task does the writing.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import anyio
import anyio.abc
from websockets.protocol import State
from websockets.server import ServerProtocol

from ..transports._frames import FrameReader, close_reason, frame_header

__all__ = ["DEFAULT_HIGH_WATER", "WebSocket", "socket_transport"]

# 1 MiB queued towards the client is enough to keep a loopback or LAN link
# busy between two writer wake-ups, and small enough that the 64 MiB budget
# of the issue leaves room for many connections.
DEFAULT_HIGH_WATER = 1 << 20
# What control replies (pongs, CONTINUE, CLOSE) may add to a full output before
# the reader stops: a client that sends pings and never reads gets this far.
CONTROL_ALLOWANCE = 256 * 1024
# What one read of the client's TCP stream asks for: asyncio's selector
# transports read up to 256 KiB at a time, and anyio splits (copying) any
# chunk larger than the read asks for, so asking for less than that costs a
# copy of the rest for each smaller read.  It also lets one read carry a whole
# 64 KiB DATA packet plus its WebSocket header instead of two reads.
DEFAULT_READ_SIZE = 1 << 18
# The writer joins queued frames into one write up to this size: small frames
# (CONTINUE, CLOSE, a short reply) then share a system call, and a burst of
# large ones costs one copy instead of one call each.
WRITE_BATCH = 1 << 18
# A message shorter than this is joined with its header and written once; a
# longer one goes as two buffers of one writelines (no copy of the payload).
SHORT_MESSAGE = 4096


class SocketTransport(Protocol):
    """What the direct path uses of an asyncio (or uvloop) socket transport."""

    def write(self, data: bytes | memoryview) -> None: ...
    def writelines(self, data: Any) -> None: ...
    def get_write_buffer_size(self) -> int: ...
    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...
    def is_closing(self) -> bool: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def set_protocol(self, protocol: Any) -> None: ...


def socket_transport(stream: object) -> tuple[SocketTransport, Any] | None:
    """The asyncio transport and protocol under ``stream``, if it is a socket's on asyncio.

    ``stream`` is anyio's asyncio socket stream or the host stack's stream
    around one; anything else (trio, a virtual stack, a test's memory
    stream) gives ``None``, and its users keep to the stream's own methods.
    The protocol is anyio's: its ``write_event``, ``read_queue`` and the
    rest stay in use by the stream's methods.
    """
    for candidate in (stream, getattr(stream, "_stream", None)):
        transport = getattr(candidate, "_transport", None)
        protocol = getattr(candidate, "_protocol", None)
        if (
            transport is not None
            and hasattr(transport, "writelines")
            and hasattr(transport, "get_write_buffer_size")
            and hasattr(protocol, "write_event")
            and hasattr(protocol, "read_queue")
        ):
            return transport, protocol
    return None


def chain_callback(
    protocol: Any, transport: SocketTransport, name: str, after: Callable[..., None]
) -> None:
    """Make ``protocol.name(...)`` call ``after(...)`` once its own method has run.

    uvloop keeps the protocol's bound methods from when it was set, so the
    protocol is set again on the transport for the change to take effect.
    """
    before = getattr(protocol, name)

    def both(*args: Any) -> None:
        before(*args)
        after(*args)

    setattr(protocol, name, both)
    transport.set_protocol(protocol)


class WebSocket:
    """An accepted WebSocket (the HTTP handshake is already done)."""

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        protocol: ServerProtocol,
        *,
        max_message_size: int,
        high_water: int = DEFAULT_HIGH_WATER,
        leftover: bytes = b"",
    ) -> None:
        self.stream = stream
        self.protocol = protocol
        self.max_message_size = max_message_size
        self.high_water = high_water
        self.hard_limit = high_water + CONTROL_ALLOWANCE
        self.bytes_in = 0
        self.bytes_out = 0
        self._pending = 0
        # Everything for the client, in order: the protocol's frames (moved
        # here as soon as it makes them) and data frames built directly.  An
        # empty chunk is the protocol asking for the TCP connection to end.
        self._output: deque[bytes] = deque()
        self._reader = FrameReader(protocol, masked=True, max_message_size=max_message_size)
        self._messages = self._reader.messages
        self._wake = anyio.Event()
        self._drained = anyio.Event()
        self._drain_waited = False
        # Senders waiting for room, first come first served (see send()).
        self._waiters: deque[anyio.Event] = deque()
        # Producers that write from callbacks (see call_when_room()).
        self._room_callbacks: list[Callable[[], None]] = []
        self._closed = False
        self._leftover = leftover
        # Set by the writer once the output is empty (see flush()).
        self._flushed: anyio.Event | None = None
        # The socket's transport, when frames go straight into it (see the
        # module documentation); the protocol asked for the end of the TCP
        # connection (only the writer task closes it, once the transport is
        # empty).
        self._transport: SocketTransport | None = None
        self._end_asked = False
        found = socket_transport(stream)
        if found is not None:
            transport, anyio_protocol = found
            self._transport = transport
            # Paused above the high-water mark, resumed at half of it: the
            # senders' wake-up (anyio's limits of 0 paused on every byte left).
            transport.set_write_buffer_limits(high=high_water, low=high_water // 2)
            chain_callback(anyio_protocol, transport, "resume_writing", self._transport_room)
            chain_callback(anyio_protocol, transport, "connection_lost", self._transport_lost)

    @property
    def buffered_bytes(self) -> int:
        """Received bytes held for messages that are not whole yet (at most one message)."""
        return self._reader.buffered

    @property
    def queued_bytes(self) -> int:
        """Bytes for the client not yet taken by the operating system (what the bounds count)."""
        transport = self._transport
        if transport is None:
            return self._pending
        return transport.get_write_buffer_size()

    @property
    def subprotocol(self) -> str | None:
        return self.protocol.subprotocol

    def _transport_room(self) -> None:
        """The transport's buffer fell to half the high-water mark (or, flushing, to nothing)."""
        if self._drain_waited:
            self._drain_waited = False
            self._drained.set()
            self._drained = anyio.Event()
        self._wake_next_sender()
        self._call_room_callbacks()
        if self._flushed is not None or self._end_asked:
            self._wake.set()

    def _transport_lost(self, exc: Exception | None = None) -> None:
        self._closed = True
        self._drained.set()
        self._wake_next_sender()
        self._call_room_callbacks()
        self._signal_flushed()
        self._wake.set()

    async def run_writer(self) -> None:
        """The single writer: flush the output until the connection ends."""
        if self._transport is not None:
            await self._run_ender(self._transport)
            return
        output = self._output
        try:
            while True:
                if not output:
                    self._signal_flushed()
                    if self._closed and self.protocol.state is State.CLOSED:
                        return
                    await self._wake.wait()
                    self._wake = anyio.Event()
                    continue
                chunk = output.popleft()
                if not chunk:
                    # The protocol asks for the TCP connection to end.
                    self._closed = True
                    await self.stream.aclose()
                    return
                if output and len(chunk) < WRITE_BATCH and output[0]:
                    chunk = self._join_batch(chunk)
                await self.stream.send(chunk)
                self.bytes_out += len(chunk)
                self._pending = max(0, self._pending - len(chunk))
                if self._pending < self.high_water:
                    if self._drain_waited:
                        # Made anew only when someone waited on it, not
                        # for every write.
                        self._drain_waited = False
                        self._drained.set()
                        self._drained = anyio.Event()
                    self._wake_next_sender()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self._closed = True
        finally:
            self._closed = True
            self._drained.set()
            self._wake_next_sender()
            self._signal_flushed()

    async def _run_ender(self, transport: SocketTransport) -> None:
        """The writer's part on the direct path: report flushes and end the connection."""
        try:
            while not self._closed:
                if not transport.get_write_buffer_size():
                    self._signal_flushed()
                    if self._end_asked:
                        # Everything queued is with the kernel: closing loses nothing.
                        self._closed = True
                        await self.stream.aclose()
                        return
                elif self._flushed is not None or self._end_asked:
                    # Resumed (and so woken) only once nothing is left.
                    transport.set_write_buffer_limits(high=0, low=0)
                await self._wake.wait()
                self._wake = anyio.Event()
                if self._flushed is None and not self._end_asked and not self._closed:
                    transport.set_write_buffer_limits(
                        high=self.high_water, low=self.high_water // 2
                    )
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            self._transport_lost()

    def _signal_flushed(self) -> None:
        if self._flushed is not None:
            self._flushed.set()
            self._flushed = None

    async def flush(self) -> None:
        """Wait until the writer wrote everything queued (or ended).

        A connection's last frames (a close frame, a Wisp ``CLOSE``) are
        queued, not written: call this before cancelling the writer, or they
        may be lost.
        """
        transport = self._transport
        if self._closed:
            return
        if transport is not None:
            if not transport.get_write_buffer_size():
                return
        elif not self._output:
            return
        if self._flushed is None:
            self._flushed = anyio.Event()
        flushed = self._flushed
        self._wake.set()
        await flushed.wait()

    def _join_batch(self, first: bytes) -> bytes:
        output = self._output
        parts = [first]
        size = len(first)
        while output and output[0] and size + len(output[0]) <= WRITE_BATCH:
            chunk = output.popleft()
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts) if len(parts) > 1 else first

    def _collect(self) -> None:
        """Move the frames the protocol produced into the output, keeping their order."""
        chunks = self.protocol.data_to_send()
        if chunks:
            transport = self._transport
            for chunk in chunks:
                if transport is None:
                    self._output.append(chunk)
                    self._pending += len(chunk)
                elif not chunk:
                    self._end_asked = True
                elif not self._closed:
                    self._write(transport, (chunk,))
            self._wake.set()

    def _write(self, transport: SocketTransport, parts: tuple[bytes | memoryview, ...]) -> None:
        """Hand ``parts`` to the transport, or mark the connection closed if it is gone."""
        if transport.is_closing():
            self._transport_lost()
            return
        try:
            transport.writelines(parts)
        except RuntimeError:
            # uvloop's answer for a transport the peer's reset closed.
            self._transport_lost()
            return
        self.bytes_out += sum(len(part) for part in parts)

    def send_nowait(self, data: bytes | memoryview, prefix: bytes = b"") -> None:
        """Queue the binary message ``prefix + data`` without waiting (for control messages).

        ``prefix`` saves a copy: the frame is one join of its header, the
        prefix and ``data`` (on the direct path, the header and the prefix
        joined, and ``data`` as it is).
        """
        if self._closed or self._end_asked or self.protocol.state is not State.OPEN:
            return
        length = len(prefix) + len(data)
        transport = self._transport
        if transport is not None:
            if length < SHORT_MESSAGE:
                self._write(transport, (b"".join((frame_header(length), prefix, data)),))
            else:
                self._write(transport, (frame_header(length) + prefix, data))
            return
        frame = b"".join((frame_header(length), prefix, data))
        self._output.append(frame)
        self._pending += len(frame)
        self._wake.set()

    def send_parts_nowait(self, parts: list[bytes | memoryview], prefix: bytes = b"") -> None:
        """As :meth:`send_nowait`, for the message ``prefix`` followed by ``parts``.

        On the direct path the parts are not joined: the header and the parts
        leave in one ``writelines`` (a LAN member's packets passed on to
        another member, several per message).
        """
        if len(parts) == 1:
            self.send_nowait(parts[0], prefix)
            return
        if self._closed or self._end_asked or self.protocol.state is not State.OPEN:
            return
        length = len(prefix) + sum(len(part) for part in parts)
        transport = self._transport
        if transport is not None:
            self._write(transport, (frame_header(length) + prefix, *parts))
            return
        frame = b"".join((frame_header(length), prefix, *parts))
        self._output.append(frame)
        self._pending += len(frame)
        self._wake.set()

    async def send(self, data: bytes | memoryview, prefix: bytes = b"") -> None:
        """Queue the binary message ``prefix + data`` once the output is under ``high_water``.

        Waiting senders go in turn: the writer wakes the first once the output
        drained, and each woken sender wakes the next while there is room.
        Waking them all at once would cost every one of N streams a wake-up per
        drained message (N squared for N streams), and would let the fastest
        producers starve the others.
        """
        if (self.queued_bytes > self.high_water or self._waiters) and not self._closed:
            turn = anyio.Event()
            self._waiters.append(turn)
            try:
                await turn.wait()
            except BaseException:
                if turn.is_set():
                    # Cancelled after being given the turn: pass it on.
                    self._wake_next_sender()
                else:
                    self._waiters.remove(turn)
                raise
        self.send_nowait(data, prefix)
        self._wake_next_sender()

    @property
    def output_full(self) -> bool:
        """Whether an open WebSocket has more than ``high_water`` queued: producers stop."""
        return not self._closed and self.queued_bytes > self.high_water

    def call_when_room(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once the output drained to half of ``high_water`` (or closed).

        For producers that write with :meth:`send_nowait` from event-loop
        callbacks (no task to wait in :meth:`send`) and stop producing while
        :attr:`output_full`.  Only on the direct path, whose transport says
        when it drained; each callback is called once, in the order given.
        """
        self._room_callbacks.append(callback)

    def forget_room_callback(self, callback: Callable[[], None]) -> None:
        """Take back a :meth:`call_when_room` callback not called yet (nothing if it was)."""
        with contextlib.suppress(ValueError):
            self._room_callbacks.remove(callback)

    @property
    def calls_when_room(self) -> bool:
        """Whether :meth:`call_when_room` works here (frames go straight into a transport)."""
        return self._transport is not None

    def _call_room_callbacks(self) -> None:
        callbacks, self._room_callbacks = self._room_callbacks, []
        for callback in callbacks:
            callback()

    @property
    def has_room(self) -> bool:
        """Whether :meth:`send` would queue a message now, without waiting."""
        return self._closed or (not self._waiters and self.queued_bytes <= self.high_water)

    def _wake_next_sender(self) -> None:
        while self._waiters and (self._closed or self.queued_bytes <= self.high_water):
            self._waiters.popleft().set()
            if not self._closed:
                return

    async def wait_output_room(self) -> None:
        """Wait until control output is under the hard limit (see the module documentation)."""
        while self.queued_bytes > self.hard_limit and not self._closed:
            self._drain_waited = True
            await self._drained.wait()

    def ready_message(self) -> bytes | str | None:
        """The next whole message if :meth:`receive` would return it without waiting, else None.

        It stays queued (see :meth:`drop_message`).
        """
        if self._messages and self.queued_bytes <= self.hard_limit:
            return self._messages[0]
        return None

    def drop_message(self) -> None:
        """Take the message :meth:`ready_message` returned off the queue."""
        self._messages.popleft()

    async def receive(self) -> bytes | str | None:
        """The next whole message, or ``None`` once the WebSocket closed.

        A message over ``max_message_size`` fails the connection with close
        code 1009, as the websockets library's own servers do.
        """
        messages = self._messages
        while not messages:
            if (
                self._reader.finished
                or self.protocol.state is State.CLOSED
                or (self._closed and self.protocol.state is not State.OPEN)
            ):
                return None
            if self._leftover:
                data, self._leftover = self._leftover, b""
            else:
                if self.queued_bytes > self.hard_limit:
                    # Replies the client does not read (pongs to its pings,
                    # say): read no more until it does.
                    await self.wait_output_room()
                try:
                    data = await self.stream.receive(DEFAULT_READ_SIZE)
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    data = b""
                except anyio.ClosedResourceError:
                    return None
            if data:
                self.bytes_in += len(data)
                self._reader.feed(data)
            else:
                self._reader.feed_eof()
            self._collect()
            if not data and not messages:
                return None
        return messages.popleft()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (idempotent); the writer ends the TCP connection.

        ``reason`` is cut to what a close frame can carry (see :func:`close_reason`).
        """
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(code, close_reason(reason))
        self._collect()
        self._wake.set()

    async def abort(self) -> None:
        self._transport_lost()
        self._wake.set()
        await self.stream.aclose()
