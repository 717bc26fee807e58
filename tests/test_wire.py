"""The wire layer against real packets, truncations, corruptions and random values.

The literal frames were captured with tshark on a Linux loopback interface.
Loopback leaves TCP and UDP checksums to offload, so the captured checksum
fields hold only the pseudo-header sum; each was replaced by the value tshark
4.0 computed for it ("Calculated Checksum"), and tshark then reported every
checksum in these frames as good.  The expected field values are tshark's
decoding of the same bytes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netshim.protocols.ip import (
    EndOfOptionList,
    EthernetAddress,
    EthernetRepr,
    EtherType,
    IpProtocol,
    Ipv4Repr,
    Ipv6Repr,
    MaxSegmentSize,
    NoOperation,
    SackBlocks,
    SackPermitted,
    TcpFlags,
    TcpOption,
    TcpRepr,
    Timestamps,
    UdpRepr,
    UnknownOption,
    WindowScale,
    WireError,
    internet_checksum,
    ones_complement_sum,
    pseudo_header_sum,
)

LOCALHOST_V4 = IPv4Address("127.0.0.1")
LOCALHOST_V6 = IPv6Address("::1")

# 127.0.0.1:41586 -> 127.0.0.1:45678 SYN, Linux's options: MSS 65495,
# SACK permitted, timestamps, NOP, window scale 10.
IPV4_TCP_SYN = bytes.fromhex(
    "000000000000000000000000080045000"
    "03c39d04000400602ea7f0000017f000001a272b26e2f5646d100000000a002ffd77ddd0000"
    "0204ffd70402080a96027116000000000103030a"
)
# The client's first data segment on that connection: "hello\n", PSH|ACK.
IPV4_TCP_DATA = bytes.fromhex(
    "00000000000000000000000008004500003a39d24000400602ea7f0000017f000001a272b26e"
    "2f5646d29f2f344680180040090500000101080a9602711767ef1e0368656c6c6f0a"
)
# The server's FIN|ACK on it.
IPV4_TCP_FIN = bytes.fromhex(
    "0000000000000000000000000800450000340a7640004006324c7f0000017f000001b26ea272"
    "9f2f344c2f5646d9801100404ce000000101080a67ef1e0496027117"
)
# [::1]:51524 -> [::1]:45678 SYN: MSS 65476, SACK permitted, timestamps, NOP, WS 10.
IPV6_TCP_SYN = bytes.fromhex(
    "00000000000000000000000086dd6005dca600280640000000000000000000000000000000"
    "0100000000000000000000000000000001c944b26edaec2fce00000000a002ffc41ab10000"
    "0204ffc40402080a51755b91000000000103030a"
)
# 127.0.0.1:5353 -> 127.0.0.1:45680, payload "netshim".
IPV4_UDP = bytes.fromhex(
    "00000000000000000000000008004500002348d140004011f3f67f0000017f00000114e9b270"
    "000f82316e65747368696d"
)
# [::1]:33673 -> [::1]:45679, payload "ping"; flow label 0x4fcac.
IPV6_UDP = bytes.fromhex(
    "00000000000000000000000086dd6004fcac000c11400000000000000000000000000000000"
    "1000000000000000000000000000000018389b26f000ceb0a70696e67"
)

VECTORS = {
    "ipv4-tcp-syn": IPV4_TCP_SYN,
    "ipv4-tcp-data": IPV4_TCP_DATA,
    "ipv4-tcp-fin": IPV4_TCP_FIN,
    "ipv6-tcp-syn": IPV6_TCP_SYN,
    "ipv4-udp": IPV4_UDP,
    "ipv6-udp": IPV6_UDP,
}

Transport = TcpRepr | UdpRepr


def parse_frame(
    frame: bytes, *, verify_checksum: bool = True
) -> tuple[EthernetRepr, Ipv4Repr | Ipv6Repr, Transport]:
    """Every layer of an Ethernet frame carrying TCP or UDP."""
    ethernet = EthernetRepr.parse(frame)
    ip: Ipv4Repr | Ipv6Repr
    if ethernet.ethertype == EtherType.IPV4:
        ip = Ipv4Repr.parse(ethernet.payload, verify_checksum=verify_checksum)
        protocol = ip.protocol
    else:
        ip = Ipv6Repr.parse(ethernet.payload)
        protocol = ip.next_header
    transport: Transport
    if protocol == IpProtocol.TCP:
        transport = TcpRepr.parse(
            ip.payload, ip.src_addr, ip.dst_addr, verify_checksum=verify_checksum
        )
    elif protocol == IpProtocol.UDP:
        transport = UdpRepr.parse(
            ip.payload, ip.src_addr, ip.dst_addr, verify_checksum=verify_checksum
        )
    else:
        raise WireError(f"IP protocol {protocol} is neither TCP nor UDP")
    return ethernet, ip, transport


def emit_frame(ethernet: EthernetRepr, ip: Ipv4Repr | Ipv6Repr, transport: Transport) -> bytes:
    """The frame rebuilt from its values, each layer emitted from scratch."""
    segment = transport.emit(ip.src_addr, ip.dst_addr)
    packet: Ipv4Repr | Ipv6Repr
    if isinstance(ip, Ipv4Repr):
        packet = Ipv4Repr(
            ip.src_addr,
            ip.dst_addr,
            ip.protocol,
            segment,
            ttl=ip.ttl,
            identification=ip.identification,
            dont_fragment=ip.dont_fragment,
            more_fragments=ip.more_fragments,
            fragment_offset=ip.fragment_offset,
            dscp=ip.dscp,
            ecn=ip.ecn,
            options=ip.options,
        )
    else:
        packet = Ipv6Repr(
            ip.src_addr,
            ip.dst_addr,
            ip.next_header,
            segment,
            hop_limit=ip.hop_limit,
            traffic_class=ip.traffic_class,
            flow_label=ip.flow_label,
        )
    return EthernetRepr(
        ethernet.dst_addr, ethernet.src_addr, ethernet.ethertype, packet.emit()
    ).emit()


# -- checksum -------------------------------------------------------------------


def reference_sum(data: bytes) -> int:
    """End-around-carry addition word by word, as RFC 1071 section 4.1 describes it."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += data[i] << 8 | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def test_checksum_rfc1071_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_complement_sum(data) == 0xDDF2
    assert internet_checksum(data) == 0x220D


