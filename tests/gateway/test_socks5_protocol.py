"""The sans-I/O SOCKS5 core: RFC 1928/1929 byte vectors, feeding, both roles, fuzz."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netshim import LocalProtocolError, RemoteProtocolError
from netshim.protocols.socks5 import (
    NEED_DATA,
    AuthMethod,
    AuthResult,
    Command,
    ConnectionClosed,
    Credentials,
    Greeting,
    MethodChoice,
    Reply,
    ReplyCode,
    Request,
    Role,
    Socks5Connection,
    State,
    UdpDatagram,
)

GREETING_NOAUTH_USERPASS = bytes.fromhex("05 02 00 02")
AUTH_ALICE = bytes.fromhex("01 05") + b"alice" + bytes.fromhex("06") + b"secret"
CONNECT_DOMAIN = bytes.fromhex("05 01 00 03 0b") + b"example.com" + bytes.fromhex("01bb")
CONNECT_IPV4 = bytes.fromhex("05 01 00 01 7f000001 0050")
CONNECT_IPV6 = bytes.fromhex("05 01 00 04") + bytes(15) + b"\x01" + bytes.fromhex("0050")
ASSOCIATE_ANY = bytes.fromhex("05 03 00 01 00000000 0000")


def feed(conn: Socks5Connection, data: bytes) -> list[object]:
    conn.receive_data(data)
    events = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        events.append(event)
        if isinstance(event, ConnectionClosed):
            return events


def feed_every_way(data: bytes, prepare: object) -> list[list[object]]:
    """The events from ``data`` fed whole, byte by byte, and with trailing bytes."""
    results = []
    for mode in ("whole", "bytes", "trailing"):
        conn = prepare()  # type: ignore[operator]
        if mode == "whole":
            results.append(feed(conn, data))
        elif mode == "bytes":
            got: list[object] = []
            for index in range(len(data)):
                more = feed(conn, data[index : index + 1])
                if index < len(data) - 1:
                    assert more == []
                got += more
            results.append(got)
        else:
            results.append(feed(conn, data + b"\x99\x98"))
            assert conn.trailing_data() == b"\x99\x98"
    return results


def server_at(state: str) -> Socks5Connection:
    server = Socks5Connection(Role.SERVER)
    if state in ("auth", "request"):
        feed(server, GREETING_NOAUTH_USERPASS)
        method = AuthMethod.USERNAME_PASSWORD if state == "auth" else AuthMethod.NO_AUTHENTICATION
        server.send(MethodChoice(method))
    return server


def test_greeting_every_way() -> None:
    for events in feed_every_way(GREETING_NOAUTH_USERPASS, lambda: server_at("greeting")):
        assert events == [Greeting((0, 2))]


def test_credentials_every_way() -> None:
    for events in feed_every_way(AUTH_ALICE, lambda: server_at("auth")):
        assert events == [Credentials("alice", "secret")]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (CONNECT_DOMAIN, Request(Command.CONNECT, "example.com", 443)),
        (CONNECT_IPV4, Request(Command.CONNECT, "127.0.0.1", 80)),
        (CONNECT_IPV6, Request(Command.CONNECT, "::1", 80)),
        (ASSOCIATE_ANY, Request(Command.UDP_ASSOCIATE, "0.0.0.0", 0)),
    ],
)
def test_requests_every_way(data: bytes, expected: Request) -> None:
    for events in feed_every_way(data, lambda: server_at("request")):
        assert events == [expected]


def test_server_replies() -> None:
    server = server_at("auth")
    feed(server, AUTH_ALICE)
    assert server.send(AuthResult(True)) == b"\x01\x00"
    feed(server, CONNECT_DOMAIN)
    assert server.send(Reply(ReplyCode.SUCCEEDED, "10.0.0.1", 4242)) == bytes.fromhex(
        "05 00 00 01 0a000001 1092"
    )
    assert server.state is State.RELAY


def test_failed_auth_closes() -> None:
    server = server_at("auth")
    feed(server, AUTH_ALICE)
    assert server.send(AuthResult(False)) == b"\x01\x01"
    assert server.state is State.CLOSED


def test_no_acceptable_method() -> None:
    server = server_at("greeting")
    feed(server, bytes.fromhex("05 01 02"))
    assert server.send(MethodChoice(AuthMethod.NO_ACCEPTABLE)) == b"\x05\xff"


@pytest.mark.parametrize(
    ("data", "hint"),
    [
        (bytes.fromhex("05 09 00 01 00000000 0000"), ReplyCode.COMMAND_NOT_SUPPORTED),
        (bytes.fromhex("05 01 00 02 00000000 0000"), ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED),
        (bytes.fromhex("05 01 00 03 00 0050"), ReplyCode.GENERAL_FAILURE),
        (bytes.fromhex("04 01 00 01 00000000 0000"), ReplyCode.GENERAL_FAILURE),
    ],
)
def test_bad_requests_carry_the_reply_code(data: bytes, hint: int) -> None:
    server = server_at("request")
    with pytest.raises(RemoteProtocolError) as caught:
        feed(server, data)
    assert caught.value.hint == hint
    assert server.send(Reply(hint)) == bytes([5, hint, 0, 1, 0, 0, 0, 0, 0, 0])


def test_socks4_is_refused() -> None:
    with pytest.raises(RemoteProtocolError, match="version 4"):
        feed(Socks5Connection(Role.SERVER), bytes.fromhex("04 01 0050 7f000001 00"))


def test_eof_mid_request() -> None:
    server = server_at("request")
    feed(server, CONNECT_DOMAIN[:5])
    with pytest.raises(RemoteProtocolError, match="closed in the middle"):
        feed(server, b"")


def test_send_out_of_turn() -> None:
    with pytest.raises(LocalProtocolError, match="role=server and state=GREETING"):
        Socks5Connection(Role.SERVER).send(AuthResult(True))


def test_client_and_server_back_to_back() -> None:
    client, server = Socks5Connection(Role.CLIENT), Socks5Connection(Role.SERVER)
    assert feed(server, client.send(Greeting((AuthMethod.USERNAME_PASSWORD,)))) == [Greeting((2,))]
    assert feed(client, server.send(MethodChoice(AuthMethod.USERNAME_PASSWORD))) == [
        MethodChoice(2)
    ]
    assert feed(server, client.send(Credentials("u", "p"))) == [Credentials("u", "p")]
    assert feed(client, server.send(AuthResult(True))) == [AuthResult(True)]
    request = Request(Command.UDP_ASSOCIATE, "::", 0)
    assert feed(server, client.send(request)) == [request]
    reply = Reply(ReplyCode.SUCCEEDED, "127.0.0.1", 9999)
    assert feed(client, server.send(reply)) == [reply]
    assert client.state is server.state is State.ASSOCIATED


def test_udp_datagram_round_trip() -> None:
    packet = bytes.fromhex("0000 00 01 01010101 0035") + b"query"
    datagram = UdpDatagram.parse(packet)
    assert datagram == UdpDatagram("1.1.1.1", 53, b"query")
    assert datagram.emit() == packet
    named = UdpDatagram("example.com", 53, b"x")
    assert UdpDatagram.parse(named.emit()) == named
    for bad in [b"", b"\x00\x00\x00", b"\x01\x00\x00\x01", bytes.fromhex("0000 00 01 0101")]:
        with pytest.raises(RemoteProtocolError):
            UdpDatagram.parse(bad)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80), st.sampled_from(["greeting", "auth", "request"]))
def test_fuzzed_input_raises_only_protocol_errors(data: bytes, state: str) -> None:
    server = server_at(state)
    try:
        feed(server, data)
        feed(server, b"")
    except RemoteProtocolError:
        assert server.state is State.ERROR


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60))
def test_fuzzed_udp_datagrams(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        UdpDatagram.parse(data)
