"""UDP on the virtual network.

A socket's receive queue is a heap ordered by delivery time, so datagrams a
link delays or holds back (reordering) come out in the order they arrive, not
the order they were sent.  The queue is bounded like a Linux receive buffer:
datagrams that do not fit are dropped, silently, as the kernel drops them.

Multicast: a socket that joined a group receives what any host sharing a
subnet with the sender sends to that group and its port (see
:func:`route_multicast`); there is no IGMP or MLD, membership is simply known.
"""

from __future__ import annotations

import errno
import heapq
import itertools
from typing import TYPE_CHECKING, Final

import anyio
import anyio.lowlevel

from ..._addresses import Address, IPAddress, check_host, check_port, parse_ip
from ..._errors import message_too_long, os_error
from ..._ip_header import DEFAULT_HEADER, IpHeader
from ...stack import UdpSocket
from .link import REORDER_HOLD

if TYPE_CHECKING:
    from .host import PortBinding, VirtualHost

__all__ = ["MAX_UDP_PAYLOAD", "RECEIVE_BUFFER", "VirtualUdpSocket", "route_multicast"]

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
        # The source address connect() fixed (see connect()).
        self._source: Address | None = None
        self._queue: list[tuple[float, int, bytes, Address, IpHeader]] = []
        self._queued_bytes = 0
        self._event: anyio.Event | None = None
        self._pending_error = 0
        self._broadcast = False
        self.closed = False
        self.dropped = 0
        # Multicast groups joined; the receive limit follows set_option("receive_buffer").
        self.groups: set[IPAddress] = set()
        self._receive_buffer = RECEIVE_BUFFER

    def __repr__(self) -> str:
        remote = f" -> {self._remote[0]}:{self._remote[1]}" if self._remote else ""
        return f"<VirtualUdpSocket {self.local_address[0]}:{self.local_address[1]}{remote}>"

    @property
    def local_address(self) -> Address:
        return self._source or self.binding.address

    @property
    def remote_address(self) -> Address | None:
        return self._remote

    def connect(self, remote: Address) -> None:
        self._remote = remote
        # Linux fixes the source address of a socket bound to the wildcard
        # when it connects, and getsockname() reports it.
        self._source = None
        bound, peer = parse_ip(self.binding.address[0]), parse_ip(remote[0])
        if bound is None or peer is None or not bound.is_unspecified:
            return
        mapped = getattr(peer, "ipv4_mapped", None)
        try:
            source = self.host.source_for(mapped or peer)
        except OSError:
            return
        text = str(source) if source.version == bound.version else f"::ffff:{source}"
        self._source = (text, self.binding.port)

    @property
    def broadcast(self) -> bool:
        return self._broadcast

    @broadcast.setter
    def broadcast(self, enabled: bool) -> None:
        self._broadcast = bool(enabled)

    @property
    def version(self) -> int:
        return self.binding.version

    def set_option(self, name: str, value: int) -> None:
        super().set_option(name, value)
        if name == "receive_buffer":
            # Linux doubles the asked size for bookkeeping overhead (socket(7)).
            self._receive_buffer = 2 * value

    def _group(self, group: str, function: str) -> IPAddress:
        ip = parse_ip(check_host(group, function))
        if ip is None or not ip.is_multicast or ip.version != self.version:
            family = "IPv6" if self.version == 6 else "IPv4"
            raise os_error(errno.EINVAL, f"{group!r} is not an {family} multicast address")
        return ip

    async def join_multicast(self, group: str, interface: str | None = None) -> None:
        """Join ``group``: datagrams sent to it on this network reach this socket.

        ``interface`` must be one of the host's addresses if given; every
        virtual host has one interface per family, so it changes nothing else.
        """
        await anyio.lowlevel.checkpoint()
        ip = self._group(group, "join_multicast")
        if interface is not None:
            local = parse_ip(check_host(interface, "join_multicast"))
            if local is None or not (local.is_unspecified or self.host.owns(local)):
                raise os_error(errno.EADDRNOTAVAIL, f"{interface!r} is not an address of this host")
        if ip in self.groups:
            raise os_error(errno.EADDRINUSE, f"already a member of {ip}")
        self.groups.add(ip)

    async def leave_multicast(self, group: str, interface: str | None = None) -> None:
        await anyio.lowlevel.checkpoint()
        ip = self._group(group, "leave_multicast")
        if ip not in self.groups:
            raise os_error(errno.EADDRNOTAVAIL, f"not a member of {ip}")
        self.groups.discard(ip)

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
        await self.send_with_header(data, address, None)

    async def send_with_header(
        self, data: bytes, address: tuple[str, int] | None, header: IpHeader | None
    ) -> None:
        """``send()``, the datagram carrying ``header`` (default: the socket's TTL options).

        The network has no routers between hosts, so the receiver sees the
        hop limit it was sent with.
        """
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
        if header is None:
            ttl = self.get_option("multicast_ttl" if ip.is_multicast else "ttl")
            header = IpHeader(hop_limit=ttl) if ttl != DEFAULT_HEADER.hop_limit else DEFAULT_HEADER
        self.host.route_datagram(self, ip, destination[1], data, header)

    def deliver(
        self, at: float, data: bytes, source: Address, header: IpHeader = DEFAULT_HEADER
    ) -> None:
        if self.closed or (self._remote is not None and source != self._remote):
            return
        if self._queued_bytes + len(data) > self._receive_buffer:
            self.dropped += 1
            return
        self._queued_bytes += len(data)
        heapq.heappush(self._queue, (at, next(_sequence), data, source, header))
        self._wake()

    def _wake(self) -> None:
        event = self._event
        if event is not None:
            self._event = None
            event.set()

    async def receive(self) -> tuple[bytes, Address]:
        data, source, _ = await self.receive_with_header()
        return data, source

    async def receive_with_header(self) -> tuple[bytes, Address, IpHeader]:
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
                    _, _, data, source, header = heapq.heappop(queue)
                    self._queued_bytes -= len(data)
                    return data, source, header
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


