"""The DHCPv4 client's state machine, against a scripted server and a fake clock."""

from __future__ import annotations

import ipaddress
import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from netshim.ip.dhcp import (
    DhcpClient,
    DhcpError,
    DhcpMessage,
    DhcpState,
    MessageType,
    parse_message,
)
from netshim.protocols.ip import EthernetAddress

MAC = EthernetAddress.from_text("02:00:00:00:00:42")
SERVER = ipaddress.IPv4Address("10.0.2.2")
OFFERED = ipaddress.IPv4Address("10.0.2.15")


def reply(
    request: DhcpMessage,
    kind: MessageType,
    *,
    lease: int = 3600,
    address: ipaddress.IPv4Address = OFFERED,
    extra: dict[int, bytes] | None = None,
) -> bytes:
    options = {
        53: bytes([kind]),
        54: SERVER.packed,
        51: lease.to_bytes(4, "big"),
        1: ipaddress.IPv4Address("255.255.255.0").packed,
        3: SERVER.packed,
        6: ipaddress.IPv4Address("10.0.2.3").packed + ipaddress.IPv4Address("10.0.2.4").packed,
        15: b"example.test",
    }
    options.update(extra or {})
    return DhcpMessage(
        op=2, xid=request.xid, chaddr=request.chaddr, yiaddr=address, options=options
    ).emit()


def bound_client(now: float = 0.0) -> DhcpClient:
    client = DhcpClient(MAC, hostname="box", rng=random.Random(1))
    (discover,) = client.poll(now)
    client.receive(reply(parse_message(discover.payload), MessageType.OFFER), now)
    (request,) = client.poll(now)
    client.receive(reply(parse_message(request.payload), MessageType.ACK), now)
    return client


def test_discover_offer_request_ack_gives_the_lease_and_its_configuration() -> None:
    client = DhcpClient(MAC, hostname="box", rng=random.Random(1))
    (discover,) = client.poll(0.0)
    assert (discover.source, discover.destination) == (
        ipaddress.IPv4Address(0),
        ipaddress.IPv4Address("255.255.255.255"),
    )
    message = parse_message(discover.payload)
    assert message.message_type is MessageType.DISCOVER
    assert message.flags & 0x8000, "asks for broadcast replies: it has no address yet"
    assert message.options[12] == b"box"
    assert len(discover.payload) >= 300
    client.receive(reply(message, MessageType.OFFER), 0.5)
    assert client.state is DhcpState.REQUESTING
    (request,) = client.poll(0.5)
    request_message = parse_message(request.payload)
    assert request_message.message_type is MessageType.REQUEST
    assert request_message.options[50] == OFFERED.packed
    assert request_message.options[54] == SERVER.packed
    assert request_message.xid == message.xid
    client.receive(reply(request_message, MessageType.ACK), 0.6)
    lease = client.lease
    assert lease is not None
    assert client.state is DhcpState.BOUND
    assert lease.interface == ipaddress.IPv4Interface("10.0.2.15/24")
    assert lease.routers == (SERVER,)
    assert [str(a) for a in lease.dns_servers] == ["10.0.2.3", "10.0.2.4"]
    assert lease.domain == "example.test"
    assert (lease.renew_time, lease.rebind_time) == (1800.0, 3150.0)
    assert client.take_change()
    assert not client.take_change()
    assert client.deadline() == 0.6 + 1800.0


def test_lost_discovers_are_sent_again_with_growing_delays() -> None:
    client = DhcpClient(MAC, rng=random.Random(2))
    now, sent_at = 0.0, []
    while now < 200:
        if client.poll(now):
            sent_at.append(now)
        deadline = client.deadline()
        assert deadline is not None
        now = deadline
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    # 4, 8, 16, 32, 64 seconds, each +-1 (RFC 2131 4.1), then a new transaction.
    for gap, expected in zip(gaps, (4, 8, 16, 32, 64), strict=False):
        assert expected - 1 <= gap <= expected + 1
    assert len(gaps) >= 5


