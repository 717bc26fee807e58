"""The pcap writer and the capture observer, read back by our parsers and by tshark."""

from __future__ import annotations

import io
import ipaddress
import itertools
import logging
import re
import struct
import subprocess
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import dnslib
import pytest

from netshim._addresses import Address
from netshim._traffic import TrafficObserver
from netshim.pcap import DEFAULT_SNAPLEN, LinkType, PcapCapture, PcapReader, PcapWriter
from netshim.protocols.ip import (
    EthernetAddress,
    EthernetRepr,
    EtherType,
    IpProtocol,
    Ipv4Repr,
    Ipv6Repr,
    MaxSegmentSize,
    TcpFlags,
    TcpRepr,
    UdpRepr,
)
from netshim.testing import require_peer

START = 1_700_000_000.0

V4_CLIENT: Address = ("10.0.0.1", 40000)
V4_SERVER: Address = ("10.0.0.2", 7777)
V6_CLIENT: Address = ("fd00::1", 40001)
V6_SERVER: Address = ("fd00::2", 7777)
RESET_CLIENT: Address = ("10.0.0.1", 40002)
REFUSED_CLIENT: Address = ("10.0.0.1", 40003)
REFUSED_SERVER: Address = ("10.0.0.2", 7778)
DNS_CLIENT: Address = ("10.0.0.1", 50000)
DNS_SERVER: Address = ("10.0.0.53", 53)

# Each conversation has one payload larger than its family's segment size.
V4_MSS, V6_MSS = 65483, 65463
V4_UPLOAD = bytes(range(256)) * 400  # 102400 bytes: two segments
V4_DOWNLOAD = b"ok\n" * 300
V6_UPLOAD = b"hello" * 20
V6_DOWNLOAD = bytes(range(250)) * 280  # 70000 bytes: two segments
DNS_QUERY = bytes(dnslib.DNSRecord.question("example.com").pack())

C, S = "client", "server"
SYN, ACK, PSH, FIN, RST = TcpFlags.SYN, TcpFlags.ACK, TcpFlags.PSH, TcpFlags.FIN, TcpFlags.RST


def record(capture: TrafficObserver) -> None:
    """The traffic every test here looks at."""
    capture.tcp_open(1, V4_CLIENT, V4_SERVER)
    capture.tcp_data(1, True, V4_UPLOAD)
    capture.tcp_data(1, False, V4_DOWNLOAD)
    capture.tcp_open(2, V6_CLIENT, V6_SERVER)
    capture.tcp_data(2, True, V6_UPLOAD)
    capture.tcp_data(2, False, V6_DOWNLOAD)
    capture.tcp_fin(1, True)
    capture.tcp_fin(1, False)
    capture.tcp_fin(2, False)
    capture.tcp_fin(2, True)
    capture.tcp_open(3, RESET_CLIENT, V4_SERVER)
    capture.tcp_data(3, True, b"x")
    capture.tcp_reset(3, False)
    capture.tcp_refused(REFUSED_CLIENT, REFUSED_SERVER)
    capture.udp_datagram(DNS_CLIENT, DNS_SERVER, DNS_QUERY)
    # Events the capture must ignore: unknown connections, a connection that
    # is gone (reset, or closed both ways), a second FIN, empty data.
    capture.tcp_data(99, True, b"unknown")
    capture.tcp_fin(99, False)
    capture.tcp_reset(99, True)
    capture.tcp_data(3, True, b"after reset")
    capture.tcp_fin(1, True)
    capture.tcp_data(1, True, b"after close")


def fixed_clock() -> float:
    return START


@pytest.fixture
def capture_path(tmp_path: Path) -> Path:
    path = tmp_path / "traffic.pcap"
    with PcapCapture(path, clock=fixed_clock, seed=7) as capture:
        record(capture)
    return path


Frame = tuple[float, EthernetRepr, Ipv4Repr | Ipv6Repr, TcpRepr | UdpRepr]


