"""HostStack TCP streams stop reading when nobody consumes (DESIGN 10).

A peer that sends as fast as it can to a stream nobody reads must be held back
by the kernel (full buffers, closed TCP window), not buffered in the process:
what the sender manages to hand its kernel is then bounded by the two sockets'
buffers, a few MiB on loopback.  Checked for connected and accepted streams on
asyncio, uvloop and trio.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest

from netshim import HostStack

pytestmark = pytest.mark.anyio

# Loopback socket buffers on Linux top out at a few MiB each way (tcp_rmem and
# tcp_wmem maxima, 6 and 4 MiB by default); a stream that kept reading would
# take hundreds of MiB in the time given.
KERNEL_BUFFERS_BOUND = 32 << 20
SENDING_TIME = 1.0


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


class Flood:
    """Sends from a thread as fast as the kernel takes it, counting bytes, until stopped."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        block = b"x" * (1 << 16)
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                self.sent += self.sock.send(block)
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@contextmanager
def flooding_server() -> Iterator[tuple[tuple[str, int], list[Flood]]]:
    """A listener that floods every connection it accepts."""
    listener = socket.create_server(("127.0.0.1", 0))
    floods: list[Flood] = []

    def accept() -> None:
        conn, _ = listener.accept()
        floods.append(Flood(conn))

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname(), floods
    finally:
        thread.join(5)
        listener.close()
        for flood in floods:
            flood.close()


async def held_back(flood_of: Any) -> int:
    """Bytes the sender got rid of while the stream, read once, was then left alone."""
    await anyio.sleep(SENDING_TIME)
    return int(flood_of().sent)


async def test_a_connected_stream_is_not_read_ahead() -> None:
    with flooding_server() as (address, floods):
        async with await HostStack().connect_tcp(*address) as stream:
            # Data waits before the first receive: the case anyio never paused.
            await anyio.sleep(0.1)
            assert await stream.receive(1)
            sent = await held_back(lambda: floods[0])
            assert 0 < sent < KERNEL_BUFFERS_BOUND, f"{sent / 2**20:.1f} MiB left the sender"
            # Nothing was lost: reading goes on where it stopped.
            total = 1
            with anyio.fail_after(10):
                while total < sent - (1 << 16):
                    total += len(await stream.receive())


async def test_an_accepted_stream_is_not_read_ahead() -> None:
    listener = await HostStack().listen_tcp("127.0.0.1", 0)
    async with listener:
        client = socket.create_connection(listener.local_address)
        flood = Flood(client)
        try:
            async with await listener.accept() as stream:
                await anyio.sleep(0.1)
                assert await stream.receive(1)
                sent = await held_back(lambda: flood)
                assert 0 < sent < KERNEL_BUFFERS_BOUND, f"{sent / 2**20:.1f} MiB left the sender"
        finally:
            flood.close()


def test_the_bound_is_far_below_what_loopback_moves() -> None:
    """The bound means something: unthrottled, loopback moves far more in the same time."""
    with flooding_server() as (address, _):
        sock = socket.create_connection(address)
        received = 0
        deadline = time.monotonic() + SENDING_TIME
        while time.monotonic() < deadline:
            received += len(sock.recv(1 << 20))
        sock.close()
    assert received > 2 * KERNEL_BUFFERS_BOUND
