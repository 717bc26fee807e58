"""netshim.ip.tcp: handshakes, closes, resets and timers, two connections back to back."""

from __future__ import annotations

import errno
import gc
import ipaddress
import itertools
import tracemalloc

import pytest
from tcp_core_harness import (
    A_ADDRESS,
    B_ADDRESS,
    START,
    Network,
    StuckError,
    pattern,
    transfer,
)

from netshim.ip.tcp import (
    TcpConfig,
    TcpConnection,
    TcpState,
    initial_sequence_number,
    reset_for_unexpected,
)
from netshim.protocols.ip import (
    MaxSegmentSize,
    SackBlocks,
    SackPermitted,
    TcpFlags,
    TcpRepr,
    Timestamps,
    WindowScale,
)

SYN = TcpFlags.SYN
ACK = TcpFlags.ACK
FIN = TcpFlags.FIN
RST = TcpFlags.RST


def flag_names(network: Network) -> list[tuple[str, str]]:
    names = []
    for entry in network.log:
        flags = entry.flags
        label = "".join(
            name for flag, name in ((SYN, "S"), (FIN, "F"), (RST, "R"), (ACK, ".")) if flags & flag
        )
        names.append((entry.direction, label + ("+data" if entry.segment.payload else "")))
    return names


# --------------------------------------------------------------------- handshake


def test_three_way_handshake_negotiates_options() -> None:
    network = Network(
        a_config=TcpConfig(receive_buffer=256 << 10), b_config=TcpConfig(receive_buffer=4 << 20)
    )
    network.handshake()
    assert flag_names(network) == [("a>b", "S"), ("b>a", "S."), ("a>b", ".")]
    syn, syn_ack, _ = network.segments()
    assert syn.seq == network.iss_a
    assert syn.find_option(MaxSegmentSize) == MaxSegmentSize(1460)
    assert syn.find_option(SackPermitted) is not None
    assert syn.find_option(Timestamps) is not None
    assert syn.find_option(WindowScale) == WindowScale(3)
    assert syn_ack.ack == network.iss_a + 1
    assert syn_ack.seq == network.iss_b
    assert syn_ack.find_option(WindowScale) == WindowScale(7)
    # Timestamps take 12 bytes of every segment.
    assert network.a.send_mss == 1460 - 12
    assert network.a.state is TcpState.ESTABLISHED
    assert network.server.state is TcpState.ESTABLISHED
    assert network.a.srtt == pytest.approx(0.002, abs=0.0011)


def test_handshake_without_options_when_peer_offers_none() -> None:
    plain = TcpConfig(window_scale=False, timestamps=False, sack=False, mss=1000)
    network = Network(a_config=plain)
    network.handshake()
    syn, syn_ack, _ = network.segments()
    assert syn.find_option(WindowScale) is None
    # The SYN-ACK offers only what the SYN offered.
    assert syn_ack.find_option(WindowScale) is None
    assert syn_ack.find_option(Timestamps) is None
    assert syn_ack.find_option(SackPermitted) is None
    # Each side sends at most the smaller of the two MSS values.
    assert network.server.send_mss == 1000
    assert network.a.send_mss == 1000
    received_by_b, received_by_a = transfer(network, pattern(300_000), pattern(1000, 1))
    assert received_by_b == pattern(300_000)
    assert received_by_a == pattern(1000, 1)


def test_data_queued_before_handshake_goes_after_it() -> None:
    network = Network()
    assert network.a.send(b"early") == 5
    network.run_until(lambda: network.b is not None and network.server.readable() == 5)
    assert network.server.receive(100) == b"early"


def test_simultaneous_open() -> None:
    network = Network(simultaneous=True)
    network.handshake()
    names = flag_names(network)
    assert names[:2] == [("a>b", "S"), ("b>a", "S")]
    assert ("a>b", "S.") in names
    assert ("b>a", "S.") in names
    assert network.a.state is TcpState.ESTABLISHED
    assert network.server.state is TcpState.ESTABLISHED
    received_by_b, received_by_a = transfer(network, b"from a", b"from b")
    assert (received_by_b, received_by_a) == (b"from a", b"from b")


def test_lost_syn_ack_is_retransmitted_and_syn_again_answered() -> None:
    dropped = []

    def drop_first_syn_ack(direction: str, segment: TcpRepr, now: float) -> list[float]:
        if direction == "b>a" and segment.flags & SYN and not dropped:
            dropped.append(segment)
            return []
        return [0.0]

    network = Network(fault=drop_first_syn_ack)
    network.handshake()
    syn_acks = [e for e in network.log if e.direction == "b>a" and e.flags & SYN]
    syns = [e for e in network.log if e.direction == "a>b" and e.flags & SYN]
    assert len(syn_acks) == 2
    # The SYN-ACK went again after 1 s (initial RTO), or when the SYN came again.
    assert syn_acks[1].time - syn_acks[0].time == pytest.approx(1.0, abs=0.01)
    assert len(syns) in (1, 2)


def test_refused_connect_gives_econnrefused() -> None:
    network = Network(listening=False)
    network.run_until(lambda: network.a.state is TcpState.CLOSED)
    assert isinstance(network.a.error, ConnectionRefusedError)
    assert network.a.error.errno == errno.ECONNREFUSED
    assert flag_names(network) == [("a>b", "S"), ("b>a", "R.")]
    assert network.a.finished
    with pytest.raises(ConnectionRefusedError):
        network.a.send(b"x")


