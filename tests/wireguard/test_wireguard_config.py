"""wg-quick files and ``wireguard://`` URLs become WireGuardStacks; bad files, one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netshim import stack_from_url
from netshim.protocols import wireguard as wg
from netshim.stacks.wireguard import WireGuardStack, parse_config

PRIVATE = wg.key_to_text(wg.generate_private_key())
PEER = wg.key_to_text(wg.public_key(wg.generate_private_key()))
PSK = wg.key_to_text(bytes(range(32)))

CONFIG = f"""
# a comment
[Interface]
PrivateKey = {PRIVATE}
Address = 10.8.0.2/24, fd00:8::2/64
Address = 10.9.0.2/32
DNS = 10.8.0.1, corp.example
ListenPort = 51999
MTU = 1380
Table = off

[Peer]
PublicKey = {PEER}
PresharedKey = {PSK}
AllowedIPs = 0.0.0.0/0, ::/0
Endpoint = [2001:db8::1]:51820
PersistentKeepalive = 25

[Peer]
PublicKey = {wg.key_to_text(wg.public_key(wg.generate_private_key()))}
AllowedIPs = 10.20.0.0/16
Endpoint = vpn.example.com:4500
PersistentKeepalive = off
"""


def test_parse_config() -> None:
    config = parse_config(CONFIG)
    assert config.private_key == wg.key_from_text(PRIVATE)
    assert config.addresses == ("10.8.0.2/24", "fd00:8::2/64", "10.9.0.2/32")
    assert config.dns == ("10.8.0.1",)
    assert config.listen_port == 51999
    assert config.mtu == 1380
    first, second = config.peers
    assert first.public_key == wg.key_from_text(PEER)
    assert first.preshared_key == bytes(range(32))
    assert first.allowed_ips == ("0.0.0.0/0", "::/0")
    assert first.endpoint == ("2001:db8::1", 51820)
    assert first.persistent_keepalive == 25.0
    assert second.endpoint == ("vpn.example.com", 4500)
    assert second.persistent_keepalive == 0.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[Interface]\nAddress = 10.0.0.1/24\n", "no PrivateKey"),
        (f"[Interface]\nPrivateKey = {PRIVATE}\n[Peer]\nAllowedIPs = 10.0.0.0/8\n", "PublicKey"),
        (f"[Interface]\nPrivateKey = {PRIVATE}\n[Bogus]\n", "unknown section"),
        ("PrivateKey = x\n", "inside a section"),
        (
            f"[Interface]\nPrivateKey = {PRIVATE}\n[Peer]\nPublicKey = {PEER}\nEndpoint = x\n",
            "host:port",
        ),
        ("[Interface]\nPrivateKey = AAAA\n", "32 bytes"),
    ],
)
def test_bad_configs(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_config(text)


def test_from_config_and_url(tmp_path: Path) -> None:
    path = tmp_path / "wg0.conf"
    path.write_text(CONFIG)
    for stack in (WireGuardStack.from_config(path), stack_from_url(f"wireguard://{path}")):
        assert isinstance(stack, WireGuardStack)
        assert stack.addresses == ["10.8.0.2/24", "fd00:8::2/64", "10.9.0.2/32"]
        assert len(stack.peers) == 2
        # Host names wait for the transport stack's resolver.
        assert stack.peers[1].endpoint is None
    with pytest.raises(ValueError, match="path"):
        stack_from_url("wireguard://")


@pytest.mark.parametrize("odd", [False, True])
@pytest.mark.parametrize("version", [4, 6])
def test_segment_tcp_cuts_a_large_packet_as_tso_would(version: int, odd: bool) -> None:
    import ipaddress

    from netshim.ip.iface import GsoInfo, GsoType
    from netshim.protocols.ip.checksum import internet_checksum, pseudo_header_sum
    from netshim.stacks.wireguard import segment_tcp

    # 5120 bytes: 3 full pieces and a short one (of odd length: a padded last word).
    payload = bytes(range(256)) * 20 + (b"\xff" if odd else b"")
    source = ipaddress.ip_address("10.0.0.1" if version == 4 else "fd00::1")
    destination = ipaddress.ip_address("10.0.0.2" if version == 4 else "fd00::2")
    # TCP header: ports, seq 0xFFFFFF00 (wraps), ack, offset 5, PSH|ACK|FIN.
    tcp = (
        (1234).to_bytes(2, "big")
        + (80).to_bytes(2, "big")
        + (0xFFFFFF00).to_bytes(4, "big")
        + (7).to_bytes(4, "big")
        + bytes([0x50, 0x19])
        + (65535).to_bytes(2, "big")
        + bytes(4)
    )
    if version == 4:
        ip = bytes([0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0])
        ip += source.packed + destination.packed
    else:
        ip = bytes([0x60, 0, 0, 0, 0, 0, 6, 64]) + source.packed + destination.packed
    gso = GsoInfo(GsoType.TCPV4 if version == 4 else GsoType.TCPV6, 1400, len(ip) + 20, len(ip))
    pieces = segment_tcp(ip + tcp + payload, gso)
    assert [len(p) - len(ip) - 20 for p in pieces] == [1400, 1400, 1400, 920 + odd]
    joined = b""
    for index, piece in enumerate(pieces):
        segment = piece[len(ip) :]
        pseudo = pseudo_header_sum(source, destination, 6, len(segment))
        assert internet_checksum(segment, pseudo) == 0
        assert int.from_bytes(segment[4:8], "big") == (0xFFFFFF00 + 1400 * index) & 0xFFFFFFFF
        last = index == len(pieces) - 1
        assert segment[13] == (0x19 if last else 0x10)
        if version == 4:
            assert internet_checksum(piece[:20]) == 0
            assert int.from_bytes(piece[2:4], "big") == len(piece)
            assert int.from_bytes(piece[4:6], "big") == 0x1234 + index
        else:
            assert int.from_bytes(piece[4:6], "big") == len(segment)
        joined += segment[20:]
    assert joined == payload


@settings(max_examples=200, deadline=None)
@given(
    payload=st.binary(min_size=1, max_size=9000),
    size=st.integers(min_value=1, max_value=9000),
    sequence=st.integers(min_value=0, max_value=0xFFFFFFFF),
    version=st.sampled_from([4, 6]),
)
def test_segment_tcp_checksums_hold_for_any_payload(
    payload: bytes, size: int, sequence: int, version: int
) -> None:
    import ipaddress

    from netshim.ip.iface import GsoInfo, GsoType
    from netshim.protocols.ip.checksum import internet_checksum, pseudo_header_sum
    from netshim.stacks.wireguard import segment_tcp

    source = ipaddress.ip_address("192.0.2.1" if version == 4 else "2001:db8::1")
    destination = ipaddress.ip_address("198.51.100.7" if version == 4 else "2001:db8::7")
    # Ports, sequence, ack, offset 8 (12 bytes of options), ACK, window, checksum, urgent.
    tcp = (
        (443).to_bytes(2, "big")
        + (50000).to_bytes(2, "big")
        + sequence.to_bytes(4, "big")
        + (1).to_bytes(4, "big")
        + bytes([0x80, 0x10])
        + (502).to_bytes(2, "big")
        + bytes(4)
        + bytes([1, 1, 8, 10])
        + bytes(range(8))
    )
    if version == 4:
        ip = bytes([0x45, 0, 0, 0, 0xFF, 0xFF, 0x40, 0, 64, 6, 0, 0])
        ip += source.packed + destination.packed
    else:
        ip = bytes([0x60, 0, 0, 0, 0, 0, 6, 64]) + source.packed + destination.packed
    gso_type = GsoType.TCPV4 if version == 4 else GsoType.TCPV6
    pieces = segment_tcp(ip + tcp + payload, GsoInfo(gso_type, size, len(ip) + 32, len(ip)))
    joined = b""
    for piece in pieces:
        segment = piece[len(ip) :]
        pseudo = pseudo_header_sum(source, destination, 6, len(segment))
        assert internet_checksum(segment, pseudo) == 0
        if version == 4:
            assert internet_checksum(piece[:20]) == 0
        joined += segment[32:]
    assert joined == payload


def _cut_one_by_one(packet: bytes, header_len: int, tcp: int, size: int) -> list[bytes]:
    """The cutting ``segment_tcp`` does, piece by piece from the RFCs' definitions."""
    import ipaddress

    from netshim.protocols.ip.checksum import internet_checksum, pseudo_header_sum

    version4 = packet[0] >> 4 == 4
    if version4:
        source, destination = (ipaddress.ip_address(packet[at : at + 4]) for at in (12, 16))
    else:
        source, destination = (ipaddress.ip_address(packet[at : at + 16]) for at in (8, 24))
    payload = packet[header_len:]
    sequence = int.from_bytes(packet[tcp + 4 : tcp + 8], "big")
    pieces = []
    for index, offset in enumerate(range(0, len(payload), size)):
        chunk = payload[offset : offset + size]
        header = bytearray(packet[:header_len])
        header[tcp + 4 : tcp + 8] = ((sequence + offset) % 2**32).to_bytes(4, "big")
        if offset + size < len(payload):
            header[tcp + 13] &= ~0x09  # FIN and PSH only on the last piece
        header[tcp + 16 : tcp + 18] = bytes(2)
        tcp_length = header_len - tcp + len(chunk)
        if version4:
            header[2:4] = (tcp + tcp_length).to_bytes(2, "big")
            identification = int.from_bytes(packet[4:6], "big")
            header[4:6] = ((identification + index) % 2**16).to_bytes(2, "big")
            header[10:12] = bytes(2)
            header[10:12] = internet_checksum(bytes(header[:tcp])).to_bytes(2, "big")
        else:
            header[4:6] = (tcp - 40 + tcp_length).to_bytes(2, "big")
        pseudo = pseudo_header_sum(source, destination, 6, tcp_length)
        checksum = internet_checksum(bytes(header[tcp:]) + chunk, pseudo)
        header[tcp + 16 : tcp + 18] = checksum.to_bytes(2, "big")
        pieces.append(bytes(header) + chunk)
    return pieces