def read_frames(path: Path) -> list[Frame]:
    frames: list[Frame] = []
    with PcapReader(path) as reader:
        assert reader.linktype == LinkType.ETHERNET
        assert reader.snaplen == DEFAULT_SNAPLEN
        for record_ in reader:
            assert record_.original_length == len(record_.data)
            ethernet = EthernetRepr.parse(record_.data)
            ip: Ipv4Repr | Ipv6Repr
            if ethernet.ethertype == EtherType.IPV4:
                ip = Ipv4Repr.parse(ethernet.payload)
                protocol = ip.protocol
            else:
                assert ethernet.ethertype == EtherType.IPV6
                ip = Ipv6Repr.parse(ethernet.payload)
                protocol = ip.next_header
            transport: TcpRepr | UdpRepr
            if protocol == IpProtocol.TCP:
                transport = TcpRepr.parse(ip.payload, ip.src_addr, ip.dst_addr)
            else:
                assert protocol == IpProtocol.UDP
                transport = UdpRepr.parse(ip.payload, ip.src_addr, ip.dst_addr)
            frames.append((record_.timestamp, ethernet, ip, transport))
    return frames


def endpoints(frame: Frame) -> tuple[Address, Address]:
    _, _, ip, transport = frame
    return (str(ip.src_addr), transport.src_port), (str(ip.dst_addr), transport.dst_port)


def conversation(
    frames: list[Frame], client: Address, server: Address
) -> list[tuple[str, TcpRepr]]:
    """The TCP segments between ``client`` and ``server``, labelled by sender."""
    segments = []
    for frame in frames:
        tcp = frame[3]
        if not isinstance(tcp, TcpRepr):
            continue
        source, destination = endpoints(frame)
        if (source, destination) == (client, server):
            segments.append((C, tcp))
        elif (source, destination) == (server, client):
            segments.append((S, tcp))
    return segments


def shape(segments: list[tuple[str, TcpRepr]]) -> list[tuple[str, TcpFlags, int]]:
    return [(side, tcp.flags, len(tcp.payload)) for side, tcp in segments]


def check_sequence_numbers(segments: list[tuple[str, TcpRepr]]) -> None:
    """Every segment starts where its sender left off and acknowledges all it got."""
    next_seq: dict[str, int] = {}
    for side, tcp in segments:
        other = S if side == C else C
        if tcp.flags & SYN:
            next_seq[side] = tcp.seq
        assert tcp.seq == next_seq[side], (side, tcp)
        if tcp.flags & ACK:
            assert tcp.ack == next_seq[other], (side, tcp)
        next_seq[side] = (next_seq[side] + tcp.segment_len()) % 2**32


def stream(segments: list[tuple[str, TcpRepr]], side: str) -> bytes:
    return b"".join(tcp.payload for sender, tcp in segments if sender == side)


# -- read back with our own parsers ------------------------------------------------------


def test_ipv4_conversation(capture_path: Path) -> None:
    segments = conversation(read_frames(capture_path), V4_CLIENT, V4_SERVER)
    assert shape(segments) == [
        (C, SYN, 0),
        (S, SYN | ACK, 0),
        (C, ACK, 0),
        (C, PSH | ACK, V4_MSS),
        (S, ACK, 0),
        (C, PSH | ACK, len(V4_UPLOAD) - V4_MSS),
        (S, ACK, 0),
        (S, PSH | ACK, len(V4_DOWNLOAD)),
        (C, ACK, 0),
        (C, FIN | ACK, 0),
        (S, ACK, 0),
        (S, FIN | ACK, 0),
        (C, ACK, 0),
    ]
    check_sequence_numbers(segments)
    assert stream(segments, C) == V4_UPLOAD
    assert stream(segments, S) == V4_DOWNLOAD
    assert segments[0][1].options == (MaxSegmentSize(V4_MSS),)
    assert segments[1][1].options == (MaxSegmentSize(V4_MSS),)
    assert all(tcp.window == 0xFFFF for _, tcp in segments)


