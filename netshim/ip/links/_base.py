"""The link contract: what an interface's frames or packets travel over.

A :class:`Link` moves whole frames (Ethernet medium: TAP devices, cables,
bridge ports) or whole IP packets (IP medium: TUN devices) one at a time,
asynchronously under anyio.  It is the only part of the ip engine that does
I/O, and it keeps no protocol state: whatever arrives is handed up as it came.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from types import TracebackType

from netshim.ip.iface import GsoInfo, Medium

__all__ = ["DEFAULT_MAX_QUEUED_PACKETS", "IncomingPacket", "Link"]

# Packets an in-memory link end holds before it drops new ones, as a NIC's
# receive ring does when the host does not keep up (Linux's default ring of
# 256-1024 descriptors, txqueuelen 1000).
DEFAULT_MAX_QUEUED_PACKETS = 1024


@dataclass(frozen=True, slots=True)
class IncomingPacket:
    """One frame or packet from a link.

    ``checksum_verified`` is True when the link vouches for the TCP and UDP
    checksums (the kernel validated them, or left them partial because the
    packet never crossed a wire): pass it to
    :meth:`netshim.ip.iface.Interface.receive`.
    """

    data: bytes
    checksum_verified: bool = False


class Link(abc.ABC):
    """A source and sink of frames or packets.

    :attr:`medium` says which; :attr:`tso` whether :meth:`send` accepts large
    TCP packets with :class:`~netshim.ip.iface.GsoInfo` and segments them
    (give it to :class:`~netshim.ip.iface.Interface` as ``tso``).
    """

    medium: Medium
    tso: bool = False

    @abc.abstractmethod
    async def send(self, packet: bytes, gso: GsoInfo | None = None) -> None:
        """Put one frame or packet on the link.

        Links are lossy, like wires: a packet the link cannot take (a full
        queue, a cable whose far end is closed) is dropped, not an error.
        Raises ``anyio.ClosedResourceError`` after :meth:`aclose` and
        ``anyio.BrokenResourceError`` when the device went away.  Cancelled,
        the packet is either sent whole or not at all.
        """

    @abc.abstractmethod
    async def receive(self) -> IncomingPacket:
        """Wait for the next frame or packet.

        Raises ``anyio.ClosedResourceError`` after :meth:`aclose` (also in a
        task waiting at the time), ``anyio.EndOfStream`` when the far end of an
        in-memory link closed and nothing is left, ``anyio.BrokenResourceError``
        when a device went away.
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the link; idempotent.  Waiting receivers get ``ClosedResourceError``."""

    async def __aenter__(self) -> Link:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
