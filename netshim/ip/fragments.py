"""IPv4 reassembly (RFC 791 section 3.2, RFC 815): fragments in, whole packets out.

netshim never fragments what it sends (Don't Fragment is set and TCP follows
the path MTU), but it must accept fragments: a DNS answer over UDP larger than
the path MTU arrives in pieces, and so do datagrams from hosts that clear DF.

Fragments of one datagram are keyed by source, destination, protocol and
identification (RFC 791).  A datagram is given up :data:`DEFAULT_TIMEOUT`
seconds after its first fragment arrived (Linux's ipfrag_time).  Overlapping
fragments drop the whole datagram, as Linux has done since 2018 and RFC 5722
demands for IPv6: overlaps serve only to slip data past filters.  Memory is
bounded by :data:`DEFAULT_MAX_BYTES` across all datagrams and
:data:`DEFAULT_MAX_DATAGRAMS` datagrams in progress; beyond either, the oldest
datagram in progress is dropped, so a flood of first fragments cannot pin memory.
"""

from __future__ import annotations

import collections
import ipaddress
from dataclasses import dataclass, field, replace

from netshim.protocols.ip import Ipv4Repr
from netshim.protocols.ip.ipv4 import MAX_PACKET_LEN

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DATAGRAMS",
    "DEFAULT_TIMEOUT",
    "Ipv4Reassembler",
    "ReassemblyResult",
]

DEFAULT_TIMEOUT = 30.0
# Linux's ipfrag_high_thresh is 4 MiB per namespace; a user-space stack with
# a handful of fragmented DNS answers in flight needs a fraction of it.
DEFAULT_MAX_BYTES = 256 * 1024
DEFAULT_MAX_DATAGRAMS = 64

_Key = tuple[ipaddress.IPv4Address, ipaddress.IPv4Address, int, int]


@dataclass
class _Datagram:
    started: float
    # offset -> data, never overlapping
    pieces: dict[int, bytes] = field(default_factory=dict)
    total_len: int | None = None
    first: Ipv4Repr | None = None
    held: int = 0


@dataclass(frozen=True, slots=True)
class ReassemblyResult:
    """What a fragment did: a whole packet (or None) and a drop reason (or None)."""

    packet: Ipv4Repr | None = None
    dropped: str | None = None


class Ipv4Reassembler:
    """Collects IPv4 fragments into whole packets, within a memory and time bound."""

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_datagrams: int = DEFAULT_MAX_DATAGRAMS,
    ) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_datagrams = max_datagrams
        self._datagrams: collections.OrderedDict[_Key, _Datagram] = collections.OrderedDict()
        self._held = 0

    @property
    def bytes_held(self) -> int:
        return self._held

    def __len__(self) -> int:
        return len(self._datagrams)

    def _drop(self, key: _Key) -> None:
        datagram = self._datagrams.pop(key)
        self._held -= datagram.held

    def expire(self, now: float) -> int:
        """Drop datagrams older than the timeout; returns how many were dropped."""
        expired = [k for k, d in self._datagrams.items() if now - d.started >= self.timeout]
        for key in expired:
            self._drop(key)
        return len(expired)

    def deadline(self) -> float | None:
        oldest = next(iter(self._datagrams.values()), None)
        return None if oldest is None else oldest.started + self.timeout

    def add(self, fragment: Ipv4Repr, now: float) -> ReassemblyResult:
        """Take one fragment (``more_fragments`` set or ``fragment_offset`` above 0)."""
        key: _Key = (
            fragment.src_addr,
            fragment.dst_addr,
            fragment.protocol,
            fragment.identification,
        )
        start = fragment.fragment_offset
        end = start + len(fragment.payload)
        if fragment.more_fragments and (len(fragment.payload) % 8 or not fragment.payload):
            # Every fragment but the last carries a multiple of 8 bytes (RFC 791).
            return ReassemblyResult(dropped="bad fragment")
        if end + fragment.header_len() > MAX_PACKET_LEN:
            return ReassemblyResult(dropped="fragment beyond 64 KiB")
        datagram = self._datagrams.get(key)
        if datagram is None:
            datagram = _Datagram(started=now)
            self._datagrams[key] = datagram
        if not fragment.more_fragments:
            if datagram.total_len is not None and datagram.total_len != end:
                self._drop(key)
                return ReassemblyResult(dropped="fragment overlap")
            datagram.total_len = end
        for other_start, other in datagram.pieces.items():
            if start < other_start + len(other) and other_start < end:
                self._drop(key)
                return ReassemblyResult(dropped="fragment overlap")
        if datagram.total_len is not None and end > datagram.total_len:
            self._drop(key)
            return ReassemblyResult(dropped="fragment overlap")
        datagram.pieces[start] = fragment.payload
        datagram.held += len(fragment.payload)
        self._held += len(fragment.payload)
        if start == 0:
            datagram.first = fragment
        dropped = None
        while self._held > self.max_bytes or len(self._datagrams) > self.max_datagrams:
            oldest = next(iter(self._datagrams))
            self._drop(oldest)
            dropped = "reassembly buffer full"
            if oldest == key:
                return ReassemblyResult(dropped=dropped)
        if datagram.total_len is None or datagram.first is None:
            return ReassemblyResult(dropped=dropped)
        if datagram.held != datagram.total_len:
            return ReassemblyResult(dropped=dropped)
        # No overlaps and the byte count matches the extent: the pieces tile it.
        self._drop(key)
        payload = b"".join(datagram.pieces[offset] for offset in sorted(datagram.pieces))
        whole = replace(datagram.first, payload=payload, more_fragments=False, fragment_offset=0)
        return ReassemblyResult(packet=whole, dropped=dropped)
