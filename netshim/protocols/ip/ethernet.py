"""Ethernet II frames (IEEE 802.3 with an EtherType): the link layer of pcap captures.

A frame is a 14-byte header (destination address, source address, EtherType)
and a payload.  The preamble and the frame check sequence are not part of it:
network interfaces add and strip them, and captures do not record them.
Frames shorter than the 60-byte minimum are padded by the sender's hardware;
the padding, when present, stays in :attr:`EthernetRepr.payload` and the IP
layer ignores it by its own length field.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from ._base import check_bytes, check_range, need

__all__ = ["BROADCAST", "HEADER_LEN", "EtherType", "EthernetAddress", "EthernetRepr"]

HEADER_LEN = 14

_HEX_OCTET = re.compile("[0-9A-Fa-f]{2}")


class EtherType(enum.IntEnum):
    """IEEE "EtherType" registry values netshim knows by name."""

    IPV4 = 0x0800
    ARP = 0x0806
    IPV6 = 0x86DD


def _ethertype(value: int) -> int:
    try:
        return EtherType(value)
    except ValueError:
        return value


@dataclass(frozen=True, slots=True)
class EthernetAddress:
    """A 48-bit MAC address; ``str()`` gives the usual ``02:00:0a:00:00:01`` form."""

    octets: bytes

    def __post_init__(self) -> None:
        octets = check_bytes("octets", self.octets)
        if len(octets) != 6:
            raise ValueError(f"an Ethernet address has 6 octets, got {len(octets)}")
        object.__setattr__(self, "octets", octets)

    @classmethod
    def from_text(cls, text: str) -> EthernetAddress:
        """Parse ``aa:bb:cc:dd:ee:ff`` (or with ``-``); raises ``ValueError`` otherwise."""
        parts = text.replace("-", ":").split(":")
        if len(parts) != 6 or not all(_HEX_OCTET.fullmatch(part) for part in parts):
            raise ValueError(f"not an Ethernet address: {text!r}")
        return cls(bytes(int(part, 16) for part in parts))

    @property
    def is_multicast(self) -> bool:
        """The group bit (least significant bit of the first octet) is set."""
        return bool(self.octets[0] & 0x01)

    @property
    def is_locally_administered(self) -> bool:
        """The U/L bit is set: the address was not assigned by a manufacturer."""
        return bool(self.octets[0] & 0x02)

    def __str__(self) -> str:
        return ":".join(f"{octet:02x}" for octet in self.octets)


BROADCAST = EthernetAddress(b"\xff" * 6)


@dataclass(frozen=True, slots=True)
class EthernetRepr:
    """An Ethernet II frame; ``ethertype`` is an :class:`EtherType` when it names one."""

    dst_addr: EthernetAddress
    src_addr: EthernetAddress
    ethertype: int
    payload: bytes = b""

    def __post_init__(self) -> None:
        for name in ("dst_addr", "src_addr"):
            if not isinstance(getattr(self, name), EthernetAddress):
                raise TypeError(f"{name} must be an EthernetAddress")
        check_range("ethertype", self.ethertype, 0, 0xFFFF)
        object.__setattr__(self, "ethertype", _ethertype(self.ethertype))
        object.__setattr__(self, "payload", check_bytes("payload", self.payload))

    @classmethod
    def parse(cls, buf: bytes | bytearray | memoryview) -> EthernetRepr:
        """Read a frame; everything after the header is the payload.

        Raises :class:`WireError` when ``buf`` is shorter than the header.
        """
        buf = bytes(buf)
        need(buf, HEADER_LEN, "Ethernet header")
        return cls(
            dst_addr=EthernetAddress(buf[0:6]),
            src_addr=EthernetAddress(buf[6:12]),
            ethertype=int.from_bytes(buf[12:14], "big"),
            payload=buf[HEADER_LEN:],
        )

    def buffer_len(self) -> int:
        return HEADER_LEN + len(self.payload)

    def emit(self) -> bytes:
        return (
            self.dst_addr.octets
            + self.src_addr.octets
            + self.ethertype.to_bytes(2, "big")
            + self.payload
        )
