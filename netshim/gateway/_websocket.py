"""A server WebSocket over any anyio byte stream, on the websockets library's sans-I/O protocol.

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
  so that the reader never waits on the writer; past ``hard_limit`` even
  they wait, because a client that floods us with requests while never
  reading is the only way to get there.
"""

from __future__ import annotations

from collections import deque

import anyio
import anyio.abc
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

__all__ = ["DEFAULT_HIGH_WATER", "WebSocket"]

# 1 MiB queued towards the client is enough to keep a loopback or LAN link
# busy between two writer wake-ups, and small enough that the 64 MiB budget
# of the issue leaves room for many connections.
DEFAULT_HIGH_WATER = 1 << 20
# What one read of the client's TCP stream asks for: asyncio's selector
# transports read up to 256 KiB at a time, and anyio splits (copying) any
# chunk larger than the read asks for, so asking for less than that costs a
# copy of the rest for each smaller read.  It also lets one read carry a whole
# 64 KiB DATA packet plus its WebSocket header instead of two reads.
DEFAULT_READ_SIZE = 1 << 18


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
        self.hard_limit = 16 * high_water
        self.bytes_in = 0
        self.bytes_out = 0
        self._pending = 0
        self._messages: deque[bytes | str] = deque()
        self._fragments: list[bytes] = []
        self._fragment_text = False
        self._wake = anyio.Event()
        self._drained = anyio.Event()
        # Senders waiting for room, first come first served (see send()).
        self._waiters: deque[anyio.Event] = deque()
        self._closed = False
        self._leftover = leftover

    @property
    def subprotocol(self) -> str | None:
        return self.protocol.subprotocol

    async def run_writer(self) -> None:
        """The single writer: flush the protocol's output until the connection ends."""
        try:
            while True:
                chunks = self.protocol.data_to_send()
                if not chunks:
                    if self._closed and self.protocol.state is State.CLOSED:
                        return
                    await self._wake.wait()
                    self._wake = anyio.Event()
                    continue
                for chunk in chunks:
                    if chunk:
                        await self.stream.send(chunk)
                        self.bytes_out += len(chunk)
                        self._pending = max(0, self._pending - len(chunk))
                    else:
                        # The protocol asks for the TCP connection to end.
                        self._closed = True
                        await self.stream.aclose()
                        return
                    if self._pending < self.high_water:
                        self._drained.set()
                        self._drained = anyio.Event()
                        self._wake_next_sender()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self._closed = True
        finally:
            self._closed = True
            self._drained.set()
            self._wake_next_sender()

    def _kick(self) -> None:
        self._wake.set()

    def send_nowait(self, data: bytes) -> None:
        """Queue one binary message without waiting (for small control messages)."""
        if self._closed or self.protocol.state is not State.OPEN:
            return
        self.protocol.send_binary(data)
        self._pending += len(data) + 10
        self._kick()

    async def send(self, data: bytes) -> None:
        """Queue one binary message, first waiting while the output is over ``high_water``.

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
        self.send_nowait(data)
        self._wake_next_sender()

    def _wake_next_sender(self) -> None:
        while self._waiters and (self._closed or self._pending <= self.high_water):
            self._waiters.popleft().set()
            if not self._closed:
                return

    async def wait_output_room(self) -> None:
        """Wait until control output is under the hard limit (see the module documentation)."""
        while self._pending > self.hard_limit and not self._closed:
            await self._drained.wait()

    async def receive(self) -> bytes | str | None:
        """The next whole message, or ``None`` once the WebSocket closed.

        A message over ``max_message_size`` fails the connection with close
        code 1009, as the websockets library's own servers do.
        """
        while not self._messages:
            if self.protocol.state is State.CLOSED or (
                self._closed and self.protocol.state is not State.OPEN
            ):
                return None
            if self._leftover:
                data, self._leftover = self._leftover, b""
            else:
                try:
                    data = await self.stream.receive(DEFAULT_READ_SIZE)
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    data = b""
                except anyio.ClosedResourceError:
                    return None
            if data:
                self.bytes_in += len(data)
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
            self._take_frames()
            self._kick()
            if not data and not self._messages:
                return None
        return self._messages.popleft()

    def _take_frames(self) -> None:
        for event in self.protocol.events_received():
            if not isinstance(event, Frame):
                continue
            opcode = event.opcode
            if opcode in (Opcode.BINARY, Opcode.TEXT):
                self._fragments = [bytes(event.data)]
                self._fragment_text = opcode is Opcode.TEXT
            elif opcode is Opcode.CONT:
                self._fragments.append(bytes(event.data))
            else:
                continue
            if sum(len(part) for part in self._fragments) > self.max_message_size:
                self._fragments = []
                self.protocol.fail(1009, "message too big")
                return
            if event.fin:
                message = b"".join(self._fragments)
                self._fragments = []
                self._messages.append(
                    message.decode("utf-8", "replace") if self._fragment_text else message
                )

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (idempotent); the writer ends the TCP connection."""
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(code, reason)
        self._kick()

    async def abort(self) -> None:
        self._closed = True
        self._kick()
        await self.stream.aclose()
