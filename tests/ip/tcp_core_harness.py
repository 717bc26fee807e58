"""Two :class:`netshim.ip.tcp.TcpConnection` objects wired back to back under a fake clock.

``a`` connects to ``b``; ``b`` is made by a pretend listener when ``a``'s SYN
arrives (``open_passive``), or opened actively too for simultaneous open.
Segments travel as :class:`TcpRepr` values with a one-way latency; a ``fault``
callback sees each one and says what becomes of it (dropped, delayed,
duplicated), and every segment is logged with its time and direction so tests
can assert on what went over the wire.
"""

from __future__ import annotations

import hashlib
import heapq
import ipaddress
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from netshim.ip.tcp import TcpConfig, TcpConnection, TcpState, reset_for_unexpected
from netshim.protocols.ip import IPAddress, TcpFlags, TcpRepr

A_ADDRESS: tuple[IPAddress, int] = (ipaddress.IPv4Address("10.0.0.1"), 40000)
B_ADDRESS: tuple[IPAddress, int] = (ipaddress.IPv4Address("10.0.0.2"), 80)
START = 1000.0

# fault(direction, segment, now) -> extra delays, one per copy delivered ([] drops it).
Fault = Callable[[str, TcpRepr, float], list[float]]


class StuckError(AssertionError):
    """Nothing is in flight and no timer is pending, yet the condition is not met."""


@dataclass
class Logged:
    time: float
    direction: str  # "a>b" or "b>a"
    segment: TcpRepr

    @property
    def flags(self) -> TcpFlags:
        return self.segment.flags


