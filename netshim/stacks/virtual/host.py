"""A host on a virtual network, and the Stack it offers.

A :class:`VirtualHost` owns addresses on the network's subnets plus its own
loopback (``127.0.0.0/8`` and ``::1``), a table of bound ports per protocol,
and a list of DNS servers.  Binding follows Linux without ``SO_REUSEADDR``
between listeners: two bindings on one port conflict when their address sets
overlap (``0.0.0.0`` covers every IPv4 address, a dual-stack ``::`` covers
everything).  Ephemeral ports come from Linux's range, 32768-60999, starting
at a point drawn from the network's seed.

Routing: a destination on this host (its addresses, loopback, or the
unspecified address, which Linux treats as local) stays here; an address some
host owns is reached over the link between the two; an unowned address inside
one of the network's subnets gives ``EHOSTUNREACH``, and one outside all of
them ``ENETUNREACH``.  These errors come at once rather than after the ARP or
route timeouts a kernel would wait, which keeps tests fast and deterministic.
"""

from __future__ import annotations

import errno
import ipaddress
import random
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, TypeVar

import anyio
import anyio.lowlevel

from ..._addresses import (
    Address,
    IPAddress,
    check_host,
    check_port,
    parse_ip,
    parse_service,
    service_socket_types,
)
from ..._errors import (
    address_in_use,
    address_not_available,
    connection_refused,
    connection_timed_out,
    host_unreachable,
    network_unreachable,
    os_error,
    permission_denied,
)
from ..._ip_header import DEFAULT_HEADER, IpHeader
from ...stack import DEFAULT_BACKLOG, AddrInfo, Stack, TcpListener, TcpStream, UdpSocket
from .link import REORDER_HOLD, Link
from .tcp import (
    FIN,
    MAX_BACKLOG,
    Connection,
    JoinedTcpStream,
    Pipe,
    Segment,
    TcpServiceHandler,
    VirtualTcpListener,
    VirtualTcpStream,
)
from .udp import VirtualUdpSocket, route_multicast

if TYPE_CHECKING:
    from .network import VirtualNetwork

__all__ = ["PortBinding", "VirtualHost"]

T = TypeVar("T")

EPHEMERAL_PORTS: Final = range(32768, 61000)
_IPV4_ANY: Final = ipaddress.IPv4Address("0.0.0.0")
_IPV6_ANY: Final = ipaddress.IPv6Address("::")
_IPV4_LOOPBACK: Final = ipaddress.IPv4Address("127.0.0.1")
_IPV6_LOOPBACK: Final = ipaddress.IPv6Address("::1")
_BROADCAST: Final = ipaddress.IPv4Address("255.255.255.255")


