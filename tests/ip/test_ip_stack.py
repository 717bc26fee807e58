"""IpStack: the Stack contract over the ip engine, two stacks joined by an in-memory cable."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import AsyncIterator
from ipaddress import IPv4Address

import anyio
import pytest

from netshim.ip.iface import Medium
from netshim.ip.links import Cable, Faults
from netshim.protocols.ip import (
    EthernetAddress,
    EthernetRepr,
    EtherType,
    IpProtocol,
    Ipv4Repr,
    UdpRepr,
)
from netshim.stacks.ip import IpStack

pytestmark = pytest.mark.anyio


@pytest.fixture
async def pair() -> AsyncIterator[tuple[IpStack, IpStack]]:
    cable = Cable(Medium.ETHERNET)
    left = IpStack(cable.a, addresses=["10.1.0.1/24", "fd01::1/64"], hostname="left")
    right = IpStack(cable.b, addresses=["10.1.0.2/24", "fd01::2/64"], hostname="right")
    async with left, right:
        yield left, right


async def test_tcp_echo_both_families(pair: tuple[IpStack, IpStack]) -> None:
    left, right = pair
    listener = await right.listen_tcp(None, 7000)

    async def serve() -> None:
        stream = await listener.accept()
        async with stream:
            while True:
                try:
                    data = await stream.receive()
                except anyio.EndOfStream:
                    break
                await stream.send(data)

    for server in ("10.1.0.2", "fd01::2"):
        async with anyio.create_task_group() as group:
            group.start_soon(serve)
            with anyio.fail_after(10):
                stream = await left.connect_tcp(server, 7000)
                assert stream.remote_address == (server, 7000)
                await stream.send(b"hello over packets")
                assert await stream.receive() == b"hello over packets"
                await stream.send_eof()
                with pytest.raises(anyio.EndOfStream):
                    await stream.receive()
                await stream.aclose()
    await listener.aclose()


async def test_a_refused_connection_is_connection_refused_error(
    pair: tuple[IpStack, IpStack],
) -> None:
    left, _ = pair
    with anyio.fail_after(10), pytest.raises(ConnectionRefusedError):
        await left.connect_tcp("10.1.0.2", 9)


async def test_bulk_transfer_with_loss_and_reordering_arrives_intact() -> None:
    faults = Faults(loss=0.02, duplicate=0.01, reorder=0.02, seed=7)
    cable = Cable(Medium.ETHERNET, faults=faults)
    payload = os.urandom(2 << 20)
    async with (
        IpStack(cable.a, addresses=["10.2.0.1/24"]) as left,
        IpStack(cable.b, addresses=["10.2.0.2/24"]) as right,
    ):
        listener = await right.listen_tcp("10.2.0.2", 80)
        received = hashlib.sha256()
        count = 0

        async def sink() -> None:
            nonlocal count
            stream = await listener.accept()
            while True:
                try:
                    data = await stream.receive(1 << 20)
                except anyio.EndOfStream:
                    break
                received.update(data)
                count += len(data)
            await stream.aclose()

        with anyio.fail_after(120):
            async with anyio.create_task_group() as group:
                group.start_soon(sink)
                stream = await left.connect_tcp("10.2.0.2", 80)
                await stream.send(payload)
                await stream.send_eof()
        assert count == len(payload)
        assert received.digest() == hashlib.sha256(payload).digest()


async def test_udp_and_loopback(pair: tuple[IpStack, IpStack]) -> None:
    left, right = pair
    server = await right.open_udp("10.1.0.2", 5353)
    client = await left.open_udp("0.0.0.0", 0)
    await client.send(b"ping", ("10.1.0.2", 5353))
    with anyio.fail_after(5):
        data, source = await server.receive()
    assert data == b"ping"
    assert source[0] == "10.1.0.1"
    await server.send(b"pong", source)
    with anyio.fail_after(5):
        assert (await client.receive())[0] == b"pong"
    # Loopback stays inside the stack.
    listener = await left.listen_tcp("127.0.0.1", 8080)
    with anyio.fail_after(5):
        stream = await left.connect_tcp("127.0.0.1", 8080)
        accepted = await listener.accept()
        await stream.send(b"x")
        assert await accepted.receive() == b"x"
    for resource in (stream, accepted, listener, server, client):
        await resource.aclose()


async def test_a_burst_longer_than_one_read_pass_loses_nothing() -> None:
    # The driver takes up to a pass's worth of queued packets per wake-up;
    # the packet after a full pass must wait for the next one, not vanish.
    # The burst is written onto the cable as frames, with no await in
    # between, so the receiving driver finds all of it queued at once.
    cable = Cable(Medium.ETHERNET)
    stack = IpStack(cable.b, addresses=["10.1.0.2/24"], hostname="right")
    peer_mac = EthernetAddress.from_text("02:00:00:00:00:99")
    source, destination = IPv4Address("10.1.0.1"), IPv4Address("10.1.0.2")
    async with stack:
        server = await stack.open_udp("10.1.0.2", 5454)
        count = 200
        burst = []
        for number in range(count):
            datagram = UdpRepr(5000, 5454, number.to_bytes(2, "big"))
            packet = Ipv4Repr(
                source, destination, IpProtocol.UDP, datagram.emit(source, destination)
            ).emit()
            burst.append(EthernetRepr(stack_mac(stack), peer_mac, EtherType.IPV4, packet).emit())
        for frame in burst:
            cable.a.send_nowait(frame)
        received = []
        with anyio.fail_after(10):
            while len(received) < count:
                data, _ = await server.receive()
                received.append(int.from_bytes(data, "big"))
        assert received == list(range(count))
        await server.aclose()


def stack_mac(stack: IpStack) -> EthernetAddress:
    mac = stack._interface.mac
    assert mac is not None
    return mac


async def test_udp_to_a_broadcast_address_needs_so_broadcast(
    pair: tuple[IpStack, IpStack],
) -> None:
    left, right = pair
    server = await right.open_udp("0.0.0.0", 6767)
    client = await left.open_udp("0.0.0.0", 0)
    # As on Linux: the limited broadcast and each network's directed one, loopback's too.
    for address in ("255.255.255.255", "10.1.0.255", "127.255.255.255"):
        with pytest.raises(OSError, match="SO_BROADCAST") as caught:
            await client.send(b"to all", (address, 6767))
        assert caught.value.errno == errno.EACCES
    await client.send(b"to a group", ("224.0.0.251", 6767))  # a group is not a broadcast
    client.broadcast = True
    await client.send(b"to all", ("10.1.0.255", 6767))
    with anyio.fail_after(5):
        data, source = await server.receive()
    assert data == b"to all"
    assert source[0] == "10.1.0.1"
    await client.aclose()
    await server.aclose()


async def test_a_dns_server_stops_when_its_stack_goes_down() -> None:
    # A closed IpStack answers ENETDOWN to its sockets: the server's UDP and
    # TCP tasks end instead of retrying for ever.
    from netshim import dns
    from netshim.protocols.dns import Zone

    cable = Cable(Medium.ETHERNET)
    stack = IpStack(cable.b, addresses=["10.1.0.2/24"], hostname="right")
    zone = Zone()
    zone.add("web.test", "A", "10.1.0.9")

    def serving() -> bool:
        names = [task.name for task in anyio.get_running_tasks()]
        return any("_serve_udp" in name or "_serve_tcp" in name for name in names)

    async with stack:
        server = dns.serve(stack, zone, "10.1.0.2", 53)
        async with server, anyio.create_task_group() as group:
            assert serving()
            group.start_soon(stack.aclose)
            # Polled: the task's end is what is watched, and nothing signals it.
            with anyio.fail_after(5):
                while serving():  # noqa: ASYNC110
                    await anyio.sleep(0.01)
