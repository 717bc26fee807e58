"""The Stack conformance kit run on every stack netshim ships."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

import netshim
from netshim.testing import CHECKS, StackPair

pytestmark = pytest.mark.anyio


async def host_pair_v4() -> StackPair:
    stack = netshim.HostStack()
    return StackPair(stack, stack, "127.0.0.1", "127.0.0.1")


async def host_pair_v6() -> StackPair:
    stack = netshim.HostStack()
    return StackPair(stack, stack, "::1", "::1")


async def virtual_pair_v4() -> StackPair:
    net = netshim.VirtualNetwork(seed=1)
    server = net.add_host("server.internal")
    client = net.add_host("client.internal")
    return StackPair(server, client, server.addresses[0], client.addresses[0])


async def virtual_pair_v6() -> StackPair:
    net = netshim.VirtualNetwork(seed=2)
    server = net.add_host("server.internal")
    client = net.add_host("client.internal")
    return StackPair(server, client, server.addresses[1], client.addresses[1])


async def virtual_loopback() -> StackPair:
    net = netshim.VirtualNetwork(seed=3)
    host = net.add_host("solo")
    return StackPair(host, host, "127.0.0.1", "127.0.0.1")


async def virtual_slow_link() -> StackPair:
    net = netshim.VirtualNetwork(seed=4)
    server = net.add_host("server.internal")
    client = net.add_host("client.internal")
    net.set_link(server, client, latency=0.002, jitter=0.001, bandwidth=50_000_000)
    return StackPair(server, client, server.addresses[0], client.addresses[0])


def _ip_stacks() -> tuple[netshim.IpStack, netshim.IpStack]:
    from netshim.ip.iface import Medium
    from netshim.ip.links import Cable

    cable = Cable(Medium.ETHERNET)
    server = netshim.IpStack(cable.a, addresses=["10.5.0.1/24", "fd05::1/64"])
    client = netshim.IpStack(cable.b, addresses=["10.5.0.2/24", "fd05::2/64"])
    return server, client


async def ip_pair_v4() -> StackPair:
    server, client = _ip_stacks()
    return StackPair(server, client, "10.5.0.1", "10.5.0.2")


async def ip_pair_v6() -> StackPair:
    server, client = _ip_stacks()
    return StackPair(server, client, "fd05::1", "fd05::2")


async def ip_loopback() -> StackPair:
    server, _ = _ip_stacks()
    return StackPair(server, server, "127.0.0.1", "127.0.0.1")


PAIRS: dict[str, Callable[[], Awaitable[StackPair]]] = {
    "host-ipv4": host_pair_v4,
    "host-ipv6": host_pair_v6,
    "virtual-ipv4": virtual_pair_v4,
    "virtual-ipv6": virtual_pair_v6,
    "virtual-loopback": virtual_loopback,
    "virtual-slow-link": virtual_slow_link,
    "ip-ipv4": ip_pair_v4,
    "ip-ipv6": ip_pair_v6,
    "ip-loopback": ip_loopback,
}


@pytest.mark.parametrize("check", CHECKS.values(), ids=list(CHECKS))
@pytest.mark.parametrize("make_pair", PAIRS.values(), ids=list(PAIRS))
async def test_contract(
    make_pair: Callable[[], Awaitable[StackPair]],
    check: Callable[[StackPair], Awaitable[None]],
) -> None:
    await check(await make_pair())
