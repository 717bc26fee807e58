"""VirtualNetwork: an in-memory network of hosts, with DNS, faults and capture.

``net = VirtualNetwork(seed=0)`` makes an empty network on ``10.0.0.0/24`` and
``fd00::/64`` with one host already on it, ``resolver`` (``10.0.0.53`` and
``fd00::53``), a DNS server answering real DNS messages on UDP and TCP port
53 from the network's zone.  ``net.add_host(name)`` adds a machine; each host
is a :class:`~netshim.stack.Stack`, resolves names by asking ``resolver``
over the virtual network, and finds its own name in the zone.

Faults are set per pair of hosts and are deterministic for a given seed:
``set_link`` (latency, jitter, bandwidth, UDP loss/duplication/reordering),
``partition`` / ``heal``, ``reset_after`` and ``refuse``.  ``capture(path)``
records everything that crosses the network as a pcap file.

The network needs no background task and no thread: all work happens inside
the calls of the programs using it, under asyncio or trio.  Its bookkeeping
(bound ports, listeners and their queues) is kept under one lock,
``network.lock``, because the socket shim makes the connections its own
sockets join directly (see ``VirtualHost.connect_tcp_joined``) in whichever
thread calls ``connect()``, while its engine thread works on the same network.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import random
import threading
import time
import weakref
from collections.abc import Sequence
from typing import IO, Final

from ..._addresses import Address, IPAddress, check_host
from ..._traffic import TrafficObserver
from ...pcap import PcapCapture
from .host import VirtualHost
from .link import Link, LinkConditions

__all__ = ["VirtualNetwork"]

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
HostRef = VirtualHost | str

# Linux gives up on connect() after 6 SYN retries: 1+2+4+8+16+32+64 seconds.
DEFAULT_CONNECT_TIMEOUT: Final = 127.0
# glibc's resolver defaults (resolv.conf "timeout:5 attempts:2").
DEFAULT_DNS_TIMEOUT: Final = 5.0
DEFAULT_DNS_ATTEMPTS: Final = 2
RESOLVER_HOST_NUMBER: Final = 53

# Every network's lock is held across fork(), so that a child never inherits
# one held by a thread that does not exist there (nor half-changed state).
_networks: weakref.WeakSet[VirtualNetwork] = weakref.WeakSet()


def _lock_all_before_fork() -> None:
    for network in list(_networks):
        network.lock.acquire()


def _unlock_all_after_fork() -> None:
    for network in list(_networks):
        network.lock.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_lock_all_before_fork,
        after_in_parent=_unlock_all_after_fork,
        after_in_child=_unlock_all_after_fork,
    )


class VirtualNetwork:
    """An in-memory network (see the module documentation).

    ``connect_timeout`` is how long a connect waits for a partitioned or
    overloaded peer before ``TimeoutError``; ``dns_timeout`` and
    ``dns_attempts`` are the stub resolver's patience, as in resolv.conf.
    ``resolver=False`` leaves the network without a DNS server.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        ipv4_subnet: str = "10.0.0.0/24",
        ipv6_subnet: str = "fd00::/64",
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        dns_timeout: float = DEFAULT_DNS_TIMEOUT,
        dns_attempts: int = DEFAULT_DNS_ATTEMPTS,
        resolver: bool = True,
    ) -> None:
        from ...protocols.dns import Zone

        self.seed = seed
        # Reentrant: closing a listener closes its queued streams, which
        # release their ports, each taking the lock again.
        self.lock = threading.RLock()
        _networks.add(self)
        self.connect_timeout = float(connect_timeout)
        self.dns_timeout = float(dns_timeout)
        self.dns_attempts = int(dns_attempts)
        self.ipv4_subnet = ipaddress.IPv4Network(ipv4_subnet)
        self.ipv6_subnet = ipaddress.IPv6Network(ipv6_subnet)
        self.subnets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [
            self.ipv4_subnet,
            self.ipv6_subnet,
        ]
        self.zone = Zone()
        self.rng = random.Random(f"{seed}/network")
        self._hosts: dict[str, VirtualHost] = {}
        self._owners: dict[IPAddress, VirtualHost] = {}
        self._links: dict[tuple[str, str], Link] = {}
        self._refused: set[tuple[str, int]] = set()
        self._observers: list[TrafficObserver] = []
        self._connection_ids = itertools.count(1)
        self.resolver: VirtualHost | None = None
        self.resolver_addresses: list[str] = []
        if resolver:
            from .resolver import start_dns_server

            number = RESOLVER_HOST_NUMBER
            self.resolver = self.add_host(
                "resolver",
                # fd00::53 reads like 10.0.0.53 (0x53 in the last group).
                [str(self.ipv4_subnet[number]), str(self.ipv6_subnet[0x53])],
            )
            self.resolver_addresses = self.resolver.addresses
            start_dns_server(self.resolver, self.zone)

    def __repr__(self) -> str:
        return f"<VirtualNetwork seed={self.seed} hosts={sorted(self._hosts)}>"

    # -- hosts -------------------------------------------------------------

    def add_host(self, name: str, addresses: Sequence[str] | None = None) -> VirtualHost:
        """Add a host named ``name`` with ``addresses`` (IPv4 and/or IPv6).

        An address may carry a prefix (``"192.168.1.5/24"``); without one it
        joins the network subnet containing it, else a /24 (IPv4) or /64
        (IPv6) around it.  Without ``addresses`` the host gets the next free
        number ``n`` on both default subnets (``10.0.0.n`` and ``fd00::n``).
        Its name and addresses go into the zone (A, AAAA and PTR records).
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"a host needs a non-empty name, got {name!r}")
        canonical = check_host(name, "add_host")
        if canonical in self._hosts:
            raise ValueError(f"there is already a host named {canonical!r}")
        if addresses is None:
            interfaces = self._allocate()
        else:
            if isinstance(addresses, str):
                raise TypeError(f"addresses must be a list of strings, not a string: {addresses!r}")
            interfaces = [self._interface(text) for text in addresses]
        for interface in interfaces:
            owner = self._owners.get(interface.ip)
            if owner is not None:
                raise ValueError(f"address {interface.ip} already belongs to {owner.name}")
        host = VirtualHost(self, canonical, interfaces)
        host.resolvers = list(self.resolver_addresses)
        with self.lock:
            self._hosts[canonical] = host
            for interface in interfaces:
                self._owners[interface.ip] = host
            self._forget_routes()
        for interface in interfaces:
            if interface.network not in self.subnets:
                self.subnets.append(interface.network)
            self.zone.add(canonical, "A" if interface.version == 4 else "AAAA", str(interface.ip))
            self.zone.add(interface.ip.reverse_pointer, "PTR", canonical + ".")
        return host

    def remove_host(self, host: HostRef) -> None:
        """Take ``host`` off the network, as when a machine is unplugged.

        Its listeners close (connections still in their queues are reset),
        its UDP sockets close, its name and addresses leave the zone and its
        links and refusals are forgotten, so a later host may take the same
        name and addresses.  Connections it already had stay with whoever
        holds their streams: close them too.  Connects to its addresses now
        fail as to any unowned address of the subnet (``EHOSTUNREACH``).
        The resolver cannot be removed (``ValueError``).
        """
        target = self._resolve_host(host)
        if target is self.resolver:
            raise ValueError("the network's resolver cannot be removed")
        for listeners in list(target.listeners.values()):
            for listener in list(listeners):
                listener.close_now()
        for sockets in list(target.udp_sockets.values()):
            for sock in list(sockets):
                sock.close_now()
        with self.lock:
            del self._hosts[target.name]
            for interface in target.interfaces:
                if self._owners.get(interface.ip) is target:
                    del self._owners[interface.ip]
            self._forget_routes()
        for interface in target.interfaces:
            self.zone.remove(interface.ip.reverse_pointer, "PTR")
        self.zone.remove(target.name, "A")
        self.zone.remove(target.name, "AAAA")
        for key in [key for key in self._links if target.name in key]:
            del self._links[key]
        self._refused = {key for key in self._refused if key[0] != target.name}

    def _forget_routes(self) -> None:
        # Which host owns an address changed: every host's remembered routes may be wrong.
        for host in self._hosts.values():
            host.routes.clear()

    def _allocate(self) -> list[Interface]:
        used = {ip for ip in self._owners}
        for number in range(2, self.ipv4_subnet.num_addresses - 1):
            v4 = self.ipv4_subnet[number]
            v6 = self.ipv6_subnet[number]
            if v4 not in used and v6 not in used and number != RESOLVER_HOST_NUMBER:
                return [
                    ipaddress.IPv4Interface(f"{v4}/{self.ipv4_subnet.prefixlen}"),
                    ipaddress.IPv6Interface(f"{v6}/{self.ipv6_subnet.prefixlen}"),
                ]
        raise ValueError(f"no free address left on {self.ipv4_subnet}")

    def _interface(self, text: str) -> Interface:
        if not isinstance(text, str):
            raise TypeError(f"an address must be a string, not {text!r}")
        try:
            interface = ipaddress.ip_interface(text)
        except ValueError:
            raise ValueError(f"not an IP address: {text!r}") from None
        ip = interface.ip
        if ip.is_loopback or ip.is_unspecified or ip.is_multicast:
            raise ValueError(f"{ip} cannot be a host address (loopback, unspecified or multicast)")
        if "/" not in text:
            for subnet in self.subnets:
                if ip in subnet:
                    return ipaddress.ip_interface(f"{ip}/{subnet.prefixlen}")
            return ipaddress.ip_interface(f"{ip}/{24 if ip.version == 4 else 64}")
        if (
            ip.version == 4
            and (ip == interface.network.broadcast_address)
            and interface.network.prefixlen < 31
        ):
            raise ValueError(f"{ip} is the broadcast address of {interface.network}")
        return interface

    def host(self, name: str) -> VirtualHost:
        """The host called ``name``; ``KeyError`` naming the known hosts if none."""
        try:
            return self._hosts[check_host(name, "host")]
        except KeyError:
            raise KeyError(
                f"no host {name!r} on this network (hosts: {', '.join(sorted(self._hosts))})"
            ) from None

    def __getitem__(self, name: str) -> VirtualHost:
        return self.host(name)

    @property
    def hosts(self) -> list[VirtualHost]:
        return list(self._hosts.values())

    def owner_of(self, ip: IPAddress) -> VirtualHost | None:
        return self._owners.get(ip)

    def subnet_of(self, ip: IPAddress) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        for subnet in self.subnets:
            if ip.version == subnet.version and ip in subnet:
                return subnet
        return None

    def hosts_on_broadcast(self, sender: VirtualHost, ip: IPAddress) -> list[VirtualHost]:
        """Hosts a broadcast to ``ip`` from ``sender`` reaches (the sender included)."""
        if ip == ipaddress.IPv4Address("255.255.255.255"):
            networks = [i.network for i in sender.interfaces if i.version == 4]
        else:
            networks = [
                i.network
                for i in sender.interfaces
                if i.version == 4 and i.network.broadcast_address == ip
            ]
        return [
            host
            for host in self._hosts.values()
            if any(i.version == 4 and i.network in networks for i in host.interfaces)
        ]

    # -- DNS -----------------------------------------------------------------

    def add_record(self, name: str, type: str, value: str, ttl: int = 300) -> None:
        """Add a record to the zone the resolver serves.

        ``type`` is one of A, AAAA, CNAME, MX, TXT, SRV, PTR (and NS, SOA,
        CAA, NAPTR); ``value`` is the record data as in a zone file, e.g.
        ``add_record("example.com", "MX", "10 mail.example.com.")``.
        """
        self.zone.add(name, type, value, ttl)

    def remove_records(self, name: str, type: str | None = None) -> int:
        """Remove the records of ``name`` (of one ``type``, or all); returns how many."""
        return self.zone.remove(name, type)

    # -- links and faults ----------------------------------------------------

    def _resolve_host(self, ref: HostRef) -> VirtualHost:
        if isinstance(ref, VirtualHost):
            if ref.network is not self:
                raise ValueError(f"{ref.name} belongs to another network")
            return ref
        return self.host(ref)

    def link(self, a: HostRef, b: HostRef) -> Link:
        """The link between two hosts (created perfect on first use)."""
        first, second = self._resolve_host(a), self._resolve_host(b)
        key = (first.name, second.name) if first.name <= second.name else (second.name, first.name)
        link = self._links.get(key)
        if link is None:
            with self.lock:
                link = self._links.get(key)
                if link is None:
                    link = Link(random.Random(f"{self.seed}/link/{key[0]}/{key[1]}"))
                    self._links[key] = link
        return link

    def set_link(
        self,
        a: HostRef,
        b: HostRef,
        *,
        latency: float = 0.0,
        jitter: float = 0.0,
        bandwidth: float | None = None,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
    ) -> LinkConditions:
        """Set what the link between ``a`` and ``b`` does to traffic, both ways.

        Seconds for ``latency`` (one way) and ``jitter``; bytes per second for
        ``bandwidth``; probabilities for ``loss``, ``duplicate`` and
        ``reorder``, which apply to UDP (TCP stays reliable and ordered).
        Takes effect for traffic sent from now on; calling it again replaces
        every setting.
        """
        first, second = self._resolve_host(a), self._resolve_host(b)
        if first is second:
            raise ValueError(f"{first.name} to itself is loopback, which has no link to degrade")
        conditions = LinkConditions(latency, jitter, bandwidth, loss, duplicate, reorder)
        self.link(first, second).conditions = conditions
        return conditions

    def partition(self, a: HostRef, b: HostRef) -> None:
        """Cut the link: new connects wait and time out, open streams stall, datagrams vanish."""
        first, second = self._resolve_host(a), self._resolve_host(b)
        if first is second:
            raise ValueError("a host cannot be partitioned from itself")
        self.link(first, second).partitioned = True

    def heal(self, a: HostRef | None = None, b: HostRef | None = None) -> None:
        """Restore one cut link, or every one when called without hosts; stalled traffic flows."""
        if a is None and b is None:
            for link in self._links.values():
                link.heal()
            return
        if a is None or b is None:
            raise TypeError("heal() takes two hosts, or none to heal every link")
        self.link(a, b).heal()

    def reset_after(self, a: HostRef, b: HostRef, nbytes: int | None) -> None:
        """Reset each new connection between ``a`` and ``b`` once ``nbytes`` crossed it.

        Bytes count in both directions together; the bytes up to the limit are
        delivered, then both ends see ``ConnectionResetError``.  ``None``
        turns it off.
        """
        if nbytes is not None and (isinstance(nbytes, bool) or not isinstance(nbytes, int)):
            raise TypeError(f"reset_after(): nbytes must be an integer or None, not {nbytes!r}")
        if nbytes is not None and nbytes < 0:
            raise ValueError(f"reset_after(): nbytes must be >= 0, got {nbytes}")
        self.link(a, b).reset_after = nbytes

    def refuse(self, host: HostRef, port: int, refused: bool = True) -> None:
        """Refuse TCP connections to ``host:port`` even while something listens there."""
        target = self._resolve_host(host)
        key = (target.name, port)
        if refused:
            self._refused.add(key)
        else:
            self._refused.discard(key)

    def is_refused(self, host: VirtualHost, port: int) -> bool:
        return bool(self._refused) and (host.name, port) in self._refused

    def clear_faults(self) -> None:
        """Perfect links, no partitions, resets or refusals."""
        for link in self._links.values():
            link.conditions = LinkConditions()
            link.reset_after = None
            link.heal()
        self._refused.clear()

    # -- observation ---------------------------------------------------------

    @property
    def has_observers(self) -> bool:
        return bool(self._observers)

    def add_observer(self, observer: TrafficObserver) -> None:
        self._observers.append(observer)

    def remove_observer(self, observer: TrafficObserver) -> None:
        """Stop telling ``observer`` about traffic, and close it."""
        if observer in self._observers:
            self._observers.remove(observer)
            observer.close()

    def capture(self, file: str | os.PathLike[str] | IO[bytes]) -> PcapCapture:
        """Record all traffic from now on as a pcap file; returns the capture.

        Use it as a context manager, or call its ``close()``, to stop and
        flush.  Frames carry synthesized Ethernet, IP and TCP/UDP headers with
        valid checksums and sequence numbers, so tshark and Wireshark show
        real conversations (connections opened before the capture started
        are not in it).
        """
        capture = _NetworkCapture(self, file)
        self.add_observer(capture)
        return capture

    def next_connection_id(self) -> int:
        return next(self._connection_ids)

    def observe_tcp_open(self, conn_id: int, client: Address, server: Address) -> None:
        for observer in self._observers:
            observer.tcp_open(conn_id, client, server)

    def observe_tcp_refused(self, client: Address, server: Address) -> None:
        for observer in self._observers:
            observer.tcp_refused(client, server)

    def observe_tcp_data(self, conn_id: int, from_client: bool, data: bytes) -> None:
        for observer in self._observers:
            observer.tcp_data(conn_id, from_client, data)

    def observe_tcp_fin(self, conn_id: int, from_client: bool) -> None:
        for observer in self._observers:
            observer.tcp_fin(conn_id, from_client)

    def observe_tcp_reset(self, conn_id: int, from_client: bool) -> None:
        for observer in self._observers:
            observer.tcp_reset(conn_id, from_client)

    def observe_udp(self, source: Address, destination: Address, data: bytes) -> None:
        for observer in self._observers:
            observer.udp_datagram(source, destination, data)


class _NetworkCapture(PcapCapture):
    """A pcap capture that detaches itself from its network when closed."""

    def __init__(self, network: VirtualNetwork, file: str | os.PathLike[str] | IO[bytes]) -> None:
        super().__init__(file, clock=time.time, seed=network.seed)
        self._network: VirtualNetwork | None = network

    def close(self) -> None:
        network, self._network = self._network, None
        if network is not None:
            network.remove_observer(self)
        super().close()
