"""ICMP's meaning for sockets: errors as errnos, the flow an error quotes, and rate limiting.

The interface (:mod:`netshim.ip.iface`) answers echo requests and sends
errors; this module holds what it needs to do the rest the way Linux does:

* :func:`icmpv4_error` / :func:`icmpv6_error` turn an error message into the
  errno a socket reports, from Linux's ``icmp_err_convert`` and
  ``icmpv6_err_convert`` tables (port unreachable is ``ECONNREFUSED``, host
  unreachable ``EHOSTUNREACH``, "administratively prohibited" ``EHOSTUNREACH``
  over IPv4 and ``EACCES`` over IPv6), plus the MTU of "fragmentation needed"
  (RFC 1191) and "packet too big" (RFC 8201).
* :func:`quoted_flow` reads the packet an error quotes (an IP header and at
  least 8 bytes of TCP or UDP, RFC 792 / RFC 4443) to find our socket and,
  for TCP, the sequence number, which the connection checks against what it
  has in flight (RFC 5927) before believing the error.
* :class:`TokenBucket` limits the errors we send, as Linux's
  ``icmp_msgs_per_sec`` and ``icmp_msgs_burst`` do.
"""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass

from netshim.protocols.ip import (
    Icmpv4Repr,
    Icmpv4Type,
    Icmpv4Unreachable,
    Icmpv6Repr,
    Icmpv6Type,
    Icmpv6Unreachable,
    IPAddress,
    IpProtocol,
)

__all__ = [
    "ICMP_BURST",
    "ICMP_RATE_PER_SECOND",
    "IcmpError",
    "QuotedFlow",
    "TokenBucket",
    "icmpv4_error",
    "icmpv6_error",
    "quoted_flow",
]

# Linux's net.ipv4.icmp_msgs_per_sec and icmp_msgs_burst.
ICMP_RATE_PER_SECOND = 1000.0
ICMP_BURST = 50

_ICMPV4_UNREACHABLE_ERRNO = {
    Icmpv4Unreachable.NET_UNREACHABLE: errno.ENETUNREACH,
    Icmpv4Unreachable.HOST_UNREACHABLE: errno.EHOSTUNREACH,
    Icmpv4Unreachable.PROTOCOL_UNREACHABLE: errno.ENOPROTOOPT,
    Icmpv4Unreachable.PORT_UNREACHABLE: errno.ECONNREFUSED,
    Icmpv4Unreachable.FRAGMENTATION_NEEDED: errno.EMSGSIZE,
    Icmpv4Unreachable.SOURCE_ROUTE_FAILED: errno.EOPNOTSUPP,
    Icmpv4Unreachable.NET_UNKNOWN: errno.ENETUNREACH,
    Icmpv4Unreachable.HOST_UNKNOWN: errno.EHOSTDOWN,
    Icmpv4Unreachable.SOURCE_HOST_ISOLATED: errno.ENONET,
    Icmpv4Unreachable.NET_PROHIBITED: errno.ENETUNREACH,
    Icmpv4Unreachable.HOST_PROHIBITED: errno.EHOSTUNREACH,
    Icmpv4Unreachable.NET_TOS_UNREACHABLE: errno.ENETUNREACH,
    Icmpv4Unreachable.HOST_TOS_UNREACHABLE: errno.EHOSTUNREACH,
    Icmpv4Unreachable.ADMIN_PROHIBITED: errno.EHOSTUNREACH,
    Icmpv4Unreachable.HOST_PRECEDENCE_VIOLATION: errno.EHOSTUNREACH,
    Icmpv4Unreachable.PRECEDENCE_CUTOFF: errno.EHOSTUNREACH,
}
_ICMPV6_UNREACHABLE_ERRNO = {
    Icmpv6Unreachable.NO_ROUTE: errno.ENETUNREACH,
    Icmpv6Unreachable.ADMIN_PROHIBITED: errno.EACCES,
    Icmpv6Unreachable.BEYOND_SCOPE: errno.EHOSTUNREACH,
    Icmpv6Unreachable.ADDRESS_UNREACHABLE: errno.EHOSTUNREACH,
    Icmpv6Unreachable.PORT_UNREACHABLE: errno.ECONNREFUSED,
    Icmpv6Unreachable.SOURCE_POLICY_FAILED: errno.EACCES,
    Icmpv6Unreachable.REJECT_ROUTE: errno.EACCES,
}


