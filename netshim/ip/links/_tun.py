"""TUN and TAP devices (Linux ``/dev/net/tun``) as links, with offloads, in pure Python.

A TUN device carries IP packets, a TAP device Ethernet frames, between the
kernel and the process holding its file descriptor.  :meth:`TunLink.open`
attaches to (or creates) a device by name with the ``TUNSETIFF`` ioctl;
:meth:`TunLink.from_fd` adopts a descriptor another process opened and passed
over a Unix socket (``SCM_RIGHTS``), which is how a device inside another
network namespace reaches us: ``TUNSETIFF`` acts in the namespace of the
process that opened ``/dev/net/tun``.

Throughput comes from offloads (linux/if_tun.h, linux/virtio_net.h).  With
``IFF_VNET_HDR`` every packet travels behind a 10-byte ``virtio_net_hdr``:

* ``TUNSETOFFLOAD`` with ``TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`` lets the
  kernel hand us TCP packets of up to 64 KiB (its segmentation, or coalesced
  receive) whose checksums it has not filled in: the header says NEEDS_CSUM
  (the checksum field holds only the pseudo-header sum) or DATA_VALID (already
  checked).  Such packets are passed up with ``checksum_verified=True``.
* Sending, a large TCP packet goes out with ``gso_type``, ``gso_size``,
  ``hdr_len`` and NEEDS_CSUM with ``csum_start`` / ``csum_offset``, and the
  kernel cuts it into MTU-sized segments and completes their checksums.

So one ``read`` or ``write`` moves up to 64 KiB, where plain packets would
take 45 system calls and 45 Python-level checksums.

The descriptor is non-blocking.  Under asyncio (and uvloop) a driver waiting
for packets keeps it registered with the loop's selector between waits
(``loop.add_reader``) instead of registering and unregistering it on every
wait as ``anyio.wait_readable`` does: two ``epoll_ctl`` calls and their Python
around each packet burst.  A driver can also have the loop call it directly
whenever the device is readable (:meth:`TunLink.watch_readable`), so that a
burst is handled in the loop's readiness callback without waking a task.
Under trio it is waited on with ``anyio.wait_readable``.
The header is in the host's byte order, which is what the kernel uses for a
legacy ``virtio_net_hdr`` unless ``TUNSETVNETLE``/``BE`` say otherwise.
"""

from __future__ import annotations

import asyncio
import errno
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import anyio
import anyio.lowlevel

from netshim.ip.iface import GsoInfo, Medium

from ._base import IncomingPacket, Link

__all__ = ["TapLink", "TunLink"]

# ioctl numbers from linux/if_tun.h: _IOW('T', 202, int) and friends.
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNGETIFF = 0x800454D2
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
VIRTIO_NET_HDR_F_NEEDS_CSUM = 0x01
VIRTIO_NET_HDR_F_DATA_VALID = 0x02
VIRTIO_NET_HDR_GSO_NONE = 0

# struct ifreq: a 16-byte name, then a union of which TUNSETIFF uses the
# first short (flags); 40 bytes in all on 64-bit Linux.
_IFREQ = struct.Struct("16sH22x")
# struct virtio_net_hdr: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset.
_VNET_HDR = struct.Struct("=BBHHHH")
VNET_HDR_LEN = _VNET_HDR.size
_NO_VNET_HDR = _VNET_HDR.pack(0, VIRTIO_NET_HDR_GSO_NONE, 0, 0, 0, 0)
# A TSO packet is at most 64 KiB of IP plus the link and vnet headers.
_READ_SIZE = 65536 + 14 + VNET_HDR_LEN + 256

_LinkT = TypeVar("_LinkT", bound="_TunDeviceLink")


def _ioctl(fd: int, request: int, argument: bytes) -> bytes:
    # fcntl is imported here, not at the top: Pyodide has no fcntl module, and
    # netshim.ip.links (its cables and bridges) must import there.
    import fcntl

    return fcntl.ioctl(fd, request, argument)


def _ioctl_flags(fd: int, request: int, flags: int) -> None:
    import fcntl

    fcntl.ioctl(fd, request, flags)


