"""In-memory links: cables, the learning bridge, faults, pcap capture; interfaces talking over them.

The TCP here is the real core (:mod:`netshim.ip.tcp`) on both ends, driven by
the small pump in ``link_pump.py``.
"""

from __future__ import annotations

import hashlib
import random
import struct
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from link_pump import pumping, receive_all, send_all

from netshim.ip.iface import GsoInfo, GsoType, Interface, Medium
from netshim.ip.links import (
    Bridge,
    Cable,
    CableEnd,
    Faults,
    FaultyLink,
    IncomingPacket,
    Link,
    PcapLink,
)
from netshim.pcap import LinkType, PcapReader
from netshim.protocols.ip import EthernetAddress, Icmpv4Repr, IpProtocol
from netshim.protocols.ip.checksum import (
    internet_checksum,
    ones_complement_sum,
    pseudo_header_sum,
)
from netshim.testing import require_peer

pytestmark = pytest.mark.anyio

MAC = [EthernetAddress(bytes((2, 0, 0, 0, 0, n))) for n in range(8)]


def host(n: int, medium: Medium = Medium.ETHERNET, **kwargs: object) -> Interface:
    return Interface(
        medium,
        mac=MAC[n] if medium is Medium.ETHERNET else None,
        addresses=[IPv4Interface(f"10.0.0.{n}/24"), IPv6Interface(f"2001:db8::{n}/64")],
        rng=random.Random(n),
        slaac=False,
        **kwargs,  # type: ignore[arg-type]
    )


def eth(dst: int, src: int, body: bytes = b"payload") -> bytes:
    return MAC[dst].octets + MAC[src].octets + b"\x08\x00" + body


async def test_cable_moves_frames_both_ways_and_reports_the_far_end_closing() -> None:
    cable = Cable()
    await cable.a.send(b"to b")
    await cable.b.send(b"to a")
    assert (await cable.b.receive()).data == b"to b"
    assert (await cable.a.receive()).data == b"to a"
    await cable.a.send(b"last")
    await cable.a.aclose()
    assert (await cable.b.receive()).data == b"last"
    with pytest.raises(anyio.EndOfStream):
        await cable.b.receive()
    with pytest.raises(anyio.ClosedResourceError):
        await cable.a.receive()
    await cable.a.aclose()  # idempotent


async def test_closing_wakes_a_waiting_receiver() -> None:
    cable = Cable()

    async def close_soon() -> None:
        await anyio.sleep(0.01)
        await cable.b.aclose()

    async with anyio.create_task_group() as group:
        group.start_soon(close_soon)
        with pytest.raises(anyio.ClosedResourceError):
            await cable.b.receive()


async def test_queue_bound_drops_new_packets() -> None:
    cable = Cable(max_queued=3)
    for n in range(5):
        await cable.a.send(bytes([n]))
    assert cable.b.dropped == 2
    assert [(await cable.b.receive()).data for _ in range(3)] == [b"\x00", b"\x01", b"\x02"]


async def test_faults_are_seeded_and_latency_delays_delivery() -> None:
    def lost(seed: int) -> int:
        cable = Cable(faults=Faults(loss=0.3, duplicate=0.1, seed=seed))
        for _ in range(1000):
            cable.a.send_nowait(b"x")
        assert cable.a.injector is not None
        return cable.a.injector.lost

    assert lost(1) == lost(1)
    assert 250 < lost(1) < 350
    slow = Cable(faults_a_to_b=Faults(latency=0.05))
    start = anyio.current_time()
    await slow.a.send(b"late")
    await slow.b.send(b"early")
    assert (await slow.a.receive()).data == b"early"
    assert (await slow.b.receive()).data == b"late"
    assert anyio.current_time() - start >= 0.05


async def test_reordering_delivers_a_held_packet_after_later_ones() -> None:
    cable = Cable(faults_a_to_b=Faults(reorder=0.5, reorder_delay=0.01, seed=3))
    for n in range(20):
        cable.a.send_nowait(bytes([n]))
    got = [(await cable.b.receive()).data[0] for _ in range(20)]
    assert sorted(got) == list(range(20))
    assert got != list(range(20))


