"""The IP header fields a datagram carries beside its payload and addresses.

Linux lets a UDP sender choose each datagram's hop limit (IPv4's TTL) and traffic
class (IPv4's TOS), per socket (``IPV6_UNICAST_HOPS``, ``IPV6_TCLASS``, ``IP_TTL``,
``IP_TOS``) or per message (ancillary data to ``sendmsg``), and hands a receiver
that asked for them (``IPV6_RECVHOPLIMIT``, ``IPV6_RECVTCLASS``, ``IP_RECVTTL``,
``IP_RECVTOS``) the values each datagram arrived with, as ancillary data of
``recvmsg``.

The :class:`~netshim.stack.UdpSocket` contract moves payloads and addresses only.
A stack that also carries these fields (the virtual network does) offers the two
methods of :class:`CarriesIpHeader` beside the contract's ``send`` and
``receive``; the socket shim uses them when they are there, and otherwise reports
what a datagram from a sender that changed nothing carries: :data:`DEFAULT_HEADER`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ._addresses import Address

__all__ = ["DEFAULT_HEADER", "DEFAULT_HOP_LIMIT", "CarriesIpHeader", "IpHeader"]

# Linux's net.ipv4.ip_default_ttl and net.ipv6.conf.*.hop_limit.
DEFAULT_HOP_LIMIT = 64


@dataclass(frozen=True, slots=True)
class IpHeader:
    """A datagram's hop limit (TTL) and traffic class (TOS), each 0..255."""

    hop_limit: int = DEFAULT_HOP_LIMIT
    traffic_class: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.hop_limit <= 255 or not 0 <= self.traffic_class <= 255:
            raise ValueError(f"IP header fields are 0..255: {self}")


DEFAULT_HEADER = IpHeader()


@runtime_checkable
class CarriesIpHeader(Protocol):
    """A UDP socket whose datagrams keep the :class:`IpHeader` they were sent with."""

    async def send_with_header(
        self, data: bytes, address: tuple[str, int] | None, header: IpHeader
    ) -> None:
        """``send(data, address)``, the datagram leaving with ``header``."""

    async def receive_with_header(self) -> tuple[bytes, Address, IpHeader]:
        """``receive()``, with the header the datagram arrived with."""
