"""In-memory links: cables, the learning bridge, faults, pcap capture; interfaces talking over them.

The TCP here is the real core (:mod:`netshim.ip.tcp`) on both ends, driven by
the small pump in ``link_pump.py``.
"""

from __future__ import annotations

import hashlib
import random
from ipaddress import IPv4Address, IPv4Interface, IPv6Interface
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from link_pump import pumping, receive_all, send_all

from netshim.ip.iface import Interface, Medium
from netshim.ip.links import Bridge, Cable, CableEnd, Faults, FaultyLink, PcapLink
from netshim.pcap import LinkType, PcapReader
from netshim.protocols.ip import EthernetAddress, Icmpv4Repr, IpProtocol
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


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.binary(max_size=40)), max_size=20))
async def test_any_bytes_through_a_bridge_never_raise(frames: list[tuple[int, bytes]]) -> None:
    bridge = Bridge(max_entries=4)
    ports = [bridge.port(max_queued=8) for _ in range(3)]
    for index, data in frames:
        ports[index].send_nowait(data)
    assert len(bridge.mac_table()) <= 4