async def test_bridge_learns_floods_and_forwards() -> None:
    bridge = Bridge()
    ports = [bridge.port() for _ in range(3)]
    await ports[0].send(eth(1, 0))  # unknown destination: flooded
    assert (await ports[1].receive()).data == eth(1, 0)
    assert (await ports[2].receive()).data == eth(1, 0)
    await ports[1].send(eth(0, 1))  # port 0's MAC was learnt: forwarded only there
    assert (await ports[0].receive()).data == eth(0, 1)
    await ports[0].send(eth(1, 0, b"again"))
    assert (await ports[1].receive()).data == eth(1, 0, b"again")
    assert bridge.mac_table() == {str(MAC[0]): 0, str(MAC[1]): 1}
    assert (bridge.flooded, bridge.forwarded) == (1, 2)
    with anyio.move_on_after(0.05) as scope:
        await ports[2].receive()
    assert scope.cancelled_caught
    await ports[1].aclose()
    assert bridge.mac_table() == {str(MAC[0]): 0}


@pytest.mark.parametrize(
    "faults",
    [None, Faults(loss=0.02, duplicate=0.01, reorder=0.01, latency=0.002, seed=7)],
    ids=["clean", "lossy"],
)
@pytest.mark.parametrize("version", [4, 6])
async def test_tcp_between_two_interfaces_over_a_cable(faults: Faults | None, version: int) -> None:
    cable = Cable(faults=faults)
    server, client = host(1), host(2)
    server_address = server.addresses_of(version)[-1]
    listener = server.tcp_listen(server_address, 8080)
    upload = random.Random(1).randbytes(300_000)
    download = random.Random(2).randbytes(200_000)
    async with pumping((server, cable.a), (client, cable.b)) as (server_pump, client_pump):
        connection = client.tcp_connect((server_address, 8080), now=anyio.current_time())
        client_pump.kick()
        await client_pump.wait_until(lambda: connection.established)
        await server_pump.wait_until(lambda: listener.readable())
        accepted = listener.accept()
        assert accepted is not None
        async with anyio.create_task_group() as group:
            group.start_soon(send_all, client_pump, connection, upload)
            group.start_soon(send_all, server_pump, accepted, download)
            received_by_server = await receive_all(server_pump, accepted, len(upload))
            received_by_client = await receive_all(client_pump, connection, len(download))
        assert hashlib.sha256(received_by_server).digest() == hashlib.sha256(upload).digest()
        assert hashlib.sha256(received_by_client).digest() == hashlib.sha256(download).digest()
        connection.shutdown()
        accepted.shutdown()
        client_pump.kick()
        server_pump.kick()
        await server_pump.wait_until(lambda: accepted.at_eof and connection.at_eof)
    assert not server.dropped.get("tcp bad checksum")


async def test_ping_and_udp_across_a_bridge_resolve_neighbours() -> None:
    bridge = Bridge()
    hosts = [host(n) for n in (1, 2, 3)]
    ports = [bridge.port() for _ in hosts]
    async with pumping(*zip(hosts, ports, strict=True)) as pumps:
        sock1 = hosts[0].udp_bind(IPv4Address("0.0.0.0"), 5000)
        sock3 = hosts[2].udp_bind(IPv4Address("10.0.0.3"), 6000)
        sock1.send_to(b"hello", (IPv4Address("10.0.0.3"), 6000), anyio.current_time())
        pumps[0].kick()
        await pumps[2].wait_until(sock3.readable)
        assert sock3.receive() == (b"hello", (IPv4Address("10.0.0.1"), 5000))
        six = hosts[1].udp_bind(hosts[1].addresses_of(6)[-1], 7000)
        v6 = hosts[0].udp_bind(hosts[0].addresses_of(6)[-1], 7000)
        v6.send_to(b"six", six.local, anyio.current_time())
        pumps[0].kick()
        await pumps[1].wait_until(six.readable)
        assert six.receive() == (b"six", v6.local)
    assert set(bridge.mac_table()) == {str(MAC[1]), str(MAC[2]), str(MAC[3])}


