"""Intercepting every flow on the router's side of a link: dial first, then accept or refuse."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator

import anyio
import pytest

from netshim.ip.iface import Medium
from netshim.ip.intercept import InterceptedSyn
from netshim.ip.links import Cable
from netshim.ip.tcp import TcpConfig
from netshim.stacks.ip import Interception, IpStack

pytestmark = pytest.mark.anyio


@pytest.fixture
async def sides() -> AsyncIterator[tuple[IpStack, IpStack, Interception]]:
    cable = Cable(Medium.IP)
    program = IpStack(
        cable.a,
        addresses=["10.0.2.100/24", "fd00::100/64"],
        gateway4="10.0.2.2",
        gateway6="fd00::2",
    )
    router = IpStack(cable.b, addresses=["10.0.2.2/24", "fd00::2/64"])
    async with program, router:
        yield program, router, router.intercept()


async def next_syn(interception: Interception) -> InterceptedSyn:
    flow = await interception.next_flow()
    assert isinstance(flow, InterceptedSyn)
    return flow


@pytest.mark.parametrize("destination", ["203.0.113.9", "2001:db8::9"])
async def test_a_connection_to_anywhere_is_held_until_accepted(
    sides: tuple[IpStack, IpStack, Interception], destination: str
) -> None:
    program, _, interception = sides
    async with anyio.create_task_group() as group:
        connected: list[object] = []

        async def connect() -> None:
            stream = await program.connect_tcp(destination, 443)
            connected.append(stream)
            await stream.send(b"request")
            assert await stream.receive() == b"reply"
            await stream.aclose()

        group.start_soon(connect)
        with anyio.fail_after(10):
            syn = await next_syn(interception)
            assert str(syn.local[0]) == destination
            assert syn.local[1] == 443
            # The program's connect waits while the destination is dialled.
            await anyio.sleep(0.3)
            assert not connected
            assert interception.pending == 1
            stream = await interception.accept(syn)
            assert stream.local_address == (destination, 443)
            assert await stream.receive() == b"request"
            await stream.send(b"reply")
            with pytest.raises(anyio.EndOfStream):
                await stream.receive()
            await stream.aclose()


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("reset", errno.ECONNREFUSED),
        ("host-unreachable", errno.EHOSTUNREACH),
        ("net-unreachable", errno.ENETUNREACH),
        ("prohibited", errno.EHOSTUNREACH),
    ],
)
@pytest.mark.parametrize("destination", ["198.51.100.7", "2001:db8::7"])
async def test_a_refusal_reaches_the_program_as_its_errno(
    sides: tuple[IpStack, IpStack, Interception], how: str, expected: int, destination: str
) -> None:
    program, _, interception = sides
    async with anyio.create_task_group() as group:

        async def refuse() -> None:
            syn = await next_syn(interception)
            interception.refuse(syn, how)  # type: ignore[arg-type]

        group.start_soon(refuse)
        with anyio.fail_after(10), pytest.raises(OSError) as caught:
            await program.connect_tcp(destination, 80)
    if how == "prohibited" and ":" in destination:
        # Linux's icmpv6_err_convert: administratively prohibited is EACCES
        # over IPv6 (ICMP's code 13 is EHOSTUNREACH over IPv4).
        expected = errno.EACCES
    assert caught.value.errno == expected


async def test_datagrams_to_anywhere_and_replies_from_there(
    sides: tuple[IpStack, IpStack, Interception],
) -> None:
    program, _, interception = sides
    sock = await program.open_udp("0.0.0.0", 0)
    await sock.send(b"query", ("192.0.2.53", 5353))
    with anyio.fail_after(5):
        flow = await interception.next_flow()
    assert not isinstance(flow, InterceptedSyn)
    payload, source, destination = flow
    assert payload == b"query"
    assert destination == ("192.0.2.53", 5353)
    assert source == ("10.0.2.100", sock.local_address[1])
    interception.send_datagram(b"answer", destination, source)
    with anyio.fail_after(5):
        data, sender = await sock.receive()
    assert data == b"answer"
    assert sender == ("192.0.2.53", 5353)
    await sock.aclose()


async def test_a_retransmitted_syn_is_not_a_second_flow(
    sides: tuple[IpStack, IpStack, Interception],
) -> None:
    program, router, interception = sides
    async with anyio.create_task_group() as group:
        group.start_soon(program.connect_tcp, "203.0.113.1", 22)
        with anyio.fail_after(10):
            syn = await next_syn(interception)
        # The program's SYN is sent again after its 1 s retransmission timeout.
        await anyio.sleep(2.5)
        assert interception.pending == 1
        assert router.dropped.get("tcp syn intercepted already or backlog full", 0) >= 1
        interception.refuse(syn, "reset")
        group.cancel_scope.cancel()


async def test_a_syn_reusing_a_pair_in_time_wait_is_a_new_flow() -> None:
    # The router closes first, so its end waits in TIME-WAIT; the program,
    # which closed second, reuses its port at once (as a kernel whose
    # ephemeral ports wrapped does).  Its new SYN, whose sequence number is
    # beyond the old connection's (RFC 6528's clock; no timestamps, so that
    # RFC 6191's sequence rule decides), is a new flow at once.
    cable = Cable(Medium.IP)
    program = IpStack(
        cable.a,
        addresses=["10.0.2.100/24"],
        gateway4="10.0.2.2",
        tcp_config=TcpConfig(timestamps=False),
    )
    router = IpStack(cable.b, addresses=["10.0.2.2/24"])
    retransmissions: list[int] = []
    async with program, router:
        interception = router.intercept()
        for _ in range(2):
            async with anyio.create_task_group() as group:

                async def connect() -> None:
                    stream = await program.connect_tcp(
                        "203.0.113.9", 443, local_address=("10.0.2.100", 40000)
                    )
                    # Answered the first time: the TIME-WAIT end did not take
                    # the SYN (a reset, then a retransmitted SYN, were needed).
                    info = stream._connection.info()  # type: ignore[attr-defined]
                    retransmissions.append(info.retransmissions)
                    assert await stream.receive() == b"hello"
                    with pytest.raises(anyio.EndOfStream):
                        await stream.receive()
                    await stream.aclose()

                group.start_soon(connect)
                with anyio.fail_after(10):
                    stream = await interception.accept(await next_syn(interception))
                    await stream.send(b"hello")
                    await stream.aclose()
            await anyio.wait_all_tasks_blocked()
            states = [c.state.name for c in router._interface._connections.values()]
            assert states == ["TIME_WAIT"]
    assert retransmissions == [0, 0]