def test_ipv6_conversation(capture_path: Path) -> None:
    segments = conversation(read_frames(capture_path), V6_CLIENT, V6_SERVER)
    assert shape(segments) == [
        (C, SYN, 0),
        (S, SYN | ACK, 0),
        (C, ACK, 0),
        (C, PSH | ACK, len(V6_UPLOAD)),
        (S, ACK, 0),
        (S, PSH | ACK, V6_MSS),
        (C, ACK, 0),
        (S, PSH | ACK, len(V6_DOWNLOAD) - V6_MSS),
        (C, ACK, 0),
        (S, FIN | ACK, 0),
        (C, ACK, 0),
        (C, FIN | ACK, 0),
        (S, ACK, 0),
    ]
    check_sequence_numbers(segments)
    assert stream(segments, C) == V6_UPLOAD
    assert stream(segments, S) == V6_DOWNLOAD
    assert segments[0][1].find_option(MaxSegmentSize) == MaxSegmentSize(V6_MSS)


def test_reset_connection(capture_path: Path) -> None:
    segments = conversation(read_frames(capture_path), RESET_CLIENT, V4_SERVER)
    assert shape(segments) == [
        (C, SYN, 0),
        (S, SYN | ACK, 0),
        (C, ACK, 0),
        (C, PSH | ACK, 1),
        (S, ACK, 0),
        (S, RST | ACK, 0),
    ]
    check_sequence_numbers(segments)


def test_refused_connect(capture_path: Path) -> None:
    segments = conversation(read_frames(capture_path), REFUSED_CLIENT, REFUSED_SERVER)
    assert shape(segments) == [(C, SYN, 0), (S, RST | ACK, 0)]
    syn, rst = segments[0][1], segments[1][1]
    assert (rst.seq, rst.ack) == (0, (syn.seq + 1) % 2**32)


def test_udp_datagram_is_a_dns_query(capture_path: Path) -> None:
    udp_frames = [frame for frame in read_frames(capture_path) if isinstance(frame[3], UdpRepr)]
    assert len(udp_frames) == 1
    assert endpoints(udp_frames[0]) == (DNS_CLIENT, DNS_SERVER)
    assert udp_frames[0][3].payload == DNS_QUERY
    query = dnslib.DNSRecord.parse(udp_frames[0][3].payload)
    assert str(query.q.qname) == "example.com."


def test_headers(capture_path: Path) -> None:
    frames = read_frames(capture_path)
    assert len(frames) == 13 + 13 + 6 + 2 + 1
    macs: dict[str, EthernetAddress] = {}
    ipv4_ids = []
    for _, ethernet, ip, _ in frames:
        for address, mac in ((ip.src_addr, ethernet.src_addr), (ip.dst_addr, ethernet.dst_addr)):
            assert macs.setdefault(str(address), mac) == mac
            assert mac.is_locally_administered
            assert not mac.is_multicast
        if isinstance(ip, Ipv4Repr):
            assert ethernet.ethertype == EtherType.IPV4
            assert (ip.ttl, ip.dont_fragment, ip.more_fragments) == (64, True, False)
            ipv4_ids.append(ip.identification)
        else:
            assert ethernet.ethertype == EtherType.IPV6
            assert ip.hop_limit == 64
    assert ipv4_ids == list(range(len(ipv4_ids)))
    assert str(macs["10.0.0.1"]) == "02:00:0a:00:00:01"
    assert len(set(macs.values())) == len(macs)


def test_timestamps_increase(capture_path: Path) -> None:
    times = [frame[0] for frame in read_frames(capture_path)]
    assert times[0] == START
    assert all(later > earlier for earlier, later in itertools.pairwise(times))


