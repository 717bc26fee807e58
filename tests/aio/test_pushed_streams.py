"""The stream transport's shorter way, for streams whose data arrives by itself.

WispStack over JavaScript's WebSocket (Pyodide) offers ``set_readable_callback``,
``receive_nowait`` and ``send_nowait``; :class:`~netshim.aio.StackStreamTransport`
then feeds the protocol inside the arrival and sends a write inside the call.
A scripted stream stands in for it here, on CPython's loop, so each rule is
checked where it can be watched: order, pausing, the end, errors, and the
fall back to the tasks when a write cannot go at once.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable

import anyio
import pytest

from netshim.aio import StackStreamTransport
from netshim.stack import Address, TcpStream
from netshim.stacks._tunnel import ByteBuffer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class PushedStream(TcpStream):
    """Data comes from :meth:`arrive`; sends are recorded (``accept_nowait`` decides)."""

    def __init__(self, pushed: bool = True) -> None:
        self.buffer = ByteBuffer()
        self.pushed = pushed
        self.callback: Callable[[], None] | None = None
        self.sent: list[tuple[str, bytes]] = []
        self.accept_nowait = True
        self.arrived = asyncio.Event()
        self.closed_as: str | None = None

    @property
    def local_address(self) -> Address:
        return ("10.0.0.1", 40000)

    @property
    def remote_address(self) -> Address:
        return ("10.0.0.2", 6379)

    def arrive(self, data: bytes = b"", *, eof: bool = False, error: OSError | None = None) -> None:
        self.buffer.push(data)
        if eof:
            self.buffer.eof = True
        if error is not None:
            self.buffer.error = error
        self.arrived.set()
        if self.callback is not None:
            self.callback()

    # -- the shorter way

    def set_readable_callback(self, callback: Callable[[], None] | None) -> bool:
        self.callback = callback
        return self.pushed

    def receive_nowait(self, max_bytes: int = 65536) -> bytes:
        if not self.buffer.ready:
            raise anyio.WouldBlock
        return self.buffer.take(max_bytes)

    def send_nowait(self, item: bytes) -> bool:
        if not self.accept_nowait:
            return False
        self.sent.append(("nowait", bytes(item)))
        return True

    # -- the contract

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while not self.buffer.ready:
            self.arrived = asyncio.Event()
            await self.arrived.wait()
        return self.buffer.take(max_bytes)

    async def send(self, item: bytes) -> None:
        await asyncio.sleep(0)
        self.sent.append(("task", bytes(item)))

    async def send_eof(self) -> None:
        self.sent.append(("eof", b""))

    async def aclose(self) -> None:
        self.closed_as = self.closed_as or "close"

    async def abort(self) -> None:
        self.closed_as = self.closed_as or "reset"


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append(("made", None))

    def data_received(self, data: bytes) -> None:
        self.events.append(("data", data))

    def eof_received(self) -> bool:
        self.events.append(("eof", None))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", exc))
        self.lost.set_result(exc)


async def open_transport(stream: PushedStream) -> tuple[StackStreamTransport, Recorder]:
    loop = asyncio.get_running_loop()
    protocol = Recorder()
    waiter = loop.create_future()
    transport = StackStreamTransport(loop, stream, protocol, waiter=waiter)
    await waiter
    return transport, protocol


async def test_data_reaches_the_protocol_inside_the_arrival() -> None:
    stream = PushedStream()
    stream.arrive(b"before ")  # buffered before connection_made
    transport, protocol = await open_transport(stream)
    assert protocol.events == [("made", None), ("data", b"before ")]
    stream.arrive(b"+PONG\r\n")
    # No task switch in between: it is there when arrive() returns.
    assert protocol.events[-1] == ("data", b"+PONG\r\n")
    assert transport._reader is None
    transport.close()
    assert await protocol.lost is None
    assert stream.callback is None
    assert stream.closed_as == "close"


async def test_pause_holds_data_and_resume_delivers_it() -> None:
    stream = PushedStream()
    transport, protocol = await open_transport(stream)
    transport.pause_reading()
    stream.arrive(b"one")
    stream.arrive(b"two")
    assert protocol.events == [("made", None)]
    transport.resume_reading()
    assert protocol.events == [("made", None)]  # soon, not inside resume_reading()
    await asyncio.sleep(0)
    assert protocol.events[1:] == [("data", b"one"), ("data", b"two")]
    transport.close()
    await protocol.lost


async def test_closing_with_held_data_resets() -> None:
    stream = PushedStream()
    transport, protocol = await open_transport(stream)
    transport.pause_reading()
    stream.arrive(b"never read")
    transport.close()
    await protocol.lost
    assert stream.closed_as == "reset"


async def test_end_of_stream_and_errors() -> None:
    stream = PushedStream()
    _, protocol = await open_transport(stream)
    stream.arrive(b"last", eof=True)
    assert await protocol.lost is None
    assert protocol.events[1:] == [("data", b"last"), ("eof", None), ("lost", None)]

    stream = PushedStream()
    _, protocol = await open_transport(stream)
    reset = ConnectionResetError(errno.ECONNRESET, "reset by peer")
    stream.arrive(b"first", error=reset)
    assert await protocol.lost is reset
    assert protocol.events[1] == ("data", b"first")


async def test_writes_go_at_once_and_fall_back_in_order() -> None:
    stream = PushedStream()
    transport, protocol = await open_transport(stream)
    transport.write(b"SET k v\r\n")
    assert stream.sent == [("nowait", b"SET k v\r\n")]
    assert transport.get_write_buffer_size() == 0
    # No credit, say: the task sends, and what follows queues behind it.
    stream.accept_nowait = False
    transport.write(b"a")
    stream.accept_nowait = True
    transport.write(b"b")
    transport.write_eof()
    transport.close()
    await protocol.lost
    assert stream.sent == [("nowait", b"SET k v\r\n"), ("task", b"ab"), ("eof", b"")]


async def test_a_stream_that_needs_a_reader_gets_the_task() -> None:
    stream = PushedStream(pushed=False)
    transport, protocol = await open_transport(stream)
    assert stream.callback is None
    assert transport._reader is not None
    stream.arrive(b"through the task")
    assert protocol.events == [("made", None)]
    await asyncio.sleep(0.01)
    assert protocol.events[1] == ("data", b"through the task")
    transport.close()
    await protocol.lost