def test_renewal_is_unicast_to_the_server_then_rebinding_broadcasts_then_the_lease_ends() -> None:
    client = bound_client()
    lease = client.lease
    assert lease is not None
    (renew,) = client.poll(1800.0)
    assert client.state is DhcpState.RENEWING
    assert renew.destination == SERVER
    assert renew.source == OFFERED
    renew_message = parse_message(renew.payload)
    assert renew_message.ciaddr == OFFERED
    assert 50 not in renew_message.options
    # Unanswered: at T2 the client asks any server.
    (rebind,) = client.poll(3150.0)
    assert client.state is DhcpState.REBINDING
    assert rebind.destination == ipaddress.IPv4Address("255.255.255.255")
    # Unanswered until the lease ends: the address is gone, DISCOVER again.
    out = client.poll(3600.0)
    assert client.lease is None
    assert client.take_change()
    assert [parse_message(o.payload).message_type for o in out] == [MessageType.DISCOVER]


def test_an_ack_while_renewing_extends_the_lease() -> None:
    client = bound_client()
    assert client.take_change()
    (renew,) = client.poll(1800.0)
    client.receive(reply(parse_message(renew.payload), MessageType.ACK, lease=7200), 1801.0)
    lease = client.lease
    assert client.state is DhcpState.BOUND
    assert lease is not None
    assert lease.expires_at == 1801.0 + 7200
    assert not client.take_change(), "same address and routes: nothing to reconfigure"
    assert client.deadline() == 1801.0 + 3600


def test_a_nak_starts_over() -> None:
    client = DhcpClient(MAC, rng=random.Random(3))
    (discover,) = client.poll(0.0)
    client.receive(reply(parse_message(discover.payload), MessageType.OFFER), 0.1)
    (request,) = client.poll(0.1)
    client.receive(reply(parse_message(request.payload), MessageType.NAK), 0.2)
    assert client.state is DhcpState.INIT
    assert client.lease is None
    (again,) = client.poll(0.2)
    assert parse_message(again.payload).message_type is MessageType.DISCOVER
    assert parse_message(again.payload).xid != parse_message(discover.payload).xid


def test_replies_to_other_transactions_or_machines_are_dropped() -> None:
    client = DhcpClient(MAC, rng=random.Random(4))
    (discover,) = client.poll(0.0)
    message = parse_message(discover.payload)
    other = DhcpMessage(op=1, xid=message.xid ^ 1, chaddr=message.chaddr)
    client.receive(reply(other, MessageType.OFFER), 0.1)
    stranger = DhcpMessage(op=1, xid=message.xid, chaddr=b"\x02\x00\x00\x00\x00\x99")
    client.receive(reply(stranger, MessageType.OFFER), 0.1)
    assert client.state is DhcpState.SELECTING
    assert client.dropped["not ours"] == 2


def test_release_gives_the_address_back() -> None:
    client = bound_client()
    (release,) = client.release()
    message = parse_message(release.payload)
    assert message.message_type is MessageType.RELEASE
    assert message.ciaddr == OFFERED
    assert release.destination == SERVER
    assert client.lease is None
    assert client.state is DhcpState.STOPPED
    assert client.deadline() is None


def test_long_options_are_split_and_joined_again() -> None:
    names = b"a" * 300
    message = DhcpMessage(op=2, xid=7, chaddr=MAC.octets, options={15: names, 53: b"\x05"})
    assert parse_message(message.emit()).options[15] == names


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_never_raises_out_of_the_client(data: bytes) -> None:
    client = DhcpClient(MAC, rng=random.Random(5))
    client.poll(0.0)
    client.receive(data, 0.1)
    assert client.state is DhcpState.SELECTING
    assert sum(client.dropped.values()) == 1
    try:
        parse_message(data)
    except DhcpError:
        return
    # Whatever parses is a message of some other transaction.
    assert client.dropped["malformed"] == 0
