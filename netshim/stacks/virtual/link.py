"""Links between virtual hosts: delay, bandwidth, loss and partitions.

Every pair of hosts is joined by one symmetric :class:`Link`.  A link turns
"a sender handed N bytes to the network at time t" into "the receiver may see
them at time t'": one-way latency plus uniform jitter, serialisation at the
link's bandwidth (each direction has its own queue), and for UDP loss,
duplication and reordering.  TCP on top stays reliable and in order (its
deliveries never overtake each other), only slower.

Nothing here sleeps or runs tasks: senders stamp each segment with its
delivery time and receivers wait until then.  Randomness comes from a
``random.Random`` seeded from the network's seed and the two host names, so a
run is repeatable whatever else the network does.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import anyio

__all__ = ["Link", "LinkConditions"]


def _check_probability(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number between 0 and 1, not {value!r}")
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
    return float(value)


def _check_duration(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")
    if not 0.0 <= value < math.inf:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class LinkConditions:
    """What a link does to traffic; the default is a perfect link.

    ``latency`` and ``jitter`` are seconds one way (jitter adds a uniform
    0..jitter to each delivery); ``bandwidth`` is bytes per second in each
    direction, ``None`` for unlimited; ``loss``, ``duplicate`` and ``reorder``
    are probabilities applied to each UDP datagram.
    """

    latency: float = 0.0
    jitter: float = 0.0
    bandwidth: float | None = None
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0

    def __post_init__(self) -> None:
        _check_duration("latency", self.latency)
        _check_duration("jitter", self.jitter)
        if self.bandwidth is not None:
            if isinstance(self.bandwidth, bool) or not isinstance(self.bandwidth, int | float):
                raise TypeError(f"bandwidth must be bytes per second, not {self.bandwidth!r}")
            if not 0 < self.bandwidth < math.inf:
                raise ValueError(f"bandwidth must be > 0 bytes per second, got {self.bandwidth!r}")
        for name in ("loss", "duplicate", "reorder"):
            _check_probability(name, getattr(self, name))

    @property
    def delays(self) -> bool:
        return self.latency > 0 or self.jitter > 0 or self.bandwidth is not None


# How long a datagram picked for reordering is held back when no later
# datagram overtakes it: long enough to be "late", short enough for tests.
REORDER_HOLD = 0.005


@dataclass(slots=True, eq=False)
class Link:
    """The mutable state of the link between two hosts (or a host and itself)."""

    rng: random.Random
    conditions: LinkConditions = field(default_factory=LinkConditions)
    partitioned: bool = False
    reset_after: int | None = None
    # When each sender's transmitter (keyed by host name) is next free.
    _free_at: dict[str, float] = field(default_factory=dict)
    # Events of tasks waiting for the partition to heal.
    _heal_waiters: list[anyio.Event] = field(default_factory=list)

    def delivery_time(self, sender: str, size: int) -> float:
        """When ``size`` bytes that host ``sender`` sends now reach the other end.

        0.0 means "immediately" and lets the fast path skip the clock.
        """
        conditions = self.conditions
        if not conditions.delays:
            return 0.0
        now = anyio.current_time()
        at = now
        if conditions.bandwidth is not None:
            start = max(now, self._free_at.get(sender, 0.0))
            at = start + size / conditions.bandwidth
            self._free_at[sender] = at
        at += conditions.latency
        if conditions.jitter:
            at += self.rng.uniform(0.0, conditions.jitter)
        return at

    def round_trip(self) -> float:
        """Seconds a handshake (there and back) takes, with jitter drawn."""
        conditions = self.conditions
        delay = 2 * conditions.latency
        if conditions.jitter:
            delay += self.rng.uniform(0.0, conditions.jitter) + self.rng.uniform(
                0.0, conditions.jitter
            )
        return delay

    def datagram_fates(self) -> tuple[int, bool]:
        """How many copies of a datagram arrive (0, 1 or 2) and whether it is held back."""
        conditions = self.conditions
        if conditions.loss and self.rng.random() < conditions.loss:
            return 0, False
        copies = 2 if conditions.duplicate and self.rng.random() < conditions.duplicate else 1
        held = bool(conditions.reorder) and self.rng.random() < conditions.reorder
        return copies, held

    async def wait_healed(self) -> None:
        """Return once the link is not partitioned (at once if it is not)."""
        while self.partitioned:
            event = anyio.Event()
            self._heal_waiters.append(event)
            await event.wait()

    def add_heal_waiter(self, event: anyio.Event) -> None:
        self._heal_waiters.append(event)

    def heal(self) -> None:
        self.partitioned = False
        waiters, self._heal_waiters = self._heal_waiters, []
        for event in waiters:
            event.set()
