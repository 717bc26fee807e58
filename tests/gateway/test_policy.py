"""The egress policy: default refusals, SSRF spellings, rules, resolve-once, buckets."""

from __future__ import annotations

import errno
import ipaddress
import socket

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netshim import HostStack, VirtualNetwork
from netshim.policy import (
    DEFAULT_REFUSED,
    DestinationBlockedError,
    Policy,
    Rule,
    TokenBucket,
    _embedded_ipv4,
    _refused_label,
    parse_numeric_ipv4,
)

pytestmark = pytest.mark.anyio

REFUSED = {
    "127.0.0.1": "loopback",
    "127.255.255.254": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "169.254.1.1": "link-local",
    "100.64.0.1": "CGNAT",
    "224.0.0.1": "multicast",
    "255.255.255.255": "broadcast",
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "::1": "loopback",
    "fe80::1": "link-local",
    "fd12:3456::1": "unique-local",
    "ff02::1": "multicast",
    "::ffff:127.0.0.1": "IPv4-mapped form of 127.0.0.1",
    "::ffff:10.0.0.1": "IPv4-mapped form of 10.0.0.1",
    "::127.0.0.1": "IPv4-compatible form of 127.0.0.1",
    "64:ff9b::a00:1": "NAT64 form of 10.0.0.1",
    "2002:7f00:1::": "6to4 form of 127.0.0.1",
    "169.254.169.254": "cloud metadata",
    "fd00:ec2::254": "AWS IPv6 metadata",
    "::ffff:169.254.169.254": "cloud metadata",
    "::ffff:0:7f00:1": "SIIT IPv4-translated form of 127.0.0.1",
    "::ffff:0:a9fe:a9fe": "cloud metadata",
    "64:ff9b:1::7f00:1": "local-use NAT64",
    "64:ff9b:1:ffff::808:808": "local-use NAT64",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2": "Teredo",
    "192.88.99.1": "6to4 relay anycast",
}


@pytest.mark.parametrize(("ip", "label"), sorted(REFUSED.items()))
def test_default_refusals(ip: str, label: str) -> None:
    with pytest.raises(DestinationBlockedError) as caught:
        Policy().check(ip, ip, 80)
    assert caught.value.errno == errno.EACCES
    assert label in str(caught.value)
    message = str(caught.value)
    assert "\n" not in message
    assert "to allow it" in message


@pytest.mark.parametrize(
    "ip", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "8.8.8.8", "::ffff:0:808:808"]
)
def test_public_addresses_pass(ip: str) -> None:
    Policy().check(ip, ip, 443)


@pytest.mark.parametrize(
    "spelling", ["2130706433", "0x7f000001", "0177.0.0.1", "127.1", "0x7f.1", "017700000001"]
)
def test_numeric_spellings_are_loopback(spelling: str) -> None:
    assert parse_numeric_ipv4(spelling) == ipaddress.IPv4Address("127.0.0.1")


@pytest.mark.parametrize("name", ["example.com", "1.2.3.example", "0x7g.0.0.1", "", "1.2.3.4.5"])
def test_names_are_not_numeric_spellings(name: str) -> None:
    assert parse_numeric_ipv4(name) is None


@pytest.mark.parametrize(
    "spelling",
    ["2130706433", "0x7f.0.0.1", "0177.0.0.1", "127.1", "::ffff:127.0.0.1", "0.0.0.0", "[::1]"],
)
async def test_resolve_refuses_ssrf_spellings_without_dns(spelling: str) -> None:
    # A virtual host with no DNS records: any lookup would fail with gaierror,
    # so a DestinationBlockedError proves the spelling was understood locally.
    network = VirtualNetwork(resolver=False)
    host = network.add_host("gateway")
    with pytest.raises(DestinationBlockedError):
        await Policy().resolve(host, spelling.strip("[]"), 80)


async def test_name_resolving_to_loopback_is_refused() -> None:
    network = VirtualNetwork()
    network.add_record("rebind.test", "A", "127.0.0.1")
    host = network.add_host("gateway")
    with pytest.raises(
        DestinationBlockedError, match=r"127\.0\.0\.1:80 \(asked as 'rebind\.test'\)"
    ):
        await Policy().resolve(host, "rebind.test", 80)


async def test_localhost_on_the_host_network_is_refused() -> None:
    with pytest.raises(DestinationBlockedError, match="loopback"):
        await Policy().resolve(HostStack(), "localhost", 80)


async def test_only_checked_addresses_are_returned() -> None:
    network = VirtualNetwork()
    network.add_record("mixed.test", "A", "127.0.0.1")
    network.add_record("mixed.test", "A", "10.0.0.9")
    host = network.add_host("gateway")
    policy = Policy(allow=["10.0.0.0/24"])
    targets = await policy.resolve(host, "mixed.test", 80)
    assert [t.ip for t in targets] == ["10.0.0.9"]


