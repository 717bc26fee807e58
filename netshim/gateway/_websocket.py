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
"""

from __future__ import annotations

from collections import deque

import anyio
import anyio.abc
from websockets.protocol import State
from websockets.server import ServerProtocol

from ..transports._frames import FrameReader, close_reason, frame_header

__all__ = ["DEFAULT_HIGH_WATER", "WebSocket"]

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
        self._closed = False
        self._leftover = leftover
        # Set by the writer once the output is empty (see flush()).
        self._flushed: anyio.Event | None = None

    @property
    def buffered_bytes(self) -> int:
        """Received bytes held for messages that are not whole yet (at most one message)."""
        return self._reader.buffered

    @property
    def subprotocol(self) -> str | None:
        return self.protocol.subprotocol

    async def run_writer(self) -> None:
        """The single writer: flush the output until the connection ends."""
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
        if not self._output or self._closed:
            return
        if self._flushed is None:
            self._flushed = anyio.Event()
        await self._flushed.wait()

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
            for chunk in chunks:
                self._output.append(chunk)
                self._pending += len(chunk)
            self._wake.set()

    def send_nowait(self, data: bytes, prefix: bytes = b"") -> None:
        """Queue the binary message ``prefix + data`` without waiting (for control messages).

        ``prefix`` saves a copy: the frame is one join of its header, the
        prefix and ``data``.
        """
        if self._closed or self.protocol.state is not State.OPEN:
            return
        length = len(prefix) + len(data)
        frame = b"".join((frame_header(length), prefix, data))
        self._output.append(frame)
        self._pending += len(frame)
        self._wake.set()

    async def send(self, data: bytes, prefix: bytes = b"") -> None:
        """Queue the binary message ``prefix + data`` once the output is under ``high_water``.

        Waiting senders go in turn: the writer wakes the first once the output
        drained, and each woken sender wakes the next while there is room.
        Waking them all at once would cost every one of N streams a wake-up per
        drained message (N squared for N streams), and would let the fastest
        producers starve the others.
        """
        if (self._pending > self.high_water or self._waiters) and not self._closed:
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

    def _wake_next_sender(self) -> None:
        while self._waiters and (self._closed or self._pending <= self.high_water):
            self._waiters.popleft().set()
            if not self._closed:
                return

    async def wait_output_room(self) -> None:
        """Wait until control output is under the hard limit (see the module documentation)."""
        while self._pending > self.hard_limit and not self._closed:
            self._drain_waited = True
            await self._drained.wait()

    def ready_message(self) -> bytes | str | None:
        """The next whole message if :meth:`receive` would return it without waiting, else None.

        It stays queued (see :meth:`drop_message`).
        """
        if self._messages and self._pending <= self.hard_limit:
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
                if self._pending > self.hard_limit:
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
        self._closed = True
        self._wake.set()
        await self.stream.aclose()