def route_multicast(
    origin: VirtualHost,
    sender: VirtualUdpSocket,
    group: IPAddress,
    port: int,
    data: bytes,
    header: IpHeader = DEFAULT_HEADER,
) -> None:
    """Deliver one datagram sent to ``group:port`` to every member socket on the network.

    Members are sockets on ``port`` that joined ``group`` and are bound to the
    unspecified address or to the group itself, on hosts sharing a subnet of
    the group's family with the sender (one virtual segment, so TTL 1 reaches
    them all; a TTL of 0 keeps the datagram on the sending host).  The
    sending host's own members hear it only with ``multicast_loop`` on,
    Linux's default.  Each copy crosses its link like any datagram.
    """
    network = origin.network
    bound = sender.binding.ip
    source_ip = bound if not bound.is_unspecified else origin.source_for(group)
    network.observe_udp((str(source_ip), sender.binding.port), (str(group), port), data)
    ttl = sender.get_option("multicast_ttl")
    loop = bool(sender.get_option("multicast_loop"))
    networks = [i.network for i in origin.interfaces if i.version == group.version]
    for host in network.hosts:
        if host is origin:
            if not loop:
                continue
        elif ttl == 0 or not any(
            i.version == group.version and i.network in networks for i in host.interfaces
        ):
            continue
        link = network.link(origin, host) if host is not origin else None
        if link is not None and link.partitioned:
            continue
        copies, held = link.datagram_fates() if link is not None else (1, False)
        for sock in list(host.udp_sockets.get(port, ())):
            binding = sock.binding
            if group not in sock.groups or not (binding.ip.is_unspecified or binding.ip == group):
                continue
            at = link.delivery_time(origin.name, len(data)) if link is not None else 0.0
            if held:
                at = (at or anyio.current_time()) + REORDER_HOLD
            source = (str(source_ip), sender.binding.port)
            for _ in range(copies):
                sock.deliver(at, data, source, header)
