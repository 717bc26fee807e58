"""The wire modules the interface layer added: ARP, ICMPv4, ICMPv6 and neighbour discovery.

The literal packets were written by hand from the RFC 792 and RFC 826 field
layouts (the echo checksum computed by hand: 0xFFFF minus the folded sum of
0x0800, 0x1234, 0x0001 and the data words); the kernel tests in
``test_iface_kernel.py`` check the same code against Linux.
"""

from __future__ import annotations

import contextlib
from ipaddress import IPv4Address, IPv6Address, IPv6Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netshim.protocols.ip import (
    ArpOperation,
    ArpRepr,
    EthernetAddress,
    Icmpv4Repr,
    Icmpv4Type,
    Icmpv6Repr,
    Icmpv6Type,
    NeighborAdvert,
    NeighborSolicit,
    PrefixInformation,
    RouterAdvert,
    RouterSolicit,
    WireError,
)

MAC_A = EthernetAddress.from_text("02:00:00:00:00:0a")
MAC_B = EthernetAddress.from_text("02:00:00:00:00:0b")
LL_A = IPv6Address("fe80::a")
LL_B = IPv6Address("fe80::b")

# An echo request: type 8, code 0, checksum 0x5435, identifier 0x1234, sequence 1, 8 data bytes.
ECHO_REQUEST = bytes.fromhex("0800543512340001") + b"abcdefgh"


def test_icmpv4_echo_round_trip() -> None:
    request = Icmpv4Repr.parse(ECHO_REQUEST)
    assert request.type is Icmpv4Type.ECHO_REQUEST
    assert (request.ident, request.seq_no, request.payload) == (0x1234, 1, b"abcdefgh")
    assert request.emit() == ECHO_REQUEST
    reply = Icmpv4Repr.parse(request.echo_reply().emit())
    assert reply.type is Icmpv4Type.ECHO_REPLY
    assert (reply.ident, reply.seq_no, reply.payload) == (0x1234, 1, b"abcdefgh")


def test_icmpv4_bad_checksum_and_truncation() -> None:
    corrupt = bytearray(ECHO_REQUEST)
    corrupt[-1] ^= 1
    with pytest.raises(WireError, match="checksum"):
        Icmpv4Repr.parse(bytes(corrupt))
    assert Icmpv4Repr.parse(bytes(corrupt), verify_checksum=False).payload.endswith(b"i")
    with pytest.raises(WireError, match="truncated"):
        Icmpv4Repr.parse(ECHO_REQUEST[:7])


def test_icmpv4_unreachable_quotes_and_mtu() -> None:
    message = Icmpv4Repr.dest_unreachable(4, b"x" * 1000, mtu=1400)
    assert message.next_hop_mtu == 1400
    assert len(message.quoted()) == 548
    assert Icmpv4Repr.parse(message.emit()) == message
    assert Icmpv4Repr.echo_request(1, 2).quoted() == b""


def test_arp_round_trip_and_padding() -> None:
    arp = ArpRepr(
        ArpOperation.REQUEST,
        MAC_A,
        IPv4Address("10.0.0.1"),
        EthernetAddress(bytes(6)),
        IPv4Address("10.0.0.2"),
    )
    raw = arp.emit()
    assert raw[:8] == bytes.fromhex("0001080006040001")
    assert ArpRepr.parse(raw + bytes(18)) == arp
    with pytest.raises(WireError):
        ArpRepr.parse(raw[:27])
    with pytest.raises(WireError, match="not Ethernet/IPv4"):
        ArpRepr.parse(b"\x00\x06" + raw[2:])


def test_icmpv6_checksum_covers_the_pseudo_header() -> None:
    raw = Icmpv6Repr.echo_request(7, 9, b"ping").emit(LL_A, LL_B)
    assert Icmpv6Repr.parse(raw, LL_A, LL_B).payload == b"ping"
    with pytest.raises(WireError, match="checksum"):
        Icmpv6Repr.parse(raw, LL_A, IPv6Address("fe80::c"))
    with pytest.raises(WireError):
        Icmpv6Repr.parse(raw, IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2"))


def test_neighbour_discovery_messages_round_trip() -> None:
    messages = [
        NeighborSolicit(LL_B, MAC_A),
        NeighborSolicit(LL_B),
        NeighborAdvert(LL_A, MAC_A, solicited=True),
        NeighborAdvert(LL_A, None, router=True, override=False),
        RouterSolicit(MAC_A),
        RouterAdvert(
            router_lifetime=600,
            source_lladdr=MAC_B,
            mtu=1400,
            prefixes=(PrefixInformation(IPv6Network("2001:db8:1::/64"), valid_lifetime=300),),
        ),
    ]
    for message in messages:
        icmp = message.to_icmp()
        parsed = Icmpv6Repr.parse(icmp.emit(LL_A, LL_B), LL_A, LL_B)
        assert type(message).from_icmp(parsed) == message  # type: ignore[attr-defined]


def test_neighbour_discovery_rejects_zero_length_options_and_wrong_types() -> None:
    bad = Icmpv6Repr(Icmpv6Type.NEIGHBOR_SOLICIT, 0, 0, LL_B.packed + bytes((1, 0)) + bytes(6))
    with pytest.raises(WireError, match="length zero"):
        NeighborSolicit.from_icmp(bad)
    with pytest.raises(WireError):
        NeighborAdvert.from_icmp(NeighborSolicit(LL_B).to_icmp())
    with pytest.raises(WireError, match="multicast"):
        NeighborSolicit.from_icmp(
            Icmpv6Repr(Icmpv6Type.NEIGHBOR_SOLICIT, 0, 0, IPv6Address("ff02::1").packed)
        )


@given(st.binary(max_size=120))
def test_garbage_only_raises_wire_error(data: bytes) -> None:
    with contextlib.suppress(WireError):
        ArpRepr.parse(data)
    with contextlib.suppress(WireError):
        Icmpv4Repr.parse(data, verify_checksum=False)
    with contextlib.suppress(WireError):
        icmp = Icmpv6Repr.parse(data, LL_A, LL_B, verify_checksum=False)
        for kind in (NeighborSolicit, NeighborAdvert, RouterSolicit, RouterAdvert):
            with contextlib.suppress(WireError):
                kind.from_icmp(icmp)  # type: ignore[attr-defined]
