"""WireGuardStack: a :class:`~netshim.stack.Stack` whose sockets travel inside a WireGuard tunnel.

Three layers, each replaceable:

* :class:`~netshim.stacks.ip.IpStack`, netshim's own TCP/IP, gives programs
  streams, listeners and datagram sockets and turns them into IP packets;
* :class:`WireGuardLink`, a :class:`~netshim.ip.links.Link` of the IP
  medium, hands those packets to the sans-I/O core
  (:class:`netshim.protocols.wireguard.WireGuardDevice`) and gives back the
  packets it decrypted;
* the encrypted datagrams go over another stack's ``open_udp``: the host
  network by default (:class:`~netshim.stacks.HostStack`), or any other
  stack, such as a gateway's Wisp UDP streams where a browser has no UDP.

The link needs no task of its own.  The IpStack driver always waits in
:meth:`WireGuardLink.receive`, and that wait is where datagrams are taken in
and the protocol's timers (handshake retries, keepalives, rekeys) run; a
packet sent meanwhile that brings a timer nearer moves the wait's deadline.

Configuration is a standard ``wg-quick`` file (:meth:`WireGuardStack.from_config`):
``[Interface]`` PrivateKey, Address, DNS, ListenPort, MTU and ``[Peer]``
PublicKey, PresharedKey, Endpoint, AllowedIPs, PersistentKeepalive; keys
that only ``wg-quick``'s shell uses (Table, PostUp, ...) are ignored.

State reaches user interfaces as :class:`~netshim.protocols.wireguard.WireGuardEvent`
values (handshake completed, failed or expired; endpoint changed; and
:class:`TransferUpdated`, bytes in and out at most once a second per peer):
through ``on_event`` callbacks and through :meth:`WireGuardStack.events`, an
async iterator.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import os
import socket
import struct
import sys
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import SocketAttribute
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._loops import loop_clock
from ..ip.iface import GsoInfo, Medium
from ..ip.links import IncomingPacket, Link
from ..protocols.wireguard import (
    CryptoBackend,
    Endpoint,
    HandshakeCompleted,
    HandshakeFailed,
    Timers,
    WireGuardDevice,
    WireGuardEvent,
    WireGuardPeer,
    key_from_text,
)
from ..stack import Stack, UdpSocket
from .ip import IpStack

__all__ = [
    "DEFAULT_MTU",
    "PeerConfig",
    "TransferUpdated",
    "WireGuardConfig",
    "WireGuardEvents",
    "WireGuardLink",
    "WireGuardStack",
    "coalesce_tcp",
    "parse_config",
    "segment_tcp",
]

#: wg-quick's default: 1500 less the 80 bytes of an IPv6 and UDP header and
#: WireGuard's 32 bytes of framing and tag.
DEFAULT_MTU = 1420
#: Events an :meth:`WireGuardStack.events` reader may fall behind by before
#: newer ones are dropped for it (a UI that stopped reading must not grow memory).
DEFAULT_MAX_QUEUED_EVENTS = 256
#: Decrypted packets held for the IpStack between two of its reads; a burst
#: beyond is dropped, as a NIC ring overflows.
DEFAULT_MAX_QUEUED_PACKETS = 1024
#: How often, at most, bytes in and out are reported per peer.
TRANSFER_REPORT_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class TransferUpdated(WireGuardEvent):
    """Bytes of datagrams received from and sent to the peer so far (``wg show``'s transfer)."""

    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True)
class PeerConfig:
    """One ``[Peer]`` section.

    ``endpoint`` may name a host (resolved on the transport stack at first
    use); ``persistent_keepalive`` is seconds, 0 for off.
    """

    public_key: bytes
    allowed_ips: tuple[str, ...] = ()
    endpoint: tuple[str, int] | None = None
    preshared_key: bytes | None = None
    persistent_keepalive: float = 0.0


@dataclass(frozen=True)
class WireGuardConfig:
    """A parsed ``wg-quick`` file."""

    private_key: bytes
    addresses: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    listen_port: int = 0
    mtu: int = DEFAULT_MTU
    peers: tuple[PeerConfig, ...] = field(default_factory=tuple)


def _parse_endpoint(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"WireGuard Endpoint {text!r} is not host:port")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"WireGuard Endpoint {text!r}: unclosed [")
        host = host[1:-1]
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"WireGuard Endpoint {text!r}: port out of range")
    return host, number


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_config(text: str) -> WireGuardConfig:
    """Parse a ``wg-quick`` configuration; ``ValueError`` names the line at fault."""
    interface: dict[str, list[str]] = {}
    peers: list[dict[str, list[str]]] = []
    section: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            name = line.strip("[]").strip().lower()
            if name == "interface":
                section = interface
            elif name == "peer":
                section = {}
                peers.append(section)
            else:
                raise ValueError(f"line {number}: unknown section {line!r}")
            continue
        key, sep, value = line.partition("=")
        if not sep or section is None:
            raise ValueError(f"line {number}: expected Key = Value inside a section: {raw!r}")
        section.setdefault(key.strip().lower(), []).append(value.strip())

    def one(values: dict[str, list[str]], key: str) -> str | None:
        found = values.get(key)
        return found[-1] if found else None

    def many(values: dict[str, list[str]], key: str) -> list[str]:
        return [item for value in values.get(key, []) for item in _split_list(value)]

    private = one(interface, "privatekey")
    if private is None:
        raise ValueError("[Interface] has no PrivateKey")
    addresses = many(interface, "address")
    for address in addresses:
        ipaddress.ip_interface(address)
    # wg-quick's DNS mixes servers and search domains; only addresses are servers.
    dns = []
    for entry in many(interface, "dns"):
        try:
            dns.append(str(ipaddress.ip_address(entry)))
        except ValueError:
            continue
    listen_port = int(one(interface, "listenport") or 0)
    mtu = int(one(interface, "mtu") or DEFAULT_MTU)
    peer_configs = []
    for values in peers:
        public = one(values, "publickey")
        if public is None:
            raise ValueError("a [Peer] has no PublicKey")
        preshared = one(values, "presharedkey")
        endpoint = one(values, "endpoint")
        keepalive = (one(values, "persistentkeepalive") or "0").lower()
        allowed = many(values, "allowedips")
        for network in allowed:
            ipaddress.ip_network(network, strict=False)
        peer_configs.append(
            PeerConfig(
                public_key=key_from_text(public),
                allowed_ips=tuple(allowed),
                endpoint=_parse_endpoint(endpoint) if endpoint else None,
                preshared_key=key_from_text(preshared) if preshared else None,
                persistent_keepalive=0.0 if keepalive == "off" else float(int(keepalive)),
            )
        )
    return WireGuardConfig(
        private_key=key_from_text(private),
        addresses=tuple(addresses),
        dns=tuple(dns),
        listen_port=listen_port,
        mtu=mtu,
        peers=tuple(peer_configs),
    )