class _TunDeviceLink(Link):
    """What TUN and TAP links share: the descriptor, the vnet header, the offloads."""

    _MODE = IFF_TUN

    def __init__(self, fd: int, name: str, *, vnet_hdr: bool, offload: bool) -> None:
        self.fd = fd
        self.name = name
        self.vnet_hdr = vnet_hdr
        # Sending GSO packets needs only the vnet header; TUNSETOFFLOAD is
        # about what the kernel may send us.
        self.tso = vnet_hdr
        self.offload = False
        self._closed = False
        # The asyncio loop the descriptor is registered with for reading, if
        # any, the future a wait_readable() is waiting on, and a packet the
        # loop's readiness callback took off the device (handed out first).
        self._reader_loop: asyncio.AbstractEventLoop | None = None
        self._reader_waiter: asyncio.Future[None] | None = None
        self._pending: IncomingPacket | None = None
        #: Packets the kernel refused (device down: EIO), dropped as a wire would.
        self.dropped = 0
        os.set_blocking(fd, False)
        if vnet_hdr and offload:
            try:
                _ioctl_flags(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
                self.offload = True
            except OSError:
                self.offload = False

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name} fd={self.fd} vnet_hdr={self.vnet_hdr} "
            f"offload={self.offload}{' closed' if self._closed else ''}>"
        )

    @classmethod
    def open(
        cls: type[_LinkT], name: str = "", *, vnet_hdr: bool = True, offload: bool = True
    ) -> _LinkT:
        """Attach to the device ``name`` of this network namespace, creating it if absent.

        An empty name (or one with ``%d``) lets the kernel choose; :attr:`name`
        says which.  Creating a device needs ``CAP_NET_ADMIN``; attaching to a
        persistent one made for our user does not.  Raises ``OSError`` as the
        ioctl does (``EPERM``, ``EBUSY`` when another process holds it,
        ``EINVAL`` when the device exists with other flags).
        """
        if len(name.encode()) > 15:
            raise ValueError(f"interface names have at most 15 bytes: {name!r}")
        flags = cls._MODE | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        try:
            result = _ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), flags))
        except BaseException:
            os.close(fd)
            raise
        actual = _IFREQ.unpack(result)[0].rstrip(b"\0").decode()
        return cls(fd, actual, vnet_hdr=vnet_hdr, offload=offload)

    @classmethod
    def from_fd(cls: type[_LinkT], fd: int, *, offload: bool = True) -> _LinkT:
        """Adopt an attached ``/dev/net/tun`` descriptor (the link owns and closes it).

        ``TUNGETIFF`` tells its name and flags; raises ``ValueError`` when it
        is a TAP given to :class:`TunLink` or the other way round, or was
        attached with packet information (``IFF_NO_PI`` unset).
        """
        result = _ioctl(fd, TUNGETIFF, bytes(_IFREQ.size))
        raw_name, flags = _IFREQ.unpack(result)
        if flags & (IFF_TUN | IFF_TAP) != cls._MODE:
            raise ValueError(f"descriptor {fd} is not a {cls.__name__[:3].upper()} device")
        if not flags & IFF_NO_PI:
            raise ValueError(f"descriptor {fd} carries packet information (IFF_NO_PI unset)")
        name = raw_name.rstrip(b"\0").decode()
        return cls(fd, name, vnet_hdr=bool(flags & IFF_VNET_HDR), offload=offload)

    async def send(self, packet: bytes, gso: GsoInfo | None = None) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if gso is not None and not self.vnet_hdr:
            raise ValueError("GSO needs IFF_VNET_HDR")
        await anyio.lowlevel.checkpoint()
        await self._write(packet, gso)

    async def send_many(self, packets: Iterable[tuple[bytes, GsoInfo | None]]) -> None:
        """Send each ``(packet, gso)`` in turn, yielding to the loop once, not per packet.

        A driver answering a burst hands over the whole answer: a yield per
        packet cost as much as the write itself.
        """
        await anyio.lowlevel.checkpoint()
        for packet, gso in packets:
            await self._write(packet, gso)

    def write_nowait(self, packets: Sequence[tuple[bytes, GsoInfo | None]]) -> int:
        """Write ``packets`` in order while the device takes them; how many it took.

        Stops at the first packet the device would have to wait for (the
        caller sends it and the rest later, with :meth:`send_many`).  Raises
        as :meth:`send` does.  A driver writes a socket call's packets in that
        call this way, without a trip through the event loop.
        """
        written = 0
        for packet, gso in packets:
            if not self._write_once(self._buffers(packet, gso)):
                break
            written += 1
        return written

    def _buffers(self, packet: bytes, gso: GsoInfo | None) -> list[bytes]:
        if self._closed:
            raise anyio.ClosedResourceError
        if not self.vnet_hdr:
            if gso is not None:
                raise ValueError("GSO needs IFF_VNET_HDR")
            return [packet]
        if gso is None:
            return [_NO_VNET_HDR, packet]
        header = _VNET_HDR.pack(
            VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso.gso_type,
            gso.header_len,
            gso.gso_size,
            gso.csum_start,
            gso.csum_offset,
        )
        return [header, packet]

    def _write_once(self, buffers: list[bytes]) -> bool:
        """One ``writev``: False if the device would block."""
        try:
            os.writev(self.fd, buffers)
        except BlockingIOError:
            return False
        except OSError as exc:
            if self._closed:
                raise anyio.ClosedResourceError from None
            if exc.errno == errno.EIO:
                self.dropped += 1
                return True
            raise anyio.BrokenResourceError(str(exc)) from exc
        return True

    async def _write(self, packet: bytes, gso: GsoInfo | None) -> None:
        buffers = self._buffers(packet, gso)
        while not self._write_once(buffers):
            await anyio.wait_writable(self.fd)
            if self._closed:
                raise anyio.ClosedResourceError

    async def receive(self) -> IncomingPacket:
        await anyio.lowlevel.checkpoint()
        while True:
            packet = self.receive_nowait()
            if packet is not None:
                return packet
            await self.wait_readable()

    async def wait_readable(self) -> None:
        """Wait until a packet may be waiting (take it with :meth:`receive_nowait`).

        One task at a time may wait (``anyio.BusyResourceError`` otherwise).
        Under asyncio the descriptor stays registered for reading after the
        wait, so that the next wait costs no ``epoll_ctl``; it is unregistered
        when a packet arrives with nobody waiting (a selector would otherwise
        report it on every loop iteration until it is read) and on close.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        if self._pending is not None:
            # Taken off the device while nobody waited; the task has yielded
            # since, so this returns without another trip through the loop.
            return
        loop = asyncio._get_running_loop()
        if loop is None:
            await anyio.wait_readable(self.fd)
            return
        if self._reader_waiter is not None:
            raise anyio.BusyResourceError("waiting")
        if self._reader_loop is not loop:
            self._drop_reader()
            loop.add_reader(self.fd, self._became_readable)
            self._reader_loop = loop
        waiter = self._reader_waiter = loop.create_future()
        try:
            await waiter
        finally:
            self._reader_waiter = None

    def _became_readable(self) -> None:
        # The selector's report may be stale: a task woken in the same loop
        # iteration can have emptied the device since.  Reading here tells,
        # and the read is the one the woken driver would make first.
        waiter = self._reader_waiter
        if self._pending is None:
            try:
                self._pending = self._read_packet()
            except Exception:
                # The driver's own read raises it again.
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
                return
            if self._pending is None:
                return
        if waiter is None:
            # Nobody waits: stop the selector reporting it until the next wait.
            self._drop_reader()
        elif not waiter.done():
            waiter.set_result(None)

    def watch_readable(self, callback: Callable[[], object]) -> bool:
        """Under asyncio, call ``callback`` from the loop whenever a packet may be waiting.

        The descriptor stays registered with the running loop's selector
        until :meth:`unwatch_readable` (or :meth:`aclose`); ``callback``
        takes the packets with :meth:`receive_nowait` (a report may be
        stale: the read then finds nothing), and as long as it leaves any
        on the device the loop calls it again on its next iteration.  For a
        driver that handles a burst in the loop's readiness callback, with no
        task to wake.  False, and nothing registered, without a running
        asyncio loop (trio: use :meth:`wait_readable`) or while a task
        waits in :meth:`wait_readable`.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        loop = asyncio._get_running_loop()
        if loop is None or self._reader_waiter is not None:
            return False
        self._drop_reader()
        loop.add_reader(self.fd, callback)
        self._reader_loop = loop
        if self._pending is not None:
            # A packet an earlier wait took off the device: no readiness
            # report will come for it.
            loop.call_soon(callback)
        return True

    def unwatch_readable(self) -> None:
        """Undo :meth:`watch_readable`; idempotent."""
        self._drop_reader()

    def _drop_reader(self) -> None:
        loop, self._reader_loop = self._reader_loop, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self.fd)

    def receive_nowait(self) -> IncomingPacket | None:
        """The next packet if one is waiting, else None (a driver drains a burst this way)."""
        packet = self._pending
        if packet is not None:
            if self._closed:
                raise anyio.ClosedResourceError
            self._pending = None
            return packet
        return self._read_packet()

    def _read_packet(self) -> IncomingPacket | None:
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                data = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                return None
            except OSError as exc:
                if self._closed:
                    raise anyio.ClosedResourceError from None
                raise anyio.BrokenResourceError(str(exc)) from exc
            if not self.vnet_hdr:
                return IncomingPacket(data)
            if len(data) < VNET_HDR_LEN:
                continue
            flags = data[0]
            verified = bool(flags & (VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID))
            return IncomingPacket(data[VNET_HDR_LEN:], verified)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Unregistered before the descriptor is closed: its number may be
        # reused at once, and the loop must not watch the new one for us.
        self._drop_reader()
        waiter = self._reader_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(anyio.ClosedResourceError())
        anyio.notify_closing(self.fd)
        os.close(self.fd)
        await anyio.lowlevel.checkpoint()


class TunLink(_TunDeviceLink):
    """A TUN device: bare IPv4 and IPv6 packets (:attr:`~netshim.ip.iface.Medium.IP`)."""

    _MODE = IFF_TUN
    medium = Medium.IP


class TapLink(_TunDeviceLink):
    """A TAP device: Ethernet frames (:attr:`~netshim.ip.iface.Medium.ETHERNET`)."""

    _MODE = IFF_TAP
    medium = Medium.ETHERNET
