"""An interface of the ip engine: frames or packets in, sockets' data and replies out.

This is smoltcp's ``iface`` layer, sans-I/O (DESIGN decision 2).  An
:class:`Interface` sits on one link, either Ethernet (a TAP device, a cable or
bridge port: frames with MAC addresses) or IP (a TUN device: bare IPv4 and
IPv6 packets).  The caller feeds it what the link delivers with
:meth:`Interface.receive`, takes what it must send with
:meth:`Interface.transmit`, and calls ``transmit`` again at
:meth:`Interface.deadline` (timers: TCP retransmission, ARP retries, fragment
timeouts).  Every call takes the time as ``now`` (seconds, any monotonic
origin); nothing here reads a clock, starts a task or touches a socket.

What it does with what arrives:

* Ethernet: ARP (RFC 826) requests for our addresses are answered and senders
  learnt; IPv6 neighbour discovery (RFC 4861) likewise, on our addresses, the
  EUI-64 link-local address made from the MAC (RFC 4862; no duplicate address
  detection: the interface assumes its addresses are its own, as a TAP for a
  single guest can), and the solicited-node multicast groups.  Router
  Advertisements give a default router and, for autonomous /64 prefixes, an
  address (SLAAC); a Router Solicitation goes out at start.
* IPv4 and IPv6 fragments are reassembled (:mod:`netshim.ip.fragments`); nothing is
  fragmented on the way out: Don't Fragment is set, TCP follows the path MTU
  (ICMP "fragmentation needed" / "packet too big" are passed to it) and an
  oversized UDP datagram is ``EMSGSIZE``.
* ICMP and ICMPv6 echo requests are answered.  ICMP errors are matched by the
  packet they quote to the TCP connection or connected UDP socket that sent it
  and delivered as the errno Linux uses (:mod:`netshim.ip.icmp`): port
  unreachable is ``ECONNREFUSED``, host unreachable ``EHOSTUNREACH``...
* UDP goes to the bound :class:`~netshim.ip.udp.UdpSocket`; to a closed port,
  ICMP port unreachable (rate limited) answers.  TCP goes to its connection,
  a SYN to a listener makes a connection in the listener's bounded SYN
  backlog, and anything else gets the RST the TCP core builds.

Untrusted bytes never raise: whatever does not parse or has nowhere to go is
counted in :attr:`Interface.dropped` under a reason and forgotten.

Sockets (TCP connections, listeners, UDP sockets) whose state may have changed
are collected for :meth:`Interface.take_changed`, so a driver wakes only the
tasks waiting on those.

A driver's loop, in outline (``tests/ip/link_pump.py`` is a small one):

* for each packet from the link, ``receive(data, now, checksum_verified=...)``;
* after that, and after the application used a socket (TCP ``send``,
  ``receive`` (it may open the window), ``shutdown``, ``abort``; UDP
  ``send_to``; closing a listener), put everything ``transmit(now)`` returns
  on the link;
* call ``transmit`` again at ``deadline()`` (which may already be past);
* then wake the tasks waiting on the sockets ``take_changed()`` names.

``transmit`` polls every connection and ``deadline`` asks every connection,
so both cost time in proportion to the number of connections.

TCP segmentation offload: with ``tso=True`` (a TUN/TAP link with
``IFF_VNET_HDR``: pass the link's ``tso``) connections get a
``max_segment_payload`` of almost 64 KiB, and each large segment leaves as one
packet with :class:`GsoInfo` for the kernel to cut at the connection's MSS.
Without it, a segment larger than the MTU allows (a core configured for TSO
on a plain link) is cut into MTU-sized segments here.

Bounds, because everything here is driven by traffic: the neighbour cache
and its waiting packets (:mod:`netshim.ip.neighbor`), fragments being
reassembled (:mod:`netshim.ip.fragments`), each UDP socket's queue
(:mod:`netshim.ip.udp`), each listener's SYN and accept backlogs
(:data:`DEFAULT_SYN_BACKLOG`), ICMP errors sent (a token bucket) and packets
waiting for ``transmit`` (:data:`MAX_QUEUED_OUTPUT`).  TCP buffers are bounded
by the core's configuration.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import errno
import heapq
import ipaddress
import logging
import os
import random
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from netshim.protocols.ip import (
    BROADCAST,
    ArpOperation,
    ArpRepr,
    EthernetAddress,
    EthernetRepr,
    EtherType,
    Icmpv4Repr,
    Icmpv4Type,
    Icmpv4Unreachable,
    Icmpv6Repr,
    Icmpv6Type,
    Icmpv6Unreachable,
    IPAddress,
    IpProtocol,
    Ipv4Repr,
    Ipv6Repr,
    NeighborAdvert,
    NeighborSolicit,
    RouterAdvert,
    RouterSolicit,
    TcpFlags,
    TcpRepr,
    UdpRepr,
    WireError,
    internet_checksum,
    ones_complement_sum,
    pseudo_header_sum,
)

from .fragments import Ipv6Fragment, Reassembler
from .icmp import IcmpError, QuotedFlow, TokenBucket, icmpv4_error, icmpv6_error, quoted_flow
from .intercept import InterceptedSyn, Interceptor
from .neighbor import NeighborCache
from .tcp import TcpConfig, TcpConnection, initial_sequence_number, reset_for_unexpected
from .udp import UdpSocket

__all__ = [
    "DEFAULT_SYN_BACKLOG",
    "EPHEMERAL_PORTS",
    "GsoInfo",
    "GsoType",
    "Interface",
    "Medium",
    "OutgoingPacket",
    "Route",
    "StandardTcp",
    "TcpEngine",
    "TcpListener",
]

_logger = logging.getLogger(__name__)

Endpoint: TypeAlias = tuple[IPAddress, int]
IPInterface: TypeAlias = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

# Linux's default ip_local_port_range.
EPHEMERAL_PORTS = range(32768, 61000)
# Half-open connections a listener keeps (Linux: tcp_max_syn_backlog, 128 on
# small machines and bounded by the listen() backlog).  Each costs one
# connection object until it completes or its SYN-ACK retries run out: this
# is what a SYN flood can cost, per listener.
DEFAULT_SYN_BACKLOG = 128
# RFC 4861 section 10: MAX_RTR_SOLICITATIONS and RTR_SOLICITATION_INTERVAL.
ROUTER_SOLICITATIONS = 3
ROUTER_SOLICITATION_INTERVAL = 4.0
# Destinations whose route is remembered; beyond this the memory starts over
# (the destinations come from traffic, so they are bounded too).
_MAX_CACHED_ROUTES = 1024

# The IPv4 fast paths (RFC 791 section 3.1): a header without options.
_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_TCP_HEADER = struct.Struct("!HHIIHHHH")
_TCP_SYN = int(TcpFlags.SYN)
_TCP_FIN_PSH = int(TcpFlags.FIN | TcpFlags.PSH)
_TCP_SYN_ACK_RST = int(TcpFlags.SYN | TcpFlags.ACK | TcpFlags.RST)
_TCP_SYN_ACK_RST_FIN = _TCP_SYN_ACK_RST | int(TcpFlags.FIN)
# GsoInfo values kept for reuse, by (IP header, segment size, TCP header):
# a handful per interface (the path MTUs and option layouts in use).
_MAX_CACHED_GSO_INFOS = 64
_IPV4_FIELDS = struct.Struct("!2xH2xH1xB2x4s4s")
_IPV4_HEADER_LEN = 20
_IPV4_MAX_LEN = 0xFFFF
_IPV4_PLAIN_FIRST_BYTE = 0x45  # version 4, five 32-bit words
_IPV4_DONT_FRAGMENT = 0x4000
# Reserved flag, more fragments, fragment offset: a fragment or bad input.
_IPV4_UNUSUAL_FLAGS = 0x8000 | 0x2000 | 0x1FFF
_MAX_CACHED_ADDRESSES = 4096


class _HashedIPv4Address(ipaddress.IPv4Address):
    """An IPv4Address that computes its hash once.

    A packet's addresses are dictionary keys many times over (connections,
    listeners, routes, the interceptor's pending SYNs, the caches here):
    about 40 hashes per connection, 8 per round trip.  ipaddress computes
    each one in Python (``hash(hex(int(self)))``); this one returns the
    same value, kept, so it equals and looks up as a plain IPv4Address.
    Its ``packed`` is kept too, in a slot: the property's is two Python
    calls, asked for every checksum's pseudo-header and every initial
    sequence number.
    """

    __slots__ = ("_hash", "packed")

    def __init__(self, address: bytes) -> None:
        super().__init__(address)
        self._hash = super().__hash__()
        # The slot shadows the read-only property mypy knows; read from the
        # property, not taken from ``address``, which a copy or an unpickled
        # address passes as an int.
        object.__setattr__(self, "packed", super().packed)

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"IPv4Address('{self}')"


_ipv4_addresses: dict[bytes, ipaddress.IPv4Address] = {}
_ipv4_packed_cache: dict[ipaddress.IPv4Address, bytes] = {}


def _ipv4_address(packed: bytes) -> ipaddress.IPv4Address:
    """The address for four bytes, cached: building an IPv4Address costs per packet."""
    address = _ipv4_addresses.get(packed)
    if address is None:
        if len(_ipv4_addresses) >= _MAX_CACHED_ADDRESSES:
            _ipv4_addresses.clear()
        address = _ipv4_addresses[packed] = _HashedIPv4Address(packed)
    return address


_group_or_unspecified_cache: dict[IPAddress, bool] = {}


def _is_group_or_unspecified(address: IPAddress) -> bool:
    """Whether ``address`` is multicast or unspecified (never a segment's source), cached."""
    answer = _group_or_unspecified_cache.get(address)
    if answer is None:
        if len(_group_or_unspecified_cache) >= _MAX_CACHED_ADDRESSES:
            _group_or_unspecified_cache.clear()
        answer = _group_or_unspecified_cache[address] = (
            address.is_multicast or address.is_unspecified
        )
    return answer


def _ipv4_packed(address: ipaddress.IPv4Address) -> bytes:
    packed = _ipv4_packed_cache.get(address)
    if packed is None:
        if len(_ipv4_packed_cache) >= _MAX_CACHED_ADDRESSES:
            _ipv4_packed_cache.clear()
        packed = _ipv4_packed_cache[address] = address.packed
    return packed


# Outgoing packets queued between transmit() calls; beyond this a burst of
# replies provoked by incoming traffic (echo, RST, ICMP) is dropped.
MAX_QUEUED_OUTPUT = 4096
# Neighbour discovery messages travel with hop limit 255 and are dropped with
# any other value: then they cannot have crossed a router (RFC 4861 section 6.1).
_NDP_HOP_LIMIT = 255
_ALL_NODES = ipaddress.IPv6Address("ff02::1")
_ALL_ROUTERS = ipaddress.IPv6Address("ff02::2")
_LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_UNSPECIFIED_V4 = ipaddress.IPv4Address(0)
_UNSPECIFIED_V6 = ipaddress.IPv6Address(0)
_LINK_LOCAL_V6 = ipaddress.IPv6Network("fe80::/10")
# IPv6 extension headers skipped on the way to the upper layer: hop-by-hop and
# destination options carry nothing a host must act on here (MLD's router
# alert comes in hop-by-hop).
_SKIPPED_EXTENSIONS = (IpProtocol.HOP_BY_HOP, IpProtocol.IPV6_OPTIONS)
_TCP_CHECKSUM_OFFSET = 16


class Medium(enum.Enum):
    """What the link carries: Ethernet frames (TAP) or bare IP packets (TUN)."""

    ETHERNET = "ethernet"
    IP = "ip"


class GsoType(enum.IntEnum):
    """``virtio_net_hdr.gso_type`` values (linux/virtio_net.h) for the segments we hand over."""

    TCPV4 = 1
    TCPV6 = 4


@dataclass(frozen=True, slots=True)
class GsoInfo:
    """How a link that segments for us (TSO) should cut one large TCP packet.

    Offsets count from the start of :attr:`OutgoingPacket.data` (the Ethernet
    header included on an Ethernet interface).  The TCP checksum field holds
    the pseudo-header sum only, as Linux leaves it for ``CHECKSUM_PARTIAL``:
    the link's ``virtio_net_hdr`` says NEEDS_CSUM with ``csum_start`` and
    ``csum_offset``, and the kernel completes each segment's checksum.
    """

    gso_type: GsoType
    gso_size: int
    header_len: int
    csum_start: int
    csum_offset: int = _TCP_CHECKSUM_OFFSET

    def shifted(self, by: int) -> GsoInfo:
        """The same offsets after ``by`` bytes of link header are put in front."""
        return GsoInfo(
            self.gso_type,
            self.gso_size,
            self.header_len + by,
            self.csum_start + by,
            self.csum_offset,
        )


@dataclass(frozen=True, slots=True)
class OutgoingPacket:
    """One frame (Ethernet interface) or IP packet (IP interface) to put on the link."""

    data: bytes
    gso: GsoInfo | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """Packets to ``network`` go to ``gateway``, or straight to the destination if None."""

    network: IPNetwork
    gateway: IPAddress | None = None


class TcpEngine(Protocol):
    """How the interface makes TCP connections: :mod:`netshim.ip.tcp`, or a double in tests."""

    def initial_sequence_number(
        self, secret: bytes, local: Endpoint, remote: Endpoint, now: float
    ) -> int: ...

    def reset_for_unexpected(self, segment: TcpRepr) -> TcpRepr | None: ...

    def open_active(
        self, local: Endpoint, remote: Endpoint, *, iss: int, now: float, config: TcpConfig
    ) -> TcpConnection: ...

    def open_passive(
        self,
        local: Endpoint,
        remote: Endpoint,
        syn: TcpRepr,
        *,
        iss: int,
        now: float,
        config: TcpConfig,
    ) -> TcpConnection: ...


class StandardTcp:
    """:mod:`netshim.ip.tcp` as a :class:`TcpEngine` (the default)."""

    def initial_sequence_number(
        self, secret: bytes, local: Endpoint, remote: Endpoint, now: float
    ) -> int:
        return initial_sequence_number(secret, local, remote, now)

    def reset_for_unexpected(self, segment: TcpRepr) -> TcpRepr | None:
        return reset_for_unexpected(segment)

    def open_active(
        self, local: Endpoint, remote: Endpoint, *, iss: int, now: float, config: TcpConfig
    ) -> TcpConnection:
        return TcpConnection.open_active(local, remote, iss=iss, now=now, config=config)

    def open_passive(
        self,
        local: Endpoint,
        remote: Endpoint,
        syn: TcpRepr,
        *,
        iss: int,
        now: float,
        config: TcpConfig,
    ) -> TcpConnection:
        return TcpConnection.open_passive(local, remote, syn, iss=iss, now=now, config=config)


class TcpListener:
    """A listening TCP port (``socket.listen``): completed connections wait for :meth:`accept`.

    Up to ``syn_backlog`` connections may be half-open (SYN received, SYN-ACK
    sent) and up to ``backlog`` completed ones may wait for ``accept``; a SYN
    beyond either bound is dropped (counted as "syn backlog full"), so the
    client retries later, as Linux does without SYN cookies.
    """

    def __init__(
        self, interface: Interface, address: IPAddress, port: int, backlog: int, syn_backlog: int
    ) -> None:
        self._interface = interface
        self.address = address
        self.port = port
        self.backlog = max(1, backlog)
        self.syn_backlog = max(1, syn_backlog)
        self._half_open: set[TcpConnection] = set()
        self._ready: collections.deque[TcpConnection] = collections.deque()
        self.closed = False

    def __repr__(self) -> str:
        return (
            f"<TcpListener {self.address}:{self.port} half_open={len(self._half_open)} "
            f"ready={len(self._ready)}{' closed' if self.closed else ''}>"
        )

    @property
    def local(self) -> Endpoint:
        return (self.address, self.port)

    def readable(self) -> bool:
        return bool(self._ready)

    def accept(self) -> TcpConnection | None:
        """The oldest established connection not yet accepted, or None."""
        if self.closed:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return self._ready.popleft() if self._ready else None

    def close(self) -> None:
        """Stop listening; connections not yet accepted are aborted (RST), as on Linux."""
        if self.closed:
            return
        self.closed = True
        self._interface._close_listener(self)

    def _has_room(self) -> bool:
        return len(self._half_open) < self.syn_backlog and len(self._ready) < self.backlog


ChangedSocket: TypeAlias = "TcpConnection | TcpListener | UdpSocket | Interceptor"
_ConnectionKey: TypeAlias = tuple[IPAddress, int, IPAddress, int]
# A queued IP packet waiting for its next hop's MAC: the IP bytes and GSO info.
_Waiting: TypeAlias = tuple[bytes, "GsoInfo | None"]


def _eui64_link_local(mac: EthernetAddress) -> ipaddress.IPv6Address:
    """fe80::/64 with the modified EUI-64 identifier of ``mac`` (RFC 4291 appendix A)."""
    octets = mac.octets
    identifier = bytes((octets[0] ^ 0x02,)) + octets[1:3] + b"\xff\xfe" + octets[3:6]
    return ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + identifier)


