"""netshim.ip.tcp RACK-TLP (RFC 8985): tail loss probes, time-based loss detection, reordering."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from tcp_core_harness import Network, pattern, transfer

from netshim.ip.tcp import TcpConfig
from netshim.protocols.ip import SackBlocks, TcpRepr

MSS = 1448
Fault = Callable[[str, TcpRepr, float], list[float]]


def ordinal(network: Network, segment: TcpRepr) -> int:
    """The 1-based number of the MSS-sized data segment ``segment`` starts."""
    return ((segment.seq - network.iss_a - 1) & 0xFFFF_FFFF) // MSS + 1


def data_sends(network: Network, number: int) -> list[float]:
    """When segment ``number`` went from a to b, first sending and resends."""
    return [
        entry.time
        for entry in network.log
        if entry.direction == "a>b"
        and entry.segment.payload
        and ordinal(network, entry.segment) == number
    ]


def run_to_completion(network: Network, data: bytes, timeout: float = 5.0) -> None:
    network.a.send(data)
    network.run_until(lambda: network.server.readable() == len(data), timeout=timeout)
    assert network.server.receive(len(data)) == data


def send_all_acknowledged(network: Network, data: bytes) -> None:
    """Send ``data`` after what went before and run until a has every byte acknowledged."""
    before = network.a.info().bytes_acked
    network.a.send(data)
    network.run_until(lambda: network.a.info().bytes_acked == before + len(data))
    assert network.server.receive(len(data)) == data


def test_tail_loss_is_repaired_by_a_probe_without_a_timeout() -> None:
    first_sends: set[int] = set()

    def drop_last_three(direction: str, segment: TcpRepr, now: float) -> list[float]:
        if direction != "a>b" or not segment.payload:
            return [0.0]
        number = ordinal(network, segment)
        if number in first_sends:
            return [0.0]
        first_sends.add(number)
        return [] if number >= 28 else [0.0]

    network = Network(fault=drop_last_three)
    network.handshake()
    began = network.now
    run_to_completion(network, pattern(30 * MSS))
    info = network.a.info()
    assert info.timeouts == 0
    assert network.a.loss_probes == 1
    # The probe resent the last segment; its SACK showed the two before it lost.
    assert info.retransmissions == 3
    assert info.fast_recoveries == 1
    # Done in a few round trips of 2 ms, far from the 200 ms minimum RTO.
    assert network.now - began < 0.05
    last_sends = data_sends(network, 30)
    assert len(last_sends) == 2
    # The probe went about two smoothed RTTs (plus two ticks) after the last send.
    assert 0.004 <= last_sends[1] - last_sends[0] <= 0.01


def test_a_probe_after_lost_acks_is_the_tail_again_and_answered_at_once() -> None:
    """Every ACK of a flight is lost and more data waits: the probe resends the tail.

    A new segment as the probe would reach a receiver that has nothing else
    to acknowledge, and it holds the ACK of one in-order segment for its
    delayed-ACK timer (40 ms here, as Linux's minimum); a duplicate is
    answered at once, with a D-SACK, so the transfer goes on a round trip
    after the probe and the window is left alone (nothing was lost).
    """
    flight: list[int] = []

    def drop_acks_of_the_flight(direction: str, segment: TcpRepr, now: float) -> list[float]:
        if flight and direction == "b>a" and segment.find_option(SackBlocks) is None:
            acked = (segment.ack - network.iss_a - 1) & 0xFFFF_FFFF
            if flight[0] < acked <= flight[1]:
                return []
        return [0.0]

    network = Network(fault=drop_acks_of_the_flight)
    network.handshake()
    data = pattern(200 * MSS)
    # Past the receiver's quick-ACK start: from here it acknowledges every
    # second segment and delays a lone one.
    send_all_acknowledged(network, data[: 40 * MSS])
    segments = network.a.cwnd // MSS // 2 * 2
    assert 40 + segments + 1 < 200
    flight[:] = [40 * MSS, (40 + segments) * MSS]
    unreduced = network.a.ssthresh
    began = network.now
    network.a.send(data[40 * MSS : (40 + segments + 1) * MSS])
    network.run_until(lambda: network.a.info().bytes_acked >= flight[1])
    # The probe timer (two 2 ms round trips and two ticks) and the round trip
    # of its answer: far from the receiver's 40 ms delayed ACK.
    assert network.now - began < 0.025
    network.run_until(lambda: network.a.info().bytes_acked == (40 + segments + 1) * MSS)
    assert network.server.receive(len(data)) == data[40 * MSS : (40 + segments + 1) * MSS]
    info = network.a.info()
    assert network.a.loss_probes == 1
    assert info.retransmissions == 1
    assert len(data_sends(network, 40 + segments)) == 2  # the tail, and the probe
    assert len(data_sends(network, 40 + segments + 1)) == 1
    assert network.a.loss_probe_repairs == 0
    assert info.timeouts == 0
    assert info.ssthresh == unreduced


def test_a_probe_that_repaired_a_lost_tail_reduces_the_window_once() -> None:
    """RFC 8985 section 7.4: no D-SACK for the probe by the next ACK beyond it means a loss."""
    sends: dict[int, int] = {}

    def drop_the_first_tail(direction: str, segment: TcpRepr, now: float) -> list[float]:
        if direction != "a>b" or not segment.payload:
            return [0.0]
        number = ordinal(network, segment)
        sends[number] = sends.get(number, 0) + 1
        return [] if number == 10 and sends[number] == 1 else [0.0]

    network = Network(fault=drop_the_first_tail)
    network.handshake()
    unreduced = network.a.ssthresh
    data = pattern(20 * MSS)
    # The probe resends segment 10, the only one lost; the ACK that passes
    # it comes with the second write's data.
    run_to_completion(network, data[: 10 * MSS])
    network.run_until(lambda: network.a.info().bytes_acked == 10 * MSS)
    assert network.a.ssthresh == unreduced
    send_all_acknowledged(network, data[10 * MSS :])
    info = network.a.info()
    assert sends[10] == 2
    assert network.a.loss_probes == 1
    assert network.a.loss_probe_repairs == 1
    assert info.fast_recoveries == 0
    assert info.timeouts == 0
    assert info.ssthresh < unreduced


def test_a_probe_answered_by_a_dsack_leaves_the_window_alone() -> None:
    """The tail arrived and only its ACK was lost: the probe's data arrives twice, no loss."""

    def drop_the_ack_of_the_tail(direction: str, segment: TcpRepr, now: float) -> list[float]:
        if direction == "b>a" and not segment.payload:
            acked = (segment.ack - network.iss_a - 1) & 0xFFFF_FFFF
            if acked == 10 * MSS and segment.find_option(SackBlocks) is None:
                return []
        return [0.0]

    network = Network(fault=drop_the_ack_of_the_tail)
    network.handshake()
    unreduced = network.a.ssthresh
    data = pattern(20 * MSS)
    run_to_completion(network, data[: 10 * MSS])
    # Only the probe's D-SACK acknowledges the first write.
    network.run_until(lambda: network.a.info().bytes_acked == 10 * MSS)
    send_all_acknowledged(network, data[10 * MSS :])
    info = network.a.info()
    assert network.a.loss_probes == 1
    assert info.retransmissions == 1
    assert network.a.loss_probe_repairs == 0
    assert info.fast_recoveries == 0
    assert info.timeouts == 0
    assert info.ssthresh == unreduced


def test_lost_retransmission_is_found_by_send_order_without_a_timeout() -> None:
    """Only retransmissions follow the lost one: no new data is SACKed, yet RACK sees it."""
    sends: dict[int, int] = {}

    def drop(direction: str, segment: TcpRepr, now: float) -> list[float]:
        if direction != "a>b" or not segment.payload:
            return [0.0]
        number = ordinal(network, segment)
        count = sends[number] = sends.get(number, 0) + 1
        if number == 10 and count <= 2:
            return []  # the original and its first retransmission
        if number == 20 and count == 1:
            return []
        return [0.0]

    network = Network(fault=drop)
    network.handshake()
    run_to_completion(network, pattern(40 * MSS))
    info = network.a.info()
    assert info.timeouts == 0
    assert sends[10] == 3
    assert sends[20] == 2
    assert network.a.lost_retransmissions == 1


def test_a_lost_head_of_a_tso_packet_is_found_by_sequence_without_a_probe() -> None:
    """Pieces of one TSO send go out together: the part below a delivered one is lost.

    The first flight is one 10-segment TSO packet; a lossy wire behind the
    device delivers only its last segment.  One SACKed segment is below the
    duplicate threshold and every piece has the same send time and order,
    so RACK must order them by sequence (as Linux's tcp_rack_sent_after
    does for one skb) to see the first nine lost a reordering window after
    the SACK, before any probe or timeout.
    """
    cut: list[TcpRepr] = []

    def deliver_only_the_tail(direction: str, segment: TcpRepr, now: float) -> list[float]:
        if direction == "a>b" and len(segment.payload) == 10 * MSS and not cut:
            tail = dataclasses.replace(
                segment,
                seq=(segment.seq + 9 * MSS) & 0xFFFF_FFFF,
                payload=segment.payload[9 * MSS :],
            )
            cut.append(tail)
            network.inject("b", tail, network.latency)
            return []
        return [0.0]

    network = Network(a_config=TcpConfig(max_segment_payload=45 * MSS), fault=deliver_only_the_tail)
    network.handshake()
    began = network.now
    run_to_completion(network, pattern(10 * MSS))
    info = network.a.info()
    assert cut
    assert info.timeouts == 0
    assert network.a.loss_probes == 0
    assert info.fast_recoveries == 1
    # The nine lost segments went again, the delivered one not.
    resent = [s for s in network.segments("a>b") if s.payload][1:]
    assert sum(len(s.payload) for s in resent) == 9 * MSS
    assert all(ordinal(network, s) <= 9 for s in resent)
    assert network.now - began < 0.02


def test_reordering_within_the_window_sends_nothing_twice() -> None:
    def delay_sixth(direction: str, segment: TcpRepr, now: float) -> list[float]:
        if direction == "a>b" and segment.payload and ordinal(network, segment) == 6:
            # Less than a quarter of the 2 ms minimum RTT, RACK's window.
            return [0.0003]
        return [0.0]

    network = Network(fault=delay_sixth, a_config=TcpConfig(nodelay=True))
    network.handshake()
    run_to_completion(network, pattern(8 * MSS))
    network.run_for(0.5)
    info = network.a.info()
    assert info.retransmissions == 0
    assert info.fast_recoveries == 0
    assert network.a.loss_probes == 0


def test_reordering_beyond_the_window_is_loss_after_the_reordering_timer() -> None:
    held: list[float] = []

    def hold_sixth(direction: str, segment: TcpRepr, now: float) -> list[float]:
        if direction == "a>b" and segment.payload and ordinal(network, segment) == 6 and not held:
            held.append(now)
            return [0.01]
        return [0.0]

    network = Network(fault=hold_sixth, a_config=TcpConfig(nodelay=True))
    network.handshake()
    run_to_completion(network, pattern(8 * MSS))
    sixth = data_sends(network, 6)
    assert len(sixth) == 2
    # Two later segments SACKed (below the duplicate threshold): the resend
    # comes when RACK's timer (RTT + a quarter of the minimum RTT) expires.
    assert 0.002 <= sixth[1] - sixth[0] <= 0.004
    assert network.a.info().timeouts == 0
    assert network.a.loss_probes == 0


def random_loss(rate: float, seed: int) -> Fault:
    rng = random.Random(seed)

    def fault(direction: str, segment: TcpRepr, now: float) -> list[float]:
        return [] if rng.random() < rate else [0.0]

    return fault


def test_random_loss_both_ways_is_repaired_without_timeouts() -> None:
    # Before RACK-TLP (every hole below the highest SACK deemed lost, lost
    # retransmissions found only when new data sent after them was SACKed, no
    # probes) this transfer took 14 timeouts and 3.5 s; now none and 0.9 s.
    network = Network(fault=random_loss(0.02, seed=3))
    network.handshake()
    began = network.now
    data = pattern(4 << 20)
    received, _ = transfer(network, data)
    assert received == data
    info = network.a.info()
    assert info.fast_recoveries >= 20
    assert info.timeouts <= 1
    assert network.now - began < 1.5


def test_round_trips_below_a_millisecond_are_measured_from_send_times() -> None:
    """The timestamp option's clock ticks in milliseconds; a 0.3 ms round trip is
    measured from the send times of the data each ACK covers, as Linux does."""
    network = Network(latency=0.00015)
    network.handshake()
    run_to_completion(network, pattern(200 * MSS))
    srtt = network.a.info().srtt
    assert srtt is not None
    # 0.3 ms, more by the receiver's ACK of every second segment.
    assert 0.00029 <= srtt < 0.0006
    min_rtt = network.a._min_rtt
    assert min_rtt is not None
    assert 0.00029 <= min_rtt < 0.0006
