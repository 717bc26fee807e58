"""LANs on the gateway (docs/lan.md): joining, listeners, member-to-member streams, forwards.

A real gateway is served in-process on loopback; its members are real Wisp
clients (tests/gateway/lan_client.py) speaking the LAN extension over real
WebSockets.  One test runs the ``netshim gateway`` process with the LAN flags.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from gateway_helpers import require_peer, running_gateway
from gateway_process import config_from_flags, gateway_process, recv_exactly, refused_flags
from lan_client import JoinRefusedError, LanClient, StreamClosedError, lan_client

from netshim import VirtualNetwork, WispStack
from netshim.gateway import Gateway, GatewayConfig
from netshim.gateway._lan import (
    SPLICE_WINDOW,
    Forward,
    LanDirectory,
    LanHub,
    LanMember,
    LanSpec,
    SplicedStream,
    ipv6_subnet_for,
    parse_lan_flags,
)
from netshim.gateway._server import QUEUE_BOUND_FACTOR
from netshim.policy import Policy
from netshim.protocols import wisp
from netshim.protocols.wisp import CloseReason, MembershipChange
from netshim.stack import TcpStream

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-token"
DEMO = LanSpec("demo", "10.77.0.0/24", TOKEN)


def config(**overrides: object) -> GatewayConfig:
    options: dict[str, object] = {
        "policy": Policy(allow=["127.0.0.1"]),
        "lans": (DEMO,),
    }
    options.update(overrides)
    return GatewayConfig(**options)  # type: ignore[arg-type]


def member(gateway: Gateway, name: str, *, lan: str = "demo", token: str = TOKEN) -> object:
    return lan_client(gateway, lan, name, token)


async def echo(client: LanClient, stream_id: int, size: int) -> None:
    """Send back ``size`` bytes of ``stream_id`` as they come."""
    done = 0
    while done < size:
        chunk = await client.receive_exactly(stream_id, min(1 << 16, size - done))
        await client.send(stream_id, chunk)
        done += len(chunk)


# -- joining


async def test_join_and_membership_news() -> None:
    async with running_gateway(config()) as gateway:  # noqa: SIM117 (alice outlives bob)
        async with member(gateway, "alice") as alice:  # type: ignore[attr-defined]
            assert alice.joined == wisp.Membership(
                MembershipChange.JOINED, "10.77.0.2", "alice.demo", 24
            )
            async with member(gateway, "bob") as bob:  # type: ignore[attr-defined]
                assert bob.joined.host == "10.77.0.3"
                await bob.wait_for(lambda: len(bob.news) == 2)
                assert bob.news[1] == wisp.Membership(
                    MembershipChange.MEMBER_JOINED, "10.77.0.2", "alice.demo"
                )
                news = await alice.news_about("bob.demo", MembershipChange.MEMBER_JOINED)
                assert news.host == "10.77.0.3"
                # No name asked for: the gateway picks one.
                async with member(gateway, "") as anonymous:  # type: ignore[attr-defined]
                    assert anonymous.joined.name == "member-4.demo"
                    assert anonymous.joined.host == "10.77.0.4"
            left = await alice.news_about("bob.demo", MembershipChange.MEMBER_LEFT)
            assert left.host == "10.77.0.3"
            await alice.news_about("member-4.demo", MembershipChange.MEMBER_LEFT)
            # Bob's address is free again.
            async with member(gateway, "carol") as carol:  # type: ignore[attr-defined]
                assert carol.joined.host == "10.77.0.3"


@pytest.mark.parametrize(
    ("lan", "name", "token", "reason"),
    [
        ("demo", "mallory", "wrong", CloseReason.AUTH_BAD_PASSWORD),
        ("nowhere", "mallory", TOKEN, CloseReason.AUTH_BAD_PASSWORD),
        ("demo", "alice", TOKEN, CloseReason.NAME_IN_USE),
        ("demo", "gateway", TOKEN, CloseReason.NAME_IN_USE),
        ("demo", "not a label", TOKEN, CloseReason.INVALID_INFO),
    ],
    ids=["wrong-token", "unknown-lan", "name-taken", "name-reserved", "bad-name"],
)
async def test_refused_joins(lan: str, name: str, token: str, reason: int) -> None:
    async with (
        running_gateway(config()) as gateway,
        member(gateway, "alice") as alice,  # type: ignore[attr-defined]
    ):
        with pytest.raises(JoinRefusedError) as refused:
            async with lan_client(gateway, lan, name, token):
                pass
        assert refused.value.reason == reason
        # Alice heard of nobody, and is still served.
        await anyio.sleep(0.05)
        assert len(alice.news) == 1
        _, bound = await alice.listen(8000)
        assert bound == ("10.77.0.2", 8000)
    if reason == CloseReason.AUTH_BAD_PASSWORD:
        metrics = gateway.metrics.render().decode()
        assert 'netshim_gateway_auth_failures_total{protocol="wisp"} 1.0' in metrics


# -- member to member


async def test_echo_between_members_by_address_and_by_name() -> None:
    size = 3 << 20
    async with (
        running_gateway(config()) as gateway,
        member(gateway, "alice") as alice,  # type: ignore[attr-defined]
        member(gateway, "bob") as bob,  # type: ignore[attr-defined]
    ):
        listener, bound = await alice.listen(8000)
        assert bound == ("10.77.0.2", 8000)
        for destination in ("10.77.0.2", "alice.demo", "ALICE.demo."):
            payload = os.urandom(size)
            stream = await bob.connect(destination, 8000)
            accepted = await alice.accept(listener)
            assert accepted.stream_id >= wisp.SERVER_STREAM_BASE
            assert accepted.host == "10.77.0.3"
            received = b""
            async with anyio.create_task_group() as group:
                group.start_soon(echo, alice, accepted.stream_id, size)
                group.start_soon(bob.send, stream, payload)
                received = await bob.receive_exactly(stream, size)
            assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
            # Bob ends: Alice's side sees the CLOSE; her CLOSE ends Bob's.
            await bob.close(stream)
            assert await alice.closed(accepted.stream_id) == CloseReason.VOLUNTARY
        # Alice may also open streams to Bob's listeners (UDP further below).
        bob_listener, _ = await bob.listen(9000, "bob.demo")
        stream = await alice.connect("bob.demo", 9000)
        accepted = await bob.accept(bob_listener)
        await alice.send(stream, b"ping")
        assert await bob.receive_exactly(accepted.stream_id, 4) == b"ping"
        await bob.send(accepted.stream_id, b"pong")
        assert await alice.receive_exactly(stream, 4) == b"pong"
        await bob.close(accepted.stream_id)
        assert await alice.closed(stream) == CloseReason.VOLUNTARY
        # IPv6: the LAN's /64 derived from its name; a listener on "::" takes both.
        alice6 = str(ipv6_subnet_for("demo")[2])
        listener6, bound = await alice.listen(8100, "::")
        assert bound == ("::", 8100)
        stream = await bob.connect(alice6, 8100)
        accepted = await alice.accept(listener6)
        assert accepted.host == str(ipv6_subnet_for("demo")[3])
        await bob.send(stream, b"six")
        assert await alice.receive_exactly(accepted.stream_id, 3) == b"six"
    metrics = gateway.metrics.render().decode()
    assert 'netshim_gateway_streams_closed_total{protocol="lan",reason=' in metrics
    assert "internal_errors_total{" not in metrics


async def test_listen_errors() -> None:
    async with (
        running_gateway(config(lan_listeners=2, policy=Policy(ports="1-9999"))) as gateway,
        member(gateway, "alice") as alice,  # type: ignore[attr-defined]
    ):
        first, _ = await alice.listen(8000)
        with pytest.raises(StreamClosedError) as refused:
            await alice.listen(8000)
        assert refused.value.reason == CloseReason.ADDRESS_IN_USE
        # The policy allows ports up to 9999 only; ephemeral ports are above.
        with pytest.raises(StreamClosedError) as refused:
            await alice.listen(10000)
        assert refused.value.reason == CloseReason.BLOCKED
        with pytest.raises(StreamClosedError) as refused:
            await alice.listen(0)
        assert refused.value.reason == CloseReason.BLOCKED
        # Only the member's own addresses.
        with pytest.raises(StreamClosedError) as refused:
            await alice.listen(8001, "10.77.0.9")
        assert refused.value.reason == CloseReason.INVALID_INFO
        await alice.listen(8001, udp=True)
        with pytest.raises(StreamClosedError) as refused:
            await alice.listen(8002)
        assert refused.value.reason == CloseReason.LISTEN_QUOTA
        # A closed listener gives its place back.
        await alice.close(first)
        await alice.wait_for(lambda: _listeners(gateway) == 1)
        await alice.listen(8002)
        assert gateway.metrics.render().decode().count("refusals_total") >= 1


def _listeners(gateway: Gateway) -> int:
    assert gateway.lans is not None
    return sum(m.listeners for m in gateway.lans.lans["demo"].members.values())


async def test_non_members_reach_neither_listeners_nor_lan_addresses() -> None:
    async with (
        running_gateway(config()) as gateway,
        member(gateway, "alice") as alice,  # type: ignore[attr-defined]
        lan_client(gateway) as outsider,
        lan_client(gateway, lan_extension=False) as plain,
    ):
        await alice.listen(8000)
        with pytest.raises(StreamClosedError) as refused:
            await outsider.listen(8000)
        assert refused.value.reason == CloseReason.NOT_A_MEMBER
        for client in (outsider, plain):
            with pytest.raises(StreamClosedError) as refused:
                await client.connect("10.77.0.2", 8000)
            # Through the policy, as any private address.
            assert refused.value.reason == CloseReason.BLOCKED
            with pytest.raises(StreamClosedError) as refused:
                await client.connect("alice.demo", 8000)
            assert refused.value.reason != 0


async def test_refusals_inside_the_lan() -> None:
    async with (
        running_gateway(config()) as gateway,
        member(gateway, "alice") as alice,  # type: ignore[attr-defined]
        member(gateway, "bob") as bob,  # type: ignore[attr-defined]
    ):
        listener, _ = await alice.listen(8000)
        stream = await bob.connect("alice.demo", 8000)
        accepted = await alice.accept(listener)
        # Closing the listener leaves its connections alone and refuses new ones.
        await alice.close(listener)
        await alice.wait_for(lambda: _listeners(gateway) == 0)
        with pytest.raises(StreamClosedError) as refused:
            await bob.connect("alice.demo", 8000)
        assert refused.value.reason == CloseReason.REFUSED
        await bob.send(stream, b"still here")
        assert await alice.receive_exactly(accepted.stream_id, 10) == b"still here"
        with pytest.raises(StreamClosedError) as refused:
            await bob.connect("nobody.demo", 8000)
        assert refused.value.reason == CloseReason.UNREACHABLE
        with pytest.raises(StreamClosedError) as refused:
            await bob.connect("10.77.0.99", 8000)
        assert refused.value.reason == CloseReason.UNREACHABLE


async def test_leaving_ends_listeners_and_connections() -> None:
    async with (
        running_gateway(config()) as gateway,
        member(gateway, "bob") as bob,  # type: ignore[attr-defined]
    ):
        async with member(gateway, "alice") as alice:  # type: ignore[attr-defined]
            assert alice.joined.host == "10.77.0.3"
            listener, _ = await alice.listen(8000)
            stream = await bob.connect("alice.demo", 8000)
            await alice.accept(listener)
        assert await bob.closed(stream) in (CloseReason.VOLUNTARY, CloseReason.NETWORK_ERROR)
        await bob.news_about("alice.demo", MembershipChange.MEMBER_LEFT)
        with pytest.raises(StreamClosedError) as refused:
            await bob.connect("10.77.0.3", 8000)
        assert refused.value.reason == CloseReason.UNREACHABLE
        assert gateway.lans is not None
        assert list(gateway.lans.lans["demo"].members) == ["bob"]


async def test_udp_between_members() -> None:
    async with (
        running_gateway(config()) as gateway,
        member(gateway, "alice") as alice,  # type: ignore[attr-defined]
        member(gateway, "bob") as bob,  # type: ignore[attr-defined]
    ):
        listener, bound = await alice.listen(5353, udp=True)
        assert bound == ("10.77.0.2", 5353)
        # Bob's UDP stream to Alice's port, by name.
        stream = await bob.connect("alice.demo", 5353, udp=True)
        await bob.send_event(wisp.Data(stream, b"question"))
        host, port, payload = await alice.receive_datagram(listener)
        assert (host, payload) == ("10.77.0.3", b"question")
        await alice.send_datagram(listener, host, port, b"answer")
        assert await bob.receive_exactly(stream, 6) == b"answer"
        # Listener to listener, by address and by name.
        bob_listener, _ = await bob.listen(6000, udp=True)
        await alice.send_datagram(listener, "bob.demo", 6000, b"hello bob")
        assert await bob.receive_datagram(bob_listener) == ("10.77.0.2", 5353, b"hello bob")
        # Datagrams for no member of the LAN go nowhere, and the socket lives on.
        await alice.send_datagram(listener, "nobody.demo", 6000, b"lost")
        await alice.send_datagram(listener, "192.0.2.1", 6000, b"lost")
        await alice.send_datagram(listener, "10.77.0.3", 6000, b"again")
        assert await bob.receive_datagram(bob_listener) == ("10.77.0.2", 5353, b"again")


async def test_malformed_lan_packets_close_the_stream_not_the_session() -> None:
    async with (
        running_gateway(config()) as gateway,
        member(gateway, "alice") as alice,  # type: ignore[attr-defined]
        member(gateway, "bob") as bob,  # type: ignore[attr-defined]
    ):
        # LISTEN with a payload too short for its type and port.
        alice.track(7)
        # The client's core opens stream 7 (so that it takes the CLOSE); the
        # packet that goes out is the malformed one.
        alice.conn.send(wisp.Listen(7, 80))
        await alice.send_raw(bytes([wisp.PacketType.LISTEN]) + (7).to_bytes(4, "little") + b"\x01")
        assert await alice.closed(7) == CloseReason.INVALID_INFO
        # An addressed datagram whose host runs past its end.
        listener, _ = await alice.listen(5353, udp=True)
        packet = (5353).to_bytes(2, "little") + bytes([200]) + b"short"
        await alice.send_event(wisp.Data(listener, packet))
        assert await alice.closed(listener) == CloseReason.INVALID_INFO
        # DATA on a TCP listener.
        tcp_listener, _ = await alice.listen(8000)
        await alice.send_raw(
            bytes([wisp.PacketType.DATA]) + tcp_listener.to_bytes(4, "little") + b"x"
        )
        assert await alice.closed(tcp_listener) == CloseReason.INVALID_INFO
        # The session lives: a new listener works.
        listener, _ = await alice.listen(8001)
        stream = await bob.connect("alice.demo", 8001)
        accepted = await alice.accept(listener)
        await bob.send(stream, b"ok")
        assert await alice.receive_exactly(accepted.stream_id, 2) == b"ok"
    assert "internal_errors_total{" not in gateway.metrics.render().decode()


@pytest.mark.parametrize("writer", ["connecting", "accepting"])
async def test_a_member_that_stops_reading_does_not_grow_the_gateway(writer: str) -> None:
    """One member sends to another, who reads nothing: the bounds hold, the writer runs dry.

    Both ways: the connecting member writing to the listener's, and the
    listener's member writing back on the stream it accepted.
    """
    high_water = 256 * 1024
    async with _joined(config(high_water=high_water, wisp_buffer_size=32)) as joined:
        gateway = joined.gateway
        assert _splices(gateway, "alice") == _splices(gateway, "bob") == 1
        (sender, sender_stream), (reader, reader_stream) = joined.from_end(writer)
        reader.pause()
        sent = 0
        block = os.urandom(1 << 16)
        with anyio.move_on_after(3):
            while True:
                await sender.send(sender_stream, block)
                sent += len(block)
        # The writer is stuck: no credit left.
        assert sender.conn.credit(sender_stream) == 0
        total = 64 << 20
        assert sent < total / 4, sent
        # What the gateway holds for this stream: the writer's queue within
        # its credits and the reader's WebSocket output within its high-water
        # mark plus a message (the splice itself holds nothing).
        sessions = _sessions(gateway)
        queued = sum(s.budget.queued for s in sessions)
        assert queued <= QUEUE_BOUND_FACTOR * 32 * (1 << 16) + (1 << 16)
        for session in sessions:
            assert session.ws.queued_bytes <= high_water + (1 << 18) + (1 << 16)
        reader.resume()
        received = await reader.receive_exactly(reader_stream, sent)
        assert received == block * (sent // len(block))


def _sessions(gateway: Gateway) -> list:  # type: ignore[type-arg]
    assert gateway.lans is not None
    return [
        member.news.__self__  # type: ignore[attr-defined]
        for member in gateway.lans.lans["demo"].members.values()
    ]


@dataclass
class _Joined:
    """Members alice and bob of a running gateway, bob connected to alice's listener."""

    gateway: Gateway
    alice: LanClient
    bob: LanClient
    stream: int
    accepted_id: int

    def from_end(self, end: str) -> tuple[tuple[LanClient, int], tuple[LanClient, int]]:
        """(client, stream id) of the ``"connecting"`` or ``"accepting"`` end, then the other's."""
        connecting, accepting = (self.bob, self.stream), (self.alice, self.accepted_id)
        return (connecting, accepting) if end == "connecting" else (accepting, connecting)


