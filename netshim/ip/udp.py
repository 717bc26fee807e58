"""UDP sockets of the ip engine: a bound port, a bounded receive queue, an optional peer.

A :class:`UdpSocket` is made by :meth:`netshim.ip.iface.Interface.udp_bind`
and keeps no I/O of its own: :meth:`UdpSocket.send_to` hands the datagram to
its interface, which queues the packet for the next ``transmit``; datagrams
the interface receives for the socket wait in a queue of at most
:data:`DEFAULT_MAX_QUEUED` datagrams and :data:`DEFAULT_MAX_QUEUED_BYTES`
bytes, beyond which new ones are dropped and counted, as a full socket
receive buffer drops them in Linux.

A connected socket (:meth:`UdpSocket.connect`) accepts datagrams from its
peer only and learns of ICMP errors about what it sent: port unreachable
becomes ``ECONNREFUSED`` on the next call, as on Linux.  An unconnected socket
ignores ICMP errors (Linux reports them only with ``IP_RECVERR``).
"""

from __future__ import annotations

import collections
import errno
import os
from typing import Protocol

from netshim.protocols.ip import IPAddress

__all__ = ["DEFAULT_MAX_QUEUED", "DEFAULT_MAX_QUEUED_BYTES", "UdpSocket"]

# Linux's default rmem (212992 bytes) counts skb overhead too; 256 datagrams
# and 256 KiB keep a burst of DNS answers or a QUIC flight.
DEFAULT_MAX_QUEUED = 256
DEFAULT_MAX_QUEUED_BYTES = 256 * 1024

Endpoint = tuple[IPAddress, int]


class _Owner(Protocol):
    def _udp_send(self, sock: UdpSocket, payload: bytes, remote: Endpoint, now: float) -> None: ...

    def _udp_close(self, sock: UdpSocket) -> None: ...

    def _mark_changed(self, sock: object) -> None: ...


class UdpSocket:
    """One bound UDP port on an interface (``socket(AF_INET*, SOCK_DGRAM)`` after ``bind``)."""

    def __init__(
        self,
        owner: _Owner,
        local: Endpoint,
        *,
        max_queued: int = DEFAULT_MAX_QUEUED,
        max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
    ) -> None:
        self._owner = owner
        self.local: Endpoint = local
        self.remote: Endpoint | None = None
        self.max_queued = max_queued
        self.max_queued_bytes = max_queued_bytes
        self._queue: collections.deque[tuple[bytes, Endpoint]] = collections.deque()
        self._queued_bytes = 0
        self._error: OSError | None = None
        self.closed = False
        #: Datagrams dropped because the queue was full.
        self.dropped = 0

    def __repr__(self) -> str:
        remote = f" remote={self.remote[0]}:{self.remote[1]}" if self.remote else ""
        state = " closed" if self.closed else ""
        return f"<UdpSocket local={self.local[0]}:{self.local[1]}{remote}{state}>"

    def connect(self, remote: Endpoint) -> None:
        """Send to and accept from ``remote`` only (``connect()`` on a datagram socket)."""
        self._check_open()
        self.remote = remote

    def readable(self) -> bool:
        return bool(self._queue) or self._error is not None

    def receive(self) -> tuple[bytes, Endpoint] | None:
        """The oldest queued ``(payload, source)``, or None when none waits.

        Raises the pending ICMP error (``ConnectionRefusedError`` and friends)
        once, as ``recvfrom`` does on a connected Linux socket.
        """
        self._check_open()
        self._raise_error()
        if not self._queue:
            return None
        payload, source = self._queue.popleft()
        self._queued_bytes -= len(payload)
        return payload, source

    def send_to(self, payload: bytes, remote: Endpoint, now: float) -> None:
        """Queue one datagram to ``remote`` on the interface.

        Raises ``OSError`` with ``EMSGSIZE`` when it does not fit the MTU (no
        fragmentation on send), ``ENETUNREACH`` without a route, and a pending
        ICMP error as ``send`` does on Linux.
        """
        self._check_open()
        self._raise_error()
        self._owner._udp_send(self, bytes(payload), remote, now)

    def send(self, payload: bytes, now: float) -> None:
        """Send to the connected peer; ``EDESTADDRREQ`` when not connected."""
        if self.remote is None:
            raise OSError(errno.EDESTADDRREQ, os.strerror(errno.EDESTADDRREQ))
        self.send_to(payload, self.remote, now)

    def take_error(self) -> OSError | None:
        """The pending error, cleared (``getsockopt(SO_ERROR)``)."""
        error, self._error = self._error, None
        return error

    def close(self) -> None:
        """Release the port; idempotent.  Queued datagrams are discarded."""
        if self.closed:
            return
        self.closed = True
        self._queue.clear()
        self._queued_bytes = 0
        self._owner._udp_close(self)

    # Called by the interface.

    def _deliver(self, payload: bytes, source: Endpoint) -> bool:
        if (
            len(self._queue) >= self.max_queued
            or self._queued_bytes + len(payload) > self.max_queued_bytes
        ):
            self.dropped += 1
            return False
        self._queue.append((payload, source))
        self._queued_bytes += len(payload)
        return True

    def _set_error(self, code: int) -> None:
        self._error = OSError(code, os.strerror(code))

    def _check_open(self) -> None:
        if self.closed:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    def _raise_error(self) -> None:
        error = self.take_error()
        if error is not None:
            raise error