_FIN_AND_PSH = 0x01 | 0x08
_SEQUENCE = struct.Struct("!I")
_IPV4_LENGTH_AND_ID = struct.Struct("!HH")
_WORD = struct.Struct("!H")
# A large integer modulo 0xFFFF by folding: 2**16 is 1 modulo 0xFFFF, so
# the high and low parts of a split at a multiple of 16 bits add up to the
# same residue.  Two folds and a % take about half the time of one % on a
# 1,400-byte segment.  The masks, by 16-bit words, are made as needed.
_fold_masks: dict[int, int] = {}


def _residue(value: int) -> int:
    """``value`` modulo 0xFFFF."""
    bits = value.bit_length()
    while bits > 512:
        words = (bits + 31) // 32
        mask = _fold_masks.get(words)
        if mask is None:
            mask = _fold_masks[words] = (1 << (16 * words)) - 1
        value = (value >> (16 * words)) + (value & mask)
        bits = value.bit_length()
    return value % 0xFFFF


# Folds that bring a payload of so many bits near 512, by bit count: every
# full-sized piece of a packet has the same.
_fold_plans: dict[int, tuple[tuple[int, int], ...]] = {}


def _fold_plan(bits: int) -> tuple[tuple[int, int], ...]:
    """``(shift, mask)`` pairs: ``v = (v >> shift) + (v & mask)`` keeps ``v`` modulo 0xFFFF."""
    plan = _fold_plans.get(bits)
    if plan is None:
        steps = []
        left = bits
        while left > 512:
            words = (left + 31) // 32
            steps.append((16 * words, (1 << (16 * words)) - 1))
            left = max(left - 16 * words, 16 * words) + 1
        if len(_fold_plans) >= 64:
            _fold_plans.clear()
        plan = _fold_plans[bits] = tuple(steps)
    return plan


def segment_tcp(packet: bytes, gso: GsoInfo) -> list[bytes]:
    """Cut one large TCP packet into ``gso.gso_size`` pieces, as a NIC's TSO would.

    Each piece gets its own IP length (and IPv4 identification and header
    checksum), sequence number and complete TCP checksum (the large packet's
    field holds only the pseudo-header sum); FIN and PSH stay on the last.
    Encrypting and sending pieces here costs less than the TCP engine making
    each segment itself, which is why the link offers TSO.

    The checksums are sums of parts: the headers' fixed words once, then per
    piece the words that change (lengths, identification, sequence number,
    flags on the last) as small integers and the payload as one integer
    reduced modulo 0xFFFF, so no piece is copied but into its final bytes.
    Every piece but the last is full-sized, so its lengths, their share of
    the checksums and the folds that reduce its payload are worked out once.
    """
    tcp = gso.csum_start
    header_len = gso.header_len
    size = gso.gso_size
    view = memoryview(packet)
    total = len(packet) - header_len
    if total <= 0:
        return []
    version4 = packet[0] >> 4 == 4
    template = bytearray(view[:header_len])
    sequence = _SEQUENCE.unpack_from(template, tcp + 4)[0]
    flags = template[tcp + 13]
    middle_flags = flags & ~_FIN_AND_PSH
    template[tcp + 13] = middle_flags
    template[tcp + 4 : tcp + 8] = b"\x00\x00\x00\x00"
    template[tcp + 16 : tcp + 18] = b"\x00\x00"
    # The flags are the low byte of their 16-bit word: the last piece's
    # word is larger by the difference.
    last_delta = flags - middle_flags
    # The pseudo-header's addresses and protocol (6) and the TCP header's
    # fixed words; the pseudo-header's length is the TCP length, under 2**16
    # in either family, so one word.
    fixed = (
        int.from_bytes(view[12:20] if version4 else view[8:40], "big")
        + int.from_bytes(template[tcp:], "big")
    ) % 0xFFFF + 6
    tcp_header_len = header_len - tcp
    identification = ip_fixed = 0
    if version4:
        identification = int.from_bytes(template[4:6], "big")
        template[2:6] = b"\x00\x00\x00\x00"
        template[10:12] = b"\x00\x00"
        ip_fixed = int.from_bytes(template[:tcp], "big") % 0xFFFF
    pieces: list[bytes] = []
    append = pieces.append
    pack_sequence = _SEQUENCE.pack_into
    pack_word = _WORD.pack_into
    pack_length_and_id = _IPV4_LENGTH_AND_ID.pack_into
    sequence_at = tcp + 4
    checksum_at = tcp + 16
    full_tcp_length = tcp_header_len + size
    full_fixed = fixed + full_tcp_length
    full_ip_length = tcp + full_tcp_length
    full_ip_fixed = ip_fixed + full_ip_length
    full_ip6_length = full_tcp_length + tcp - 40
    # An odd-sized piece ends in a word padded with zero.
    odd_shift = 8 if size & 1 else 0
    folds = _fold_plan(8 * size + odd_shift)
    last_offset = (total - 1) // size * size
    index = 0
    # Every field a piece changes is written for each piece into the one
    # header, which the join copies; the payload is sliced from the packet
    # as bytes, which int.from_bytes takes without a copy of its own.
    for start in range(header_len, header_len + last_offset, size):
        chunk = packet[start : start + size]
        number = (sequence + start - header_len) & 0xFFFFFFFF
        pack_sequence(template, sequence_at, number)
        if version4:
            ident = (identification + index) & 0xFFFF
            pack_length_and_id(template, 2, full_ip_length, ident)
            # An IPv4 header is never all zeros: a residue of 0 is 0xFFFF.
            pack_word(template, 10, 0xFFFF - ((full_ip_fixed + ident) % 0xFFFF or 0xFFFF))
        else:
            pack_word(template, 4, full_ip6_length)
        data = int.from_bytes(chunk, "big") << odd_shift
        for shift, mask in folds:
            data = (data >> shift) + (data & mask)
        # Never all zeros: the header holds ports and offset.
        residue = (full_fixed + (number >> 16) + (number & 0xFFFF) + data) % 0xFFFF or 0xFFFF
        pack_word(template, checksum_at, 0xFFFF - residue)
        append(b"".join((template, chunk)))
        index += 1
    # The last piece: its own length, and the flags of the large packet.
    chunk = packet[header_len + last_offset :]
    length = len(chunk)
    header = template
    number = (sequence + last_offset) & 0xFFFFFFFF
    pack_sequence(header, sequence_at, number)
    header[tcp + 13] = flags
    tcp_length = tcp_header_len + length
    if version4:
        ip_length = tcp + tcp_length
        ident = (identification + index) & 0xFFFF
        pack_length_and_id(header, 2, ip_length, ident)
        pack_word(header, 10, 0xFFFF - ((ip_fixed + ip_length + ident) % 0xFFFF or 0xFFFF))
    else:
        pack_word(header, 4, tcp - 40 + tcp_length)
    data = int.from_bytes(chunk, "big") << (8 if length & 1 else 0)
    residue = (
        fixed + tcp_length + (number >> 16) + (number & 0xFFFF) + last_delta + _residue(data)
    ) % 0xFFFF or 0xFFFF
    pack_word(header, checksum_at, 0xFFFF - residue)
    append(b"".join((header, chunk)))
    return pieces