@contextlib.asynccontextmanager
async def _joined(gateway_config: GatewayConfig) -> AsyncIterator[_Joined]:
    async with (
        running_gateway(gateway_config) as gateway,
        member(gateway, "alice") as alice,  # type: ignore[attr-defined]
        member(gateway, "bob") as bob,  # type: ignore[attr-defined]
    ):
        listener, _ = await alice.listen(8000)
        stream = await bob.connect("alice.demo", 8000)
        accepted = await alice.accept(listener)
        yield _Joined(gateway, alice, bob, stream, accepted.stream_id)


def _splices(gateway: Gateway, name: str) -> int:
    """How many spliced streams' ends the member ``name`` holds."""
    assert gateway.lans is not None
    return len(gateway.lans.lans["demo"].members[name].splices)


# -- spliced streams between members (docs/lan.md, "On the gateway")


async def _read_slowly(client: LanClient, stream_id: int, size: int) -> bytes:
    """Read ``size`` bytes in pieces, letting the gateway's output back up before each."""
    parts = []
    while size:
        client.pause()
        # Long enough for the writer to fill what the gateway holds for us.
        await anyio.sleep(0.02)
        client.resume()
        part = await client.receive_exactly(stream_id, min(size, 1 << 19))
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


async def test_spliced_streams_carry_both_ways_intact_to_slow_readers() -> None:
    size = 6 << 20
    async with _joined(config(high_water=128 * 1024, wisp_buffer_size=16)) as joined:
        gateway, alice, bob, stream = joined.gateway, joined.alice, joined.bob, joined.stream
        accepted_id = joined.accepted_id
        assert _splices(gateway, "alice") == _splices(gateway, "bob") == 1
        up, down = os.urandom(size), os.urandom(size)
        got: dict[str, bytes] = {}

        async def read(name: str, client: LanClient, stream_id: int) -> None:
            got[name] = await _read_slowly(client, stream_id, size)

        async with anyio.create_task_group() as group:
            group.start_soon(bob.send, stream, up)
            group.start_soon(alice.send, accepted_id, down)
            group.start_soon(read, "alice", alice, accepted_id)
            group.start_soon(read, "bob", bob, stream)
        assert hashlib.sha256(got["alice"]).digest() == hashlib.sha256(up).digest()
        assert hashlib.sha256(got["bob"]).digest() == hashlib.sha256(down).digest()
        await bob.close(stream)
        assert await alice.closed(accepted_id) == CloseReason.VOLUNTARY
        await bob.wait_for(lambda: _splices(gateway, "alice") == _splices(gateway, "bob") == 0)
    metrics = gateway.metrics.render().decode()
    assert "internal_errors_total{" not in metrics


