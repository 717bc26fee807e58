"""IPv4 packets (RFC 791): the header, its checksum, and the payload it frames.

Options are kept as raw bytes: no stack netshim talks to needs them, and
keeping them raw is enough for ``emit(parse(b)) == b``.  Fragments are parsed
like any packet (the payload is the fragment's data); reassembly is not done
here.  Bytes after the length the header gives (Ethernet padding) are ignored.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ._base import WireError, check_bytes, check_range, need, protocol_number
from .checksum import internet_checksum, ones_complement_sum

__all__ = ["HEADER_LEN", "MAX_PACKET_LEN", "Ipv4Repr"]

HEADER_LEN = 20
# The Total Length field is 16 bits wide and counts the header too.
MAX_PACKET_LEN = 0xFFFF
# Internet Header Length is a 4-bit count of 32-bit words: at most 60 bytes.
_MAX_OPTIONS_LEN = 40

# Flags, the top three bits of the 16-bit word at offset 6 (RFC 791 section 3.1).
_FLAG_RESERVED = 0x8000
_FLAG_DONT_FRAGMENT = 0x4000
_FLAG_MORE_FRAGMENTS = 0x2000
_FRAGMENT_OFFSET_MASK = 0x1FFF


@dataclass(frozen=True, slots=True)
class Ipv4Repr:
    """One IPv4 packet.

    ``fragment_offset`` is in bytes (the header counts 8-byte units, so it
    must be a multiple of 8).  ``dont_fragment`` defaults to set, as Linux sets
    it on every packet of a connection that does path MTU discovery.
    """

    src_addr: ipaddress.IPv4Address
    dst_addr: ipaddress.IPv4Address
    protocol: int
    payload: bytes = b""
    ttl: int = 64
    identification: int = 0
    dont_fragment: bool = True
    more_fragments: bool = False
    fragment_offset: int = 0
    dscp: int = 0
    ecn: int = 0
    options: bytes = b""

    def __post_init__(self) -> None:
        for name in ("src_addr", "dst_addr"):
            if not isinstance(getattr(self, name), ipaddress.IPv4Address):
                raise TypeError(f"{name} must be an ipaddress.IPv4Address")
        check_range("protocol", self.protocol, 0, 0xFF)
        object.__setattr__(self, "protocol", protocol_number(self.protocol))
        check_range("ttl", self.ttl, 0, 0xFF)
        check_range("identification", self.identification, 0, 0xFFFF)
        check_range("fragment_offset", self.fragment_offset, 0, _FRAGMENT_OFFSET_MASK * 8)
        if self.fragment_offset % 8:
            raise ValueError(f"fragment_offset must be a multiple of 8, got {self.fragment_offset}")
        check_range("dscp", self.dscp, 0, 0x3F)
        check_range("ecn", self.ecn, 0, 0x3)
        options = check_bytes("options", self.options)
        if len(options) % 4 or len(options) > _MAX_OPTIONS_LEN:
            raise ValueError(
                f"options must be a multiple of 4 bytes, at most {_MAX_OPTIONS_LEN}, "
                f"got {len(options)}"
            )
        object.__setattr__(self, "options", options)
        object.__setattr__(self, "payload", check_bytes("payload", self.payload))
        if self.buffer_len() > MAX_PACKET_LEN:
            raise ValueError(
                f"an IPv4 packet is at most {MAX_PACKET_LEN} bytes, this one would be "
                f"{self.buffer_len()}"
            )

    @classmethod
    def parse(
        cls, buf: bytes | bytearray | memoryview, *, verify_checksum: bool = True
    ) -> Ipv4Repr:
        """Read the packet at the start of ``buf``.

        Raises :class:`WireError` when ``buf`` is shorter than the header or the
        Total Length, when the version is not 4, a length field is
        inconsistent, the reserved flag is set, or (with ``verify_checksum``)
        the header checksum is wrong.
        """
        buf = bytes(buf)
        need(buf, HEADER_LEN, "IPv4 header")
        version, ihl = buf[0] >> 4, buf[0] & 0x0F
        if version != 4:
            raise WireError(f"IPv4 header has version {version}")
        header_len = ihl * 4
        if header_len < HEADER_LEN:
            raise WireError(f"IPv4 header length {header_len} is below the minimum {HEADER_LEN}")
        need(buf, header_len, "IPv4 header with options")
        total_len = int.from_bytes(buf[2:4], "big")
        if total_len < header_len:
            raise WireError(f"IPv4 total length {total_len} is shorter than its header")
        need(buf, total_len, "IPv4 packet")
        if verify_checksum and ones_complement_sum(buf[:header_len]) != 0xFFFF:
            raise WireError(
                f"IPv4 header checksum 0x{int.from_bytes(buf[10:12], 'big'):04x} is wrong"
            )
        flags = int.from_bytes(buf[6:8], "big")
        if flags & _FLAG_RESERVED:
            raise WireError("IPv4 reserved flag is set")
        return cls(
            src_addr=ipaddress.IPv4Address(buf[12:16]),
            dst_addr=ipaddress.IPv4Address(buf[16:20]),
            protocol=buf[9],
            payload=buf[header_len:total_len],
            ttl=buf[8],
            identification=int.from_bytes(buf[4:6], "big"),
            dont_fragment=bool(flags & _FLAG_DONT_FRAGMENT),
            more_fragments=bool(flags & _FLAG_MORE_FRAGMENTS),
            fragment_offset=(flags & _FRAGMENT_OFFSET_MASK) * 8,
            dscp=buf[1] >> 2,
            ecn=buf[1] & 0x03,
            options=buf[HEADER_LEN:header_len],
        )

    def header_len(self) -> int:
        return HEADER_LEN + len(self.options)

    def buffer_len(self) -> int:
        return self.header_len() + len(self.payload)

    def emit(self) -> bytes:
        """The packet, header checksum filled in."""
        flags = (
            (_FLAG_DONT_FRAGMENT if self.dont_fragment else 0)
            | (_FLAG_MORE_FRAGMENTS if self.more_fragments else 0)
            | self.fragment_offset // 8
        )
        header = bytearray(
            bytes(
                (
                    0x40 | self.header_len() // 4,
                    self.dscp << 2 | self.ecn,
                )
            )
            + self.buffer_len().to_bytes(2, "big")
            + self.identification.to_bytes(2, "big")
            + flags.to_bytes(2, "big")
            + bytes((self.ttl, self.protocol, 0, 0))
            + self.src_addr.packed
            + self.dst_addr.packed
            + self.options
        )
        header[10:12] = internet_checksum(header).to_bytes(2, "big")
        return bytes(header) + self.payload
