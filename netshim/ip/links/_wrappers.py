"""Links that wrap a link: pcap capture and fault injection, composable in any order.

As smoltcp's ``phy/pcap_writer.rs`` and ``phy/fault_injector.rs`` wrap any
device, :class:`PcapLink` records every frame or packet a link sends and
receives (Ethernet frames for an Ethernet link, raw IP for a TUN), and
:class:`FaultyLink` loses, duplicates and reorders packets on a link that has
no faults of its own (a TUN or TAP device), in both directions.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Iterable
from typing import IO

from netshim.ip.iface import GsoInfo, Medium
from netshim.pcap import LinkType, PcapWriter

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

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            if self._owned:
                self.writer.close()
            else:
                self.writer.flush()


class FaultyLink(Link):
    """``inner`` with :class:`~netshim.ip.links.Faults` applied to both directions.

    Loss and duplication are as on a cable.  Reordering swaps a packet with
    the next one in the same direction (a held packet leaves right after the
    next packet, or with the next call if the link goes quiet on the send
    side); ``latency`` is not supported here (use a :class:`Cable`).
    """

    def __init__(self, inner: Link, faults: Faults) -> None:
        if faults.latency:
            raise ValueError("FaultyLink does not delay packets; use a Cable for latency")
        self.inner = inner
        self.medium = inner.medium
        self.tso = inner.tso
        self.outbound = FaultInjector(faults, 1)
        self.inbound = FaultInjector(faults, 2)
        self._held_out: tuple[bytes, GsoInfo | None] | None = None
        self._pending_in: collections.deque[IncomingPacket] = collections.deque()
        self._held_in: IncomingPacket | None = None

    async def send(self, packet: bytes, gso: GsoInfo | None = None) -> None:
        times = self.outbound.schedule(0.0)
        for at in times:
            if at > 0.0 and self._held_out is None:
                self._held_out = (bytes(packet), gso)
                continue
            await self.inner.send(packet, gso)
            if self._held_out is not None:
                held, self._held_out = self._held_out, None
                await self.inner.send(*held)

    async def receive(self) -> IncomingPacket:
        while not self._pending_in:
            incoming = await self.inner.receive()
            for at in self.inbound.schedule(0.0):
                if at > 0.0 and self._held_in is None:
                    self._held_in = incoming
                    continue
                self._pending_in.append(incoming)
                if self._held_in is not None:
                    self._pending_in.append(self._held_in)
                    self._held_in = None
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
            for at in self.inbound.schedule(0.0):
                if at > 0.0 and self._held_in is None:
                    self._held_in = incoming
                    continue
                self._pending_in.append(incoming)
                if self._held_in is not None:
                    self._pending_in.append(self._held_in)
                    self._held_in = None
        return self._pending_in.popleft()

    async def send_many(self, packets: Iterable[tuple[bytes, GsoInfo | None]]) -> None:
        """Send each ``(packet, gso)`` with the faults, in one call of the inner link's own."""
        out: list[tuple[bytes, GsoInfo | None]] = []
        for packet, gso in packets:
            for at in self.outbound.schedule(0.0):
                if at > 0.0 and self._held_out is None:
                    self._held_out = (bytes(packet), gso)
                    continue
                out.append((packet, gso))
                if self._held_out is not None:
                    out.append(self._held_out)
                    self._held_out = None
        inner_many = getattr(self.inner, "send_many", None)
        if inner_many is not None:
            await inner_many(out)
        else:
            for packet, gso in out:
                await self.inner.send(packet, gso)

    async def aclose(self) -> None:
        await self.inner.aclose()
