"""A minimal driver for the link tests: moves packets between an Interface and a Link.

The real driver (IpStack) comes later; this one does just enough: a task
reads the link into the interface, and a loop runs ``transmit`` whenever the
interface's deadline passes or :meth:`Pump.kick` says the application did
something (sent data, closed a socket).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from netshim.ip.iface import Interface
from netshim.ip.links import Link
from netshim.ip.tcp import TcpConnection


class Pump:
    def __init__(self, iface: Interface, link: Link) -> None:
        self.iface = iface
        self.link = link
        self._kick = anyio.Event()
        self.changed = anyio.Event()

    def kick(self) -> None:
        self._kick.set()

    async def flush(self) -> None:
        for packet in self.iface.transmit(anyio.current_time()):
            await self.link.send(packet.data, packet.gso)
        if self.iface.take_changed():
            self.changed.set()
            self.changed = anyio.Event()

    async def _read(self) -> None:
        while True:
            try:
                incoming = await self.link.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            self.iface.receive(
                incoming.data, anyio.current_time(), checksum_verified=incoming.checksum_verified
            )
            await self.flush()
            # What arrived may have set an earlier timer (a delayed ACK, a
            # window update, a loss probe): the timer loop must look again,
            # or it sleeps to the old deadline and the peer waits on us.
            self._kick.set()

    async def _timers(self) -> None:
        while True:
            await self.flush()
            deadline = self.iface.deadline()
            wait = math.inf if deadline is None else max(0.0, deadline - anyio.current_time())
            with anyio.move_on_after(wait):
                await self._kick.wait()
            if self._kick.is_set():
                self._kick = anyio.Event()

    async def wait_until(self, condition: object, limit: float = 10.0) -> None:
        """Wait until ``condition()`` is true, re-checking whenever a socket changes."""
        assert callable(condition)
        with anyio.fail_after(limit):
            while not condition():
                with anyio.move_on_after(0.05):
                    await self.changed.wait()


@asynccontextmanager
async def pumping(*pairs: tuple[Interface, Link]) -> AsyncIterator[list[Pump]]:
    pumps = [Pump(iface, link) for iface, link in pairs]
    async with anyio.create_task_group() as group:
        for pump in pumps:
            group.start_soon(pump._read)
            group.start_soon(pump._timers)
        try:
            yield pumps
        finally:
            group.cancel_scope.cancel()


async def send_all(pump: Pump, connection: TcpConnection, data: bytes) -> None:
    view = memoryview(data)
    while view:
        taken = connection.send(view)
        view = view[taken:]
        pump.kick()
        if view:
            await pump.wait_until(lambda: connection.send_space() > 0)


async def receive_all(pump: Pump, connection: TcpConnection, size: int) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < size:
        await pump.wait_until(lambda: connection.readable() or connection.at_eof, limit=30)
        chunk = connection.receive(1 << 20)
        pump.kick()
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
