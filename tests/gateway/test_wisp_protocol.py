"""The sans-I/O Wisp core: literal packets, both handshakes, credits, malformed input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netshim import LocalProtocolError, RemoteProtocolError
from netshim.protocols import wisp
from netshim.protocols.wisp import (
    Close,
    CloseReason,
    Connect,
    ConnectionClosed,
    ConnectionState,
    Continue,
    Data,
    Info,
    MotdExtension,
    PacketRejected,
    PasswordAuthExtension,
    PasswordCredentials,
    Role,
    StreamConfirmationExtension,
    StreamType,
    UdpExtension,
    UnknownExtension,
    WispConnection,
    parse_extensions,
)

# Packets written out by hand from the specification's tables (little-endian).
CONTINUE_0_128 = bytes.fromhex("03 00000000 80000000")
CONNECT_TCP_1 = bytes.fromhex("01 01000000 01 5000") + b"example.com"  # TCP, port 80
CONNECT_UDP_2 = bytes.fromhex("01 02000000 02 3500") + b"1.1.1.1"  # UDP, port 53
DATA_1_HELLO = bytes.fromhex("02 01000000") + b"hello"
CLOSE_1_VOLUNTARY = bytes.fromhex("04 01000000 02")
CONTINUE_1_64 = bytes.fromhex("03 01000000 40000000")
# What wisp-js 0.5.0's server sends first with UDP enabled and a MOTD "hi":
# INFO 2.0, extension 0x01 with no payload, extension 0x04 with 2 bytes.
SERVER_INFO_UDP_MOTD = bytes.fromhex("05 00000000 02 00 01 00000000 04 02000000") + b"hi"
# And what wisp-js's client answers (UDP and MOTD, empty payloads).
CLIENT_INFO_UDP_MOTD = bytes.fromhex("05 00000000 02 00 01 00000000 04 00000000")
# The password extension as wisp-js's client encodes it: "ab" / "xyz".
CLIENT_INFO_PASSWORD = bytes.fromhex("05 00000000 02 00 02 08000000 02 0300") + b"ab" + b"xyz"


def events_of(conn: WispConnection, *messages: bytes | None) -> list[wisp.Event]:
    for message in messages:
        conn.receive_data(message)
    return list(conn.events())


def open_server(version: int = 1, **kwargs: object) -> WispConnection:
    server = WispConnection(Role.SERVER, version=version, **kwargs)  # type: ignore[arg-type]
    if version == 1:
        assert server.initiate() == struct.pack("<BII", 3, 0, server.buffer_size)
    else:
        server.initiate()
        events_of(server, CLIENT_INFO_UDP_MOTD)
        server.send(Continue(0, server.buffer_size))
    assert server.state is ConnectionState.OPEN
    return server


def open_client() -> WispConnection:
    client = WispConnection(Role.CLIENT, version=1)
    assert events_of(client, CONTINUE_0_128) == [Continue(0, 128)]
    return client


class TestWire:
    def test_v1_server_starts_with_continue(self) -> None:
        server = WispConnection(Role.SERVER, version=1)
        assert server.initiate() == CONTINUE_0_128
        assert server.state is ConnectionState.OPEN

    def test_client_encodes_connect_data_close(self) -> None:
        client = open_client()
        assert client.send(Connect(1, "example.com", 80)) == CONNECT_TCP_1
        assert client.send(Data(1, b"hello")) == DATA_1_HELLO
        assert client.send(Close(1, CloseReason.VOLUNTARY)) == CLOSE_1_VOLUNTARY

    def test_server_decodes_connect_data_close(self) -> None:
        server = open_server()
        assert events_of(server, CONNECT_TCP_1, DATA_1_HELLO, CLOSE_1_VOLUNTARY) == [
            Connect(1, "example.com", 80, StreamType.TCP),
            Data(1, b"hello"),
            Close(1, CloseReason.VOLUNTARY),
        ]
        assert server.open_streams == 0

    def test_udp_connect(self) -> None:
        server = open_server()
        assert events_of(server, CONNECT_UDP_2) == [Connect(2, "1.1.1.1", 53, StreamType.UDP)]
        client = open_client()
        assert client.send(Connect(2, "1.1.1.1", 53, StreamType.UDP)) == CONNECT_UDP_2

    def test_extension_round_trip(self) -> None:
        for extension, sender in [
            (UdpExtension(), Role.CLIENT),
            (PasswordAuthExtension(required=False), Role.SERVER),
            (PasswordCredentials("ab", "xyz"), Role.CLIENT),
            (MotdExtension("hello"), Role.SERVER),
            (StreamConfirmationExtension(), Role.SERVER),
            (UnknownExtension(raw_id=0x7F, data=b"\x01\x02"), Role.SERVER),
        ]:
            encoded = extension.emit()
            assert parse_extensions(encoded, sender) == (extension,)
            assert parse_extensions(encoded, sender)[0].emit() == encoded

    def test_password_draft6_form_is_read_too(self) -> None:
        # v2 draft 6: uint8 username length, username, password (no password length).
        body = b"\x02abxyz"
        ext = struct.pack("<BI", 0x02, len(body)) + body
        assert parse_extensions(ext, Role.CLIENT) == (PasswordCredentials("ab", "xyz"),)

    def test_credentials_repr_hides_password(self) -> None:
        assert "xyz" not in repr(PasswordCredentials("ab", "xyz"))

    def test_truncated_extension_list(self) -> None:
        with pytest.raises(ValueError, match="claims 8 bytes"):
            parse_extensions(bytes.fromhex("02 08000000 02"), Role.CLIENT)

    @pytest.mark.parametrize(
        ("factory", "message"),
        [
            (lambda: Connect(0, "a", 1), "reserved"),
            (lambda: Connect(1, "a", 0), "port"),
            (lambda: Connect(1, "", 1), "empty"),
            (lambda: Data(0, b""), "stream 0"),
            (lambda: Close(1, 256), "one byte"),
            (lambda: Continue(2**32, 1), "stream id"),
        ],
    )
    def test_events_validate(self, factory: object, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            factory()  # type: ignore[operator]


class TestFeeding:
    """Each WebSocket message is one packet; prefixes and trailing bytes must be safe."""

    def test_every_prefix_of_connect_is_rejected_or_shorter_name(self) -> None:
        for cut in range(len(CONNECT_TCP_1)):
            server = open_server()
            got = events_of(server, CONNECT_TCP_1[:cut])
            if cut < wisp.HEADER_SIZE:
                assert got == [
                    PacketRejected(None, CloseReason.INVALID_INFO, f"packet of {cut} bytes")
                ]
            elif cut < wisp.HEADER_SIZE + 4:
                # Without a full CONNECT header, or with an empty name.
                assert len(got) == 1
                assert isinstance(got[0], PacketRejected)
                assert got[0].response() == Close(1, CloseReason.INVALID_INFO)
            else:
                assert got == [Connect(1, "example.com"[: cut - 8], 80)]

    def test_byte_by_byte_messages_never_raise(self) -> None:
        server = open_server()
        stream = CONNECT_TCP_1 + DATA_1_HELLO + CLOSE_1_VOLUNTARY
        for index in range(len(stream)):
            events_of(server, stream[index : index + 1])
        assert server.counters.rejected == len(stream)
        assert server.state is ConnectionState.OPEN

    def test_trailing_bytes_after_close_reason_and_continue(self) -> None:
        server = open_server()
        events_of(server, CONNECT_TCP_1)
        assert events_of(server, CLOSE_1_VOLUNTARY + b"\x00garbage") == [Close(1, 0x02)]
        client = open_client()
        client.send(Connect(1, "example.com", 80))
        assert events_of(client, CONTINUE_1_64 + b"junk") == [Continue(1, 64)]
        assert client.credit(1) == 64

    def test_trailing_bytes_are_data_payload(self) -> None:
        server = open_server()
        events_of(server, CONNECT_TCP_1)
        assert events_of(server, DATA_1_HELLO + b" world") == [Data(1, b"hello world")]

    def test_unknown_streams_are_ignored(self) -> None:
        server = open_server()
        assert events_of(server, DATA_1_HELLO, CLOSE_1_VOLUNTARY, CONTINUE_1_64) == []
        assert server.counters.ignored == 3

    def test_empty_close_payload_still_closes(self) -> None:
        server = open_server()
        events_of(server, CONNECT_TCP_1)
        assert events_of(server, bytes.fromhex("04 01000000")) == [Close(1, CloseReason.UNKNOWN)]

    def test_websocket_end(self) -> None:
        server = open_server()
        events_of(server, CONNECT_TCP_1)
        assert events_of(server, None) == [ConnectionClosed()]
        assert server.open_streams == 0
        assert server.state is ConnectionState.CLOSED


class TestHandshake:
    def test_v2_server_then_client_then_continue(self) -> None:
        server = WispConnection(
            Role.SERVER, version=2, extensions=[UdpExtension(), MotdExtension("hi")]
        )
        client = WispConnection(
            Role.CLIENT, version=2, extensions=[UdpExtension(), MotdExtension()]
        )
        first = server.initiate()
        assert first == SERVER_INFO_UDP_MOTD
        assert server.state is ConnectionState.INFO_SENT
        [info] = events_of(client, first)
        assert isinstance(info, Info)
        assert client.motd == "hi"
        answer = client.send(client.local_info())
        assert answer == CLIENT_INFO_UDP_MOTD
        assert client.state is ConnectionState.AWAITING_CONTINUE
        [client_info] = events_of(server, answer)
        assert isinstance(client_info, Info)
        assert server.state is ConnectionState.INFO_RECEIVED
        accept = server.send(Continue(0, 128))
        assert accept == CONTINUE_0_128
        assert events_of(client, accept) == [Continue(0, 128)]
        assert client.state is server.state is ConnectionState.OPEN
        assert client.version == server.version == 2
        assert client.udp_allowed
        assert server.udp_allowed

    def test_v2_client_meets_v1_server(self) -> None:
        client = WispConnection(Role.CLIENT, version=2, extensions=[UdpExtension()])
        assert events_of(client, CONTINUE_0_128) == [Continue(0, 128)]
        assert client.version == 1
        assert client.udp_allowed

    def test_v2_without_udp_extension_refuses_udp_streams(self) -> None:
        server = WispConnection(Role.SERVER, version=2, extensions=[MotdExtension("x")])
        server.initiate()
        events_of(server, CLIENT_INFO_UDP_MOTD)
        server.send(Continue(0, 128))
        [rejected] = events_of(server, CONNECT_UDP_2)
        assert isinstance(rejected, PacketRejected)
        assert rejected.response() == Close(2, CloseReason.BLOCKED)

    def test_password_credentials_reach_the_server(self) -> None:
        server = WispConnection(Role.SERVER, version=2, extensions=[PasswordAuthExtension()])
        server.initiate()
        events_of(server, CLIENT_INFO_PASSWORD)
        assert server.credentials == PasswordCredentials("ab", "xyz")
        assert server.send(Close(0, CloseReason.AUTH_BAD_PASSWORD)) == bytes.fromhex(
            "04 00000000 c0"
        )
        assert server.state is ConnectionState.CLOSED

    def test_client_sees_rejection(self) -> None:
        client = WispConnection(Role.CLIENT, extensions=[PasswordCredentials("a", "b")])
        events_of(client, SERVER_INFO_UDP_MOTD)
        client.send(client.local_info())
        assert events_of(client, bytes.fromhex("04 00000000 c0")) == [
            Close(0, CloseReason.AUTH_BAD_PASSWORD)
        ]
        assert client.state is ConnectionState.CLOSED

    def test_connect_before_info_breaks_v2(self) -> None:
        server = WispConnection(Role.SERVER, version=2)
        server.initiate()
        server.receive_data(CONNECT_TCP_1)
        with pytest.raises(RemoteProtocolError) as caught:
            server.next_event()
        assert caught.value.hint == CloseReason.INCOMPATIBLE_EXTENSIONS
        assert server.state is ConnectionState.ERROR
        with pytest.raises(LocalProtocolError, match="ERROR"):
            server.next_event()

    def test_malformed_info_breaks_handshake(self) -> None:
        server = WispConnection(Role.SERVER, version=2)
        server.initiate()
        server.receive_data(bytes.fromhex("05 00000000 02 00 01 ff000000"))
        with pytest.raises(RemoteProtocolError, match="malformed INFO"):
            server.next_event()

    def test_send_out_of_order_names_role_and_state(self) -> None:
        client = WispConnection(Role.CLIENT)
        with pytest.raises(LocalProtocolError, match="role=client and state=IDLE"):
            client.send(Connect(1, "a", 1))
        server = WispConnection(Role.SERVER, version=2)
        with pytest.raises(LocalProtocolError, match="Continue when role=server and state=IDLE"):
            server.send(Continue(0, 1))


class TestCredits:
    def test_client_counts_credits(self) -> None:
        client = WispConnection(Role.CLIENT, version=1)
        events_of(client, bytes.fromhex("03 00000000 02000000"))
        client.send(Connect(1, "h", 1))
        client.send(Data(1, b"a"))
        client.send(Data(1, b"b"))
        assert client.credit(1) == 0
        with pytest.raises(LocalProtocolError, match="no credit"):
            client.send(Data(1, b"c"))
        events_of(client, bytes.fromhex("03 01000000 05000000"))
        assert client.credit(1) == 5

    def test_udp_streams_need_no_credit(self) -> None:
        client = WispConnection(Role.CLIENT, version=1)
        events_of(client, bytes.fromhex("03 00000000 01000000"))
        client.send(Connect(2, "h", 53, StreamType.UDP))
        for _ in range(10):
            client.send(Data(2, b"x"))

    def test_server_refills_after_a_quarter_drained(self) -> None:
        server = open_server(buffer_size=8)
        events_of(server, CONNECT_TCP_1)
        events_of(server, *[DATA_1_HELLO] * 4)
        assert server.queued(1) == 4
        assert server.release(1) is None
        assert server.release(1) == Continue(1, 6)
        assert server.release(1, 2) == Continue(1, 8)

    def test_credit_ignoring_client_is_throttled(self) -> None:
        server = open_server(buffer_size=4)
        events_of(server, CONNECT_TCP_1)
        got = events_of(server, *[DATA_1_HELLO] * 5)
        assert got[:4] == [Data(1, b"hello")] * 4
        assert isinstance(got[4], PacketRejected)
        assert got[4].response() == Close(1, CloseReason.THROTTLED)
        assert server.open_streams == 0
        # Later packets for the dead stream are dropped, not queued.
        assert events_of(server, DATA_1_HELLO) == []

    def test_take_data_accounts_as_events_do_and_leaves_the_rest(self) -> None:
        server = open_server(buffer_size=4)
        # Nothing open yet, or not DATA: left to receive_data().
        assert server.take_data(DATA_1_HELLO) is None
        assert server.take_data(CONNECT_TCP_1) is None
        events_of(server, CONNECT_TCP_1, CONNECT_UDP_2)
        for _ in range(4):
            taken = server.take_data(DATA_1_HELLO)
            assert taken is not None
            assert (taken[0], bytes(taken[1])) == (1, b"hello")
        assert server.queued(1) == 4
        assert server.release(1, 2) == Continue(1, 2)
        # UDP datagrams and DATA past the credit take the event path, which
        # rejects the credit-ignoring client as before.
        udp = bytes.fromhex("02 02000000") + b"dns"
        assert server.take_data(udp) is None
        assert events_of(server, udp) == [Data(2, b"dns")]
        server.take_data(DATA_1_HELLO)
        server.take_data(DATA_1_HELLO)
        assert server.take_data(DATA_1_HELLO) is None
        got = events_of(server, DATA_1_HELLO)
        assert isinstance(got[0], PacketRejected)
        assert got[0].response() == Close(1, CloseReason.THROTTLED)
        # A client has no fast path.
        assert open_client().take_data(DATA_1_HELLO) is None

    def test_refills_crossing_data_do_not_blame_an_obedient_client(self) -> None:
        # The client spends its window of 4; the server refills twice before
        # the first refill reaches the client, and the client obeys each value
        # as it arrives (absolute, as wisp-js does): 4 + 4 + 4 packets in all,
        # with 8 outstanding at the server at one point.
        server = open_server(buffer_size=4)
        events_of(server, CONNECT_TCP_1)
        assert events_of(server, *[DATA_1_HELLO] * 4) == [Data(1, b"hello")] * 4
        refill = server.release(1, 4)
        assert refill == Continue(1, 4)
        server.send(refill)
        server.send(Continue(1, 4))
        got = events_of(server, *[DATA_1_HELLO] * 8)
        assert got == [Data(1, b"hello")] * 8
        assert server.queued(1) == 8
        # One packet past every credit granted is a client ignoring credits.
        assert isinstance(events_of(server, DATA_1_HELLO)[0], PacketRejected)

    def test_stream_confirmation(self) -> None:
        server = WispConnection(
            Role.SERVER, version=2, extensions=[StreamConfirmationExtension()], buffer_size=16
        )
        server.initiate()
        events_of(server, struct.pack("<BIBB", 5, 0, 2, 0) + StreamConfirmationExtension().emit())
        server.send(Continue(0, 16))
        events_of(server, CONNECT_TCP_1)
        assert server.confirm(1) == Continue(1, 16)
        plain = open_server()
        events_of(plain, CONNECT_TCP_1)
        assert plain.confirm(1) is None


class TestMalformed:
    @pytest.mark.parametrize(
        ("packet", "reason"),
        [
            (bytes.fromhex("01 01000000 03 5000") + b"h", CloseReason.INVALID_INFO),
            (bytes.fromhex("01 01000000 01 0000") + b"h", CloseReason.INVALID_INFO),
            (bytes.fromhex("01 01000000 01 5000") + b"\xff\xfe", CloseReason.INVALID_INFO),
            (bytes.fromhex("01 01000000 01 5000") + b"a" * 300, CloseReason.INVALID_INFO),
            (bytes.fromhex("01 01000000 01 5000") + b"   ", CloseReason.INVALID_INFO),
        ],
    )
    def test_bad_connect(self, packet: bytes, reason: CloseReason) -> None:
        server = open_server()
        [event] = events_of(server, packet)
        assert isinstance(event, PacketRejected)
        assert event.response() == Close(1, reason)
        assert server.open_streams == 0

    def test_reused_stream_id_closes_only_that_stream(self) -> None:
        server = open_server()
        events_of(server, CONNECT_TCP_1, CONNECT_UDP_2)
        [event] = events_of(server, CONNECT_TCP_1)
        assert isinstance(event, PacketRejected)
        assert server.stream_type(1) is None
        assert server.stream_type(2) is StreamType.UDP

    def test_connect_on_stream_zero(self) -> None:
        server = open_server()
        [event] = events_of(server, bytes.fromhex("01 00000000 01 5000") + b"h")
        assert isinstance(event, PacketRejected)
        assert event.response() is None

    def test_unknown_type(self) -> None:
        server = open_server()
        events_of(server, CONNECT_TCP_1)
        [event] = events_of(server, bytes.fromhex("09 01000000"))
        assert isinstance(event, PacketRejected)
        assert event.response() == Close(1, CloseReason.INVALID_INFO)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.binary(max_size=40), max_size=20))
    def test_fuzzed_messages_only_produce_events(self, messages: list[bytes]) -> None:
        server = open_server()
        events_of(server, CONNECT_UDP_2)
        for message in messages:
            for event in events_of(server, message):
                assert isinstance(event, Connect | Data | Close | PacketRejected)
        assert server.state in (ConnectionState.OPEN, ConnectionState.CLOSED)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=60))
    def test_fuzzed_handshake_raises_only_protocol_errors(self, message: bytes) -> None:
        server = WispConnection(Role.SERVER, version=2, extensions=[UdpExtension()])
        server.initiate()
        server.receive_data(message)
        hints = []
        try:
            list(server.events())
        except RemoteProtocolError as exc:
            hints.append(exc.hint)
        assert set(hints) <= {CloseReason.INCOMPATIBLE_EXTENSIONS}

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.binary(max_size=30), max_size=10))
    def test_fuzzed_messages_to_a_client(self, messages: list[bytes]) -> None:
        client = open_client()
        client.send(Connect(1, "h", 1))
        for message in messages:
            for event in events_of(client, message):
                assert isinstance(event, Data | Continue | Close | PacketRejected)


class TestBackToBack:
    def test_many_streams_both_ways(self) -> None:
        server = WispConnection(Role.SERVER, version=2, extensions=[UdpExtension()], buffer_size=4)
        client = WispConnection(Role.CLIENT, version=2, extensions=[UdpExtension()])
        events_of(client, server.initiate())
        events_of(server, client.send(client.local_info()))
        events_of(client, server.send(Continue(0, 4)))
        sent: dict[int, bytes] = {}
        for stream_id in range(1, 51):
            kind = StreamType.UDP if stream_id % 5 == 0 else StreamType.TCP
            events_of(server, client.send(Connect(stream_id, f"h{stream_id}", stream_id, kind)))
            sent[stream_id] = b""
        received: dict[int, bytes] = {sid: b"" for sid in sent}
        for round_number in range(12):
            for stream_id in sent:
                if stream_id % 5 and client.credit(stream_id) == 0:
                    continue
                chunk = bytes([stream_id, round_number])
                sent[stream_id] += chunk
                for event in events_of(server, client.send(Data(stream_id, chunk))):
                    assert isinstance(event, Data)
                    received[event.stream_id] += event.data
                    refill = server.release(event.stream_id)
                    if refill is not None:
                        events_of(client, server.send(refill))
        assert received == sent
        for stream_id in sent:
            back = server.send(Data(stream_id, b"reply"))
            assert events_of(client, back) == [Data(stream_id, b"reply")]
            events_of(client, server.send(Close(stream_id, CloseReason.VOLUNTARY)))
        assert client.open_streams == 0
        assert server.open_streams == 0