def test_timestamps_follow_the_clock() -> None:
    now = [START]
    output = io.BytesIO()
    capture = PcapCapture(output, clock=lambda: now[0])
    capture.tcp_refused(REFUSED_CLIENT, REFUSED_SERVER)
    now[0] += 2.5
    capture.udp_datagram(DNS_CLIENT, DNS_SERVER, b"x")
    now[0] -= 10  # a clock stepping back does not reorder the file
    capture.udp_datagram(DNS_CLIENT, DNS_SERVER, b"y")
    capture.close()
    output.seek(0)
    assert [round(r.timestamp - START, 6) for r in PcapReader(output)] == [
        0.0,
        0.000001,
        2.5,
        2.500001,
    ]


def capture_bytes(seed: int) -> bytes:
    output = io.BytesIO()
    capture = PcapCapture(output, clock=fixed_clock, seed=seed)
    record(capture)
    capture.close()
    assert not output.closed  # the caller's file stays open
    return output.getvalue()


def test_same_seed_same_file() -> None:
    assert capture_bytes(1) == capture_bytes(1)
    assert capture_bytes(1) != capture_bytes(2)


# -- never raising ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        lambda c: c.tcp_open(5, ("10.0.0.1", 1), ("fd00::1", 2)),
        lambda c: c.tcp_open(5, ("not-an-ip", 1), ("10.0.0.1", 2)),
        lambda c: c.tcp_open(5, ("10.0.0.1", 70000), ("10.0.0.2", 2)),
        lambda c: c.tcp_refused(("fd00::1", 1), ("10.0.0.1", 2)),
        lambda c: c.udp_datagram(("10.0.0.1", 1), ("10.0.0.2", 2), bytes(65508)),
        lambda c: c.udp_datagram(("10.0.0.1", 1), ("10.0.0.2", 2), "text"),
    ],
)
def test_bad_events_are_logged_not_raised(
    event: Callable[[PcapCapture], None], caplog: pytest.LogCaptureFixture
) -> None:
    output = io.BytesIO()
    capture = PcapCapture(output)
    with caplog.at_level(logging.ERROR, logger="netshim.pcap"):
        event(capture)
    assert "pcap capture could not record" in caplog.text
    capture.tcp_data(5, True, b"data")  # the failed open left nothing behind
    assert len(output.getvalue()) == 24  # the global header only


def test_largest_udp_payloads_fit() -> None:
    output = io.BytesIO()
    with PcapCapture(output) as capture:
        capture.udp_datagram(("10.0.0.1", 1), ("10.0.0.2", 2), bytes(65507))
        capture.udp_datagram(("fd00::1", 1), ("fd00::2", 2), bytes(65527))
    output.seek(0)
    lengths = [len(r.data) for r in PcapReader(output)]
    assert lengths == [14 + 65535, 14 + 40 + 65535]


def test_events_after_close_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    output = io.BytesIO()
    capture = PcapCapture(output)
    capture.tcp_open(1, V4_CLIENT, V4_SERVER)
    capture.close()
    size = len(output.getvalue())
    with caplog.at_level(logging.DEBUG, logger="netshim.pcap"):
        capture.tcp_data(1, True, b"late")
        capture.udp_datagram(DNS_CLIENT, DNS_SERVER, b"late")
        capture.close()
    assert len(output.getvalue()) == size
    assert caplog.text == ""


def test_is_a_traffic_observer() -> None:
    observer: TrafficObserver = PcapCapture(io.BytesIO())
    observer.close()


# -- the writer and reader ----------------------------------------------------------------


def test_writer_format(tmp_path: Path) -> None:
    path = tmp_path / "out.pcap"
    with PcapWriter(path, snaplen=8, linktype=LinkType.RAW) as writer:
        writer.write(b"0123456789", 1.25)
        writer.write(b"ab", 2.9999996)
    assert writer.closed
    data = path.read_bytes()
    assert struct.unpack("<IHHiIII", data[:24]) == (0xA1B2C3D4, 2, 4, 0, 0, 8, 101)
    assert struct.unpack("<IIII", data[24:40]) == (1, 250000, 8, 10)
    assert data[40:48] == b"01234567"
    assert struct.unpack("<IIII", data[48:64]) == (3, 0, 2, 2)
    assert data[64:] == b"ab"
    with PcapReader(path) as reader:
        records = list(reader)
    assert [(r.timestamp, r.data, r.original_length) for r in records] == [
        (1.25, b"01234567", 10),
        (3.0, b"ab", 2),
    ]