def test_checksum_of_real_ipv4_header() -> None:
    header = bytearray(IPV4_TCP_SYN[14:34])
    assert ones_complement_sum(header) == 0xFFFF
    header[10:12] = b"\x00\x00"
    assert internet_checksum(header) == 0x02EA


def test_checksum_odd_length_pads_with_zero() -> None:
    assert ones_complement_sum(b"\x12\x34\x56") == ones_complement_sum(b"\x12\x34\x56\x00")
    assert ones_complement_sum(b"\xab") == 0xAB00


def test_checksum_zeroes() -> None:
    assert ones_complement_sum(b"") == 0
    assert ones_complement_sum(bytes(10)) == 0
    # Nonzero words never sum to +0: end-around carry gives -0 (0xFFFF).
    assert ones_complement_sum(b"\xff\xff") == 0xFFFF
    assert ones_complement_sum(b"\x00\x01\xff\xfe") == 0xFFFF
    assert ones_complement_sum(bytes(4), start=0xFFFF) == 0xFFFF


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_checksum_matches_word_by_word_sum(first: bytes, second: bytes) -> None:
    assert ones_complement_sum(first) == reference_sum(first)
    if len(first) % 2 == 0:
        assert ones_complement_sum(second, ones_complement_sum(first)) == reference_sum(
            first + second
        )


def test_pseudo_header_needs_one_family() -> None:
    with pytest.raises(ValueError, match="same IP family"):
        pseudo_header_sum(LOCALHOST_V4, LOCALHOST_V6, IpProtocol.TCP, 20)
    with pytest.raises(ValueError, match="does not fit"):
        pseudo_header_sum(LOCALHOST_V4, LOCALHOST_V4, IpProtocol.TCP, 0x10000)
    assert pseudo_header_sum(LOCALHOST_V6, LOCALHOST_V6, IpProtocol.TCP, 0x10000) >= 0


# -- literal vectors ----------------------------------------------------------------


