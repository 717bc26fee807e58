"""netshim.ip.tcp never raises for what a peer sends, in any state.

Hypothesis builds segments near the connection's real sequence numbers (where
the interesting checks are: in-window RST and SYN, old and future ACKs) and
far from them, with every flag combination and absurd options (window shift
255, MSS 0, SACK blocks anywhere, timestamps from the past), then feeds them to
a connection brought to each RFC 9293 state and polls it through its timers.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tcp_core_harness import A_ADDRESS, B_ADDRESS, Network

from netshim.ip.tcp import TcpConfig, TcpConnection, TcpState
from netshim.protocols.ip import (
    MaxSegmentSize,
    NoOperation,
    SackBlocks,
    SackPermitted,
    TcpFlags,
    TcpOption,
    TcpRepr,
    Timestamps,
    UnknownOption,
    WindowScale,
    WireError,
)

MASK = 0xFFFF_FFFF


def _drop_all(direction: str, segment: TcpRepr, now: float) -> list[float]:
    return []


def _in_state(state: TcpState) -> tuple[Network, TcpConnection]:
    """A network whose connection ``a`` (or ``b``) is in ``state``."""
    if state is TcpState.SYN_SENT:
        network = Network(fault=_drop_all)
        network.flush()
        return network, network.a
    if state is TcpState.SYN_RECEIVED:
        blocked = {"b>a": True}
        network = Network(fault=lambda d, s, n: [] if blocked.get(d) else [0.0])
        network.run_until(lambda: network.b is not None)
        return network, network.server
    network = Network(latency=0.01)
    network.handshake()
    if state is TcpState.ESTABLISHED:
        network.a.send(b"x" * 3000)
        network.run_for(0.005)
        return network, network.a
    if state is TcpState.FIN_WAIT_1:
        network.fault = _drop_all
        network.a.shutdown()
        network.flush()
        return network, network.a
    if state is TcpState.FIN_WAIT_2:
        network.a.shutdown()
        network.run_until(lambda: network.a.state is TcpState.FIN_WAIT_2)
        return network, network.a
    if state is TcpState.CLOSE_WAIT:
        network.a.shutdown()
        network.run_until(lambda: network.server.state is TcpState.CLOSE_WAIT)
        return network, network.server
    if state is TcpState.CLOSING:
        network.a.shutdown()
        network.server.shutdown()
        network.run_until(lambda: network.a.state is TcpState.CLOSING)
        network.fault = _drop_all
        return network, network.a
    if state is TcpState.LAST_ACK:
        network.a.shutdown()
        network.run_until(lambda: network.server.state is TcpState.CLOSE_WAIT)
        network.fault = _drop_all
        network.server.shutdown()
        network.flush()
        return network, network.server
    if state is TcpState.TIME_WAIT:
        network.a.shutdown()
        network.run_until(lambda: network.a.state is TcpState.FIN_WAIT_2)
        network.server.shutdown()
        network.run_until(lambda: network.a.state is TcpState.TIME_WAIT)
        return network, network.a
    if state is TcpState.CLOSED:
        network.a.abort()
        network.flush()
        return network, network.a
    raise AssertionError(state)


FUZZED_STATES = [state for state in TcpState if state is not TcpState.LISTEN]


@pytest.mark.parametrize("state", FUZZED_STATES, ids=str)
def test_each_state_is_reachable(state: TcpState) -> None:
    _, connection = _in_state(state)
    assert connection.state is state


def _options() -> st.SearchStrategy[tuple[TcpOption, ...]]:
    edge = st.one_of(st.integers(0, MASK), st.sampled_from([0, 1, MASK, 2**31, 2**31 - 1]))
    option = st.one_of(
        st.builds(MaxSegmentSize, st.integers(0, 0xFFFF)),
        st.builds(WindowScale, st.integers(0, 255)),
        st.just(SackPermitted()),
        st.just(NoOperation()),
        st.builds(Timestamps, edge, edge),
        st.builds(
            SackBlocks,
            st.lists(st.tuples(edge, edge), min_size=1, max_size=3).map(tuple),
        ),
        st.builds(UnknownOption, st.integers(9, 255), st.binary(max_size=6)),
    )
    return st.lists(option, max_size=4).map(tuple).filter(_options_fit)


def _options_fit(options: tuple[TcpOption, ...]) -> bool:
    return sum(len(option.emit()) for option in options) <= 36


# A segment described relative to the connection's own numbers, resolved in the test.
segment_plans = st.fixed_dictionaries(
    {
        "seq_delta": st.one_of(
            st.integers(-3, 3), st.integers(-70000, 70000), st.integers(0, MASK)
        ),
        "ack_delta": st.one_of(
            st.integers(-3, 3), st.integers(-70000, 70000), st.integers(0, MASK)
        ),
        "flags": st.integers(0, 0xFFF),
        "window": st.sampled_from([0, 1, 1000, 0xFFFF]) | st.integers(0, 0xFFFF),
        "options": _options(),
        "payload": st.sampled_from([b"", b"x", b"y" * 1460]) | st.binary(max_size=64),
        "urgent": st.integers(0, 0xFFFF),
        "advance": st.sampled_from([0.0, 0.0, 0.001, 0.3, 5.0]),
    }
)


def _build(connection: TcpConnection, plan: dict[str, object]) -> TcpRepr:
    expected_seq = connection._rcv_nxt if connection.irs or connection._rcv_nxt else 0
    return TcpRepr(
        src_port=connection.remote[1],
        dst_port=connection.local[1],
        seq=(expected_seq + int(plan["seq_delta"])) & MASK,  # type: ignore[call-overload]
        ack=(connection._snd_nxt + int(plan["ack_delta"])) & MASK,  # type: ignore[call-overload]
        flags=TcpFlags(int(plan["flags"])),  # type: ignore[call-overload]
        window=int(plan["window"]),  # type: ignore[call-overload]
        options=plan["options"],  # type: ignore[arg-type]
        payload=plan["payload"],  # type: ignore[arg-type]
        urgent=int(plan["urgent"]),  # type: ignore[call-overload]
    )


def _exercise(network: Network, connection: TcpConnection, plans: list[dict[str, object]]) -> None:
    for plan in plans:
        segment = _build(connection, plan)
        network.now += float(plan["advance"])  # type: ignore[arg-type]
        connection.on_segment(segment, network.now)
        for out in connection.poll(network.now):
            assert isinstance(out, TcpRepr)
            # Whatever it sends must be a valid segment on the wire.
            wire = out.emit(A_ADDRESS[0], B_ADDRESS[0])
            assert TcpRepr.parse(wire, A_ADDRESS[0], B_ADDRESS[0]) == out
        deadline = connection.deadline()
        assert deadline is None or deadline >= network.now - 1e-9 or connection._output_wanted
        connection.readable()
        connection.send_space()
        connection.info()
        if connection.readable():
            connection.receive(1 << 16)
    # Run the timers out: retransmissions, probes, TIME-WAIT all end without raising.
    for _ in range(200):
        deadline = connection.deadline()
        if deadline is None:
            break
        network.now = max(network.now, deadline)
        connection.poll(network.now)


@pytest.mark.parametrize("state", FUZZED_STATES, ids=str)
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(plans=st.lists(segment_plans, min_size=1, max_size=8))
def test_arbitrary_segments_never_raise(state: TcpState, plans: list[dict[str, object]]) -> None:
    network, connection = _in_state(state)
    _exercise(network, connection, plans)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(min_size=20, max_size=120))
def test_parsed_random_bytes_never_raise(raw: bytes) -> None:
    network, connection = _in_state(TcpState.ESTABLISHED)
    try:
        segment = TcpRepr.parse(raw, B_ADDRESS[0], A_ADDRESS[0], verify_checksum=False)
    except WireError:
        return
    connection.on_segment(segment, network.now)
    connection.poll(network.now)


@settings(max_examples=100, deadline=None)
@given(options=_options(), window=st.integers(0, 0xFFFF), seq=st.integers(0, MASK))
def test_open_passive_takes_any_syn(options: tuple[TcpOption, ...], window: int, seq: int) -> None:
    syn = TcpRepr(
        src_port=A_ADDRESS[1],
        dst_port=B_ADDRESS[1],
        seq=seq,
        ack=0,
        flags=TcpFlags.SYN,
        window=window,
        options=options,
    )
    connection = TcpConnection.open_passive(
        B_ADDRESS, A_ADDRESS, syn, iss=12345, now=0.0, config=TcpConfig()
    )
    (syn_ack,) = connection.poll(0.0)
    assert syn_ack.flags == TcpFlags.SYN | TcpFlags.ACK
    assert syn_ack.ack == (seq + 1) & MASK
    assert connection.send_mss >= 36
    # Window shifts above 14 are taken as 14 (RFC 7323 section 2.3).
    assert connection._snd_wscale <= 14


def test_fuzzing_one_connection_leaves_a_transfer_intact() -> None:
    """Garbage aimed at a connection from outside its window does not disturb its data."""
    network = Network()
    network.handshake()
    data = b"".join(bytes([i % 256]) * 1000 for i in range(200))
    assert network.a.send(data) == len(data)
    for offset in range(0, 2**32, 2**28):
        network.inject(
            "b",
            TcpRepr(
                src_port=A_ADDRESS[1],
                dst_port=B_ADDRESS[1],
                seq=(network.iss_a + 1 + 2**31 + offset) & MASK,
                ack=offset & MASK,
                flags=TcpFlags.ACK | TcpFlags.PSH,
                window=0,
                payload=b"garbage",
            ),
            delay=0.0005,
        )
    received = bytearray()

    def read() -> None:
        if network.b is not None:
            while network.server.readable():
                received.extend(network.server.receive(1 << 20))

    network.pumps.append(read)
    network.run_until(lambda: len(received) >= len(data), timeout=10)
    assert bytes(received) == data