def test_syn_retries_then_etimedout() -> None:
    network = Network(fault=lambda direction, segment, now: [])
    network.run_until(lambda: network.a.state is TcpState.CLOSED, timeout=400)
    syns = [entry.time - START for entry in network.log]
    # Linux's schedule: 0, 1, 3, 7, 15, 31, 63 and giving up at 127 s.
    assert syns == pytest.approx([0, 1, 3, 7, 15, 31, 63])
    assert network.now - START == pytest.approx(127)
    assert isinstance(network.a.error, TimeoutError)
    assert network.a.error.errno == errno.ETIMEDOUT


def test_icmp_unreachable_in_syn_sent_is_hard() -> None:
    network = Network(fault=lambda direction, segment, now: [])
    network.flush()
    network.a.on_icmp_error(errno.EHOSTUNREACH, network.now)
    assert network.a.state is TcpState.CLOSED
    assert network.a.error is not None
    assert network.a.error.errno == errno.EHOSTUNREACH


def test_icmp_error_when_established_is_soft_and_reported_on_timeout() -> None:
    blackhole = {"on": False}
    network = Network(
        a_config=TcpConfig(data_retries=3),
        fault=lambda direction, segment, now: [] if blackhole["on"] else [0.0],
    )
    network.handshake()
    network.a.on_icmp_error(errno.EHOSTUNREACH, network.now)
    assert network.a.state is TcpState.ESTABLISHED
    assert network.a.error is None
    blackhole["on"] = True
    network.a.send(b"lost")
    network.run_until(lambda: network.a.state is TcpState.CLOSED, timeout=100)
    assert network.a.error is not None
    assert network.a.error.errno == errno.EHOSTUNREACH


def test_icmp_with_quoted_sequence_outside_the_window_is_ignored() -> None:
    network = Network(fault=lambda direction, segment, now: [])
    network.flush()
    network.a.on_icmp_error(errno.ECONNREFUSED, network.now, seq=12345)
    assert network.a.state is TcpState.SYN_SENT
    network.a.on_icmp_error(errno.ECONNREFUSED, network.now, seq=network.iss_a)
    assert network.a.state is TcpState.CLOSED


def test_path_mtu_shrinks_the_mss_and_resends() -> None:
    big = {"limit": 10_000}

    def small_mtu(direction: str, segment: TcpRepr, now: float) -> list[float]:
        return [] if len(segment.payload) > big["limit"] else [0.0]

    network = Network(fault=small_mtu)
    network.handshake()
    big["limit"] = 1000
    network.a.send(pattern(50_000))
    network.flush()
    network.a.on_icmp_error(errno.EMSGSIZE, network.now, mtu=1040)
    assert network.a.send_mss == 1000 - 12
    network.run_until(lambda: network.server.readable() == 50_000, timeout=10)
    assert network.server.receive(50_000) == pattern(50_000)


# --------------------------------------------------------------------- closing


def test_active_close_then_passive_close_and_time_wait() -> None:
    network = Network(a_config=TcpConfig(time_wait=30.0))
    network.handshake()
    network.a.shutdown()
    assert network.a.state is TcpState.FIN_WAIT_1
    network.run_until(lambda: network.server.state is TcpState.CLOSE_WAIT)
    network.run_until(lambda: network.a.state is TcpState.FIN_WAIT_2)
    assert network.server.at_eof
    assert network.server.receive(10) == b""
    # Half-closed: b can still send.
    network.server.send(b"still talking")
    network.run_until(lambda: network.a.readable() == 13)
    network.server.shutdown()
    assert network.server.state is TcpState.LAST_ACK
    network.run_until(lambda: network.a.state is TcpState.TIME_WAIT)
    entered = network.now
    network.run_until(lambda: network.server.state is TcpState.CLOSED)
    assert network.server.error is None
    assert network.server.finished
    assert not network.a.finished
    network.run_until(lambda: network.a.state is TcpState.CLOSED, timeout=40)
    assert network.now - entered == pytest.approx(30.0, abs=0.01)
    assert network.a.finished
    assert network.a.error is None


def test_a_passive_close_that_follows_at_once_answers_the_fin_with_one_segment() -> None:
    network = Network()
    network.handshake()
    before = len(network.log)
    network.a.shutdown()
    network.run_until(lambda: network.server.state is TcpState.CLOSE_WAIT)
    # The application closes as soon as it sees the end (a relay, a server
    # done with its answer): its FIN carries the ACK of the peer's FIN.
    network.server.shutdown()
    network.run_until(lambda: network.server.state is TcpState.CLOSED)
    assert flag_names(network)[before:] == [("a>b", "F."), ("b>a", "F."), ("a>b", ".")]