@pytest.mark.parametrize("closer", ["connecting", "accepting"])
async def test_a_spliced_stream_ends_after_its_last_bytes(closer: str) -> None:
    """A member's CLOSE reaches the other member behind everything it sent, as an end."""
    size = 2 << 20
    async with _joined(config()) as joined:
        gateway, bob = joined.gateway, joined.bob
        (sender, sender_stream), (reader, reader_stream) = joined.from_end(closer)
        payload = os.urandom(size)
        reader.pause()
        await sender.send(sender_stream, payload)
        await sender.close(sender_stream)
        reader.resume()
        assert await reader.receive_exactly(reader_stream, size) == payload
        assert await reader.closed(reader_stream) == CloseReason.VOLUNTARY
        await bob.wait_for(lambda: _splices(gateway, "alice") == _splices(gateway, "bob") == 0)


@pytest.mark.parametrize("closer", ["connecting", "accepting"])
async def test_a_reset_passes_through_a_spliced_stream_as_a_reset(closer: str) -> None:
    async with _joined(config()) as joined:
        gateway, bob = joined.gateway, joined.bob
        (sender, sender_stream), (reader, reader_stream) = joined.from_end(closer)
        await sender.send(sender_stream, b"before the reset")
        assert await reader.receive_exactly(reader_stream, 16) == b"before the reset"
        await sender.close(sender_stream, CloseReason.NETWORK_ERROR)
        assert await reader.closed(reader_stream) == CloseReason.NETWORK_ERROR
        await bob.wait_for(lambda: _splices(gateway, "alice") == _splices(gateway, "bob") == 0)