async def test_pcap_capture_is_read_by_tshark(tmp_path: Path) -> None:
    tshark = require_peer("tshark")
    cable = Cable()
    server, client = host(1), host(2)
    path = tmp_path / "capture.pcap"
    captured = PcapLink(cable.b, path)
    listener = server.tcp_listen(IPv4Address("10.0.0.1"), 80)
    async with pumping((server, cable.a), (client, captured)) as (server_pump, client_pump):
        connection = client.tcp_connect((IPv4Address("10.0.0.1"), 80), now=anyio.current_time())
        client_pump.kick()
        await server_pump.wait_until(listener.readable)
        accepted = listener.accept()
        assert accepted is not None
        await send_all(client_pump, connection, b"GET / HTTP/1.0\r\n\r\n")
        assert await receive_all(server_pump, accepted, 18) == b"GET / HTTP/1.0\r\n\r\n"
        ping = Icmpv4Repr.echo_request(1, 1, b"abc").emit()
        client._send_ip(
            IPv4Address("10.0.0.2"), IPv4Address("10.0.0.1"), IpProtocol.ICMP, ping, 0.0
        )
        client_pump.kick()
        await anyio.sleep(0.1)
    await captured.aclose()
    with PcapReader(path) as reader:
        assert reader.linktype == LinkType.ETHERNET
        assert len(list(reader)) >= 6
    result = await anyio.run_process(
        [tshark, "-r", str(path), "-o", "tcp.check_checksum:TRUE", "-T", "fields", "-e",
         "frame.protocols", "-e", "_ws.expert.message"],
    )  # fmt: skip
    output = result.stdout.decode()
    lines = output.splitlines()
    assert any("arp" in line for line in lines)
    assert any("tcp" in line for line in lines)
    assert any("icmp" in line for line in lines)
    assert "Bad checksum" not in output
    assert "Malformed" not in output


async def test_faulty_link_wraps_any_link() -> None:
    cable = Cable()
    lossy = FaultyLink(cable.a, Faults(loss=0.5, seed=1))
    for n in range(100):
        await lossy.send(bytes([n]))
    assert lossy.outbound.lost == pytest.approx(50, abs=15)
    assert cable.b._inbox.dropped == 0
    with pytest.raises(ValueError, match="latency"):
        FaultyLink(cable.a, Faults(latency=1))


async def test_faulty_link_passes_bursts_through_with_the_same_faults() -> None:
    # send_many and receive_nowait drop and reorder exactly as send and
    # receive do for the same seed, so a driver's bursts keep working.
    one_by_one, bursts = Cable(), Cable()
    faults = Faults(loss=0.2, duplicate=0.1, reorder=0.2, seed=3)
    single = FaultyLink(one_by_one.a, faults)
    many = FaultyLink(bursts.a, faults)
    packets = [bytes([n]) for n in range(200)]
    for packet in packets:
        await single.send(packet)
    await many.send_many([(packet, None) for packet in packets])

    async def drained(link: FaultyLink | CableEnd) -> list[bytes]:
        got = []
        while (incoming := link.receive_nowait()) is not None:
            got.append(incoming.data)
        return got

    sent = await drained(one_by_one.b)
    assert sent == await drained(bursts.b)
    assert 100 < len(sent) < 200
    # And inbound: the same faults again on the way in, through receive_nowait.
    echo = Cable()
    inbound = FaultyLink(echo.b, Faults(loss=0.3, seed=9))
    for packet in packets:
        echo.a.send_nowait(packet)
    received = await drained(inbound)
    assert inbound.inbound.lost == 200 - len(received)
    assert received == sorted(received)
    assert 100 < len(received) < 180


class _Recorder(Link):
    """A link that keeps what is sent and hands out what a test queued to receive."""

    medium = Medium.IP
    tso = True

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, GsoInfo | None]] = []
        self.queued: list[IncomingPacket] = []

    async def send(self, packet: bytes, gso: GsoInfo | None = None) -> None:
        self.sent.append((bytes(packet), gso))

    async def receive(self) -> IncomingPacket:
        return self.queued.pop(0)

    async def aclose(self) -> None:
        pass


WIRE_MSS = 1448  # a 1500-byte MTU less IPv4, TCP and the timestamp option
FIRST_SEQ = 0xFFFF_FF00  # the sequence numbers wrap inside the packet


def _addresses(version: int) -> tuple[IPv4Address, IPv4Address] | tuple[IPv6Address, IPv6Address]:
    if version == 4:
        return IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")
    return IPv6Address("2001:db8::1"), IPv6Address("2001:db8::2")


def _big_tcp_packet(version: int, segments: int, tail: int) -> tuple[bytes, bytes, int]:
    """A TSO-sized TCP packet with PSH|FIN|ACK, its payload, and where its TCP header starts.

    The TCP checksum field holds the pseudo-header sum, as for TSO; the TCP
    header is 32 bytes (timestamps), so with IPv4 a 1500-byte wire segment
    carries ``WIRE_MSS`` bytes (IPv6: with a 1520-byte MTU).
    """
    payload = random.Random(segments).randbytes(segments * WIRE_MSS + tail)
    tcp_length = 32 + len(payload)
    src, dst = _addresses(version)
    partial = pseudo_header_sum(src, dst, 6, tcp_length)
    tcp = struct.pack("!HHIIBBHHH", 1234, 80, FIRST_SEQ, 7, 8 << 4, 0x19, 500, partial, 0)
    tcp += bytes((1, 1, 8, 10)) + bytes(8)
    if version == 4:
        ip = bytearray(struct.pack("!BBHHHBBH", 0x45, 0, 20 + tcp_length, 1, 0x4000, 64, 6, 0))
        ip += src.packed + dst.packed
        ip[10:12] = internet_checksum(ip).to_bytes(2, "big")
    else:
        ip = bytearray(struct.pack("!IHBB", 6 << 28, tcp_length, 6, 64)) + src.packed + dst.packed
    return bytes(ip) + tcp + payload, payload, len(ip)