def test_a_fin_nobody_answers_is_acknowledged_after_the_delayed_ack_time() -> None:
    network = Network()
    network.handshake()
    before = len(network.log)
    network.a.shutdown()
    network.run_until(lambda: network.a.state is TcpState.FIN_WAIT_2, timeout=1)
    fin, ack = network.log[before : before + 2]
    assert (fin.direction, ack.direction) == ("a>b", "b>a")
    assert ack.flags == ACK
    assert ack.time - fin.time - network.latency == pytest.approx(0.04, abs=1e-6)
    # A FIN that ends a close we started is acknowledged at once.
    network.server.shutdown()
    before = len(network.log)
    network.run_until(lambda: network.a.state is TcpState.TIME_WAIT, timeout=1)
    fin, ack = network.log[before : before + 2]
    assert (fin.direction, ack.direction) == ("b>a", "a>b")
    assert ack.time - fin.time - network.latency == pytest.approx(0.0, abs=1e-6)


def test_simultaneous_close_goes_through_closing() -> None:
    network = Network(latency=0.01)
    network.handshake()
    network.a.shutdown()
    network.server.shutdown()
    states = set()

    def watch() -> None:
        states.add((network.a.state, network.server.state))

    network.pumps.append(watch)
    network.run_until(
        lambda: network.a.state is TcpState.TIME_WAIT and network.server.state is TcpState.TIME_WAIT
    )
    assert (TcpState.CLOSING, TcpState.CLOSING) in states
    network.run_for(61)
    assert network.a.state is TcpState.CLOSED
    assert network.server.state is TcpState.CLOSED


def test_fin_with_data_and_lost_fin_retransmitted() -> None:
    dropped = []

    def drop_first_fin(direction: str, segment: TcpRepr, now: float) -> list[float]:
        if direction == "a>b" and segment.flags & FIN and not dropped:
            dropped.append(segment)
            return []
        return [0.0]

    network = Network(fault=drop_first_fin)
    network.handshake()
    network.a.send(b"last words")
    network.a.shutdown()
    network.run_until(lambda: network.server.at_eof or network.server.readable() == 10)
    network.run_until(lambda: network.server.state is TcpState.CLOSE_WAIT, timeout=5)
    assert dropped
    assert dropped[0].payload == b"last words"  # the FIN rode on the data
    assert network.server.receive(100) == b"last words"
    assert network.server.receive(100) == b""


def test_lost_last_ack_in_time_wait_is_answered_and_timer_restarts() -> None:
    drop = {"count": 0}

    def drop_last_ack(direction: str, segment: TcpRepr, now: float) -> list[float]:
        # a's ACK of b's FIN: the first one is lost.
        if (
            direction == "a>b"
            and network.a.state is TcpState.TIME_WAIT
            and not segment.flags & FIN
            and drop["count"] == 0
        ):
            drop["count"] += 1
            return []
        return [0.0]

    network = Network(fault=drop_last_ack)
    network.handshake()
    network.a.shutdown()
    network.run_until(lambda: network.a.state is TcpState.FIN_WAIT_2)
    network.server.shutdown()
    network.run_until(lambda: network.server.state is TcpState.CLOSED, timeout=10)
    b_fins = [e for e in network.log if e.direction == "b>a" and e.flags & FIN]
    assert len(b_fins) == 2
    assert drop["count"] == 1
    assert network.a.state is TcpState.TIME_WAIT


def test_shutdown_is_idempotent_and_send_after_it_is_epipe() -> None:
    network = Network()
    network.handshake()
    network.a.shutdown()
    network.a.shutdown()
    assert network.a.send_space() == 0
    with pytest.raises(BrokenPipeError):
        network.a.send(b"x")
    network.run_until(lambda: network.server.at_eof)
    fins = [e for e in network.log if e.flags & FIN]
    assert len(fins) == 1


def test_receive_before_data_is_blocking_io_error() -> None:
    network = Network()
    network.handshake()
    with pytest.raises(BlockingIOError):
        network.server.receive(10)


# --------------------------------------------------------------------- resets


def test_abort_sends_rst_and_peer_gets_econnreset() -> None:
    network = Network()
    network.handshake()
    network.a.send(b"unread")
    network.run_until(lambda: network.server.readable() == 6)
    network.a.abort()
    assert network.a.state is TcpState.CLOSED
    network.run_until(lambda: network.server.state is TcpState.CLOSED)
    assert isinstance(network.server.error, ConnectionResetError)
    # Data that arrived before the RST is still readable, then the error.
    assert network.server.receive(100) == b"unread"
    with pytest.raises(ConnectionResetError):
        network.server.receive(100)
    with pytest.raises(ConnectionResetError):
        network.server.send(b"x")


def _in_window_segment(network: Network, flags: TcpFlags, offset: int) -> TcpRepr:
    """A segment from a to b at RCV.NXT + offset."""
    server = network.server
    # What a has sent and b expects next is a's SND.NXT.
    seq = (network.a.iss + 1 + network.a.bytes_sent + offset) & 0xFFFF_FFFF
    return TcpRepr(
        src_port=A_ADDRESS[1],
        dst_port=B_ADDRESS[1],
        seq=seq,
        ack=(server.iss + 1) & 0xFFFF_FFFF,
        flags=flags,
        window=1000,
    )