@settings(max_examples=300, deadline=None)
@given(
    payload=st.binary(min_size=1, max_size=6000),
    size=st.integers(min_value=1, max_value=3000),
    sequence=st.integers(min_value=0, max_value=0xFFFFFFFF),
    identification=st.integers(min_value=0, max_value=0xFFFF),
    flags=st.sampled_from([0x10, 0x18, 0x11, 0x19]),
    version=st.sampled_from([4, 6]),
    options=st.sampled_from([0, 12]),
)
def test_segment_tcp_gives_the_pieces_cut_one_by_one(
    payload: bytes,
    size: int,
    sequence: int,
    identification: int,
    flags: int,
    version: int,
    options: int,
) -> None:
    from netshim.ip.iface import GsoInfo, GsoType
    from netshim.stacks.wireguard import segment_tcp

    tcp = (
        (443).to_bytes(2, "big")
        + (50000).to_bytes(2, "big")
        + sequence.to_bytes(4, "big")
        + (1).to_bytes(4, "big")
        + bytes([(5 + options // 4) << 4, flags])
        + (502).to_bytes(2, "big")
        + bytes([0x12, 0x34, 0, 0])  # a pseudo-header sum's place, overwritten
        + bytes(range(1, options + 1))
    )
    if version == 4:
        ip = bytes([0x45, 0, 0, 0]) + identification.to_bytes(2, "big")
        ip += bytes([0x40, 0, 64, 6, 0, 0, 192, 0, 2, 1, 198, 51, 100, 7])
    else:
        ip = bytes([0x60, 0, 0, 0, 0, 0, 6, 64]) + bytes(range(32))
    gso_type = GsoType.TCPV4 if version == 4 else GsoType.TCPV6
    packet = ip + tcp + payload
    header_len = len(ip) + len(tcp)
    pieces = segment_tcp(packet, GsoInfo(gso_type, size, header_len, len(ip)))
    assert [bytes(piece) for piece in pieces] == _cut_one_by_one(packet, header_len, len(ip), size)


def _segments(count: int, *, version: int = 4, flags: int = 0x18) -> list[bytes]:
    """A 1000-byte-per-piece TCP burst cut by segment_tcp (PSH only on the last piece)."""
    from netshim.ip.iface import GsoInfo, GsoType
    from netshim.stacks.wireguard import segment_tcp

    tcp = (
        (8080).to_bytes(2, "big")
        + (40000).to_bytes(2, "big")
        + (0xFFFFF000).to_bytes(4, "big")  # wraps within the burst
        + (99).to_bytes(4, "big")
        + bytes([0x80, flags])
        + (1000).to_bytes(2, "big")
        + bytes(4)
        + bytes([1, 1, 8, 10])
        + bytes(range(8))
    )
    if version == 4:
        ip = bytes([0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2])
    else:
        ip = bytes([0x60, 0, 0, 0, 0, 0, 6, 64]) + bytes(15) + b"\x01" + bytes(15) + b"\x02"
    payload = bytes(index % 251 for index in range(1000 * count - 1))
    gso_type = GsoType.TCPV4 if version == 4 else GsoType.TCPV6
    return segment_tcp(ip + tcp + payload, GsoInfo(gso_type, 1000, len(ip) + 32, len(ip)))


@pytest.mark.parametrize("version", [4, 6])
def test_coalesce_tcp_joins_a_burst_back_into_one_segment(version: int) -> None:
    from collections import deque

    from netshim.protocols.ip.checksum import internet_checksum
    from netshim.stacks.wireguard import coalesce_tcp

    pieces = _segments(10, version=version)
    queue = deque([*pieces, b"after"])
    joined, count = coalesce_tcp(queue)
    assert count == 10
    assert list(queue) == [b"after"]
    ip = 20 if version == 4 else 40
    end = ip + 32
    assert joined[end:] == b"".join(piece[end:] for piece in pieces)
    assert joined[ip + 4 : ip + 8] == pieces[0][ip + 4 : ip + 8]
    assert joined[ip + 13] == 0x18  # PSH from the last piece
    assert joined[ip + 20 : end] == pieces[0][ip + 20 : end]
    if version == 4:
        assert int.from_bytes(joined[2:4], "big") == len(joined)
        assert internet_checksum(joined[:20]) == 0
    else:
        assert int.from_bytes(joined[4:6], "big") == len(joined) - 40


def test_coalesce_tcp_keeps_apart_what_does_not_continue() -> None:
    from collections import deque

    from netshim.stacks.wireguard import coalesce_tcp

    pieces = _segments(4)
    # A gap in the sequence: the run ends before it.
    assert coalesce_tcp(deque([pieces[0], pieces[2]])) == (pieces[0], 1)
    # Another connection (a different port).
    other = bytearray(pieces[1])
    other[20] ^= 1
    assert coalesce_tcp(deque([pieces[0], bytes(other)])) == (pieces[0], 1)
    # A different timestamp option.
    stamped = bytearray(pieces[1])
    stamped[-1000 - 1] ^= 1
    assert coalesce_tcp(deque([pieces[0], bytes(stamped)])) == (pieces[0], 1)
    # PSH ends a run; FIN, a bare ACK or a non-TCP packet are never joined.
    assert coalesce_tcp(deque([pieces[3], pieces[0]]))[1] == 1
    fin = _segments(2, flags=0x11)
    assert coalesce_tcp(deque(fin))[1] == 1
    assert coalesce_tcp(deque([pieces[0][:52], pieces[1]]))[1] == 1
    # The joined flags are the last joined piece's, not those of what ended the run.
    pushed = bytearray(pieces[3])
    pushed[20] ^= 1
    joined, count = coalesce_tcp(deque([pieces[0], pieces[1], bytes(pushed)]))
    assert count == 2
    assert joined[33] == 0x10
    # At most ``limit`` pieces.
    queue = deque(pieces)
    assert coalesce_tcp(queue, limit=3)[1] == 3
    assert len(queue) == 1


def test_gateway_server_addressing_from_its_config() -> None:
    # The gateway's side: each family's network is the clients', the DNS
    # address is DNS ='s where it lies in that network, else the last but one.
    from netshim.gateway._wireguard import WireGuardServer
    from netshim.policy import Policy
    from netshim.stacks import HostStack

    def server(interface: str) -> WireGuardServer:
        text = f"[Interface]\nPrivateKey = {PRIVATE}\n{interface}\n[Peer]\nPublicKey = {PEER}\n"
        return WireGuardServer(text, stack=HostStack(), policy=Policy(), port=0)

    both = server("Address = 10.99.0.1/24, fd99::1/64\nDNS = fd99::53, 10.1.1.1")
    addressing = both.addressing
    assert (str(addressing.gateway4), str(addressing.dns4)) == ("10.99.0.1", "10.99.0.254")
    assert addressing.program6 is not None
    assert (str(addressing.gateway6), str(addressing.dns6)) == ("fd99::1", "fd99::53")
    assert server("Address = 10.99.0.1/24").addressing.program6 is None
    with pytest.raises(ValueError, match="too small"):
        server("Address = 10.99.0.1/24, fd99::1/128")
    with pytest.raises(ValueError, match="needs an IPv4 Address"):
        server("Address = fd99::1/64")
