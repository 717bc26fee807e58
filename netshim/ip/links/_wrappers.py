"""Links that wrap a link: pcap capture and fault injection, composable in any order.

As smoltcp's ``phy/pcap_writer.rs`` and ``phy/fault_injector.rs`` wrap any
device, :class:`PcapLink` records every frame or packet a link sends and
receives (Ethernet frames for an Ethernet link, raw IP for a TUN), and
:class:`FaultyLink` loses, duplicates and reorders packets on a link that has
no faults of its own (a TUN or TAP device), in both directions.
"""

from __future__ import annotations

import asyncio
import collections
import os
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from typing import IO

from netshim.ip.iface import GsoInfo, Medium
from netshim.pcap import LinkType, PcapWriter
from netshim.protocols.ip.checksum import internet_checksum

from ._base import IncomingPacket, Link
from ._memory import FaultInjector, Faults

__all__ = ["FaultyLink", "PcapLink"]


class PcapLink(Link):
    """``inner`` with every packet sent and received written to a pcap file.

    ``file`` is a path (closed with the link) or a :class:`~netshim.pcap.PcapWriter`
    (left open: several links may share one, as ``tcpdump -i any`` would show
    them).  Large TSO packets are recorded as handed to the link, one record
    each, with their partial TCP checksum, as tcpdump on the device shows them.
    """

    def __init__(self, inner: Link, file: str | os.PathLike[str] | IO[bytes] | PcapWriter) -> None:
        self.inner = inner
        self.medium = inner.medium
        self.tso = inner.tso
        linktype = LinkType.ETHERNET if inner.medium is Medium.ETHERNET else LinkType.RAW
        if isinstance(file, PcapWriter):
            self.writer, self._owned = file, False
        else:
            self.writer, self._owned = PcapWriter(file, linktype=linktype), True

    async def send(self, packet: bytes, gso: GsoInfo | None = None) -> None:
        if not self.writer.closed:
            self.writer.write(bytes(packet), time.time())
        await self.inner.send(packet, gso)

    async def receive(self) -> IncomingPacket:
        incoming = await self.inner.receive()
        if not self.writer.closed:
            self.writer.write(incoming.data, time.time())
        return incoming

    def receive_nowait(self) -> IncomingPacket | None:
        """The inner link's next waiting packet, recorded; None when it has none or cannot say.

        Passing bursts through keeps a captured link's timing that of the
        link itself: without it a driver takes one packet per wait.
        """
        inner_nowait = getattr(self.inner, "receive_nowait", None)
        incoming: IncomingPacket | None = inner_nowait() if inner_nowait is not None else None
        if incoming is not None and not self.writer.closed:
            self.writer.write(incoming.data, time.time())
        return incoming

    async def send_many(self, packets: Iterable[tuple[bytes, GsoInfo | None]]) -> None:
        """Record and send each ``(packet, gso)``, in one call of the inner link's own."""
        batch = list(packets)
        if not self.writer.closed:
            now = time.time()
            for packet, _ in batch:
                self.writer.write(bytes(packet), now)
        inner_many = getattr(self.inner, "send_many", None)
        if inner_many is not None:
            await inner_many(batch)
        else:
            for packet, gso in batch:
                await self.inner.send(packet, gso)

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            if self._owned:
                self.writer.close()
            else:
                self.writer.flush()


# What a wire-segment cut needs of a packet: where its IP header, TCP header
# and payload start, and the IP version (None: not a cuttable TCP packet).
_Layout = tuple[int, int, int, int]
_ETHERNET_HEADER = 14
_ETHERTYPES = {b"\x08\x00": 4, b"\x86\xdd": 6}
_TCP = 6
_FIN, _PSH, _CWR = 0x01, 0x08, 0x80
_TCP_SEQ = struct.Struct("!I")