def test_in_window_rst_gets_challenge_ack_exact_rst_resets() -> None:
    network = Network()
    network.handshake()
    before = len(network.log)
    network.inject("b", _in_window_segment(network, RST, 100))
    network.run_for(0.01)
    assert network.server.state is TcpState.ESTABLISHED
    replies = [e for e in network.log[before:] if e.direction == "b>a"]
    assert len(replies) == 1
    assert replies[0].flags == ACK  # the challenge ACK
    assert replies[0].segment.ack == (network.a.iss + 1) & 0xFFFF_FFFF
    # Far outside the window: silently dropped.
    before = len(network.log)
    network.inject("b", _in_window_segment(network, RST, 1 << 30))
    network.run_for(0.01)
    assert [e for e in network.log[before:] if e.direction == "b>a"] == []
    network.inject("b", _in_window_segment(network, RST, 0))
    network.run_for(0.01)
    assert network.server.state is TcpState.CLOSED
    assert isinstance(network.server.error, ConnectionResetError)


def test_challenge_acks_are_rate_limited() -> None:
    network = Network()
    network.handshake()
    before = len(network.log)
    for offset in range(1, 21):
        network.inject("b", _in_window_segment(network, RST, offset * 10))
        network.inject("b", _in_window_segment(network, SYN, offset * 10))
    network.run_for(0.1)
    replies = [e for e in network.log[before:] if e.direction == "b>a"]
    assert len(replies) == 1
    assert network.server.challenge_acks_suppressed == 39
    assert network.server.state is TcpState.ESTABLISHED
    # Half a second later the next one is answered again.
    network.run_for(0.5)
    network.inject("b", _in_window_segment(network, RST, 10))
    network.run_for(0.01)
    assert len([e for e in network.log[before:] if e.direction == "b>a"]) == 2


def test_new_syn_may_reuse_a_time_wait_connection() -> None:
    network = Network()
    network.handshake()
    network.a.shutdown()
    network.run_until(lambda: network.a.state is TcpState.FIN_WAIT_2)
    network.server.shutdown()
    network.run_until(lambda: network.a.state is TcpState.TIME_WAIT)
    time_wait = network.a
    old_seq = (network.iss_b + 1) & 0xFFFF_FFFF

    def syn(seq: int, options: tuple[Timestamps, ...] = ()) -> TcpRepr:
        return TcpRepr(B_ADDRESS[1], A_ADDRESS[1], seq, 0, SYN, 1000, options)

    assert time_wait.accepts_new_syn(syn(old_seq + 100_000))
    assert not time_wait.accepts_new_syn(syn(old_seq - 1))
    recent = time_wait._ts_recent
    assert time_wait.accepts_new_syn(syn(old_seq - 1, (Timestamps(recent + 5, 0),)))
    assert not time_wait.accepts_new_syn(syn(old_seq + 100_000, (Timestamps(recent - 5, 0),)))
    assert not network.server.accepts_new_syn(syn(old_seq + 100_000))


def test_syn_in_established_gets_challenge_ack() -> None:
    network = Network()
    network.handshake()
    before = len(network.log)
    network.inject("b", _in_window_segment(network, SYN, 5))
    network.run_for(0.01)
    assert network.server.state is TcpState.ESTABLISHED
    replies = [e for e in network.log[before:] if e.direction == "b>a"]
    assert [r.flags for r in replies] == [ACK]
    # The ACK reaches a, which stays established too.
    assert network.a.state is TcpState.ESTABLISHED


def test_rst_in_close_wait_is_epipe_and_in_time_wait_just_closes() -> None:
    network = Network()
    network.handshake()
    network.a.shutdown()
    network.run_until(lambda: network.server.state is TcpState.CLOSE_WAIT)
    network.inject("b", _in_window_segment(network, RST, 1))  # after a's FIN
    network.run_for(0.01)
    assert network.server.state is TcpState.CLOSED
    assert network.server.error is not None
    assert network.server.error.errno == errno.EPIPE


def test_unacceptable_ack_in_syn_received_gets_reset() -> None:
    network = Network(fault=lambda direction, segment, now: [] if direction == "b>a" else [0.0])
    network.flush()
    network.step(START + 1)
    assert network.server.state is TcpState.SYN_RECEIVED
    bogus = TcpRepr(
        src_port=A_ADDRESS[1],
        dst_port=B_ADDRESS[1],
        seq=network.iss_a + 1,
        ack=12345,
        flags=ACK,
        window=100,
    )
    before = len(network.log)
    network.inject("b", bogus)
    network.step(START + 0.5)
    replies = [e.segment for e in network.log[before:] if e.direction == "b>a"]
    assert replies[0].flags == RST
    assert replies[0].seq == 12345
    assert network.server.state is TcpState.SYN_RECEIVED


def test_a_flood_of_bad_acks_in_syn_sent_costs_a_bounded_number_of_resets() -> None:
    network = Network(fault=lambda direction, segment, now: [])
    network.flush()
    for n in range(100):
        bogus = TcpRepr(B_ADDRESS[1], A_ADDRESS[1], n, 777 + n, SYN | ACK, 1000)
        network.a.on_segment(bogus, network.now)
    resets = network.a.poll(network.now)
    assert 1 <= len(resets) <= 8
    assert all(reset.flags == RST for reset in resets)
    assert resets[0].seq == 777
    assert network.a.state is TcpState.SYN_SENT