_ACK = 0x10
_PSH = 0x08
#: IP length of a packet :func:`coalesce_tcp` builds (IPv4's total length is 16 bits).
_GRO_MAX_LENGTH = 65_000


def _payload_offset(packet: bytes) -> int:
    """Where a TCP segment's payload starts if :func:`coalesce_tcp` may join it, else 0.

    That is IPv4 without options and not a fragment, or IPv6 without
    extension headers, carrying TCP with ACK alone or with PSH, and data.
    """
    first = packet[0]
    if first == 0x45:
        # Byte 6: the MF flag (0x20) and the fragment offset's high bits.
        if packet[9] != 6 or packet[6] & 0x3F or packet[7]:
            return 0
        tcp = 20
    elif first >> 4 == 6:
        if packet[6] != 6:
            return 0
        tcp = 40
    else:
        return 0
    if len(packet) < tcp + 20 or packet[tcp + 13] & ~_PSH != _ACK:
        return 0
    end = tcp + (packet[tcp + 12] >> 4) * 4
    return end if tcp + 20 <= end < len(packet) else 0


# The fields of an IP and TCP header that must match for two segments to be
# joined, with the sequence number and flags, in one unpack: by header
# length, for IPv4 (no options) and IPv6 (no extension headers).  Skipped:
# lengths, IPv4 identification, checksums.
_GRO_FIELDS: dict[tuple[int, int], struct.Struct] = {}


def _gro_fields(tcp: int, end: int) -> struct.Struct:
    fields = _GRO_FIELDS.get((tcp, end))
    if fields is None:
        # IP up to the ports, in three items; then sequence, acknowledgment
        # and offset, flags, window, (checksum), urgent pointer and options.
        ip = "2s4x4s2x12s" if tcp == 20 else "4s2x38s0s"
        fields = _GRO_FIELDS[tcp, end] = struct.Struct(f"!{ip}I5sB2s2x{end - tcp - 18}s")
    return fields


def coalesce_tcp(packets: deque[bytes], limit: int = 64) -> tuple[bytes, int]:
    """Take the first packet of ``packets`` and the TCP segments after it that continue it.

    Returns one IP packet and how many were taken (at most ``limit``), as
    Linux's GRO joins a burst before the TCP layer: the segments must be of
    one connection, in sequence, with the same acknowledgment, window and
    options (timestamps included) and no flag but ACK, PSH ending a run.
    The result carries the first one's headers with the lengths (and IPv4
    header checksum) made right; its TCP checksum is not, as for a GRO
    packet whose parts the device checked.  Anything else comes out alone.
    """
    first = packets.popleft()
    if not packets or limit < 2:
        return first, 1
    end = _payload_offset(first)
    if not end:
        return first, 1
    tcp = 20 if first[0] == 0x45 else 40
    fields = _gro_fields(tcp, end)
    one, two, three, sequence, acknowledgment, flags, window, rest = fields.unpack_from(first)
    if flags & _PSH:
        return first, 1
    key = (one, two, three, acknowledgment, window, rest)
    last_flags = flags
    length = len(first)
    parts: list[memoryview] = []
    unpack = fields.unpack_from
    while packets and len(parts) + 1 < limit:
        following = packets[0]
        size = len(following) - end
        if size <= 0 or length + size > _GRO_MAX_LENGTH:
            break
        # The header length is the same: the IP fields hold the version
        # and IHL (or are IPv6's), the TCP ones the data offset.
        one, two, three, number, acknowledgment, flags, window, rest = unpack(following)
        if (
            (one, two, three, acknowledgment, window, rest) != key
            or flags & ~_PSH != _ACK
            or number != (sequence + length - end) & 0xFFFFFFFF
        ):
            break
        packets.popleft()
        parts.append(memoryview(following)[end:])
        length += size
        last_flags = flags
        if flags & _PSH:
            break
    if not parts:
        return first, 1
    header = bytearray(first[:end])
    header[tcp + 13] = last_flags
    if tcp == 20:
        header[2:4] = length.to_bytes(2, "big")
        header[10:12] = b"\x00\x00"
        # An IPv4 header is never all zeros: a residue of 0 is 0xFFFF.
        residue = int.from_bytes(header[:20], "big") % 0xFFFF or 0xFFFF
        header[10:12] = (0xFFFF - residue).to_bytes(2, "big")
    else:
        header[4:6] = (length - 40).to_bytes(2, "big")
    return b"".join([header, memoryview(first)[end:], *parts]), len(parts) + 1


