"""Terminating every flow an interface sees, whatever its destination: the router's side.

``netshim run --isolate`` and a WireGuard server both sit where a program's
default route leads: every packet it sends to anywhere arrives at one
:class:`~netshim.ip.iface.Interface`.  :meth:`Interface.intercept` makes that
interface take packets for *any* unicast destination (as smoltcp's
``any_ip``) and hands what has nowhere else to go to an :class:`Interceptor`:

* a TCP SYN to an address and port with no listener becomes an
  :class:`InterceptedSyn`.  Nothing answers it yet: the owner dials the
  destination first and then either :meth:`Interceptor.accept` s it (the SYN-ACK
  leaves, and the connection is an ordinary one, with the original
  destination as its local end) or :meth:`Interceptor.refuse` s it with a
  reset (the program sees ``ECONNREFUSED``) or an ICMP unreachable
  (``EHOSTUNREACH``, ``ENETUNREACH``).  So the program's connect fails or
  succeeds as the real destination did, which a proxy that completes the
  handshake first (slirp) cannot do.  Retransmissions of a SYN being dialled
  are dropped; at most ``max_pending`` SYNs wait at once (a SYN flood costs
  that much), the rest are dropped as a full backlog is.
* a UDP datagram to a port nobody bound is queued as ``(payload, source,
  destination)``; :meth:`Interceptor.send_datagram` answers from any source
  address, so replies seem to come from the real destination.  At most
  ``max_datagrams`` (and ``max_datagram_bytes``) wait; more are dropped.
* ICMP and ICMPv6 echo requests to any address are answered by the interface.

The interceptor's owner waits on it like on a socket: it is in
:meth:`Interface.take_changed` whenever something new waits.
"""

from __future__ import annotations

import collections
import errno
import ipaddress
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias

from netshim.protocols.ip import (
    Icmpv4Repr,
    Icmpv4Unreachable,
    Icmpv6Repr,
    Icmpv6Unreachable,
    IPAddress,
    IpProtocol,
    TcpRepr,
    UdpRepr,
)

if TYPE_CHECKING:
    from .iface import Interface
    from .tcp import TcpConnection

__all__ = ["InterceptedSyn", "Interceptor", "Refusal"]

Endpoint: TypeAlias = tuple[IPAddress, int]

#: How a refused SYN is answered: a reset (``ECONNREFUSED`` for the program),
#: ICMP host unreachable (``EHOSTUNREACH``), network unreachable
#: (``ENETUNREACH``) or administratively prohibited (``EHOSTUNREACH`` on Linux,
#: which maps code 13 and ICMPv6 code 1 so), or nothing at all (the program's
#: connect times out).
Refusal: TypeAlias = Literal["reset", "host-unreachable", "net-unreachable", "prohibited", "drop"]

DEFAULT_MAX_PENDING = 256
DEFAULT_MAX_DATAGRAMS = 1024
DEFAULT_MAX_DATAGRAM_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class InterceptedSyn:
    """A connection attempt waiting for its owner's decision.

    ``local`` is where the program connected to (the original destination),
    ``remote`` the program's end.
    """

    local: Endpoint
    remote: Endpoint
    segment: TcpRepr
    packet: bytes
    received_at: float


