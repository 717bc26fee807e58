"""net.capture(): virtual traffic recorded as pcap, and read back by tshark."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from netshim import VirtualNetwork
from netshim.pcap import PcapReader
from netshim.protocols.ip import EthernetRepr, IpProtocol, Ipv4Repr, TcpFlags, TcpRepr
from netshim.testing import require_peer

pytestmark = pytest.mark.anyio


async def record(path: Path) -> None:
    net = VirtualNetwork(seed=5)
    web = net.add_host("web.internal", ["10.0.0.2", "fd00::2"])
    client = net.add_host("client")
    listener = await web.listen_tcp(None, 80)
    with net.capture(path):
        # A clean conversation: handshake, data both ways (one write above the MSS), FINs.
        stream = await client.connect_tcp("web.internal", 80)
        server = await listener.accept()
        await stream.send(b"GET / HTTP/1.0\r\n\r\n")
        await server.receive()
        await server.send(b"x" * 100_000)
        await server.send_eof()
        received = 0
        while received < 100_000:
            received += len(await stream.receive())
        await stream.aclose()
        await server.aclose()
        # A reset and a refused connect, over IPv4.
        aborted = await client.connect_tcp("10.0.0.2", 80)
        await (await listener.accept()).abort()
        with pytest.raises(ConnectionResetError):
            await aborted.receive()
        with pytest.raises(ConnectionRefusedError):
            await client.connect_tcp("10.0.0.2", 81)
    # Traffic after the capture closed is not recorded and does not fail.
    late = await client.connect_tcp("10.0.0.2", 80)
    await late.send(b"unrecorded")
    await listener.aclose()


def tshark(path: Path, *arguments: str) -> str:
    result = subprocess.run(
        [
            require_peer("tshark"),
            "-r",
            str(path),
            "-o",
            "tcp.check_checksum:TRUE",
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
            *arguments,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_capture_is_valid_pcap_with_consistent_tcp(tmp_path: Path) -> None:
    path = tmp_path / "virtual.pcap"
    await record(path)
    with PcapReader(path) as reader:
        frames = [EthernetRepr.parse(record.data) for record in reader]
    flags = []
    for frame in frames:
        if frame.ethertype == 0x0800:
            ip = Ipv4Repr.parse(frame.payload)
            if ip.protocol == IpProtocol.TCP:
                segment = TcpRepr.parse(ip.payload, ip.src_addr, ip.dst_addr)
                flags.append(segment.flags)
    assert any(f & TcpFlags.RST for f in flags), "the abort and the refusal appear as RST"
    assert sum(1 for f in flags if f & TcpFlags.SYN and not f & TcpFlags.ACK) == 2


async def test_tshark_reads_the_conversations(tmp_path: Path) -> None:
    path = tmp_path / "virtual.pcap"
    await record(path)
    fields = tshark(
        path,
        "-T",
        "fields",
        "-e",
        "tcp.stream",
        "-e",
        "tcp.flags.str",
        "-e",
        "tcp.len",
        "-e",
        "dns.qry.name",
        "-e",
        "tcp.checksum.status",
        "-e",
        "ip.checksum.status",
    )
    rows = [line.split("\t") for line in fields.splitlines()]
    # DNS lookups of web.internal crossed the network and were recorded.
    assert any(row[3] == "web.internal" for row in rows)
    streams: dict[str, list[list[str]]] = {}
    for row in rows:
        if row[0]:
            streams.setdefault(row[0], []).append(row)
    assert len(streams) == 3, streams.keys()
    clean = streams["0"]
    # tcp.flags.str spells flags as letters in fixed columns: "··········S·" is a bare SYN.
    assert [row[1] for row in clean[:3]] == ["··········S·", "·······A··S·", "·······A····"]
    client_bytes = sum(int(row[2] or 0) for row in clean)
    assert client_bytes == len(b"GET / HTTP/1.0\r\n\r\n") + 100_000
    assert sum(1 for row in clean if "F" in row[1]) == 2, "both sides sent FIN"
    # Checksum status: 1 is good, 0 bad; tshark verified every TCP segment.
    assert [row[4] for row in rows if row[0]] == ["1"] * sum(len(s) for s in streams.values())
    assert all(row[5] != "0" for row in rows), "no IP checksum is bad"
    assert any("R" in row[1] for row in streams["1"]), "the aborted connection ends in RST"
    assert any("R" in row[1] for row in streams["2"]), "the refused connect is answered by RST"
    expert = tshark(path, "-q", "-z", "expert,warn")
    assert "Bad checksum" not in expert
    assert "Previous segment not captured" not in expert
    assert "ACKed segment that wasn't captured" not in expert


async def test_capture_can_stop_without_a_with_block(tmp_path: Path) -> None:
    net = VirtualNetwork(seed=0)
    a, b = net.add_host("a"), net.add_host("b")
    capture = net.capture(tmp_path / "manual.pcap")
    server = await a.open_udp("0.0.0.0", 9)
    sender = await b.open_udp("0.0.0.0", 0)
    await sender.send(b"one", ("10.0.0.2", 9))
    capture.close()
    await sender.send(b"two", ("10.0.0.2", 9))
    assert (await server.receive())[0] == b"one"
    with PcapReader(tmp_path / "manual.pcap") as reader:
        assert len(list(reader)) == 1