def _normalise(address: Any) -> Endpoint:
    host, port = str(address[0]), int(address[1])
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, port


# Linux's UDP generic segmentation offload (``UDP_SEGMENT``, Linux 4.18; not
# in Python's socket module before 3.12): one sendmsg() carries a run of
# datagrams of one size, the last possibly shorter, and the kernel cuts them.
_SOL_UDP = 17
_UDP_SEGMENT = 103
# Its receiving half (``UDP_GRO``, Linux 5.0): the kernel hands a socket
# that asks for it a run of datagrams from one sender as one buffer, with
# their size in a control message (a GSO sender's run as it was sent, and
# datagrams a NIC's GRO joined).
_UDP_GRO = 104
_GRO_CONTROL_SPACE = socket.CMSG_SPACE(4) if hasattr(socket, "CMSG_SPACE") else 0
# A plain int: socket.MSG_TRUNC is an IntFlag, and ``int & IntFlag`` goes
# through enum's __and__, which took 5 % of a download's time.
_MSG_TRUNC = int(getattr(socket, "MSG_TRUNC", 0x20))
#: Datagrams in one segmented send (Linux's UDP_MAX_SEGMENTS is 64, 128 since 6.9).
_GSO_MAX_SEGMENTS = 64
#: Bytes in one segmented send: it must fit one UDP datagram over IPv6 (65,527).
_GSO_MAX_BYTES = 65_000
#: Datagrams taken from the host socket per pass before the packets go up:
#: the IpStack driver's burst, so one pass of its transmit answers them all.
_RECEIVE_BATCH = 64
#: Packets :meth:`WireGuardLink.receive_nowait` gives between two
#: :meth:`~WireGuardLink.receive` calls.  The IpStack driver takes at most 64
#: per pass and loses what a 64th receive_nowait() returns (it asks before it
#: counts), so a burst stops one short of that.
_NOWAIT_PER_RECEIVE = 63
#: The UDP socket's buffers asked for (wireguard-go asks 7 MiB); Linux caps
#: them at net.core.rmem_max / wmem_max, 208 KiB unless raised.
_SOCKET_BUFFER = 4 << 20
#: Room for one datagram: the largest UDP payload.
_DATAGRAM_ROOM = 65_536
#: The receive buffer: a burst's datagrams side by side (about 130 of 1,452
#: bytes) before they go to the device together.
_RECEIVE_ROOM = 4 * _DATAGRAM_ROOM
#: Raw addresses remembered in the source cache before it starts afresh.
_MAX_CACHED_ADDRESSES = 1024


def _host_socket(sock: UdpSocket) -> socket.socket | None:
    """The OS socket under ``sock`` when it is the host network's, else ``None``."""
    raw = sock.extra(SocketAttribute.raw_socket, None)
    if isinstance(raw, socket.socket) and raw.type == socket.SOCK_DGRAM:
        return raw
    return None