async def test_a_member_that_disconnects_after_sending_delivers_it_all() -> None:
    """What a member sent before its WebSocket closed still reaches the other, then the end."""
    size = 2 << 20
    async with (
        running_gateway(config()) as gateway,
        member(gateway, "alice") as alice,  # type: ignore[attr-defined]
    ):
        listener, _ = await alice.listen(8000)
        payload = os.urandom(size)
        async with member(gateway, "bob") as bob:  # type: ignore[attr-defined]
            stream = await bob.connect("alice.demo", 8000)
            accepted = await alice.accept(listener)
            await bob.send(stream, payload)
        assert await alice.receive_exactly(accepted.stream_id, size) == payload
        assert await alice.closed(accepted.stream_id) == CloseReason.VOLUNTARY
        await alice.wait_for(lambda: _splices(gateway, "alice") == 0)


async def _two_members() -> tuple[LanHub, LanMember, LanMember]:
    hub = LanHub([DEMO])
    alice, _ = await hub.join("demo", "alice", lambda news: None)
    bob, _ = await hub.join("demo", "bob", lambda news: None)
    return hub, alice, bob


async def _splice(hub: LanHub, server: LanMember, client: LanMember) -> tuple[TcpStream, TcpStream]:
    listener = await server.host.listen_tcp(server.address, 8000)
    end = await hub.connect_member(client, server.address, 8000)
    served = hub.accepted(server, await listener.accept())
    await listener.aclose()
    return end, served


async def test_spliced_ends_keep_the_tcp_contract() -> None:
    hub, alice, bob = await _two_members()
    listener = await alice.host.listen_tcp(alice.address, 8000)
    end = await hub.connect_member(bob, alice.address, 8000)
    assert isinstance(end, SplicedStream)
    # Sent and shut down before the listener's session took the connection:
    # all of it waits for that session.
    await end.send(b"early ")
    await end.send(b"bytes")
    await end.send_eof()
    with pytest.raises(BrokenPipeError):
        await end.send(b"after the end")
    connection = await listener.accept()
    served = hub.accepted(alice, connection)
    assert isinstance(served, SplicedStream)
    # The addresses are the virtual connection's: each sees the other member.
    assert served.remote_address == (bob.address, end.local_address[1])
    assert end.remote_address == (alice.address, 8000)
    assert await served.receive(6) == b"early "
    assert await served.receive() == b"bytes"
    with pytest.raises(anyio.EndOfStream):
        await served.receive()
    # Half-closed: the other way still carries bytes.
    await served.send(b"answer")
    assert await end.receive() == b"answer"
    await served.aclose()
    with pytest.raises(anyio.EndOfStream):
        await end.receive()
    # A peer that is gone answers the next send with an error, not silence.
    await end.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await end.send(b"x")
    assert not hub.lans["demo"].unaccepted
    assert not alice.splices
    assert not bob.splices


async def test_a_spliced_writer_waits_for_its_reader() -> None:
    hub, alice, bob = await _two_members()
    listener = await alice.host.listen_tcp(alice.address, 8000)
    end = await hub.connect_member(bob, alice.address, 8000)
    block = bytes(range(256)) * 256
    written: list[int] = []

    async def write() -> None:
        for _ in range(8):
            await end.send(block)
            written.append(len(block))

    async with anyio.create_task_group() as group:
        group.start_soon(write)
        await anyio.wait_all_tasks_blocked()
        # Nobody took the other end yet: the writer stopped at the window.
        assert sum(written) == SPLICE_WINDOW
        served = hub.accepted(alice, await listener.accept())
        assert isinstance(served, SplicedStream)
        delivered: list[bytes] = []
        ended: list[BaseException] = []

        async def deliver(data: bytes) -> None:
            delivered.append(data)

        async def read() -> None:
            try:
                await served.deliver_to(deliver)
            except anyio.EndOfStream as exc:
                ended.append(exc)

        group.start_soon(read)
        await anyio.wait_all_tasks_blocked()
        # What waited went first, in order; the writer got through.
        assert b"".join(delivered) == block * 8
        # From now on the writer's send is the delivery itself.
        await end.send(b"straight through")
        assert delivered[-1] == b"straight through"
        await end.send_eof()
    assert len(ended) == 1
    assert b"".join(delivered) == block * 8 + b"straight through"


