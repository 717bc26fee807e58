"""LANs on the gateway: named virtual networks whose members are Wisp clients.

Each LAN is a :class:`~netshim.VirtualNetwork` on the LAN's IPv4 CIDR (and an
IPv6 ``/64`` derived from its name, the same on every gateway).  The gateway
keeps host number 1 for itself (the ``gateway`` host, where port forwards
come from); each client that joins becomes a
:class:`~netshim.stacks.virtual.VirtualHost` with the next free address, so
that members reach each other's listeners and UDP ports through the virtual
network's TCP and UDP, with its flow control, at in-process speed.  A member
that leaves is removed from the network: its listeners and sockets close.

A TCP stream between two members of this gateway is *spliced*
(:class:`SplicedStream`): the virtual network still makes the connection (so
listeners, backlogs, refusals, addresses and resets before an accept behave
as on any network), but no byte goes through its TCP.  Each of the two
sessions holds one end; what one member's stream uploads is handed to the
other member's session, which frames it for its own WebSocket in the
uploader's task, with nothing between the two but that call.  The writer
waits while the reader's WebSocket output is full, so a slow reader stops
the writer's uploads, its credits stop, and what the gateway holds stays the
two sessions' usual bounds.  While nothing of the stream is queued and that
output has room, the writer's WebSocket reader hands each DATA packet over
itself (:meth:`SplicedStream.send_now`), without the stream's task.  A
stream relayed from another gateway of a cluster is spliced the same way
from its stand-in host (:meth:`LanHub.connect_relayed`).

Names and addresses are handed out by a :class:`LanDirectory`, whose methods
are async so that a directory shared by several gateway processes (in Redis,
say) can replace the in-process one without touching the Wisp session.
:class:`LanHub` joins the two: it owns the virtual networks, tells members
of each other (MEMBERSHIP news) and answers whether a destination a member
asked for is on its LAN.  The wire protocol is specified in ``docs/lan.md``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import re
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NoReturn

import anyio
import anyio.lowlevel

from .._addresses import Address, parse_ip
from .._errors import os_error
from ..protocols import wisp
from ..stack import TcpStream
from ..stacks.virtual import VirtualHost, VirtualNetwork
from ._observe import logger

__all__ = [
    "DEFAULT_LAN_LISTENERS",
    "Forward",
    "Lan",
    "LanDirectory",
    "LanHub",
    "LanMember",
    "LanSpec",
    "MemberRecord",
    "NameInUseError",
    "SPLICE_WINDOW",
    "SplicedStream",
    "DEFAULT_CIDRS",
    "load_lan_tokens",
    "parse_lan_flags",
]

# Listeners (TCP and UDP) one member may hold: a server inside a page needs a
# few; the bound keeps a member from taking every port of its address.
DEFAULT_LAN_LISTENERS: Final = 16
# The gateway's own host on each LAN: number 1 of the CIDR, named so.
GATEWAY_HOST_NUMBER: Final = 1
GATEWAY_NAME: Final = "gateway"
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _check_label(text: str, what: str) -> str:
    name = text.lower()
    if not _LABEL.fullmatch(name):
        raise ValueError(
            f"{what} {text!r} is not a DNS label (letters, digits and inner '-', 1-63 of them)"
        )
    return name


# LANs declared without a CIDR take the first of these that no other LAN overlaps.
DEFAULT_CIDRS: Final = tuple(f"10.77.{n}.0/24" for n in range(256))


def ipv6_subnet_for(name: str) -> ipaddress.IPv6Network:
    """A unique-local ``/64`` for the LAN ``name`` (RFC 4193: ``fd`` + 56 bits from the name)."""
    digest = hashlib.sha256(b"netshim-lan:" + name.encode()).digest()
    prefix = b"\xfd" + digest[:7]
    return ipaddress.IPv6Network((int.from_bytes(prefix + bytes(8), "big"), 64))


@dataclass(frozen=True, slots=True)
class LanSpec:
    """One LAN as configured: its name (a DNS label), IPv4 CIDR and join token."""

    name: str
    cidr: str
    token: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", _check_label(self.name, "LAN name"))
        try:
            network = ipaddress.IPv4Network(self.cidr, strict=False)
        except ValueError as exc:
            raise ValueError(
                f"LAN {self.name}: {self.cidr!r} is not an IPv4 CIDR ({exc})"
            ) from None
        if network.prefixlen > 30:
            raise ValueError(
                f"LAN {self.name}: {network} is too small (the gateway takes .1, members need more)"
            )
        object.__setattr__(self, "cidr", str(network))
        if not self.token:
            raise ValueError(f"LAN {self.name}: empty token")

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr)


def parse_lan_flags(entries: Iterable[str]) -> dict[str, str]:
    """``NAME[:CIDR]`` values (``--lan``) as ``{name: cidr}``, in order.

    A LAN without a CIDR gets the first of :data:`DEFAULT_CIDRS` (10.77.0.0/24,
    10.77.1.0/24, ...) that overlaps no LAN given or chosen before.
    """
    given: dict[str, ipaddress.IPv4Network | None] = {}
    for text in entries:
        name, sep, cidr = text.partition(":")
        name = _check_label(name.strip(), "--lan: LAN name")
        if name in given:
            raise ValueError(f"--lan {name} is given twice")
        network = None
        if sep:
            try:
                network = ipaddress.IPv4Network(cidr.strip(), strict=False)
            except ValueError:
                raise ValueError(f"--lan {text!r}: {cidr!r} is not an IPv4 CIDR") from None
        given[name] = network
    taken = [network for network in given.values() if network is not None]
    defaults = (ipaddress.IPv4Network(cidr) for cidr in DEFAULT_CIDRS)
    result: dict[str, str] = {}
    for name, network in given.items():
        if network is None:
            network = next((d for d in defaults if not any(d.overlaps(t) for t in taken)), None)
            if network is None:
                raise ValueError(f"--lan {name}: no free 10.77.N.0/24 left; give it a CIDR")
            taken.append(network)
        result[name] = str(network)
    return result


def load_lan_tokens(path: str | Path) -> dict[str, str]:
    """Read ``NAME TOKEN`` per line (``#`` comments, blank lines skipped)."""
    tokens: dict[str, str] = {}
    for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{number}: expected 'NAME TOKEN', got {raw!r}")
        tokens[_check_label(parts[0], f"{path}:{number}: LAN name")] = parts[1]
    return tokens


@dataclass(frozen=True, slots=True)
class Forward:
    """A port forward: ``host:port`` on the gateway's machine to ``member``:``member_port``."""

    host: str
    port: int
    lan: str
    member: str
    member_port: int

    @classmethod
    def parse(cls, text: str) -> Forward:
        """``[HOST:]PORT=LAN/MEMBER:PORT`` (``--forward``); ``ValueError`` naming what is wrong."""
        where, sep, to = text.partition("=")
        lan, slash, target = to.partition("/")
        member, colon, member_port = target.rpartition(":")
        if not sep or not slash or not colon:
            raise ValueError(f"--forward expects [HOST:]PORT=LAN/MEMBER:PORT, got {text!r}")
        host, _, port = where.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        numbers = []
        # The gateway's port may be 0: the system picks one (and the log says which).
        for value, low in ((port, 0), (member_port, 1)):
            if not (value.isascii() and value.isdigit()) or not low <= int(value) <= 65535:
                raise ValueError(f"--forward {text!r}: {value!r} is not a port ({low}-65535)")
            numbers.append(int(value))
        return cls(
            host,
            numbers[0],
            _check_label(lan, f"--forward {text!r}: LAN"),
            _check_label(member, f"--forward {text!r}: member"),
            numbers[1],
        )


class NameInUseError(Exception):
    """The member name asked for is taken (or reserved) on that LAN."""


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """What the directory knows of a member: its names and addresses."""

    name: str
    lan: str
    address: str
    address6: str

    @property
    def dns_name(self) -> str:
        return f"{self.name}.{self.lan}"


class LanDirectory:
    """Who is on which LAN, by name and address (this process only).

    Names are DNS labels, unique per LAN; ``gateway`` is reserved.  An
    address is the lowest free host number from 2 up.  A shared directory
    (several gateways) implements the same four methods.
    """

    def __init__(self, specs: Iterable[LanSpec]) -> None:
        self._specs = {spec.name: spec for spec in specs}
        self._members: dict[str, dict[str, MemberRecord]] = {name: {} for name in self._specs}

    async def claim(self, lan: str, wanted: str) -> MemberRecord:
        """Reserve ``wanted`` (empty: a free ``member-N``) and an address on ``lan``.

        Raises ``KeyError`` for an unknown LAN, ``ValueError`` for a name that
        is not a DNS label, :class:`NameInUseError` for a taken one and
        ``OSError`` (``EADDRNOTAVAIL``) when the LAN is full.
        """
        spec = self._specs[lan]
        members = self._members[lan]
        network = spec.network
        taken = {ipaddress.IPv4Address(m.address) for m in members.values()}
        number = next(
            (
                n
                for n in range(GATEWAY_HOST_NUMBER + 1, network.num_addresses - 1)
                if network[n] not in taken
            ),
            None,
        )
        if number is None:
            raise OSError(errno.EADDRNOTAVAIL, f"LAN {lan} ({network}) has no free address")
        if wanted:
            name = _check_label(wanted, "member name")
            if name == GATEWAY_NAME or name in members:
                raise NameInUseError(f"{name}.{lan} is taken")
        else:
            name = f"member-{number}"
            suffix = number
            while name in members:
                suffix += 1000
                name = f"member-{suffix}"
        record = MemberRecord(name, lan, str(network[number]), str(ipv6_subnet_for(lan)[number]))
        members[name] = record
        return record

    async def release(self, lan: str, name: str) -> None:
        """Give ``name`` and its address back (idempotent)."""
        self._members.get(lan, {}).pop(name, None)

    async def members(self, lan: str) -> list[MemberRecord]:
        """Every member of ``lan``, in the order they joined."""
        return list(self._members.get(lan, {}).values())

    async def route(self, lan: str, host: str) -> MemberRecord | None:
        """The member ``host`` (a DNS name or an address) names on ``lan``, or ``None``."""
        name = host.lower().rstrip(".")
        members = self._members.get(lan, {})
        suffix = "." + lan
        if name.endswith(suffix):
            return members.get(name[: -len(suffix)])
        ip = parse_ip(name)
        if ip is None:
            return None
        text = str(ip)
        return next((m for m in members.values() if text in (m.address, m.address6)), None)

    async def add_listener(self, lan: str, name: str, transport: str, port: int) -> None:
        """Note that member ``name`` listens on ``transport`` (``tcp``/``udp``) ``port``.

        Nothing to do in one process (the virtual network knows its
        listeners); a directory shared by several gateways records it.
        """

    async def remove_listener(self, lan: str, name: str, transport: str, port: int) -> None:
        """Note that the listener :meth:`add_listener` noted is gone."""


@dataclass(slots=True)
class LanMember:
    """A member of a LAN served by this gateway: its directory record and virtual host."""

    lan: Lan
    record: MemberRecord
    host: VirtualHost
    news: Callable[[wisp.Membership], None]
    listeners: int = 0
    #: Its ends of spliced streams that are open (to inspect; each closes with its stream).
    splices: set[SplicedStream] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def dns_name(self) -> str:
        return self.record.dns_name

    @property
    def address(self) -> str:
        return self.record.address

    def owns(self, host: str) -> bool:
        return host in (self.record.address, self.record.address6)


@dataclass(slots=True)
class Lan:
    """One LAN in this process: its virtual network, the gateway's host and local members."""

    spec: LanSpec
    network: VirtualNetwork
    gateway_host: VirtualHost
    members: dict[str, LanMember] = field(default_factory=dict)
    #: Spliced streams' accepting ends until the listener's session takes
    #: them, by the virtual connection's (local, remote) address there.
    unaccepted: dict[tuple[Address, Address], SplicedStream] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def prefix_length(self) -> int:
        return self.network.ipv4_subnet.prefixlen

    def contains(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return ip in self.network.ipv4_subnet or ip in self.network.ipv6_subnet


class LanHub:
    """The gateway's LANs: join and leave, membership news, destinations on a LAN.

    ``listeners_per_member`` is the quota the Wisp session enforces;
    ``directory`` hands out names and addresses (in-process by default).
    """

    def __init__(
        self,
        specs: Iterable[LanSpec],
        *,
        listeners_per_member: int = DEFAULT_LAN_LISTENERS,
        directory: LanDirectory | None = None,
    ) -> None:
        specs = list(specs)
        if listeners_per_member < 1:
            raise ValueError(f"listeners per member must be at least 1, got {listeners_per_member}")
        self.listeners_per_member = listeners_per_member
        self.directory = directory or LanDirectory(specs)
        #: Connects to addresses another gateway serves (a cluster's relays):
        #: ``(lan, source, destination, port)`` to a stream, or ``None`` when
        #: the destination is this gateway's own.
        self.remote: Callable[[Lan, str, str, int], Awaitable[TcpStream | None]] | None = None
        self.lans: dict[str, Lan] = {}
        for index, spec in enumerate(specs):
            if spec.name in self.lans:
                raise ValueError(f"LAN {spec.name} is declared twice")
            v6 = ipv6_subnet_for(spec.name)
            network = VirtualNetwork(
                seed=index, ipv4_subnet=spec.cidr, ipv6_subnet=str(v6), resolver=False
            )
            gateway_host = network.add_host(
                GATEWAY_NAME,
                [
                    f"{spec.network[GATEWAY_HOST_NUMBER]}/{spec.network.prefixlen}",
                    f"{v6[GATEWAY_HOST_NUMBER]}/64",
                ],
            )
            self.lans[spec.name] = Lan(spec, network, gateway_host)
        for one in self.lans.values():
            for other in self.lans.values():
                if one is not other and one.spec.network.overlaps(other.spec.network):
                    raise ValueError(f"LANs {one.name} and {other.name} overlap")

    def token_of(self, lan: str) -> str | None:
        lan_ = self.lans.get(lan)
        return lan_.spec.token if lan_ is not None else None

    async def join(
        self, lan: str, wanted: str, news: Callable[[wisp.Membership], None]
    ) -> tuple[LanMember, list[MemberRecord]]:
        """Make a new member of ``lan``; it and the members already there (for the news).

        Raises as :meth:`LanDirectory.claim`.  The other members hear of it
        through their ``news`` before this returns; ``news`` is called from
        then on for later joins and leaves.
        """
        where = self.lans[lan]
        record = await self.directory.claim(lan, wanted)
        try:
            host = where.network.add_host(
                record.name,
                [f"{record.address}/{where.prefix_length}", f"{record.address6}/64"],
            )
        except BaseException:
            await self.directory.release(lan, record.name)
            raise
        others = [m for m in await self.directory.members(lan) if m.name != record.name]
        member = LanMember(where, record, host, news)
        joined = wisp.Membership(
            wisp.MembershipChange.MEMBER_JOINED, record.address, record.dns_name
        )
        _tell(where.members.values(), joined)
        where.members[record.name] = member
        return member, others

    async def leave(self, member: LanMember) -> None:
        """Take ``member`` off its LAN: its listeners and sockets close; the others hear of it."""
        lan = member.lan
        if lan.members.get(member.name) is not member:
            return
        del lan.members[member.name]
        # Its listeners close now: what was left for them nobody takes any
        # more (the connecting ends see their connections reset).  Its own
        # streams, spliced or not, end with its session's streams, after
        # they delivered what it sent before it went.
        for key in [key for key in lan.unaccepted if member.owns(key[0][0])]:
            del lan.unaccepted[key]
        lan.network.remove_host(member.host)
        left = wisp.Membership(wisp.MembershipChange.MEMBER_LEFT, member.address, member.dns_name)
        _tell(lan.members.values(), left)
        await self.directory.release(lan.name, member.name)

    async def destination(self, member: LanMember, host: str) -> str | None:
        """The LAN address ``host`` names for ``member``, or ``None`` if it is not on the LAN.

        An IP literal inside the LAN's subnets is on the LAN (whether a member
        has it or not: the virtual network answers for it); so are
        ``NAME.LAN`` names, where an unknown ``NAME`` is ``socket.gaierror``.
        """
        lan = member.lan
        text = host.lower().rstrip(".")
        ip = parse_ip(text)
        if ip is not None:
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            return str(ip) if lan.contains(ip) else None
        if not text.endswith("." + lan.name):
            return None
        if text == f"{GATEWAY_NAME}.{lan.name}":
            return str(lan.spec.network[GATEWAY_HOST_NUMBER])
        found = await self.directory.route(lan.name, text)
        if found is None:
            raise socket.gaierror(socket.EAI_NONAME, f"no member {host!r} on LAN {lan.name}")
        return found.address

    async def connect_member(self, member: LanMember, ip: str, port: int) -> TcpStream:
        """Connect ``member`` to ``ip``:``port`` on its LAN; a spliced stream's end.

        The virtual network makes the connection and raises as it does
        (``ConnectionRefusedError`` when nobody listens there).  The other
        end waits for the listener's session in :meth:`accepted`; a listener
        that is not a session's (a test's own host, say) gets the virtual
        connection, which this end then carries as any stream would.
        """
        return await self._connect_spliced(member.lan, member.host, member, ip, port)

    async def connect_relayed(
        self, lan: Lan, standin: VirtualHost, ip: str, port: int
    ) -> TcpStream:
        """Connect ``standin`` (another gateway's member, see ``_cluster``) to ``ip``:``port``.

        Spliced as :meth:`connect_member` splices, so that a relayed stream
        reaches this gateway's member without the virtual network's TCP.
        """
        return await self._connect_spliced(lan, standin, None, ip, port)

    async def _connect_spliced(
        self, lan: Lan, host: VirtualHost, member: LanMember | None, ip: str, port: int
    ) -> TcpStream:
        virtual = await host.connect_tcp(ip, port)
        if not any(other.owns(ip) for other in lan.members.values()):
            return virtual
        # Nothing awaited since the connection went into the listener's
        # queue: its session cannot have accepted it yet.
        end = SplicedStream(member, virtual, lan)
        other = SplicedStream(None, None, lan)
        end.peer, other.peer = other, end
        key = (_plain(virtual.remote_address), _plain(virtual.local_address))
        end.unaccepted_key = key
        lan.unaccepted[key] = other
        return end

    def accepted(self, member: LanMember, connection: TcpStream) -> TcpStream:
        """What ``member``'s session serves for ``connection`` that its listener accepted.

        The spliced end :meth:`connect_member` left for it, or ``connection``
        itself when it came from anywhere else (a port forward, a relay, a
        host that is no session's).
        """
        key = (_plain(connection.local_address), _plain(connection.remote_address))
        end = member.lan.unaccepted.pop(key, None)
        if end is None:
            return connection
        end.take(member, connection)
        return end

    async def connect_forward(self, lan: str, member: str, port: int) -> TcpStream:
        """Connect from the gateway's host on ``lan`` to ``member``:``port``.

        ``ConnectionRefusedError`` when the member is absent or does not
        listen there.
        """
        where = self.lans[lan]
        found = await self.directory.route(lan, f"{member}.{lan}")
        if found is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"{member}.{lan} is not on the LAN")
        if self.remote is not None:
            source = str(where.spec.network[GATEWAY_HOST_NUMBER])
            relayed = await self.remote(where, source, found.address, port)
            if relayed is not None:
                return relayed
        return await where.gateway_host.connect_tcp(found.address, port)


def _plain(address: Address) -> Address:
    """``address`` with an IPv4-mapped IPv6 host written as IPv4 (a dual-stack listener's view)."""
    host = address[0]
    return (host[7:], address[1]) if host.startswith("::ffff:") else address


# What a spliced stream's end holds for its reader before the writer waits,
# while the reader's session has not taken it: the virtual network's TCP
# window, the bound a member's stream had before the splice.
SPLICE_WINDOW: Final = 256 * 1024

_FIN: Final = "fin"
_RST: Final = "rst"


class SplicedStream(TcpStream):
    """One end of a TCP stream between two members of this gateway (see the module docs).

    It keeps the contract of :class:`~netshim.stack.TcpStream` (half-close,
    resets after the data before them, ``aclose`` with unread data resets)
    and carries bytes in one of two ways: queued for the other end's
    :meth:`receive` (at most :data:`SPLICE_WINDOW` bytes, the writer waits
    past that), or, once the reading session called :meth:`deliver_to`,
    handed to its ``deliver`` function inside the writer's :meth:`send`.
    The virtual connection under it gives the addresses; until the
    accepting session took the other end, a reset of that connection (its
    listener closed with it in the queue, a member left) resets this end.
    """

    def __init__(self, member: LanMember | None, virtual: TcpStream | None, lan: Lan) -> None:
        # The member whose session holds this end (None for a relay's end,
        # and for an accepting end until its session takes it).
        self.member = member
        self.lan = lan
        self.virtual = virtual
        self.peer: SplicedStream = self
        if member is not None:
            member.splices.add(self)
        # Set on the connecting end while the other end waits in Lan.unaccepted.
        self.unaccepted_key: tuple[Address, Address] | None = None
        self.taken = virtual is not None
        self.inbound: deque[bytes] = deque()
        self.buffered = 0
        # How the peer ended its side (_FIN or _RST), read after ``inbound``.
        self.ended: str | None = None
        self.eof_sent = False
        self.closed = False
        # The errno the next send raises (the peer reset or closed).
        self.send_error = 0
        self.deliver: Callable[[bytes], Awaitable[None]] | None = None
        # The reading session's way of taking a packet at once, without a
        # task switch (see :meth:`send_now`); set while ``deliver`` is.
        self.deliver_now: Callable[[bytes | memoryview], bool] | None = None
        # Writes out what ``deliver_now`` took and held back (see :meth:`flush`).
        self.flush_now: Callable[[], None] | None = None
        self.reader_event: anyio.Event | None = None
        self.writer_event: anyio.Event | None = None

    def take(self, member: LanMember, connection: TcpStream) -> None:
        """The accepting session takes this end, with its side of the virtual connection."""
        self.member, self.virtual, self.taken = member, connection, True
        member.splices.add(self)
        self.peer.unaccepted_key = None
        # The connecting end stops watching the virtual connection.
        self.peer._wake_reader()

    @property
    def local_address(self) -> Address:
        assert self.virtual is not None
        return self.virtual.local_address

    @property
    def remote_address(self) -> Address:
        assert self.virtual is not None
        return self.virtual.remote_address

    def _wake_reader(self) -> None:
        event, self.reader_event = self.reader_event, None
        if event is not None:
            event.set()

    def _wake_writer(self) -> None:
        event, self.writer_event = self.writer_event, None
        if event is not None:
            event.set()

    def _end(self, how: str) -> None:
        """The peer ended its side: FIN or RST, read once ``inbound`` is."""
        if self.ended is None:
            self.ended = how
        if how == _RST and not self.send_error:
            self.send_error = errno.ECONNRESET
        self._wake_reader()
        self._wake_writer()

    # -- sending ---------------------------------------------------------

    async def send(self, item: bytes) -> None:
        if self.closed:
            raise anyio.ClosedResourceError
        if self.eof_sent:
            raise os_error(errno.EPIPE, "the stream was shut down for writing")
        if self.send_error:
            raise os_error(self.send_error, f"{self.remote_address[0]}:{self.remote_address[1]}")
        peer = self.peer
        while True:
            if peer.closed:
                # As a closed socket answers data with RST: this send is
                # lost, the next one fails.
                self.send_error = errno.EPIPE if peer.eof_sent else errno.ECONNRESET
                await anyio.lowlevel.checkpoint()
                return
            deliver = peer.deliver
            if deliver is not None and not peer.inbound:
                await deliver(item)
                return
            if peer.buffered < SPLICE_WINDOW:
                peer.inbound.append(item)
                peer.buffered += len(item)
                peer._wake_reader()
                await anyio.lowlevel.checkpoint()
                return
            event = self.writer_event = anyio.Event()
            await event.wait()
            if self.closed:
                raise anyio.ClosedResourceError
            if self.send_error:
                raise os_error(self.send_error, "connection reset by peer")

    def send_now(self, item: bytes | memoryview) -> bool:
        """Hand ``item`` to the reading session at once if it can take it; whether it did.

        The writer's session calls it from its WebSocket reader for each
        DATA packet of this stream, and queues the packet as usual when the
        answer is no: the reader has not taken its end or still has bytes
        queued (they go first), its WebSocket output is full (the queued
        path then waits for room, which keeps the bounds), or either side
        ended.  Nothing is awaited, so no byte overtakes one sent before.
        """
        if self.closed or self.eof_sent or self.send_error:
            return False
        peer = self.peer
        deliver_now = peer.deliver_now
        if deliver_now is None or peer.closed or peer.inbound:
            return False
        return deliver_now(item)

    def flush(self) -> None:
        """Let the reading session write out what :meth:`send_now` handed it.

        The writer's session calls it before it awaits anything, so that the
        packets it passed on in one go leave as one message and nothing
        else the reading session writes for this stream can come first.
        """
        flush_now = self.peer.flush_now
        if flush_now is not None:
            flush_now()

    async def send_eof(self) -> None:
        await anyio.lowlevel.checkpoint()
        if self.closed:
            raise anyio.ClosedResourceError
        if not self.eof_sent:
            self.eof_sent = True
            self.peer._end(_FIN)

    # -- receiving -------------------------------------------------------

    def _take_chunk(self, max_bytes: int) -> bytes:
        first = self.inbound[0]
        if len(first) > max_bytes:
            self.inbound[0] = first[max_bytes:]
            first = first[:max_bytes]
        else:
            self.inbound.popleft()
        self.buffered -= len(first)
        if self.buffered < SPLICE_WINDOW:
            self.peer._wake_writer()
        return first

    def _check_end(self) -> None:
        if self.closed:
            raise anyio.ClosedResourceError
        if self.ended == _FIN:
            raise anyio.EndOfStream
        if self.ended == _RST:
            raise os_error(errno.ECONNRESET, "connection reset by peer")

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        # Before looking: an abort from another task may empty ``inbound``
        # while this one waits for its turn.
        await anyio.lowlevel.checkpoint()
        while True:
            if self.inbound and not self.closed:
                return self._take_chunk(max_bytes)
            self._check_end()
            await self._wait()

    async def deliver_to(
        self,
        deliver: Callable[[bytes], Awaitable[None]],
        deliver_now: Callable[[bytes | memoryview], bool] | None = None,
        flush_now: Callable[[], None] | None = None,
    ) -> NoReturn:
        """Hand what the peer sends to ``deliver``, in order, until the peer's side ends.

        What was queued goes first, from this task; then the peer's
        :meth:`send` calls ``deliver`` itself, and the peer's
        :meth:`send_now` calls ``deliver_now`` (which says whether it took
        the bytes without waiting) and its :meth:`flush` ``flush_now``.
        Raises ``anyio.EndOfStream`` at the peer's FIN and
        ``ConnectionResetError`` at its reset, as :meth:`receive` would.
        """
        try:
            while True:
                if self.inbound and not self.closed:
                    await deliver(self._take_chunk(1 << 62))
                    continue
                self._check_end()
                self.deliver, self.deliver_now, self.flush_now = deliver, deliver_now, flush_now
                await self._wait()
                self.deliver = self.deliver_now = self.flush_now = None
        finally:
            self.deliver = self.deliver_now = self.flush_now = None

    async def _wait(self) -> None:
        event = self.reader_event = anyio.Event()
        peer = self.peer
        if peer.taken or self.virtual is None:
            await event.wait()
            return
        # The accepting session has not taken the other end: only the
        # virtual connection can tell that it died in the listener's queue.
        virtual = self.virtual
        async with anyio.create_task_group() as group:

            async def watch() -> None:
                # Nothing is ever sent on it: this returns only at its end.
                with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError, OSError):
                    await virtual.receive(1)
                if not peer.taken:
                    self._abandon()
                group.cancel_scope.cancel()

            group.start_soon(watch)
            await event.wait()
            group.cancel_scope.cancel()

    def _abandon(self) -> None:
        """The other end was never taken and never will be: a reset for this one."""
        self._forget_unaccepted()
        self.peer.closed = True
        self._end(_RST)

    def _forget_unaccepted(self) -> None:
        key, self.unaccepted_key = self.unaccepted_key, None
        if key is not None:
            unaccepted = self.lan.unaccepted
            if unaccepted.get(key) is self.peer:
                del unaccepted[key]

    # -- closing ---------------------------------------------------------

    def _close(self, reset: bool) -> TcpStream | None:
        self.closed = True
        self.deliver = self.deliver_now = self.flush_now = None
        peer = self.peer
        if reset or self.inbound:
            peer._end(_RST)
        else:
            if not self.eof_sent:
                self.eof_sent = True
                peer._end(_FIN)
            # The peer's next send learns that nobody reads (see send).
            peer._wake_writer()
        self.inbound.clear()
        self.buffered = 0
        self._wake_reader()
        self._wake_writer()
        if not peer.inbound:
            # Else the listener's session still takes the other end and
            # reads what was sent before this close.
            self._forget_unaccepted()
        if self.member is not None:
            self.member.splices.discard(self)
        return self.virtual

    async def aclose(self) -> None:
        if self.closed:
            return
        virtual = self._close(reset=False)
        if virtual is not None:
            await virtual.aclose()
        else:
            await anyio.lowlevel.checkpoint()

    async def abort(self) -> None:
        if self.closed:
            return
        virtual = self._close(reset=True)
        if virtual is not None:
            await virtual.abort()
        else:
            await anyio.lowlevel.checkpoint()


def _tell(members: Iterable[LanMember], news: wisp.Membership) -> None:
    """Give ``news`` to each member; one member's failure is logged and skips only it."""
    for member in list(members):
        try:
            member.news(news)
        except Exception as exc:
            logger.error(
                "internal-error front=lan-news member=%s error=%s: %r",
                member.dns_name,
                type(exc).__name__,
                str(exc)[:200],
            )


def lan_specs(
    lans: Mapping[str, str], tokens: Mapping[str, str], make_token: Callable[[], str]
) -> tuple[list[LanSpec], dict[str, str]]:
    """:class:`LanSpec` for each ``name -> cidr``; the tokens that ``make_token`` made."""
    made: dict[str, str] = {}
    specs = []
    for name, cidr in lans.items():
        token = tokens.get(name)
        if token is None:
            token = made[name] = make_token()
        specs.append(LanSpec(name, cidr, token))
    unknown = sorted(set(tokens) - set(lans))
    if unknown:
        raise ValueError(f"token file names LANs that are not declared: {', '.join(unknown)}")
    return specs, made
