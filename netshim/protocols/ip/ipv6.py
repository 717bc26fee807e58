"""IPv6 packets (RFC 8200): the 40-byte fixed header and the payload it frames.

Extension headers are not taken apart: they are part of :attr:`Ipv6Repr.payload`
and :attr:`Ipv6Repr.next_header` names the first of them, as on the wire.
Jumbograms (RFC 2675, a Payload Length of zero with a Hop-by-Hop option giving
the real one) are not supported: a zero Payload Length means an empty payload.
Bytes after the Payload Length (Ethernet padding) are ignored.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ._base import WireError, check_bytes, check_range, need, protocol_number

__all__ = ["HEADER_LEN", "MAX_PAYLOAD_LEN", "Ipv6Repr"]

HEADER_LEN = 40
# The Payload Length field is 16 bits wide and, unlike IPv4's Total Length,
# does not count the fixed header.
MAX_PAYLOAD_LEN = 0xFFFF


@dataclass(frozen=True, slots=True)
class Ipv6Repr:
    """One IPv6 packet; ``next_header`` is an :class:`IpProtocol` when it names one."""

    src_addr: ipaddress.IPv6Address
    dst_addr: ipaddress.IPv6Address
    next_header: int
    payload: bytes = b""
    hop_limit: int = 64
    traffic_class: int = 0
    flow_label: int = 0

    def __post_init__(self) -> None:
        for name in ("src_addr", "dst_addr"):
            if not isinstance(getattr(self, name), ipaddress.IPv6Address):
                raise TypeError(f"{name} must be an ipaddress.IPv6Address")
        check_range("next_header", self.next_header, 0, 0xFF)
        object.__setattr__(self, "next_header", protocol_number(self.next_header))
        check_range("hop_limit", self.hop_limit, 0, 0xFF)
        check_range("traffic_class", self.traffic_class, 0, 0xFF)
        check_range("flow_label", self.flow_label, 0, 0xF_FFFF)
        payload = check_bytes("payload", self.payload)
        if len(payload) > MAX_PAYLOAD_LEN:
            raise ValueError(
                f"an IPv6 payload is at most {MAX_PAYLOAD_LEN} bytes without jumbograms, "
                f"got {len(payload)}"
            )
        object.__setattr__(self, "payload", payload)

    @classmethod
    def parse(cls, buf: bytes | bytearray | memoryview) -> Ipv6Repr:
        """Read the packet at the start of ``buf``.

        Raises :class:`WireError` when ``buf`` is shorter than the fixed header
        plus the Payload Length, or the version is not 6.  IPv6 has no header
        checksum, so there is nothing else to verify.
        """
        buf = bytes(buf)
        need(buf, HEADER_LEN, "IPv6 header")
        version = buf[0] >> 4
        if version != 6:
            raise WireError(f"IPv6 header has version {version}")
        payload_len = int.from_bytes(buf[4:6], "big")
        need(buf, HEADER_LEN + payload_len, "IPv6 packet")
        first_word = int.from_bytes(buf[0:4], "big")
        return cls(
            src_addr=ipaddress.IPv6Address(buf[8:24]),
            dst_addr=ipaddress.IPv6Address(buf[24:40]),
            next_header=buf[6],
            payload=buf[HEADER_LEN : HEADER_LEN + payload_len],
            hop_limit=buf[7],
            traffic_class=(first_word >> 20) & 0xFF,
            flow_label=first_word & 0xF_FFFF,
        )

    def header_len(self) -> int:
        return HEADER_LEN

    def buffer_len(self) -> int:
        return HEADER_LEN + len(self.payload)

    def emit(self) -> bytes:
        first_word = 6 << 28 | self.traffic_class << 20 | self.flow_label
        return (
            first_word.to_bytes(4, "big")
            + len(self.payload).to_bytes(2, "big")
            + bytes((self.next_header, self.hop_limit))
            + self.src_addr.packed
            + self.dst_addr.packed
            + self.payload
        )