def test_ipv4_tcp_syn_fields() -> None:
    ethernet, ip, tcp = parse_frame(IPV4_TCP_SYN)
    assert ethernet == EthernetRepr(
        EthernetAddress(bytes(6)), EthernetAddress(bytes(6)), EtherType.IPV4, IPV4_TCP_SYN[14:]
    )
    assert ip == Ipv4Repr(
        src_addr=LOCALHOST_V4,
        dst_addr=LOCALHOST_V4,
        protocol=IpProtocol.TCP,
        payload=IPV4_TCP_SYN[34:],
        ttl=64,
        identification=0x39D0,
        dont_fragment=True,
    )
    assert tcp == TcpRepr(
        src_port=41586,
        dst_port=45678,
        seq=794183377,
        ack=0,
        flags=TcpFlags.SYN,
        window=65495,
        options=(
            MaxSegmentSize(65495),
            SackPermitted(),
            Timestamps(2516742422, 0),
            NoOperation(),
            WindowScale(10),
        ),
    )
    assert isinstance(tcp, TcpRepr)
    assert tcp.header_len() == 40
    assert tcp.segment_len() == 1
    assert tcp.find_option(MaxSegmentSize) == MaxSegmentSize(65495)
    assert tcp.find_option(SackBlocks) is None


def test_ipv4_tcp_data_fields() -> None:
    _, ip, tcp = parse_frame(IPV4_TCP_DATA)
    assert isinstance(ip, Ipv4Repr)
    assert isinstance(tcp, TcpRepr)
    assert ip.identification == 0x39D2
    assert tcp.flags == TcpFlags.PSH | TcpFlags.ACK
    assert (tcp.seq, tcp.ack, tcp.window) == (794183378, 2670670918, 64)
    assert tcp.options == (NoOperation(), NoOperation(), Timestamps(2516742423, 1743724035))
    assert tcp.payload == b"hello\n"
    assert tcp.segment_len() == 6


def test_ipv4_tcp_fin_fields() -> None:
    _, _, tcp = parse_frame(IPV4_TCP_FIN)
    assert isinstance(tcp, TcpRepr)
    assert (tcp.src_port, tcp.dst_port) == (45678, 41586)
    assert tcp.flags == TcpFlags.FIN | TcpFlags.ACK
    assert tcp.segment_len() == 1


def test_ipv6_tcp_syn_fields() -> None:
    ethernet, ip, tcp = parse_frame(IPV6_TCP_SYN)
    assert ethernet.ethertype == EtherType.IPV6
    assert ip == Ipv6Repr(
        src_addr=LOCALHOST_V6,
        dst_addr=LOCALHOST_V6,
        next_header=IpProtocol.TCP,
        payload=IPV6_TCP_SYN[54:],
        hop_limit=64,
        flow_label=0x5DCA6,
    )
    assert isinstance(tcp, TcpRepr)
    assert (tcp.src_port, tcp.dst_port, tcp.window) == (51524, 45678, 65476)
    assert tcp.options[0] == MaxSegmentSize(65476)
    assert tcp.find_option(WindowScale) == WindowScale(10)


def test_udp_fields() -> None:
    _, ip, udp = parse_frame(IPV4_UDP)
    assert ip.src_addr == LOCALHOST_V4
    assert udp == UdpRepr(5353, 45680, b"netshim")
    _, ip6, udp6 = parse_frame(IPV6_UDP)
    assert isinstance(ip6, Ipv6Repr)
    assert ip6.flow_label == 0x4FCAC
    assert udp6 == UdpRepr(33673, 45679, b"ping")


@pytest.mark.parametrize("frame", VECTORS.values(), ids=VECTORS.keys())
def test_vectors_emit_back_to_the_same_bytes(frame: bytes) -> None:
    ethernet, ip, transport = parse_frame(frame)
    assert ethernet.emit() == frame
    assert ip.emit() == ethernet.payload
    assert transport.emit(ip.src_addr, ip.dst_addr) == ip.payload
    assert emit_frame(ethernet, ip, transport) == frame
    assert ethernet.buffer_len() == len(frame)
    assert ip.buffer_len() == len(ethernet.payload)
    assert transport.buffer_len() == len(ip.payload)


@pytest.mark.parametrize("frame", VECTORS.values(), ids=VECTORS.keys())
def test_every_truncation_raises_wire_error(frame: bytes) -> None:
    for length in range(len(frame)):
        with pytest.raises(WireError):
            parse_frame(frame[:length])


@pytest.mark.parametrize("frame", VECTORS.values(), ids=VECTORS.keys())
def test_every_truncated_transport_raises_wire_error(frame: bytes) -> None:
    # TCP has no length of its own: a cut in the payload shows only in the checksum.
    _, ip, transport = parse_frame(frame)
    for length in range(len(ip.payload)):
        with pytest.raises(WireError):
            type(transport).parse(ip.payload[:length], ip.src_addr, ip.dst_addr)


