"""The isolate relay reads the host socket in whole TSO packets of the program's connection."""

from __future__ import annotations

import asyncio
import socket

import anyio
import pytest

from netshim.isolate._splice import SocketTransport, Splice

pytestmark = pytest.mark.anyio


class _Connection:
    """Stands in for an IpStack TCP connection: takes everything, records each write's size."""

    max_payload = 45 * 1448

    def __init__(self, expected: int) -> None:
        self.writes: list[int] = []
        self.expected = expected
        self.all_taken = anyio.Event()

    def send(self, data: memoryview) -> int:
        self.writes.append(len(data))
        if sum(self.writes) >= self.expected:
            self.all_taken.set()
        return len(data)

    def readable(self) -> int:
        return 0

    at_eof = False
    error = None
    established = True
    finished = False


class _Driver:
    def __init__(self) -> None:
        self.waiters: dict[object, object] = {}
        self.stopped = anyio.Event()
        self.has_stopped = False

    def poke(self, connection: object) -> None:
        pass


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("kind", ["asyncio", "socket"])
async def test_full_host_reads_are_whole_tso_packets(kind: str) -> None:
    # "socket": the transport of the connections relayed without a task.
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    transport: asyncio.Transport
    if kind == "asyncio":
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
        transport.pause_reading()
    else:
        ours.setblocking(False)
        transport = SocketTransport(ours)
    # Queued before the relay reads, so that its reads are full ones.
    theirs.setblocking(False)
    sent = 0
    try:
        while sent < 2 << 20:
            sent += theirs.send(bytes(256 * 1024))
    except BlockingIOError:
        pass
    connection = _Connection(sent)
    Splice(connection, _Driver(), transport, lambda: None).start()
    await connection.all_taken.wait()
    transport.close()
    theirs.close()
    full = connection.writes[:-1]
    assert len(full) >= 2
    assert all(size % connection.max_payload == 0 for size in full)