@dataclass
class Network:
    a_config: TcpConfig = field(default_factory=TcpConfig)
    b_config: TcpConfig = field(default_factory=TcpConfig)
    latency: float = 0.001
    iss_a: int = 1_000_000
    iss_b: int = 5_000_000
    fault: Fault | None = None
    listening: bool = True
    simultaneous: bool = False
    # Poll after every delivered segment (as an interface reading one packet at a
    # time does); False delivers every segment due at an instant, then polls.
    poll_each: bool = True

    def __post_init__(self) -> None:
        self.now = START
        self.log: list[Logged] = []
        self._in_flight: list[tuple[float, int, str, TcpRepr]] = []
        self._counter = 0
        self.pumps: list[Callable[[], None]] = []
        self.a = TcpConnection.open_active(
            A_ADDRESS, B_ADDRESS, iss=self.iss_a, now=self.now, config=self.a_config
        )
        self.b: TcpConnection | None = None
        if self.simultaneous:
            self.b = TcpConnection.open_active(
                B_ADDRESS, A_ADDRESS, iss=self.iss_b, now=self.now, config=self.b_config
            )
        self.unanswered_resets: list[TcpRepr] = []

    @property
    def server(self) -> TcpConnection:
        assert self.b is not None, "b was never created (no SYN reached the listener)"
        return self.b

    def segments(self, direction: str | None = None) -> list[TcpRepr]:
        return [
            entry.segment for entry in self.log if direction is None or entry.direction == direction
        ]

    def inject(self, destination: str, segment: TcpRepr, delay: float = 0.0) -> None:
        """Deliver ``segment`` to ``destination`` ("a" or "b") after ``delay``, unlogged."""
        self._push(self.now + delay, destination, segment)

    def _push(self, when: float, destination: str, segment: TcpRepr) -> None:
        self._counter += 1
        heapq.heappush(self._in_flight, (when, self._counter, destination, segment))

    def _send(self, source: str, segment: TcpRepr) -> None:
        direction = "a>b" if source == "a" else "b>a"
        self.log.append(Logged(self.now, direction, segment))
        destination = "b" if source == "a" else "a"
        delays = [0.0] if self.fault is None else self.fault(direction, segment, self.now)
        for extra in delays:
            self._push(self.now + self.latency + extra, destination, segment)

    def _deliver(self, destination: str, segment: TcpRepr) -> None:
        if destination == "a":
            self.a.on_segment(segment, self.now)
            return
        if self.b is None:
            flags = segment.flags
            if (
                self.listening
                and flags & TcpFlags.SYN
                and not flags & (TcpFlags.ACK | TcpFlags.RST)
            ):
                self.b = TcpConnection.open_passive(
                    B_ADDRESS,
                    A_ADDRESS,
                    segment,
                    iss=self.iss_b,
                    now=self.now,
                    config=self.b_config,
                )
                return
            reply = reset_for_unexpected(segment)
            if reply is not None:
                self._send("b", reply)
            return
        self.b.on_segment(segment, self.now)

    def _connections(self) -> list[tuple[str, TcpConnection]]:
        result = [("a", self.a)]
        if self.b is not None:
            result.append(("b", self.b))
        return result

    def flush(self) -> None:
        """Poll every connection whose deadline has come, until none has."""
        for _ in range(10_000):
            for pump in self.pumps:
                pump()
            due = False
            for name, connection in self._connections():
                deadline = connection.deadline()
                if deadline is not None and deadline <= self.now:
                    due = True
                    for segment in connection.poll(self.now):
                        self._send(name, segment)
            if not due:
                return
        raise AssertionError("connections keep asking to be polled at the same instant")

    def next_event(self) -> float | None:
        times = [entry[0] for entry in self._in_flight[:1]]
        for _, connection in self._connections():
            deadline = connection.deadline()
            if deadline is not None:
                times.append(deadline)
        return min(times) if times else None

    def step(self, limit: float) -> bool:
        """Advance to the next event (not past ``limit``); ``False`` if there is none."""
        self.flush()
        when = self.next_event()
        if when is None or when > limit:
            return False
        self.now = max(self.now, when)
        while self._in_flight and self._in_flight[0][0] <= self.now:
            _, _, destination, segment = heapq.heappop(self._in_flight)
            self._deliver(destination, segment)
            if self.poll_each:
                self.flush()
        self.flush()
        return True

    def run_until(self, condition: Callable[[], bool], timeout: float = 60.0) -> None:
        """Run events until ``condition()`` holds; fail after ``timeout`` fake seconds."""
        limit = self.now + timeout
        while True:
            self.flush()
            if condition():
                return
            if not self.step(limit):
                if condition():
                    return
                if self.next_event() is None:
                    raise StuckError(f"nothing pending at {self.now - START:.3f}s")
                raise AssertionError(f"condition not met after {timeout}s of fake time")

    def run_for(self, seconds: float) -> None:
        """Run every event in the next ``seconds``, then set the clock to their end."""
        limit = self.now + seconds
        while self.step(limit):
            pass
        self.now = limit
        self.flush()

    def handshake(self) -> None:
        self.run_until(lambda: self.a.established and self.b is not None and self.b.established)


def transfer(
    network: Network, a_to_b: bytes, b_to_a: bytes = b"", *, timeout: float = 600.0
) -> tuple[bytes, bytes]:
    """Send both payloads, shut both sides down, and return what each side received."""
    received_by_b = bytearray()
    received_by_a = bytearray()
    sent = {"a": 0, "b": 0}

    def pump() -> None:
        for name, connection, data, sink in (
            ("a", network.a, a_to_b, received_by_a),
            ("b", network.b, b_to_a, received_by_b),
        ):
            if connection is None or not connection.established:
                continue
            if connection.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
                offset = sent[name]
                if offset < len(data):
                    sent[name] += connection.send(memoryview(data)[offset : offset + (1 << 20)])
                if sent[name] == len(data):
                    connection.shutdown()
            while connection.readable():
                sink += connection.receive(1 << 20)

    network.pumps.append(pump)
    try:
        network.run_until(
            lambda: (
                network.b is not None
                and network.a.at_eof
                and network.b.at_eof
                and network.a.fin_queued
                and network.b.fin_queued
            ),
            timeout=timeout,
        )
    finally:
        network.pumps.remove(pump)
    return bytes(received_by_b), bytes(received_by_a)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pattern(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)
