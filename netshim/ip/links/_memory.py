"""In-memory links: a :class:`Cable` with two ends and a learning :class:`Bridge`, with faults.

These let interfaces talk to each other inside one process (tests, the
Pyodide build, simulated LANs) with no devices and no privileges.  Nothing here
starts a task: sending puts the packet straight into the receiving end's
queue (through the bridge's forwarding table for a bridge port), stamped with
the time it may be received; ``receive`` waits until the earliest one is due.

:class:`Faults` describes what a link does wrong: loss, duplication,
reordering (a packet held back by ``reorder_delay``) and latency, drawn from a
``random.Random`` seeded with ``seed`` so that a run can be repeated.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import random
from dataclasses import dataclass
from typing import Protocol

import anyio

from netshim.ip.iface import GsoInfo, Medium

from ._base import DEFAULT_MAX_QUEUED_PACKETS, IncomingPacket, Link

__all__ = ["Bridge", "Cable", "CableEnd", "FaultInjector", "Faults"]

# Linux bridges forget a MAC address after 300 s without traffic from it
# (ageing_time) and hold at most a configurable number; 4096 is plenty here.
DEFAULT_AGEING_TIME = 300.0
DEFAULT_MAX_MAC_ENTRIES = 4096
_ETHERNET_HEADER_LEN = 14


@dataclass(frozen=True, slots=True)
class Faults:
    """What a link does wrong, as probabilities per packet and delays in seconds."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_delay: float = 0.005
    latency: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a probability in 0..1, got {value}")
        for name in ("reorder_delay", "latency"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


class FaultInjector:
    """Applies :class:`Faults` to one direction of a link, with its own seeded generator."""

    def __init__(self, faults: Faults, stream: int = 0) -> None:
        self.faults = faults
        self._rng = random.Random(faults.seed * 1_000_003 + stream)
        self.lost = 0
        self.duplicated = 0
        self.reordered = 0

    def schedule(self, now: float, *, lose: bool = True) -> list[float]:
        """When each copy of a packet sent at ``now`` arrives (empty: lost).

        ``lose=False`` when the loss was drawn already (:meth:`loses`).
        """
        faults = self.faults
        if lose and self.loses():
            return []
        copies = 1
        if faults.duplicate and self._rng.random() < faults.duplicate:
            self.duplicated += 1
            copies = 2
        times = []
        for _ in range(copies):
            at = now + faults.latency
            if faults.reorder and self._rng.random() < faults.reorder:
                self.reordered += 1
                at += faults.reorder_delay
            times.append(at)
        return times

    def loses(self) -> bool:
        """One draw of the loss (counted in :attr:`lost`)."""
        if self.faults.loss and self._rng.random() < self.faults.loss:
            self.lost += 1
            return True
        return False


class _Sink(Protocol):
    def _deliver(self, data: bytes, at: float) -> None: ...

    def _peer_closed(self) -> None: ...


class _Inbox:
    """Packets due at given times, earliest first, bounded; wakes one waiting receiver."""

    def __init__(self, max_queued: int) -> None:
        self.max_queued = max_queued
        self._heap: list[tuple[float, int, bytes]] = []
        self._order = itertools.count()
        self._wakeup = anyio.Event()
        self.closed = False
        self.peer_closed = False
        self.dropped = 0

    def put(self, data: bytes, at: float) -> None:
        if self.closed:
            return
        if len(self._heap) >= self.max_queued:
            self.dropped += 1
            return
        heapq.heappush(self._heap, (at, next(self._order), data))
        self._wakeup.set()

    def wake(self) -> None:
        self._wakeup.set()

    def get_nowait(self) -> bytes | None:
        if self.closed:
            raise anyio.ClosedResourceError
        if self._heap and self._heap[0][0] <= anyio.current_time():
            return heapq.heappop(self._heap)[2]
        return None

    async def get(self) -> bytes:
        while True:
            if self.closed:
                raise anyio.ClosedResourceError
            now = anyio.current_time()
            if self._heap and self._heap[0][0] <= now:
                return heapq.heappop(self._heap)[2]
            if not self._heap and self.peer_closed:
                raise anyio.EndOfStream
            if self._wakeup.is_set():
                self._wakeup = anyio.Event()
            wait = self._heap[0][0] - now if self._heap else None
            with anyio.move_on_after(wait):
                await self._wakeup.wait()


class CableEnd(Link):
    """One end of a :class:`Cable`, or a :class:`Bridge` port: sends to the far side.

    ``faults`` apply to what this end sends.  It does not segment: ``gso`` must be None.
    """

    def __init__(
        self,
        medium: Medium,
        *,
        faults: Faults | None = None,
        max_queued: int = DEFAULT_MAX_QUEUED_PACKETS,
        stream: int = 0,
    ) -> None:
        self.medium = medium
        self.tso = False
        self._inbox = _Inbox(max_queued)
        self._peer: _Sink | None = None
        self.injector = FaultInjector(faults, stream) if faults is not None else None

    @property
    def dropped(self) -> int:
        """Packets that arrived while this end's queue was full."""
        return self._inbox.dropped

    async def send(self, packet: bytes, gso: GsoInfo | None = None) -> None:
        if self._inbox.closed:
            raise anyio.ClosedResourceError
        if gso is not None:
            raise ValueError(
                "an in-memory link does not segment: create the Interface with tso=False"
            )
        await anyio.lowlevel.checkpoint()
        self.send_nowait(packet)

    def send_nowait(self, packet: bytes) -> None:
        """:meth:`send` without a checkpoint, for a caller that sends many packets at once."""
        if self._inbox.closed:
            raise anyio.ClosedResourceError
        peer = self._peer
        if peer is None:
            return
        data = bytes(packet)
        now = anyio.current_time()
        times = self.injector.schedule(now) if self.injector is not None else [now]
        for at in times:
            peer._deliver(data, at)

    async def receive(self) -> IncomingPacket:
        return IncomingPacket(await self._inbox.get())

    def receive_nowait(self) -> IncomingPacket | None:
        """The next packet if one is due, else None (a driver drains a burst this way)."""
        data = self._inbox.get_nowait()
        return None if data is None else IncomingPacket(data)

    async def aclose(self) -> None:
        if self._inbox.closed:
            return
        self._inbox.closed = True
        self._inbox.wake()
        if self._peer is not None:
            self._peer._peer_closed()

    # As the far side of another end.

    def _deliver(self, data: bytes, at: float) -> None:
        self._inbox.put(data, at)

    def _peer_closed(self) -> None:
        self._inbox.peer_closed = True
        self._inbox.wake()


class Cable:
    """Two :class:`CableEnd` values joined back to back: what ``a`` sends, ``b`` receives.

    ``faults`` applies to both directions (each with its own random stream);
    ``faults_a_to_b`` / ``faults_b_to_a`` set one direction.
    """

    def __init__(
        self,
        medium: Medium = Medium.ETHERNET,
        *,
        faults: Faults | None = None,
        faults_a_to_b: Faults | None = None,
        faults_b_to_a: Faults | None = None,
        max_queued: int = DEFAULT_MAX_QUEUED_PACKETS,
    ) -> None:
        self.a = CableEnd(medium, faults=faults_a_to_b or faults, max_queued=max_queued, stream=1)
        self.b = CableEnd(medium, faults=faults_b_to_a or faults, max_queued=max_queued, stream=2)
        self.a._peer = self.b
        self.b._peer = self.a

    @property
    def ends(self) -> tuple[CableEnd, CableEnd]:
        return self.a, self.b


class _BridgePort:
    """The bridge's side of a port: forwards what the user's end sends."""

    def __init__(self, bridge: Bridge, end: CableEnd, faults: Faults | None, index: int) -> None:
        self.bridge = bridge
        self.end = end
        self.index = index
        # Faults on the way from the bridge to the user's end.
        self.egress = FaultInjector(faults, 2 * index + 1) if faults is not None else None
        self.closed = False

    def _deliver(self, data: bytes, at: float) -> None:
        self.bridge._forward(self, data, at)

    def _peer_closed(self) -> None:
        self.closed = True
        self.bridge._remove(self)

    def output(self, data: bytes, at: float) -> None:
        times = self.egress.schedule(at) if self.egress is not None else [at]
        for when in times:
            self.end._deliver(data, when)


class Bridge:
    """A learning Ethernet switch joining any number of ports (IEEE 802.1D, without STP).

    Each :meth:`port` is a :class:`CableEnd` for an interface (or a TAP
    link's pump).  Frames to a MAC address the bridge has seen as a source go
    to that port only; broadcast, multicast and unknown destinations are
    flooded to every other port.  Entries age out after ``ageing_time``
    seconds and the table holds at most ``max_entries`` addresses.
    """

    def __init__(
        self,
        *,
        ageing_time: float = DEFAULT_AGEING_TIME,
        max_entries: int = DEFAULT_MAX_MAC_ENTRIES,
    ) -> None:
        self.ageing_time = ageing_time
        self.max_entries = max_entries
        self._ports: list[_BridgePort] = []
        self._table: collections.OrderedDict[bytes, tuple[_BridgePort, float]] = (
            collections.OrderedDict()
        )
        self._count = itertools.count()
        self.flooded = 0
        self.forwarded = 0
        self.dropped = 0

    def port(
        self, *, faults: Faults | None = None, max_queued: int = DEFAULT_MAX_QUEUED_PACKETS
    ) -> CableEnd:
        """A new port; ``faults`` apply to frames in both directions through it."""
        index = next(self._count)
        end = CableEnd(Medium.ETHERNET, faults=faults, max_queued=max_queued, stream=2 * index)
        port = _BridgePort(self, end, faults, index)
        end._peer = port
        self._ports.append(port)
        return end

    async def run_port(self, link: Link, *, faults: Faults | None = None) -> None:
        """Join ``link`` (a TAP device, another cable's end...) to the bridge until it ends.

        Frames are moved both ways by two tasks until ``link`` reports end of
        stream or is closed, or the call is cancelled; then the port is
        removed.  A TAP device joining a bridge should be opened with
        ``offload=False``: a bridge port carries bytes only, not the
        device's "checksum already verified" mark, so the interfaces behind
        it check every checksum and partial ones would fail.
        """
        if link.medium is not Medium.ETHERNET:
            raise ValueError("only Ethernet links can join a bridge")
        port = self.port(faults=faults)

        async def inbound() -> None:
            with contextlib.suppress(
                anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError
            ):
                while True:
                    port.send_nowait((await link.receive()).data)
            group.cancel_scope.cancel()

        async def outbound() -> None:
            with contextlib.suppress(
                anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError
            ):
                while True:
                    await link.send((await port.receive()).data)
            group.cancel_scope.cancel()

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(inbound)
                group.start_soon(outbound)
        finally:
            with anyio.CancelScope(shield=True):
                await port.aclose()

    def mac_table(self) -> dict[str, int]:
        """Learnt ``MAC -> port number`` (numbered from 0 in creation order)."""
        return {
            ":".join(f"{octet:02x}" for octet in mac): port.index
            for mac, (port, _seen) in self._table.items()
        }

    def _remove(self, port: _BridgePort) -> None:
        if port in self._ports:
            self._ports.remove(port)
        for mac in [mac for mac, (owner, _seen) in self._table.items() if owner is port]:
            del self._table[mac]

    def _forward(self, source: _BridgePort, data: bytes, at: float) -> None:
        if len(data) < _ETHERNET_HEADER_LEN:
            self.dropped += 1
            return
        destination, sender = data[0:6], data[6:12]
        if not sender[0] & 1:
            self._table.pop(sender, None)
            self._table[sender] = (source, at)
            while len(self._table) > self.max_entries:
                self._table.popitem(last=False)
        entry = None if destination[0] & 1 else self._table.get(destination)
        if entry is not None and at - entry[1] > self.ageing_time:
            del self._table[destination]
            entry = None
        if entry is not None:
            target = entry[0]
            if target is not source and not target.closed:
                self.forwarded += 1
                target.output(data, at)
            return
        self.flooded += 1
        for port in self._ports:
            if port is not source and not port.closed:
                port.output(data, at)
