"""What every wire module shares: the error type, protocol numbers and bounds checks.

The rule of the wire layer, as in smoltcp's ``wire`` module: a ``parse``
function checks every length before it reads the bytes the length covers, so
that untrusted input can only ever fail with :class:`WireError`, never with
``IndexError`` or ``struct.error``.
"""

from __future__ import annotations

import enum
import ipaddress
from typing import TypeAlias

__all__ = ["IPAddress", "IpProtocol", "WireError"]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


class WireError(ValueError):
    """Bytes that do not form a valid packet: truncated, malformed or with a bad checksum."""


class IpProtocol(enum.IntEnum):
    """IANA "Assigned Internet Protocol Numbers": IPv4 Protocol, IPv6 Next Header."""

    HOP_BY_HOP = 0
    ICMP = 1
    TCP = 6
    UDP = 17
    IPV6_ROUTE = 43
    IPV6_FRAGMENT = 44
    ICMPV6 = 58
    IPV6_NO_NEXT = 59
    IPV6_OPTIONS = 60


def protocol_number(value: int) -> int:
    """``value`` as an :class:`IpProtocol` member when it names one, so reprs read well."""
    try:
        return IpProtocol(value)
    except ValueError:
        return value


def need(buf: bytes, length: int, what: str) -> None:
    """Raise :class:`WireError` unless ``buf`` holds at least ``length`` bytes of ``what``."""
    if len(buf) < length:
        raise WireError(f"{what} truncated: {len(buf)} bytes, need at least {length}")


def check_range(name: str, value: int, low: int, high: int) -> None:
    """Raise ``ValueError`` (or ``TypeError``) unless ``value`` is an int in ``low..high``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__} ({value!r})")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}, got {value}")


def check_bytes(name: str, value: object) -> bytes:
    """``value`` as ``bytes``; bytes-like values are copied, anything else is a ``TypeError``."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