def test_reset_for_unexpected() -> None:
    with_ack = TcpRepr(src_port=1, dst_port=2, seq=10, ack=77, flags=ACK, window=5)
    reply = reset_for_unexpected(with_ack)
    assert reply is not None
    assert (reply.src_port, reply.dst_port, reply.seq, reply.flags) == (2, 1, 77, RST)
    syn = TcpRepr(src_port=1, dst_port=2, seq=0xFFFF_FFFF, ack=0, flags=SYN, window=5)
    reply = reset_for_unexpected(syn)
    assert reply is not None
    assert (reply.seq, reply.ack, reply.flags) == (0, 0, RST | ACK)
    data = TcpRepr(src_port=1, dst_port=2, seq=100, ack=0, flags=FIN, window=5, payload=b"ab")
    reply = reset_for_unexpected(data)
    assert reply is not None
    assert reply.ack == 103
    assert reset_for_unexpected(TcpRepr(1, 2, 3, 4, RST, 0)) is None


def test_initial_sequence_numbers_follow_rfc_6528() -> None:
    local = (ipaddress.IPv4Address("10.0.0.1"), 1000)
    remote = (ipaddress.IPv6Address("2001:db8::1"), 80)
    first = initial_sequence_number(b"secret", local, remote, 100.0)
    # The clock ticks every 4 microseconds.
    assert initial_sequence_number(b"secret", local, remote, 100.001) == (first + 250) % 2**32
    assert initial_sequence_number(b"other", local, remote, 100.0) != first
    assert initial_sequence_number(b"secret", (local[0], 1001), remote, 100.0) != first
    assert 0 <= first < 2**32
    # Secrets longer than the hash's key limit still key it, all of them.
    long_secret = bytes(range(48))
    keyed = initial_sequence_number(long_secret, local, remote, 100.0)
    assert initial_sequence_number(long_secret[:-1] + b"\xff", local, remote, 100.0) != keyed


# --------------------------------------------------------------------- timers


def test_rto_backoff_then_etimedout() -> None:
    blackhole = {"on": False}
    network = Network(
        a_config=TcpConfig(data_retries=5),
        fault=lambda direction, segment, now: [] if blackhole["on"] else [0.0],
    )
    network.handshake()
    blackhole["on"] = True
    network.a.send(b"x" * 100)
    network.run_until(lambda: network.a.state is TcpState.CLOSED, timeout=100)
    times = [e.time for e in network.log if e.direction == "a>b" and e.segment.payload]
    gaps = [round(later - earlier, 3) for earlier, later in itertools.pairwise(times)]
    # The tail loss probe comes first: with one segment out its timer (2 SRTT
    # plus a delayed-ACK allowance) is capped at the RTO, which it then restarts.
    probe_gap, *gaps = gaps
    assert network.a.loss_probes == 1
    rto = gaps[0]
    assert probe_gap == pytest.approx(rto, rel=0.01)
    assert 0.2 <= rto <= 0.25  # min RTO above a 2 ms RTT
    assert gaps == pytest.approx([rto * 2**i for i in range(5)], rel=0.01)
    assert isinstance(network.a.error, TimeoutError)
    assert network.a.info().timeouts == 6
    assert network.a.retransmissions == 6


def test_user_timeout_ends_sooner() -> None:
    blackhole = {"on": False}
    network = Network(
        a_config=TcpConfig(user_timeout=2.0),
        fault=lambda direction, segment, now: [] if blackhole["on"] else [0.0],
    )
    network.handshake()
    blackhole["on"] = True
    started = network.now
    network.a.send(b"x")
    network.run_until(lambda: network.a.state is TcpState.CLOSED, timeout=100)
    assert 2.0 <= network.now - started < 4.0
    assert isinstance(network.a.error, TimeoutError)


def test_delayed_ack_waits_then_acks_every_second_segment() -> None:
    network = Network(a_config=TcpConfig(nodelay=True))
    network.handshake()

    def ack_delay_of_one_segment() -> float:
        before = len(network.log)
        network.a.send(b"one small")
        network.run_until(lambda: len(network.log) > before + 1, timeout=1)
        data, ack = network.log[before : before + 2]
        assert ack.direction == "b>a"
        assert not ack.segment.payload
        network.run_for(0.01)
        return ack.time - data.time - network.latency

    # Quick-ACK mode at the start: the first 16 segments are acknowledged at once.
    assert [ack_delay_of_one_segment() for _ in range(16)] == pytest.approx([0.0] * 16, abs=1e-6)
    # Then a lone segment's ACK waits the delayed-ACK time (40 ms).
    assert ack_delay_of_one_segment() == pytest.approx(0.04, abs=1e-6)
    assert ack_delay_of_one_segment() == pytest.approx(0.04, abs=1e-6)
    # Full-sized segments: one ACK per two.
    network.run_for(0.1)
    before = len(network.log)
    network.a.send(pattern(network.a.send_mss * 8))
    network.run_for(0.03)
    sent = [e for e in network.log[before:] if e.direction == "a>b" and e.segment.payload]
    acks = [e for e in network.log[before:] if e.direction == "b>a"]
    assert len(sent) == 8
    assert len(acks) == 4
    # After an idle period (longer than the RTO) quick ACKs start again.
    network.run_for(2.0)
    assert ack_delay_of_one_segment() == pytest.approx(0.0, abs=1e-6)


