"""The neighbour cache: which MAC address an on-link IP address has (ARP, RFC 826; NDP, RFC 4861).

One cache serves both families.  An entry is learnt from an ARP reply or
request, a Neighbor Advertisement or Solicitation, or a Router Advertisement,
and is trusted for :data:`DEFAULT_REACHABLE_TIME` seconds; after that the next
packet to the address asks again.  A packet to an address not (or no longer)
in the cache waits in a short queue while the interface asks, every
:data:`DEFAULT_RETRANSMIT_INTERVAL` seconds, at most
:data:`DEFAULT_MAX_PROBES` times; then the waiting packets are given back to
the interface, which reports "host unreachable" to the sockets that sent them,
as Linux does after its ARP or NDP probes fail.

Everything is bounded, because the addresses asked about come from traffic:
the number of entries, of addresses being resolved, and of packets waiting per
address.  Nothing here reads a clock: every call takes ``now``.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from netshim.protocols.ip import EthernetAddress, IPAddress

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_MAX_PENDING_ADDRESSES",
    "DEFAULT_MAX_PENDING_PACKETS",
    "DEFAULT_MAX_PROBES",
    "DEFAULT_REACHABLE_TIME",
    "DEFAULT_RETRANSMIT_INTERVAL",
    "NeighborCache",
]

# Linux keeps a neighbour REACHABLE for base_reachable_time (30 s, randomised
# to 15-45 s) and then STALE, reusing it while it confirms; one fixed minute
# without the STALE dance costs one extra ARP exchange a minute per peer.
DEFAULT_REACHABLE_TIME = 60.0
# Linux: retrans_time 1 s, mcast_solicit / ucast_solicit 3 probes.
DEFAULT_RETRANSMIT_INTERVAL = 1.0
DEFAULT_MAX_PROBES = 3
# Linux's gc_thresh3 is 1024 entries per table; one interface needs far fewer.
DEFAULT_MAX_ENTRIES = 512
# Linux's unres_qlen_bytes keeps about 100 KiB per unresolved neighbour; 64
# packets cover a TCP initial window and a few datagrams.
DEFAULT_MAX_PENDING_PACKETS = 64
DEFAULT_MAX_PENDING_ADDRESSES = 64

_T = TypeVar("_T")


@dataclass
class _Pending(Generic[_T]):
    next_probe: float
    probes_sent: int
    packets: collections.deque[_T] = field(default_factory=collections.deque)


class NeighborCache(Generic[_T]):
    """MAC addresses of on-link neighbours, and packets waiting for one.

    ``_T`` is whatever the interface queues (an IP packet and its offload
    details).  Packets beyond the per-address bound push out the oldest, as
    Linux's unresolved queue does.
    """

    def __init__(
        self,
        *,
        reachable_time: float = DEFAULT_REACHABLE_TIME,
        retransmit_interval: float = DEFAULT_RETRANSMIT_INTERVAL,
        max_probes: int = DEFAULT_MAX_PROBES,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_pending_packets: int = DEFAULT_MAX_PENDING_PACKETS,
        max_pending_addresses: int = DEFAULT_MAX_PENDING_ADDRESSES,
    ) -> None:
        self.reachable_time = reachable_time
        self.retransmit_interval = retransmit_interval
        self.max_probes = max_probes
        self.max_entries = max_entries
        self.max_pending_packets = max_pending_packets
        self.max_pending_addresses = max_pending_addresses
        # Insertion order is age order: refreshing an entry moves it to the end.
        self._entries: collections.OrderedDict[IPAddress, tuple[EthernetAddress, float]] = (
            collections.OrderedDict()
        )
        self._pending: dict[IPAddress, _Pending[_T]] = {}
        self.dropped_packets = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, address: object) -> bool:
        return address in self._entries

    def lookup(self, address: IPAddress, now: float) -> EthernetAddress | None:
        """The MAC of ``address`` if known and not expired."""
        entry = self._entries.get(address)
        if entry is None:
            return None
        mac, expires = entry
        if now >= expires:
            del self._entries[address]
            return None
        return mac

    def entries(self) -> Iterator[tuple[IPAddress, EthernetAddress]]:
        """Every cached ``(address, MAC)``, oldest first (expired ones included)."""
        for address, (mac, _expires) in self._entries.items():
            yield address, mac

    def learn(self, address: IPAddress, mac: EthernetAddress, now: float) -> list[_T]:
        """Record that ``address`` is at ``mac``; returns the packets that waited for it."""
        self._entries.pop(address, None)
        self._entries[address] = (mac, now + self.reachable_time)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        pending = self._pending.pop(address, None)
        return list(pending.packets) if pending is not None else []

    def is_pending(self, address: IPAddress) -> bool:
        return address in self._pending

    def enqueue(self, address: IPAddress, packet: _T, now: float) -> bool:
        """Queue ``packet`` until ``address`` resolves.

        Returns True when a probe should be sent now (the address was not
        being resolved yet).  When too many addresses are being resolved the
        packet is dropped (counted in :attr:`dropped_packets`) and False returned.
        """
        pending = self._pending.get(address)
        if pending is None:
            if len(self._pending) >= self.max_pending_addresses:
                self.dropped_packets += 1
                return False
            pending = _Pending(next_probe=now + self.retransmit_interval, probes_sent=1)
            self._pending[address] = pending
            pending.packets.append(packet)
            return True
        if len(pending.packets) >= self.max_pending_packets:
            pending.packets.popleft()
            self.dropped_packets += 1
        pending.packets.append(packet)
        return False

    def poll(self, now: float) -> tuple[list[IPAddress], list[tuple[IPAddress, list[_T]]]]:
        """Addresses to probe again now, and those given up on with their packets."""
        if not self._pending:
            return [], []
        probe: list[IPAddress] = []
        failed: list[tuple[IPAddress, list[_T]]] = []
        for address, pending in list(self._pending.items()):
            if now < pending.next_probe:
                continue
            if pending.probes_sent >= self.max_probes:
                del self._pending[address]
                failed.append((address, list(pending.packets)))
                continue
            pending.probes_sent += 1
            pending.next_probe = now + self.retransmit_interval
            probe.append(address)
        return probe, failed

    def deadline(self) -> float | None:
        """When :meth:`poll` next has something to do."""
        if not self._pending:
            return None
        return min((pending.next_probe for pending in self._pending.values()), default=None)
