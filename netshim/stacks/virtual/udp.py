"""UDP on the virtual network.

A socket's receive queue is a heap ordered by delivery time, so datagrams a
link delays or holds back (reordering) come out in the order they arrive, not
the order they were sent.  The queue is bounded like a Linux receive buffer:
datagrams that do not fit are dropped, silently, as the kernel drops them.
"""

from __future__ import annotations

import errno
import heapq
import itertools
from typing import TYPE_CHECKING, Final

import anyio
import anyio.lowlevel

from ..._addresses import Address, check_host, check_port, parse_ip
from ..._errors import message_too_long, os_error
from ...stack import UdpSocket

if TYPE_CHECKING:
    from .host import PortBinding, VirtualHost

__all__ = ["MAX_UDP_PAYLOAD", "RECEIVE_BUFFER", "VirtualUdpSocket"]

# Largest payload one IP packet carries: 65535 minus the UDP header (8) and,
# for IPv4, the IP header (20); IPv6's header is outside its length field.
MAX_UDP_PAYLOAD: Final = {4: 65507, 6: 65527}

# Linux's default net.core.rmem_default: what one socket may hold unread.
RECEIVE_BUFFER: Final = 212992

_sequence = itertools.count()


class VirtualUdpSocket(UdpSocket):
    """A UDP socket on a virtual host (see :class:`netshim.stack.UdpSocket`)."""

    def __init__(self, host: VirtualHost, binding: PortBinding) -> None:
        self.host = host
        self.binding = binding
        self._remote: Address | None = None
        self._queue: list[tuple[float, int, bytes, Address]] = []
        self._queued_bytes = 0
        self._event: anyio.Event | None = None
        self._pending_error = 0
        self._broadcast = False
        self.closed = False
        self.dropped = 0

    def __repr__(self) -> str:
        remote = f" -> {self._remote[0]}:{self._remote[1]}" if self._remote else ""
        return f"<VirtualUdpSocket {self.local_address[0]}:{self.local_address[1]}{remote}>"

    @property
    def local_address(self) -> Address:
        return self.binding.address

    @property
    def remote_address(self) -> Address | None:
        return self._remote

    def connect(self, remote: Address) -> None:
        self._remote = remote

    @property
    def broadcast(self) -> bool:
        return self._broadcast

    @broadcast.setter
    def broadcast(self, enabled: bool) -> None:
        self._broadcast = bool(enabled)

    @property
    def version(self) -> int:
        return self.binding.version

    def _raise_pending(self) -> None:
        code = self._pending_error
        if code:
            # Reported once, as a socket's SO_ERROR is cleared when read.
            self._pending_error = 0
            remote = self._remote
            raise os_error(code, f"{remote[0]}:{remote[1]}" if remote else None)

    def set_error(self, code: int) -> None:
        self._pending_error = code
        self._wake()

    async def send(self, data: bytes, address: tuple[str, int] | None = None) -> None:
        await anyio.lowlevel.checkpoint()
        if self.closed:
            raise anyio.ClosedResourceError
        self._raise_pending()
        data = data if type(data) is bytes else bytes(data)
        if address is None:
            if self._remote is None:
                raise os_error(
                    errno.EDESTADDRREQ, "send() needs an address on an unconnected socket"
                )
            destination = self._remote
        else:
            destination = (check_host(address[0], "send"), check_port(address[1], "send"))
        ip = parse_ip(destination[0])
        if ip is None:
            destination = await self.host.resolve_for_socket(destination, self.version)
            ip = parse_ip(destination[0])
            assert ip is not None
        limit = MAX_UDP_PAYLOAD[ip.version if ip.version == 6 else self.version]
        if len(data) > limit:
            raise message_too_long(len(data), limit)
        self.host.route_datagram(self, ip, destination[1], data)

    def deliver(self, at: float, data: bytes, source: Address) -> None:
        if self.closed or (self._remote is not None and source != self._remote):
            return
        if self._queued_bytes + len(data) > RECEIVE_BUFFER:
            self.dropped += 1
            return
        self._queued_bytes += len(data)
        heapq.heappush(self._queue, (at, next(_sequence), data, source))
        self._wake()

    def _wake(self) -> None:
        event = self._event
        if event is not None:
            self._event = None
            event.set()

    async def receive(self) -> tuple[bytes, Address]:
        await anyio.lowlevel.checkpoint()
        while True:
            if self.closed:
                raise anyio.ClosedResourceError
            self._raise_pending()
            queue = self._queue
            if queue:
                at = queue[0][0]
                delay = at - anyio.current_time() if at else 0.0
                if delay <= 0:
                    _, _, data, source = heapq.heappop(queue)
                    self._queued_bytes -= len(data)
                    return data, source
            if self._event is not None:
                raise anyio.BusyResourceError("receiving")
            event = self._event = anyio.Event()
            try:
                if queue:
                    with anyio.move_on_after(delay):
                        await event.wait()
                else:
                    await event.wait()
            finally:
                if self._event is event:
                    self._event = None

    def close_now(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.host.release(self.binding)
        self.host.release_udp(self)
        self._queue.clear()
        self._wake()

    async def aclose(self) -> None:
        self.close_now()
        await anyio.lowlevel.checkpoint()