async def test_send_now_hands_over_only_what_may_not_wait() -> None:
    """``send_now`` passes bytes on at once only when nothing is ahead of them."""
    hub, alice, bob = await _two_members()
    end, served = await _splice(hub, alice, bob)
    assert isinstance(end, SplicedStream)
    assert isinstance(served, SplicedStream)
    delivered: list[bytes] = []
    room = [True]

    async def deliver(data: bytes) -> None:
        delivered.append(data)

    def deliver_now(data: bytes | memoryview) -> bool:
        if room[0]:
            delivered.append(bytes(data))
        return room[0]

    # Nobody reads yet: the bytes must be queued (the writer's session does).
    assert not end.send_now(b"early")
    await end.send(b"queued")
    ended: list[BaseException] = []

    async def read() -> None:
        try:
            await served.deliver_to(deliver, deliver_now)
        except anyio.EndOfStream as exc:
            ended.append(exc)

    async with anyio.create_task_group() as group:
        group.start_soon(read)
        await anyio.wait_all_tasks_blocked()
        assert delivered == [b"queued"]
        assert end.send_now(memoryview(b"at once"))
        # The reader's output is full: refused, nothing delivered.
        room[0] = False
        assert not end.send_now(b"refused")
        room[0] = True
        await end.send_eof()
        assert not end.send_now(b"after the end")
    assert delivered == [b"queued", b"at once"]
    assert len(ended) == 1
    await end.aclose()
    await served.aclose()