class Interceptor:
    """What an intercepting :class:`~netshim.ip.iface.Interface` hands its owner."""

    def __init__(
        self,
        interface: Interface,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_datagrams: int = DEFAULT_MAX_DATAGRAMS,
        max_datagram_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES,
    ) -> None:
        self._interface = interface
        self.max_pending = max_pending
        self.max_datagrams = max_datagrams
        self.max_datagram_bytes = max_datagram_bytes
        self._new: collections.deque[InterceptedSyn] = collections.deque()
        # Every SYN handed out or queued and not yet accepted or refused.
        self._pending: dict[tuple[Endpoint, Endpoint], InterceptedSyn] = {}
        self._datagrams: collections.deque[tuple[bytes, Endpoint, Endpoint]] = collections.deque()
        self._datagram_bytes = 0

    def __repr__(self) -> str:
        return (
            f"<Interceptor pending={len(self._pending)} new={len(self._new)} "
            f"datagrams={len(self._datagrams)}>"
        )

    def readable(self) -> bool:
        return bool(self._new or self._datagrams)

    @property
    def pending(self) -> int:
        """SYNs waiting for :meth:`accept` or :meth:`refuse`."""
        return len(self._pending)

    # -- TCP ------------------------------------------------------------

    def take_syn(self) -> InterceptedSyn | None:
        """The oldest new connection attempt, or None."""
        return self._new.popleft() if self._new else None

    def accept(self, syn: InterceptedSyn, now: float) -> TcpConnection:
        """Answer ``syn``: its SYN-ACK leaves at the next transmit; the connection is returned."""
        del self._pending[(syn.local, syn.remote)]
        return self._interface._accept_intercepted(syn, now)

    def refuse(self, syn: InterceptedSyn, how: Refusal, now: float) -> None:
        """Turn ``syn`` down as ``how`` says (see :data:`Refusal`)."""
        self._pending.pop((syn.local, syn.remote), None)
        interface = self._interface
        src, dst = syn.local[0], syn.remote[0]
        if how == "drop":
            return
        if how == "reset":
            reset = interface._tcp.reset_for_unexpected(syn.segment)
            if reset is not None:
                interface._send_ip(src, dst, IpProtocol.TCP, reset.emit(src, dst), now)
            return
        if isinstance(src, ipaddress.IPv4Address):
            code4 = {
                "host-unreachable": Icmpv4Unreachable.HOST_UNREACHABLE,
                "net-unreachable": Icmpv4Unreachable.NET_UNREACHABLE,
                "prohibited": Icmpv4Unreachable.ADMIN_PROHIBITED,
            }[how]
            message = Icmpv4Repr.dest_unreachable(code4, syn.packet).emit()
            interface._send_ip(src, dst, IpProtocol.ICMP, message, now)
        else:
            code6 = {
                "host-unreachable": Icmpv6Unreachable.ADDRESS_UNREACHABLE,
                "net-unreachable": Icmpv6Unreachable.NO_ROUTE,
                "prohibited": Icmpv6Unreachable.ADMIN_PROHIBITED,
            }[how]
            icmp6 = Icmpv6Repr.dest_unreachable(code6, syn.packet)
            interface._send_ip(src, dst, IpProtocol.ICMPV6, icmp6.emit(src, dst), now)

    def _offer_syn(self, syn: InterceptedSyn) -> bool:
        """Queue a new SYN; False when it repeats one already pending or the backlog is full."""
        key = (syn.local, syn.remote)
        if key in self._pending or len(self._pending) >= self.max_pending:
            return False
        self._pending[key] = syn
        self._new.append(syn)
        return True

    # -- UDP ------------------------------------------------------------

    def take_datagram(self) -> tuple[bytes, Endpoint, Endpoint] | None:
        """The oldest ``(payload, source, destination)`` nobody bound, or None."""
        if not self._datagrams:
            return None
        item = self._datagrams.popleft()
        self._datagram_bytes -= len(item[0])
        return item

    def send_datagram(
        self, payload: bytes, source: Endpoint, destination: Endpoint, now: float
    ) -> None:
        """Send a datagram from ``source`` (any address) to ``destination``.

        Raises ``OSError(EMSGSIZE)`` when it does not fit the MTU.
        """
        interface = self._interface
        src, dst = source[0], destination[0]
        header = 20 if isinstance(dst, ipaddress.IPv4Address) else 40
        if header + 8 + len(payload) > interface.mtu:
            raise OSError(errno.EMSGSIZE, os.strerror(errno.EMSGSIZE))
        datagram = UdpRepr(source[1], destination[1], payload).emit(src, dst)
        interface._send_ip(src, dst, IpProtocol.UDP, datagram, now)

    def _offer_datagram(self, payload: bytes, source: Endpoint, destination: Endpoint) -> bool:
        if (
            len(self._datagrams) >= self.max_datagrams
            or self._datagram_bytes + len(payload) > self.max_datagram_bytes
        ):
            return False
        self._datagrams.append((payload, source, destination))
        self._datagram_bytes += len(payload)
        return True