def _check_pieces(
    pieces: list[bytes], original: bytes, payload: bytes, tcp: int, lost: int, *, sent: bool
) -> None:
    """The pieces are the original packet's, cut at wire segments, headers made to fit.

    ``sent``: pieces of a TSO packet (the checksum field the new pseudo-header
    sum, or the full checksum on a one-segment piece); else of a received
    packet (the field as it came: the kernel vouched for it).
    """
    version = original[0] >> 4
    src, dst = _addresses(version)
    covered = 0
    for piece in pieces:
        offset = (int.from_bytes(piece[tcp + 4 : tcp + 8], "big") - FIRST_SEQ) & 0xFFFF_FFFF
        data = piece[tcp + 32 :]
        assert offset % WIRE_MSS == 0
        assert data
        assert data == payload[offset : offset + len(data)]
        covered += len(data)
        last = offset + len(data) == len(payload)
        assert piece[tcp + 13] == (0x19 if last else 0x10)
        if version == 4:
            assert int.from_bytes(piece[2:4], "big") == len(piece)
            assert internet_checksum(piece[:20]) == 0
        else:
            assert int.from_bytes(piece[4:6], "big") == len(piece) - 40
        field = piece[tcp + 16 : tcp + 18]
        pseudo = pseudo_header_sum(src, dst, 6, len(piece) - tcp)
        if not sent:
            assert field == original[tcp + 16 : tcp + 18]
        elif len(data) > WIRE_MSS:
            assert int.from_bytes(field, "big") == pseudo
        else:
            assert ones_complement_sum(piece[tcp:], pseudo) == 0xFFFF
    # What is missing is the lost wire segments, the last perhaps short.
    missing = len(payload) - covered
    assert (lost - 1) * WIRE_MSS < missing <= lost * WIRE_MSS


@pytest.mark.parametrize("version", [4, 6])
async def test_wire_loss_cuts_a_tso_packet_into_the_surviving_segments(version: int) -> None:
    inner = _Recorder()
    lossy = FaultyLink(inner, Faults(loss=0.2, seed=version), wire_mtu=1500 + 20 * (version == 6))
    packet, payload, tcp = _big_tcp_packet(version, 30, 100)
    gso = GsoInfo(GsoType.TCPV4 if version == 4 else GsoType.TCPV6, WIRE_MSS, tcp + 32, tcp)
    # Until one packet loses a segment; the ones before went through whole.
    while not lossy.outbound.lost:
        inner.sent.clear()
        await lossy.send(packet, gso)
    assert inner.sent != [(packet, gso)]
    for piece, piece_gso in inner.sent:
        assert piece_gso == (gso if len(piece) - tcp - 32 > WIRE_MSS else None)
    pieces = [piece for piece, _ in inner.sent]
    _check_pieces(pieces, packet, payload, tcp, lossy.outbound.lost, sent=True)


@pytest.mark.parametrize("version", [4, 6])
async def test_wire_loss_cuts_a_coalesced_packet_into_the_surviving_segments(version: int) -> None:
    inner = _Recorder()
    lossy = FaultyLink(inner, Faults(loss=0.2, seed=version), wire_mtu=1500 + 20 * (version == 6))
    packet, payload, tcp = _big_tcp_packet(version, 30, 100)
    pieces: list[bytes] = []
    while not lossy.inbound.lost:
        inner.queued.append(IncomingPacket(packet, True))
        pieces = [(await lossy.receive()).data]
        while (incoming := lossy.receive_nowait()) is not None:
            pieces.append(incoming.data)
    assert pieces != [packet]
    _check_pieces(pieces, packet, payload, tcp, lossy.inbound.lost, sent=False)