@dataclass(frozen=True, slots=True)
class IcmpError:
    """What an ICMP error means for the socket: an errno, and a path MTU if it gives one."""

    errno: int
    mtu: int | None = None


def icmpv4_error(icmp: Icmpv4Repr) -> IcmpError | None:
    """The socket error an ICMPv4 message reports, or None when it is no error."""
    if icmp.type == Icmpv4Type.DEST_UNREACHABLE:
        code = _ICMPV4_UNREACHABLE_ERRNO.get(icmp.code, errno.EHOSTUNREACH)  # type: ignore[call-overload]
        if icmp.code == Icmpv4Unreachable.FRAGMENTATION_NEEDED:
            return IcmpError(code, icmp.next_hop_mtu)
        return IcmpError(code)
    if icmp.type == Icmpv4Type.TIME_EXCEEDED:
        return IcmpError(errno.EHOSTUNREACH)
    if icmp.type == Icmpv4Type.PARAMETER_PROBLEM:
        return IcmpError(errno.EPROTO)
    return None


def icmpv6_error(icmp: Icmpv6Repr) -> IcmpError | None:
    """The socket error an ICMPv6 message reports, or None when it is no error."""
    if icmp.type == Icmpv6Type.DEST_UNREACHABLE:
        return IcmpError(_ICMPV6_UNREACHABLE_ERRNO.get(icmp.code, errno.EHOSTUNREACH))  # type: ignore[call-overload]
    if icmp.type == Icmpv6Type.PACKET_TOO_BIG:
        return IcmpError(errno.EMSGSIZE, icmp.rest)
    if icmp.type == Icmpv6Type.TIME_EXCEEDED:
        return IcmpError(errno.EHOSTUNREACH)
    if icmp.type == Icmpv6Type.PARAMETER_PROBLEM:
        return IcmpError(errno.EPROTO)
    return None


@dataclass(frozen=True, slots=True)
class QuotedFlow:
    """The TCP or UDP packet an error quotes; we sent it, so ``local`` is its source."""

    protocol: int
    local: tuple[IPAddress, int]
    remote: tuple[IPAddress, int]
    seq: int | None = None


def quoted_flow(quoted: bytes) -> QuotedFlow | None:
    """Read the quoted packet's addresses, ports and TCP sequence number; None if unusable.

    Only TCP and UDP directly after the IP header are recognised (an IPv6
    packet with extension headers before them is not).
    """
    src: IPAddress
    dst: IPAddress
    if len(quoted) >= 20 and quoted[0] >> 4 == 4:
        header_len = (quoted[0] & 0x0F) * 4
        protocol = quoted[9]
        src = ipaddress.IPv4Address(quoted[12:16])
        dst = ipaddress.IPv4Address(quoted[16:20])
    elif len(quoted) >= 40 and quoted[0] >> 4 == 6:
        header_len = 40
        protocol = quoted[6]
        src = ipaddress.IPv6Address(quoted[8:24])
        dst = ipaddress.IPv6Address(quoted[24:40])
    else:
        return None
    ports = quoted[header_len : header_len + 4]
    if len(ports) < 4 or protocol not in (IpProtocol.TCP, IpProtocol.UDP):
        return None
    seq_bytes = quoted[header_len + 4 : header_len + 8]
    seq = None
    if protocol == IpProtocol.TCP and len(seq_bytes) == 4:
        seq = int.from_bytes(seq_bytes, "big")
    return QuotedFlow(
        protocol,
        (src, int.from_bytes(ports[0:2], "big")),
        (dst, int.from_bytes(ports[2:4], "big")),
        seq,
    )


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; :meth:`take` says whether one was left."""

    def __init__(self, rate: float = ICMP_RATE_PER_SECOND, burst: int = ICMP_BURST) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._refilled: float | None = None

    def take(self, now: float) -> bool:
        if self._refilled is not None:
            elapsed = max(0.0, now - self._refilled)
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
