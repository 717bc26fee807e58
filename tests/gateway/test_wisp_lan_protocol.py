"""The LAN extension of the sans-I/O Wisp core: listeners, ACCEPT, MEMBERSHIP, bad packets."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netshim import LocalProtocolError
from netshim.protocols import wisp
from netshim.protocols.wisp import (
    SERVER_STREAM_BASE,
    Accept,
    Close,
    CloseReason,
    Connect,
    ConnectionState,
    Continue,
    Data,
    Info,
    LanExtension,
    Listen,
    Listening,
    Membership,
    MembershipChange,
    PacketRejected,
    Role,
    StreamType,
    UdpExtension,
    WispConnection,
    pack_datagram,
    parse_datagram,
    parse_extensions,
)

# Written out from docs/lan.md: LISTEN on stream 1, TCP, port 8080, empty host.
LISTEN_1_TCP_8080 = bytes.fromhex("e0 01000000 01 901f")
# LISTENING on stream 1: port 8080, host 10.1.0.2.
LISTENING_1 = bytes.fromhex("e1 01000000 901f") + b"10.1.0.2"
# ACCEPT stream 0x80000000 for listener 1 from 10.1.0.3:40000.
ACCEPT_FROM_3 = bytes.fromhex("e2 00000080 01000000 409c") + b"10.1.0.3"
# MEMBERSHIP: this client joined as alice.demo at 10.1.0.2/24.
JOINED_ALICE = bytes.fromhex("e3 00000000 01 18 0a") + b"alice.demo" + b"10.1.0.2"


def pump(source: WispConnection, target: WispConnection, *events: wisp.Event) -> list[wisp.Event]:
    for event in events:
        target.receive_data(source.send(event))
    return list(target.events())


def pair(
    client_lan: LanExtension | None = None, server_lan: bool = True
) -> tuple[WispConnection, WispConnection]:
    """A v2 server and client after the handshake, with the LAN extension as asked."""
    server_ext: list[wisp.Extension] = [UdpExtension()]
    if server_lan:
        server_ext.append(LanExtension())
    client_ext: list[wisp.Extension] = [UdpExtension()]
    if client_lan is not None:
        client_ext.append(client_lan)
    server = WispConnection(Role.SERVER, version=2, extensions=server_ext, buffer_size=4)
    client = WispConnection(Role.CLIENT, version=2, extensions=client_ext)
    client.receive_data(server.initiate())
    assert isinstance(next(iter(client.events())), Info)
    server.receive_data(client.send(client.local_info()))
    list(server.events())
    client.receive_data(server.send(Continue(0, 4)))
    list(client.events())
    assert server.state is client.state is ConnectionState.OPEN
    return server, client


class TestExtension:
    def test_client_payload_round_trips_and_hides_the_token(self) -> None:
        ext = LanExtension("demo", "alice", "s3cret")
        (parsed,) = parse_extensions(ext.emit(), Role.CLIENT)
        assert parsed == ext
        assert "s3cret" not in repr(parsed)
        assert ext.emit() == bytes.fromhex("e1 14000000 01 04") + b"demo" + b"\x05alice" + (
            b"\x06\x00s3cret"
        )

    def test_server_payload_is_the_version_only(self) -> None:
        assert LanExtension().emit() == bytes.fromhex("e1 01000000 01")
        assert parse_extensions(LanExtension().emit(), Role.SERVER) == (LanExtension(),)

    @pytest.mark.parametrize(
        "payload",
        [b"", b"\x02", b"\x01\x05ab", b"\x01\x00\x00\x05\x00ab", b"\x01\x00\x00\x00\x00x"],
        ids=["empty", "version-2", "short-lan", "short-token", "stray-byte"],
    )
    def test_malformed_client_payloads_are_errors(self, payload: bytes) -> None:
        raw = struct.pack("<BI", 0xE1, len(payload)) + payload
        with pytest.raises(ValueError):
            parse_extensions(raw, Role.CLIENT)

    def test_names_longer_than_a_label_are_refused(self) -> None:
        with pytest.raises(ValueError, match="63 bytes"):
            LanExtension("x" * 64)

    def test_negotiated_only_when_both_sides_announce_it(self) -> None:
        server, client = pair(LanExtension("demo", "alice", "t"))
        assert server.lan_enabled
        assert client.lan_enabled
        assert server.lan_request == LanExtension("demo", "alice", "t")
        server, client = pair(None)
        assert not server.lan_enabled
        assert not client.lan_enabled
        assert server.lan_request is None
        server, client = pair(LanExtension(), server_lan=False)
        assert not client.lan_enabled
        with pytest.raises(LocalProtocolError, match="not negotiated"):
            client.send(Listen(1, 80))


class TestListeners:
    def test_literal_packets(self) -> None:
        server, client = pair(LanExtension("demo", "alice", "t"))
        assert client.send(Listen(1, 8080)) == LISTEN_1_TCP_8080
        server.receive_data(LISTEN_1_TCP_8080)
        assert list(server.events()) == [Listen(1, 8080, "", StreamType.TCP)]
        assert server.send(Listening(1, "10.1.0.2", 8080)) == LISTENING_1
        assert server.send(Accept(SERVER_STREAM_BASE, 1, "10.1.0.3", 40000)) == ACCEPT_FROM_3
        joined = Membership(MembershipChange.JOINED, "10.1.0.2", "alice.demo", 24)
        assert server.send(joined) == JOINED_ALICE
        client.receive_data(LISTENING_1)
        client.receive_data(ACCEPT_FROM_3)
        client.receive_data(JOINED_ALICE)
        assert list(client.events()) == [
            Listening(1, "10.1.0.2", 8080),
            Accept(SERVER_STREAM_BASE, 1, "10.1.0.3", 40000),
            joined,
        ]

    def test_accepted_stream_carries_data_with_credits_both_ways(self) -> None:
        server, client = pair(LanExtension("demo", "alice", "t"))
        pump(client, server, Listen(1, 80))
        stream = SERVER_STREAM_BASE + 7
        assert pump(server, client, Accept(stream, 1, "10.1.0.3", 5000)) == [
            Accept(stream, 1, "10.1.0.3", 5000)
        ]
        assert client.credit(stream) == 4
        for n in range(4):
            assert pump(client, server, Data(stream, b"x%d" % n)) == [Data(stream, b"x%d" % n)]
        with pytest.raises(LocalProtocolError, match="no credit"):
            client.send(Data(stream, b"over"))
        refill = server.release(stream, 4)
        assert refill == Continue(stream, 4)
        assert pump(server, client, refill) == [refill]
        assert pump(server, client, Data(stream, b"down")) == [Data(stream, b"down")]
        assert pump(client, server, Close(stream, CloseReason.VOLUNTARY)) == [
            Close(stream, CloseReason.VOLUNTARY)
        ]

    def test_a_client_ignoring_credits_on_an_accepted_stream_is_throttled(self) -> None:
        server, client = pair(LanExtension("demo", "alice", "t"))
        pump(client, server, Listen(1, 80))
        stream = SERVER_STREAM_BASE
        pump(server, client, Accept(stream, 1, "10.1.0.3", 5000))
        forged = struct.pack("<BI", 2, stream) + b"x"
        for _ in range(4):
            server.receive_data(forged)
        assert len(list(server.events())) == 4
        server.receive_data(forged)
        (rejected,) = server.events()
        assert isinstance(rejected, PacketRejected)
        assert rejected.reason == CloseReason.THROTTLED

    def test_udp_listener_carries_addressed_datagrams(self) -> None:
        server, client = pair(LanExtension("demo", "alice", "t"))
        assert pump(client, server, Listen(3, 0, "", StreamType.UDP)) == [
            Listen(3, 0, "", StreamType.UDP)
        ]
        pump(server, client, Listening(3, "10.1.0.2", 33000))
        datagram = pack_datagram("10.1.0.9", 53, b"query")
        # No credits on UDP: more datagrams than the window go through.
        for _ in range(10):
            assert pump(client, server, Data(3, datagram)) == [Data(3, datagram)]
        assert parse_datagram(datagram) == ("10.1.0.9", 53, b"query")

    def test_data_on_a_tcp_listener_is_rejected(self) -> None:
        server, client = pair(LanExtension("demo", "alice", "t"))
        pump(client, server, Listen(1, 80))
        server.receive_data(struct.pack("<BI", 2, 1) + b"x")
        (rejected,) = server.events()
        assert isinstance(rejected, PacketRejected)
        assert rejected.response() == Close(1, CloseReason.INVALID_INFO)
        assert not server.is_listener(1)

    def test_accept_for_a_closed_listener_is_refused_by_the_client(self) -> None:
        server, client = pair(LanExtension("demo", "alice", "t"))
        pump(client, server, Listen(1, 80))
        accept = server.send(Accept(SERVER_STREAM_BASE, 1, "10.1.0.3", 5000))
        client.send(Close(1, CloseReason.VOLUNTARY))
        client.receive_data(accept)
        (rejected,) = client.events()
        assert isinstance(rejected, PacketRejected)
        assert rejected.response() == Close(SERVER_STREAM_BASE, CloseReason.REFUSED)

    def test_server_refuses_to_accept_for_something_not_a_listener(self) -> None:
        server, client = pair(LanExtension("demo", "alice", "t"))
        pump(client, server, Connect(1, "example.com", 80))
        with pytest.raises(LocalProtocolError, match="not a TCP listener"):
            server.send(Accept(SERVER_STREAM_BASE, 1, "10.1.0.3", 5000))
        with pytest.raises(ValueError):
            Accept(5, 1, "10.1.0.3", 5000)

    @pytest.mark.parametrize(
        "packet",
        [
            bytes.fromhex("e0 00000000 01 5000"),  # LISTEN on stream 0
            bytes.fromhex("e0 00000080 01 5000"),  # LISTEN on a server stream id
            bytes.fromhex("01 01000080 01 5000") + b"a",  # CONNECT on a server stream id
            bytes.fromhex("e0 01000000 01"),  # short
            bytes.fromhex("e0 01000000 07 5000"),  # unknown type
            bytes.fromhex("e0 01000000 01 5000 ff"),  # host not UTF-8
        ],
        ids=["stream-0", "server-id", "connect-server-id", "short", "type", "utf8"],
    )
    def test_malformed_listens_are_rejected_and_the_connection_lives(self, packet: bytes) -> None:
        server, client = pair(LanExtension("demo", "alice", "t"))
        server.receive_data(packet)
        (rejected,) = server.events()
        assert isinstance(rejected, PacketRejected)
        assert server.state is ConnectionState.OPEN
        assert pump(client, server, Listen(9, 80)) == [Listen(9, 80)]

    def test_without_negotiation_a_listen_is_an_unknown_packet(self) -> None:
        server, _client = pair(None)
        server.receive_data(LISTEN_1_TCP_8080)
        (rejected,) = server.events()
        assert isinstance(rejected, PacketRejected)
        assert "unknown packet type 0xe0" in rejected.detail

    @settings(max_examples=300, deadline=None)
    @given(kind=st.sampled_from([0xE0, 0xE1, 0xE2, 0xE3]), body=st.binary(max_size=40))
    def test_arbitrary_lan_packets_never_raise(self, kind: int, body: bytes) -> None:
        server, client = pair(LanExtension("demo", "alice", "t"))
        pump(client, server, Listen(1, 80))
        for stream in (0, 1, SERVER_STREAM_BASE):
            packet = struct.pack("<BI", kind, stream) + body
            server.receive_data(packet)
            client.receive_data(packet)
            list(server.events())
            list(client.events())
        assert server.state is client.state is ConnectionState.OPEN


class TestDatagrams:
    def test_round_trip(self) -> None:
        assert parse_datagram(pack_datagram("fd00::1", 7, b"")) == ("fd00::1", 7, b"")

    @pytest.mark.parametrize(
        "data", [b"", b"\x07\x00", b"\x07\x00\x05ab", b"\x00\x00\x01a", b"\x07\x00\x01\xff"]
    )
    def test_malformed(self, data: bytes) -> None:
        with pytest.raises(ValueError):
            parse_datagram(data)
