"""IP reassembly (RFC 791 section 3.2, RFC 815, RFC 8200 section 4.5): fragments in, packets out.

netshim never fragments what it sends (Don't Fragment is set and TCP follows
the path MTU), but it must accept fragments: a DNS answer over UDP larger than
the path MTU arrives in pieces, over IPv4 from routers or senders that clear
DF, over IPv6 from the sender itself.

Fragments of one packet are keyed by source, destination, protocol and
identification (IPv4, RFC 791) or source, destination and identification
(IPv6).  A packet is given up :data:`DEFAULT_TIMEOUT` seconds after its first
fragment arrived (Linux's ipfrag_time, IPv6's 60 s cut to the same).
Overlapping fragments drop the whole packet, as RFC 5722 demands for IPv6 and
Linux has done for IPv4 since 2018: overlaps serve only to slip data past
filters.  Memory is bounded by :data:`DEFAULT_MAX_BYTES` across all packets
and :data:`DEFAULT_MAX_DATAGRAMS` packets in progress, both families together;
beyond either, the oldest packet in progress is dropped, so a flood of first
fragments cannot pin memory.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

from netshim.protocols.ip import IpProtocol, Ipv4Repr, Ipv6Repr, WireError
from netshim.protocols.ip.ipv4 import MAX_PACKET_LEN

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DATAGRAMS",
    "DEFAULT_TIMEOUT",
    "Reassembler",
    "Ipv6Fragment",
    "ReassemblyResult",
]

DEFAULT_TIMEOUT = 30.0
# Linux's ipfrag_high_thresh is 4 MiB per namespace; a user-space stack with
# a handful of fragmented DNS answers in flight needs a fraction of it.
DEFAULT_MAX_BYTES = 256 * 1024
DEFAULT_MAX_DATAGRAMS = 64
# A reassembled IPv6 payload must fit the 16-bit Payload Length (no jumbograms).
_MAX_IPV6_PAYLOAD = 0xFFFF

_T = TypeVar("_T")


@dataclass
class _Datagram(Generic[_T]):
    started: float
    # offset -> data, never overlapping
    pieces: dict[int, bytes] = field(default_factory=dict)
    total_len: int | None = None
    first: _T | None = None
    held: int = 0


@dataclass(frozen=True, slots=True)
class ReassemblyResult(Generic[_T]):
    """What a fragment did: a whole packet (or None) and a drop reason (or None)."""

    packet: _T | None = None
    dropped: str | None = None


@dataclass(frozen=True, slots=True)
class Ipv6Fragment:
    """An IPv6 packet whose payload starts with a Fragment header (RFC 8200 section 4.5).

    ``packet`` is the IPv6 packet as received with any extension headers
    before the Fragment header already skipped: its ``next_header`` is 44 and
    its payload the Fragment header and the fragment's data.
    """

    packet: Ipv6Repr
    next_header: int
    offset: int
    more_fragments: bool
    identification: int
    data: bytes

    @classmethod
    def parse(cls, packet: Ipv6Repr, payload: bytes) -> Ipv6Fragment:
        """Read the Fragment header at the start of ``payload`` (the rest is data)."""
        if len(payload) < 8:
            raise WireError(f"IPv6 fragment header truncated: {len(payload)} bytes, need 8")
        word = int.from_bytes(payload[2:4], "big")
        return cls(
            packet,
            payload[0],
            word & 0xFFF8,
            bool(word & 1),
            int.from_bytes(payload[4:8], "big"),
            payload[8:],
        )


class _Reassembler(Generic[_T]):
    def __init__(self, timeout: float, max_bytes: int, max_datagrams: int) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_datagrams = max_datagrams
        self._datagrams: collections.OrderedDict[object, _Datagram[_T]] = collections.OrderedDict()
        self._held = 0

    def _drop(self, key: object) -> None:
        datagram = self._datagrams.pop(key)
        self._held -= datagram.held

    def _add(
        self,
        key: object,
        start: int,
        data: bytes,
        more_fragments: bool,
        first: _T,
        limit: int,
        now: float,
    ) -> tuple[tuple[_T, bytes] | None, str | None]:
        """Add one fragment; the first fragment's value and the whole payload when complete."""
        end = start + len(data)
        if more_fragments and (len(data) % 8 or not data):
            # Every fragment but the last carries a multiple of 8 bytes.
            return None, "bad fragment"
        if end > limit:
            return None, "fragment beyond 64 KiB"
        datagram = self._datagrams.get(key)
        if datagram is None:
            datagram = _Datagram(started=now)
            self._datagrams[key] = datagram
        if not more_fragments:
            if datagram.total_len is not None and datagram.total_len != end:
                self._drop(key)
                return None, "fragment overlap"
            datagram.total_len = end
        for other_start, other in datagram.pieces.items():
            if start < other_start + len(other) and other_start < end:
                self._drop(key)
                return None, "fragment overlap"
        if datagram.total_len is not None and end > datagram.total_len:
            self._drop(key)
            return None, "fragment overlap"
        datagram.pieces[start] = data
        datagram.held += len(data)
        self._held += len(data)
        if start == 0:
            datagram.first = first
        dropped = None
        while self._held > self.max_bytes or len(self._datagrams) > self.max_datagrams:
            oldest = next(iter(self._datagrams))
            self._drop(oldest)
            dropped = "reassembly buffer full"
            if oldest == key:
                return None, dropped
        if datagram.total_len is None or datagram.first is None:
            return None, dropped
        if datagram.held != datagram.total_len:
            return None, dropped
        # No overlaps and the byte count matches the extent: the pieces tile it.
        self._drop(key)
        payload = b"".join(datagram.pieces[offset] for offset in sorted(datagram.pieces))
        return (datagram.first, payload), dropped


