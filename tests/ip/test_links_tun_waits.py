"""Waiting for a TUN device to turn readable: registration with the loop and its teardown.

A pipe's read end stands in for the device's descriptor (``TunLink`` reads it
with ``os.read`` like any other), so no namespace or root is needed.  Under
asyncio the descriptor stays registered with the loop between waits and is
unregistered when it turns readable with nobody waiting and on close; under
trio the waits go through ``anyio.wait_readable``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import anyio.lowlevel
import pytest

from netshim.ip.links import TunLink

pytestmark = pytest.mark.anyio


@contextmanager
def pipe_link() -> Iterator[tuple[TunLink, int]]:
    read_end, write_end = os.pipe()
    link = TunLink(read_end, "pipe", vnet_hdr=False, offload=False)
    try:
        yield link, write_end
    finally:
        os.close(write_end)
        if not link._closed:
            os.close(read_end)


@contextmanager
def counted_add_reader() -> Iterator[list[int]]:
    """The descriptors the running asyncio loop is asked to watch for reading."""
    loop = asyncio.get_running_loop()
    added: list[int] = []
    original = loop.add_reader

    def add_reader(fd: int, *args: object) -> None:
        added.append(fd)
        original(fd, *args)  # type: ignore[arg-type]

    loop.add_reader = add_reader  # type: ignore[method-assign]
    try:
        yield added
    finally:
        del loop.add_reader  # type: ignore[method-assign]


async def test_packets_are_received_after_each_wait() -> None:
    with pipe_link() as (link, write_end):
        for round_ in range(5):
            packet = f"packet {round_}".encode()
            async with anyio.create_task_group() as group:

                async def write_later(data: bytes = packet) -> None:
                    await anyio.sleep(0.01)
                    os.write(write_end, data)

                group.start_soon(write_later)
                with anyio.fail_after(5):
                    received = await link.receive()
            assert received.data == packet
        assert link.receive_nowait() is None
        await link.aclose()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_descriptor_stays_registered_between_waits() -> None:
    with pipe_link() as (link, write_end), counted_add_reader() as added:
        for _ in range(5):
            os.write(write_end, b"x")
            with anyio.fail_after(5):
                await link.wait_readable()
            assert link.receive_nowait() is not None
            assert link.receive_nowait() is None
        assert added == [link.fd]
        fd = link.fd
        await link.aclose()
        # Closing unregistered it: the loop no longer watches the number.
        assert asyncio.get_running_loop().remove_reader(fd) is False


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_packet_with_nobody_waiting_unregisters_until_the_next_wait() -> None:
    with pipe_link() as (link, write_end), counted_add_reader() as added:
        os.write(write_end, b"first")
        with anyio.fail_after(5):
            await link.wait_readable()
        # More arrives while the driver is busy elsewhere: reported once, then
        # the loop stops watching (it would report it on every iteration).
        os.write(write_end, b"second")
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        assert asyncio.get_running_loop().remove_reader(link.fd) is False
        received = link.receive_nowait()
        assert received is not None
        assert received.data == b"first"
        with anyio.fail_after(5):
            await link.wait_readable()
        received = link.receive_nowait()
        assert received is not None
        assert received.data == b"second"
        assert link.receive_nowait() is None
        assert added == [link.fd, link.fd]
        await link.aclose()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_stale_readiness_report_does_not_wake_the_waiter() -> None:
    # A selector's report can predate a read made in the same loop iteration.
    with pipe_link() as (link, write_end):
        woken = anyio.Event()

        async def wait() -> None:
            await link.wait_readable()
            woken.set()

        async with anyio.create_task_group() as group:
            group.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
            link._became_readable()
            await anyio.wait_all_tasks_blocked()
            assert not woken.is_set()
            os.write(write_end, b"x")
            with anyio.fail_after(5):
                await woken.wait()
        received = link.receive_nowait()
        assert received is not None
        assert received.data == b"x"
        await link.aclose()


async def test_closing_wakes_a_waiter_with_closed_resource_error() -> None:
    with pipe_link() as (link, _write_end):
        outcome: list[BaseException] = []

        async def wait() -> None:
            try:
                await link.wait_readable()
            except anyio.ClosedResourceError as exc:
                outcome.append(exc)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                group.start_soon(wait)
                await anyio.wait_all_tasks_blocked()
                await link.aclose()
        assert len(outcome) == 1
        with pytest.raises(anyio.ClosedResourceError):
            await link.wait_readable()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_second_waiter_is_refused() -> None:
    with pipe_link() as (link, write_end):
        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                group.start_soon(link.wait_readable)
                await anyio.wait_all_tasks_blocked()
                with pytest.raises(anyio.BusyResourceError):
                    await link.wait_readable()
                os.write(write_end, b"x")
        await link.aclose()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_cancelled_wait_leaves_no_waiter_behind() -> None:
    with pipe_link() as (link, write_end):
        with anyio.move_on_after(0.01):
            await link.wait_readable()
        os.write(write_end, b"x")
        with anyio.fail_after(5):
            await link.wait_readable()
        assert link.receive_nowait() is not None
        await link.aclose()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_watched_descriptor_calls_back_while_packets_wait_until_unwatched() -> None:
    with pipe_link() as (link, write_end):
        taken: list[bytes] = []
        took = [anyio.Event()]

        def take_one() -> None:
            packet = link.receive_nowait()
            if packet is not None:
                taken.append(packet.data)
                took[0].set()

        async def next_taken() -> None:
            with anyio.fail_after(5):
                await took[0].wait()
            took[0] = anyio.Event()

        assert link.watch_readable(take_one)
        os.write(write_end, b"a")
        await next_taken()
        os.write(write_end, b"b")
        await next_taken()
        link.unwatch_readable()
        os.write(write_end, b"c")
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        assert taken == [b"a", b"b"]
        assert asyncio.get_running_loop().remove_reader(link.fd) is False
        # Watched again, the packet that waited is reported.
        assert link.watch_readable(take_one)
        await next_taken()
        assert taken == [b"a", b"b", b"c"]
        fd = link.fd
        await link.aclose()
        # Closing unregistered it, as after a wait.
        assert asyncio.get_running_loop().remove_reader(fd) is False


async def test_watching_is_refused_where_the_loop_cannot_call_back(
    anyio_backend_name: str,
) -> None:
    with pipe_link() as (link, _write_end):
        if anyio_backend_name == "asyncio":
            # A task already waits on the descriptor: it keeps it.
            async with anyio.create_task_group() as group:
                group.start_soon(link.wait_readable)
                await anyio.wait_all_tasks_blocked()
                assert link.watch_readable(lambda: None) is False
                group.cancel_scope.cancel()
        else:
            assert link.watch_readable(lambda: None) is False
        await link.aclose()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_packet_taken_by_an_earlier_wait_is_reported_when_watched() -> None:
    with pipe_link() as (link, write_end):
        # A wait's readiness callback takes the packet off the pipe; the
        # watch that follows must still be told of it.
        os.write(write_end, b"held")
        with anyio.fail_after(5):
            await link.wait_readable()
        taken = anyio.Event()
        packets: list[bytes] = []

        def take() -> None:
            packet = link.receive_nowait()
            if packet is not None:
                packets.append(packet.data)
                taken.set()

        assert link.watch_readable(take)
        with anyio.fail_after(5):
            await taken.wait()
        assert packets == [b"held"]
        await link.aclose()