def test_out_of_order_segment_is_acked_at_once_with_sack() -> None:
    held = []

    def hold_first_data(direction: str, segment: TcpRepr, now: float) -> list[float]:
        if direction == "a>b" and segment.payload and not held:
            held.append(segment)
            return [0.5]
        return [0.0]

    network = Network(fault=hold_first_data, a_config=TcpConfig(nodelay=True))
    network.handshake()
    network.a.send(b"A" * 100)
    network.flush()
    network.a.send(b"B" * 100)
    network.run_until(lambda: any(e.segment.find_option(SackBlocks) for e in network.log))
    ack = next(e for e in network.log if e.segment.find_option(SackBlocks))
    assert ack.direction == "b>a"
    block = ack.segment.find_option(SackBlocks)
    assert block is not None
    start = (network.iss_a + 101) & 0xFFFF_FFFF
    assert block.blocks == ((start, start + 100),)
    network.run_until(lambda: network.server.readable() == 200)
    assert network.server.receive(200) == b"A" * 100 + b"B" * 100


def test_nagle_holds_small_segments_nodelay_does_not() -> None:
    for nodelay, expected in ((False, 2), (True, 5)):
        network = Network(a_config=TcpConfig(nodelay=nodelay), latency=0.05)
        network.handshake()
        before = len(network.log)
        for _ in range(5):
            network.a.send(b"tiny")
            network.flush()
        network.run_until(lambda: network.server.readable() == 20)  # noqa: B023
        data = [e for e in network.log[before:] if e.direction == "a>b" and e.segment.payload]
        assert len(data) == expected, nodelay
        network.a.nodelay = True


def test_zero_window_persist_probe_and_reopening() -> None:
    small = TcpConfig(receive_buffer=8192, window_scale=False)
    network = Network(b_config=small)
    network.handshake()
    network.a.send(pattern(20_000))
    network.run_until(lambda: network.server.readable() == 8192)
    network.run_for(5)
    # b's window is closed: a probes with backing-off intervals, b answers each.
    probes = [
        e
        for e in network.log
        if e.direction == "a>b" and not e.segment.payload and e.time > START + 0.1
    ]
    assert len(probes) >= 3
    gaps = [b.time - a.time for a, b in itertools.pairwise(probes)]
    assert gaps[1] > gaps[0]
    zero_windows = [e for e in network.log if e.direction == "b>a" and e.segment.window == 0]
    assert zero_windows
    assert network.a.state is TcpState.ESTABLISHED
    # Reading reopens the window; the rest arrives.
    received = bytearray()

    def read() -> None:
        while network.server.readable():
            received.extend(network.server.receive(4096))

    network.pumps.append(read)
    network.run_until(lambda: len(received) == 20_000, timeout=120)
    assert bytes(received) == pattern(20_000)


def test_zero_window_update_lost_is_recovered_by_probe() -> None:
    small = TcpConfig(receive_buffer=4096, window_scale=False)
    state = {"drop_updates": True}

    def drop_window_updates(direction: str, segment: TcpRepr, now: float) -> list[float]:
        if direction == "b>a" and state["drop_updates"] and segment.window > 0 and now > START + 1:
            state["drop_updates"] = False
            return []
        return [0.0]

    network = Network(b_config=small, fault=drop_window_updates)
    network.handshake()
    network.a.send(pattern(10_000))
    network.run_until(lambda: network.server.readable() == 4096)
    network.run_for(1.5)
    received = bytearray(network.server.receive(4096))
    network.run_until(lambda: network.server.readable() > 0, timeout=60)
    assert not state["drop_updates"]  # the update was dropped, a probe found the window
    while len(received) < 10_000:
        network.run_until(lambda: network.server.readable() > 0, timeout=60)
        received += network.server.receive(4096)
    assert bytes(received) == pattern(10_000)


def test_keepalive_probes_and_timeout() -> None:
    blackhole = {"on": False}
    network = Network(
        a_config=TcpConfig(keepalive=(10.0, 2.0, 3)),
        fault=lambda direction, segment, now: [] if blackhole["on"] else [0.0],
    )
    network.handshake()
    established = network.now
    network.run_for(25)
    probes = [e for e in network.log if e.direction == "a>b" and e.time > established + 1]
    # Answered probes every idle period keep the connection up.
    assert [round(p.time - established) for p in probes] == [10, 20]
    assert all(p.segment.seq == (network.iss_a) & 0xFFFF_FFFF for p in probes)
    assert network.a.state is TcpState.ESTABLISHED
    blackhole["on"] = True
    network.run_until(lambda: network.a.state is TcpState.CLOSED, timeout=60)
    assert isinstance(network.a.error, TimeoutError)
    unanswered = [e for e in network.log if e.direction == "a>b" and e.time > established + 21]
    assert [round(p.time - established) for p in unanswered] == [30, 32, 34, 36]
    assert unanswered[-1].flags & RST


def test_keepalive_can_be_switched_on_later() -> None:
    network = Network()
    network.handshake()
    network.run_for(30)
    assert len(network.log) == 3
    network.a.keepalive = (5.0, 1.0, 2)
    network.run_for(6)
    assert len([e for e in network.log if e.direction == "a>b"]) == 3


def test_no_timers_when_idle_without_keepalive() -> None:
    network = Network()
    network.handshake()
    network.flush()
    assert network.a.deadline() is None
    assert network.server.deadline() is None
    with pytest.raises(StuckError):
        network.run_until(lambda: False)


