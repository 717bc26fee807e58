"""Recording a virtual network's traffic as a pcap file that Wireshark and tcpdump read.

Two layers, as smoltcp's ``phy/pcap_writer.rs`` sits apart from the stack:

* :class:`PcapWriter` writes the classic libpcap format (the format of
  ``tcpdump -w``: a global header, then a record header and the frame bytes
  per packet, microsecond timestamps).  :class:`PcapReader` reads it back.
* :class:`PcapCapture` is a :class:`~netshim._traffic.TrafficObserver`.  The
  virtual network reports connections, data, FINs, resets and datagrams, not
  packets, so the capture makes up packets that carry them: Ethernet frames
  between locally administered MAC addresses derived from the IP addresses,
  IPv4 (TTL 64, Don't Fragment set) or IPv6 (hop limit 64), and TCP segments
  whose sequence and acknowledgement numbers and checksums are right, so that
  Wireshark's TCP analysis follows every conversation without complaint.
  Initial sequence numbers come from a seeded generator: the same traffic
  gives the same file.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import ipaddress
import logging
import os
import random
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Concatenate, ParamSpec, cast

from ._addresses import Address, IPAddress, parse_ip
from .protocols.ip import (
    EthernetAddress,
    EthernetRepr,
    EtherType,
    IpProtocol,
    Ipv4Repr,
    Ipv6Repr,
    MaxSegmentSize,
    TcpFlags,
    TcpOption,
    TcpRepr,
    UdpRepr,
)

__all__ = [
    "DEFAULT_SNAPLEN",
    "LinkType",
    "PcapCapture",
    "PcapReader",
    "PcapRecord",
    "PcapWriter",
]

_logger = logging.getLogger(__name__)

# The snapshot length current tcpdump and Wireshark use by default, and the
# largest frame Wireshark reads without complaint: nothing is cut short.
DEFAULT_SNAPLEN = 262144

_MAGIC = 0xA1B2C3D4
_MAGIC_NANOSECONDS = 0xA1B23C4D
_VERSION = (2, 4)
# The classic format has no byte order of its own: the writer uses its host's
# and the magic tells readers which.  Little-endian is fixed here so the same
# traffic gives the same bytes on every host.
_GLOBAL_HEADER = struct.Struct("<IHHiIII")
_RECORD_HEADER = struct.Struct("<IIII")
_MAX_SECONDS = 0xFFFF_FFFF


class LinkType(enum.IntEnum):
    """tcpdump.org LINKTYPE values: what the bytes of each record start with."""

    ETHERNET = 1
    RAW = 101  # an IPv4 or IPv6 header, no link layer


def _open(file: str | os.PathLike[str] | IO[bytes], mode: str) -> tuple[IO[bytes], bool]:
    """The file object for ``file`` and whether we opened it (and so must close it)."""
    if isinstance(file, str | os.PathLike):
        # Closed by the owner's close(), not here.
        return cast(IO[bytes], open(file, mode)), True
    return file, False


class PcapWriter:
    """Writes frames to a classic libpcap file.

    ``file`` is a path (opened, truncated, and closed by :meth:`close`) or a
    binary file object (written to and flushed, never closed: it is the
    caller's).  The global header is written at once.  Frames longer than
    ``snaplen`` are cut to it, with their full length in the record.
    """

    def __init__(
        self,
        file: str | os.PathLike[str] | IO[bytes],
        *,
        snaplen: int = DEFAULT_SNAPLEN,
        linktype: int = LinkType.ETHERNET,
    ) -> None:
        if not 1 <= snaplen <= 0xFFFF_FFFF:
            raise ValueError(f"snaplen must be in 1..{0xFFFF_FFFF}, got {snaplen}")
        if not 0 <= linktype <= 0xFFFF_FFFF:
            raise ValueError(f"linktype must be in 0..{0xFFFF_FFFF}, got {linktype}")
        self._snaplen = snaplen
        self._file, self._owned = _open(file, "wb")
        self._closed = False
        try:
            self._file.write(_GLOBAL_HEADER.pack(_MAGIC, *_VERSION, 0, 0, snaplen, linktype))
        except BaseException:
            self.close()
            raise

    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, frame: bytes, timestamp: float) -> None:
        """Append ``frame``, captured ``timestamp`` seconds after the Unix epoch.

        The timestamp is rounded to the microsecond.  Raises ``ValueError``
        when the writer is closed or the timestamp is negative or beyond what
        the format's 32-bit seconds hold (the year 2106).
        """
        if self._closed:
            raise ValueError("write to a closed PcapWriter")
        seconds, microseconds = divmod(round(timestamp * 1_000_000), 1_000_000)
        if not 0 <= seconds <= _MAX_SECONDS:
            raise ValueError(f"timestamp {timestamp} is outside what pcap can record")
        data = frame[: self._snaplen]
        self._file.write(_RECORD_HEADER.pack(seconds, microseconds, len(data), len(frame)))
        self._file.write(data)

    def flush(self) -> None:
        if not self._closed:
            self._file.flush()

    def close(self) -> None:
        """Flush, and close the file if it was opened from a path.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._file.flush()
        finally:
            if self._owned:
                self._file.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class PcapRecord:
    """One captured frame: when, the bytes kept, and how long the frame really was."""

    timestamp: float
    data: bytes
    original_length: int


class PcapReader:
    """Reads a classic libpcap file, in either byte order, micro- or nanosecond.

    ``file`` is a path (opened here, closed by :meth:`close`) or a binary file
    object (left open).  Iterating yields :class:`PcapRecord` values.  Raises
    ``ValueError`` for a file that is not pcap or ends inside a record.
    """

    def __init__(self, file: str | os.PathLike[str] | IO[bytes]) -> None:
        self._file, self._owned = _open(file, "rb")
        try:
            header = self._file.read(_GLOBAL_HEADER.size)
            if len(header) < _GLOBAL_HEADER.size:
                raise ValueError(f"not a pcap file: {len(header)} bytes, no global header")
            for order in "<>":
                (magic,) = struct.unpack(order + "I", header[:4])
                if magic in (_MAGIC, _MAGIC_NANOSECONDS):
                    break
            else:
                raise ValueError(f"not a pcap file: magic {header[:4].hex()}")
        except BaseException:
            self.close()
            raise
        self._record = struct.Struct(order + "IIII")
        self._units = 1_000_000_000 if magic == _MAGIC_NANOSECONDS else 1_000_000
        _, major, minor, _, _, self.snaplen, self.linktype = struct.unpack(
            order + "IHHiIII", header
        )
        self.version = (major, minor)

    def __iter__(self) -> Iterator[PcapRecord]:
        while True:
            header = self._file.read(self._record.size)
            if not header:
                return
            if len(header) < self._record.size:
                raise ValueError("pcap file ends inside a record header")
            seconds, fraction, kept, original = self._record.unpack(header)
            data = self._file.read(kept)
            if len(data) < kept:
                raise ValueError(f"pcap file ends inside a record: {len(data)} of {kept} bytes")
            yield PcapRecord(seconds + fraction / self._units, data, original)

    def close(self) -> None:
        if self._owned:
            self._file.close()

    def __enter__(self) -> PcapReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# Largest segment payload, also advertised as the MSS in SYNs.  For IPv4 it is
# what Linux sends on loopback (MTU 65536): a 65535-byte packet, the most Total
# Length allows, less 40 bytes of IPv4 and TCP headers and the 12 bytes of
# timestamp option Linux puts on every segment.  IPv6 gets the same arithmetic
# with its 40-byte header (Linux, which starts from the 65536-byte MTU there,
# sends one byte more).  No timestamps are sent here, so every frame fits.
_LOOPBACK_MSS = {4: 65483, 6: 65463}
# Receive window advertised on every segment; no window scaling is offered, so
# this is the largest a window can be.  It exceeds the MSS, so a full-sized
# segment never fills the window.
_WINDOW = 0xFFFF
_TTL = 64
_SEQ_MODULUS = 1 << 32


def _mac_for(address: IPAddress) -> EthernetAddress:
    """A locally administered unicast MAC address standing for ``address``.

    An IPv4 address fits whole (02:00:0a:00:00:01 for 10.0.0.1), which keeps
    captures readable.  An IPv6 address does not, so it is hashed, under
    first octet 06 (also locally administered, unicast) so that it can never
    collide with an IPv4 one.
    """
    if isinstance(address, ipaddress.IPv4Address):
        return EthernetAddress(b"\x02\x00" + address.packed)
    return EthernetAddress(b"\x06" + hashlib.sha256(address.packed).digest()[:5])


@dataclass(slots=True)
class _Endpoint:
    """One side of a TCP connection as the capture tracks it."""

    ip: IPAddress
    port: int
    mac: EthernetAddress
    next_seq: int
    fin_sent: bool = False


@dataclass(slots=True)
class _Connection:
    client: _Endpoint
    server: _Endpoint

    def sides(self, from_client: bool) -> tuple[_Endpoint, _Endpoint]:
        """(sender, receiver)."""
        return (self.client, self.server) if from_client else (self.server, self.client)


_P = ParamSpec("_P")


def _event(
    method: Callable[Concatenate[PcapCapture, _P], None],
) -> Callable[Concatenate[PcapCapture, _P], None]:
    """Make an observer method safe: skipped once closed, failures logged, never raised."""

    @functools.wraps(method)
    def guarded(self: PcapCapture, /, *args: _P.args, **kwargs: _P.kwargs) -> None:
        if self._writer.closed:
            return
        try:
            method(self, *args, **kwargs)
        except Exception:
            _logger.exception("pcap capture could not record %s", method.__name__)

    return guarded


class PcapCapture:
    """A traffic observer that records what it is told as a pcap file of Ethernet frames.

    ``path_or_file`` is passed to :class:`PcapWriter`.  ``clock`` gives each
    frame's time in seconds since the epoch; frames get strictly increasing
    timestamps, a microsecond apart at least, so that their order survives any
    tool that sorts by time.  ``seed`` seeds the initial sequence numbers.

    Like every observer it never raises into the network: a failure (a full
    disk, say) is logged on the ``netshim.pcap`` logger and the event dropped.
    Events for a connection it does not know (opened before it was attached,
    or already reset) are ignored, as are events after :meth:`close`.
    """

    def __init__(
        self,
        path_or_file: str | os.PathLike[str] | IO[bytes],
        *,
        clock: Callable[[], float] = time.time,
        seed: int = 0,
    ) -> None:
        self._writer = PcapWriter(path_or_file, linktype=LinkType.ETHERNET)
        self._clock = clock
        self._random = random.Random(seed)
        self._connections: dict[int, _Connection] = {}
        self._last_microseconds = -1
        self._ipv4_identification = 0

    # -- TrafficObserver -------------------------------------------------------

    @_event
    def tcp_open(self, conn_id: int, client: Address, server: Address) -> None:
        connection = _Connection(_endpoint(client, self._isn()), _endpoint(server, self._isn()))
        _check_same_family(connection.client.ip, connection.server.ip)
        c, s = connection.client, connection.server
        mss = (MaxSegmentSize(_LOOPBACK_MSS[c.ip.version]),)
        self._tcp(c, s, TcpFlags.SYN, options=mss)
        self._tcp(s, c, TcpFlags.SYN | TcpFlags.ACK, options=mss)
        self._tcp(c, s, TcpFlags.ACK)
        self._connections[conn_id] = connection

    @_event
    def tcp_refused(self, client: Address, server: Address) -> None:
        # RFC 9293 section 3.10.7.1: the answer to a SYN on a closed port is
        # RST|ACK with sequence number zero, acknowledging the SYN.
        c, s = _endpoint(client, self._isn()), _endpoint(server, 0)
        _check_same_family(c.ip, s.ip)
        self._tcp(c, s, TcpFlags.SYN, options=(MaxSegmentSize(_LOOPBACK_MSS[c.ip.version]),))
        self._tcp(s, c, TcpFlags.RST | TcpFlags.ACK)

    @_event
    def tcp_data(self, conn_id: int, from_client: bool, data: bytes) -> None:
        connection = self._connections.get(conn_id)
        if connection is None or not data:
            return
        sender, receiver = connection.sides(from_client)
        if sender.fin_sent:
            _logger.debug("pcap capture: data after FIN on connection %d ignored", conn_id)
            return
        mss = _LOOPBACK_MSS[sender.ip.version]
        view = memoryview(data)
        for start in range(0, len(data), mss):
            self._tcp(
                sender,
                receiver,
                TcpFlags.PSH | TcpFlags.ACK,
                payload=bytes(view[start : start + mss]),
            )
            self._tcp(receiver, sender, TcpFlags.ACK)

    @_event
    def tcp_fin(self, conn_id: int, from_client: bool) -> None:
        connection = self._connections.get(conn_id)
        if connection is None:
            return
        sender, receiver = connection.sides(from_client)
        if sender.fin_sent:
            return
        self._tcp(sender, receiver, TcpFlags.FIN | TcpFlags.ACK)
        sender.fin_sent = True
        self._tcp(receiver, sender, TcpFlags.ACK)
        if receiver.fin_sent:
            del self._connections[conn_id]

    @_event
    def tcp_reset(self, conn_id: int, from_client: bool) -> None:
        connection = self._connections.pop(conn_id, None)
        if connection is None:
            return
        sender, receiver = connection.sides(from_client)
        self._tcp(sender, receiver, TcpFlags.RST | TcpFlags.ACK)

    @_event
    def udp_datagram(self, source: Address, destination: Address, data: bytes) -> None:
        src, dst = _endpoint(source, 0), _endpoint(destination, 0)
        _check_same_family(src.ip, dst.ip)
        datagram = UdpRepr(src.port, dst.port, data).emit(src.ip, dst.ip)
        self._write(src, dst, IpProtocol.UDP, datagram)

    def close(self) -> None:
        """Flush and close the file; later events are ignored.  Idempotent."""
        self._connections.clear()
        try:
            self._writer.close()
        except Exception:
            _logger.exception("pcap capture could not close its file")

    def __enter__(self) -> PcapCapture:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- frames ------------------------------------------------------------------

    def _isn(self) -> int:
        return self._random.getrandbits(32)

    def _tcp(
        self,
        sender: _Endpoint,
        receiver: _Endpoint,
        flags: TcpFlags,
        *,
        payload: bytes = b"",
        options: tuple[TcpOption, ...] = (),
    ) -> None:
        """Send one segment from ``sender``, advancing its sequence number."""
        segment = TcpRepr(
            src_port=sender.port,
            dst_port=receiver.port,
            seq=sender.next_seq,
            ack=receiver.next_seq if flags & TcpFlags.ACK else 0,
            flags=flags,
            window=_WINDOW,
            options=options,
            payload=payload,
        )
        sender.next_seq = (sender.next_seq + segment.segment_len()) % _SEQ_MODULUS
        self._write(sender, receiver, IpProtocol.TCP, segment.emit(sender.ip, receiver.ip))

    def _write(self, sender: _Endpoint, receiver: _Endpoint, protocol: int, payload: bytes) -> None:
        packet: Ipv4Repr | Ipv6Repr
        if isinstance(sender.ip, ipaddress.IPv4Address):
            assert isinstance(receiver.ip, ipaddress.IPv4Address)
            packet = Ipv4Repr(
                sender.ip,
                receiver.ip,
                protocol,
                payload,
                ttl=_TTL,
                identification=self._ipv4_identification,
                dont_fragment=True,
            )
            self._ipv4_identification = (self._ipv4_identification + 1) & 0xFFFF
            ethertype = EtherType.IPV4
        else:
            assert isinstance(receiver.ip, ipaddress.IPv6Address)
            packet = Ipv6Repr(sender.ip, receiver.ip, protocol, payload, hop_limit=_TTL)
            ethertype = EtherType.IPV6
        frame = EthernetRepr(receiver.mac, sender.mac, ethertype, packet.emit()).emit()
        self._writer.write(frame, self._timestamp())

    def _timestamp(self) -> float:
        now = round(self._clock() * 1_000_000)
        self._last_microseconds = max(now, self._last_microseconds + 1)
        return self._last_microseconds / 1_000_000


def _endpoint(address: Address, isn: int) -> _Endpoint:
    ip = parse_ip(address[0])
    if ip is None:
        raise ValueError(f"{address[0]!r} is not an IP address")
    return _Endpoint(ip, address[1], _mac_for(ip), isn)


def _check_same_family(a: IPAddress, b: IPAddress) -> None:
    if a.version != b.version:
        raise ValueError(f"{a} and {b} are not of the same IP family")