async def test_a_reading_member_gets_spliced_packets_without_the_upload_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With room in the reader's output, the writer's packets are never queued at the gateway."""
    from netshim.gateway import _server

    queued: list[int] = []
    push = _server._WispStream.push

    def counting_push(self: _server._WispStream, data: bytes | memoryview) -> None:
        queued.append(len(data))
        push(self, data)

    monkeypatch.setattr(_server._WispStream, "push", counting_push)
    size = 1 << 20
    async with _joined(config(high_water=4 * size)) as joined:
        for writer in ("connecting", "accepting"):
            (sender, sender_stream), (reader, reader_stream) = joined.from_end(writer)
            reader.pause()
            data = os.urandom(size)
            await sender.send(sender_stream, data)
            reader.resume()
            assert await reader.receive_exactly(reader_stream, size) == data
    assert queued == []


async def test_resets_reach_a_spliced_end() -> None:
    hub, alice, bob = await _two_members()
    # Aborted: what was sent before is read, then the reset.
    end, served = await _splice(hub, alice, bob)
    await end.send(b"last words")
    await end.abort()
    assert await served.receive() == b"last words"
    with pytest.raises(ConnectionResetError):
        await served.receive()
    with pytest.raises(ConnectionResetError):
        await served.send(b"x")
    await served.aclose()
    # Closed with unread bytes: a reset, as a socket's close gives.
    end, served = await _splice(hub, alice, bob)
    await served.send(b"never read")
    await end.aclose()
    with pytest.raises(ConnectionResetError):
        await served.receive()
    await served.aclose()
    assert not alice.splices
    assert not bob.splices


async def test_a_connection_that_dies_in_the_listeners_queue_resets_the_spliced_end() -> None:
    hub, alice, bob = await _two_members()
    listener = await alice.host.listen_tcp(alice.address, 8000)
    end = await hub.connect_member(bob, alice.address, 8000)
    await end.send(b"queued")
    # Closing a listener resets the connections still in its queue.
    await listener.aclose()
    with pytest.raises(ConnectionResetError):
        with anyio.fail_after(10):
            await end.receive()
    assert not hub.lans["demo"].unaccepted
    await end.aclose()


async def test_a_listener_that_is_no_members_gets_the_virtual_connection() -> None:
    hub, alice, bob = await _two_members()
    lan = hub.lans["demo"]
    other = lan.network.add_host("other", ["10.77.0.50/24"])
    listener = await other.listen_tcp("10.77.0.50", 8000)
    stream = await hub.connect_member(bob, "10.77.0.50", 8000)
    assert not isinstance(stream, SplicedStream)
    served = await listener.accept()
    await stream.send(b"plain")
    assert await served.receive() == b"plain"
    assert hub.accepted(alice, served) is served
    assert not lan.unaccepted


# -- port forwards


async def test_forward_to_a_member_listener() -> None:
    forward = Forward("127.0.0.1", 0, "demo", "alice", 8000)
    async with running_gateway(config(forwards=(forward,))) as gateway:
        (address,) = gateway.forward_addresses
        # Nobody there yet: refused (reset) at once.
        stream = await anyio.connect_tcp(*address)
        with pytest.raises((anyio.EndOfStream, OSError, anyio.BrokenResourceError)):
            with anyio.fail_after(10):
                await stream.receive()
        await stream.aclose()
        async with member(gateway, "alice") as alice:  # type: ignore[attr-defined]
            listener, _ = await alice.listen(8000)

            async def serve() -> None:
                accepted = await alice.accept(listener)
                assert accepted.host == "10.77.0.1"
                request = await alice.receive_exactly(accepted.stream_id, 18)
                assert request == b"GET / HTTP/1.0\r\n\r\n"
                body = b"hello from alice"
                await alice.send(
                    accepted.stream_id,
                    b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
                )
                await alice.close(accepted.stream_id)

            async with anyio.create_task_group() as group:
                group.start_soon(serve)
                answer = await anyio.to_thread.run_sync(_http_get, address)
            assert answer.endswith(b"\r\n\r\nhello from alice")
            assert answer.startswith(b"HTTP/1.0 200 OK")
    metrics = gateway.metrics.render().decode()
    refused = 'protocol="forward",reason="ConnectionRefusedError"} 1.0'
    assert f"netshim_gateway_streams_closed_total{{{refused}" in metrics


def _http_get(address: tuple[str, int]) -> bytes:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        parts = []
        while data := sock.recv(65536):
            parts.append(data)
        return b"".join(parts)


# -- pieces


def test_remove_host_frees_its_name_address_and_ports() -> None:
    network = VirtualNetwork(resolver=False, ipv4_subnet="10.1.0.0/24")
    alice = network.add_host("alice", ["10.1.0.2"])
    bob = network.add_host("bob", ["10.1.0.3"])
    listener = alice.listen_now("10.1.0.2", 80)
    udp = alice.open_udp_now("10.1.0.2", 53)
    network.remove_host(alice)
    assert listener.closed
    assert udp.closed
    assert network.owner_of(alice.interfaces[0].ip) is None
    with pytest.raises(KeyError):
        network.host("alice")

    async def connect() -> None:
        with pytest.raises(OSError) as unreachable:
            await bob.connect_tcp("10.1.0.2", 80)
        assert unreachable.value.errno == 113  # EHOSTUNREACH

    anyio.run(connect)
    again = network.add_host("alice", ["10.1.0.2"])
    again.listen_now("10.1.0.2", 80)


def test_remove_host_refuses_the_resolver() -> None:
    network = VirtualNetwork()
    assert network.resolver is not None
    with pytest.raises(ValueError, match="resolver"):
        network.remove_host(network.resolver)


def test_directory_hands_out_names_and_addresses() -> None:
    async def main() -> None:
        directory = LanDirectory([LanSpec("tiny", "10.9.0.0/30", "t")])
        first = await directory.claim("tiny", "a")
        assert (first.address, first.dns_name) == ("10.9.0.2", "a.tiny")
        assert first.address6 == str(ipv6_subnet_for("tiny")[2])
        with pytest.raises(OSError):
            await directory.claim("tiny", "b")
        assert await directory.route("tiny", "A.tiny.") == first
        assert await directory.route("tiny", "10.9.0.2") == first
        assert await directory.route("tiny", "10.9.0.3") is None
        await directory.release("tiny", "a")
        assert (await directory.claim("tiny", "")).name == "member-2"

    anyio.run(main)
    assert ipv6_subnet_for("demo") == ipv6_subnet_for("demo") != ipv6_subnet_for("other")
    assert ipv6_subnet_for("demo").network_address.packed[0] == 0xFD


# -- the command line


def test_lan_flags_reach_the_config(tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text("# name token\ndemo abc\n\nlab  xyz\n")
    config, listen = config_from_flags(
        "--lan",
        "demo",
        "--lan",
        "lab:192.168.50.0/24",
        "--lan",
        "third",
        "--lan-token-file",
        str(tmp_path / "tokens"),
        "--forward",
        "9000=demo/alice:8000",
        "--forward",
        "[::1]:9001=lab/bob:22",
        "--lan-listeners",
        "4",
    )
    assert [(s.name, s.cidr, s.token) for s in config.lans[:2]] == [
        ("demo", "10.77.0.0/24", "abc"),
        ("lab", "192.168.50.0/24", "xyz"),
    ]
    assert config.lans[2].cidr == "10.77.1.0/24"
    assert len(config.lans[2].token) >= 20
    assert listen["lan_tokens_made"] == {"third": config.lans[2].token}
    assert config.forwards == (
        Forward("127.0.0.1", 9000, "demo", "alice", 8000),
        Forward("::1", 9001, "lab", "bob", 22),
    )
    assert config.lan_listeners == 4


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lan", "bad_name"], "is not a DNS label"),
        (["--lan", "demo:10.77.0.0/33"], "is not an IPv4 CIDR"),
        (["--lan", "demo:10.77.0.0/31"], "too small"),
        (["--lan", "a:10.0.0.0/16", "--lan", "b:10.0.1.0/24"], "overlap"),
        (["--lan", "demo", "--lan", "demo"], "given twice"),
        (["--lan", "demo", "--forward", "9000=demo/alice"], "--forward expects"),
        (["--lan", "demo", "--forward", "99999=demo/alice:80"], "is not a port"),
        (["--lan", "demo", "--forward", "9000=lab/alice:80"], "no LAN lab is declared"),
        (["--lan", "demo", "--lan-listeners", "0"], "lan_listeners must be at least 1"),
        (["--lan-token-file", "/nonexistent/tokens"], "No such file or directory"),
    ],
)
def test_bad_lan_flags_are_one_clear_line(flags: list[str], message: str) -> None:
    assert message in refused_flags(*flags)


def test_lan_keys_in_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text("demo abc\n")
    (tmp_path / "gateway.toml").write_text(
        'lan = ["demo:10.5.0.0/16"]\nforward = ["9000=demo/web:80"]\nlan_listeners = 3\n'
        f'lan_token_file = "{tmp_path / "tokens"}"\n'
    )
    config, listen = config_from_flags("--config", str(tmp_path / "gateway.toml"), "--lan", "extra")
    assert [(s.name, s.cidr) for s in config.lans] == [
        ("demo", "10.5.0.0/16"),
        ("extra", "10.77.0.0/24"),
    ]
    assert config.lans[0].token == "abc"
    assert config.forwards == (Forward("127.0.0.1", 9000, "demo", "web", 80),)
    assert config.lan_listeners == 3
    assert set(listen["lan_tokens_made"]) == {"extra"}


def test_default_cidrs_avoid_the_given_ones() -> None:
    lans = parse_lan_flags(["a", "b:10.77.1.0/24", "c", "d:10.77.0.0/23", "e"])
    assert lans == {
        "a": "10.77.2.0/24",
        "b": "10.77.1.0/24",
        "c": "10.77.3.0/24",
        "d": "10.77.0.0/23",
        "e": "10.77.4.0/24",
    }


def test_token_file_naming_an_undeclared_lan_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text("demo abc\nother xyz\n")
    with pytest.raises(ValueError, match="not declared: other"):
        config_from_flags("--lan", "demo", "--lan-token-file", str(tmp_path / "tokens"))
    (tmp_path / "tokens").write_text("demo abc extra\n")
    with pytest.raises(ValueError, match="expected 'NAME TOKEN'"):
        config_from_flags("--lan", "demo", "--lan-token-file", str(tmp_path / "tokens"))


_FORWARD = re.compile(r"listening protocol=forward address=(\S+):(\d+)")
_TOKEN = re.compile(r"LAN demo has no token in a file; its token: (\S+)")


def test_gateway_process_with_a_lan_and_a_forward() -> None:
    with gateway_process("--lan", "demo", "--forward", "0=demo/alice:8000") as process:
        deadline = time.monotonic() + 20
        while not (_FORWARD.search(process.log()) and _TOKEN.search(process.log())):
            assert time.monotonic() < deadline, process.log()
            time.sleep(0.05)
        forward_match = _FORWARD.search(process.log())
        token_match = _TOKEN.search(process.log())
        assert forward_match is not None
        assert token_match is not None
        forward = (forward_match.group(1), int(forward_match.group(2)))
        token = token_match.group(1)

        async def main() -> bytes:
            async with lan_client(process.http, "demo", "alice", token) as alice:
                assert alice.joined.host == "10.77.0.2"
                listener, _ = await alice.listen(8000)

                async def serve() -> None:
                    accepted = await alice.accept(listener)
                    data = await alice.receive_exactly(accepted.stream_id, 5)
                    await alice.send(accepted.stream_id, data.upper())
                    await alice.close(accepted.stream_id)

                async with anyio.create_task_group() as group:
                    group.start_soon(serve)
                    return await anyio.to_thread.run_sync(_socket_exchange, forward)
            raise AssertionError("unreachable")

        assert anyio.run(main) == b"HELLO"

        async def wrong() -> None:
            async with lan_client(process.http, "demo", "bob", "wrong"):
                pass

        with pytest.raises(JoinRefusedError):
            anyio.run(wrong)
        process.assert_serves()
        assert process.internal_errors() == []


def _socket_exchange(address: tuple[str, int]) -> bytes:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"hello")
        return recv_exactly(sock, 5)


# -- with the client stack


async def test_two_wisp_stacks_on_a_lan() -> None:
    """WispStack's own listen and connect, member to member, TCP and UDP."""
    size = 1 << 20
    async with running_gateway(config()) as gateway:
        host, port = gateway.addresses["http"]
        url = f"ws://{host}:{port}/"
        alice = WispStack(url, lan="demo", member="alice", token=TOKEN)
        bob = WispStack(url, lan="demo", member="bob", token=TOKEN)
        try:
            await alice.connect()
            await bob.connect()
            assert (alice.lan_address, alice.lan_name) == ("10.77.0.2", "alice.demo")
            listener = await alice.listen_tcp("0.0.0.0", 8000)
            payload = os.urandom(size)

            async def serve() -> None:
                conn = await listener.accept()
                assert conn.remote_address[0] == "10.77.0.3"
                async with conn:
                    done = 0
                    while done < size:
                        data = await conn.receive()
                        await conn.send(data)
                        done += len(data)

            async with anyio.create_task_group() as group:
                group.start_soon(serve)
                stream = await bob.connect_tcp("alice.demo", 8000)
                async with stream:
                    group.start_soon(stream.send, payload)
                    received = bytearray()
                    while len(received) < size:
                        received += await stream.receive()
            # (Wisp has no half-close: the whole echo is read before closing.)
            assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
            udp = await alice.open_udp("0.0.0.0", 5300)
            sender = await bob.open_udp("0.0.0.0", 5301)
            await sender.send(b"hello", ("alice.demo", 5300))
            with anyio.fail_after(10):
                data, source = await udp.receive()
            assert (data, source) == (b"hello", ("10.77.0.3", 5301))
            await udp.send(b"back", source)
            with anyio.fail_after(10):
                assert (await sender.receive())[0] == b"back"
            await udp.aclose()
            await sender.aclose()
            await listener.aclose()
        finally:
            await alice.aclose()
            await bob.aclose()