def test_ethernet_padding_is_ignored_by_ip() -> None:
    padded = IPV4_UDP + bytes(60 - len(IPV4_UDP))
    ethernet, ip, udp = parse_frame(padded)
    assert ethernet.emit() == padded
    assert ip.emit() == IPV4_UDP[14:]
    assert udp == UdpRepr(5353, 45680, b"netshim")


# -- corruption ---------------------------------------------------------------------


@pytest.mark.parametrize("frame", VECTORS.values(), ids=VECTORS.keys())
def test_flipped_bit_in_a_checksummed_byte_is_rejected(frame: bytes) -> None:
    # Everything from the IP header on is covered by a checksum or a check,
    # except what IPv6 leaves unprotected: traffic class, flow label, hop limit.
    unchecked = set() if frame[12:14] == b"\x08\x00" else {15, 16, 17, 21}
    for offset in sorted(set(range(14, len(frame))) - unchecked):
        corrupt = bytearray(frame)
        corrupt[offset] ^= 0x10
        with pytest.raises(WireError):
            parse_frame(bytes(corrupt))


def test_bad_checksums_pass_without_verification() -> None:
    corrupt = bytearray(IPV4_TCP_DATA)
    corrupt[24] ^= 0xFF  # IPv4 header checksum
    corrupt[50] ^= 0xFF  # TCP checksum
    with pytest.raises(WireError, match="IPv4 header checksum"):
        parse_frame(bytes(corrupt))
    _, ip, tcp = parse_frame(bytes(corrupt), verify_checksum=False)
    assert isinstance(tcp, TcpRepr)
    assert tcp.payload == b"hello\n"
    with pytest.raises(WireError, match=r"TCP checksum 0x[0-9a-f]{4} is wrong"):
        TcpRepr.parse(ip.payload, ip.src_addr, ip.dst_addr)


def test_udp_checksum_mismatch_message() -> None:
    corrupt = bytearray(IPV6_UDP)
    corrupt[-1] ^= 1
    with pytest.raises(WireError, match="UDP checksum 0xeb0a is wrong"):
        parse_frame(bytes(corrupt))


def test_udp_without_checksum() -> None:
    datagram = bytearray(IPV4_UDP[34:])
    datagram[6:8] = b"\x00\x00"
    # RFC 768: zero means no checksum was computed; accepted over IPv4.
    assert UdpRepr.parse(datagram, LOCALHOST_V4, LOCALHOST_V4).payload == b"netshim"
    # RFC 8200 section 8.1: mandatory over IPv6.
    with pytest.raises(WireError, match="IPv6"):
        UdpRepr.parse(datagram, LOCALHOST_V6, LOCALHOST_V6)
    assert UdpRepr.parse(datagram, LOCALHOST_V6, LOCALHOST_V6, verify_checksum=False)


def test_udp_checksum_of_zero_is_sent_as_ffff() -> None:
    # Choose the payload so the sum of everything is 0xFFFF, whose complement is zero.
    probe = UdpRepr(1000, 2000, b"\x00\x00").emit(LOCALHOST_V4, LOCALHOST_V4)
    payload = probe[6:8]
    datagram = UdpRepr(1000, 2000, payload).emit(LOCALHOST_V4, LOCALHOST_V4)
    assert datagram[6:8] == b"\xff\xff"
    assert UdpRepr.parse(datagram, LOCALHOST_V4, LOCALHOST_V4).payload == payload


# -- malformed headers ------------------------------------------------------------------


def patched(frame: bytes, offset: int, value: bytes) -> bytes:
    data = bytearray(frame)
    data[offset : offset + len(value)] = value
    return bytes(data)