class WireGuardLink(Link):
    """IP packets in and out of a :class:`WireGuardDevice`, its datagrams on ``transport``'s UDP.

    ``endpoints`` maps peers' public keys to endpoints still to resolve
    (host names); ``bind`` is the UDP socket's local address (port 0: any).

    On the host network (a transport whose UDP sockets are OS sockets, as
    :class:`~netshim.stacks.HostStack`'s) the link works the socket itself:
    it reads every datagram waiting, up to a burst, per wake-up (non-blocking
    ``recvfrom_into`` until ``EAGAIN``), and sends what one pass of the
    IpStack produced together, runs of one size to one endpoint as a single
    segmented ``sendmsg`` on Linux (UDP GSO).  With :meth:`receive_nowait`
    and :meth:`send_many` the IpStack's driver takes and answers a burst in
    one pass.  Other transports (a gateway's Wisp UDP) see one ``send`` per
    datagram and one ``receive`` per wake-up.
    """

    medium = Medium.IP
    # Large TCP packets are cut here (segment_tcp), after the TCP engine:
    # one pass of the engine per 64 KiB instead of per segment.  Measured
    # with benchmarks/wireguard.py --direction upload, three runs each:
    # 15-18 CPU s/GiB against 26-30 with the engine's own segments.
    tso = True
    # Consecutive TCP segments of one connection that arrive together go up
    # as one packet (coalesce_tcp), as Linux's GRO does for its WireGuard:
    # the TCP engine's cost is per segment, whatever its size.
    gro = True

    def __init__(
        self,
        device: WireGuardDevice,
        transport: Stack,
        *,
        bind: tuple[str, int] = ("0.0.0.0", 0),
        endpoints: dict[bytes, tuple[str, int]] | None = None,
        on_event: Callable[[WireGuardEvent], None] | None = None,
    ) -> None:
        self.device = device
        self.transport = transport
        self._bind = bind
        self._unresolved = dict(endpoints or {})
        self._on_event = on_event
        self._socket: UdpSocket | None = None
        self._open_lock = anyio.Lock()
        self._packets: deque[bytes] = deque()
        self._wait_scope: anyio.CancelScope | None = None
        self._closed = False
        self._reported: dict[bytes, tuple[float, int, int]] = {}
        self._report_due: float | None = None
        self._next_transfer_check = -math.inf
        self._clock: Callable[[], float] | None = None
        # The host socket path: the OS socket, datagrams not sent yet (its
        # buffer was full), a receive buffer, and address translations.
        self._raw: socket.socket | None = None
        self._out: list[tuple[bytes | memoryview, Endpoint]] = []
        self._gso = False
        self._buffer = bytearray(_RECEIVE_ROOM)
        self._view = memoryview(self._buffer)
        self._sources: dict[Any, Endpoint] = {}
        self._addresses: dict[Endpoint, tuple[str, int]] = {}
        self._udp_gro = False
        self._nowait_left = _NOWAIT_PER_RECEIVE
        # Under asyncio the wait for the host socket is a future of our own
        # (see _wait_asyncio): the loop it is registered with, the waiting
        # future, and until when it waits.
        self._reader_loop: asyncio.AbstractEventLoop | None = None
        self._reader_waiter: asyncio.Future[None] | None = None
        self._wait_deadline = math.inf
        self._own_wait = True

    @property
    def local_address(self) -> tuple[str, int] | None:
        """The UDP socket's address once open (the ``ListenPort`` actually bound)."""
        return None if self._socket is None else _normalise(self._socket.local_address)

    async def open(self) -> None:
        """Bind the UDP socket and resolve the peers' endpoints (done by the first send/receive)."""
        await self._ensure_socket()

    async def _ensure_socket(self) -> UdpSocket:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._socket is not None:
            return self._socket
        async with self._open_lock:
            if self._socket is None:
                for key, (host, port) in list(self._unresolved.items()):
                    peer = self.device.peer(key)
                    if peer is None:
                        continue
                    # A dual-stack socket takes either family.
                    family = 0 if ":" in self._bind[0] else socket.AF_INET
                    infos = await self.transport.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
                    peer.endpoint = (str(infos[0][4][0]), port)
                    del self._unresolved[key]
                sock = await self.transport.open_udp(*self._bind)
                raw = _host_socket(sock)
                if raw is not None:
                    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                        try:
                            if raw.getsockopt(socket.SOL_SOCKET, option) < _SOCKET_BUFFER:
                                raw.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
                        except OSError:
                            pass
                    self._gso = sys.platform == "linux"
                    if self._gso and _GRO_CONTROL_SPACE:
                        try:
                            raw.setsockopt(_SOL_UDP, _UDP_GRO, 1)
                            self._udp_gro = True
                        except OSError:
                            pass
                self._raw = raw
                # The host socket's sends take the device's datagrams as
                # views of one buffer per run, and nothing else sees them.
                self.device.datagram_views = raw is not None
                self._socket = sock
        return self._socket

    def _now(self) -> float:
        clock = self._clock
        if clock is None:
            # anyio.current_time() looks for the event loop on every call,
            # several times per burst: keep the running loop's own clock.
            clock = loop_clock()
            self._clock = clock
        return clock()

    # -- the host socket ----------------------------------------------------------

    def _address(self, endpoint: Endpoint) -> tuple[str, int]:
        """``endpoint`` as the host socket's sendto() wants it (IPv4-mapped on a dual-stack one)."""
        address = self._addresses.get(endpoint)
        if address is None:
            assert self._raw is not None
            host, port = endpoint
            if self._raw.family == socket.AF_INET6 and ":" not in host:
                host = "::ffff:" + host
            if len(self._addresses) >= _MAX_CACHED_ADDRESSES:
                self._addresses.clear()
            address = self._addresses[endpoint] = (host, port)
        return address

    def _read_ready(self) -> None:
        """Hand the device every datagram the host socket holds, up to a burst, without waiting.

        Datagrams are read one after another into the receive buffer and
        handed over together (:meth:`WireGuardDevice.receive_datagrams`)
        when the buffer has no room left for the largest one, and at the end.
        """
        raw = self._raw
        assert raw is not None
        device, view, sources = self.device, self._view, self._sources
        gro = self._udp_gro
        now = self._now()
        batch: list[tuple[memoryview, Endpoint]] = []
        offset = 0
        taken = 0
        while taken < _RECEIVE_BATCH:
            if offset > _RECEIVE_ROOM - _DATAGRAM_ROOM:
                # The device keeps nothing of the views: the buffer is free again.
                device.receive_datagrams(batch, now)
                batch = []
                offset = 0
            try:
                if gro:
                    size, control, flags, address = raw.recvmsg_into(
                        [view[offset:]], _GRO_CONTROL_SPACE
                    )
                else:
                    size, address = raw.recvfrom_into(view[offset:])
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                # A closed socket, or an ICMP error reported on it: nothing
                # more to read now (the wait reports a closed socket).
                break
            source = sources.get(address)
            if source is None:
                if len(sources) >= _MAX_CACHED_ADDRESSES:
                    sources.clear()
                source = sources[address] = _normalise(address)
            end = offset + size
            if gro and flags & _MSG_TRUNC:
                device.dropped["datagram truncated"] += 1
                taken += 1
            elif gro and control:
                segment = size
                for level, kind, data in control:
                    if level == _SOL_UDP and kind == _UDP_GRO:
                        segment = int.from_bytes(data[:4], sys.byteorder) or size
                for start in range(offset, end, segment):
                    batch.append((view[start : min(start + segment, end)], source))
                    taken += 1
            else:
                batch.append((view[offset:end], source))
                taken += 1
            offset = end
        if batch:
            device.receive_datagrams(batch, now)

    def _write_ready(self) -> bool:
        """Send the queued datagrams without waiting; False if the socket's buffer filled."""
        raw = self._raw
        assert raw is not None
        out = self._out
        count = len(out)
        index = 0
        while index < count:
            data, endpoint = out[index]
            size = len(data)
            end = index + 1
            if self._gso:
                total = size
                while end < count and end - index < _GSO_MAX_SEGMENTS:
                    following, where = out[end]
                    length = len(following)
                    if where != endpoint or length > size or total + length > _GSO_MAX_BYTES:
                        break
                    total += length
                    end += 1
                    if length < size:
                        break  # a shorter datagram ends the run
            try:
                if end - index > 1:
                    raw.sendmsg(
                        [item[0] for item in out[index:end]],
                        [(_SOL_UDP, _UDP_SEGMENT, size.to_bytes(2, sys.byteorder))],
                        0,
                        self._address(endpoint),
                    )
                else:
                    raw.sendto(data, self._address(endpoint))
            except (BlockingIOError, InterruptedError):
                del out[:index]
                return False
            except OSError:
                if end - index > 1:
                    # The route's device cannot segment (no checksum
                    # offload, or datagrams beyond its MTU): send one by one
                    # from now on.
                    self._gso = False
                    continue
                # Unreachable networks lose the datagram, as UDP does; the
                # protocol's timers retry what matters.
                self.device.dropped["datagram send failed"] += 1
            index = end
        out.clear()
        return True

    # -- both paths ---------------------------------------------------------------

    def _collect(self) -> None:
        """Take the device's output: datagrams to send, packets for the IpStack, events."""
        device = self.device
        self._out.extend(device.take_datagrams())
        packets = device.take_packets()
        if packets:
            self._packets.extend([packet for packet, _ in packets])
            while len(self._packets) > DEFAULT_MAX_QUEUED_PACKETS:
                self._packets.popleft()
                device.dropped["receive queue full"] += 1
        self._dispatch()

    async def _flush(self, sock: UdpSocket) -> None:
        self._collect()
        raw = self._raw
        if raw is not None:
            while not self._write_ready():
                await anyio.wait_writable(raw)
            return
        out, self._out = self._out, []
        for data, endpoint in out:
            try:
                await sock.send(bytes(data), endpoint)
            except OSError:
                # Unreachable networks and full buffers lose the datagram,
                # as UDP does; the protocol's timers retry what matters.
                self.device.dropped["datagram send failed"] += 1

    def _dispatch(self) -> None:
        events: list[WireGuardEvent] = self.device.take_events()
        now = self._now()
        if not events and now < self._next_transfer_check:
            # Look again then, in case this was the last traffic for a while.
            if self._report_due is None:
                self._report_due = self._next_transfer_check
            return
        self._next_transfer_check = now + TRANSFER_REPORT_INTERVAL / 4
        self._report_due = None
        for peer in self.device.peers:
            last = self._reported.get(peer.public_key)
            counts = (peer.rx_bytes, peer.tx_bytes)
            if last is not None and last[1:] == counts:
                continue
            if last is not None and now - last[0] < TRANSFER_REPORT_INTERVAL:
                # Reported a moment ago: the wait in receive() ends in time
                # to report the rest, even if the link goes quiet.
                due = last[0] + TRANSFER_REPORT_INTERVAL
                self._report_due = due if self._report_due is None else min(self._report_due, due)
                continue
            if last is None and counts == (0, 0):
                continue
            self._reported[peer.public_key] = (now, *counts)
            events.append(TransferUpdated(peer.public_key, *counts))
        if self._on_event is not None:
            for event in events:
                self._on_event(event)

    def _deadline_moved(self) -> None:
        # A packet sent may bring a timer nearer than the receive wait's deadline.
        deadline = self.device.deadline()
        if deadline is None:
            return
        scope = self._wait_scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline
        if self._reader_waiter is not None and deadline < self._wait_deadline:
            self._wake_waiter()

    async def send(self, packet: bytes, gso: GsoInfo | None = None) -> None:
        await self.send_many(((packet, gso),))

    async def send_many(self, packets: Iterable[tuple[bytes, GsoInfo | None]]) -> None:
        """Encrypt ``packets`` and send their datagrams together (one pass of IpStack output)."""
        sock = await self._ensure_socket()
        self.device.send_packets(_wire_packets(packets), self._now())
        await self._flush(sock)
        self._deadline_moved()

    def write_nowait(self, packets: Sequence[tuple[bytes, GsoInfo | None]]) -> int:
        """Encrypt and send ``packets`` now if the host socket is ready; how many were taken.

        All of them, or none: 0 before the socket is open, on a transport
        that is not the host network's, and while datagrams of an earlier
        call still wait for room (the caller sends with :meth:`send_many`,
        which waits).  Datagrams the socket's buffer cannot take now stay
        queued here, and the task waiting in :meth:`receive` is woken to
        send them as room comes.  For the IpStack driver: a pass's packets
        leave in the call that made them, with no wake-up of its timer task
        and no second transmit pass there (one of each per burst received).
        """
        raw = self._raw
        if raw is None or self._closed or (self._out and not self._write_ready()):
            return 0
        self.device.send_packets(_wire_packets(packets), self._now())
        self._collect()
        if not self._write_ready():
            self._wake_receive()
        self._deadline_moved()
        return len(packets)

    def _wake_receive(self) -> None:
        """End the wait in :meth:`receive` now (it then sends what is queued, as room comes)."""
        if self._wait_scope is not None:
            self._wait_scope.deadline = -math.inf
        self._wake_waiter()

    async def send_to_peer(self, peer: WireGuardPeer, packet: bytes) -> None:
        """Send ``packet`` to ``peer`` (``b""``: a keepalive, or a handshake if no keys)."""
        sock = await self._ensure_socket()
        self.device.send_to_peer(peer, packet, self._now())
        await self._flush(sock)
        self._deadline_moved()

    def _next_packet(self) -> IncomingPacket:
        if self.gro:
            data, count = coalesce_tcp(self._packets, max(1, self._nowait_left))
            self._nowait_left -= count - 1
        else:
            data = self._packets.popleft()
        # Poly1305 authenticated every byte: like Linux's WireGuard
        # (CHECKSUM_UNNECESSARY), the TCP/UDP checksums need no second look.
        return IncomingPacket(data, checksum_verified=True)

    def receive_nowait(self) -> IncomingPacket | None:
        """The next decrypted packet if one is here or the host socket holds one, else ``None``."""
        if self._nowait_left <= 0:
            return None
        self._nowait_left -= 1
        if not self._packets and self._raw is not None and not self._closed:
            self._read_ready()
            self._collect()
            # Replies the datagrams asked for (a handshake response) leave
            # now if the socket takes them, else with the next flush.
            self._write_ready()
        return self._next_packet() if self._packets else None

    async def receive(self) -> IncomingPacket:
        sock = await self._ensure_socket()
        raw = self._raw
        device = self.device
        waited = False
        self._nowait_left = _NOWAIT_PER_RECEIVE
        while True:
            if self._packets:
                if not waited:
                    # Data was ready without a wait: let other tasks run
                    # once per call, as a socket read would.
                    await anyio.lowlevel.checkpoint()
                    waited = True
                    continue
                return self._next_packet()
            if self._closed:
                raise anyio.ClosedResourceError
            now = self._now()
            device.poll(now)
            if raw is not None:
                self._read_ready()
            await self._flush(sock)
            if self._packets:
                continue
            deadline = device.deadline()
            if self._report_due is not None:
                deadline = min(deadline or math.inf, self._report_due)
            if raw is not None and self._own_wait:
                loop = asyncio._get_running_loop()
                if loop is not None and await self._wait_asyncio(loop, raw, deadline):
                    waited = True
                    continue
                self._own_wait = False
            with anyio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
                self._wait_scope = scope
                try:
                    if raw is not None:
                        await anyio.wait_readable(raw)
                    else:
                        data, source = await sock.receive()
                finally:
                    self._wait_scope = None
            waited = True
            if scope.cancelled_caught or raw is not None:
                continue
            device.receive_datagram(data, _normalise(source), self._now())
            await self._flush(sock)

    async def _wait_asyncio(
        self, loop: asyncio.AbstractEventLoop, raw: socket.socket, deadline: float | None
    ) -> bool:
        """Wait until the host socket may hold a datagram, or ``deadline`` (the loop's time).

        What ``anyio.wait_readable`` in a ``CancelScope`` with a deadline
        does, at about a quarter of its cost (78 against 21 us a wake-up on
        a loaded machine): the socket stays registered with the loop's
        selector between waits instead of two ``epoll_ctl`` calls around
        each, the deadline is one timer handle, and there is no cancel
        scope.  A wait costs that on every burst of datagrams.  False if the
        loop cannot watch the socket (a proactor loop): the caller waits
        the anyio way from then on.
        """
        if self._reader_loop is not loop:
            self._drop_reader()
            try:
                loop.add_reader(raw.fileno(), self._became_readable)
            except NotImplementedError:
                return False
            self._reader_loop = loop
        waiter = self._reader_waiter = loop.create_future()
        self._wait_deadline = math.inf if deadline is None else deadline
        timer = None if deadline is None else loop.call_at(deadline, self._wake_waiter)
        try:
            await waiter
        finally:
            self._reader_waiter = None
            if timer is not None:
                timer.cancel()
        return True

    def _wake_waiter(self) -> None:
        waiter = self._reader_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _became_readable(self) -> None:
        if self._reader_waiter is None:
            # Nobody waits (the driver is busy with a burst): the selector
            # would report the socket on every loop iteration until it is
            # read, so it is watched again from the next wait.
            self._drop_reader()
        else:
            self._wake_waiter()

    def _drop_reader(self) -> None:
        loop, self._reader_loop = self._reader_loop, None
        if loop is not None and not loop.is_closed() and self._raw is not None:
            loop.remove_reader(self._raw.fileno())

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._wait_scope is not None:
            self._wait_scope.cancel()
        self._wake_waiter()
        # Before the socket closes: its descriptor number may be reused.
        self._drop_reader()
        if self._socket is not None:
            await self._socket.aclose()


