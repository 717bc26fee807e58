"""The Internet checksum (RFC 1071) and the pseudo-headers TCP and UDP add to it.

The checksum is the ones' complement of the ones' complement sum of the data
taken as big-endian 16-bit words, an odd final byte padded with a zero byte.
TCP (RFC 9293 section 3.1) and UDP (RFC 768) also cover a pseudo-header made
of the IP addresses, the protocol number and the segment length; IPv6 lays it
out differently (RFC 8200 section 8.1), with a 32-bit length.

The sum is computed without a loop over words: since 2**16 is 1 modulo
0xFFFF, a buffer read as one big-endian integer is congruent to the sum of its
words modulo 0xFFFF, which is what end-around carry computes.  The one case
the congruence cannot tell apart, zero against 0xFFFF (the two ones'
complement zeros), is settled as end-around carry settles it: the sum is 0 only
when every word is 0.
"""

from __future__ import annotations

import ipaddress

from ._base import IPAddress

__all__ = ["internet_checksum", "ones_complement_sum", "pseudo_header_sum"]

# Upper-layer lengths the pseudo-headers can carry: a 16-bit field for IPv4
# (RFC 9293 section 3.1), a 32-bit one for IPv6 (RFC 8200 section 8.1).
_MAX_LENGTH_IPV4 = 0xFFFF
_MAX_LENGTH_IPV6 = 0xFFFF_FFFF


def ones_complement_sum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """The 16-bit ones' complement sum of ``start`` and the words of ``data``.

    ``start`` is an earlier result of this function (a pseudo-header sum, say),
    so sums over pieces chain; every piece but the last must have even length.
    """
    total = start + int.from_bytes(data, "big") * (256 if len(data) % 2 else 1)
    if total == 0:
        return 0
    return total % 0xFFFF or 0xFFFF


def internet_checksum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """The value for a checksum field: the complement of :func:`ones_complement_sum`.

    Compute it over the data with the checksum field set to zero.  A receiver
    checks a packet by summing it with the field filled in: the result is
    0xFFFF exactly when the checksum is right.
    """
    return ~ones_complement_sum(data, start) & 0xFFFF


def pseudo_header_sum(src: IPAddress, dst: IPAddress, protocol: int, length: int) -> int:
    """The ones' complement sum of the TCP/UDP pseudo-header for these addresses.

    ``length`` is the length of the TCP segment or UDP datagram, header
    included.  Raises ``ValueError`` when the addresses are of different
    families or the length does not fit the family's pseudo-header.
    """
    if isinstance(src, ipaddress.IPv4Address) and isinstance(dst, ipaddress.IPv4Address):
        if not 0 <= length <= _MAX_LENGTH_IPV4:
            raise ValueError(f"length {length} does not fit an IPv4 pseudo-header")
        header = src.packed + dst.packed + bytes((0, protocol)) + length.to_bytes(2, "big")
    elif isinstance(src, ipaddress.IPv6Address) and isinstance(dst, ipaddress.IPv6Address):
        if not 0 <= length <= _MAX_LENGTH_IPV6:
            raise ValueError(f"length {length} does not fit an IPv6 pseudo-header")
        header = src.packed + dst.packed + length.to_bytes(4, "big") + bytes((0, 0, 0, protocol))
    else:
        raise ValueError(f"source {src} and destination {dst} are not of the same IP family")
    return ones_complement_sum(header)
