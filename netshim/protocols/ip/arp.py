"""ARP for IPv4 over Ethernet (RFC 826): the request and reply that map addresses to MACs.

Only the combination every host meets is read: hardware type Ethernet (1),
protocol type IPv4 (0x0800), address lengths 6 and 4.  Anything else is a
:class:`WireError`, which a host drops.  Frames shorter than 60 bytes are
padded by the sender; bytes after the 28-byte packet are ignored.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
from dataclasses import dataclass

from ._base import WireError, check_range, need
from .ethernet import EthernetAddress

__all__ = ["PACKET_LEN", "ArpOperation", "ArpRepr"]

PACKET_LEN = 28
_HEADER = bytes.fromhex("000108000604")


class ArpOperation(enum.IntEnum):
    """ARP opcodes (IANA "ARP Parameters")."""

    REQUEST = 1
    REPLY = 2


@dataclass(frozen=True, slots=True)
class ArpRepr:
    """One Ethernet/IPv4 ARP packet; ``operation`` is an :class:`ArpOperation` when named."""

    operation: int
    sender_hardware_addr: EthernetAddress
    sender_protocol_addr: ipaddress.IPv4Address
    target_hardware_addr: EthernetAddress
    target_protocol_addr: ipaddress.IPv4Address

    def __post_init__(self) -> None:
        check_range("operation", self.operation, 0, 0xFFFF)
        with contextlib.suppress(ValueError):
            object.__setattr__(self, "operation", ArpOperation(self.operation))
        for name in ("sender_hardware_addr", "target_hardware_addr"):
            if not isinstance(getattr(self, name), EthernetAddress):
                raise TypeError(f"{name} must be an EthernetAddress")
        for name in ("sender_protocol_addr", "target_protocol_addr"):
            if not isinstance(getattr(self, name), ipaddress.IPv4Address):
                raise TypeError(f"{name} must be an ipaddress.IPv4Address")

    @classmethod
    def parse(cls, buf: bytes | bytearray | memoryview) -> ArpRepr:
        """Read the packet at the start of ``buf`` (an Ethernet payload).

        Raises :class:`WireError` when ``buf`` is shorter than 28 bytes or the
        packet is not Ethernet/IPv4 ARP.
        """
        buf = bytes(buf)
        need(buf, PACKET_LEN, "ARP packet")
        if buf[:6] != _HEADER:
            raise WireError(f"ARP packet is not Ethernet/IPv4: header {buf[:6].hex()}")
        return cls(
            operation=int.from_bytes(buf[6:8], "big"),
            sender_hardware_addr=EthernetAddress(buf[8:14]),
            sender_protocol_addr=ipaddress.IPv4Address(buf[14:18]),
            target_hardware_addr=EthernetAddress(buf[18:24]),
            target_protocol_addr=ipaddress.IPv4Address(buf[24:28]),
        )

    def buffer_len(self) -> int:
        return PACKET_LEN

    def emit(self) -> bytes:
        return (
            _HEADER
            + self.operation.to_bytes(2, "big")
            + self.sender_hardware_addr.octets
            + self.sender_protocol_addr.packed
            + self.target_hardware_addr.octets
            + self.target_protocol_addr.packed
        )
