"""Interface.visit_due_only: transmit passes that visit only the connections with something due.

Two interfaces on one IP "wire" (their packets handed across by hand), the
real TCP core on both sides.  In this mode a pass visits a connection the
interface gave work (a segment, a handshake), one a socket call named with
``touch``, or one whose timer fell due; the tests check that each of these
reaches the wire, that an untouched socket call waits for its touch (the
contract the caller signs), and that finished connections leave the timer
heap.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface

from netshim.ip.iface import Interface, Medium
from netshim.ip.tcp import TcpConnection

A = IPv4Address("10.9.0.1")
B = IPv4Address("10.9.0.2")


def pair() -> tuple[Interface, Interface]:
    a = Interface(Medium.IP, addresses=[IPv4Interface("10.9.0.1/24")])
    b = Interface(Medium.IP, addresses=[IPv4Interface("10.9.0.2/24")])
    a.visit_due_only()
    b.visit_due_only()
    return a, b


def carry(a: Interface, b: Interface, now: float, rounds: int = 8) -> int:
    """Move packets both ways until both are quiet; how many moved."""
    moved = 0
    for _ in range(rounds):
        out_a, out_b = a.transmit(now), b.transmit(now)
        if not out_a and not out_b:
            break
        for packet in out_a:
            b.receive(packet.data, now, checksum_verified=True)
        for packet in out_b:
            a.receive(packet.data, now, checksum_verified=True)
        moved += len(out_a) + len(out_b)
    return moved


def established(now: float = 0.0) -> tuple[Interface, Interface, TcpConnection, TcpConnection]:
    a, b = pair()
    listener = b.tcp_listen(B, 80)
    client = a.tcp_connect((B, 80), now=now)
    carry(a, b, now)
    server = listener.accept()
    assert server is not None
    assert client.established
    assert server.established
    return a, b, client, server


def test_handshake_and_touched_data_reach_the_peer() -> None:
    a, b, client, server = established()
    assert client.send(b"hello") == 5
    a.touch(client)
    carry(a, b, 0.01)
    assert server.receive(100) == b"hello"


def test_an_untouched_socket_call_waits_for_its_touch() -> None:
    a, b, client, server = established()
    client.send(b"late")
    assert a.transmit(0.01) == []
    a.touch(client)
    carry(a, b, 0.02)
    assert server.receive(100) == b"late"


def test_a_timer_falls_due_without_a_touch() -> None:
    a, b, client, server = established()
    client.send(b"lost")
    a.touch(client)
    assert len(a.transmit(0.01)) == 1  # dropped: never handed to b
    deadline = a.deadline()
    assert deadline is not None
    assert deadline > 0.01
    again = a.transmit(deadline)
    assert len(again) == 1  # the retransmission, found through the timer heap
    for packet in again:
        b.receive(packet.data, deadline, checksum_verified=True)
    assert server.receive(100) == b"lost"


def test_finished_connections_leave_the_schedule() -> None:
    a, b = pair()
    listener = b.tcp_listen(B, 80)
    now = 0.0
    for _ in range(100):
        client = a.tcp_connect((B, 80), now=now)
        carry(a, b, now)
        server = listener.accept()
        assert server is not None
        client.abort()
        a.touch(client)
        carry(a, b, now)
        now += 0.001
    assert a.connections() == []
    assert b.connections() == []
    assert a.deadline() is None
    assert b.deadline() is None
    # Entries of finished connections are dropped once they outnumber the live ones.
    a.transmit(now)
    assert len(a._timers) <= 64