async def test_connect_goes_to_the_checked_address() -> None:
    network = VirtualNetwork()
    server = network.add_host("server")
    gateway = network.add_host("gateway")
    listener = await server.listen_tcp(None, 7000)
    async with listener:
        with pytest.raises(DestinationBlockedError, match="private"):
            await Policy().connect_tcp(gateway, "server", 7000)
        policy = Policy(allow=[f"{server.addresses[0]}:7000"])
        stream, target = await policy.connect_tcp(gateway, "server", 7000)
        async with stream:
            assert target.ip == server.addresses[0]
            assert stream.remote_address == (server.addresses[0], 7000)
        with pytest.raises(DestinationBlockedError):
            await policy.connect_tcp(gateway, "server", 7001)


async def test_unknown_name_is_a_gaierror() -> None:
    network = VirtualNetwork()
    host = network.add_host("gateway")
    with pytest.raises(socket.gaierror):
        await Policy().resolve(host, "nowhere.test", 80)


def test_rules() -> None:
    assert Rule.parse("10.0.0.0/8:5432").matches("x", ipaddress.ip_address("10.2.3.4"), 5432)
    assert not Rule.parse("10.0.0.0/8:5432").matches("x", ipaddress.ip_address("10.2.3.4"), 80)
    assert Rule.parse("[fd00::/8]:80-90").matches("x", ipaddress.ip_address("fd00::1"), 85)
    assert Rule.parse("::1").matches("x", ipaddress.ip_address("::1"), 1)
    assert Rule.parse("*.example.com").matches("A.Example.com", ipaddress.ip_address("1.1.1.1"), 1)
    assert not Rule.parse("*.example.com").matches(
        "example.org", ipaddress.ip_address("1.1.1.1"), 1
    )
    assert Rule.parse("*:22,80").matches("any", ipaddress.ip_address("1.1.1.1"), 80)
    assert Rule.parse("127.0.0.1").matches("x", ipaddress.ip_address("::ffff:127.0.0.1"), 1)
    for bad in ["", "[::1", "a b", "1.2.3.4:99999", "[::1]x"]:
        with pytest.raises(ValueError):
            Rule.parse(bad)


def test_deny_wins_and_ports_restrict() -> None:
    policy = Policy(deny=["*.evil.test", "1.1.1.1:25"], ports="25,443")
    with pytest.raises(DestinationBlockedError, match="deny rule"):
        policy.check("www.evil.test", "8.8.8.8", 443)
    with pytest.raises(DestinationBlockedError, match="deny rule"):
        policy.check("1.1.1.1", "1.1.1.1", 25)
    with pytest.raises(DestinationBlockedError, match="outside the allowed ports"):
        policy.check("8.8.8.8", "8.8.8.8", 80)
    policy.check("8.8.8.8", "8.8.8.8", 443)


def test_allow_rules_open_private_but_not_metadata() -> None:
    policy = Policy(allow=["169.254.0.0/16", "127.0.0.1:8080"])
    policy.check("x", "169.254.1.1", 80)
    policy.check("x", "127.0.0.1", 8080)
    with pytest.raises(DestinationBlockedError, match="loopback"):
        policy.check("x", "127.0.0.1", 8081)
    with pytest.raises(DestinationBlockedError, match="exactly"):
        policy.check("x", "169.254.169.254", 80)
    Policy(allow=["169.254.169.254"]).check("x", "169.254.169.254", 80)
    with pytest.raises(DestinationBlockedError, match="metadata"):
        Policy.permissive().check("x", "169.254.169.254", 80)
    Policy.permissive().check("x", "127.0.0.1", 1)


def test_transports_can_be_switched_off() -> None:
    with pytest.raises(DestinationBlockedError, match="UDP is switched off"):
        Policy(allow_udp=False).check("x", "8.8.8.8", 53, "udp")


def test_message_names_the_remedy() -> None:
    with pytest.raises(DestinationBlockedError) as caught:
        Policy().check("localhost", "127.0.0.1", 8080)
    assert str(caught.value) == (
        "[Errno 13] netshim policy refused 127.0.0.1:8080 (asked as 'localhost'): "
        "loopback address (127.0.0.0/8); to allow it, add an allow rule "
        "(--allow 127.0.0.1:8080) or set allow_private (--allow-private)"
    )


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert all(bucket.try_take(1, 0.0) for _ in range(5))
    assert not bucket.try_take(1, 0.0)
    assert bucket.try_take(1, 0.1)
    assert bucket.take(10, 0.1) == pytest.approx(1.0)
    assert bucket.take(0, 1.1) == 0.0


async def test_resolve_uses_no_thread_for_literals() -> None:
    with anyio.fail_after(1):
        targets = await Policy().resolve(HostStack(), "1.1.1.1", 53, "udp")
    assert targets[0].address == ("1.1.1.1", 53)


def _refused_by_membership(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """The first default-refused network holding ``address``, by ipaddress's own test."""
    for cidr, label in DEFAULT_REFUSED:
        network = ipaddress.ip_network(cidr)
        if address.version == network.version and address in network:
            return f"{label} address ({network})"
    return None


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
def test_refused_networks_match_as_ipaddress_membership_does(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    expected = _refused_by_membership(address)
    if expected is None and _embedded_ipv4(address) is not None:
        return  # an embedded IPv4 address: labelled by its inner address (tests above)
    assert _refused_label(address) == expected