def ipv4_packet(changes: dict[int, int]) -> bytes:
    """The UDP vector's IPv4 packet with header bytes replaced and the checksum fixed."""
    header = bytearray(IPV4_UDP[14:34])
    for offset, value in changes.items():
        header[offset] = value
    header[10:12] = b"\x00\x00"
    header[10:12] = internet_checksum(header).to_bytes(2, "big")
    return bytes(header) + IPV4_UDP[34:]


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        (ipv4_packet({0: 0x65}), "version 6"),
        (ipv4_packet({0: 0x44}), "header length 16"),
        (ipv4_packet({0: 0x4F}), "IPv4 header with options truncated"),
        (ipv4_packet({2: 0, 3: 19}), "total length 19"),
        (ipv4_packet({2: 0, 3: 36}), "IPv4 packet truncated"),
        (ipv4_packet({6: 0xC0}), "reserved flag"),
    ],
)
def test_malformed_ipv4(packet: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        Ipv4Repr.parse(packet)


def test_malformed_ipv6() -> None:
    packet = IPV6_UDP[14:]
    with pytest.raises(WireError, match="version 4"):
        Ipv6Repr.parse(patched(packet, 0, b"\x40"))
    with pytest.raises(WireError, match="IPv6 packet truncated"):
        Ipv6Repr.parse(patched(packet, 4, b"\x00\x0d"))
    # Payload Length counts the extra byte out: it is ignored.
    assert Ipv6Repr.parse(packet + b"\x00").emit() == packet


def tcp_segment(options: bytes, *, data_offset: int | None = None) -> bytes:
    """A segment with these raw option bytes and a correct checksum."""
    header_words = data_offset if data_offset is not None else 5 + len(options) // 4
    segment = bytearray(IPV4_TCP_FIN[34:54] + options)
    segment[12] = header_words << 4
    segment[16:18] = b"\x00\x00"
    start = pseudo_header_sum(LOCALHOST_V4, LOCALHOST_V4, IpProtocol.TCP, len(segment))
    segment[16:18] = internet_checksum(segment, start).to_bytes(2, "big")
    return bytes(segment)


def test_tcp_header_shorter_than_data_offset() -> None:
    with pytest.raises(WireError, match="TCP header with options truncated"):
        TcpRepr.parse(tcp_segment(b"\x02\x04\x05", data_offset=6), LOCALHOST_V4, LOCALHOST_V4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (b"\x02\x03\x05\xb4", "kind 2 has invalid length 3"),
        (b"\x03\x04\x07\x00", "kind 3 has invalid length 4"),
        (b"\x08\x02\x00\x00", "kind 8 has invalid length 2"),
        (b"\x05\x02\x00\x00", "kind 5 has invalid length 2"),
        (b"\x01\x01\x01\x1e", "kind 30 truncated: no length byte"),
        (b"\x1e\x01\x00\x00", "kind 30 has invalid length 1"),
        (b"\x1e\x06\x00\x00", "kind 30 truncated: length 6"),
        (b"\x00\x00\x01\x00", "non-zero bytes after end-of-option-list"),
    ],
)
def test_malformed_tcp_options(options: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        TcpRepr.parse(tcp_segment(options), LOCALHOST_V4, LOCALHOST_V4)


def test_tcp_data_offset_too_small() -> None:
    with pytest.raises(WireError, match="data offset gives 16 bytes"):
        TcpRepr.parse(tcp_segment(b"", data_offset=4), LOCALHOST_V4, LOCALHOST_V4)


def test_unusual_tcp_options_read_back_exactly() -> None:
    for options in (
        b"\x00\x00\x00\x00\x00\x00\x00\x00",  # end-of-list, then a whole word of padding
        b"\x1e\x04\xab\xcd",  # an unknown kind (MPTCP's number) kept raw
        b"\x05\x0a\x00\x00\x00\x01\x00\x00\x00\x02\x01\x01",  # one SACK block
    ):
        segment = tcp_segment(options)
        tcp = TcpRepr.parse(segment, LOCALHOST_V4, LOCALHOST_V4)
        assert tcp.emit(LOCALHOST_V4, LOCALHOST_V4) == segment
    assert TcpRepr.parse(tcp_segment(b"\x1e\x04\xab\xcd"), LOCALHOST_V4, LOCALHOST_V4).options == (
        UnknownOption(30, b"\xab\xcd"),
    )


def test_tcp_options_near_the_common_layouts_read_as_written() -> None:
    # Linux's two usual layouts are read in one step; these have their
    # lengths but not their bytes, and must read option by option.
    timestamps = b"\x08\x0a\x00\x00\x00\x07\x00\x00\x00\x09"
    assert TcpRepr.parse(
        tcp_segment(timestamps + b"\x01\x01"), LOCALHOST_V4, LOCALHOST_V4
    ).options == (Timestamps(7, 9), NoOperation(), NoOperation())
    syn_like = b"\x02\x04\x05\xb4\x01\x01" + timestamps + b"\x01\x03\x03\x07"
    assert TcpRepr.parse(tcp_segment(syn_like), LOCALHOST_V4, LOCALHOST_V4).options == (
        MaxSegmentSize(1460),
        NoOperation(),
        NoOperation(),
        Timestamps(7, 9),
        NoOperation(),
        WindowScale(7),
    )
    # Linux's SYN layout but a window scale of length 4: malformed, still caught.
    bad_scale = b"\x02\x04\x05\xb4\x04\x02" + timestamps + b"\x01\x03\x04\x07"
    with pytest.raises(WireError, match="kind 3 truncated: length 4"):
        TcpRepr.parse(tcp_segment(bad_scale), LOCALHOST_V4, LOCALHOST_V4)
    for options in (b"\x01\x01" + timestamps, syn_like, syn_like[:4] + b"\x04\x02" + syn_like[6:]):
        segment = tcp_segment(options)
        assert (
            TcpRepr.parse(segment, LOCALHOST_V4, LOCALHOST_V4).emit(LOCALHOST_V4, LOCALHOST_V4)
            == segment
        )


def test_tcp_reserved_bits_survive() -> None:
    segment = bytearray(tcp_segment(b""))
    segment[12] |= 0x0F  # three reserved bits and AE
    segment[16:18] = b"\x00\x00"
    start = pseudo_header_sum(LOCALHOST_V4, LOCALHOST_V4, IpProtocol.TCP, len(segment))
    segment[16:18] = internet_checksum(segment, start).to_bytes(2, "big")
    tcp = TcpRepr.parse(segment, LOCALHOST_V4, LOCALHOST_V4)
    assert tcp.flags & TcpFlags.AE
    assert int(tcp.flags) == 0xF11
    assert tcp.emit(LOCALHOST_V4, LOCALHOST_V4) == bytes(segment)


def test_udp_length_field() -> None:
    datagram = IPV4_UDP[34:]
    with pytest.raises(WireError, match="UDP length 7"):
        UdpRepr.parse(patched(datagram, 4, b"\x00\x07"), LOCALHOST_V4, LOCALHOST_V4)
    with pytest.raises(WireError, match="UDP datagram truncated"):
        UdpRepr.parse(patched(datagram, 4, b"\x00\x10"), LOCALHOST_V4, LOCALHOST_V4)
    # Bytes past the Length are not part of the datagram.
    assert UdpRepr.parse(datagram + b"junk", LOCALHOST_V4, LOCALHOST_V4).payload == b"netshim"


def test_mixed_families_are_wire_errors_on_parse() -> None:
    with pytest.raises(WireError, match="same IP family"):
        UdpRepr.parse(IPV4_UDP[34:], LOCALHOST_V4, LOCALHOST_V6)


# -- construction -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: TcpRepr(65536, 1, 0, 0, TcpFlags.SYN, 0), ValueError),
        (lambda: TcpRepr(1, -1, 0, 0, TcpFlags.SYN, 0), ValueError),
        (lambda: TcpRepr(1, 1, 2**32, 0, TcpFlags.SYN, 0), ValueError),
        (lambda: TcpRepr(1, 1, 0, 2**32, TcpFlags.ACK, 0), ValueError),
        (lambda: TcpRepr(1, 1, 0, 0, TcpFlags(0x1000), 0), ValueError),
        (lambda: TcpRepr(1, 1, 0, 0, TcpFlags.ACK, 65536), ValueError),
        (lambda: TcpRepr(True, 1, 0, 0, TcpFlags.ACK, 0), TypeError),
        (
            lambda: TcpRepr(
                1, 1, 0, 0, TcpFlags.ACK, 0, options=(Timestamps(0, 0),) * 4 + (NoOperation(),)
            ),
            ValueError,
        ),
        (
            lambda: TcpRepr(
                1, 1, 0, 0, TcpFlags.ACK, 0, options=(EndOfOptionList(), NoOperation())
            ),
            ValueError,
        ),
        (lambda: TcpRepr(1, 1, 0, 0, TcpFlags.ACK, 0, options=("mss",)), TypeError),  # type: ignore[arg-type]
        (lambda: MaxSegmentSize(65536), ValueError),
        (lambda: SackBlocks(()), ValueError),
        (lambda: SackBlocks(((0, 1),) * 5), ValueError),
        (lambda: Timestamps(2**32, 0), ValueError),
        (lambda: UnknownOption(2, b"\x05\xb4"), ValueError),
        (lambda: UnknownOption(30, bytes(39)), ValueError),
        (lambda: UdpRepr(0, 70000), ValueError),
        (lambda: UdpRepr(0, 0, bytes(65528)), ValueError),
        (lambda: Ipv4Repr(LOCALHOST_V4, LOCALHOST_V4, 6, ttl=256), ValueError),
        (lambda: Ipv4Repr(LOCALHOST_V4, LOCALHOST_V4, 6, fragment_offset=4), ValueError),
        (lambda: Ipv4Repr(LOCALHOST_V4, LOCALHOST_V4, 6, options=b"\x01"), ValueError),
        (lambda: Ipv4Repr(LOCALHOST_V4, LOCALHOST_V4, 6, bytes(65516)), ValueError),
        (lambda: Ipv4Repr(LOCALHOST_V6, LOCALHOST_V4, 6), TypeError),  # type: ignore[arg-type]
        (lambda: Ipv6Repr(LOCALHOST_V6, LOCALHOST_V6, 6, bytes(65536)), ValueError),
        (lambda: Ipv6Repr(LOCALHOST_V6, LOCALHOST_V6, 6, flow_label=1 << 20), ValueError),
        (lambda: EthernetAddress(bytes(5)), ValueError),
        (
            lambda: EthernetRepr(EthernetAddress(bytes(6)), EthernetAddress(bytes(6)), 0x10000),
            ValueError,
        ),
    ],
)
def test_constructors_reject_bad_fields(
    build: Callable[[], object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        build()


def test_tcp_options_are_aligned_as_on_the_wire() -> None:
    tcp = TcpRepr(1, 2, 3, 0, TcpFlags.SYN, 100, options=(MaxSegmentSize(1460), WindowScale(7)))
    assert tcp.options == (MaxSegmentSize(1460), WindowScale(7), EndOfOptionList(0))
    assert tcp.header_len() == 28
    grown = TcpRepr(1, 2, 3, 0, TcpFlags.SYN, 100, options=(MaxSegmentSize(1), EndOfOptionList()))
    assert grown.options == (MaxSegmentSize(1), EndOfOptionList(3))
    segment = tcp.emit(LOCALHOST_V6, LOCALHOST_V6)
    assert TcpRepr.parse(segment, LOCALHOST_V6, LOCALHOST_V6) == tcp


def test_tcp_emit_needs_one_family() -> None:
    with pytest.raises(ValueError, match="same IP family"):
        TcpRepr(1, 2, 3, 0, TcpFlags.SYN, 100).emit(LOCALHOST_V4, LOCALHOST_V6)


def test_ethernet_address_text() -> None:
    address = EthernetAddress.from_text("02:00:0A:00:00:01")
    assert str(address) == "02:00:0a:00:00:01"
    assert address.is_locally_administered
    assert not address.is_multicast
    assert EthernetAddress.from_text("ff-ff-ff-ff-ff-ff").is_multicast
    for text in ("02:00:0a:00:00", "02:00:0a:00:00:1", "02:00:0a:00:00:+1", "zz:00:00:00:00:00"):
        with pytest.raises(ValueError, match="not an Ethernet address"):
            EthernetAddress.from_text(text)


# -- properties -------------------------------------------------------------------------

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
ipv4_addresses = st.builds(IPv4Address, u32)
ipv6_addresses = st.builds(IPv6Address, st.integers(0, 2**128 - 1))
address_pairs = st.one_of(
    st.tuples(ipv4_addresses, ipv4_addresses), st.tuples(ipv6_addresses, ipv6_addresses)
)
KNOWN_KINDS = {0, 1, 2, 3, 4, 5, 8}
tcp_option = st.one_of(
    st.just(NoOperation()),
    st.builds(MaxSegmentSize, u16),
    st.builds(WindowScale, st.integers(0, 255)),
    st.just(SackPermitted()),
    st.builds(Timestamps, u32, u32),
    st.builds(SackBlocks, st.lists(st.tuples(u32, u32), min_size=1, max_size=3).map(tuple)),
    st.builds(
        UnknownOption,
        st.integers(0, 255).filter(lambda kind: kind not in KNOWN_KINDS),
        st.binary(max_size=8),
    ),
)


def options_length(options: tuple[TcpOption, ...]) -> int:
    return sum(len(option.emit()) for option in options)


tcp_options = (
    st.tuples(st.lists(tcp_option, max_size=5).map(tuple), st.integers(0, 3))
    .map(lambda pair: pair[0] + ((EndOfOptionList(pair[1]),) if pair[1] else ()))
    .filter(lambda options: options_length(options) <= 36)
)
tcp_reprs = st.builds(
    TcpRepr,
    src_port=u16,
    dst_port=u16,
    seq=u32,
    ack=u32,
    flags=st.integers(0, 0xFFF).map(TcpFlags),
    window=u16,
    options=tcp_options,
    payload=st.binary(max_size=300),
    urgent=u16,
)
udp_reprs = st.builds(UdpRepr, u16, u16, st.binary(max_size=300))


@given(tcp_reprs, address_pairs)
def test_tcp_round_trip(tcp: TcpRepr, addresses: tuple[IPv4Address, IPv4Address]) -> None:
    segment = tcp.emit(*addresses)
    assert len(segment) == tcp.buffer_len()
    parsed = TcpRepr.parse(segment, *addresses)
    assert parsed == tcp
    assert parsed.emit(*addresses) == segment


@given(udp_reprs, address_pairs)
def test_udp_round_trip(udp: UdpRepr, addresses: tuple[IPv4Address, IPv4Address]) -> None:
    datagram = udp.emit(*addresses)
    assert len(datagram) == udp.buffer_len()
    parsed = UdpRepr.parse(datagram, *addresses)
    assert parsed == udp
    assert parsed.emit(*addresses) == datagram


@given(
    st.builds(
        Ipv4Repr,
        src_addr=ipv4_addresses,
        dst_addr=ipv4_addresses,
        protocol=st.integers(0, 255),
        payload=st.binary(max_size=200),
        ttl=st.integers(0, 255),
        identification=u16,
        dont_fragment=st.booleans(),
        more_fragments=st.booleans(),
        fragment_offset=st.integers(0, 0x1FFF).map(lambda units: units * 8),
        dscp=st.integers(0, 63),
        ecn=st.integers(0, 3),
        options=st.integers(0, 10).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n)),
    )
)
def test_ipv4_round_trip(ip: Ipv4Repr) -> None:
    packet = ip.emit()
    assert len(packet) == ip.buffer_len()
    assert Ipv4Repr.parse(packet) == ip
    assert Ipv4Repr.parse(packet).emit() == packet


