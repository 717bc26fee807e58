"""The terminator without a namespace: DNS answered from the stack, synthetic addresses for
tunnels, the end of its device, and what it keeps of refusals."""

from __future__ import annotations

import ipaddress

import anyio
import pytest

from netshim import HostStack, IpStack, VirtualHost, VirtualNetwork
from netshim.dns import Request
from netshim.ip.iface import Medium
from netshim.ip.links import Cable
from netshim.isolate import Addressing
from netshim.isolate._terminate import RECENT_REFUSALS, Terminator
from netshim.policy import Policy
from netshim.stack import ForwardingStack

pytestmark = pytest.mark.anyio


class RemoteResolving(ForwardingStack):
    """A stack that, like a tunnel, resolves names at the far end."""

    def __init__(self, inner: VirtualHost) -> None:
        super().__init__(inner)
        self.resolves_remotely = True


def request(name: str, kind: str) -> Request:
    return Request(name, kind, ("10.0.2.100", 5353), "udp", b"")


async def test_names_resolve_through_the_stack() -> None:
    net = VirtualNetwork(seed=5)
    net.add_host("web.test", ["10.9.0.5", "fd09::5"])
    client = net.add_host("client", ["10.9.0.9", "fd09::9"])
    terminator = Terminator(Cable(Medium.IP).a, client, policy=Policy(), addressing=Addressing())
    a = await terminator._answer_dns(request("web.test", "A"))
    aaaa = await terminator._answer_dns(request("web.test", "AAAA"))
    assert a is not None
    assert aaaa is not None
    assert [(r.type, r.value) for r in a] == [("A", "10.9.0.5")]
    assert [(r.type, r.value) for r in aaaa] == [("AAAA", "fd09::5")]
    assert await terminator._answer_dns(request("absent.test", "A")) is None  # NXDOMAIN
    ptr = await terminator._answer_dns(request("5.0.9.10.in-addr.arpa", "PTR"))
    assert ptr is not None
    assert [r.value for r in ptr] == ["web.test."]
    assert await terminator._answer_dns(request("web.test", "MX")) == []


async def test_a_tunnel_gets_synthetic_addresses_that_connect_by_name() -> None:
    net = VirtualNetwork(seed=6)
    client = net.add_host("client")
    terminator = Terminator(
        Cable(Medium.IP).a, RemoteResolving(client), policy=Policy(), addressing=Addressing()
    )
    first = await terminator._answer_dns(request("Service.Example.", "A"))
    again = await terminator._answer_dns(request("service.example", "A"))
    six = await terminator._answer_dns(request("service.example", "AAAA"))
    other = await terminator._answer_dns(request("other.example", "A"))
    assert first is not None
    assert again is not None
    assert six is not None
    assert other is not None
    v4 = ipaddress.ip_address(first[0].value)
    assert v4 in ipaddress.ip_network("198.18.0.0/15")
    assert again[0].value == first[0].value, "the same name keeps its address"
    assert other[0].value != first[0].value
    v6 = ipaddress.ip_address(six[0].value)
    assert v6 in ipaddress.ip_network("100::/64")
    assert terminator._destination(v4) == "service.example"
    assert terminator._destination(v6) == "service.example"
    # The gateway address stands for the machine's loopback, the DNS address for nothing.
    addressing = Addressing()
    assert terminator._destination(addressing.gateway4) == "127.0.0.1"
    assert terminator._destination(addressing.gateway6) == "::1"
    assert terminator._destination(addressing.dns4) is None
    assert terminator._destination(ipaddress.ip_address("192.0.2.7")) == "192.0.2.7"


async def test_a_device_that_fails_ends_the_terminator_quietly() -> None:
    # The namespace's TUN device fails when the program exits before the
    # terminator is stopped: the terminator waits to be cancelled, no error.
    cable = Cable(Medium.IP)
    terminator = Terminator(cable.a, HostStack(), policy=Policy(), addressing=Addressing())
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            await group.start(terminator.run)
            driver = terminator.inner._driver
            assert driver is not None
            await cable.a.aclose()
            await driver.stopped.wait()
            await anyio.wait_all_tasks_blocked()
            group.cancel_scope.cancel()
    assert driver.error is not None


async def test_repeated_refusals_keep_a_bounded_record() -> None:
    # The gateway address stands for the host's loopback, which the default
    # policy refuses: a program (or a gateway's WireGuard client) repeating
    # that connect is refused each time, and the record of reasons stays
    # bounded; a UDP flow there is refused and counted too.
    cable = Cable(Medium.IP)
    terminator = Terminator(cable.a, HostStack(), policy=Policy(), addressing=Addressing())
    attempts = RECENT_REFUSALS + 16
    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            await group.start(terminator.run)
            async with IpStack(
                cable.b, addresses=["10.0.2.100/24"], gateway4="10.0.2.2"
            ) as program:
                for _ in range(attempts):
                    with pytest.raises(ConnectionRefusedError):
                        await program.connect_tcp("10.0.2.2", 9)
                udp = await program.open_udp("0.0.0.0", 0)
                await udp.send(b"refused too", ("10.0.2.2", 9))
                await anyio.wait_all_tasks_blocked()
            group.cancel_scope.cancel()
    assert terminator.counters.tcp_refused == attempts
    assert terminator.counters.udp_refused == 1
    assert terminator.counters.udp_flows == 0
    assert len(terminator.counters.refusals) == RECENT_REFUSALS
    assert all(
        "127.0.0.1" in reason or "loopback" in reason.lower()
        for reason in terminator.counters.refusals
    )