class WireGuardEvents:
    """The events of one :meth:`WireGuardStack.events` subscription: an async iterator."""

    def __init__(
        self, receive: MemoryObjectReceiveStream[WireGuardEvent], unsubscribe: Callable[[], None]
    ) -> None:
        self._receive = receive
        self._unsubscribe = unsubscribe

    def __aiter__(self) -> WireGuardEvents:
        return self

    async def __anext__(self) -> WireGuardEvent:
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Unsubscribe; idempotent.  Iteration ends."""
        self._unsubscribe()
        self._receive.close()

    async def __aenter__(self) -> WireGuardEvents:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class WireGuardStack(IpStack):
    """Sockets inside a WireGuard tunnel: :class:`IpStack` over a :class:`WireGuardLink`.

    ``private_key`` is the interface's key (raw or base64), ``addresses`` its
    tunnel addresses, ``peers`` its ``[Peer]`` sections, ``dns`` name servers
    inside the tunnel.  ``transport`` carries the encrypted UDP (default: the
    host network), bound at ``listen_host`` (default ``0.0.0.0``, or ``::``
    when a peer's endpoint is IPv6) and ``listen_port`` (0: any).  ``on_event`` is
    called with every :class:`~netshim.protocols.wireguard.WireGuardEvent`;
    ``timers`` shortens the protocol's timers for tests.  ``crypto`` picks where
    X25519 and ChaCha20-Poly1305 come from (default: ``cryptography`` when it
    imports, else tlslite-ng's pure Python, as in Pyodide; see
    :func:`netshim.protocols.wireguard.crypto_backend`).

    The handshake starts with the first packet to a peer, or at once with
    :meth:`handshake`.  Packets to destinations no peer's AllowedIPs cover
    are dropped, and counted in :attr:`wireguard_dropped`.
    """

    def __init__(
        self,
        private_key: bytes | str,
        *,
        addresses: Iterable[str] = (),
        peers: Sequence[PeerConfig] = (),
        dns: Sequence[str] = (),
        mtu: int = DEFAULT_MTU,
        listen_port: int = 0,
        listen_host: str | None = None,
        transport: Stack | None = None,
        on_event: Callable[[WireGuardEvent], None] | None = None,
        timers: Timers | None = None,
        tcp_config: Any = None,
        hostname: str = "localhost",
        random_bytes: Callable[[int], bytes] = os.urandom,
        crypto: CryptoBackend | None = None,
    ) -> None:
        if isinstance(private_key, str):
            private_key = key_from_text(private_key)
        if transport is None:
            from .host import HostStack

            transport = HostStack()
        if listen_host is None:
            # A dual-stack socket only when a peer needs IPv6, so that hosts
            # without IPv6 still work.
            wants6 = any(":" in c.endpoint[0] for c in peers if c.endpoint is not None)
            listen_host = "::" if wants6 else "0.0.0.0"
        self.device = WireGuardDevice(
            private_key, timers=timers, random_bytes=random_bytes, crypto=crypto, mtu=mtu
        )
        unresolved: dict[bytes, tuple[str, int]] = {}
        for config in peers:
            endpoint = config.endpoint
            literal = endpoint
            if endpoint is not None:
                try:
                    ipaddress.ip_address(endpoint[0])
                except ValueError:
                    unresolved[config.public_key] = endpoint
                    literal = None
            self.device.add_peer(
                config.public_key,
                preshared_key=config.preshared_key,
                endpoint=literal,
                allowed_ips=config.allowed_ips,
                persistent_keepalive=config.persistent_keepalive,
            )
        self._callbacks: list[Callable[[WireGuardEvent], None]] = []
        if on_event is not None:
            self._callbacks.append(on_event)
        self._subscribers: list[MemoryObjectSendStream[WireGuardEvent]] = []
        self._handshake_waiters: list[tuple[bytes | None, anyio.Event, list[WireGuardEvent]]] = []
        self.link = WireGuardLink(
            self.device,
            transport,
            bind=(listen_host, listen_port),
            endpoints=unresolved,
            on_event=self._deliver,
        )
        super().__init__(
            self.link,
            addresses=addresses,
            dns=dns,
            mtu=mtu,
            tcp_config=tcp_config,
            hostname=hostname,
        )

    @classmethod
    def from_config(
        cls,
        path_or_text: str | os.PathLike[str],
        *,
        transport: Stack | None = None,
        on_event: Callable[[WireGuardEvent], None] | None = None,
        timers: Timers | None = None,
        crypto: CryptoBackend | None = None,
    ) -> WireGuardStack:
        """A stack from a ``wg-quick`` file, or its text (anything with a ``[Interface]`` line)."""
        text = str(path_or_text)
        if "[interface]" not in text.lower():
            text = Path(path_or_text).read_text(encoding="utf-8")
        config = parse_config(text)
        return cls(
            config.private_key,
            addresses=config.addresses,
            peers=config.peers,
            dns=config.dns,
            mtu=config.mtu,
            listen_port=config.listen_port,
            transport=transport,
            on_event=on_event,
            timers=timers,
            crypto=crypto,
        )

    # -- state for user interfaces -------------------------------------------

    def _deliver(self, event: WireGuardEvent) -> None:
        for callback in list(self._callbacks):
            callback(event)
        for stream in list(self._subscribers):
            try:
                stream.send_nowait(event)
            except anyio.WouldBlock:
                pass
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.remove(stream)
        for key, done, found in self._handshake_waiters:
            if isinstance(event, HandshakeCompleted | HandshakeFailed) and key in (
                None,
                event.public_key,
            ):
                found.append(event)
                done.set()

    def add_event_callback(self, callback: Callable[[WireGuardEvent], None]) -> None:
        """Call ``callback`` with every later event (in the stack's task: keep it short)."""
        self._callbacks.append(callback)

    def events(self) -> WireGuardEvents:
        """Every later event, as an async iterator (a slow reader misses the newest ones).

        Subscribes at once, so nothing after this call is missed; use it as
        ``async with stack.events() as events: async for event in events``,
        or call its ``aclose()``, to unsubscribe.
        """
        send, receive = anyio.create_memory_object_stream[WireGuardEvent](DEFAULT_MAX_QUEUED_EVENTS)
        self._subscribers.append(send)
        return WireGuardEvents(receive, lambda: self._unsubscribe(send))

    def _unsubscribe(self, send: MemoryObjectSendStream[WireGuardEvent]) -> None:
        if send in self._subscribers:
            self._subscribers.remove(send)
        send.close()

    @property
    def peers(self) -> list[WireGuardPeer]:
        """The peers, with endpoints, byte counts and latest handshakes."""
        return self.device.peers

    @property
    def wireguard_dropped(self) -> dict[str, int]:
        """Datagrams and packets the WireGuard layer dropped, by reason."""
        return dict(self.device.dropped)

    async def handshake(self, public_key: bytes | None = None) -> None:
        """Start a handshake with ``public_key`` (default: every peer) and wait for one to complete.

        Returns at once if such a peer has keys already.  Raises
        ``ConnectionError`` if the handshake gives up (after
        REKEY_ATTEMPT_TIME, 90 seconds by default).
        """
        self._driver_for_use()
        chosen = [
            peer
            for peer in self.device.peers
            if public_key is None or peer.public_key == public_key
        ]
        if any(peer.has_session for peer in chosen):
            return
        done = anyio.Event()
        found: list[WireGuardEvent] = []
        waiter = (public_key, done, found)
        self._handshake_waiters.append(waiter)
        try:
            for peer in chosen:
                await self.link.send_to_peer(peer, b"")
            await done.wait()
        finally:
            self._handshake_waiters.remove(waiter)
        event = found[0]
        if not isinstance(event, HandshakeCompleted):
            raise ConnectionError(f"WireGuard handshake with {event.peer} failed")


def _wire_packets(packets: Iterable[tuple[bytes, GsoInfo | None]]) -> list[bytes]:
    """IpStack's output as the tunnel carries it: a TSO packet cut into its wire segments."""
    plain: list[bytes] = []
    for packet, gso in packets:
        if gso is None:
            plain.append(packet)
        else:
            plain.extend(segment_tcp(packet, gso))
    return plain