async def test_wire_loss_leaves_packets_within_one_segment_to_one_draw() -> None:
    inner = _Recorder()
    lossy = FaultyLink(inner, Faults(loss=0.5, seed=5), wire_mtu=1500)
    small, _, _ = _big_tcp_packet(4, 1, 0)
    for _ in range(40):
        await lossy.send(small)
    assert inner.sent == [(small, None)] * (40 - lossy.outbound.lost)
    with pytest.raises(ValueError, match="wire_mtu"):
        FaultyLink(inner, Faults(), wire_mtu=100)


class _NowaitRecorder(_Recorder):
    """A recorder that also writes without waiting, taking at most ``room`` packets a call."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write_nowait(self, packets: list[tuple[bytes, GsoInfo | None]]) -> int:
        taken = packets[: self.room]
        self.sent += [(bytes(packet), gso) for packet, gso in taken]
        return len(taken)


async def test_wire_loss_passes_write_nowait_through_and_finishes_a_partial_write() -> None:
    """write_nowait sends the same surviving pieces as send; a packet the device took
    only in part is not counted, and handed over again it sends only the rest, with no
    second loss draw."""
    packet, _, tcp = _big_tcp_packet(4, 30, 100)
    gso = GsoInfo(GsoType.TCPV4, WIRE_MSS, tcp + 32, tcp)
    by_send = _Recorder()
    await FaultyLink(by_send, Faults(loss=0.2, seed=3), wire_mtu=1500).send(packet, gso)
    assert len(by_send.sent) > 2  # cut into several runs

    inner = _NowaitRecorder(room=1)
    lossy = FaultyLink(inner, Faults(loss=0.2, seed=3), wire_mtu=1500)
    assert lossy.write_nowait([(packet, gso)]) == 0
    assert inner.sent == by_send.sent[:1]
    draws = lossy.outbound.lost
    await lossy.send_many([(packet, gso)])
    assert inner.sent == by_send.sent
    assert lossy.outbound.lost == draws

    roomy = _NowaitRecorder(room=100)
    lossy = FaultyLink(roomy, Faults(loss=0.2, seed=3), wire_mtu=1500)
    assert lossy.write_nowait([(packet, gso)]) == 1
    assert roomy.sent == by_send.sent
    # An inner link that cannot write without waiting takes nothing this way.
    assert FaultyLink(_Recorder(), Faults()).write_nowait([(packet, gso)]) == 0


async def test_pcap_of_an_ip_link_is_raw_ip(tmp_path: Path) -> None:
    tshark = require_peer("tshark")
    cable = Cable(Medium.IP)
    left, right = host(1, Medium.IP), host(2, Medium.IP)
    path = tmp_path / "tun.pcap"
    captured = PcapLink(cable.a, path)
    async with pumping((left, captured), (right, cable.b)) as (left_pump, right_pump):
        sock = right.udp_bind(IPv4Address("10.0.0.2"), 53)
        left.udp_bind(IPv4Address("10.0.0.1")).send_to(
            b"query", (IPv4Address("10.0.0.2"), 53), anyio.current_time()
        )
        left_pump.kick()
        await right_pump.wait_until(sock.readable)
    await captured.aclose()
    with PcapReader(path) as reader:
        assert reader.linktype == LinkType.RAW
    result = await anyio.run_process(
        [tshark, "-r", str(path), "-T", "fields", "-e", "frame.protocols", "-e", "udp.dstport"]
    )
    assert result.stdout.decode().split() == ["raw:ip:udp:dns", "53"]


async def test_pcap_link_passes_bursts_through_and_records_them(tmp_path: Path) -> None:
    cable = Cable(Medium.IP)
    path = tmp_path / "burst.pcap"
    captured = PcapLink(cable.a, path)
    arriving = [bytes([0x45, n]) * 10 for n in range(3)]
    for packet in arriving:
        await cable.b.send(packet)
    taken = []
    while (incoming := captured.receive_nowait()) is not None:
        taken.append(incoming.data)
    assert taken == arriving
    leaving = [bytes([0x45, 0x80 + n]) * 10 for n in range(2)]
    await captured.send_many([(packet, None) for packet in leaving])
    assert [(await cable.b.receive()).data for _ in leaving] == leaving
    await captured.aclose()
    with PcapReader(path) as reader:
        assert [record.data for record in reader] == arriving + leaving


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.binary(max_size=40)), max_size=20))
async def test_any_bytes_through_a_bridge_never_raise(frames: list[tuple[int, bytes]]) -> None:
    bridge = Bridge(max_entries=4)
    ports = [bridge.port(max_queued=8) for _ in range(3)]
    for index, data in frames:
        ports[index].send_nowait(data)
    assert len(bridge.mac_table()) <= 4