def _unmap(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


# Entries a per-host table of routing answers keeps before it starts over:
# programs may address any number of IPs, the table must stay small.
_MAX_REMEMBERED = 1024


def _remember(table: dict[IPAddress, T], ip: IPAddress, answer: T) -> None:
    if len(table) >= _MAX_REMEMBERED:
        table.clear()
    table[ip] = answer


# A connect's way to an IP: the IP (loopback for the unspecified address) and
# its text, the host owning it, the source address and its text, and the link
# (faults change a link in place; removing a host forgets its links and
# every route).
_Route = tuple[IPAddress, str, "VirtualHost", IPAddress, str, Link]


def _mapped(ip: IPAddress) -> str:
    """How a dual-stack IPv6 socket shows an IPv4 peer."""
    return f"::ffff:{ip}"


class PortBinding:
    """One bound port: which addresses it covers and what holds it."""

    __slots__ = ("dual", "ip", "port", "protocol", "unspecified")

    def __init__(
        self, protocol: str, ip: IPAddress, port: int, dual: bool, unspecified: bool | None = None
    ) -> None:
        self.protocol = protocol
        self.ip = ip
        self.port = port
        # A "::" binding that also takes IPv4 (IPV6_V6ONLY off, Linux's default).
        self.dual = dual
        # Asked for every connection: ipaddress's is_unspecified compares
        # with a new address each time.  (A caller that knows says so.)
        self.unspecified = int(ip) == 0 if unspecified is None else unspecified

    @property
    def version(self) -> int:
        return self.ip.version

    @property
    def address(self) -> Address:
        return (str(self.ip), self.port)

    def covers(self, ip: IPAddress) -> bool:
        if self.unspecified:
            return ip.version == self.ip.version or (self.dual and ip.version == 4)
        return self.ip == ip

    def overlaps(self, other: PortBinding) -> bool:
        if self.unspecified:
            return self.covers(other.ip) or (other.dual and self.ip.version == 4)
        return other.covers(self.ip)

    def __repr__(self) -> str:
        return f"<PortBinding {self.protocol} {self.ip}:{self.port}{' dual' if self.dual else ''}>"


class VirtualHost(Stack):
    """A machine on a :class:`~netshim.VirtualNetwork`; a :class:`~netshim.stack.Stack`.

    Made by :meth:`VirtualNetwork.add_host`; not constructed directly.
    """

    def __init__(
        self,
        network: VirtualNetwork,
        name: str,
        interfaces: Sequence[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
    ) -> None:
        self.network = network
        self.name = name
        self.interfaces = list(interfaces)
        # Routing asks these for every connection; ipaddress's own answers
        # (an interface's ip, is_loopback, str) are slow, and never change
        # for one address.
        self._interface_ips = frozenset(i.ip for i in self.interfaces)
        self._owned: dict[IPAddress, bool] = {}
        self._sources: dict[IPAddress, IPAddress] = {}
        # Where a connect to an address given as text goes (see _route_to);
        # the network empties it when hosts come or go.
        self.routes: dict[str, _Route] = {}
        self._ports: dict[str, dict[int, list[PortBinding]]] = {"tcp": {}, "udp": {}}
        self._owners: dict[int, dict[int, object]] = {}
        self._ephemeral_rng = random.Random(f"{network.seed}/ports/{name}")
        self._next_ephemeral = {
            "tcp": self._ephemeral_rng.choice(EPHEMERAL_PORTS),
            "udp": self._ephemeral_rng.choice(EPHEMERAL_PORTS),
        }
        self.listeners: dict[int, list[VirtualTcpListener]] = {}
        self.udp_sockets: dict[int, list[VirtualUdpSocket]] = {}
        self.resolvers: list[str] = []

    def __repr__(self) -> str:
        return f"<VirtualHost {self.name} {' '.join(str(i.ip) for i in self.interfaces)}>"

    @property
    def addresses(self) -> list[str]:
        """This host's addresses on the network (not loopback), IPv4 first."""
        return [str(i.ip) for i in self.interfaces]

    def ips(self, version: int) -> list[IPAddress]:
        return [i.ip for i in self.interfaces if i.version == version]

    def owns(self, ip: IPAddress) -> bool:
        owned = self._owned.get(ip)
        if owned is None:
            plain = _unmap(ip)
            owned = plain.is_loopback or plain.is_unspecified or plain in self._interface_ips
            _remember(self._owned, ip, owned)
        return owned

    # -- ports -------------------------------------------------------------

    def bind(self, protocol: str, ip: IPAddress, port: int, *, dual: bool = False) -> PortBinding:
        """Claim ``ip:port``; port 0 picks an ephemeral port. Raises EADDRINUSE/EADDRNOTAVAIL."""
        if not self.owns(ip):
            raise address_not_available((str(ip), port))
        return self._claim(protocol, ip, port, dual)

    def _claim(self, protocol: str, ip: IPAddress, port: int, dual: bool) -> PortBinding:
        """:meth:`bind` for an address this host owns."""
        with self.network.lock:
            return self._claim_locked(protocol, ip, port, dual)

    def _claim_locked(
        self, protocol: str, ip: IPAddress, port: int, dual: bool, unspecified: bool | None = None
    ) -> PortBinding:
        """:meth:`_claim` for a caller that holds the network's lock."""
        table = self._ports[protocol]
        binding = PortBinding(protocol, ip, port, dual, unspecified)
        if port == 0:
            # A port no binding overlaps: nothing more to check.
            binding.port = self._ephemeral_port(table, binding)
        else:
            for other in table.get(port, ()):
                if binding.overlaps(other):
                    raise address_in_use((str(ip), port))
        bound = table.get(binding.port)
        if bound is None:
            table[binding.port] = [binding]
        else:
            bound.append(binding)
        return binding

    def _ephemeral_port(self, table: dict[int, list[PortBinding]], binding: PortBinding) -> int:
        """The next ephemeral port where ``binding`` overlaps no other (EADDRINUSE: none)."""
        protocol = binding.protocol
        start = self._next_ephemeral[protocol]
        port = start
        while True:
            taken = table.get(port)
            if not taken or not any(binding.overlaps(other) for other in taken):
                nxt = port + 1
                self._next_ephemeral[protocol] = (
                    nxt if nxt in EPHEMERAL_PORTS else EPHEMERAL_PORTS[0]
                )
                return port
            port = port + 1 if port + 1 in EPHEMERAL_PORTS else EPHEMERAL_PORTS[0]
            if port == start:
                raise address_in_use((str(binding.ip), 0))

    def release(self, binding: PortBinding) -> None:
        lock = self.network.lock
        lock.acquire()  # see connect_tcp_joined
        try:
            self._release_locked(binding)
        finally:
            lock.release()

    def _release_locked(self, binding: PortBinding) -> None:
        bound = self._ports[binding.protocol].get(binding.port)
        if bound is None:
            return
        try:
            bound.remove(binding)
        except ValueError:
            return
        if not bound:
            del self._ports[binding.protocol][binding.port]

    def _parse_local(
        self, host: str | None, port: object, function: str
    ) -> tuple[IPAddress, int, bool]:
        number = check_port(port, function)
        if host is None or host == "":
            return _IPV6_ANY, number, True
        text = check_host(host, function)
        ip = parse_ip(text)
        if ip is None:
            if text == "localhost":
                return _IPV4_LOOPBACK, number, False
            if text == self.name:
                ips = self.ips(4) or self.ips(6)
                if ips:
                    return ips[0], number, False
            raise address_not_available((text, number))
        return ip, number, ip == _IPV6_ANY

    # -- routing -------------------------------------------------------------

    def source_for(self, destination: IPAddress) -> IPAddress:
        """The address this host sends from to reach ``destination``."""
        source = self._sources.get(destination)
        if source is None:
            source = self._source_for(destination)
            _remember(self._sources, destination, source)
        return source

    def _source_for(self, destination: IPAddress) -> IPAddress:
        if destination.is_loopback or destination.is_unspecified:
            return _IPV4_LOOPBACK if destination.version == 4 else _IPV6_LOOPBACK
        candidates = [i for i in self.interfaces if i.version == destination.version]
        for interface in candidates:
            if destination in interface.network:
                return interface.ip
        if candidates:
            return candidates[0].ip
        raise network_unreachable((str(destination), 0))

    def route(self, destination: IPAddress, port: int) -> VirtualHost:
        """The host that owns ``destination``, or the error the kernel would give."""
        if self.owns(destination):
            return self
        owner = self.network.owner_of(destination)
        if owner is not None:
            return owner
        if self.network.subnet_of(destination) is not None:
            raise host_unreachable((str(destination), port))
        raise network_unreachable((str(destination), port))

    # -- TCP -----------------------------------------------------------------

    def find_listener(self, ip: IPAddress, port: int) -> VirtualTcpListener | None:
        best: VirtualTcpListener | None = None
        for listener in self.listeners.get(port, ()):
            if listener.binding.covers(ip):
                if not listener.binding.unspecified:
                    return listener
                best = listener
        return best

    async def listen_tcp(
        self,
        host: str | None = None,
        port: int = 0,
        *,
        backlog: int = DEFAULT_BACKLOG,
        ipv6_only: bool = False,
    ) -> TcpListener:
        return self.listen_now(host, port, backlog=backlog, ipv6_only=ipv6_only)

    def listen_now(
        self,
        host: str | None = None,
        port: int = 0,
        *,
        backlog: int = DEFAULT_BACKLOG,
        service: Callable[[], TcpServiceHandler] | None = None,
        ipv6_only: bool = False,
    ) -> VirtualTcpListener:
        """Listen without awaiting; with ``service``, each connection is served by callbacks."""
        if isinstance(backlog, bool) or not isinstance(backlog, int):
            raise TypeError(f"listen_tcp(): backlog must be an integer, not {backlog!r}")
        ip, number, dual = self._parse_local(host, port, "listen_tcp")
        with self.network.lock:
            binding = self.bind("tcp", ip, number, dual=dual and not ipv6_only)
            # Linux clamps a negative backlog to 0 and a huge one to somaxconn.
            listener = VirtualTcpListener(self, binding, max(0, min(backlog, MAX_BACKLOG)))
            listener.service = service
            self.listeners.setdefault(binding.port, []).append(listener)
        return listener

    def release_listener(self, listener: VirtualTcpListener) -> None:
        with self.network.lock:
            bound = self.listeners.get(listener.binding.port, [])
            if listener in bound:
                bound.remove(listener)

    async def connect_tcp(
        self, host: str, port: int, *, local_address: tuple[str, int] | None = None
    ) -> TcpStream:
        port = check_port(port, "connect_tcp")
        text = check_host(host, "connect_tcp")
        local: tuple[IPAddress, int] | None = None
        if local_address is not None:
            local_ip, local_port, _ = self._parse_local(
                local_address[0], local_address[1], "connect_tcp"
            )
            local = (local_ip, local_port)
        ip = parse_ip(text)
        if ip is not None:
            targets: list[IPAddress] = [ip]
        else:
            family = 0
            if local is not None and not local[0].is_unspecified:
                family = socket.AF_INET6 if local[0].version == 6 else socket.AF_INET
            infos = await self.getaddrinfo(text, port, family, socket.SOCK_STREAM)
            targets = [ipaddress.ip_address(info[4][0]) for info in infos]
        errors: list[OSError] = []
        for target in targets:
            try:
                return await self._connect_ip(target, port, local)
            except OSError as exc:
                errors.append(exc)
        raise errors[0]

    async def _connect_ip(
        self, ip: IPAddress, port: int, local: tuple[IPAddress, int] | None
    ) -> VirtualTcpStream:
        network = self.network
        ip = _unmap(ip)
        if local is not None and not local[0].is_unspecified and local[0].version != ip.version:
            raise os_error(errno.EAFNOSUPPORT, f"{local[0]} cannot reach {ip}")
        destination_ip = ip
        if ip.is_unspecified:
            destination_ip = _IPV4_LOOPBACK if ip.version == 4 else _IPV6_LOOPBACK
        source_ip = self.source_for(destination_ip)
        if local is not None and not local[0].is_unspecified:
            source_ip = local[0]
        server_host = self.route(destination_ip, port)
        link = network.link(self, server_host)
        binding = self.bind("tcp", source_ip, local[1] if local else 0)
        client_address = (str(source_ip), binding.port)
        server_address = (str(destination_ip), port)
        listener = server_host.find_listener(destination_ip, port)
        if link.partitioned or link.conditions.delays or (listener is not None and listener.full):
            await self._wait_for_handshake(link, server_host, destination_ip, port, binding)
            listener = server_host.find_listener(destination_ip, port)
        else:
            # Nothing to wait for: skip the timeout scope, which costs more
            # than the rest of a connect (trio especially).
            try:
                await anyio.lowlevel.checkpoint()
            except BaseException:
                self.release(binding)
                raise
        with network.lock:
            if (
                listener is None
                or listener.closed
                or not listener.accepting
                or network.is_refused(server_host, port)
            ):
                self.release(binding)
                network.observe_tcp_refused(client_address, server_address)
                raise connection_refused(server_address)
            client, server = self._open_connection(link, listener, destination_ip, binding)
            network.observe_tcp_open(client._conn.conn_id, client_address, server_address)
            if listener.service is not None:
                server._inbound.sink = _service_sink(server, listener.service())
            else:
                server.accepted_from = listener
                listener.enqueue(server)
        return client

    def _route_to(self, text: str) -> _Route | None:
        """Where a connect to the IP ``text`` goes, remembered; None for a name or an error."""
        ip = parse_ip(text)
        if ip is None:
            return None
        ip = _unmap(ip)
        destination_ip = ip
        if ip.is_unspecified:
            destination_ip = _IPV4_LOOPBACK if ip.version == 4 else _IPV6_LOOPBACK
        try:
            source_ip = self.source_for(destination_ip)
            server_host = self.route(destination_ip, 0)
        except OSError:
            return None
        link = self.network.link(self, server_host)
        route = (destination_ip, str(destination_ip), server_host, source_ip, str(source_ip), link)
        if len(self.routes) >= _MAX_REMEMBERED:
            self.routes.clear()
        self.routes[text] = route
        return route

    def _open_connection(
        self,
        link: Link,
        listener: VirtualTcpListener,
        destination_ip: IPAddress,
        binding: PortBinding,
    ) -> tuple[VirtualTcpStream, VirtualTcpStream]:
        """The two ends of a new connection from ``binding`` to ``listener`` (nothing queued)."""
        port = listener.binding.port
        client_address = (str(binding.ip), binding.port)
        server_address = (str(destination_ip), port)
        conn = Connection(self.network, link, self.network.next_connection_id())
        forward, backward = Pipe(), Pipe()
        client = VirtualTcpStream(
            conn, self, True, client_address, server_address, backward, forward, binding
        )
        server_local, server_remote = server_address, client_address
        if listener.binding.dual and destination_ip.version == 4:
            server_local = (_mapped(destination_ip), port)
            server_remote = (_mapped(binding.ip), binding.port)
        server = VirtualTcpStream(
            conn, listener.host, False, server_local, server_remote, forward, backward, None
        )
        conn.client_end = client
        conn.server_end = server
        return client, server

    def connect_tcp_joined(
        self,
        host: str,
        port: int,
        claim: Callable[[TcpListener, TcpStream], bool],
        *,
        local_address: tuple[str, int] | None = None,
    ) -> TcpStream | None:
        """Connect at once, in the caller's thread, a connection nothing observes or delays.

        See :meth:`netshim.stack.Stack.connect_tcp_joined`.  Only for an IP
        literal, over a perfect link (no latency, partition or reset budget)
        of a network without observers, to a listener that accepts, has an
        empty queue and is not refused: then no task of the network could
        tell the connection from one made by :meth:`connect_tcp`, and its
        server end goes to ``claim`` instead of the listener's queue.
        """
        network = self.network
        # The network's own fields, not its properties: this runs once per
        # connection, and each property is a call.
        if local_address is not None or network._observers or not 0 < port <= 65535:
            return None
        # acquire()/release() rather than a with block: this runs once per
        # connection, and the with protocol costs more than the lock itself.
        lock = network.lock
        lock.acquire()
        try:
            route = self.routes.get(host) or self._route_to(host)
            if route is None:
                return None  # connect_tcp gives the error
            destination_ip, destination_text, server_host, source_ip, source_text, link = route
            listener = server_host.find_listener(destination_ip, port)
            if (
                listener is None
                or listener.closed
                or not listener.accepting
                or listener.queue
                or listener.service is not None
                or link.partitioned
                or link.conditions.delays
                or link.reset_after is not None
                or (network._refused and (server_host.name, port) in network._refused)
            ):
                return None
            try:
                # A source address is never the unspecified one (see _source_for).
                binding = self._claim_locked("tcp", source_ip, 0, False, unspecified=False)
            except OSError:
                return None
            client_address = (source_text, binding.port)
            server_address = (destination_text, port)
            client = JoinedTcpStream(self, client_address, server_address, binding)
            if listener.binding.dual and destination_ip.version == 4:
                server = JoinedTcpStream(
                    server_host,
                    (_mapped(destination_ip), port),
                    (_mapped(source_ip), binding.port),
                    None,
                )
            else:
                server = JoinedTcpStream(server_host, server_address, client_address, None)
            if not claim(listener, server):
                self._release_locked(binding)
                return None
        finally:
            lock.release()
        return client

    async def _wait_for_handshake(
        self,
        link: Link,
        server_host: VirtualHost,
        destination_ip: IPAddress,
        port: int,
        binding: PortBinding,
    ) -> None:
        """The SYN's round trip: across a cut link, a delay, or a full backlog."""
        try:
            with anyio.fail_after(self.network.connect_timeout):
                await link.wait_healed()
                delay = link.round_trip()
                if delay:
                    await anyio.sleep(delay)
                await link.wait_healed()
                listener = server_host.find_listener(destination_ip, port)
                if listener is not None and listener.full:
                    await listener.wait_for_room()
        except TimeoutError:
            self.release(binding)
            raise connection_timed_out((str(destination_ip), port)) from None
        except BaseException:
            self.release(binding)
            raise

    # -- UDP -----------------------------------------------------------------

    async def open_udp(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        *,
        remote: tuple[str, int] | None = None,
        ipv6_only: bool = False,
    ) -> UdpSocket:
        sock = self.open_udp_now(host, port, ipv6_only=ipv6_only)
        if remote is not None:
            try:
                await self.connect_udp(sock, remote)
            except BaseException:
                sock.close_now()
                raise
        return sock

    def open_udp_now(
        self,
        host: str | None = "0.0.0.0",
        port: int = 0,
        *,
        socket_class: type[VirtualUdpSocket] = VirtualUdpSocket,
        ipv6_only: bool = False,
    ) -> VirtualUdpSocket:
        ip, number, dual = self._parse_local(host, port, "open_udp")
        binding = self.bind("udp", ip, number, dual=dual and not ipv6_only)
        sock = socket_class(self, binding)
        self.udp_sockets.setdefault(binding.port, []).append(sock)
        return sock

    async def connect_udp(self, sock: VirtualUdpSocket, remote: tuple[str, int]) -> None:
        remote_port = check_port(remote[1], "open_udp")
        address = await self.resolve_for_socket(
            (check_host(remote[0], "open_udp"), remote_port), sock.version
        )
        ip = parse_ip(address[0])
        assert ip is not None
        if ip.version == 4 and sock.version == 6:
            address = (_mapped(ip), remote_port)
        sock.connect(address)

    async def resolve_for_socket(self, address: Address, version: int) -> Address:
        if parse_ip(address[0]) is not None:
            return address
        family = socket.AF_INET if version == 4 else 0
        infos = await self.getaddrinfo(address[0], address[1], family, socket.SOCK_DGRAM)
        return (str(infos[0][4][0]), address[1])

    def release_udp(self, sock: VirtualUdpSocket) -> None:
        bound = self.udp_sockets.get(sock.binding.port, [])
        if sock in bound:
            bound.remove(sock)

    def is_broadcast(self, ip: IPAddress) -> bool:
        if ip.version != 4:
            return False
        if ip == _BROADCAST:
            return True
        return any(i.version == 4 and ip == i.network.broadcast_address for i in self.interfaces)

    def route_datagram(
        self,
        sender: VirtualUdpSocket,
        ip: IPAddress,
        port: int,
        data: bytes,
        header: IpHeader = DEFAULT_HEADER,
    ) -> None:
        """Send one datagram from ``sender`` to ``ip:port`` (no waiting)."""
        network = self.network
        ip = _unmap(ip)
        if sender.version == 4 and ip.version == 6:
            raise os_error(errno.EAFNOSUPPORT, f"an IPv4 socket cannot send to {ip}")
        if sender.version == 6 and ip.version == 4 and not sender.binding.dual:
            raise os_error(errno.ENETUNREACH, f"an IPv6-only socket cannot send to {ip}")
        bound_ip = _unmap(sender.binding.ip)
        if ip.is_multicast:
            route_multicast(self, sender, ip, port, data, header)
            return
        if self.is_broadcast(ip):
            if not sender.broadcast:
                raise permission_denied(f"sending to broadcast address {ip} needs SO_BROADCAST")
            source_ip = bound_ip if not bound_ip.is_unspecified else self.source_for(ip)
            source = (str(source_ip), sender.binding.port)
            network.observe_udp(source, (str(ip), port), data)
            for host in network.hosts_on_broadcast(self, ip):
                host.receive_datagram(
                    self, source_ip, sender.binding.port, ip, port, data, sender, header
                )
            return
        destination_ip = ip
        if ip.is_unspecified:
            destination_ip = _IPV4_LOOPBACK if ip.version == 4 else _IPV6_LOOPBACK
        source_ip = bound_ip if not bound_ip.is_unspecified else self.source_for(destination_ip)
        try:
            target = self.route(destination_ip, port)
        except OSError as exc:
            if exc.errno == errno.EHOSTUNREACH:
                # ARP gets no answer: the datagram is dropped, a connected socket hears of it.
                network.observe_udp((str(source_ip), sender.binding.port), (str(ip), port), data)
                if sender.remote_address is not None:
                    sender.set_error(errno.EHOSTUNREACH)
                return
            raise
        network.observe_udp(
            (str(source_ip), sender.binding.port), (str(destination_ip), port), data
        )
        target.receive_datagram(
            self, source_ip, sender.binding.port, destination_ip, port, data, sender, header
        )

    def receive_datagram(
        self,
        origin: VirtualHost,
        source_ip: IPAddress,
        source_port: int,
        destination_ip: IPAddress,
        port: int,
        data: bytes,
        sender: VirtualUdpSocket | None,
        header: IpHeader = DEFAULT_HEADER,
    ) -> None:
        """A datagram from ``origin`` arrives on this host (after the link decides its fate)."""
        link = self.network.link(origin, self)
        if link.partitioned:
            return
        copies, held = link.datagram_fates()
        if not copies:
            return
        target = self._find_udp_socket(destination_ip, port)
        if target is None:
            # ICMP port unreachable; only a connected sender is told (Linux).
            if (
                sender is not None
                and sender.remote_address is not None
                and not self.is_broadcast(destination_ip)
            ):
                sender.set_error(errno.ECONNREFUSED)
            return
        at = link.delivery_time(origin.name, len(data))
        if held:
            at = (at or anyio.current_time()) + REORDER_HOLD
        if target.binding.dual and source_ip.version == 4:
            source = (_mapped(source_ip), source_port)
        else:
            source = (str(source_ip), source_port)
        for _ in range(copies):
            target.deliver(at, data, source, header)

    def _find_udp_socket(self, ip: IPAddress, port: int) -> VirtualUdpSocket | None:
        best: VirtualUdpSocket | None = None
        for sock in self.udp_sockets.get(port, ()):
            binding = sock.binding
            if binding.covers(ip):
                if not binding.ip.is_unspecified:
                    return sock
                best = sock
            elif binding.ip.is_unspecified and self.is_broadcast(ip) and binding.version == 4:
                best = best or sock
        return best

    # -- names ---------------------------------------------------------------

    @property
    def hostname(self) -> str:
        return self.name

    def stack_for_local_address(self, host: str) -> Stack:
        ip = parse_ip(host)
        if ip is None or self.owns(ip):
            return self
        return self.network.owner_of(_unmap(ip)) or self

    async def reverse_lookup(self, ip: str) -> str:
        from .resolver import reverse_lookup

        return await reverse_lookup(self, ip)

    async def getaddrinfo(
        self,
        host: str | bytes | None,
        port: str | bytes | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[AddrInfo]:
        from .resolver import getaddrinfo

        number = parse_service(port, type, flags)
        name = None if host is None else check_host(host, "getaddrinfo")
        kinds = service_socket_types(port)
        return await getaddrinfo(self, name, number, family, type, proto, flags, kinds)

    def getaddrinfo_now(
        self,
        host: str | bytes | None,
        port: str | bytes | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[AddrInfo] | None:
        """See :meth:`netshim.stack.Stack.getaddrinfo_now`.

        Answered when the host's first DNS server is this network's own,
        over a perfect link nobody observes: the queries :meth:`getaddrinfo`
        would send could then neither wait nor be seen, so they are answered
        from the zone directly (same answers, same errors).
        """
        from .resolver import getaddrinfo_now

        number = parse_service(port, type, flags)
        name = None if host is None else check_host(host, "getaddrinfo")
        kinds = service_socket_types(port)
        return getaddrinfo_now(self, name, number, family, type, proto, flags, kinds)


def _service_sink(
    server: VirtualTcpStream, handler: TcpServiceHandler
) -> Callable[[Segment], None]:
    def sink(segment: Segment) -> None:
        if server._closed:
            return
        if isinstance(segment, bytes):
            reply = handler.data_received(segment)
            if reply:
                server.transmit(reply)
        elif segment is FIN:
            if handler.eof_received():
                server.close_now()
        else:
            server.close_now()

    return sink