def _tcp_layout(data: bytes, medium: Medium) -> _Layout | None:
    """Offsets of a whole (unfragmented) TCP packet's parts, or None for anything else."""
    ip = 0
    if medium is Medium.ETHERNET:
        if _ETHERTYPES.get(bytes(data[12:14])) is None:
            return None
        ip = _ETHERNET_HEADER
    if len(data) < ip + 40:
        return None
    version = data[ip] >> 4
    if version == 4:
        tcp = ip + (data[ip] & 0x0F) * 4
        fragmented = int.from_bytes(data[ip + 6 : ip + 8], "big") & 0x3FFF
        if (
            data[ip + 9] != _TCP
            or fragmented
            or ip + int.from_bytes(data[ip + 2 : ip + 4], "big") != len(data)
        ):
            return None
    elif version == 6:
        tcp = ip + 40
        if data[ip + 6] != _TCP or tcp + int.from_bytes(data[ip + 4 : ip + 6], "big") != len(data):
            return None
    else:
        return None
    if len(data) < tcp + 20:
        return None
    body = tcp + (data[tcp + 12] >> 4) * 4
    if body > len(data):
        return None
    return version, ip, tcp, body


def _cut(data: bytes, layout: _Layout, start: int, end: int, partial: bool) -> bytes:
    """The packet carrying payload bytes ``start:end`` of ``data``, headers made to fit.

    The IP length (and an IPv4 header checksum), the sequence number and the
    flags (FIN and PSH stay with the last piece, CWR with the first) are
    rewritten.  ``partial``: the TCP checksum field holds the pseudo-header
    sum (a packet for TSO), which is moved to the new length; otherwise the
    field is left as it is (an incoming packet whose checksum the kernel
    vouched for).  The payload is copied once, into the new packet: this is
    a measuring tool's cost, charged to the stack it measures.
    """
    version, ip, tcp, body = layout
    header = bytearray(data[:body])
    length = body + end - start
    if version == 4:
        header[ip + 2 : ip + 4] = (length - ip).to_bytes(2, "big")
        header[ip + 10 : ip + 12] = b"\0\0"
        header[ip + 10 : ip + 12] = internet_checksum(header[ip:tcp]).to_bytes(2, "big")
    else:
        header[ip + 4 : ip + 6] = (length - tcp).to_bytes(2, "big")
    (seq,) = _TCP_SEQ.unpack_from(header, tcp + 4)
    _TCP_SEQ.pack_into(header, tcp + 4, (seq + start) & 0xFFFF_FFFF)
    flags = header[tcp + 13]
    if body + end < len(data):
        flags &= ~(_FIN | _PSH)
    if start:
        flags &= ~_CWR
    header[tcp + 13] = flags
    if partial:
        # The pseudo-header sum covers the TCP length: take the old one out
        # (adding its ones' complement) and put the new one in.
        field = int.from_bytes(header[tcp + 16 : tcp + 18], "big")
        total = field + (0xFFFF - (len(data) - tcp)) + (length - tcp)
        header[tcp + 16 : tcp + 18] = (total % 0xFFFF or 0xFFFF).to_bytes(2, "big")
    return b"".join((header, memoryview(data)[body + start : body + end]))