async def test_curl_through_a_forward_to_a_wisp_stack_server() -> None:
    """curl on this machine fetches 2 MiB from an HTTP server listening behind a WispStack."""
    curl = require_peer("curl")
    body = os.urandom(2 << 20)
    forward = Forward("127.0.0.1", 0, "demo", "web", 8080)
    async with running_gateway(config(forwards=(forward,))) as gateway:
        host, port = gateway.addresses["http"]
        web = WispStack(f"ws://{host}:{port}/", lan="demo", member="web", token=TOKEN)
        try:
            listener = await web.listen_tcp(None, 8080)

            async def serve_one() -> None:
                conn = await listener.accept()
                async with conn:
                    request = b""
                    while b"\r\n\r\n" not in request:
                        request += await conn.receive()
                    assert request.startswith(b"GET /blob HTTP/1.1\r\n")
                    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                    await conn.send(head % len(body) + body)

            (address,) = gateway.forward_addresses
            async with anyio.create_task_group() as group:
                group.start_soon(serve_one)
                result = await anyio.run_process(
                    [curl, "-sS", "--max-time", "30", f"http://{address[0]}:{address[1]}/blob"],
                    check=False,
                )
            assert result.returncode == 0, result.stderr
            assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(body).digest()
            await listener.aclose()
        finally:
            await web.aclose()
    metrics = gateway.metrics.render().decode()
    assert 'netshim_gateway_streams_closed_total{protocol="forward",reason="closed"} 1.0' in metrics


# -- walls


async def test_an_exception_in_a_lan_path_ends_that_stream_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with (
        running_gateway(config()) as gateway,
        member(gateway, "alice") as alice,  # type: ignore[attr-defined]
        member(gateway, "bob") as bob,  # type: ignore[attr-defined]
    ):
        assert gateway.lans is not None
        hub = gateway.lans
        original = hub.destination

        async def destination(who: object, host: str) -> str | None:
            if host == "boom.demo":
                raise RuntimeError("a bug in routing")
            return await original(who, host)  # type: ignore[arg-type]

        monkeypatch.setattr(hub, "destination", destination)
        with pytest.raises(StreamClosedError) as failed:
            await bob.connect("boom.demo", 80)
        assert failed.value.reason == CloseReason.NETWORK_ERROR
        # A listener whose binding fails unexpectedly.
        alice_host = hub.lans["demo"].members["alice"].host

        async def broken_listen(*args: object, **kwargs: object) -> None:
            raise RuntimeError("a bug in binding")

        monkeypatch.setattr(alice_host, "listen_tcp", broken_listen)
        with pytest.raises(StreamClosedError) as failed:
            await alice.listen(8000)
        assert failed.value.reason == CloseReason.NETWORK_ERROR
        monkeypatch.undo()
        # Both sessions live on.
        listener, _ = await alice.listen(8000)
        stream = await bob.connect("alice.demo", 8000)
        accepted = await alice.accept(listener)
        await bob.send(stream, b"fine")
        assert await alice.receive_exactly(accepted.stream_id, 4) == b"fine"
    metrics = gateway.metrics.render().decode()
    assert 'netshim_gateway_internal_errors_total{front="wisp-stream"} 1.0' in metrics
    assert 'netshim_gateway_internal_errors_total{front="wisp-listener"} 1.0' in metrics