@given(
    st.builds(
        Ipv6Repr,
        src_addr=ipv6_addresses,
        dst_addr=ipv6_addresses,
        next_header=st.integers(0, 255),
        payload=st.binary(max_size=200),
        hop_limit=st.integers(0, 255),
        traffic_class=st.integers(0, 255),
        flow_label=st.integers(0, 0xF_FFFF),
    )
)
def test_ipv6_round_trip(ip: Ipv6Repr) -> None:
    packet = ip.emit()
    assert len(packet) == ip.buffer_len()
    assert Ipv6Repr.parse(packet) == ip
    assert Ipv6Repr.parse(packet).emit() == packet


@given(st.binary(min_size=6, max_size=6), st.binary(min_size=6, max_size=6), u16, st.binary())
def test_ethernet_round_trip(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> None:
    frame = EthernetRepr(EthernetAddress(dst), EthernetAddress(src), ethertype, payload)
    assert EthernetRepr.parse(frame.emit()) == frame
    assert EthernetAddress.from_text(str(frame.src_addr)) == frame.src_addr


@given(st.binary(max_size=120), address_pairs, st.booleans())
def test_random_bytes_fail_only_with_wire_error(
    data: bytes, addresses: tuple[IPv4Address, IPv4Address], verify: bool
) -> None:
    parsers = (
        lambda: EthernetRepr.parse(data),
        lambda: Ipv4Repr.parse(data, verify_checksum=verify),
        lambda: Ipv6Repr.parse(data),
        lambda: TcpRepr.parse(data, *addresses, verify_checksum=verify),
        lambda: UdpRepr.parse(data, *addresses, verify_checksum=verify),
    )
    for parse in parsers:
        with contextlib.suppress(WireError):
            parse()


@given(
    st.sampled_from(list(VECTORS.values())),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_mutated_vectors_fail_only_with_wire_error(
    frame: bytes, mutations: list[tuple[int, int]]
) -> None:
    data = bytearray(frame)
    for offset, value in mutations:
        data[offset % len(data)] = value
    for verify in (True, False):
        try:
            ethernet, ip, transport = parse_frame(bytes(data), verify_checksum=verify)
        except WireError:
            continue
        assert ethernet.emit() == bytes(data)
        assert transport.buffer_len() <= len(ip.payload)
