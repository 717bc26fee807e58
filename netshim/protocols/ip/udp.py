"""UDP datagrams (RFC 768): ports, length, checksum and payload.

The checksum covers a pseudo-header with the IP addresses, which is why
:meth:`UdpRepr.parse` and :meth:`UdpRepr.emit` take them.  Over IPv4 a
checksum of zero means the sender computed none (RFC 768); :meth:`UdpRepr.emit`
always computes one, sending a result of zero as 0xFFFF as RFC 768 requires,
so such a datagram reads back equal but re-emits with a checksum.  Over IPv6
the checksum is mandatory (RFC 8200 section 8.1) and zero is rejected.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ._base import IPAddress, IpProtocol, WireError, check_bytes, check_range, need
from .checksum import internet_checksum, ones_complement_sum, pseudo_header_sum

__all__ = ["HEADER_LEN", "MAX_PAYLOAD_LEN", "UdpRepr"]

HEADER_LEN = 8
# The Length field is 16 bits wide and counts the header.  Over IPv4 the IP
# header also has to fit in 65535 bytes, which leaves 65507; that limit is the
# IP layer's to enforce.
MAX_PAYLOAD_LEN = 0xFFFF - HEADER_LEN


@dataclass(frozen=True, slots=True)
class UdpRepr:
    """One UDP datagram."""

    src_port: int
    dst_port: int
    payload: bytes = b""

    def __post_init__(self) -> None:
        check_range("src_port", self.src_port, 0, 0xFFFF)
        check_range("dst_port", self.dst_port, 0, 0xFFFF)
        payload = check_bytes("payload", self.payload)
        if len(payload) > MAX_PAYLOAD_LEN:
            raise ValueError(
                f"a UDP payload is at most {MAX_PAYLOAD_LEN} bytes, got {len(payload)}"
            )
        object.__setattr__(self, "payload", payload)

    @classmethod
    def parse(
        cls,
        buf: bytes | bytearray | memoryview,
        src_addr: IPAddress,
        dst_addr: IPAddress,
        *,
        verify_checksum: bool = True,
    ) -> UdpRepr:
        """Read the datagram at the start of ``buf`` (an IP payload).

        Bytes after the Length field's count are ignored, as Linux trims them.
        Raises :class:`WireError` when ``buf`` is shorter than the header or
        the Length, Length is below 8 (zero, the IPv6 jumbogram marker,
        included), the addresses are of different families, or (with
        ``verify_checksum``) the checksum is wrong or, over IPv6, missing.
        """
        buf = bytes(buf)
        need(buf, HEADER_LEN, "UDP header")
        length = int.from_bytes(buf[4:6], "big")
        if length < HEADER_LEN:
            raise WireError(f"UDP length {length} is shorter than the header")
        need(buf, length, "UDP datagram")
        datagram = buf[:length]
        checksum = int.from_bytes(buf[6:8], "big")
        if verify_checksum:
            if checksum == 0:
                if isinstance(src_addr, ipaddress.IPv6Address):
                    raise WireError("UDP over IPv6 has no checksum (zero), which RFC 8200 forbids")
            else:
                try:
                    start = pseudo_header_sum(src_addr, dst_addr, IpProtocol.UDP, length)
                except ValueError as exc:
                    raise WireError(str(exc)) from None
                if ones_complement_sum(datagram, start) != 0xFFFF:
                    raise WireError(
                        f"UDP checksum 0x{checksum:04x} is wrong for {src_addr} -> {dst_addr}"
                    )
        return cls(
            src_port=int.from_bytes(buf[0:2], "big"),
            dst_port=int.from_bytes(buf[2:4], "big"),
            payload=datagram[HEADER_LEN:],
        )

    def header_len(self) -> int:
        return HEADER_LEN

    def buffer_len(self) -> int:
        return HEADER_LEN + len(self.payload)

    def emit(self, src_addr: IPAddress, dst_addr: IPAddress) -> bytes:
        """The datagram with its checksum for these IP addresses.

        Raises ``ValueError`` when the addresses are of different families.
        """
        length = self.buffer_len()
        datagram = bytearray(
            self.src_port.to_bytes(2, "big")
            + self.dst_port.to_bytes(2, "big")
            + length.to_bytes(2, "big")
            + bytes(2)
            + self.payload
        )
        start = pseudo_header_sum(src_addr, dst_addr, IpProtocol.UDP, length)
        # Zero on the wire means "no checksum", so a computed zero goes out as
        # its ones' complement twin 0xFFFF (RFC 768).
        checksum = internet_checksum(datagram, start) or 0xFFFF
        datagram[6:8] = checksum.to_bytes(2, "big")
        return bytes(datagram)