async def test_no_lans_no_extension() -> None:
    """A gateway without LANs does not announce the extension; a join is not answered."""
    async with (
        running_gateway(GatewayConfig(policy=Policy(allow=["127.0.0.1"]))) as gateway,
        lan_client(gateway) as client,
    ):
        assert not client.conn.lan_enabled
        assert client.news == []
        assert gateway.lans is None


async def test_random_lan_packets_never_hurt_the_gateway() -> None:
    """Seeded garbage in the LAN packets' shapes: refused or ignored, never an internal error.

    A packet that breaks the connection-level protocol ends that member's
    connection only; the next round starts a new member.
    """
    rng = random.Random(19)
    kinds = [
        wisp.PacketType.LISTEN,
        wisp.PacketType.LISTENING,
        wisp.PacketType.ACCEPT,
        wisp.PacketType.MEMBERSHIP,
        wisp.PacketType.DATA,
        wisp.PacketType.CLOSE,
        wisp.PacketType.CONTINUE,
    ]
    sent = 0
    async with (
        running_gateway(config(lan_listeners=4)) as gateway,
        member(gateway, "bob") as bob,  # type: ignore[attr-defined]
    ):
        bob_udp, _ = await bob.listen(6000, udp=True)
        for round_ in range(40):
            async with member(gateway, f"fuzz{round_}") as fuzz:  # type: ignore[attr-defined]
                udp_listener, _ = await fuzz.listen(5353, udp=True)
                for _ in range(50):
                    kind = rng.choice(kinds)
                    stream_id = rng.choice(
                        [udp_listener, rng.randrange(1, 50), 0x8000_0000 + rng.randrange(4)] * 5
                        + [0]
                    )
                    payload = rng.randbytes(rng.randrange(0, 40))
                    if kind == wisp.PacketType.LISTEN and payload:
                        # Mostly valid types, so that binding is exercised too.
                        payload = bytes([rng.choice([1, 2, 3])]) + payload[1:]
                    if kind == wisp.PacketType.DATA and stream_id == udp_listener and payload:
                        # Addressed to Bob's port now and then.
                        payload = wisp.pack_datagram("bob.demo", 6000, payload)
                    packet = bytes([kind]) + stream_id.to_bytes(4, "little") + payload
                    try:
                        await fuzz.send_raw(packet)
                    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                        break
                    sent += 1
        assert sent > 400
        # Bob is served still.
        listener, _ = await bob.listen(8000)
        stream = await bob.connect("bob.demo", 8000)
        accepted = await bob.accept(listener)
        await bob.send(stream, b"alive")
        assert await bob.receive_exactly(accepted.stream_id, 5) == b"alive"
        await bob.send_datagram(bob_udp, "bob.demo", 6000, b"self")
        # (Behind whatever the members sent to Bob's port.)
        while (datagram := await bob.receive_datagram(bob_udp))[2] != b"self":
            assert datagram[1] == 5353
        assert datagram == ("10.77.0.2", 6000, b"self")
    assert "internal_errors_total{" not in gateway.metrics.render().decode()


def test_gateway_process_memory_stays_bounded_when_a_member_does_not_read(
    tmp_path: Path,
) -> None:
    """The process's resident memory, as an operator sees it, while Bob pushes at idle Alice."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"demo {TOKEN}\n")
    flags = ("--lan", "demo", "--lan-token-file", str(tokens), "--wisp-buffer-size", "32")
    with gateway_process(*flags) as process:

        async def main() -> tuple[int, int, int]:
            async with (
                lan_client(process.http, "demo", "alice", TOKEN) as alice,
                lan_client(process.http, "demo", "bob", TOKEN) as bob,
            ):
                listener, _ = await alice.listen(8000)
                stream = await bob.connect("alice.demo", 8000)
                accepted = await alice.accept(listener)
                alice.pause()
                idle = process.rss()
                sent = 0
                block = os.urandom(1 << 16)
                with anyio.move_on_after(4):
                    while True:
                        await bob.send(stream, block)
                        sent += len(block)
                stalled = process.rss()
                alice.resume()
                received = await alice.receive_exactly(accepted.stream_id, sent)
                assert len(received) == sent
                return idle, stalled, sent

        idle, stalled, sent = anyio.run(main)
        print(f"\nsent {sent >> 20} MiB; RSS {idle >> 20} -> {stalled >> 20} MiB")
        # Bob ran out of credit long before 256 MiB, and the gateway holds at
        # most its bounds (2 MiB of queue, a 256 KiB window, a WebSocket's
        # 1 MiB output) plus what the allocator keeps.
        assert sent < 64 << 20, sent
        assert stalled - idle < 32 << 20, (idle, stalled)
        assert process.internal_errors() == []


async def test_a_listener_closed_gives_its_port_and_place_back_at_once() -> None:
    # A server that closes its listening socket and listens again on the same
    # port at once (a restart) works on Linux: close() frees the port there
    # and then.  The new LISTEN follows the CLOSE at once, so the gateway
    # reads it before the closed listener's task has ended.
    async with (
        running_gateway(config(lan_listeners=1)) as gateway,
        member(gateway, "alice") as alice,  # type: ignore[attr-defined]
    ):
        for kind in ("tcp", "udp"):
            udp = kind == "udp"
            first, _ = await alice.listen(8000, udp=udp)
            again = alice._new_id()
            stream_type = wisp.StreamType.UDP if udp else wisp.StreamType.TCP
            await alice.close(first)
            await alice.send_event(wisp.Listen(again, 8000, "", stream_type))
            stream = alice.streams[again]
            await alice.wait_for(lambda s=stream: s.listening is not None or s.closed is not None)
            assert stream.closed is None, f"{kind}: refused with {stream.closed:#x}"
            assert stream.listening is not None
            assert stream.listening.port == 8000
            await alice.close(again)
            await alice.wait_for(lambda: _listeners(gateway) == 0)
