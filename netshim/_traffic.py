"""What a virtual network reports about the traffic crossing it.

A :class:`TrafficObserver` is told about every TCP connection, segment class
(data, FIN, RST) and UDP datagram at the moment a sender hands it to the
network.  The pcap writer (:mod:`netshim.pcap`) and the traffic summary used in
test reports are observers; the network knows nothing about either.

Addresses are ``(ip, port)`` with the IP in canonical text form.  ``conn_id``
is unique within one network and names one TCP connection for its lifetime.
Observers must not raise and must not block: they run inside the sender's call.
"""

from __future__ import annotations

from typing import Protocol

from ._addresses import Address

__all__ = ["TrafficObserver"]


class TrafficObserver(Protocol):
    def tcp_open(self, conn_id: int, client: Address, server: Address) -> None:
        """A three-way handshake completed between ``client`` and ``server``."""

    def tcp_refused(self, client: Address, server: Address) -> None:
        """A SYN from ``client`` was answered with RST by ``server``."""

    def tcp_data(self, conn_id: int, from_client: bool, data: bytes) -> None:
        """One side sent ``data`` (non-empty) on an open connection."""

    def tcp_fin(self, conn_id: int, from_client: bool) -> None:
        """One side closed its sending direction (FIN)."""

    def tcp_reset(self, conn_id: int, from_client: bool) -> None:
        """One side aborted the connection (RST); nothing follows on it."""

    def udp_datagram(self, source: Address, destination: Address, data: bytes) -> None:
        """A UDP datagram left ``source`` for ``destination`` (it may still be lost)."""

    def close(self) -> None:
        """The observer is detached; flush and release what it holds."""
