"""The interface layer fed crafted frames: ARP, NDP, ICMP, UDP, reassembly and TCP demultiplexing.

TCP connections here are mostly a small fake (:class:`FakeTcp`) that records
what the interface hands it, so these tests check the demultiplexing and the
IP and link plumbing alone; the real core runs in the last tests here, in
``test_links_memory.py`` and in the kernel tests.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import pickle
import random
from dataclasses import dataclass, field
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netshim.ip.iface import (
    GsoType,
    Interface,
    Medium,
    OutgoingPacket,
    _ipv4_address,
)
from netshim.protocols.ip import (
    BROADCAST,
    ArpOperation,
    ArpRepr,
    EthernetAddress,
    EthernetRepr,
    EtherType,
    Icmpv4Repr,
    Icmpv4Type,
    Icmpv6Repr,
    Icmpv6Type,
    IPAddress,
    IpProtocol,
    Ipv4Repr,
    Ipv6Repr,
    MaxSegmentSize,
    NeighborAdvert,
    NeighborSolicit,
    PrefixInformation,
    RouterAdvert,
    TcpFlags,
    TcpRepr,
    UdpRepr,
)

OUR_MAC = EthernetAddress.from_text("02:00:00:00:00:01")
PEER_MAC = EthernetAddress.from_text("02:00:00:00:00:02")
OUR_V4 = IPv4Address("10.0.0.1")
PEER_V4 = IPv4Address("10.0.0.2")
OUR_V6 = IPv6Address("2001:db8::1")
PEER_V6 = IPv6Address("2001:db8::2")
PEER_LL = IPv6Address("fe80::2")
Endpoint = tuple[IPAddress, int]


@dataclass(eq=False)
class FakeConnection:
    """Records segments and errors; answers a SYN with a SYN-ACK and an ACK with ESTABLISHED."""

    local: Endpoint
    remote: Endpoint
    established: bool = False
    finished: bool = False
    received: list[TcpRepr] = field(default_factory=list)
    errors: list[tuple[int, int | None]] = field(default_factory=list)
    outbox: list[TcpRepr] = field(default_factory=list)
    aborted: bool = False
    send_mss: int = 1460

    def accepts_new_syn(self, segment: TcpRepr) -> bool:
        return False

    def on_segment(self, segment: TcpRepr, now: float) -> None:
        self.received.append(segment)
        if segment.flags & TcpFlags.ACK:
            self.established = True
        if segment.flags & TcpFlags.RST:
            self.finished = True

    def on_icmp_error(
        self, code: int, now: float, *, mtu: int | None = None, seq: int | None = None
    ) -> None:
        self.errors.append((code, mtu))

    def poll(self, now: float) -> list[TcpRepr]:
        out, self.outbox = self.outbox, []
        return out

    def deadline(self) -> float | None:
        # As the real core: due at once while something waits to be sent.
        return 0.0 if self.outbox else None

    def abort(self) -> None:
        self.aborted = True
        self.finished = True


class FakeTcp:
    """A :class:`netshim.ip.iface.TcpEngine` of :class:`FakeConnection` values."""

    def initial_sequence_number(
        self, secret: bytes, local: Endpoint, remote: Endpoint, now: float
    ) -> int:
        return 1000

    def reset_for_unexpected(self, segment: TcpRepr) -> TcpRepr | None:
        if segment.flags & TcpFlags.RST:
            return None
        return TcpRepr(
            segment.dst_port,
            segment.src_port,
            0,
            (segment.seq + segment.segment_len()) & 0xFFFFFFFF,
            TcpFlags.RST | TcpFlags.ACK,
            0,
        )

    def open_active(
        self, local: Endpoint, remote: Endpoint, *, iss: int, now: float, config: Any
    ) -> FakeConnection:
        syn = TcpRepr(local[1], remote[1], iss, 0, TcpFlags.SYN, 65535)
        return FakeConnection(local, remote, outbox=[syn])

    def open_passive(
        self,
        local: Endpoint,
        remote: Endpoint,
        syn: TcpRepr,
        *,
        iss: int,
        now: float,
        config: Any,
    ) -> FakeConnection:
        reply = TcpRepr(local[1], remote[1], iss, syn.seq + 1, TcpFlags.SYN | TcpFlags.ACK, 65535)
        return FakeConnection(local, remote, received=[syn], outbox=[reply])


def ethernet_interface(**kwargs: Any) -> Interface:
    return Interface(
        Medium.ETHERNET,
        mac=OUR_MAC,
        addresses=[IPv4Interface("10.0.0.1/24"), IPv6Interface("2001:db8::1/64")],
        rng=random.Random(1),
        tcp=FakeTcp(),
        slaac=kwargs.pop("slaac", False),
        **kwargs,
    )


def ip_interface(**kwargs: Any) -> Interface:
    return Interface(
        Medium.IP,
        addresses=[IPv4Interface("10.0.0.1/24"), IPv6Interface("2001:db8::1/64")],
        rng=random.Random(1),
        tcp=kwargs.pop("tcp", FakeTcp()),
        **kwargs,
    )


def frame(payload: bytes, ethertype: int, dst: EthernetAddress = OUR_MAC) -> bytes:
    return EthernetRepr(dst, PEER_MAC, ethertype, payload).emit()


def ipv4(protocol: int, payload: bytes, src: IPv4Address = PEER_V4, **kwargs: Any) -> bytes:
    return Ipv4Repr(src, kwargs.pop("dst", OUR_V4), protocol, payload, **kwargs).emit()


def ipv6(
    protocol: int,
    payload: bytes,
    src: IPv6Address = PEER_V6,
    dst: IPv6Address = OUR_V6,
    hop_limit: int = 64,
) -> bytes:
    return Ipv6Repr(src, dst, protocol, payload, hop_limit=hop_limit).emit()


def udp4(payload: bytes, dst_port: int, src_port: int = 5000, **kwargs: Any) -> bytes:
    dst = kwargs.get("dst", OUR_V4)
    return ipv4(IpProtocol.UDP, UdpRepr(src_port, dst_port, payload).emit(PEER_V4, dst), **kwargs)


def tcp4(segment: TcpRepr) -> bytes:
    return ipv4(IpProtocol.TCP, segment.emit(PEER_V4, OUR_V4))


def frames(out: list[OutgoingPacket]) -> list[EthernetRepr]:
    return [EthernetRepr.parse(packet.data) for packet in out]


def learn_peer(iface: Interface) -> None:
    iface.neighbors.learn(PEER_V4, PEER_MAC, 0.0)
    iface.neighbors.learn(PEER_V6, PEER_MAC, 0.0)
    iface.neighbors.learn(PEER_LL, PEER_MAC, 0.0)


# ARP.


def test_an_interned_address_copied_or_unpickled_keeps_its_packed_bytes() -> None:
    # Received packets' addresses are interned with their hash and packed
    # bytes kept; copy and pickle rebuild one from its integer.
    interned = _ipv4_address(bytes([10, 0, 2, 2]))
    for again in (copy.copy(interned), pickle.loads(pickle.dumps(interned))):
        assert again.packed == bytes([10, 0, 2, 2])
        assert again == IPv4Address("10.0.2.2")
        assert hash(again) == hash(IPv4Address("10.0.2.2"))


def test_arp_request_for_us_is_answered_and_the_sender_learnt() -> None:
    iface = ethernet_interface()
    request = ArpRepr(ArpOperation.REQUEST, PEER_MAC, PEER_V4, EthernetAddress(bytes(6)), OUR_V4)
    iface.receive(frame(request.emit(), EtherType.ARP, BROADCAST), 0.0)
    [reply_frame] = frames(iface.transmit(0.0))
    assert reply_frame.dst_addr == PEER_MAC
    reply = ArpRepr.parse(reply_frame.payload)
    assert reply.operation == ArpOperation.REPLY
    assert (reply.sender_hardware_addr, reply.sender_protocol_addr) == (OUR_MAC, OUR_V4)
    assert iface.neighbors.lookup(PEER_V4, 1.0) == PEER_MAC


def test_arp_request_for_another_address_is_ignored() -> None:
    iface = ethernet_interface()
    request = ArpRepr(
        ArpOperation.REQUEST, PEER_MAC, PEER_V4, EthernetAddress(bytes(6)), IPv4Address("10.0.0.9")
    )
    iface.receive(frame(request.emit(), EtherType.ARP, BROADCAST), 0.0)
    assert iface.transmit(0.0) == []
    assert PEER_V4 not in iface.neighbors


def test_packets_wait_for_arp_and_leave_on_the_reply() -> None:
    iface = ethernet_interface()
    sock = iface.udp_bind(OUR_V4, 4000)
    sock.send_to(b"one", (PEER_V4, 53), 0.0)
    sock.send_to(b"two", (PEER_V4, 53), 0.0)
    [probe] = frames(iface.transmit(0.0))
    assert probe.dst_addr == BROADCAST
    assert probe.ethertype == EtherType.ARP
    assert ArpRepr.parse(probe.payload).target_protocol_addr == PEER_V4
    assert iface.deadline() == pytest.approx(1.0)
    reply = ArpRepr(ArpOperation.REPLY, PEER_MAC, PEER_V4, OUR_MAC, OUR_V4)
    iface.receive(frame(reply.emit(), EtherType.ARP), 0.1)
    sent = frames(iface.transmit(0.1))
    payloads = [
        UdpRepr.parse(Ipv4Repr.parse(f.payload).payload, OUR_V4, PEER_V4).payload for f in sent
    ]
    assert payloads == [b"one", b"two"]
    assert all(f.dst_addr == PEER_MAC for f in sent)
    assert iface.deadline() is None


def test_failed_resolution_is_host_unreachable_for_a_connected_socket() -> None:
    iface = ethernet_interface()
    sock = iface.udp_bind(OUR_V4, 4000)
    sock.connect((PEER_V4, 53))
    sock.send(b"x", 0.0)
    probes = len(iface.transmit(0.0))
    for now in (1.0, 2.0, 3.0):
        probes += len(iface.transmit(now))
    assert probes == 3
    assert sock in iface.take_changed()
    with pytest.raises(OSError) as caught:
        sock.receive()
    assert caught.value.errno == errno.EHOSTUNREACH
    assert iface.dropped["neighbor unreachable"] == 1


def test_gateway_is_resolved_for_off_link_destinations() -> None:
    iface = ethernet_interface(gateway4=IPv4Address("10.0.0.254"))
    sock = iface.udp_bind(IPv4Address("0.0.0.0"))
    sock.send_to(b"x", (IPv4Address("192.0.2.7"), 53), 0.0)
    [probe] = frames(iface.transmit(0.0))
    assert ArpRepr.parse(probe.payload).target_protocol_addr == IPv4Address("10.0.0.254")
    with pytest.raises(OSError) as caught:
        iface.udp_bind(IPv6Address("::")).send_to(b"x", (IPv6Address("2001:db9::1"), 53), 0.0)
    assert caught.value.errno == errno.ENETUNREACH


# ICMP.


def test_echo_request_is_answered() -> None:
    iface = ethernet_interface()
    learn_peer(iface)
    request = Icmpv4Repr.echo_request(7, 3, b"hello")
    iface.receive(frame(ipv4(IpProtocol.ICMP, request.emit()), EtherType.IPV4), 0.0)
    [reply_frame] = frames(iface.transmit(0.0))
    packet = Ipv4Repr.parse(reply_frame.payload)
    assert (packet.src_addr, packet.dst_addr) == (OUR_V4, PEER_V4)
    reply = Icmpv4Repr.parse(packet.payload)
    assert (reply.type, reply.ident, reply.seq_no, reply.payload) == (
        Icmpv4Type.ECHO_REPLY,
        7,
        3,
        b"hello",
    )


def test_echo_to_broadcast_is_ignored() -> None:
    iface = ethernet_interface()
    request = Icmpv4Repr.echo_request(7, 3).emit()
    packet = ipv4(IpProtocol.ICMP, request, dst=IPv4Address("10.0.0.255"))
    iface.receive(frame(packet, EtherType.IPV4, BROADCAST), 0.0)
    assert iface.transmit(0.0) == []
    assert iface.dropped["icmp echo to broadcast"] == 1


def test_echo_v6_over_ip_medium() -> None:
    iface = ip_interface()
    request = Icmpv6Repr.echo_request(1, 2, b"six").emit(PEER_V6, OUR_V6)
    iface.receive(ipv6(IpProtocol.ICMPV6, request), 0.0)
    [out] = iface.transmit(0.0)
    packet = Ipv6Repr.parse(out.data)
    reply = Icmpv6Repr.parse(packet.payload, OUR_V6, PEER_V6)
    assert (reply.type, reply.payload) == (Icmpv6Type.ECHO_REPLY, b"six")


def test_port_unreachable_is_sent_and_rate_limited() -> None:
    iface = ip_interface()
    for _ in range(60):
        iface.receive(udp4(b"x", 9999), 0.0)
    out = iface.transmit(0.0)
    assert len(out) == 50
    error = Icmpv4Repr.parse(Ipv4Repr.parse(out[0].data).payload)
    assert (error.type, error.code) == (Icmpv4Type.DEST_UNREACHABLE, 3)
    assert iface.dropped["icmp rate limited"] == 10
    iface.receive(udp4(b"x", 9999), 1.0)
    assert len(iface.transmit(1.0)) == 1


def test_icmp_port_unreachable_refuses_a_connected_udp_socket() -> None:
    iface = ip_interface()
    sock = iface.udp_bind(OUR_V4, 4000)
    sock.connect((PEER_V4, 53))
    sock.send(b"query", 0.0)
    [sent] = iface.transmit(0.0)
    error = Icmpv4Repr.dest_unreachable(3, sent.data)
    iface.receive(ipv4(IpProtocol.ICMP, error.emit()), 0.1)
    assert iface.take_changed() == {sock}
    with pytest.raises(ConnectionRefusedError):
        sock.send(b"again", 0.2)
    sock.send(b"again", 0.2)  # the error is reported once


def test_icmp_errors_reach_tcp_connections_with_the_mtu() -> None:
    iface = ip_interface()
    connection = iface.tcp_connect((PEER_V4, 80), now=0.0)
    [syn] = iface.transmit(0.0)
    too_big = Icmpv4Repr.dest_unreachable(4, syn.data, mtu=1400)
    iface.receive(ipv4(IpProtocol.ICMP, too_big.emit()), 0.1)
    unreachable = Icmpv4Repr.dest_unreachable(13, syn.data)
    iface.receive(ipv4(IpProtocol.ICMP, unreachable.emit()), 0.1)
    assert connection.errors == [(errno.EMSGSIZE, 1400), (errno.EHOSTUNREACH, None)]  # type: ignore[attr-defined]
    v6 = iface.tcp_connect((PEER_V6, 80), now=0.0)
    [syn6] = iface.transmit(0.0)
    refused = Icmpv6Repr.dest_unreachable(4, syn6.data).emit(PEER_V6, OUR_V6)
    iface.receive(ipv6(IpProtocol.ICMPV6, refused), 0.2)
    ptb = Icmpv6Repr.packet_too_big(1280, syn6.data).emit(PEER_V6, OUR_V6)
    iface.receive(ipv6(IpProtocol.ICMPV6, ptb), 0.2)
    assert v6.errors == [(errno.ECONNREFUSED, None), (errno.EMSGSIZE, 1280)]  # type: ignore[attr-defined]


# IPv6 neighbour discovery.


def test_neighbor_solicitation_for_us_is_answered() -> None:
    iface = ethernet_interface()
    solicited_node = IPv6Address("ff02::1:ff00:1")
    solicit = NeighborSolicit(OUR_V6, PEER_MAC).to_icmp().emit(PEER_V6, solicited_node)
    packet = ipv6(IpProtocol.ICMPV6, solicit, dst=solicited_node, hop_limit=255)
    iface.receive(
        frame(packet, EtherType.IPV6, EthernetAddress.from_text("33:33:ff:00:00:01")), 0.0
    )
    [answer] = frames(iface.transmit(0.0))
    assert answer.dst_addr == PEER_MAC
    ip = Ipv6Repr.parse(answer.payload)
    assert ip.hop_limit == 255
    assert ip.dst_addr == PEER_V6
    advert = NeighborAdvert.from_icmp(Icmpv6Repr.parse(ip.payload, ip.src_addr, ip.dst_addr))
    assert (advert.target, advert.target_lladdr, advert.solicited) == (OUR_V6, OUR_MAC, True)
    assert iface.neighbors.lookup(PEER_V6, 0.0) == PEER_MAC


def test_neighbor_solicitation_with_a_low_hop_limit_is_dropped() -> None:
    iface = ethernet_interface()
    solicit = NeighborSolicit(OUR_V6, PEER_MAC).to_icmp().emit(PEER_V6, OUR_V6)
    iface.receive(frame(ipv6(IpProtocol.ICMPV6, solicit, hop_limit=64), EtherType.IPV6), 0.0)
    assert iface.transmit(0.0) == []
    assert iface.dropped["ndp hop limit not 255"] == 1


def test_link_local_address_comes_from_the_mac_and_v6_resolution_works() -> None:
    iface = ethernet_interface()
    assert IPv6Address("fe80::ff:fe00:1") in iface.addresses_of(6)
    sock = iface.udp_bind(IPv6Address("::"), 4000)
    sock.send_to(b"x", (PEER_V6, 53), 0.0)
    [probe] = frames(iface.transmit(0.0))
    assert probe.dst_addr == EthernetAddress.from_text("33:33:ff:00:00:02")
    ip = Ipv6Repr.parse(probe.payload)
    assert ip.dst_addr == IPv6Address("ff02::1:ff00:2")
    assert ip.hop_limit == 255
    advert = NeighborAdvert(PEER_V6, PEER_MAC, solicited=True).to_icmp().emit(PEER_V6, OUR_V6)
    iface.receive(frame(ipv6(IpProtocol.ICMPV6, advert, hop_limit=255), EtherType.IPV6), 0.1)
    [datagram] = frames(iface.transmit(0.1))
    assert datagram.dst_addr == PEER_MAC


def test_router_advertisement_gives_an_address_and_a_default_router() -> None:
    iface = ethernet_interface(slaac=True)
    [solicitation] = frames(iface.transmit(0.0))
    assert Ipv6Repr.parse(solicitation.payload).dst_addr == IPv6Address("ff02::2")
    advert = RouterAdvert(
        router_lifetime=1800,
        source_lladdr=PEER_MAC,
        prefixes=(PrefixInformation(IPv6Network("2001:db8:5::/64")),),
    )
    packet = ipv6(
        IpProtocol.ICMPV6,
        advert.to_icmp().emit(PEER_LL, IPv6Address("ff02::1")),
        src=PEER_LL,
        dst=IPv6Address("ff02::1"),
        hop_limit=255,
    )
    iface.receive(
        frame(packet, EtherType.IPV6, EthernetAddress.from_text("33:33:00:00:00:01")), 0.5
    )
    assert IPv6Address("2001:db8:5::ff:fe00:1") in iface.addresses_of(6)
    assert iface.router6 == PEER_LL
    assert iface.deadline() is None  # no more solicitations
    sock = iface.udp_bind(IPv6Address("::"), 0)
    sock.send_to(b"x", (IPv6Address("2606:4700::1"), 53), 1.0)
    [out] = frames(iface.transmit(1.0))
    assert out.dst_addr == PEER_MAC  # learnt from the advertisement
    source = Ipv6Repr.parse(out.payload).src_addr
    assert source in iface.addresses_of(6)
    assert not source.is_link_local


# UDP.


def test_udp_delivery_wildcard_and_queue_bound() -> None:
    iface = ip_interface()
    sock = iface.udp_bind(IPv4Address("0.0.0.0"), 53)
    sock.max_queued = 2
    for payload in (b"a", b"b", b"c"):
        iface.receive(udp4(payload, 53), 0.0)
    assert iface.take_changed() == {sock}
    assert sock.receive() == (b"a", (PEER_V4, 5000))
    assert sock.receive() == (b"b", (PEER_V4, 5000))
    assert sock.receive() is None
    assert iface.dropped["udp receive queue full"] == 1


def test_udp_broadcast_reaches_the_wildcard_socket_and_gets_no_icmp() -> None:
    iface = ip_interface()
    broadcast = IPv4Address("255.255.255.255")
    iface.receive(udp4(b"nobody", 67, dst=broadcast), 0.0)
    assert iface.transmit(0.0) == []
    sock = iface.udp_bind(IPv4Address("0.0.0.0"), 68)
    iface.receive(udp4(b"offer", 68, dst=broadcast), 0.0)
    assert sock.receive() == (b"offer", (PEER_V4, 5000))


def test_udp_bind_conflicts_as_linux() -> None:
    iface = ip_interface()
    iface.udp_bind(OUR_V4, 53)
    with pytest.raises(OSError) as caught:
        iface.udp_bind(IPv4Address("0.0.0.0"), 53)
    assert caught.value.errno == errno.EADDRINUSE
    iface.udp_bind(IPv6Address("::"), 53)  # the other family is free
    with pytest.raises(OSError) as caught:
        iface.udp_bind(IPv4Address("10.9.9.9"), 1)
    assert caught.value.errno == errno.EADDRNOTAVAIL
    ephemeral = iface.udp_bind(OUR_V4)
    assert 32768 <= ephemeral.local[1] < 61000
    ephemeral.close()
    iface.udp_bind(OUR_V4, ephemeral.local[1])


def test_udp_too_big_for_the_mtu_is_emsgsize() -> None:
    iface = ip_interface()
    sock = iface.udp_bind(OUR_V4)
    sock.send_to(b"x" * 1472, (PEER_V4, 9), 0.0)
    with pytest.raises(OSError) as caught:
        sock.send_to(b"x" * 1473, (PEER_V4, 9), 0.0)
    assert caught.value.errno == errno.EMSGSIZE


def test_udp_bad_checksum_is_counted_unless_verified_by_the_link() -> None:
    iface = ip_interface()
    sock = iface.udp_bind(OUR_V4, 53)
    datagram = bytearray(UdpRepr(5000, 53, b"data").emit(PEER_V4, OUR_V4))
    datagram[6] ^= 0xFF
    iface.receive(ipv4(IpProtocol.UDP, bytes(datagram)), 0.0)
    assert iface.dropped["udp bad checksum"] == 1
    iface.receive(ipv4(IpProtocol.UDP, bytes(datagram)), 0.0, checksum_verified=True)
    assert sock.receive() == (b"data", (PEER_V4, 5000))


# Fragments.


def fragments_of(payload: bytes, size: int, ident: int = 77) -> list[bytes]:
    pieces = []
    for start in range(0, len(payload), size):
        pieces.append(
            Ipv4Repr(
                PEER_V4,
                OUR_V4,
                IpProtocol.UDP,
                payload[start : start + size],
                identification=ident,
                dont_fragment=False,
                more_fragments=start + size < len(payload),
                fragment_offset=start,
            ).emit()
        )
    return pieces


def test_fragmented_dns_answer_is_reassembled_in_any_order() -> None:
    iface = ip_interface()
    sock = iface.udp_bind(OUR_V4, 5353)
    answer = bytes(range(256)) * 12
    datagram = UdpRepr(53, 5353, answer).emit(PEER_V4, OUR_V4)
    pieces = fragments_of(datagram, 1480)
    for piece in reversed(pieces):
        iface.receive(piece, 0.0)
    assert sock.receive() == (answer, (PEER_V4, 53))
    assert len(iface.reassembler) == 0
    assert iface.reassembler.bytes_held == 0


def test_overlapping_fragments_drop_the_datagram() -> None:
    iface = ip_interface()
    sock = iface.udp_bind(OUR_V4, 5353)
    datagram = UdpRepr(53, 5353, b"z" * 3000).emit(PEER_V4, OUR_V4)
    pieces = fragments_of(datagram, 1480)
    iface.receive(pieces[0], 0.0)
    overlap = Ipv4Repr(
        PEER_V4, OUR_V4, IpProtocol.UDP, b"q" * 16, identification=77,
        dont_fragment=False, more_fragments=True, fragment_offset=1472,
    ).emit()  # fmt: skip
    iface.receive(overlap, 0.0)
    for piece in pieces[1:]:
        iface.receive(piece, 0.0)
    assert sock.receive() is None
    assert iface.dropped["fragment overlap"] == 1


def test_incomplete_fragments_time_out_and_memory_is_bounded() -> None:
    iface = ip_interface()
    for ident in range(200):
        iface.receive(fragments_of(b"y" * 3000, 1480, ident)[0], 0.0)
    assert len(iface.reassembler) <= 64
    assert iface.reassembler.bytes_held <= 256 * 1024
    assert iface.dropped["reassembly buffer full"] == 136
    assert iface.deadline() == pytest.approx(30.0)
    iface.transmit(30.0)
    assert len(iface.reassembler) == 0
    assert iface.dropped["reassembly timeout"] == 64


# TCP demultiplexing.


def test_syn_to_a_closed_port_gets_a_reset() -> None:
    iface = ip_interface()
    iface.receive(tcp4(TcpRepr(40000, 81, 500, 0, TcpFlags.SYN, 1000)), 0.0)
    [out] = iface.transmit(0.0)
    rst = TcpRepr.parse(Ipv4Repr.parse(out.data).payload, OUR_V4, PEER_V4)
    assert rst.flags & TcpFlags.RST
    assert rst.ack == 501
    assert (rst.src_port, rst.dst_port) == (81, 40000)
    iface.receive(tcp4(TcpRepr(40000, 81, 500, 0, TcpFlags.RST, 0)), 0.0)
    assert iface.transmit(0.0) == []


def test_listener_accepts_after_the_handshake_and_bounds_half_open() -> None:
    iface = ip_interface()
    listener = iface.tcp_listen(IPv4Address("0.0.0.0"), 80, backlog=2)
    for port in range(40000, 40010):
        iface.receive(tcp4(TcpRepr(port, 80, 500, 0, TcpFlags.SYN, 1000)), 0.0)
    assert len(iface.transmit(0.0)) == 4  # syn backlog: twice the listen backlog
    assert iface.dropped["tcp syn backlog full"] == 6
    assert listener.accept() is None
    iface.receive(tcp4(TcpRepr(40000, 80, 501, 1001, TcpFlags.ACK, 1000)), 0.1)
    assert listener in iface.take_changed()
    connection = listener.accept()
    assert connection is not None
    assert connection.remote == (PEER_V4, 40000)
    assert connection.local == (OUR_V4, 80)
    iface.receive(tcp4(TcpRepr(40000, 80, 501, 1001, TcpFlags.ACK, 1000, payload=b"x")), 0.2)
    assert connection.received[-1].payload == b"x"  # type: ignore[attr-defined]
    listener.close()
    assert all(c.aborted for c in iface.connections() if c is not connection)  # type: ignore[attr-defined]


def test_listen_conflicts() -> None:
    iface = ip_interface()
    iface.tcp_listen(OUR_V4, 80)
    with pytest.raises(OSError) as caught:
        iface.tcp_listen(IPv4Address("0.0.0.0"), 80)
    assert caught.value.errno == errno.EADDRINUSE
    iface.tcp_listen(IPv6Address("::"), 80)


def test_connect_picks_an_ephemeral_port_and_sends_its_syn() -> None:
    iface = ip_interface()
    connection = iface.tcp_connect((PEER_V4, 80), now=0.0)
    assert connection.local[0] == OUR_V4
    assert 32768 <= connection.local[1] < 61000
    [out] = iface.transmit(0.0)
    syn = TcpRepr.parse(Ipv4Repr.parse(out.data).payload, OUR_V4, PEER_V4)
    assert syn.flags == TcpFlags.SYN
    assert syn.seq == 1000
    with pytest.raises(OSError) as caught:
        iface.tcp_connect((PEER_V4, 80), local=connection.local, now=0.0)
    assert caught.value.errno == errno.EADDRINUSE


def big_segment(connection: Any, size: int) -> TcpRepr:
    return TcpRepr(
        connection.local[1],
        connection.remote[1],
        0xFFFFFF00,
        1,
        TcpFlags.ACK | TcpFlags.PSH | TcpFlags.FIN,
        1000,
        payload=bytes(size),
    )


def test_big_segments_are_cut_to_the_mtu_without_tso() -> None:
    iface = ip_interface()
    connection = iface.tcp_connect((PEER_V4, 80), now=0.0)
    iface.transmit(0.0)
    connection.outbox.append(big_segment(connection, 4000))  # type: ignore[attr-defined]
    out = iface.transmit(0.1)
    segments = [TcpRepr.parse(Ipv4Repr.parse(p.data).payload, OUR_V4, PEER_V4) for p in out]
    assert [len(s.payload) for s in segments] == [1460, 1460, 1080]
    assert [s.seq for s in segments] == [0xFFFFFF00, (0xFFFFFF00 + 1460) & 0xFFFFFFFF, 2664]
    assert [bool(s.flags & TcpFlags.FIN) for s in segments] == [False, False, True]
    assert all(p.gso is None for p in out)


def test_big_segments_leave_as_one_gso_packet_with_tso() -> None:
    iface = ip_interface(tso=True)
    connection = iface.tcp_connect((PEER_V6, 80), now=0.0)
    iface.transmit(0.0)
    connection.outbox.append(big_segment(connection, 60000))  # type: ignore[attr-defined]
    [out] = iface.transmit(0.1)
    assert out.gso is not None
    assert out.gso.gso_type is GsoType.TCPV6
    assert out.gso.gso_size == 1440
    assert out.gso.header_len == 60
    assert out.gso.csum_start == 40
    packet = Ipv6Repr.parse(out.data)
    segment = TcpRepr.parse(packet.payload, OUR_V6, PEER_V6, verify_checksum=False)
    assert len(segment.payload) == 60000


# Garbage.


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([0x0800, 0x0806, 0x86DD, 0x1234]))
def test_garbage_frames_never_raise(payload: bytes, ethertype: int) -> None:
    iface = ethernet_interface()
    iface.tcp_listen(IPv4Address("0.0.0.0"), 80)
    iface.udp_bind(IPv4Address("0.0.0.0"), 53)
    iface.receive(frame(payload, ethertype), 0.0)
    iface.receive(payload, 0.0)
    iface.transmit(0.0)
    assert "internal error" not in iface.dropped


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([IpProtocol.TCP, IpProtocol.UDP, IpProtocol.ICMP, 99]),
    st.binary(max_size=120),
    st.booleans(),
    st.booleans(),
)
def test_garbage_ip_payloads_never_raise_and_are_counted(
    protocol: int, payload: bytes, verified: bool, fragment: bool
) -> None:
    iface = ip_interface()
    iface.tcp_listen(IPv4Address("0.0.0.0"), 80)
    packet = Ipv4Repr(
        PEER_V4, OUR_V4, protocol, payload, dont_fragment=not fragment, more_fragments=fragment
    )
    iface.receive(packet.emit(), 0.0, checksum_verified=verified)
    six = Ipv6Repr(PEER_V6, OUR_V6, 58 if protocol == IpProtocol.ICMP else protocol, payload)
    iface.receive(six.emit(), 0.0, checksum_verified=verified)
    iface.transmit(0.0)
    assert "internal error" not in iface.dropped


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120))
def test_random_ip_packets_are_counted_when_dropped(data: bytes) -> None:
    iface = ip_interface()
    iface.receive(data, 0.0)
    assert sum(iface.dropped.values()) >= 1 or iface.transmit(0.0)
    assert "internal error" not in iface.dropped


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([133, 134, 135, 136, 137, 1, 2, 3, 4, 128]),
    st.integers(0, 3),
    st.integers(0, 0xFFFFFFFF),
    st.binary(max_size=100),
    st.sampled_from([OUR_V6, IPv6Address("ff02::1"), IPv6Address("fe80::ff:fe00:1")]),
)
def test_checksummed_icmpv6_and_ndp_garbage_never_raises(
    kind: int, code: int, rest: int, body: bytes, dst: IPv6Address
) -> None:
    iface = ethernet_interface(slaac=True)
    src = PEER_LL if kind in (133, 134) else PEER_V6
    message = Icmpv6Repr(kind, code, rest, body).emit(src, dst)
    packet = ipv6(IpProtocol.ICMPV6, message, src=src, dst=dst, hop_limit=255)
    iface.receive(frame(packet, EtherType.IPV6), 0.0)
    iface.transmit(0.0)
    assert "internal error" not in iface.dropped


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 255), st.integers(0, 20), st.binary(max_size=80), st.booleans())
def test_checksummed_icmpv4_errors_quoting_garbage_never_raise(
    kind: int, code: int, quoted: bytes, with_header: bool
) -> None:
    iface = ip_interface()
    connection = iface.tcp_connect((PEER_V4, 80), now=0.0)
    [syn] = iface.transmit(0.0)
    if with_header:
        quoted = syn.data[:20] + quoted
    iface.receive(ipv4(IpProtocol.ICMP, Icmpv4Repr(kind, code, 0, quoted).emit()), 0.0)
    iface.transmit(0.0)
    assert connection in iface.connections() or connection.finished
    assert "internal error" not in iface.dropped


def test_an_unconfigured_interface_broadcasts_from_0_0_0_0_for_dhcp() -> None:
    iface = Interface(Medium.ETHERNET, mac=OUR_MAC, slaac=False, tcp=FakeTcp())
    sock = iface.udp_bind(IPv4Address("0.0.0.0"), 68)
    sock.send_to(b"discover", (IPv4Address("255.255.255.255"), 67), 0.0)
    [out] = frames(iface.transmit(0.0))
    assert out.dst_addr == BROADCAST
    packet = Ipv4Repr.parse(out.payload)
    assert packet.src_addr == IPv4Address("0.0.0.0")
    offer = Ipv4Repr(
        IPv4Address("10.0.0.254"),
        IPv4Address("255.255.255.255"),
        IpProtocol.UDP,
        UdpRepr(67, 68, b"offer").emit(IPv4Address("10.0.0.254"), IPv4Address("255.255.255.255")),
    ).emit()
    iface.receive(frame(offer, EtherType.IPV4, BROADCAST), 0.1)
    assert sock.receive() == (b"offer", (IPv4Address("10.0.0.254"), 67))
    iface.add_address(IPv4Interface("10.0.0.7/24"))
    assert iface.addresses_of(4) == [IPv4Address("10.0.0.7")]


# The real TCP core behind the interface.


def test_real_tcp_handshake_advertises_the_mss_the_mtu_allows() -> None:
    iface = Interface(
        Medium.IP,
        addresses=[IPv4Interface("10.0.0.1/24"), IPv6Interface("2001:db8::1/64")],
        mtu=1400,
        rng=random.Random(2),
    )
    iface.tcp_listen(IPv4Address("0.0.0.0"), 80)
    iface.receive(tcp4(TcpRepr(40000, 80, 500, 0, TcpFlags.SYN, 1000)), 0.0)
    [out] = iface.transmit(0.0)
    syn_ack = TcpRepr.parse(Ipv4Repr.parse(out.data).payload, OUR_V4, PEER_V4)
    assert syn_ack.flags == TcpFlags.SYN | TcpFlags.ACK
    assert syn_ack.ack == 501
    mss = syn_ack.find_option(MaxSegmentSize)
    assert mss is not None
    assert mss.mss == 1360
    connection = iface.tcp_connect((PEER_V6, 80), now=0.0)
    assert connection.config.mss == 1340
    [out] = iface.transmit(0.0)
    unreachable = Icmpv6Repr.dest_unreachable(3, out.data).emit(PEER_V6, OUR_V6)
    iface.receive(ipv6(IpProtocol.ICMPV6, unreachable), 0.1)
    assert connection.error is not None
    assert connection.error.errno == errno.EHOSTUNREACH
    iface.transmit(0.1)
    assert connection not in iface.connections()
    assert connection in iface.take_changed()


def test_real_tcp_gets_tso_payloads_when_the_link_segments() -> None:
    iface = Interface(Medium.IP, addresses=[IPv4Interface("10.0.0.1/24")], tso=True)
    connection = iface.tcp_connect((PEER_V4, 80), now=0.0)
    assert connection.config.max_segment_payload == 65435


def test_connections_follow_changes_of_mtu_tso_and_tcp_config() -> None:
    iface = Interface(
        Medium.IP,
        addresses=[IPv4Interface("10.0.0.1/24"), IPv6Interface("2001:db8::1/64")],
        mtu=1400,
        rng=random.Random(3),
    )
    first = iface.tcp_connect((PEER_V4, 80), now=0.0)
    assert first.config.mss == 1360
    assert iface.tcp_connect((PEER_V6, 80), now=0.0).config.mss == 1340
    iface.mtu = 1300
    assert iface.tcp_connect((PEER_V4, 81), now=0.0).config.mss == 1260
    iface.tcp_config = dataclasses.replace(iface.tcp_config, mss=1000)
    changed = iface.tcp_connect((PEER_V4, 82), now=0.0).config
    assert changed.mss == 1000
    assert changed.max_segment_payload is None
    iface.tso = True
    assert iface.tcp_connect((PEER_V4, 83), now=0.0).config.max_segment_payload == 65435
    assert first.config.mss == 1360


def test_a_reply_over_the_mtu_is_dropped_not_fragmented() -> None:
    iface = ip_interface()
    request = Icmpv4Repr.echo_request(1, 1, bytes(3000)).emit()
    for piece in fragments_of_icmp(request):
        iface.receive(piece, 0.0)
    assert iface.transmit(0.0) == []
    assert iface.dropped["packet over mtu"] == 1


def fragments_of_icmp(message: bytes) -> list[bytes]:
    return [
        Ipv4Repr(
            PEER_V4,
            OUR_V4,
            IpProtocol.ICMP,
            message[start : start + 1480],
            identification=5,
            dont_fragment=False,
            more_fragments=start + 1480 < len(message),
            fragment_offset=start,
        ).emit()
        for start in range(0, len(message), 1480)
    ]


def shuttle(a: Interface, b: Interface, now: float) -> None:
    """Move packets between two IP interfaces until both are quiet."""
    for _ in range(200):
        from_a, from_b = a.transmit(now), b.transmit(now)
        if not from_a and not from_b:
            return
        for packet in from_a:
            b.receive(packet.data, now)
        for packet in from_b:
            a.receive(packet.data, now)


def connected_pair() -> tuple[Interface, Interface, Any, Any]:
    server = ip_interface(tcp=None)
    client = Interface(Medium.IP, addresses=[IPv4Interface("10.0.0.2/24")], rng=random.Random(3))
    listener = server.tcp_listen(OUR_V4, 80)
    connection = client.tcp_connect((OUR_V4, 80), now=0.0)
    shuttle(server, client, 0.0)
    accepted = listener.accept()
    assert accepted is not None
    return server, client, connection, accepted


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([80, 81, 40000]),
            st.sampled_from(["same", "other port", "other host"]),
            st.integers(0, 0xFFFFFFFF),
            st.integers(0, 0xFFFFFFFF),
            st.integers(0, 0x1FF),
            st.binary(max_size=40),
        ),
        max_size=8,
    )
)
def test_segments_from_elsewhere_never_disturb_an_established_connection(
    segments: list[tuple[int, str, int, int, int, bytes]],
) -> None:
    server, client, connection, accepted = connected_pair()
    for dst_port, origin, seq, ack, flags, payload in segments:
        src = IPv4Address("10.0.0.9") if origin == "other host" else PEER_V4
        src_port = connection.local[1] + (1 if origin == "other port" else 0)
        if origin == "same" and dst_port == 80:
            continue  # the connection's own four-tuple: its own rules apply
        segment = TcpRepr(src_port, dst_port, seq, ack, TcpFlags(flags), 1000, payload=payload)
        server.receive(ipv4(IpProtocol.TCP, segment.emit(src, OUR_V4), src=src), 1.0)
    server.transmit(1.0)
    connection.send(b"still here")
    shuttle(server, client, 2.0)
    assert accepted.receive(100) == b"still here"
    assert "internal error" not in server.dropped


def test_routes_follow_address_and_route_changes() -> None:
    iface = ip_interface(tcp=None)
    sock = iface.udp_bind(IPv4Address("0.0.0.0"))
    far = (IPv4Address("192.0.2.1"), 9)
    sock.send_to(b"x", far, 0.0)  # a TUN is point to point: the one peer gets it
    iface.remove_address(IPv4Interface("10.0.0.1/24"))
    with pytest.raises(OSError) as caught:
        sock.send_to(b"x", far, 0.0)
    assert caught.value.errno == errno.ENETUNREACH
    iface.add_address(IPv4Interface("192.0.2.5/24"))
    sock.send_to(b"x", far, 0.0)
    [_, out] = iface.transmit(0.0)
    assert Ipv4Repr.parse(out.data).src_addr == IPv4Address("192.0.2.5")
    iface.add_route(IPv4Network("198.51.100.0/24"), IPv4Address("192.0.2.254"))
    iface.remove_route(IPv4Network("198.51.100.0/24"))
    assert iface.routes == ()


def ipv6_fragments(
    payload: bytes, size: int, ident: int = 99, next_header: int = 17
) -> list[bytes]:
    pieces = []
    for start in range(0, len(payload), size):
        more = start + size < len(payload)
        header = bytes((next_header, 0)) + (start | more).to_bytes(2, "big")
        header += ident.to_bytes(4, "big")
        chunk = header + payload[start : start + size]
        pieces.append(ipv6(IpProtocol.IPV6_FRAGMENT, chunk))
    return pieces


def test_ipv6_fragments_are_reassembled_and_atomic_fragments_pass() -> None:
    iface = ip_interface()
    sock = iface.udp_bind(OUR_V6, 5353)
    answer = bytes(range(256)) * 12
    datagram = UdpRepr(53, 5353, answer).emit(PEER_V6, OUR_V6)
    pieces = ipv6_fragments(datagram, 1448)
    for piece in (pieces[1], pieces[0], pieces[2]):
        iface.receive(piece, 0.0)
    assert sock.receive() == (answer, (PEER_V6, 53))
    [atomic] = ipv6_fragments(UdpRepr(53, 5353, b"small").emit(PEER_V6, OUR_V6), 1448)
    iface.receive(atomic, 0.0)
    assert sock.receive() == (b"small", (PEER_V6, 53))
    assert len(iface.reassembler) == 0


def test_fragmented_neighbour_discovery_is_ignored() -> None:
    iface = ethernet_interface()
    solicit = NeighborSolicit(OUR_V6, PEER_MAC).to_icmp().emit(PEER_V6, OUR_V6)
    header = bytes((IpProtocol.ICMPV6, 0, 0, 0)) + (7).to_bytes(4, "big")
    packet = Ipv6Repr(PEER_V6, OUR_V6, IpProtocol.IPV6_FRAGMENT, header + solicit, hop_limit=255)
    iface.receive(frame(packet.emit(), EtherType.IPV6), 0.0)
    assert iface.transmit(0.0) == []
    assert iface.dropped["ndp in fragments"] == 1