class Reassembler:
    """Collects IPv4 (:meth:`add`) and IPv6 (:meth:`add_ipv6`) fragments into whole packets.

    Both families share one memory and time bound.
    """

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_datagrams: int = DEFAULT_MAX_DATAGRAMS,
    ) -> None:
        self._core: _Reassembler[Ipv4Repr | Ipv6Fragment] = _Reassembler(
            timeout, max_bytes, max_datagrams
        )

    @property
    def timeout(self) -> float:
        return self._core.timeout

    @property
    def bytes_held(self) -> int:
        return self._core._held

    def __len__(self) -> int:
        return len(self._core._datagrams)

    def expire(self, now: float) -> int:
        """Drop packets older than the timeout; returns how many were dropped."""
        core = self._core
        expired = [k for k, d in core._datagrams.items() if now - d.started >= core.timeout]
        for key in expired:
            core._drop(key)
        return len(expired)

    def deadline(self) -> float | None:
        oldest = next(iter(self._core._datagrams.values()), None)
        return None if oldest is None else oldest.started + self._core.timeout

    def add(self, fragment: Ipv4Repr, now: float) -> ReassemblyResult[Ipv4Repr]:
        """Take one IPv4 fragment (``more_fragments`` set or ``fragment_offset`` above 0)."""
        key = (
            fragment.src_addr,
            fragment.dst_addr,
            fragment.protocol,
            fragment.identification,
        )
        limit = MAX_PACKET_LEN - fragment.header_len()
        whole, dropped = self._core._add(
            key,
            fragment.fragment_offset,
            fragment.payload,
            fragment.more_fragments,
            fragment,
            limit,
            now,
        )
        if whole is None:
            return ReassemblyResult(dropped=dropped)
        first, payload = whole
        assert isinstance(first, Ipv4Repr)
        packet = replace(first, payload=payload, more_fragments=False, fragment_offset=0)
        return ReassemblyResult(packet=packet, dropped=dropped)

    def add_ipv6(self, fragment: Ipv6Fragment, now: float) -> ReassemblyResult[Ipv6Repr]:
        """Take one IPv6 fragment; the whole packet has the fragments' next header.

        An atomic fragment (offset 0, no more fragments: RFC 6946) is the
        whole packet at once and never waits with others.
        """
        packet = fragment.packet
        if fragment.offset == 0 and not fragment.more_fragments:
            whole_packet = replace(packet, next_header=fragment.next_header, payload=fragment.data)
            return ReassemblyResult(packet=whole_packet)
        key = (packet.src_addr, packet.dst_addr, IpProtocol.IPV6_FRAGMENT, fragment.identification)
        whole, dropped = self._core._add(
            key,
            fragment.offset,
            fragment.data,
            fragment.more_fragments,
            fragment,
            _MAX_IPV6_PAYLOAD,
            now,
        )
        if whole is None:
            return ReassemblyResult(dropped=dropped)
        first, payload = whole
        assert isinstance(first, Ipv6Fragment)
        result = replace(first.packet, next_header=first.next_header, payload=payload)
        return ReassemblyResult(packet=result, dropped=dropped)
