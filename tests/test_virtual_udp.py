"""UDP on VirtualNetwork: unicast, broadcast, connected sockets, limits and seeded faults."""

from __future__ import annotations

import errno

import anyio
import pytest

from netshim import VirtualHost, VirtualNetwork

pytestmark = pytest.mark.anyio


def network(seed: int = 0) -> tuple[VirtualNetwork, VirtualHost, VirtualHost, VirtualHost]:
    net = VirtualNetwork(seed=seed)
    return net, net.add_host("a"), net.add_host("b"), net.add_host("c")


async def drain(sock: object, seconds: float = 0.05) -> list[bytes]:
    """What arrives until nothing more has come for ``seconds``, twice running.

    Quiet time rather than a total, so that a loaded machine taking long over
    a thousand datagrams does not cut the list short.  Twice, because a
    process the machine does not run for ``seconds`` finds its deadline past
    when it runs again and cancels a receive that had a datagram waiting:
    one such stall must not end the list.
    """
    received = []
    quiet = 0
    while quiet < 2:
        with anyio.move_on_after(seconds) as waited:
            data, _ = await sock.receive()  # type: ignore[attr-defined]
        if waited.cancelled_caught:
            quiet += 1
        else:
            quiet = 0
            received.append(data)
    return received


async def test_broadcast_needs_the_flag_and_reaches_the_subnet() -> None:
    _, a, b, c = network()
    receivers = [await host.open_udp("0.0.0.0", 9999) for host in (a, b, c)]
    sender = await a.open_udp("0.0.0.0", 0)
    with pytest.raises(PermissionError) as caught:
        await sender.send(b"hello all", ("10.0.0.255", 9999))
    assert caught.value.errno == errno.EACCES
    sender.broadcast = True
    await sender.send(b"hello all", ("10.0.0.255", 9999))
    await sender.send(b"limited", ("255.255.255.255", 9999))
    for receiver in receivers:
        assert await drain(receiver) == [b"hello all", b"limited"]
    # A socket bound to one host address does not hear broadcasts.
    specific = await b.open_udp(b.addresses[0], 7777)
    await sender.send(b"x", ("10.0.0.255", 7777))
    assert await drain(specific) == []


async def test_connected_socket_filters_other_senders() -> None:
    _, a, b, c = network()
    server = await a.open_udp("0.0.0.0", 5000)
    client = await b.open_udp("0.0.0.0", 0, remote=("10.0.0.2", 5000))
    stranger = await c.open_udp("0.0.0.0", 0)
    await stranger.send(b"spam", (b.addresses[0], client.local_address[1]))
    await server.send(b"reply", (b.addresses[0], client.local_address[1]))
    assert await client.receive() == (b"reply", ("10.0.0.2", 5000))
    assert await drain(client) == []


async def test_connected_refusal_is_reported_once() -> None:
    _, _, b, _ = network()
    client = await b.open_udp("0.0.0.0", 0, remote=("10.0.0.2", 5353))
    await client.send(b"?")
    with pytest.raises(ConnectionRefusedError):
        await client.receive()
    # Reported once, like SO_ERROR: the next receive waits normally.
    assert await drain(client) == []
    # An unconnected socket is not told.
    loose = await b.open_udp("0.0.0.0", 0)
    await loose.send(b"?", ("10.0.0.2", 5353))
    assert await drain(loose) == []


async def test_datagram_size_limits() -> None:
    _, a, b, _ = network()
    server = await a.open_udp("0.0.0.0", 5000)
    client = await b.open_udp("0.0.0.0", 0)
    await client.send(b"x" * 65507, ("10.0.0.2", 5000))
    data, _ = await server.receive()
    assert len(data) == 65507
    with pytest.raises(OSError, match="65508 bytes, at most 65507") as caught:
        await client.send(b"x" * 65508, ("10.0.0.2", 5000))
    assert caught.value.errno == errno.EMSGSIZE
    v6 = await b.open_udp("::", 0)
    with pytest.raises(OSError, match="at most 65527"):
        await v6.send(b"x" * 65528, ("fd00::2", 5000))


async def test_receive_buffer_overflow_drops_datagrams() -> None:
    _, a, b, _ = network()
    server = await a.open_udp("0.0.0.0", 5000)
    client = await b.open_udp("0.0.0.0", 0)
    for _ in range(10):
        await client.send(b"x" * 60000, ("10.0.0.2", 5000))
    assert len(await drain(server)) == 3  # 212992 bytes of buffer hold three


async def test_ipv6_and_dual_stack_sources() -> None:
    _, a, b, _ = network()
    dual = await a.open_udp("::", 6000)
    v4 = await b.open_udp("0.0.0.0", 0)
    await v4.send(b"four", ("10.0.0.2", 6000))
    assert await dual.receive() == (b"four", ("::ffff:10.0.0.3", v4.local_address[1]))
    v6 = await b.open_udp("::", 0)
    await v6.send(b"six", ("fd00::2", 6000))
    assert await dual.receive() == (b"six", ("fd00::3", v6.local_address[1]))
    with pytest.raises(OSError) as caught:
        await v4.send(b"x", ("fd00::2", 6000))
    assert caught.value.errno == errno.EAFNOSUPPORT