# --------------------------------------------------------------------- windows


def test_window_scaling_with_large_buffers_fills_the_pipe() -> None:
    big = TcpConfig(receive_buffer=16 << 20, send_buffer=16 << 20)
    network = Network(a_config=big, b_config=big, latency=0.05)
    network.handshake()
    data = pattern(12 << 20)
    network.a.send(data)
    network.run_until(lambda: network.server.readable() == len(data), timeout=10)
    # 12 MiB with a 100 ms RTT: slow start reaches it in a few round trips,
    # impossible with a 64 KiB window (which would need about 190 round trips).
    assert network.now - START < 1.5
    assert network.server.receive(len(data)) == data
    assert network.a.info().send_window > 0xFFFF


def test_sequence_numbers_wrap_around() -> None:
    network = Network(iss_a=2**32 - 5000, iss_b=2**32 - 1)
    data = pattern(200_000)
    received_by_b, received_by_a = transfer(network, data, data[:70_000])
    assert received_by_b == data
    assert received_by_a == data[:70_000]


def test_tso_segments_are_multiples_of_the_mss() -> None:
    tso = TcpConfig(max_segment_payload=65000)
    network = Network(a_config=tso)
    network.handshake()
    network.a.send(pattern(200_000))
    network.run_until(lambda: network.server.readable() == 200_000)
    sizes = [len(e.segment.payload) for e in network.log if e.direction == "a>b"]
    mss = network.a.send_mss
    assert max(sizes) == 65000 // mss * mss
    assert sum(sizes) == 200_000


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        TcpConfig(mss=10)
    with pytest.raises(ValueError):
        TcpConfig(min_rto=2.0, initial_rto=1.0)
    with pytest.raises(ValueError):
        TcpConnection.open_passive(
            A_ADDRESS,
            B_ADDRESS,
            TcpRepr(1, 2, 3, 4, ACK, 5),
            iss=1,
            now=0.0,
            config=TcpConfig(),
        )


def test_an_idle_established_connection_costs_under_8_kib() -> None:
    now = 1000.0
    connections = []
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(50):
            client = TcpConnection.open_active(
                A_ADDRESS, B_ADDRESS, iss=n, now=now, config=TcpConfig()
            )
            (syn,) = client.poll(now)
            server = TcpConnection.open_passive(
                B_ADDRESS, A_ADDRESS, syn, iss=n + 7, now=now, config=TcpConfig()
            )
            (syn_ack,) = server.poll(now)
            client.on_segment(syn_ack, now)
            (ack,) = client.poll(now)
            server.on_segment(ack, now)
            assert client.established
            assert server.established
            connections += (client, server)
        gc.collect()
        per_connection = (tracemalloc.get_traced_memory()[0] - before) / len(connections)
    finally:
        tracemalloc.stop()
    # The issue's target for an idle connection beyond its buffers' contents.
    assert per_connection < 8192, per_connection


def test_paws_drops_a_segment_with_an_old_timestamp() -> None:
    network = Network()
    network.handshake()
    network.a.send(b"first")
    network.run_until(lambda: network.server.readable() == 5)
    server = network.server
    recent = server._ts_recent
    old = TcpRepr(
        src_port=A_ADDRESS[1],
        dst_port=B_ADDRESS[1],
        seq=(network.iss_a + 6) & 0xFFFF_FFFF,
        ack=(network.iss_b + 1) & 0xFFFF_FFFF,
        flags=ACK,
        window=1000,
        options=(Timestamps((recent - 1000) & 0xFFFF_FFFF, 0),),
        payload=b"stale",
    )
    before = len(network.log)
    network.inject("b", old)
    network.run_for(0.01)
    # In the window by sequence number, but older than TS.Recent: not taken.
    assert server.readable() == 5
    replies = [e.segment for e in network.log[before:] if e.direction == "b>a"]
    assert len(replies) == 1
    assert replies[0].ack == (network.iss_a + 6) & 0xFFFF_FFFF
    # The same bytes with a current timestamp are taken.
    fresh = TcpRepr(
        old.src_port,
        old.dst_port,
        old.seq,
        old.ack,
        old.flags,
        old.window,
        (Timestamps((recent + 1) & 0xFFFF_FFFF, 0),),
        b"fresh",
    )
    network.inject("b", fresh)
    network.run_for(0.05)
    assert server.receive(100) == b"firstfresh"


def test_reading_reopens_a_closed_window_with_an_update() -> None:
    network = Network(b_config=TcpConfig(receive_buffer=32768, window_scale=False))
    network.handshake()
    network.a.send(pattern(40000))
    network.run_until(lambda: network.server.readable() == 32768)
    network.run_for(0.1)
    before = len(network.log)
    # A small read does not move the window (receiver silly-window avoidance).
    network.server.receive(100)
    network.run_for(0.01)
    assert [e for e in network.log[before:] if e.direction == "b>a"] == []
    # Reading a good part of the buffer sends a window update at once.
    network.server.receive(16000)
    network.run_for(0.001)
    updates = [e.segment for e in network.log[before:] if e.direction == "b>a"]
    assert len(updates) == 1
    assert updates[0].window >= 16000
    network.run_until(lambda: network.server.readable() == 40000 - 16100, timeout=5)