def test_writer_leaves_file_objects_open() -> None:
    output = io.BytesIO()
    writer = PcapWriter(output)
    writer.close()
    writer.close()
    assert not output.closed
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"x", 0.0)


@pytest.mark.parametrize("timestamp", [-1.0, 2.0**32])
def test_writer_rejects_timestamps_pcap_cannot_hold(timestamp: float) -> None:
    with pytest.raises(ValueError, match="outside"):
        PcapWriter(io.BytesIO()).write(b"x", timestamp)


def test_writer_rejects_bad_snaplen() -> None:
    with pytest.raises(ValueError, match="snaplen"):
        PcapWriter(io.BytesIO(), snaplen=0)


def test_reader_other_byte_order_and_nanoseconds() -> None:
    header = struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1)
    record_ = struct.pack(">IIII", 5, 500_000_000, 3, 3) + b"abc"
    reader = PcapReader(io.BytesIO(header + record_))
    assert (reader.version, reader.snaplen, reader.linktype) == ((2, 4), 65535, 1)
    assert [(r.timestamp, r.data) for r in reader] == [(5.5, b"abc")]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no global header"),
        (b"\x0a\x0d\x0d\x0a" + bytes(20), "magic 0a0d0d0a"),
        (struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 9, 1) + bytes(10), "record header"),
        (
            struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 9, 1)
            + struct.pack("<IIII", 0, 0, 4, 4),
            "0 of 4 bytes",
        ),
    ],
)
def test_reader_rejects_bad_files(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        list(PcapReader(io.BytesIO(data)))


# -- tshark --------------------------------------------------------------------------------

CHECKSUMS = (
    "-o",
    "tcp.check_checksum:TRUE",
    "-o",
    "ip.check_checksum:TRUE",
    "-o",
    "udp.check_checksum:TRUE",
)


def tshark(path: Path, *args: str) -> str:
    program = require_peer("tshark")
    result = subprocess.run(
        [program, "-n", "-r", str(path), *CHECKSUMS, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # stderr carries noise such as the warning about running as root.
    assert result.returncode == 0, result.stderr
    return result.stdout


def fields(path: Path, *names: str, display_filter: str | None = None) -> list[list[str]]:
    args = ["-T", "fields", *[arg for name in names for arg in ("-e", name)]]
    if display_filter:
        args += ["-Y", display_filter]
    return [line.split("\t") for line in tshark(path, *args).splitlines()]


_SIZE_UNITS = {"bytes": 1, "kB": 1000, "MB": 1000**2}
_CONVERSATION = re.compile(
    r"^(?P<a>\S+):(?P<a_port>\d+)\s+<->\s+(?P<b>\S+):(?P<b_port>\d+)\s+"
    r"(?P<to_a_frames>\d+)\s+(?P<to_a_bytes>\d+ \w+)\s+"
    r"(?P<to_b_frames>\d+)\s+(?P<to_b_bytes>\d+ \w+)\s+"
)


def shown_size(text: str, size: int) -> bool:
    """Whether tshark's rounded-down ``N bytes`` / ``N kB`` text stands for ``size``."""
    number, unit = text.split()
    return int(number) == size // _SIZE_UNITS[unit]


@pytest.mark.peer("tshark")
def test_tshark_conversations(capture_path: Path) -> None:
    # What each direction of each conversation holds, frame count and bytes,
    # from our own reading of the file.
    expected: dict[tuple[Address, Address], list[int]] = defaultdict(lambda: [0, 0])
    with PcapReader(capture_path) as reader:
        for frame, record_ in zip(read_frames(capture_path), reader, strict=True):
            if isinstance(frame[3], TcpRepr):
                counts = expected[endpoints(frame)]
                counts[0] += 1
                counts[1] += len(record_.data)
    output = tshark(capture_path, "-q", "-z", "conv,tcp")
    seen = set()
    for line in output.splitlines():
        match = _CONVERSATION.match(line)
        if not match:
            continue
        a = (str(ipaddress.ip_address(match["a"])), int(match["a_port"]))
        b = (str(ipaddress.ip_address(match["b"])), int(match["b_port"]))
        to_b, to_a = expected[(a, b)], expected[(b, a)]
        assert int(match["to_b_frames"]) == to_b[0], line
        assert int(match["to_a_frames"]) == to_a[0], line
        assert shown_size(match["to_b_bytes"], to_b[1]), (line, to_b)
        assert shown_size(match["to_a_bytes"], to_a[1]), (line, to_a)
        seen.add(frozenset((a, b)))
    assert seen == {
        frozenset((V4_CLIENT, V4_SERVER)),
        frozenset((V6_CLIENT, V6_SERVER)),
        frozenset((RESET_CLIENT, V4_SERVER)),
        frozenset((REFUSED_CLIENT, REFUSED_SERVER)),
    }


@pytest.mark.peer("tshark")
def test_tshark_payload_bytes_each_way(capture_path: Path) -> None:
    sent: dict[tuple[str, str], int] = defaultdict(int)
    for stream_id, port, length in fields(
        capture_path, "tcp.stream", "tcp.srcport", "tcp.len", display_filter="tcp"
    ):
        sent[(stream_id, port)] += int(length)
    assert sent == {
        ("0", "40000"): len(V4_UPLOAD),
        ("0", "7777"): len(V4_DOWNLOAD),
        ("1", "40001"): len(V6_UPLOAD),
        ("1", "7777"): len(V6_DOWNLOAD),
        ("2", "40002"): 1,
        ("2", "7777"): 0,
        ("3", "40003"): 0,
        ("3", "7778"): 0,
    }


@pytest.mark.peer("tshark")
def test_tshark_finds_every_checksum_good(capture_path: Path) -> None:
    rows = fields(
        capture_path,
        "frame.number",
        "ip.checksum.status",
        "tcp.checksum.status",
        "udp.checksum.status",
    )
    assert len(rows) == 35
    for number, *statuses in rows:
        present = [status for status in statuses if status]
        # 1 is Wireshark's "Good"; IPv6 frames have no IP header checksum.
        assert present, number
        assert set(present) == {"1"}, (number, statuses)


@pytest.mark.peer("tshark")
def test_tshark_expert_is_quiet_on_clean_conversations(capture_path: Path) -> None:
    clean = tshark(capture_path, "-q", "-z", "expert,tcp.stream == 0 || tcp.stream == 1")
    assert "Connection establish request (SYN)" in clean  # the tap did run
    assert "Errors (" not in clean, clean
    assert "Warns (" not in clean, clean
    # On the whole file, the only warnings are the two resets.
    everything = tshark(capture_path, "-q", "-z", "expert,warn")
    assert "Errors (" not in everything, everything
    warnings = re.findall(r"^\s+(\d+)\s+\w+\s+\w+\s+(.+)$", everything, re.MULTILINE)
    assert warnings == [("2", "Connection reset (RST)")], everything


@pytest.mark.peer("tshark")
def test_tshark_sees_the_resets(capture_path: Path) -> None:
    rows = fields(
        capture_path,
        "tcp.stream",
        "tcp.srcport",
        "tcp.flags.str",
        display_filter="tcp.flags.reset == 1",
    )
    assert [row[:2] for row in rows] == [["2", "7777"], ["3", "7778"]]
    assert all("R" in row[2] and "A" in row[2] for row in rows)


@pytest.mark.peer("tshark")
def test_tshark_decodes_dns(capture_path: Path) -> None:
    rows = fields(
        capture_path,
        "ip.src",
        "udp.dstport",
        "dns.qry.name",
        "dns.flags.response",
        display_filter="dns",
    )
    assert rows == [["10.0.0.1", "53", "example.com", "0"]]