def _solicited_node(address: ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    """ff02::1:ffXX:XXXX, the group a node joins for each of its addresses (RFC 4291 2.7.1)."""
    return ipaddress.IPv6Address(
        int(ipaddress.IPv6Address("ff02::1:ff00:0")) | int(address) & 0xFFFFFF
    )


def _multicast_mac(address: IPAddress) -> EthernetAddress:
    """The Ethernet group address of an IP multicast group (RFC 1112 6.4, RFC 2464 7)."""
    if isinstance(address, ipaddress.IPv6Address):
        return EthernetAddress(b"\x33\x33" + address.packed[12:])
    return EthernetAddress(
        b"\x01\x00\x5e" + bytes((address.packed[1] & 0x7F,)) + address.packed[2:]
    )


def _unspecified(family_of: IPAddress) -> IPAddress:
    return _UNSPECIFIED_V4 if family_of.version == 4 else _UNSPECIFIED_V6


def _os_error(code: int, detail: str = "") -> OSError:
    message = os.strerror(code)
    return OSError(code, f"{message}: {detail}" if detail else message)


def _wire_reason(layer: str, exc: WireError) -> str:
    text = str(exc)
    if "checksum" in text:
        return f"{layer} bad checksum"
    if "truncated" in text:
        return f"{layer} truncated"
    return f"{layer} malformed"


def _skip_extensions(next_header: int, payload: bytes) -> tuple[int, bytes]:
    """Step over hop-by-hop and destination options headers to the next one that matters."""
    while next_header in _SKIPPED_EXTENSIONS:
        if len(payload) < 8 or len(payload) < (payload[1] + 1) * 8:
            raise _DropError("ipv6 extension header truncated")
        next_header, payload = payload[0], payload[(payload[1] + 1) * 8 :]
    return next_header, payload


class _DropError(Exception):
    """Raised inside the receive path to drop the packet under ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Interface:
    """One network interface: addresses, routes, neighbours, ICMP, UDP and TCP demultiplexing.

    ``mac`` is required for :attr:`Medium.ETHERNET`.  ``addresses`` are
    ``ipaddress.IPv4Interface`` / ``IPv6Interface`` values (address and
    prefix); an Ethernet interface also gets the EUI-64 link-local address.
    ``gateway4`` / ``gateway6`` add default routes.  ``tso`` says whether the
    link segments large TCP packets itself.  ``slaac`` sends Router
    Solicitations and takes addresses from Router Advertisements (Ethernet
    only).  ``rng`` chooses ephemeral ports,
    IPv4 identifications and the secret for initial sequence numbers (seed it
    for reproducible runs).  ``tcp`` is the TCP core (:mod:`netshim.ip.tcp`
    by default) and ``tcp_config`` the configuration it gets for each
    connection (None: its default).
    """

    def __init__(
        self,
        medium: Medium,
        *,
        mac: EthernetAddress | None = None,
        addresses: Iterable[IPInterface] = (),
        gateway4: ipaddress.IPv4Address | None = None,
        gateway6: ipaddress.IPv6Address | None = None,
        mtu: int = 1500,
        tso: bool = False,
        slaac: bool = True,
        rng: random.Random | None = None,
        tcp: TcpEngine | None = None,
        tcp_config: TcpConfig | None = None,
        syn_backlog: int = DEFAULT_SYN_BACKLOG,
    ) -> None:
        if medium is Medium.ETHERNET and mac is None:
            raise ValueError("an Ethernet interface needs a MAC address")
        if not 1280 <= mtu <= 65535:
            raise ValueError(f"mtu must be in 1280..65535 (IPv6's minimum), got {mtu}")
        self.medium = medium
        self.mac = mac
        self.mtu = mtu
        self.tso = tso
        self._rng = rng if rng is not None else random.Random()
        self._secret = self._rng.randbytes(16)
        self._tcp: TcpEngine = tcp if tcp is not None else StandardTcp()
        self.tcp_config = tcp_config if tcp_config is not None else TcpConfig()
        self.syn_backlog = syn_backlog
        self._addresses: list[IPInterface] = []
        # dst -> (next hop, source), forgotten whenever addresses or routes change.
        self._route_cache: dict[IPAddress, tuple[IPAddress, IPAddress] | None] = {}
        self._gso_infos: dict[tuple[int, int, int], GsoInfo] = {}
        # IP version -> (tcp_config, mtu, tso, the configuration a connection
        # gets): made once, not per connection (TcpConfig is frozen).
        self._connection_configs: dict[int, tuple[TcpConfig, int, bool, TcpConfig]] = {}
        # Per-packet answers that depend only on the address and on our
        # addresses, routes and interception (cleared when those change):
        # ipaddress's properties cost microseconds a call.
        self._accepts_v4_cache: dict[ipaddress.IPv4Address, bool] = {}
        self._broadcast_v4_cache: dict[ipaddress.IPv4Address, bool] = {}
        if mac is not None:
            self._addresses.append(ipaddress.IPv6Interface((_eui64_link_local(mac), 64)))
        for address in addresses:
            self.add_address(address)
        self._routes: list[Route] = []
        if gateway4 is not None:
            self._routes.append(Route(ipaddress.IPv4Network("0.0.0.0/0"), gateway4))
        if gateway6 is not None:
            self._routes.append(Route(ipaddress.IPv6Network("::/0"), gateway6))
        self._router6: ipaddress.IPv6Address | None = None
        self.hop_limit = 64
        self.neighbors: NeighborCache[_Waiting] = NeighborCache()
        self.reassembler = Reassembler()
        #: Packets dropped, by reason ("ipv4 bad checksum", "udp port unreachable"...).
        self.dropped: collections.Counter[str] = collections.Counter()
        self._out: list[OutgoingPacket] = []
        self._connections: dict[_ConnectionKey, TcpConnection] = {}
        # With visit_due_only(): the connections transmit() visits next (given
        # work since the last pass), and a heap of (deadline, tie, key) for
        # their timers, the earliest per connection in _scheduled.
        self._due: dict[TcpConnection, _ConnectionKey] | None = None
        self._key_of: dict[TcpConnection, _ConnectionKey] = {}
        self._timers: list[tuple[float, int, TcpConnection]] = []
        self._scheduled: dict[TcpConnection, float] = {}
        self._timer_tie = 0
        self._listener_of: dict[TcpConnection, TcpListener] = {}
        self._listeners: dict[tuple[IPAddress, int], TcpListener] = {}
        self._udp: dict[tuple[IPAddress, int], UdpSocket] = {}
        self._changed: set[ChangedSocket] = set()
        self._interceptor: Interceptor | None = None
        self._identification = self._rng.randrange(0x10000)
        #: Limits the ICMP errors this interface sends.
        self.icmp_limiter = TokenBucket()
        # Router Solicitations go out from the first transmit() on.
        self._router_solicitations = 0
        self._next_router_solicitation: float | None = (
            0.0 if slaac and medium is Medium.ETHERNET else None
        )

    def __repr__(self) -> str:
        addresses = " ".join(str(address) for address in self.addresses)
        return f"<Interface {self.medium.value} mac={self.mac} [{addresses}] mtu={self.mtu}>"

    # Configuration.

    @property
    def addresses(self) -> tuple[IPInterface, ...]:
        """Our addresses with their prefixes (change them with :meth:`add_address`)."""
        return tuple(self._addresses)

    @property
    def routes(self) -> tuple[Route, ...]:
        """Routes beyond the on-link prefixes (change them with :meth:`add_route`)."""
        return tuple(self._routes)

    @property
    def router6(self) -> ipaddress.IPv6Address | None:
        """The default router learnt from Router Advertisements, if any."""
        return self._router6

    def add_address(self, address: IPInterface) -> None:
        """Take ``address`` (an ``IPv4Interface`` or ``IPv6Interface``) as one of ours."""
        if not isinstance(address, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
            raise TypeError("address must be an ipaddress.IPv4Interface or IPv6Interface")
        if address not in self._addresses:
            self._addresses.append(address)
            self._forget_routes()

    def remove_address(self, address: IPInterface) -> None:
        """Stop using ``address`` (a DHCP lease ended, say); a no-op if not ours."""
        if address in self._addresses:
            self._addresses.remove(address)
            self._forget_routes()

    def add_route(self, network: IPNetwork, gateway: IPAddress | None = None) -> None:
        """Send packets for ``network`` to ``gateway`` (None: on-link); longest prefix wins."""
        self._routes.append(Route(network, gateway))
        self._forget_routes()

    def remove_route(self, network: IPNetwork) -> None:
        """Forget every route for exactly ``network``."""
        self._routes = [route for route in self._routes if route.network != network]
        self._forget_routes()

    def _forget_routes(self) -> None:
        self._route_cache.clear()
        self._accepts_v4_cache.clear()
        self._broadcast_v4_cache.clear()

    def has_address(self, address: IPAddress) -> bool:
        return any(ours.ip == address for ours in self.addresses)

    def addresses_of(self, version: int) -> list[IPAddress]:
        return [ours.ip for ours in self.addresses if ours.version == version]

    # The driver's side.

    def intercept(self, **limits: int) -> Interceptor:
        """Take packets for every unicast destination, and hand what nobody serves to the result.

        See :mod:`netshim.ip.intercept`; ``limits`` are :class:`Interceptor`'s
        ``max_pending``, ``max_datagrams`` and ``max_datagram_bytes``.  Calling
        it again returns the same interceptor.
        """
        if self._interceptor is None:
            self._interceptor = Interceptor(self, **limits)
            self._forget_routes()
        return self._interceptor

    def take_changed(self) -> set[ChangedSocket]:
        """Sockets whose readiness may have changed since the last call (then forgotten)."""
        changed, self._changed = self._changed, set()
        return changed

    def visit_due_only(self) -> None:
        """Let :meth:`transmit` and :meth:`deadline` skip connections with nothing due.

        By default every pass asks every connection (thousands in TIME-WAIT
        cost a pass milliseconds).  After this call a pass visits only the
        connections the interface gave work (a segment, an ICMP error, a
        handshake) or that :meth:`touch` named since the last pass, and those
        whose timers fall due.  The caller promises to :meth:`touch` every
        connection whose socket calls (``send``, ``receive``, ``shutdown``,
        ``abort``) it makes.
        """
        if self._due is None:
            self._key_of = {c: key for key, c in self._connections.items()}
            self._due = dict(self._key_of)

    def touch(self, connection: TcpConnection) -> None:
        """A socket call gave ``connection`` work: the next pass visits it."""
        if self._due is not None:
            key = self._key_of.get(connection)
            if key is not None:
                self._due[connection] = key

    # Keyed by the connection (an identity hash), not by its addresses and
    # ports: an ipaddress object's hash is a Python call.
    def _mark_due(self, key: _ConnectionKey, connection: TcpConnection) -> None:
        if self._due is not None:
            self._due[connection] = key
            self._key_of[connection] = key

    def _schedule(self, connection: TcpConnection, now: float) -> None:
        """After a visit: when the connection is next due (its timers, or at once)."""
        assert self._due is not None
        key = self._key_of.get(connection)
        if key is None:
            self._scheduled.pop(connection, None)
            return
        when = connection.deadline()
        if when is None:
            return
        if when <= now:
            self._due[connection] = key
            return
        scheduled = self._scheduled.get(connection)
        if scheduled is None or when < scheduled:
            self._scheduled[connection] = when
            self._timer_tie += 1
            heapq.heappush(self._timers, (when, self._timer_tie, connection))

    def _take_due(self, now: float) -> list[tuple[_ConnectionKey, TcpConnection]]:
        assert self._due is not None
        taken, self._due = self._due, {}
        timers, scheduled, key_of = self._timers, self._scheduled, self._key_of
        # A connection may have finished since it was marked.
        due = {c: key for c, key in taken.items() if c in key_of}
        while timers and timers[0][0] <= now:
            when, _, connection = heapq.heappop(timers)
            if scheduled.get(connection) == when:
                del scheduled[connection]
            key = key_of.get(connection)
            if key is not None and connection not in due:
                due[connection] = key
        if len(timers) > 64 and len(timers) > 4 * len(scheduled):
            # Mostly entries of finished connections: keep the live ones.
            self._timers = []
            for connection, when in scheduled.items():
                self._timer_tie += 1
                self._timers.append((when, self._timer_tie, connection))
            heapq.heapify(self._timers)
        return [(key, c) for c, key in due.items()]

    def _next_timer(self) -> float | None:
        timers, scheduled = self._timers, self._scheduled
        # Entries of finished connections, or overtaken by an earlier one, go.
        while timers:
            when, _, connection = timers[0]
            if scheduled.get(connection) == when and connection in self._key_of:
                return when
            heapq.heappop(timers)
        return None

    def deadline(self) -> float | None:
        """When :meth:`transmit` must be called next even if nothing arrives (None: never)."""
        # Asked after every burst: one pass, no lists.
        earliest = self._next_router_solicitation
        for when in (self.neighbors.deadline(), self.reassembler.deadline()):
            if when is not None and (earliest is None or when < earliest):
                earliest = when
        due = self._due
        visited = self._connections.values() if due is None else due
        for connection in visited:
            when = connection.deadline()
            if when is not None and (earliest is None or when < earliest):
                earliest = when
        if due is not None:
            when = self._next_timer()
            if when is not None and (earliest is None or when < earliest):
                earliest = when
        return earliest

    def quiet(self) -> bool:
        """Nothing queued, no connection, no timer: :meth:`transmit` would return nothing.

        For a driver that would otherwise run a transmit pass on an idle
        interface (a stack's loopback) on every socket call.
        """
        return (
            not self._out
            and not self._connections
            and self._next_router_solicitation is None
            and self.neighbors.deadline() is None
            and not len(self.reassembler)
        )

    def transmit(self, now: float) -> list[OutgoingPacket]:
        """Run due timers, collect every connection's segments, and return all that is to send."""
        self._run_timers(now)
        selective = self._due is not None
        visits = self._take_due(now) if selective else list(self._connections.items())
        for key, connection in visits:
            # The core's contract: after anything that gives it work, its
            # deadline is the time of that call; otherwise poll() has nothing.
            due = connection.deadline()
            segments = connection.poll(now) if due is not None and due <= now else []
            for segment in segments:
                self._send_tcp(
                    connection.local, connection.remote, segment, now, connection.send_mss
                )
            if segments:
                self._changed.add(connection)
            self._settle(key, connection)
            if selective:
                self._schedule(connection, now)
        out, self._out = self._out, []
        return out

    def receive(self, data: bytes, now: float, *, checksum_verified: bool = False) -> None:
        """Take one frame (Ethernet) or IP packet (IP) from the link.

        ``checksum_verified`` says the link has checked (or need not check)
        TCP and UDP checksums: a TUN/TAP with ``IFF_VNET_HDR`` marks packets
        whose checksum the kernel left partial (NEEDS_CSUM) or validated
        (DATA_VALID).  Never raises for bad bytes: they are counted in
        :attr:`dropped`.
        """
        try:
            if self.medium is Medium.ETHERNET:
                self._receive_ethernet(bytes(data), now, checksum_verified)
            else:
                self._receive_ip(bytes(data), now, checksum_verified)
        except _DropError as drop:
            self.dropped[drop.reason] += 1
        except WireError as exc:
            self.dropped[_wire_reason("packet", exc)] += 1
        except Exception:
            # A bug, not bad input (that is counted above); one packet is lost
            # and the interface keeps going, as DESIGN decision 11 asks.
            _logger.exception("interface failed on a received packet (dropped)")
            self.dropped["internal error"] += 1

    # Sockets.

    def tcp_connect(
        self, remote: Endpoint, *, local: Endpoint | None = None, now: float
    ) -> TcpConnection:
        """Start a connection to ``remote`` (its SYN leaves at the next :meth:`transmit`).

        ``local`` picks the address and port (port 0: ephemeral).  Raises
        ``OSError``: ``ENETUNREACH`` without a route, ``EADDRNOTAVAIL`` for an
        address that is not ours or no free ephemeral port, ``EADDRINUSE`` when
        the four-tuple exists, ``EINVAL`` for mixed families.
        """
        remote_address, remote_port = remote
        route = self._route(remote_address)
        if route is None:
            raise _os_error(errno.ENETUNREACH, str(remote_address))
        if local is None or local[0].is_unspecified:
            local_address = route[1]
        else:
            local_address = local[0]
            if local_address.version != remote_address.version:
                raise _os_error(errno.EINVAL, "local and remote address families differ")
            if not self.has_address(local_address):
                raise _os_error(errno.EADDRNOTAVAIL, str(local_address))
        port = local[1] if local is not None else 0
        if port:
            if (local_address, port, remote_address, remote_port) in self._connections:
                raise _os_error(errno.EADDRINUSE)
        else:
            port = self._ephemeral_tcp_port(local_address, remote_address, remote_port)
        local_end: Endpoint = (local_address, port)
        iss = self._tcp.initial_sequence_number(self._secret, local_end, remote, now)
        connection = self._tcp.open_active(
            local_end, remote, iss=iss, now=now, config=self._connection_config(remote_address)
        )
        key: _ConnectionKey = (local_address, port, remote_address, remote_port)
        self._connections[key] = connection
        self._mark_due(key, connection)
        return connection

    def tcp_listen(self, address: IPAddress, port: int, backlog: int = 128) -> TcpListener:
        """Listen on ``address`` (unspecified: every address of that family) and ``port``.

        Port 0 picks an ephemeral port.  Raises ``EADDRINUSE`` when a listener
        already covers the address and port, ``EADDRNOTAVAIL`` for an
        address that is not ours.  IPv6 ``::`` listens for IPv6 only
        (``IPV6_V6ONLY``).
        """
        self._check_local_address(address)
        if port == 0:
            port = self._free_port(lambda p: not self._listener_conflict(address, p))
        elif self._listener_conflict(address, port):
            raise _os_error(errno.EADDRINUSE)
        listener = TcpListener(self, address, port, backlog, min(self.syn_backlog, backlog * 2))
        self._listeners[(address, port)] = listener
        return listener

    def udp_bind(self, address: IPAddress, port: int = 0) -> UdpSocket:
        """Bind a UDP socket; port 0 picks an ephemeral port.

        Raises ``EADDRINUSE`` when another socket covers the address and port
        (no ``SO_REUSEADDR`` sharing), ``EADDRNOTAVAIL`` for an address that is
        not ours.  The unspecified address receives for every address of its
        family, broadcasts included.
        """
        self._check_local_address(address)
        if port == 0:
            port = self._free_port(lambda p: not self._udp_conflict(address, p))
        elif self._udp_conflict(address, port):
            raise _os_error(errno.EADDRINUSE)
        sock = UdpSocket(self, (address, port))
        self._udp[(address, port)] = sock
        return sock

    def connections(self) -> list[TcpConnection]:
        """Every TCP connection the interface demultiplexes to (half-open ones included)."""
        return list(self._connections.values())

    def _connection_config(self, remote: IPAddress) -> TcpConfig:
        """:attr:`tcp_config` with the MSS this interface's MTU allows (and TSO's payload)."""
        config, mtu, tso, version = self.tcp_config, self.mtu, self.tso, remote.version
        cached = self._connection_configs.get(version)
        if cached is not None and cached[0] is config and cached[1] == mtu and cached[2] == tso:
            return cached[3]
        header = (20 if version == 4 else 40) + 20
        changes: dict[str, Any] = {"mss": min(config.mss, mtu - header)}
        if tso and config.max_segment_payload is None:
            # 64 KiB of IP, less the largest IP and TCP headers.
            changes["max_segment_payload"] = 0xFFFF - 40 - 60
        made = dataclasses.replace(config, **changes)
        self._connection_configs[version] = (config, mtu, tso, made)
        return made

    def _check_local_address(self, address: IPAddress) -> None:
        if not address.is_unspecified and not self.has_address(address):
            raise _os_error(errno.EADDRNOTAVAIL, str(address))

    def _free_port(self, is_free: Any) -> int:
        span = len(EPHEMERAL_PORTS)
        start = self._rng.randrange(span)
        for step in range(span):
            port = EPHEMERAL_PORTS[(start + step) % span]
            if is_free(port):
                return port
        raise _os_error(errno.EADDRNOTAVAIL, "no free ephemeral port")

    def _ephemeral_tcp_port(self, local: IPAddress, remote: IPAddress, remote_port: int) -> int:
        def is_free(port: int) -> bool:
            return (local, port, remote, remote_port) not in self._connections and not (
                self._listener_conflict(local, port)
            )

        return self._free_port(is_free)

    def _listener_conflict(self, address: IPAddress, port: int) -> bool:
        return any(
            other_port == port
            and other.version == address.version
            and (other == address or other.is_unspecified or address.is_unspecified)
            for other, other_port in self._listeners
        )

    def _udp_conflict(self, address: IPAddress, port: int) -> bool:
        return any(
            other_port == port
            and other.version == address.version
            and (other == address or other.is_unspecified or address.is_unspecified)
            for other, other_port in self._udp
        )

    def _close_listener(self, listener: TcpListener) -> None:
        self._listeners.pop((listener.address, listener.port), None)
        for connection in [*listener._half_open, *listener._ready]:
            abort = getattr(connection, "abort", None)
            if abort is not None:
                abort()
                self.touch(connection)
            self._listener_of.pop(connection, None)
        listener._half_open.clear()
        listener._ready.clear()

    def _mark_changed(self, sock: object) -> None:
        if isinstance(sock, TcpListener | UdpSocket):
            self._changed.add(sock)

    def _udp_close(self, sock: UdpSocket) -> None:
        if self._udp.get(sock.local) is sock:
            del self._udp[sock.local]

    def _udp_send(self, sock: UdpSocket, payload: bytes, remote: Endpoint, now: float) -> None:
        remote_address, remote_port = remote
        if remote_address.version != sock.local[0].version:
            raise _os_error(errno.EAFNOSUPPORT, "address family of the destination")
        if not 0 < remote_port <= 0xFFFF:
            raise _os_error(errno.EINVAL, f"port {remote_port}")
        route = self._route(remote_address)
        if route is None:
            raise _os_error(errno.ENETUNREACH, str(remote_address))
        source = route[1] if sock.local[0].is_unspecified else sock.local[0]
        header = 20 if remote_address.version == 4 else 40
        if header + 8 + len(payload) > self.mtu:
            raise _os_error(errno.EMSGSIZE, f"{len(payload)} bytes over an MTU of {self.mtu}")
        datagram = UdpRepr(sock.local[1], remote_port, payload).emit(source, remote_address)
        self._send_ip(source, remote_address, IpProtocol.UDP, datagram, now)

    # Timers.

    def _run_timers(self, now: float) -> None:
        probes, failed = self.neighbors.poll(now)
        for address in probes:
            self._probe_neighbor(address, now)
        for _address, packets in failed:
            for ip_bytes, _gso in packets:
                self._neighbor_failed(ip_bytes, now)
        # Run on every transmit pass: nothing to expire is the usual case.
        if len(self.reassembler):
            expired = self.reassembler.expire(now)
            if expired:
                self.dropped["reassembly timeout"] += expired
        if self._next_router_solicitation is not None and now >= self._next_router_solicitation:
            self._router_solicitations += 1
            if self._router_solicitations >= ROUTER_SOLICITATIONS:
                self._next_router_solicitation = None
            else:
                self._next_router_solicitation = now + ROUTER_SOLICITATION_INTERVAL
            self._send_router_solicitation(now)

    def _forget(self, key: _ConnectionKey, connection: TcpConnection) -> None:
        """Drop ``connection`` (finished, or a TIME-WAIT a new SYN ends) from every table."""
        del self._connections[key]
        self._key_of.pop(connection, None)
        self._scheduled.pop(connection, None)
        self._changed.add(connection)
        listener = self._listener_of.pop(connection, None)
        if listener is not None:
            listener._half_open.discard(connection)
            if connection in listener._ready:
                listener._ready.remove(connection)

    def _settle(self, key: _ConnectionKey, connection: TcpConnection) -> None:
        """Move a listener's connection once it is established; forget finished ones."""
        listener = self._listener_of.get(connection)
        if connection.finished:
            self._forget(key, connection)
            return
        if listener is not None and connection.established and connection in listener._half_open:
            listener._half_open.discard(connection)
            listener._ready.append(connection)
            del self._listener_of[connection]
            self._changed.add(listener)

    # Receiving.

    def _receive_ethernet(self, data: bytes, now: float, verified: bool) -> None:
        try:
            frame = EthernetRepr.parse(data)
        except WireError as exc:
            raise _DropError(_wire_reason("ethernet", exc)) from None
        if frame.dst_addr != self.mac and not frame.dst_addr.is_multicast:
            raise _DropError("ethernet not for us")
        if frame.ethertype == EtherType.ARP:
            self._receive_arp(frame.payload, now)
        elif frame.ethertype == EtherType.IPV4:
            self._receive_ipv4(frame.payload, now, verified)
        elif frame.ethertype == EtherType.IPV6:
            self._receive_ipv6(frame.payload, now, verified, frame.src_addr)
        else:
            raise _DropError("unknown ethertype")

    def _receive_ip(self, data: bytes, now: float, verified: bool) -> None:
        version = data[0] >> 4 if data else 0
        if version == 4:
            self._receive_ipv4(data, now, verified)
        elif version == 6:
            self._receive_ipv6(data, now, verified, None)
        else:
            raise _DropError("unknown ip version")

    def _receive_arp(self, data: bytes, now: float) -> None:
        assert self.mac is not None
        try:
            arp = ArpRepr.parse(data)
        except WireError as exc:
            raise _DropError(_wire_reason("arp", exc)) from None
        sender_ip, sender_mac = arp.sender_protocol_addr, arp.sender_hardware_addr
        for_us = self.has_address(arp.target_protocol_addr)
        # RFC 826's merge: refresh a known sender, add one that asks us.
        if (
            not sender_ip.is_unspecified
            and not sender_mac.is_multicast
            and (for_us or sender_ip in self.neighbors or self.neighbors.is_pending(sender_ip))
        ):
            self._flush_waiting(self.neighbors.learn(sender_ip, sender_mac, now), sender_mac)
        if arp.operation == ArpOperation.REQUEST and for_us:
            reply = ArpRepr(
                ArpOperation.REPLY,
                self.mac,
                arp.target_protocol_addr,
                sender_mac,
                sender_ip,
            )
            self._queue(
                OutgoingPacket(
                    EthernetRepr(sender_mac, self.mac, EtherType.ARP, reply.emit()).emit()
                )
            )
        elif arp.operation not in (ArpOperation.REQUEST, ArpOperation.REPLY):
            raise _DropError("arp unknown operation")

    def _accepts_ipv4(self, address: ipaddress.IPv4Address) -> bool:
        cache = self._accepts_v4_cache
        accepted = cache.get(address)
        if accepted is None:
            if len(cache) >= _MAX_CACHED_ROUTES:
                cache.clear()
            accepted = cache[address] = self._find_accepts_ipv4(address)
        return accepted

    def _find_accepts_ipv4(self, address: ipaddress.IPv4Address) -> bool:
        if address == _LIMITED_BROADCAST:
            return True
        if self._interceptor is not None and not (
            address.is_multicast or address.is_unspecified or self._is_broadcast_v4(address)
        ):
            return True
        for ours in self.addresses:
            if isinstance(ours, ipaddress.IPv4Interface) and (
                ours.ip == address
                or (ours.network.prefixlen < 31 and address == ours.network.broadcast_address)
            ):
                return True
        return False

    def is_broadcast_v4(self, address: ipaddress.IPv4Address) -> bool:
        """Whether ``address`` is a broadcast address on this interface.

        The limited broadcast, or the directed broadcast of one of its IPv4
        networks (a /31 or /32 has none); a group address is not.  Linux asks
        for ``SO_BROADCAST`` before a datagram goes to one (``EACCES``).
        """
        return not address.is_multicast and self._is_broadcast_v4(address)

    def _is_broadcast_v4(self, address: ipaddress.IPv4Address) -> bool:
        cache = self._broadcast_v4_cache
        broadcast = cache.get(address)
        if broadcast is None:
            if len(cache) >= _MAX_CACHED_ROUTES:
                cache.clear()
            broadcast = cache[address] = self._find_broadcast_v4(address)
        return broadcast

    def _find_broadcast_v4(self, address: ipaddress.IPv4Address) -> bool:
        return (
            address == _LIMITED_BROADCAST
            or address.is_multicast
            or any(
                isinstance(ours, ipaddress.IPv4Interface)
                and ours.network.prefixlen < 31
                and address == ours.network.broadcast_address
                for ours in self.addresses
            )
        )

    def _receive_ipv4(self, data: bytes, now: float, verified: bool) -> None:
        if len(data) >= _IPV4_HEADER_LEN and data[0] == _IPV4_PLAIN_FIRST_BYTE:
            # The common packet (no options, not a fragment) read with one
            # unpack; anything else, valid or not, takes Ipv4Repr.parse below,
            # which also names what is wrong.
            total_len, flags, protocol, src_raw, dst_raw = _IPV4_FIELDS.unpack_from(data)
            if (
                _IPV4_HEADER_LEN <= total_len <= len(data)
                and not flags & _IPV4_UNUSUAL_FLAGS
                and ones_complement_sum(data[:_IPV4_HEADER_LEN]) == 0xFFFF
            ):
                dst = _ipv4_address(dst_raw)
                if not self._accepts_ipv4(dst):
                    raise _DropError("ipv4 not for us")
                raw = data if total_len == len(data) else data[:total_len]
                self._receive_upper(
                    _ipv4_address(src_raw),
                    dst,
                    protocol,
                    raw[_IPV4_HEADER_LEN:],
                    raw,
                    now,
                    verified,
                )
                return
        try:
            packet = Ipv4Repr.parse(data)
        except WireError as exc:
            raise _DropError(_wire_reason("ipv4", exc)) from None
        if not self._accepts_ipv4(packet.dst_addr):
            raise _DropError("ipv4 not for us")
        raw = data[: packet.buffer_len()]
        if packet.more_fragments or packet.fragment_offset:
            result = self.reassembler.add(packet, now)
            if result.dropped is not None:
                self.dropped[result.dropped] += 1
            if result.packet is None:
                return
            packet = result.packet
            raw = packet.emit()
        self._receive_upper(
            packet.src_addr, packet.dst_addr, packet.protocol, packet.payload, raw, now, verified
        )

    def _accepts_ipv6(self, address: ipaddress.IPv6Address) -> bool:
        if self._interceptor is not None and not (address.is_multicast or address.is_unspecified):
            return True
        if address.is_multicast:
            return address in (_ALL_NODES, ipaddress.IPv6Address("ff01::1")) or any(
                address == _solicited_node(ours.ip)
                for ours in self.addresses
                if isinstance(ours, ipaddress.IPv6Interface)
            )
        return self.has_address(address)

    def _receive_ipv6(
        self, data: bytes, now: float, verified: bool, source_mac: EthernetAddress | None
    ) -> None:
        try:
            packet = Ipv6Repr.parse(data)
        except WireError as exc:
            raise _DropError(_wire_reason("ipv6", exc)) from None
        if not self._accepts_ipv6(packet.dst_addr):
            raise _DropError("ipv6 not for us")
        raw = data[: packet.buffer_len()]
        next_header, payload = _skip_extensions(packet.next_header, packet.payload)
        reassembled = False
        if next_header == IpProtocol.IPV6_FRAGMENT:
            try:
                fragment = Ipv6Fragment.parse(packet, payload)
            except WireError as exc:
                raise _DropError(_wire_reason("ipv6 fragment", exc)) from None
            result = self.reassembler.add_ipv6(fragment, now)
            if result.dropped is not None:
                self.dropped[result.dropped] += 1
            if result.packet is None:
                return
            packet, raw, reassembled = result.packet, result.packet.emit(), True
            next_header, payload = _skip_extensions(packet.next_header, packet.payload)
        if next_header == IpProtocol.ICMPV6:
            self._receive_icmpv6(packet, payload, raw, now, reassembled)
            return
        self._receive_upper(
            packet.src_addr, packet.dst_addr, next_header, payload, raw, now, verified
        )

    def _receive_upper(
        self,
        src: IPAddress,
        dst: IPAddress,
        protocol: int,
        payload: bytes,
        raw: bytes,
        now: float,
        verified: bool,
    ) -> None:
        if protocol == IpProtocol.TCP:
            self._receive_tcp(src, dst, payload, raw, now, verified)
        elif protocol == IpProtocol.UDP:
            self._receive_udp(src, dst, payload, raw, now, verified)
        elif protocol == IpProtocol.ICMP and isinstance(src, ipaddress.IPv4Address):
            assert isinstance(dst, ipaddress.IPv4Address)
            self._receive_icmpv4(src, dst, payload, now)
        else:
            raise _DropError("unknown protocol")

    # ICMP.

    def _receive_icmpv4(
        self, src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address, payload: bytes, now: float
    ) -> None:
        try:
            icmp = Icmpv4Repr.parse(payload)
        except WireError as exc:
            raise _DropError(_wire_reason("icmp", exc)) from None
        if icmp.type == Icmpv4Type.ECHO_REQUEST:
            if self._is_broadcast_v4(dst):
                # Linux's icmp_echo_ignore_broadcasts (on by default): smurf attacks.
                raise _DropError("icmp echo to broadcast")
            self._send_ip(dst, src, IpProtocol.ICMP, icmp.echo_reply().emit(), now)
        elif (error := icmpv4_error(icmp)) is not None:
            self._quoted_error(icmp.payload, error, now)
        elif icmp.type != Icmpv4Type.ECHO_REPLY:
            raise _DropError("icmp type ignored")

    def _receive_icmpv6(
        self, packet: Ipv6Repr, payload: bytes, raw: bytes, now: float, reassembled: bool
    ) -> None:
        try:
            icmp = Icmpv6Repr.parse(payload, packet.src_addr, packet.dst_addr)
        except WireError as exc:
            raise _DropError(_wire_reason("icmpv6", exc)) from None
        src, dst = packet.src_addr, packet.dst_addr
        kind = icmp.type
        try:
            if kind == Icmpv6Type.ECHO_REQUEST:
                if dst.is_multicast:
                    raise _DropError("icmpv6 echo to multicast")
                self._send_ip(dst, src, IpProtocol.ICMPV6, icmp.echo_reply().emit(dst, src), now)
            elif (error := icmpv6_error(icmp)) is not None:
                self._quoted_error(icmp.payload, error, now)
            elif kind in (
                Icmpv6Type.NEIGHBOR_SOLICIT,
                Icmpv6Type.NEIGHBOR_ADVERT,
                Icmpv6Type.ROUTER_ADVERT,
                Icmpv6Type.ROUTER_SOLICIT,
                Icmpv6Type.REDIRECT,
            ):
                if packet.hop_limit != _NDP_HOP_LIMIT:
                    raise _DropError("ndp hop limit not 255")
                if reassembled:
                    # RFC 6980: neighbour discovery never comes in fragments.
                    raise _DropError("ndp in fragments")
                if self.medium is not Medium.ETHERNET:
                    raise _DropError("ndp on an ip interface")
                if kind == Icmpv6Type.NEIGHBOR_SOLICIT:
                    self._receive_neighbor_solicit(src, NeighborSolicit.from_icmp(icmp), now)
                elif kind == Icmpv6Type.NEIGHBOR_ADVERT:
                    self._receive_neighbor_advert(NeighborAdvert.from_icmp(icmp), now)
                elif kind == Icmpv6Type.ROUTER_ADVERT:
                    self._receive_router_advert(src, RouterAdvert.from_icmp(icmp), now)
                else:
                    raise _DropError(f"icmpv6 type {int(kind)} ignored")
            elif kind != Icmpv6Type.ECHO_REPLY:
                raise _DropError("icmpv6 type ignored")
        except WireError as exc:
            raise _DropError(_wire_reason("ndp", exc)) from None

    def _receive_neighbor_solicit(
        self, src: ipaddress.IPv6Address, solicit: NeighborSolicit, now: float
    ) -> None:
        assert self.mac is not None
        if not self.has_address(solicit.target):
            raise _DropError("ndp solicit for another address")
        if src.is_unspecified:
            # Someone probes our address for duplicates (RFC 4862 5.4.3): defend it.
            answer_to, solicited = _ALL_NODES, False
        else:
            if solicit.source_lladdr is not None:
                learnt = self.neighbors.learn(src, solicit.source_lladdr, now)
                self._flush_waiting(learnt, solicit.source_lladdr)
            answer_to, solicited = src, True
        advert = NeighborAdvert(solicit.target, self.mac, solicited=solicited, override=True)
        self._send_ndp(solicit.target, answer_to, advert.to_icmp(), now)

    def _receive_neighbor_advert(self, advert: NeighborAdvert, now: float) -> None:
        if advert.target_lladdr is None:
            raise _DropError("ndp advert without link-layer address")
        learnt = self.neighbors.learn(advert.target, advert.target_lladdr, now)
        self._flush_waiting(learnt, advert.target_lladdr)

    def _receive_router_advert(
        self, src: ipaddress.IPv6Address, advert: RouterAdvert, now: float
    ) -> None:
        if src not in _LINK_LOCAL_V6:
            raise _DropError("ndp router advert not from link-local")
        # Heard from a router: stop soliciting.
        self._next_router_solicitation = None
        if advert.source_lladdr is not None:
            self._flush_waiting(
                self.neighbors.learn(src, advert.source_lladdr, now), advert.source_lladdr
            )
        if advert.hop_limit:
            self.hop_limit = advert.hop_limit
        if advert.router_lifetime:
            self._router6 = src
        elif self._router6 == src:
            self._router6 = None
        self._forget_routes()
        if advert.mtu is not None and 1280 <= advert.mtu < self.mtu:
            self.mtu = advert.mtu
        assert self.mac is not None
        identifier = int(_eui64_link_local(self.mac)) & (1 << 64) - 1
        for prefix in advert.prefixes:
            if (
                prefix.autonomous
                and prefix.prefix.prefixlen == 64
                and prefix.valid_lifetime > 0
                and prefix.prefix.network_address not in _LINK_LOCAL_V6
            ):
                address = ipaddress.IPv6Address(int(prefix.prefix.network_address) | identifier)
                self.add_address(ipaddress.IPv6Interface((address, 64)))

    def _quoted_error(self, quoted: bytes, error: IcmpError, now: float) -> None:
        """Deliver an ICMP error to the socket that sent the packet ``quoted``."""
        flow = quoted_flow(quoted)
        if flow is None:
            raise _DropError("icmp error quoting nothing of ours")
        self._flow_error(flow, error, now)

    def _flow_error(self, flow: QuotedFlow, error: IcmpError, now: float) -> None:
        local, remote = flow.local, flow.remote
        code, mtu = error.errno, error.mtu
        if flow.protocol == IpProtocol.TCP:
            connection = self._connections.get((*local, *remote))
            if connection is None:
                raise _DropError("icmp error for no connection")
            connection.on_icmp_error(code, now, mtu=mtu, seq=flow.seq)
            self._changed.add(connection)
            self._mark_due((*local, *remote), connection)
            self._settle((*local, *remote), connection)
            return
        sock = self._udp.get(local) or self._udp.get((_unspecified(local[0]), local[1]))
        if sock is None or sock.remote != remote:
            # Linux reports errors only to connected UDP sockets (without IP_RECVERR).
            raise _DropError("icmp error for no connected udp socket")
        if code != errno.EMSGSIZE:
            sock._set_error(code)
            self._changed.add(sock)

    def _send_port_unreachable(
        self, src: IPAddress, dst: IPAddress, raw: bytes, now: float
    ) -> None:
        """Answer a datagram for a closed port (never one sent to a group, RFC 1122 3.2.2)."""
        if src.is_multicast or src.is_unspecified:
            return
        if isinstance(dst, ipaddress.IPv4Address):
            if self._is_broadcast_v4(dst):
                return
            if not self.icmp_limiter.take(now):
                self.dropped["icmp rate limited"] += 1
                return
            message = Icmpv4Repr.dest_unreachable(Icmpv4Unreachable.PORT_UNREACHABLE, raw).emit()
            self._send_ip(dst, src, IpProtocol.ICMP, message, now)
        else:
            if dst.is_multicast:
                return
            if not self.icmp_limiter.take(now):
                self.dropped["icmp rate limited"] += 1
                return
            icmp6 = Icmpv6Repr.dest_unreachable(Icmpv6Unreachable.PORT_UNREACHABLE, raw)
            self._send_ip(dst, src, IpProtocol.ICMPV6, icmp6.emit(dst, src), now)

    # UDP and TCP.

    def _receive_udp(
        self,
        src: IPAddress,
        dst: IPAddress,
        payload: bytes,
        raw: bytes,
        now: float,
        verified: bool,
    ) -> None:
        try:
            datagram = UdpRepr.parse(payload, src, dst, verify_checksum=not verified)
        except WireError as exc:
            raise _DropError(_wire_reason("udp", exc)) from None
        source: Endpoint = (src, datagram.src_port)
        sock = self._udp.get((dst, datagram.dst_port)) or self._udp.get(
            (_unspecified(dst), datagram.dst_port)
        )
        if sock is None and self._interceptor is not None:
            if self._interceptor._offer_datagram(
                datagram.payload, source, (dst, datagram.dst_port)
            ):
                self._changed.add(self._interceptor)
            else:
                self.dropped["udp intercept queue full"] += 1
            return
        if sock is None or (sock.remote is not None and sock.remote != source):
            self.dropped["udp port unreachable"] += 1
            self._send_port_unreachable(src, dst, raw, now)
            return
        if not sock._deliver(datagram.payload, source):
            raise _DropError("udp receive queue full")
        self._changed.add(sock)

    def _receive_tcp(
        self,
        src: IPAddress,
        dst: IPAddress,
        payload: bytes,
        raw: bytes,
        now: float,
        verified: bool,
    ) -> None:
        if _is_group_or_unspecified(src):
            raise _DropError("tcp from a group address")
        if isinstance(dst, ipaddress.IPv4Address) and self._is_broadcast_v4(dst):
            raise _DropError("tcp to a broadcast address")
        try:
            segment = TcpRepr.parse(payload, src, dst, verify_checksum=not verified)
        except WireError as exc:
            raise _DropError(_wire_reason("tcp", exc)) from None
        key: _ConnectionKey = (dst, segment.dst_port, src, segment.src_port)
        connection = self._connections.get(key)
        if connection is not None and connection.accepts_new_syn(segment):
            # A new connection reusing the pair of one of ours in TIME-WAIT
            # (RFC 6191): the old one is forgotten and the SYN goes to the
            # listener or the interceptor, as Linux does.  A peer that
            # closed second may reuse its port at once: a connect-heavy
            # program behind `--isolate`, whose ephemeral ports wrap in
            # seconds, otherwise waited out our 2MSL on every reuse.
            self._forget(key, connection)
            connection = None
        if connection is not None:
            connection.on_segment(segment, now)
            self._changed.add(connection)
            self._mark_due(key, connection)
            self._settle(key, connection)
            return
        # A plain int: flag arithmetic on the enum is a Python call per operator.
        flags = int(segment.flags)
        listener = self._listeners.get((dst, segment.dst_port)) or self._listeners.get(
            (_unspecified(dst), segment.dst_port)
        )
        if listener is not None and flags & _TCP_SYN_ACK_RST == _TCP_SYN:
            if not listener._has_room():
                raise _DropError("tcp syn backlog full")
            local: Endpoint = (dst, segment.dst_port)
            remote: Endpoint = (src, segment.src_port)
            iss = self._tcp.initial_sequence_number(self._secret, local, remote, now)
            connection = self._tcp.open_passive(
                local, remote, segment, iss=iss, now=now, config=self._connection_config(src)
            )
            self._connections[key] = connection
            self._mark_due(key, connection)
            listener._half_open.add(connection)
            self._listener_of[connection] = listener
            self._settle(key, connection)
            return
        interceptor = self._interceptor
        if interceptor is not None and flags & _TCP_SYN_ACK_RST_FIN == _TCP_SYN:
            syn = InterceptedSyn(
                (dst, segment.dst_port), (src, segment.src_port), segment, raw, now
            )
            if interceptor._offer_syn(syn):
                self._changed.add(interceptor)
            else:
                # A retransmission of a SYN being dialled, or too many waiting.
                self.dropped["tcp syn intercepted already or backlog full"] += 1
            return
        self.dropped["tcp no connection"] += 1
        reset = self._tcp.reset_for_unexpected(segment)
        if reset is not None:
            self._send_ip(dst, src, IpProtocol.TCP, reset.emit(dst, src), now)

    def _accept_intercepted(self, syn: InterceptedSyn, now: float) -> TcpConnection:
        local, remote = syn.local, syn.remote
        key: _ConnectionKey = (local[0], local[1], remote[0], remote[1])
        if key in self._connections:
            raise _os_error(errno.EADDRINUSE, "the connection exists already")
        iss = self._tcp.initial_sequence_number(self._secret, local, remote, now)
        connection = self._tcp.open_passive(
            local, remote, syn.segment, iss=iss, now=now, config=self._connection_config(remote[0])
        )
        self._connections[key] = connection
        self._changed.add(connection)
        self._mark_due(key, connection)
        self._settle(key, connection)
        return connection

    def _send_tcp(
        self, local: Endpoint, remote: Endpoint, segment: TcpRepr, now: float, mss: int
    ) -> None:
        src, dst = local[0], remote[0]
        ip_header = 20 if isinstance(dst, ipaddress.IPv4Address) else 40
        payload = segment.payload
        if len(payload) <= mss and len(payload) + ip_header + 60 <= self.mtu:
            # Within the MSS and the MTU even with the longest options: one
            # packet, without adding up the options' lengths first.
            self._send_ip(src, dst, IpProtocol.TCP, segment.emit(src, dst), now)
            return
        # The options' bytes once per segment: their length is the header's.
        options = segment.options_bytes()
        tcp_header = _TCP_HEADER.size + len(options)
        # The connection's MSS already allows for its usual options and the
        # path MTU it learnt; the MTU bound covers a segment with more options.
        per_segment = max(1, min(self.mtu - ip_header - tcp_header, mss))
        if len(payload) <= per_segment:
            self._send_ip(src, dst, IpProtocol.TCP, segment.emit(src, dst), now)
            return
        # Larger than the MTU: one GSO packet per 64 KiB if the link segments,
        # else MTU-sized segments cut here.
        if self.tso:
            room = 0xFFFF - ip_header - tcp_header
            chunk = max(per_segment, room // per_segment * per_segment)
        else:
            chunk = per_segment
        view = memoryview(payload)
        offset = tcp_header // 4 << 12
        # Plain ints: flag arithmetic on the enum costs more than the rest
        # of a 64 KiB packet's header.
        segment_flags = int(segment.flags)
        syn = segment_flags & _TCP_SYN
        for start in range(0, len(payload), chunk):
            last = start + chunk >= len(payload)
            flags = segment_flags
            if not last:
                flags &= ~_TCP_FIN_PSH
            if start:
                flags &= ~_TCP_SYN
            seq = (segment.seq + start + (1 if start and syn else 0)) & 0xFFFF_FFFF
            data = view[start : start + chunk]
            if self.tso and len(data) > per_segment:
                # The kernel completes each segment's checksum: the header
                # carries the pseudo-header sum in its place, and the 64 KiB
                # are never summed (nor copied but once, into the packet).
                partial = pseudo_header_sum(src, dst, IpProtocol.TCP, tcp_header + len(data))
                header = _TCP_HEADER.pack(
                    segment.src_port,
                    segment.dst_port,
                    seq,
                    segment.ack,
                    offset | flags,
                    segment.window,
                    partial,
                    segment.urgent,
                )
                gso_key = (ip_header, per_segment, tcp_header)
                gso = self._gso_infos.get(gso_key)
                if gso is None:
                    if len(self._gso_infos) >= _MAX_CACHED_GSO_INFOS:
                        self._gso_infos.clear()
                    gso = self._gso_infos[gso_key] = GsoInfo(
                        GsoType.TCPV4 if ip_header == 20 else GsoType.TCPV6,
                        per_segment,
                        ip_header + tcp_header,
                        ip_header,
                    )
                self._send_ip(src, dst, IpProtocol.TCP, header + options, now, gso, body=data)
            else:
                piece = TcpRepr(
                    segment.src_port,
                    segment.dst_port,
                    seq,
                    segment.ack,
                    TcpFlags(flags),
                    segment.window,
                    segment.options,
                    bytes(data),
                    segment.urgent,
                )
                self._send_ip(src, dst, IpProtocol.TCP, piece.emit(src, dst), now)

    # Sending IP.

    def _route(self, dst: IPAddress) -> tuple[IPAddress, IPAddress] | None:
        """``(next hop, source address)`` for ``dst``, or None without a route."""
        try:
            return self._route_cache[dst]
        except KeyError:
            pass
        if len(self._route_cache) >= _MAX_CACHED_ROUTES:
            self._route_cache.clear()
        route = self._route_cache[dst] = self._find_route(dst)
        return route

    def _find_route(self, dst: IPAddress) -> tuple[IPAddress, IPAddress] | None:
        candidates = [ours for ours in self.addresses if ours.version == dst.version]
        if dst.version == 4 and (dst == _LIMITED_BROADCAST or dst.is_multicast):
            return dst, candidates[0].ip if candidates else _UNSPECIFIED_V4
        if not candidates:
            return None
        link_local = [ours for ours in candidates if ours.ip in _LINK_LOCAL_V6]
        others = [ours for ours in candidates if ours.ip not in _LINK_LOCAL_V6] or candidates
        if dst.version == 6 and (dst in _LINK_LOCAL_V6 or dst.is_multicast):
            return dst, (link_local or others)[0].ip
        on_link = [ours for ours in others if dst in ours.network]
        if on_link:
            best = max(on_link, key=lambda ours: ours.network.prefixlen)
            return dst, best.ip
        routes = [route for route in self._routes if dst in route.network]
        if dst.version == 6 and self._router6 is not None:
            routes.append(Route(ipaddress.IPv6Network("::/0"), self._router6))
        if routes:
            route = max(routes, key=lambda route: route.network.prefixlen)
            hop = route.gateway if route.gateway is not None else dst
            near = [ours for ours in others if hop in ours.network]
            if hop in _LINK_LOCAL_V6:
                return hop, others[0].ip
            return hop, (near or others)[0].ip
        if self.medium is Medium.IP:
            # A TUN device is point to point: whatever we send reaches the one peer.
            return dst, others[0].ip
        return None

    def _next_identification(self) -> int:
        self._identification = (self._identification + 1) & 0xFFFF
        return self._identification

    def _send_ip(
        self,
        src: IPAddress,
        dst: IPAddress,
        protocol: int,
        payload: bytes,
        now: float,
        gso: GsoInfo | None = None,
        *,
        hop_limit: int | None = None,
        body: memoryview | None = None,
    ) -> None:
        """Send ``payload`` (followed by ``body``, if given: a large TCP payload
        copied once, into the packet) from ``src`` to ``dst``."""
        route = self._route(dst)
        if route is None:
            self.dropped["no route"] += 1
            return
        next_hop = route[0]
        body_len = 0 if body is None else len(body)
        packet: Ipv4Repr | Ipv6Repr
        if (
            hop_limit is None
            and isinstance(src, ipaddress.IPv4Address)
            and isinstance(dst, ipaddress.IPv4Address)
            and _IPV4_HEADER_LEN + len(payload) + body_len <= _IPV4_MAX_LEN
        ):
            # What Ipv4Repr(src, dst, protocol, payload).emit() gives, without
            # building and validating one per packet.
            length = _IPV4_HEADER_LEN + len(payload) + body_len
            if gso is None and length > self.mtu:
                self.dropped["packet over mtu"] += 1
                return
            header = _IPV4_HEADER.pack(
                _IPV4_PLAIN_FIRST_BYTE,
                0,
                length,
                self._next_identification(),
                _IPV4_DONT_FRAGMENT,
                64,
                protocol,
                0,
                _ipv4_packed(src),
                _ipv4_packed(dst),
            )
            checksum = internet_checksum(header)
            packet_bytes = b"".join(
                (header[:10], checksum.to_bytes(2, "big"), header[12:], payload, body or b"")
            )
            self._send_packet(packet_bytes, dst, next_hop, gso, now)
            return
        if body is not None:
            payload += body
        if isinstance(src, ipaddress.IPv4Address) and isinstance(dst, ipaddress.IPv4Address):
            packet = Ipv4Repr(
                src,
                dst,
                protocol,
                payload,
                ttl=hop_limit or 64,
                identification=self._next_identification(),
            )
        elif isinstance(src, ipaddress.IPv6Address) and isinstance(dst, ipaddress.IPv6Address):
            packet = Ipv6Repr(src, dst, protocol, payload, hop_limit=hop_limit or self.hop_limit)
        else:
            raise ValueError(f"source {src} and destination {dst} are of different families")
        if gso is None and packet.buffer_len() > self.mtu:
            # Nothing is fragmented on the way out: an echo reply to a
            # reassembled jumbo ping, say, is dropped rather than sent whole.
            self.dropped["packet over mtu"] += 1
            return
        self._send_packet(packet.emit(), dst, next_hop, gso, now)

    def _send_packet(
        self, ip_bytes: bytes, dst: IPAddress, next_hop: IPAddress, gso: GsoInfo | None, now: float
    ) -> None:
        if self.medium is Medium.IP:
            self._queue(OutgoingPacket(ip_bytes, gso))
            return
        mac: EthernetAddress | None
        if isinstance(dst, ipaddress.IPv4Address) and self._is_broadcast_v4(dst):
            mac = _multicast_mac(dst) if dst.is_multicast else BROADCAST
        elif dst.is_multicast:
            mac = _multicast_mac(dst)
        else:
            mac = self.neighbors.lookup(next_hop, now)
        if mac is None:
            if self.neighbors.enqueue(next_hop, (ip_bytes, gso), now):
                self._probe_neighbor(next_hop, now)
            return
        self._queue(self._frame(ip_bytes, gso, mac))

    def _frame(self, ip_bytes: bytes, gso: GsoInfo | None, mac: EthernetAddress) -> OutgoingPacket:
        assert self.mac is not None
        ethertype = EtherType.IPV4 if ip_bytes[0] >> 4 == 4 else EtherType.IPV6
        frame = EthernetRepr(mac, self.mac, ethertype, ip_bytes).emit()
        return OutgoingPacket(frame, gso.shifted(14) if gso is not None else None)

    def _queue(self, packet: OutgoingPacket) -> None:
        if len(self._out) >= MAX_QUEUED_OUTPUT:
            self.dropped["output queue full"] += 1
            return
        self._out.append(packet)

    def _flush_waiting(self, waiting: list[_Waiting], mac: EthernetAddress) -> None:
        for ip_bytes, gso in waiting:
            self._queue(self._frame(ip_bytes, gso, mac))

    def _probe_neighbor(self, address: IPAddress, now: float) -> None:
        assert self.mac is not None
        route = self._route(address)
        source = route[1] if route is not None else None
        if isinstance(address, ipaddress.IPv4Address):
            sender = source if isinstance(source, ipaddress.IPv4Address) else _UNSPECIFIED_V4
            request = ArpRepr(
                ArpOperation.REQUEST, self.mac, sender, EthernetAddress(bytes(6)), address
            )
            self._queue(
                OutgoingPacket(
                    EthernetRepr(BROADCAST, self.mac, EtherType.ARP, request.emit()).emit()
                )
            )
        else:
            sender6 = source if isinstance(source, ipaddress.IPv6Address) else None
            if sender6 is None:
                return
            solicit = NeighborSolicit(address, self.mac)
            self._send_ndp(sender6, _solicited_node(address), solicit.to_icmp(), now)

    def _send_ndp(
        self, src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, icmp: Icmpv6Repr, now: float
    ) -> None:
        self._send_ip(
            src, dst, IpProtocol.ICMPV6, icmp.emit(src, dst), now, hop_limit=_NDP_HOP_LIMIT
        )

    def _send_router_solicitation(self, now: float) -> None:
        link_local = [
            ours.ip
            for ours in self.addresses
            if isinstance(ours, ipaddress.IPv6Interface) and ours.ip in _LINK_LOCAL_V6
        ]
        if not link_local:
            return
        self._send_ndp(link_local[0], _ALL_ROUTERS, RouterSolicit(self.mac).to_icmp(), now)

    def _neighbor_failed(self, ip_bytes: bytes, now: float) -> None:
        """Address resolution gave up: the sender hears "host unreachable", as from Linux."""
        self.dropped["neighbor unreachable"] += 1
        flow = quoted_flow(ip_bytes)
        if flow is None:
            return
        with contextlib.suppress(_DropError):
            self._flow_error(flow, IcmpError(errno.EHOSTUNREACH), now)
