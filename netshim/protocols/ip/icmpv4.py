"""ICMP for IPv4 (RFC 792): echo, destination unreachable and the other error messages.

Every ICMP message is a type, a code, a checksum, four bytes whose meaning
depends on the type ("rest of header": identifier and sequence number of an
echo, the next-hop MTU of a "fragmentation needed" (RFC 1191), the pointer of a
parameter problem) and a body.  :class:`Icmpv4Repr` keeps those four bytes as
one 32-bit ``rest`` value and offers properties and constructors for the
messages a host sends and reads.  Error messages quote the IP header and at
least the first 8 bytes of the packet that caused them (RFC 792; RFC 1812
section 4.3.2.3 allows more): :meth:`Icmpv4Repr.quoted` returns that quote.
The checksum covers the ICMP message only, no pseudo-header.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._base import WireError, check_bytes, check_range, need
from .checksum import internet_checksum, ones_complement_sum

__all__ = ["HEADER_LEN", "Icmpv4Repr", "Icmpv4Type", "Icmpv4Unreachable"]

HEADER_LEN = 8
# An error message quotes the offending packet; a host keeps the whole ICMP
# packet within the 576 bytes every IPv4 host accepts (RFC 1812 4.3.2.3):
# 576 - 20 (IP) - 8 (ICMP).
MAX_QUOTE_LEN = 548


class Icmpv4Type(enum.IntEnum):
    """IANA "ICMP Type Numbers" a host deals with."""

    ECHO_REPLY = 0
    DEST_UNREACHABLE = 3
    REDIRECT = 5
    ECHO_REQUEST = 8
    TIME_EXCEEDED = 11
    PARAMETER_PROBLEM = 12


class Icmpv4Unreachable(enum.IntEnum):
    """Codes of Destination Unreachable (RFC 792, RFC 1122 3.2.2.1, RFC 1812 5.2.7.1)."""

    NET_UNREACHABLE = 0
    HOST_UNREACHABLE = 1
    PROTOCOL_UNREACHABLE = 2
    PORT_UNREACHABLE = 3
    FRAGMENTATION_NEEDED = 4
    SOURCE_ROUTE_FAILED = 5
    NET_UNKNOWN = 6
    HOST_UNKNOWN = 7
    SOURCE_HOST_ISOLATED = 8
    NET_PROHIBITED = 9
    HOST_PROHIBITED = 10
    NET_TOS_UNREACHABLE = 11
    HOST_TOS_UNREACHABLE = 12
    ADMIN_PROHIBITED = 13
    HOST_PRECEDENCE_VIOLATION = 14
    PRECEDENCE_CUTOFF = 15


def _named(enum_type: type[enum.IntEnum], value: int) -> int:
    try:
        return enum_type(value)
    except ValueError:
        return value


@dataclass(frozen=True, slots=True)
class Icmpv4Repr:
    """One ICMPv4 message; ``type`` is an :class:`Icmpv4Type` when it names one.

    ``rest`` is the 32-bit word after the checksum; ``payload`` is the echo
    data or, for errors, the quoted packet.
    """

    type: int
    code: int
    rest: int = 0
    payload: bytes = b""

    def __post_init__(self) -> None:
        check_range("type", self.type, 0, 0xFF)
        check_range("code", self.code, 0, 0xFF)
        check_range("rest", self.rest, 0, 0xFFFF_FFFF)
        object.__setattr__(self, "type", _named(Icmpv4Type, self.type))
        object.__setattr__(self, "payload", check_bytes("payload", self.payload))

    @classmethod
    def echo_request(cls, ident: int, seq_no: int, data: bytes = b"") -> Icmpv4Repr:
        check_range("ident", ident, 0, 0xFFFF)
        check_range("seq_no", seq_no, 0, 0xFFFF)
        return cls(Icmpv4Type.ECHO_REQUEST, 0, ident << 16 | seq_no, data)

    def echo_reply(self) -> Icmpv4Repr:
        """The reply to this echo request: same identifier, sequence number and data."""
        return Icmpv4Repr(Icmpv4Type.ECHO_REPLY, 0, self.rest, self.payload)

    @classmethod
    def dest_unreachable(cls, code: int, original: bytes, *, mtu: int = 0) -> Icmpv4Repr:
        """A Destination Unreachable quoting ``original`` (an IPv4 packet), cut to fit 576 bytes.

        ``mtu`` is the next-hop MTU, meaningful with ``FRAGMENTATION_NEEDED`` (RFC 1191).
        """
        check_range("mtu", mtu, 0, 0xFFFF)
        return cls(Icmpv4Type.DEST_UNREACHABLE, code, mtu, bytes(original[:MAX_QUOTE_LEN]))

    @property
    def ident(self) -> int:
        """The echo identifier (upper half of ``rest``)."""
        return self.rest >> 16

    @property
    def seq_no(self) -> int:
        """The echo sequence number (lower half of ``rest``)."""
        return self.rest & 0xFFFF

    @property
    def next_hop_mtu(self) -> int:
        """The MTU a "fragmentation needed" message reports (RFC 1191), 0 when absent."""
        return self.rest & 0xFFFF

    @property
    def is_error(self) -> bool:
        """Whether the message reports an error about a quoted packet."""
        return self.type in (
            Icmpv4Type.DEST_UNREACHABLE,
            Icmpv4Type.TIME_EXCEEDED,
            Icmpv4Type.PARAMETER_PROBLEM,
            Icmpv4Type.REDIRECT,
        )

    def quoted(self) -> bytes:
        """The quoted packet of an error message (empty for other messages)."""
        return self.payload if self.is_error else b""

    @classmethod
    def parse(
        cls, buf: bytes | bytearray | memoryview, *, verify_checksum: bool = True
    ) -> Icmpv4Repr:
        """Read a message that is the whole of ``buf`` (an IPv4 payload).

        Raises :class:`WireError` when ``buf`` is shorter than the 8-byte
        header or (with ``verify_checksum``) the checksum is wrong.
        """
        buf = bytes(buf)
        need(buf, HEADER_LEN, "ICMP header")
        if verify_checksum and ones_complement_sum(buf) != 0xFFFF:
            raise WireError(f"ICMP checksum 0x{int.from_bytes(buf[2:4], 'big'):04x} is wrong")
        return cls(
            type=buf[0],
            code=buf[1],
            rest=int.from_bytes(buf[4:8], "big"),
            payload=buf[HEADER_LEN:],
        )

    def buffer_len(self) -> int:
        return HEADER_LEN + len(self.payload)

    def emit(self) -> bytes:
        message = bytearray(
            bytes((self.type, self.code, 0, 0)) + self.rest.to_bytes(4, "big") + self.payload
        )
        message[2:4] = internet_checksum(message).to_bytes(2, "big")
        return bytes(message)
