"""ICMPv6 (RFC 4443) and the neighbour discovery messages built on it (RFC 4861, RFC 4862).

:class:`Icmpv6Repr` is any ICMPv6 message as type, code, the 32-bit word after
the checksum (``rest``: echo identifier and sequence number, the MTU of a
Packet Too Big, the flags of a Neighbor Advertisement...) and a body.  The
checksum covers a pseudo-header with the IP addresses (RFC 8200 section 8.1),
which is why :meth:`Icmpv6Repr.parse` and :meth:`Icmpv6Repr.emit` take them.

Neighbour discovery messages are values of their own
(:class:`NeighborSolicit`, :class:`NeighborAdvert`, :class:`RouterSolicit`,
:class:`RouterAdvert`) read from and turned into an :class:`Icmpv6Repr` with
``from_icmp`` and ``to_icmp``.  They keep the options a host acts on (source
and target link-layer address, prefix information, MTU); others are skipped,
so for them ``to_icmp(from_icmp(m)) == m`` holds only without unknown options.
An option of length zero is malformed (RFC 4861 section 4.6) and makes the
whole message a :class:`WireError`.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
from dataclasses import dataclass

from ._base import IPAddress, IpProtocol, WireError, check_bytes, check_range, need
from .checksum import internet_checksum, ones_complement_sum, pseudo_header_sum
from .ethernet import EthernetAddress

__all__ = [
    "HEADER_LEN",
    "MAX_QUOTE_LEN",
    "Icmpv6Repr",
    "Icmpv6Type",
    "Icmpv6Unreachable",
    "NeighborAdvert",
    "NeighborSolicit",
    "PrefixInformation",
    "RouterAdvert",
    "RouterSolicit",
]

HEADER_LEN = 8
# An error message must fit the IPv6 minimum MTU (RFC 4443 section 2.4 (c)):
# 1280 - 40 (IPv6) - 8 (ICMPv6).
MAX_QUOTE_LEN = 1232
_MAX_LIFETIME = 0xFFFF_FFFF


class Icmpv6Type(enum.IntEnum):
    """IANA "ICMPv6 Type Numbers" a host deals with."""

    DEST_UNREACHABLE = 1
    PACKET_TOO_BIG = 2
    TIME_EXCEEDED = 3
    PARAMETER_PROBLEM = 4
    ECHO_REQUEST = 128
    ECHO_REPLY = 129
    ROUTER_SOLICIT = 133
    ROUTER_ADVERT = 134
    NEIGHBOR_SOLICIT = 135
    NEIGHBOR_ADVERT = 136
    REDIRECT = 137


class Icmpv6Unreachable(enum.IntEnum):
    """Codes of Destination Unreachable (RFC 4443 section 3.1)."""

    NO_ROUTE = 0
    ADMIN_PROHIBITED = 1
    BEYOND_SCOPE = 2
    ADDRESS_UNREACHABLE = 3
    PORT_UNREACHABLE = 4
    SOURCE_POLICY_FAILED = 5
    REJECT_ROUTE = 6


@dataclass(frozen=True, slots=True)
class Icmpv6Repr:
    """One ICMPv6 message; ``type`` is an :class:`Icmpv6Type` when it names one."""

    type: int
    code: int
    rest: int = 0
    payload: bytes = b""

    def __post_init__(self) -> None:
        check_range("type", self.type, 0, 0xFF)
        check_range("code", self.code, 0, 0xFF)
        check_range("rest", self.rest, 0, 0xFFFF_FFFF)
        with contextlib.suppress(ValueError):
            object.__setattr__(self, "type", Icmpv6Type(self.type))
        object.__setattr__(self, "payload", check_bytes("payload", self.payload))

    @classmethod
    def echo_request(cls, ident: int, seq_no: int, data: bytes = b"") -> Icmpv6Repr:
        check_range("ident", ident, 0, 0xFFFF)
        check_range("seq_no", seq_no, 0, 0xFFFF)
        return cls(Icmpv6Type.ECHO_REQUEST, 0, ident << 16 | seq_no, data)

    def echo_reply(self) -> Icmpv6Repr:
        """The reply to this echo request: same identifier, sequence number and data."""
        return Icmpv6Repr(Icmpv6Type.ECHO_REPLY, 0, self.rest, self.payload)

    @classmethod
    def dest_unreachable(cls, code: int, original: bytes) -> Icmpv6Repr:
        """A Destination Unreachable quoting ``original`` (an IPv6 packet), cut to fit 1280."""
        return cls(Icmpv6Type.DEST_UNREACHABLE, code, 0, bytes(original[:MAX_QUOTE_LEN]))

    @classmethod
    def packet_too_big(cls, mtu: int, original: bytes) -> Icmpv6Repr:
        check_range("mtu", mtu, 0, 0xFFFF_FFFF)
        return cls(Icmpv6Type.PACKET_TOO_BIG, 0, mtu, bytes(original[:MAX_QUOTE_LEN]))

    @property
    def ident(self) -> int:
        return self.rest >> 16

    @property
    def seq_no(self) -> int:
        return self.rest & 0xFFFF

    @property
    def is_error(self) -> bool:
        """Error messages have types 0 to 127 (RFC 4443 section 2.1)."""
        return self.type < 128

    def quoted(self) -> bytes:
        """The quoted packet of an error message (empty for informational messages)."""
        return self.payload if self.is_error else b""

    @classmethod
    def parse(
        cls,
        buf: bytes | bytearray | memoryview,
        src_addr: IPAddress,
        dst_addr: IPAddress,
        *,
        verify_checksum: bool = True,
    ) -> Icmpv6Repr:
        """Read a message that is the whole of ``buf`` (an IPv6 payload).

        Raises :class:`WireError` when ``buf`` is shorter than the header, the
        addresses are not IPv6, or (with ``verify_checksum``) the checksum is wrong.
        """
        buf = bytes(buf)
        need(buf, HEADER_LEN, "ICMPv6 header")
        if not isinstance(src_addr, ipaddress.IPv6Address) or not isinstance(
            dst_addr, ipaddress.IPv6Address
        ):
            raise WireError(f"ICMPv6 between {src_addr} and {dst_addr}: not IPv6 addresses")
        if verify_checksum:
            start = pseudo_header_sum(src_addr, dst_addr, IpProtocol.ICMPV6, len(buf))
            if ones_complement_sum(buf, start) != 0xFFFF:
                raise WireError(
                    f"ICMPv6 checksum 0x{int.from_bytes(buf[2:4], 'big'):04x} is wrong "
                    f"for {src_addr} -> {dst_addr}"
                )
        return cls(type=buf[0], code=buf[1], rest=int.from_bytes(buf[4:8], "big"), payload=buf[8:])

    def buffer_len(self) -> int:
        return HEADER_LEN + len(self.payload)

    def emit(self, src_addr: IPAddress, dst_addr: IPAddress) -> bytes:
        """The message with its checksum for these IPv6 addresses."""
        message = bytearray(
            bytes((self.type, self.code, 0, 0)) + self.rest.to_bytes(4, "big") + self.payload
        )
        start = pseudo_header_sum(src_addr, dst_addr, IpProtocol.ICMPV6, len(message))
        message[2:4] = internet_checksum(message, start).to_bytes(2, "big")
        return bytes(message)


# Neighbour discovery option types (RFC 4861 section 4.6).
_OPTION_SOURCE_LLADDR = 1
_OPTION_TARGET_LLADDR = 2
_OPTION_PREFIX_INFORMATION = 3
_OPTION_MTU = 5


@dataclass(frozen=True, slots=True)
class PrefixInformation:
    """The Prefix Information option of a Router Advertisement (RFC 4861 section 4.6.2).

    ``on_link`` is the L flag, ``autonomous`` the A flag that lets a host make
    an address in the prefix (SLAAC, RFC 4862).  Lifetimes are in seconds,
    0xFFFFFFFF meaning forever.
    """

    prefix: ipaddress.IPv6Network
    on_link: bool = True
    autonomous: bool = True
    valid_lifetime: int = _MAX_LIFETIME
    preferred_lifetime: int = _MAX_LIFETIME

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, ipaddress.IPv6Network):
            raise TypeError("prefix must be an ipaddress.IPv6Network")
        check_range("valid_lifetime", self.valid_lifetime, 0, _MAX_LIFETIME)
        check_range("preferred_lifetime", self.preferred_lifetime, 0, _MAX_LIFETIME)

    def emit(self) -> bytes:
        flags = (0x80 if self.on_link else 0) | (0x40 if self.autonomous else 0)
        return (
            bytes((_OPTION_PREFIX_INFORMATION, 4, self.prefix.prefixlen, flags))
            + self.valid_lifetime.to_bytes(4, "big")
            + self.preferred_lifetime.to_bytes(4, "big")
            + bytes(4)
            + self.prefix.network_address.packed
        )


@dataclass
class _Options:
    source_lladdr: EthernetAddress | None = None
    target_lladdr: EthernetAddress | None = None
    mtu: int | None = None
    prefixes: tuple[PrefixInformation, ...] = ()


def _parse_options(area: bytes) -> _Options:
    options = _Options()
    prefixes: list[PrefixInformation] = []
    at = 0
    while at < len(area):
        need(area[at:], 2, "neighbour discovery option")
        kind, units = area[at], area[at + 1]
        if units == 0:
            raise WireError(f"neighbour discovery option {kind} has length zero")
        end = at + units * 8
        if end > len(area):
            raise WireError(f"neighbour discovery option {kind} truncated")
        body = area[at + 2 : end]
        # Link-layer address options longer than Ethernet's belong to other
        # link types; a host on Ethernet reads the first six bytes only.
        if kind == _OPTION_SOURCE_LLADDR and options.source_lladdr is None:
            options.source_lladdr = EthernetAddress(body[:6])
        elif kind == _OPTION_TARGET_LLADDR and options.target_lladdr is None:
            options.target_lladdr = EthernetAddress(body[:6])
        elif kind == _OPTION_MTU and units == 1:
            options.mtu = int.from_bytes(body[2:6], "big")
        elif kind == _OPTION_PREFIX_INFORMATION:
            if units != 4:
                raise WireError(f"prefix information option has length {units}, not 4")
            length = body[0]
            if length > 128:
                raise WireError(f"prefix information has prefix length {length}")
            address = int.from_bytes(body[14:30], "big")
            mask = ((1 << length) - 1) << (128 - length) if length else 0
            prefixes.append(
                PrefixInformation(
                    prefix=ipaddress.IPv6Network((address & mask, length)),
                    on_link=bool(body[1] & 0x80),
                    autonomous=bool(body[1] & 0x40),
                    valid_lifetime=int.from_bytes(body[2:6], "big"),
                    preferred_lifetime=int.from_bytes(body[6:10], "big"),
                )
            )
        at = end
    options.prefixes = tuple(prefixes)
    return options


def _lladdr_option(kind: int, address: EthernetAddress | None) -> bytes:
    return b"" if address is None else bytes((kind, 1)) + address.octets


def _expect(icmp: Icmpv6Repr, kind: Icmpv6Type, body_len: int) -> None:
    if icmp.type != kind:
        raise WireError(f"ICMPv6 type {icmp.type} is not {kind.name}")
    if icmp.code != 0:
        raise WireError(f"{kind.name} has code {icmp.code}, not 0 (RFC 4861)")
    need(icmp.payload, body_len, kind.name)


def _check_target(target: object) -> None:
    if not isinstance(target, ipaddress.IPv6Address):
        raise TypeError("target must be an ipaddress.IPv6Address")
    if target.is_multicast:
        raise ValueError(f"a neighbour discovery target is never multicast: {target}")


@dataclass(frozen=True, slots=True)
class NeighborSolicit:
    """Neighbor Solicitation (RFC 4861 section 4.3): who has ``target``?"""

    target: ipaddress.IPv6Address
    source_lladdr: EthernetAddress | None = None

    def __post_init__(self) -> None:
        _check_target(self.target)

    @classmethod
    def from_icmp(cls, icmp: Icmpv6Repr) -> NeighborSolicit:
        _expect(icmp, Icmpv6Type.NEIGHBOR_SOLICIT, 16)
        target = ipaddress.IPv6Address(icmp.payload[:16])
        if target.is_multicast:
            raise WireError(f"Neighbor Solicitation for multicast {target}")
        return cls(target, _parse_options(icmp.payload[16:]).source_lladdr)

    def to_icmp(self) -> Icmpv6Repr:
        return Icmpv6Repr(
            Icmpv6Type.NEIGHBOR_SOLICIT,
            0,
            0,
            self.target.packed + _lladdr_option(_OPTION_SOURCE_LLADDR, self.source_lladdr),
        )


_FLAG_ROUTER = 0x8000_0000
_FLAG_SOLICITED = 0x4000_0000
_FLAG_OVERRIDE = 0x2000_0000


@dataclass(frozen=True, slots=True)
class NeighborAdvert:
    """Neighbor Advertisement (RFC 4861 section 4.4): ``target`` is at ``target_lladdr``."""

    target: ipaddress.IPv6Address
    target_lladdr: EthernetAddress | None = None
    router: bool = False
    solicited: bool = False
    override: bool = True

    def __post_init__(self) -> None:
        _check_target(self.target)

    @classmethod
    def from_icmp(cls, icmp: Icmpv6Repr) -> NeighborAdvert:
        _expect(icmp, Icmpv6Type.NEIGHBOR_ADVERT, 16)
        target = ipaddress.IPv6Address(icmp.payload[:16])
        if target.is_multicast:
            raise WireError(f"Neighbor Advertisement for multicast {target}")
        return cls(
            target,
            _parse_options(icmp.payload[16:]).target_lladdr,
            router=bool(icmp.rest & _FLAG_ROUTER),
            solicited=bool(icmp.rest & _FLAG_SOLICITED),
            override=bool(icmp.rest & _FLAG_OVERRIDE),
        )

    def to_icmp(self) -> Icmpv6Repr:
        flags = (
            (_FLAG_ROUTER if self.router else 0)
            | (_FLAG_SOLICITED if self.solicited else 0)
            | (_FLAG_OVERRIDE if self.override else 0)
        )
        return Icmpv6Repr(
            Icmpv6Type.NEIGHBOR_ADVERT,
            0,
            flags,
            self.target.packed + _lladdr_option(_OPTION_TARGET_LLADDR, self.target_lladdr),
        )


@dataclass(frozen=True, slots=True)
class RouterSolicit:
    """Router Solicitation (RFC 4861 section 4.1), sent to find routers at start-up."""

    source_lladdr: EthernetAddress | None = None

    @classmethod
    def from_icmp(cls, icmp: Icmpv6Repr) -> RouterSolicit:
        _expect(icmp, Icmpv6Type.ROUTER_SOLICIT, 0)
        return cls(_parse_options(icmp.payload).source_lladdr)

    def to_icmp(self) -> Icmpv6Repr:
        return Icmpv6Repr(
            Icmpv6Type.ROUTER_SOLICIT,
            0,
            0,
            _lladdr_option(_OPTION_SOURCE_LLADDR, self.source_lladdr),
        )


@dataclass(frozen=True, slots=True)
class RouterAdvert:
    """Router Advertisement (RFC 4861 section 4.2).

    ``router_lifetime`` (seconds) above zero makes the sender a default router.
    ``reachable_time`` and ``retrans_timer`` are in milliseconds, 0 meaning
    unspecified.
    """

    router_lifetime: int = 1800
    hop_limit: int = 64
    managed: bool = False
    other: bool = False
    reachable_time: int = 0
    retrans_timer: int = 0
    source_lladdr: EthernetAddress | None = None
    mtu: int | None = None
    prefixes: tuple[PrefixInformation, ...] = ()

    def __post_init__(self) -> None:
        check_range("router_lifetime", self.router_lifetime, 0, 0xFFFF)
        check_range("hop_limit", self.hop_limit, 0, 0xFF)
        check_range("reachable_time", self.reachable_time, 0, 0xFFFF_FFFF)
        check_range("retrans_timer", self.retrans_timer, 0, 0xFFFF_FFFF)
        if self.mtu is not None:
            check_range("mtu", self.mtu, 0, 0xFFFF_FFFF)
        object.__setattr__(self, "prefixes", tuple(self.prefixes))

    @classmethod
    def from_icmp(cls, icmp: Icmpv6Repr) -> RouterAdvert:
        _expect(icmp, Icmpv6Type.ROUTER_ADVERT, 8)
        options = _parse_options(icmp.payload[8:])
        return cls(
            router_lifetime=icmp.rest & 0xFFFF,
            hop_limit=icmp.rest >> 24,
            managed=bool(icmp.rest & 0x0080_0000),
            other=bool(icmp.rest & 0x0040_0000),
            reachable_time=int.from_bytes(icmp.payload[0:4], "big"),
            retrans_timer=int.from_bytes(icmp.payload[4:8], "big"),
            source_lladdr=options.source_lladdr,
            mtu=options.mtu,
            prefixes=options.prefixes,
        )

    def to_icmp(self) -> Icmpv6Repr:
        rest = (
            self.hop_limit << 24
            | (0x0080_0000 if self.managed else 0)
            | (0x0040_0000 if self.other else 0)
            | self.router_lifetime
        )
        body = (
            self.reachable_time.to_bytes(4, "big")
            + self.retrans_timer.to_bytes(4, "big")
            + _lladdr_option(_OPTION_SOURCE_LLADDR, self.source_lladdr)
        )
        if self.mtu is not None:
            body += bytes((_OPTION_MTU, 1, 0, 0)) + self.mtu.to_bytes(4, "big")
        for prefix in self.prefixes:
            body += prefix.emit()
        return Icmpv6Repr(Icmpv6Type.ROUTER_ADVERT, 0, rest, body)
