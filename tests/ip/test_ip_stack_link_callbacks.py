"""IpStack under asyncio on a link read in the loop's readiness callback (as a TUN device is).

A TUN or TAP device under asyncio is watched by the event loop
(``TunLink.watch_readable``) and the driver takes each burst in the loop's
callback, with no task to wake.  Here two stacks talk over an in-memory cable
whose ends offer the same methods (the loop calls back while a packet waits,
as a level-triggered selector does), and whose writes can be refused, as a
full device refuses them: these tests hold the callback driver to what the
read task did: data intact both ways when answers cannot all be written at
once (the callback stops watching while the backlog is written, then watches
again), and a failure in the callback stopping the stack, as a failed read
does, with ``ENETDOWN`` for whoever waits.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from netshim.ip.iface import GsoInfo, Medium
from netshim.ip.links import Cable, CableEnd
from netshim.stacks.ip import IpStack

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]


class WatchedEnd:
    """A cable end read through loop callbacks, whose writes a full device would refuse.

    ``refuse_every``: every that many calls, :meth:`write_nowait` takes
    nothing (the device is full); the packets then wait for the driver's
    ``send_many``.
    """

    medium = Medium.IP
    tso = False

    def __init__(self, end: CableEnd, refuse_every: int) -> None:
        self._end = end
        self._refuse_every = refuse_every
        self._writes = 0
        self.refused = 0
        self.watches = 0
        self._callback: Callable[[], object] | None = None
        self._reporting = False
        # Packets reach the far end's inbox through its _deliver: report them.
        deliver = end._deliver

        def delivered(data: bytes, at: float) -> None:
            deliver(data, at)
            self._report_soon()

        end._deliver = delivered  # type: ignore[method-assign]

    def watch_readable(self, callback: Callable[[], object]) -> bool:
        self._callback = callback
        self.watches += 1
        self._report_soon()
        return True

    def unwatch_readable(self) -> None:
        self._callback = None

    def _report_soon(self) -> None:
        if self._callback is not None and not self._reporting:
            self._reporting = True
            asyncio.get_running_loop().call_soon(self._report)

    def _report(self) -> None:
        # Level-triggered, as a selector: called again while packets wait.
        self._reporting = False
        callback = self._callback
        if callback is None or not self._end._inbox._heap:
            return
        callback()
        if self._end._inbox._heap:
            self._report_soon()

    def receive_nowait(self) -> Any:
        return self._end.receive_nowait()

    async def receive(self) -> Any:
        return await self._end.receive()

    def write_nowait(self, packets: Sequence[tuple[bytes, GsoInfo | None]]) -> int:
        self._writes += 1
        if self._writes % self._refuse_every == 0:
            self.refused += 1
            return 0
        for packet, _gso in packets:
            self._end.send_nowait(packet)
        return len(packets)

    async def send(self, packet: bytes, gso: GsoInfo | None = None) -> None:
        await self._end.send(packet, gso)

    async def aclose(self) -> None:
        self._callback = None
        await self._end.aclose()


@asynccontextmanager
async def watched_pair(refuse_every: int) -> AsyncIterator[tuple[IpStack, IpStack]]:
    cable = Cable(Medium.IP)
    left_end, right_end = cable.ends
    left = IpStack(WatchedEnd(left_end, refuse_every), addresses=["10.1.0.1/24"], hostname="left")
    right = IpStack(
        WatchedEnd(right_end, refuse_every), addresses=["10.1.0.2/24"], hostname="right"
    )
    async with left, right:
        yield left, right


async def test_transfers_both_ways_arrive_intact_when_writes_are_refused() -> None:
    size = 2 << 20
    upload, download = os.urandom(size), os.urandom(size)
    async with watched_pair(refuse_every=5) as (left, right):
        links: list[Any] = [left._link, right._link]
        listener = await right.listen_tcp("10.1.0.2", 9000)
        received: dict[str, str] = {}

        async def serve() -> None:
            stream = await listener.accept()
            async with stream:
                digest, count = hashlib.sha256(), 0
                while count < size:
                    data = await stream.receive(1 << 20)
                    digest.update(data)
                    count += len(data)
                received["upload"] = digest.hexdigest()
                await stream.send(download)
                await stream.send_eof()

        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                group.start_soon(serve)
                client = await left.connect_tcp("10.1.0.2", 9000)

                async def read_all() -> None:
                    digest = hashlib.sha256()
                    while True:
                        try:
                            digest.update(await client.receive(1 << 20))
                        except anyio.EndOfStream:
                            break
                    received["download"] = digest.hexdigest()

                async with client, anyio.create_task_group() as both_ways:
                    both_ways.start_soon(read_all)
                    await client.send(upload)
        await listener.aclose()
    assert received == {
        "upload": hashlib.sha256(upload).hexdigest(),
        "download": hashlib.sha256(download).hexdigest(),
    }
    # Both stacks had answers refused, and watched their link again after
    # writing them (the first watch is the driver's start).
    assert all(link.refused > 0 for link in links)
    assert all(link.watches > 1 for link in links), [link.watches for link in links]


async def test_a_failure_in_the_readiness_callback_stops_the_stack() -> None:
    async with watched_pair(refuse_every=1 << 30) as (left, right):
        listener = await right.listen_tcp("10.1.0.2", 9000)
        interface: Any = right._interface

        def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("a bug in the receive pass")

        interface.receive = broken
        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                group.start_soon(left.connect_tcp, "10.1.0.2", 9000)
                with pytest.raises(OSError) as caught:
                    await listener.accept()
                group.cancel_scope.cancel()
        assert caught.value.errno == errno.ENETDOWN
        driver: Any = right._driver
        assert driver.stopped.is_set()
        assert "a bug in the receive pass" in repr(driver.error)