class FaultyLink(Link):
    """``inner`` with :class:`~netshim.ip.links.Faults` applied to both directions.

    Loss and duplication are as on a cable.  Reordering swaps a packet with
    the next one in the same direction (a held packet leaves right after the
    next packet, or with the next call if the link goes quiet on the send
    side); ``latency`` is not supported here (use a :class:`Cable`).

    ``wire_mtu``: draw the loss once per wire segment of that MTU rather than
    once per packet.  A TCP packet longer than one wire segment (a TSO packet
    sent, a coalesced one received) is cut where the wire would cut it (at
    its GSO size going out; at the MTU less its headers coming in) and loses
    each piece with ``faults.loss``; the runs of pieces that survive go on as
    packets of their own (still TSO packets when longer than one piece).
    Duplication and reordering then apply to those packets.  Other packets
    are one draw each, as without ``wire_mtu``.

    A TUN or TAP device's ways of moving packets without a trip through a
    task (``write_nowait``, ``wait_readable``, ``watch_readable``) pass
    through with the same faults, so that a driver moves packets over a
    lossy device as it does over the device alone and the loss is the only
    difference a measurement sees.
    """

    def __init__(self, inner: Link, faults: Faults, *, wire_mtu: int | None = None) -> None:
        if faults.latency:
            raise ValueError("FaultyLink does not delay packets; use a Cable for latency")
        if wire_mtu is not None and not 1280 <= wire_mtu <= 65535:
            raise ValueError(f"wire_mtu must be in 1280..65535, got {wire_mtu}")
        self.inner = inner
        self.medium = inner.medium
        self.tso = inner.tso
        self.wire_mtu = wire_mtu
        self.outbound = FaultInjector(faults, 1)
        self.inbound = FaultInjector(faults, 2)
        self._held_out: tuple[bytes, GsoInfo | None] | None = None
        self._pending_in: collections.deque[IncomingPacket] = collections.deque()
        self._held_in: IncomingPacket | None = None
        # What write_nowait cut from a packet and the device did not take,
        # and that packet: the driver hands it over again (to send_many or
        # write_nowait), and its pieces go then, without a second loss draw.
        self._unwritten: list[tuple[bytes, GsoInfo | None]] = []
        self._unwritten_of: bytes | None = None
        self._watching: Callable[[], object] | None = None

    def _survivors(self, injector: FaultInjector, segments: int) -> list[tuple[int, int]]:
        """Runs ``(first, end)`` of the segment indices that the loss draws spare."""
        runs: list[tuple[int, int]] = []
        first = 0
        for index in range(segments):
            if injector.loses():
                if index > first:
                    runs.append((first, index))
                first = index + 1
        if segments > first:
            runs.append((first, segments))
        return runs

    def _outgoing(self, packet: bytes, gso: GsoInfo | None) -> list[tuple[bytes, GsoInfo | None]]:
        """What is left of ``packet`` after the loss, and the faults' copies and swaps."""
        pieces: list[tuple[bytes, GsoInfo | None]] = [(packet, gso)]
        lose = True
        if self.wire_mtu is not None and gso is not None:
            layout = _tcp_layout(packet, self.medium)
            if layout is not None:
                lose = False
                size = gso.gso_size
                payload = len(packet) - layout[3]
                runs = self._survivors(self.outbound, -(-payload // size))
                if runs != [(0, -(-payload // size))]:
                    pieces = []
                    for first, end in runs:
                        start, stop = first * size, min(end * size, payload)
                        cut = _cut(packet, layout, start, stop, partial=True)
                        if stop - start > size:
                            pieces.append((cut, gso))
                        else:
                            pieces.append((_completed(cut, layout), None))
        out: list[tuple[bytes, GsoInfo | None]] = []
        for piece in pieces:
            for at in self.outbound.schedule(0.0, lose=lose):
                if at > 0.0 and self._held_out is None:
                    self._held_out = (bytes(piece[0]), piece[1])
                    continue
                out.append(piece)
                if self._held_out is not None:
                    out.append(self._held_out)
                    self._held_out = None
        return out

    def _incoming(self, incoming: IncomingPacket) -> None:
        """Queue what is left of ``incoming`` after the faults."""
        pieces = [incoming]
        lose = True
        if self.wire_mtu is not None and incoming.checksum_verified:
            data = incoming.data
            layout = _tcp_layout(data, self.medium)
            if layout is not None:
                lose = False
                ip, body = layout[1], layout[3]
                size = self.wire_mtu - (body - ip)
                payload = len(data) - body
                count = max(1, -(-payload // size))
                runs = self._survivors(self.inbound, count)
                if runs != [(0, count)]:
                    pieces = [
                        IncomingPacket(
                            _cut(data, layout, a * size, min(b * size, payload), False), True
                        )
                        for a, b in runs
                    ]
        for piece in pieces:
            for at in self.inbound.schedule(0.0, lose=lose):
                if at > 0.0 and self._held_in is None:
                    self._held_in = piece
                    continue
                self._pending_in.append(piece)
                if self._held_in is not None:
                    self._pending_in.append(self._held_in)
                    self._held_in = None

    async def send(self, packet: bytes, gso: GsoInfo | None = None) -> None:
        for piece, piece_gso in self._faulted(packet, gso):
            await self.inner.send(piece, piece_gso)

    def write_nowait(self, packets: Sequence[tuple[bytes, GsoInfo | None]]) -> int:
        """As the inner link's ``write_nowait``, with the faults; 0 if it has none.

        How many of ``packets`` went (what is left of them after the loss).
        A packet whose pieces the device took only in part is not counted:
        the caller hands it over again, and only its remaining pieces go.
        """
        inner_nowait = getattr(self.inner, "write_nowait", None)
        if inner_nowait is None:
            return 0
        taken = 0
        for packet, gso in packets:
            pieces = self._faulted(packet, gso)
            written = inner_nowait(pieces)
            if written < len(pieces):
                self._unwritten, self._unwritten_of = pieces[written:], packet
                break
            taken += 1
        return taken

    async def wait_readable(self) -> None:
        """Wait until :meth:`receive_nowait` may have a packet (one may have been lost since)."""
        if self._pending_in:
            return
        inner_wait = getattr(self.inner, "wait_readable", None)
        if inner_wait is not None:
            await inner_wait()
        else:
            self._incoming(await self.inner.receive())

    def watch_readable(self, callback: Callable[[], object]) -> bool:
        """As the inner link's ``watch_readable``; False if it has none.

        ``callback`` is also called again, on the loop's next iteration,
        while packets cut from what it read still wait here: the device's
        readiness no longer reports them.
        """
        inner_watch = getattr(self.inner, "watch_readable", None)
        loop = asyncio._get_running_loop()
        if inner_watch is None or loop is None:
            return False

        def readable() -> None:
            if self._watching is not readable:
                return
            callback()
            if self._pending_in and self._watching is readable:
                loop.call_soon(readable)

        self._watching = readable
        if not inner_watch(readable):
            self._watching = None
            return False
        if self._pending_in:
            loop.call_soon(readable)
        return True

    def unwatch_readable(self) -> None:
        """Undo :meth:`watch_readable`; idempotent."""
        self._watching = None
        inner_unwatch = getattr(self.inner, "unwatch_readable", None)
        if inner_unwatch is not None:
            inner_unwatch()

    async def receive(self) -> IncomingPacket:
        while not self._pending_in:
            self._incoming(await self.inner.receive())
        return self._pending_in.popleft()

    def receive_nowait(self) -> IncomingPacket | None:
        """The next packet if one is waiting (after the faults), else None.

        Passes the inner link's bursts through, so that a driver takes a burst
        in one pass with faults as without them; an inner link that cannot
        say "nothing more now" gives only what is already pending here.
        """
        inner_nowait = getattr(self.inner, "receive_nowait", None)
        while not self._pending_in:
            incoming = inner_nowait() if inner_nowait is not None else None
            if incoming is None:
                return None
            self._incoming(incoming)
        return self._pending_in.popleft()

    def _faulted(self, packet: bytes, gso: GsoInfo | None) -> list[tuple[bytes, GsoInfo | None]]:
        """``_outgoing``, or the pieces left over from an earlier write of this same packet."""
        if self._unwritten_of is not None and packet is self._unwritten_of:
            pieces = self._unwritten
            self._unwritten, self._unwritten_of = [], None
            return pieces
        return self._outgoing(packet, gso)

    async def send_many(self, packets: Iterable[tuple[bytes, GsoInfo | None]]) -> None:
        """Send each ``(packet, gso)`` with the faults, in one call of the inner link's own."""
        out: list[tuple[bytes, GsoInfo | None]] = []
        for packet, gso in packets:
            out += self._faulted(packet, gso)
        inner_many = getattr(self.inner, "send_many", None)
        if inner_many is not None:
            await inner_many(out)
        else:
            for packet, gso in out:
                await self.inner.send(packet, gso)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _completed(packet: bytes, layout: _Layout) -> bytes:
    """``packet`` (its TCP checksum field the pseudo-header sum) with the full checksum."""
    tcp = layout[2]
    pseudo = int.from_bytes(packet[tcp + 16 : tcp + 18], "big")
    zeroed = packet[tcp : tcp + 16] + b"\0\0" + packet[tcp + 18 :]
    checksum = internet_checksum(zeroed, pseudo)
    return packet[: tcp + 16] + checksum.to_bytes(2, "big") + packet[tcp + 18 :]