async def test_port_conflicts_and_send_without_address() -> None:
    _, a, _, _ = network()
    first = await a.open_udp("0.0.0.0", 4000)
    with pytest.raises(OSError) as caught:
        await a.open_udp("0.0.0.0", 4000)
    assert caught.value.errno == errno.EADDRINUSE
    with pytest.raises(OSError) as caught:
        await first.send(b"where to?")
    assert caught.value.errno == errno.EDESTADDRREQ
    await first.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await first.receive()


async def loss_run(seed: int, **conditions: float) -> list[bytes]:
    net, a, b, _ = network(seed)
    net.set_link(a, b, **conditions)
    server = await a.open_udp("0.0.0.0", 5000)
    client = await b.open_udp("0.0.0.0", 0)
    for number in range(1000):
        await client.send(number.to_bytes(2, "big"), ("10.0.0.2", 5000))
    return await drain(server, seconds=0.1)


async def test_loss_is_seeded_and_close_to_the_rate() -> None:
    first = await loss_run(7, loss=0.2)
    again = await loss_run(7, loss=0.2)
    other = await loss_run(8, loss=0.2)
    assert first == again, "the same seed must lose the same datagrams"
    assert first != other
    assert 740 <= len(first) <= 860


async def test_duplication_and_reordering() -> None:
    duplicated = await loss_run(1, duplicate=0.1)
    assert 1060 <= len(duplicated) <= 1140
    assert sorted(set(duplicated)) == sorted(
        set(duplicated), key=lambda d: int.from_bytes(d, "big")
    )
    reordered = await loss_run(1, reorder=0.1)
    assert sorted(reordered) == sorted(n.to_bytes(2, "big") for n in range(1000))
    assert reordered != sorted(reordered), "some datagrams must arrive late"


async def test_partition_drops_datagrams_until_healed() -> None:
    net, a, b, _ = network()
    server = await a.open_udp("0.0.0.0", 5000)
    client = await b.open_udp("0.0.0.0", 0)
    net.partition(a, b)
    await client.send(b"lost", ("10.0.0.2", 5000))
    assert await drain(server) == []
    net.heal(a, b)
    await client.send(b"found", ("10.0.0.2", 5000))
    assert await drain(server) == [b"found"]


async def test_unowned_address_in_subnet_is_dropped_and_outside_is_unreachable() -> None:
    _, _, b, _ = network()
    client = await b.open_udp("0.0.0.0", 0)
    await client.send(b"into the void", ("10.0.0.200", 9))
    with pytest.raises(OSError) as caught:
        await client.send(b"x", ("198.51.100.1", 9))
    assert caught.value.errno == errno.ENETUNREACH
    connected = await b.open_udp("0.0.0.0", 0, remote=("10.0.0.200", 9))
    await connected.send(b"x")
    with pytest.raises(OSError) as caught:
        await connected.receive()
    assert caught.value.errno == errno.EHOSTUNREACH


async def test_async_iteration_ends_on_close() -> None:
    _, a, b, _ = network()
    server = await a.open_udp("0.0.0.0", 5000)
    client = await b.open_udp("0.0.0.0", 0)
    got: list[bytes] = []

    async def collect() -> None:
        async for data, _ in server:
            got.append(data)

    async with anyio.create_task_group() as group:
        group.start_soon(collect)
        for word in (b"a", b"b"):
            await client.send(word, ("10.0.0.2", 5000))
        await anyio.sleep(0.01)
        await server.aclose()
    assert got == [b"a", b"b"]


async def test_connecting_a_wildcard_socket_fixes_its_source_address() -> None:
    net = VirtualNetwork(seed=0)
    net.add_host("server", ["10.0.0.2", "fd00::2"])
    client = net.add_host("client", ["10.0.0.3", "fd00::3"])
    for bind, remote, expected in (
        ("0.0.0.0", ("10.0.0.2", 53), "10.0.0.3"),
        ("0.0.0.0", ("127.0.0.1", 53), "127.0.0.1"),
        ("::", ("fd00::2", 53), "fd00::3"),
        ("::", ("10.0.0.2", 53), "::ffff:10.0.0.3"),
    ):
        sock = await client.open_udp(bind, 0, remote=remote)
        async with sock:
            assert sock.local_address[0] == expected, (bind, remote)
    # A socket bound to an address keeps it.
    sock = await client.open_udp("10.0.0.3", 0, remote=("10.0.0.2", 53))
    async with sock:
        assert sock.local_address[0] == "10.0.0.3"
