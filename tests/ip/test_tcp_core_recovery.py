"""netshim.ip.tcp loss recovery and congestion control: dup ACKs, SACK, RTO, CUBIC, bounds."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tcp_core_harness import A_ADDRESS, B_ADDRESS, Network, digest, pattern, transfer

from netshim.ip.congestion import Cubic, NewReno, make_congestion_control
from netshim.ip.reassembly import ReorderBuffer
from netshim.ip.tcp import TcpConfig, TcpState
from netshim.protocols.ip import SackBlocks, TcpFlags, TcpRepr

ACK = TcpFlags.ACK


def drop_data_segments(numbers: set[int]) -> Callable[[str, TcpRepr, float], list[float]]:
    """A fault dropping the a>b data segments with these ordinal numbers (first sending only)."""
    seen: dict[int, int] = {}
    counter = {"n": 0}

    def fault(direction: str, segment: TcpRepr, now: float) -> list[float]:
        if direction != "a>b" or not segment.payload:
            return [0.0]
        if segment.seq in seen:
            return [0.0]  # a retransmission
        counter["n"] += 1
        seen[segment.seq] = counter["n"]
        return [] if counter["n"] in numbers else [0.0]

    return fault


def test_fast_retransmit_on_three_duplicate_acks_without_sack() -> None:
    config = TcpConfig(sack=False, congestion="newreno")
    network = Network(a_config=config, b_config=config, fault=drop_data_segments({5}))
    network.handshake()
    data = pattern(40 * 1448)
    network.a.send(data)
    network.run_until(lambda: network.server.readable() == len(data), timeout=5)
    assert network.server.receive(len(data)) == data
    info = network.a.info()
    assert info.fast_recoveries == 1
    assert info.timeouts == 0
    assert info.retransmissions == 1
    # The retransmission followed the third duplicate ACK, well before any RTO.
    lost_seq = (network.iss_a + 1 + 4 * network.a.send_mss) & 0xFFFF_FFFF
    sends = [e for e in network.log if e.direction == "a>b" and e.segment.seq == lost_seq]
    assert len(sends) == 2
    dupacks = [
        e
        for e in network.log
        if e.direction == "b>a" and e.segment.ack == lost_seq and sends[0].time < e.time
    ]
    assert len(dupacks) >= 3
    assert sends[1].time - sends[0].time < 0.05
    assert sends[1].time >= dupacks[2].time


def test_newreno_partial_acks_recover_several_losses_without_timeout() -> None:
    config = TcpConfig(sack=False, congestion="newreno")
    network = Network(a_config=config, b_config=config, fault=drop_data_segments({20, 24, 30}))
    network.handshake()
    data = pattern(80 * 1448)
    network.a.send(data)
    network.run_until(lambda: network.server.readable() == len(data), timeout=5)
    assert network.server.receive(len(data)) == data
    info = network.a.info()
    assert info.timeouts == 0
    assert info.fast_recoveries == 1  # one recovery episode for the whole window
    assert info.retransmissions == 3


def test_sack_recovery_resends_only_what_was_lost() -> None:
    lost = {12, 15, 16, 21, 40}
    network = Network(fault=drop_data_segments(lost))
    network.handshake()
    data = pattern(100 * 1448)
    network.a.send(data)
    network.run_until(lambda: network.server.readable() == len(data), timeout=5)
    assert network.server.receive(len(data)) == data
    info = network.a.info()
    assert info.timeouts == 0
    assert info.retransmissions == len(lost)
    sacks = [e.segment.find_option(SackBlocks) for e in network.log if e.direction == "b>a"]
    assert any(option is not None and len(option.blocks) >= 2 for option in sacks)


def test_reordering_mistaken_for_loss_is_undone_by_dsack() -> None:
    held: list[int] = []

    def delay_tenth_segment(direction: str, segment: TcpRepr, now: float) -> list[float]:
        tenth = (network.iss_a + 1 + 9 * network.a.send_mss) & 0xFFFF_FFFF
        if direction == "a>b" and segment.payload and not held and segment.seq == tenth:
            held.append(segment.seq)
            return [0.004]  # arrives after its retransmission was sent
        return [0.0]

    network = Network(fault=delay_tenth_segment)
    network.handshake()
    data = pattern(30 * 1448)
    network.a.send(data)
    network.run_until(lambda: network.server.readable() == len(data), timeout=5)
    network.run_for(0.1)
    assert network.server.receive(len(data)) == data
    info = network.a.info()
    assert info.fast_recoveries == 1
    assert info.retransmissions == 1
    assert network.a.spurious_recoveries == 1
    # The receiver reported the duplicate: a first SACK block below its ACK.
    dsacks = [
        e.segment
        for e in network.log
        if e.direction == "b>a"
        and (option := e.segment.find_option(SackBlocks)) is not None
        and (option.blocks[0][1] - e.segment.ack) % 2**32 >= 2**31 - 1
    ]
    assert len(dsacks) == 1
    # The window is back where it was, and more reordering is tolerated next time.
    assert info.cwnd >= 10 * network.a.send_mss
    assert network.a._rack_reordering_seen


def test_lost_retransmission_is_found_by_later_sacks_without_timeout() -> None:
    sends: dict[int, int] = {}
    target = {"seq": -1}

    def drop_tenth_twice(direction: str, segment: TcpRepr, now: float) -> list[float]:
        if direction != "a>b" or not segment.payload:
            return [0.0]
        if target["seq"] < 0:
            target["seq"] = (network.iss_a + 1 + 9 * network.a.send_mss) & 0xFFFF_FFFF
        count = sends[segment.seq] = sends.get(segment.seq, 0) + 1
        return [] if segment.seq == target["seq"] and count <= 2 else [0.0]

    network = Network(fault=drop_tenth_twice)
    network.handshake()
    data = pattern(400 * 1448)
    sent = 0

    def pump() -> None:
        nonlocal sent
        if sent < len(data):
            sent += network.a.send(data[sent : sent + 65536])

    received = bytearray()

    def read() -> None:
        if network.b is not None:
            while network.server.readable():
                received.extend(network.server.receive(1 << 20))

    network.pumps += (pump, read)
    network.run_until(lambda: len(received) == len(data), timeout=5)
    assert received == data
    assert sends[target["seq"]] == 3
    assert network.a.lost_retransmissions == 1
    assert network.a.info().timeouts == 0


def test_lost_retransmission_is_recovered_by_rto_with_backoff() -> None:
    drops = {"count": 0}

    def drop_twice(direction: str, segment: TcpRepr, now: float) -> list[float]:
        if direction == "a>b" and segment.payload[:1] == b"Z" and drops["count"] < 3:
            drops["count"] += 1
            return []
        return [0.0]

    network = Network(fault=drop_twice, a_config=TcpConfig(nodelay=True))
    network.handshake()
    network.a.send(b"Z" * 100)
    network.run_until(lambda: network.server.readable() == 100, timeout=10)
    info = network.a.info()
    # The tail loss probe is the first resend (its timer capped at the RTO,
    # which it restarts), then two timeouts with backoff.
    assert network.a.loss_probes == 1
    assert info.timeouts == 2
    times = [e.time for e in network.log if e.direction == "a>b" and e.segment.payload]
    probe, first, second = (later - earlier for earlier, later in itertools.pairwise(times))
    assert probe == pytest.approx(first, rel=0.01)
    assert second == pytest.approx(2 * first, rel=0.01)
    # After the timeout the window restarts at one segment.
    assert info.ssthresh >= 2 * network.a.send_mss


def test_window_does_not_grow_while_the_application_limits_the_sender() -> None:
    network = Network(a_config=TcpConfig(nodelay=True))
    network.handshake()
    initial = network.a.cwnd
    for _ in range(200):
        network.a.send(b"request" * 10)
        network.run_for(0.01)
    network.run_for(0.1)  # the last delayed ACK
    assert network.a.info().bytes_acked == 200 * 70
    assert network.a.cwnd == initial
    # A bulk transfer does open it.
    transfer(network, pattern(1 << 20))
    assert network.a.cwnd > initial


def test_rtt_estimate_follows_the_path() -> None:
    network = Network(latency=0.05)
    network.handshake()
    transfer(network, pattern(500_000))
    assert network.a.srtt == pytest.approx(0.1, rel=0.1)
    assert network.a.rto == pytest.approx(network.a.srtt + 0.2, rel=0.2)


def test_receiver_holds_out_of_order_data_only_inside_its_window() -> None:
    network = Network(b_config=TcpConfig(receive_buffer=16384, window_scale=False))
    network.handshake()
    server = network.server
    base = network.iss_a + 1

    def data(offset: int, size: int) -> TcpRepr:
        return TcpRepr(
            src_port=A_ADDRESS[1],
            dst_port=B_ADDRESS[1],
            seq=(base + offset) & 0xFFFF_FFFF,
            ack=(network.iss_b + 1) & 0xFFFF_FFFF,
            flags=ACK,
            window=65535,
            payload=bytes([offset % 251]) * size,
        )

    # Beyond the window: dropped (and answered with an ACK).
    network.inject("b", data(20000, 1000))
    # Many tiny out-of-order pieces inside the window.
    for offset in range(1000, 16384, 7):
        network.inject("b", data(offset, 3))
    # Partly over the right edge: trimmed.
    network.inject("b", data(16000, 1000))
    network.run_for(0.01)
    info = server.info()
    assert info.out_of_order_bytes <= 16384
    assert len(server._reorder) <= server._reorder.piece_limit
    assert server.readable() == 0
    # Filling the gap releases everything contiguous, nothing beyond the window.
    network.inject("b", data(0, 1000))
    network.run_for(0.01)
    assert server.readable() <= 16384
    assert server.info().out_of_order_bytes == 0 or server.readable() > 1000


def test_reorder_buffer_merges_and_reports_blocks() -> None:
    buffer = ReorderBuffer(piece_limit=4)
    assert buffer.insert(100, b"a" * 10)
    assert buffer.insert(120, b"b" * 10)
    assert not buffer.insert(100, b"a" * 10)  # nothing new
    assert buffer.insert(105, b"c" * 20)  # fills 110..120 only
    assert buffer.blocks() == [(100, 130)]
    assert buffer.held_bytes == 30
    assert buffer.insert(200, b"d")
    assert not buffer.insert(300, b"e")  # the piece limit is reached
    assert buffer.sack_blocks(3) == [(200, 201), (100, 130)]
    chunks, next_seq = buffer.pop_ready(100)
    assert b"".join(chunks) == b"a" * 10 + b"c" * 10 + b"b" * 10
    assert next_seq == 130
    assert buffer.blocks() == [(200, 201)]
    assert buffer.held_bytes == 1


def test_congestion_controllers_react_to_loss() -> None:
    mss = 1000
    reno = NewReno(mss)
    cubic = Cubic(mss)
    for controller in (reno, cubic):
        assert controller.cwnd == 10 * mss
        controller.on_ack(10 * mss, 0.0, 0.1)
        assert controller.cwnd == 20 * mss  # slow start doubles per window
    reno.on_loss(1.0, 20 * mss)
    cubic.on_loss(1.0, 20 * mss)
    assert reno.cwnd == reno.ssthresh == 10 * mss
    assert cubic.cwnd == cubic.ssthresh == 14 * mss  # beta 0.7
    # Congestion avoidance: Reno adds one MSS per window acked.
    reno.on_ack(10 * mss, 2.0, 0.1)
    assert reno.cwnd == 11 * mss
    # CUBIC climbs back towards W_max = 20 segments, concave then flat.
    now = 1.0
    sizes = []
    for _ in range(60):
        now += 0.1
        cubic.on_ack(cubic.cwnd, now, 0.1)
        sizes.append(cubic.cwnd)
    assert sizes[-1] > 20 * mss
    assert any(18 * mss <= size <= 21 * mss for size in sizes)
    cubic.on_timeout(now, cubic.cwnd)
    assert cubic.cwnd == mss
    with pytest.raises(ValueError):
        make_congestion_control("bbr", mss)  # type: ignore[arg-type]


def test_cubic_on_a_short_path_grows_as_reno_once_back_at_the_old_window() -> None:
    # A 1 ms RTT puts CUBIC in its Reno-friendly region (RFC 9438 section 4.3):
    # 0.53 segments per window acknowledged until W_est is back at the window
    # the loss cut, then one segment per window, as Reno.
    mss = 1000
    cubic = Cubic(mss)
    cubic.on_ack(90 * mss, 0.0, 0.001)
    assert cubic.cwnd == 100 * mss
    cubic.on_loss(0.0, 100 * mss)
    assert cubic.cwnd == 70 * mss
    now = 0.0

    def window_acked() -> int:
        nonlocal now
        now += 0.001
        before = cubic.cwnd
        cubic.on_ack(cubic.cwnd, now, 0.001)
        return cubic.cwnd - before

    early = [window_acked() for _ in range(10)]
    assert 4 * mss <= sum(early) <= 6 * mss
    while cubic.cwnd < 101 * mss:
        window_acked()
    late = [window_acked() for _ in range(10)]
    assert 9 * mss <= sum(late) <= 11 * mss


@pytest.mark.parametrize("congestion", ["cubic", "newreno"])
@pytest.mark.parametrize("sack", [True, False])
def test_transfer_under_loss_each_controller(congestion: str, sack: bool) -> None:
    rng = random.Random(7)

    def lossy(direction: str, segment: TcpRepr, now: float) -> list[float]:
        return [] if rng.random() < 0.03 else [0.0]

    config = TcpConfig(congestion=congestion, sack=sack)  # type: ignore[arg-type]
    network = Network(a_config=config, b_config=config, fault=lossy, latency=0.005)
    data = pattern(1 << 20, 3)
    back = pattern(100_000, 4)
    received_by_b, received_by_a = transfer(network, data, back)
    assert digest(received_by_b) == digest(data)
    assert digest(received_by_a) == digest(back)
    assert network.a.retransmissions > 0


fault_schedules = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "loss": st.sampled_from([0.0, 0.005, 0.02, 0.05]),
        "duplicate": st.sampled_from([0.0, 0.01, 0.05]),
        "reorder": st.sampled_from([0.0, 0.01, 0.05]),
        "ack_loss": st.sampled_from([0.0, 0.02]),
        "sack": st.booleans(),
        "tso": st.booleans(),
    }
)


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(schedule=fault_schedules)
def test_eight_mib_arrive_intact_under_any_fault_schedule(schedule: dict[str, object]) -> None:
    rng = random.Random(schedule["seed"])  # type: ignore[arg-type]
    loss = float(schedule["loss"])  # type: ignore[arg-type]
    duplicate = float(schedule["duplicate"])  # type: ignore[arg-type]
    reorder = float(schedule["reorder"])  # type: ignore[arg-type]
    ack_loss = float(schedule["ack_loss"])  # type: ignore[arg-type]

    def fault(direction: str, segment: TcpRepr, now: float) -> list[float]:
        if rng.random() < (loss if direction == "a>b" else ack_loss):
            return []
        delays = [0.0]
        if rng.random() < reorder:
            delays = [rng.uniform(0.0005, 0.005)]
        if rng.random() < duplicate:
            delays.append(rng.uniform(0.0, 0.003))
        return delays

    config = TcpConfig(
        sack=bool(schedule["sack"]),
        max_segment_payload=65000 if schedule["tso"] else None,
        send_buffer=1 << 20,
        receive_buffer=1 << 20,
    )
    network = Network(
        a_config=config,
        b_config=config,
        fault=fault,
        latency=0.002,
        iss_a=rng.getrandbits(32),
        iss_b=rng.getrandbits(32),
    )
    data = pattern(8 << 20, 11)
    back = pattern(64 << 10, 12)
    received_by_b, received_by_a = transfer(network, data, back, timeout=3600)
    assert digest(received_by_b) == digest(data)
    assert digest(received_by_a) == digest(back)
    assert network.a.state in (TcpState.TIME_WAIT, TcpState.LAST_ACK, TcpState.CLOSED)