def test_a_window_limited_tso_sender_waits_for_room_for_a_larger_segment() -> None:
    # As Linux's TSO deferral: with large segments, an ACK that frees a little
    # of the window does not send a small segment at once when more ACKs are
    # due soon; the room adds up into a larger one.
    network = Network(
        a_config=TcpConfig(max_segment_payload=65000, send_buffer=1 << 20),
        b_config=TcpConfig(receive_buffer=1 << 20),
    )
    network.handshake()
    a, b = network.a, network.server
    a.send(b"hello")
    network.run_for(0.1)  # b's ACK carries its scaled window
    assert a.srtt is not None
    assert a._snd_wnd > 500_000
    network.fault = lambda direction, segment, now: []  # ACKs come by hand from here
    a._cc.cwnd = a._cc.ssthresh = 200_000
    a.send(pattern(1 << 20))
    first = a.poll(network.now)
    # All that cwnd allows leaves at once: the oldest segment was just sent.
    assert sum(len(s.payload) for s in first) == 200_000
    assert max(len(s.payload) for s in first) > 60_000

    def ack(acked: int) -> list[TcpRepr]:
        network.now += a.srtt  # type: ignore[operator]
        segment = TcpRepr(
            src_port=B_ADDRESS[1],
            dst_port=A_ADDRESS[1],
            seq=b._snd_nxt & 0xFFFF_FFFF,
            ack=(a.iss + 6 + acked) & 0xFFFF_FFFF,
            flags=ACK,
            window=a._snd_wnd >> a._snd_wscale,
            options=(Timestamps(a._ts_recent + 1, 0),),
        )
        a.on_segment(segment, network.now)
        return [s for s in a.poll(network.now) if s.payload]

    # 20 kB freed out of 200 kB: nothing yet.
    assert ack(20_000) == []
    # A whole large segment's worth: it goes.
    sent = ack(90_000)
    assert len(sent) == 1
    assert len(sent[0].payload) == a._max_payload


def test_with_sack_only_acks_that_sack_new_data_count_as_duplicates() -> None:
    # RFC 6675 section 2: ACKs that only report a duplicate (D-SACK, as after
    # needless loss probes) do not start a recovery; three that SACK new data do.
    for fresh in (False, True):
        network = Network()
        network.handshake()
        a, b = network.a, network.server
        a.send(b"hello")
        network.run_for(0.1)
        network.fault = lambda direction, segment, now: []  # ACKs come by hand from here
        a.send(pattern(14_480))
        assert sum(len(s.payload) for s in a.poll(network.now)) == 14_480
        una = a.iss + 6
        for n in range(3):
            network.now += 0.0001
            block = (una + 2000 + 100 * n, una + 2100 + 100 * n) if fresh else (una - 5, una)
            duplicate = TcpRepr(
                src_port=B_ADDRESS[1],
                dst_port=A_ADDRESS[1],
                seq=b._snd_nxt & 0xFFFF_FFFF,
                ack=una & 0xFFFF_FFFF,
                flags=ACK,
                window=a._snd_wnd >> a._snd_wscale,
                options=(
                    Timestamps(a._ts_recent + 1, 0),
                    SackBlocks(((block[0] & 0xFFFF_FFFF, block[1] & 0xFFFF_FFFF),)),
                ),
            )
            a.on_segment(duplicate, network.now)
        resent = [s for s in a.poll(network.now) if s.payload]
        assert a.fast_recoveries == (1 if fresh else 0)
        assert bool(resent) is fresh


@pytest.mark.parametrize("data", [b"", b"sent before the handshake ended"])
def test_the_peers_syn_again_then_its_handshake_ack_leaves_the_send_sequence_intact(
    data: bytes,
) -> None:
    # A peer whose SYN-ACK came late sends its SYN again, then ACKs the
    # first SYN-ACK; both can arrive in one read burst, with no poll between
    # (a confined program's kernel behind a busy --isolate parent).  The SYN
    # again schedules our SYN-ACK once more (SND.NXT back on the SYN); the
    # ACK then completes the handshake, and what was queued meanwhile (data,
    # a FIN) must leave from ISS + 1, not from the SYN's sequence number.
    now = 1000.0
    config = TcpConfig()
    client = TcpConnection.open_active(A_ADDRESS, B_ADDRESS, iss=1_000_000, now=now, config=config)
    [syn] = client.poll(now)
    server = TcpConnection.open_passive(
        B_ADDRESS, A_ADDRESS, syn, iss=5_000_000, now=now, config=config
    )
    [syn_ack] = server.poll(now)
    client.on_segment(syn_ack, now)
    [handshake_ack] = client.poll(now)
    if data:
        assert server.send(data) == len(data)
    server.shutdown()
    now += 1.0
    server.on_segment(syn, now)
    server.on_segment(handshake_ack, now)
    assert server.state is TcpState.FIN_WAIT_1
    sent = server.poll(now)
    assert [s.seq for s in sent if s.payload or s.flags & TcpFlags.FIN] == [5_000_001]
    for segment in sent:
        client.on_segment(segment, now)
    assert client.receive(100) == data if data else client.at_eof
    if data:
        assert client.receive(100) == b""
