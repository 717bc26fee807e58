"""Egress policy: which destinations a gateway (or any policed stack) may reach.

One :class:`Policy` object answers for every protocol (Wisp, wsproxy,
websockify, SOCKS5) and knows nothing about them: it takes a stack, a host
as the client spelled it, a port and a transport.  It works in three steps
and never lets a second name lookup slip in between (the DNS-rebinding gap):

1. **Resolve once.**  IP literals are used as they are, including the
   spellings ``inet_aton`` accepts (``2130706433``, ``0x7f.1``, ``0177.0.0.1``,
   ``127.1``), which glibc would otherwise turn into loopback behind our back.
   Names go through the stack's ``getaddrinfo``.
2. **Check every address.**  Explicit deny rules win; then cloud metadata
   addresses are refused unless an allow rule names that exact address; then
   allow rules; then the default refusals (private, loopback, link-local,
   CGNAT, multicast, unspecified, reserved, unique-local and site-local IPv6,
   Teredo and local-use NAT64 as whole ranges, and the IPv4-mapped,
   -compatible, -translated (SIIT), NAT64 and 6to4 forms of any of those;
   docs/gateway.md has the table).
3. **Connect to exactly what was checked**: :meth:`Policy.connect_tcp` and
   :meth:`Policy.open_udp` hand the stack the checked IP literal.

A refusal is :class:`DestinationBlockedError`, a ``PermissionError`` (``EACCES``)
whose one-line message says what was blocked, why, and how to allow it.

Rules are strings ``TARGET[:PORTS]``: ``TARGET`` is an IP, a CIDR
(``10.0.0.0/8``, ``[fd00::/8]`` in brackets when ports follow), a host-name
pattern with ``*`` wildcards (``*.example.com``, matched against the name the
client asked for) or ``*`` for any; ``PORTS`` is ``443``, ``8000-8100`` or a
comma list of those.

:class:`Limits` and :class:`TokenBucket` hold the numeric limits (streams per
client and in total, new streams per second, bandwidth, idle and connect
timeouts); buckets take the time as an argument so that they stay testable.
"""

from __future__ import annotations

import errno
import fnmatch
import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import anyio

from ._addresses import InvalidHostNameError, IPAddress, check_host, format_address, parse_ip
from .stack import Stack, TcpStream, UdpSocket

__all__ = [
    "DEFAULT_REFUSED",
    "METADATA_ADDRESSES",
    "DestinationBlockedError",
    "Limits",
    "Policy",
    "Rule",
    "Target",
    "TokenBucket",
    "parse_numeric_ipv4",
]

Transport = Literal["tcp", "udp"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Ranges a gateway must not reach unless told to: they lead into the
# gateway's own machine or network, or nowhere useful (RFC 6890 registries).
DEFAULT_REFUSED: Final[tuple[tuple[str, str], ...]] = (
    ("0.0.0.0/8", "unspecified ('this network')"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "CGNAT (shared address space)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast (deprecated, RFC 7526)"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved or broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215; where the IPv4 sits is the operator's choice)"),
    ("100::/64", "discard-only"),
    ("2001::/32", "Teredo (the IPv4 server and client addresses it carries are unchecked)"),
    ("2001:db8::/32", "documentation"),
    ("fc00::/7", "unique-local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)

# Instance metadata services hand out credentials; refusing them is the
# point of SSRF protection, so a broad allow rule (say 169.254.0.0/16) does
# not open them: only a rule naming the exact address does.
METADATA_ADDRESSES: Final[dict[str, str]] = {
    "169.254.169.254": "cloud metadata service (AWS, GCP, Azure, OpenStack, Oracle)",
    "169.254.170.2": "AWS ECS task metadata",
    "169.254.0.23": "Tencent Cloud metadata",
    "100.100.100.200": "Alibaba Cloud metadata",
    "fd00:ec2::254": "AWS IPv6 metadata service",
}

_REFUSED_NETWORKS: Final = tuple(
    (ipaddress.ip_network(cidr), label) for cidr, label in DEFAULT_REFUSED
)
# The same per IP version, as (network as int, netmask as int, network,
# label): a check masks the address once per network instead of testing
# membership through ipaddress objects, in the same order.
_REFUSED_BY_VERSION: Final = {
    version: tuple(
        (int(network.network_address), int(network.netmask), network, label)
        for network, label in _REFUSED_NETWORKS
        if network.version == version
    )
    for version in (4, 6)
}
_METADATA: Final = {ipaddress.ip_address(ip): label for ip, label in METADATA_ADDRESSES.items()}
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
# SIIT's IPv4-translated addresses (RFC 2765 section 2.1, ::ffff:0:a.b.c.d).
_TRANSLATED: Final = ipaddress.IPv6Network("::ffff:0:0:0/96")
_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")

_NUMERIC_LABEL = re.compile(r"^(0[xX][0-9a-fA-F]*|[0-9]+)$")


def parse_numeric_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address an ``inet_aton`` spelling stands for, else ``None``.

    ``2130706433``, ``0x7f000001``, ``0177.0.0.1`` and ``127.1`` all mean
    127.0.0.1 to the C library; a host name with any non-numeric label is
    not such a spelling.
    """
    labels = text.split(".")
    if not text or len(labels) > 4 or not all(_NUMERIC_LABEL.match(label) for label in labels):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


def _embedded_ipv4(ip: IPAddress) -> tuple[ipaddress.IPv4Address, str] | None:
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "IPv4-mapped"
    if ip.sixtofour is not None:
        return ip.sixtofour, "6to4"
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF), "NAT64"
    if ip in _TRANSLATED:
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF), "SIIT IPv4-translated"
    if ip in _COMPATIBLE and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF), "IPv4-compatible"
    return None


def _parse_ports(text: str) -> tuple[tuple[int, int], ...]:
    ranges = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        if not low.isdigit() or not (high or low).isdigit():
            raise ValueError(
                f"bad port range {part!r}: expected PORT or LOW-HIGH, e.g. 80,8000-8080"
            )
        start, end = int(low), int(high or low)
        if not 0 <= start <= end <= 65535:
            raise ValueError(f"bad port range {part!r}: ports are 0-65535, low before high")
        ranges.append((start, end))
    return tuple(ranges)


@dataclass(frozen=True, slots=True)
class Rule:
    """One allow or deny rule: a network or a host-name pattern, and ports."""

    text: str
    network: Network | None = None
    pattern: str | None = None
    ports: tuple[tuple[int, int], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Rule:
        """Parse ``TARGET[:PORTS]`` (see the module documentation); ``ValueError`` if bad."""
        spec = text.strip()
        if not spec:
            raise ValueError("empty policy rule")
        target, ports = spec, ""
        if spec.startswith("["):
            close = spec.find("]")
            if close < 0:
                raise ValueError(f"unclosed '[' in policy rule {text!r}")
            target, rest = spec[1:close], spec[close + 1 :]
            if rest:
                if not rest.startswith(":"):
                    raise ValueError(f"expected ':PORTS' after ']' in {text!r}")
                ports = rest[1:]
        elif spec.count(":") == 1:
            target, ports = spec.split(":")
        port_ranges = _parse_ports(ports) if ports else ()
        try:
            network: Network | None = ipaddress.ip_network(target, strict=False)
        except ValueError:
            network = None
        if network is None:
            numeric = parse_numeric_ipv4(target)
            if numeric is not None:
                network = ipaddress.ip_network(numeric)
        if network is not None:
            return cls(text, network=network, ports=port_ranges)
        if not re.fullmatch(r"[A-Za-z0-9*?._-]+", target):
            raise ValueError(f"policy rule target {target!r} is neither an IP, a CIDR nor a name")
        return cls(text, pattern=target.lower().rstrip("."), ports=port_ranges)

    def matches(self, host: str, ip: IPAddress, port: int) -> bool:
        if self.ports and not any(low <= port <= high for low, high in self.ports):
            return False
        if self.network is not None:
            if ip.version == self.network.version and ip in self.network:
                return True
            embedded = _embedded_ipv4(ip)
            return (
                embedded is not None and self.network.version == 4 and embedded[0] in self.network
            )
        assert self.pattern is not None
        return fnmatch.fnmatchcase(host.lower().rstrip("."), self.pattern)

    def names_exactly(self, ip: IPAddress) -> bool:
        network = self.network
        return network is not None and network.num_addresses == 1 and ip in network


class DestinationBlockedError(PermissionError):
    """The policy refused a destination; the message says why and how to allow it."""

    def __init__(self, target: str, reason: str, remedy: str) -> None:
        super().__init__(
            errno.EACCES, f"netshim policy refused {target}: {reason}; to allow it, {remedy}"
        )
        self.target = target
        self.reason = reason
        self.remedy = remedy


@dataclass(frozen=True, slots=True)
class Target:
    """A destination that passed the policy: connect to ``ip`` and nothing else."""

    host: str
    ip: str
    port: int
    transport: Transport = "tcp"

    @property
    def address(self) -> tuple[str, int]:
        return (self.ip, self.port)


@dataclass(frozen=True, slots=True)
class Limits:
    """Numeric limits a gateway enforces per client and in total.

    ``None`` means unlimited.  Rates are per second; ``bandwidth`` counts
    bytes in both directions per client; ``idle_timeout`` closes a stream
    that moved no byte for that long; ``connect_timeout`` bounds one
    upstream connect.  ``max_connections_per_client`` and
    ``max_connections_total`` count client connections (WebSocket or SOCKS5,
    idle or not); ``lookups_per_client`` is how many name lookups one client
    may have running at once, so that a slow resolver and one busy client
    cannot take every lookup thread from the others.
    """

    max_streams_per_client: int | None = 256
    max_streams_total: int | None = 4096
    max_connections_per_client: int | None = 64
    max_connections_total: int | None = 4096
    lookups_per_client: int = 4
    new_streams_per_second: float | None = None
    new_streams_burst: int = 64
    bandwidth: float | None = None
    idle_timeout: float | None = 600.0
    connect_timeout: float = 15.0

    def __post_init__(self) -> None:
        for name in (
            "max_streams_per_client",
            "max_streams_total",
            "max_connections_per_client",
            "max_connections_total",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or None for no limit), got {value}")
        if self.lookups_per_client < 1:
            raise ValueError(
                f"lookups_per_client must be at least 1, got {self.lookups_per_client}"
            )


class TokenBucket:
    """A token bucket that takes the current time as an argument (no clock inside)."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = now

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def try_take(self, amount: float, now: float) -> bool:
        """Take ``amount`` tokens if they are there; ``False`` (and take nothing) if not."""
        self._refill(now)
        if self._tokens >= amount:
            self._tokens -= amount
            return True
        return False

    def take(self, amount: float, now: float) -> float:
        """Take ``amount`` tokens, going into debt; return how long to wait before using them."""
        self._refill(now)
        self._tokens -= amount
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


@dataclass(slots=True)
class Policy:
    """Which destinations may be reached (see the module documentation).

    ``allow`` and ``deny`` are rules; ``ports`` restricts every destination
    to those ports (``"80,443,1024-65535"``); ``allow_private=True`` turns
    off the default refusals (metadata addresses stay refused);
    ``allow_udp`` and ``allow_tcp`` switch transports off; ``limits`` are
    the numeric limits the gateway applies.
    """

    allow: Sequence[str | Rule] = ()
    deny: Sequence[str | Rule] = ()
    ports: str | None = None
    allow_private: bool = False
    allow_tcp: bool = True
    allow_udp: bool = True
    limits: Limits = field(default_factory=Limits)
    _allow: tuple[Rule, ...] = field(init=False, repr=False)
    _deny: tuple[Rule, ...] = field(init=False, repr=False)
    _ports: tuple[tuple[int, int], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._allow = tuple(_rules(self.allow))
        self._deny = tuple(_rules(self.deny))
        self._ports = _parse_ports(self.ports) if self.ports else ()

    @classmethod
    def permissive(cls) -> Policy:
        """A policy that refuses nothing but metadata addresses (tests, trusted networks)."""
        return cls(allow_private=True)

    # -- checking

    def check(
        self, host: str, ip: IPAddress | str, port: int, transport: Transport = "tcp"
    ) -> None:
        """Raise :class:`DestinationBlockedError` unless ``ip``:``port`` may be reached.

        ``host`` is the name the client asked for; name rules match it.
        """
        address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip

        def where() -> str:
            # Built only for a refusal: an allowed destination needs no text.
            text = format_address((str(address), port))
            return f"{text} (asked as {host!r})" if host and host != str(address) else text

        if transport == "tcp" and not self.allow_tcp:
            raise DestinationBlockedError(
                where(), "TCP is switched off", "set allow_tcp (--allow-tcp)"
            )
        if transport == "udp" and not self.allow_udp:
            raise DestinationBlockedError(
                where(), "UDP is switched off", "set allow_udp (--allow-udp)"
            )
        for rule in self._deny:
            if rule.matches(host, address, port):
                raise DestinationBlockedError(
                    where(), f"matches deny rule {rule.text!r}", "remove that deny rule"
                )
        if self._ports and not any(low <= port <= high for low, high in self._ports):
            raise DestinationBlockedError(
                where(),
                f"port {port} is outside the allowed ports {self.ports}",
                "widen ports (--ports)",
            )
        metadata = _METADATA.get(address)
        embedded = _embedded_ipv4(address)
        if metadata is None and embedded is not None:
            metadata = _METADATA.get(embedded[0])
        if metadata is not None:
            if any(rule.names_exactly(address) for rule in self._allow):
                return
            hint = f"add an allow rule naming exactly that address ({_allow_hint(address, port)})"
            raise DestinationBlockedError(where(), metadata, hint)
        if any(rule.matches(host, address, port) for rule in self._allow):
            return
        if self.allow_private:
            return
        refused = _refused_label(address)
        if refused is not None:
            raise DestinationBlockedError(
                where(),
                refused,
                f"add an allow rule ({_allow_hint(address, port)}) or set allow_private"
                " (--allow-private)",
            )

    # -- resolving and connecting

    async def resolve(
        self,
        stack: Stack,
        host: str,
        port: int,
        transport: Transport = "tcp",
        *,
        lookups: anyio.CapacityLimiter | None = None,
    ) -> list[Target]:
        """Every address of ``host`` that the policy allows, in the resolver's order.

        A name lookup (not an IP literal) waits for a token of ``lookups``
        when given: a gateway passes each client's own limiter.

        Raises :class:`DestinationBlockedError` when none is allowed (naming the
        first refused one), ``socket.gaierror`` when the name does not resolve
        or is no valid host name (:class:`~netshim.InvalidHostNameError`).
        """
        # Checked and normalised before anything else: rules match the name a
        # resolver will see, and a spelling that maps to an IP literal (full-
        # width digits) is checked as that literal.
        host = check_host(host, "resolve")
        if not host:
            # "" and "." mean "no name" to getaddrinfo (the local host): never
            # a destination.
            raise InvalidHostNameError(host, "empty name")
        literal = parse_ip(host) or parse_numeric_ipv4(host)
        if literal is not None:
            self.check(host, literal, port, transport)
            return [Target(host, str(literal), port, transport)]
        kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
        if lookups is None:
            infos = await stack.getaddrinfo(host, port, 0, kind)
        else:
            async with lookups:
                infos = await stack.getaddrinfo(host, port, 0, kind)
        targets: list[Target] = []
        first_refusal: DestinationBlockedError | None = None
        seen: set[str] = set()
        for info in infos:
            ip = str(info[4][0]).split("%", 1)[0]
            if ip in seen:
                continue
            seen.add(ip)
            try:
                self.check(host, ip, port, transport)
            except DestinationBlockedError as exc:
                first_refusal = first_refusal or exc
                continue
            targets.append(Target(host, ip, port, transport))
        if not targets:
            if first_refusal is not None:
                raise first_refusal
            raise socket.gaierror(
                socket.EAI_NODATA, f"No address associated with hostname ({host!r})"
            )
        return targets

    async def connect_tcp(
        self,
        stack: Stack,
        host: str,
        port: int,
        *,
        lookups: anyio.CapacityLimiter | None = None,
    ) -> tuple[TcpStream, Target]:
        """Resolve, check, and connect to the first allowed address that answers.

        Raises :class:`DestinationBlockedError`, ``socket.gaierror`` or the first
        connect error, as ``socket.create_connection`` does.
        """
        errors: list[OSError] = []
        for target in await self.resolve(stack, host, port, "tcp", lookups=lookups):
            try:
                return await stack.connect_tcp(target.ip, port), target
            except OSError as exc:
                errors.append(exc)
        raise errors[0]

    async def open_udp(
        self,
        stack: Stack,
        host: str,
        port: int,
        *,
        lookups: anyio.CapacityLimiter | None = None,
    ) -> tuple[UdpSocket, Target]:
        """Resolve and check ``host``, then open a UDP socket connected to that exact address."""
        target = (await self.resolve(stack, host, port, "udp", lookups=lookups))[0]
        bind = "::" if ":" in target.ip else "0.0.0.0"
        return await stack.open_udp(bind, 0, remote=target.address), target


def _rules(items: Iterable[str | Rule]) -> Iterable[Rule]:
    for item in items:
        yield item if isinstance(item, Rule) else Rule.parse(item)


def _refused_label(address: IPAddress) -> str | None:
    value = int(address)
    for network_value, netmask, network, label in _REFUSED_BY_VERSION[address.version]:
        if value & netmask == network_value:
            return f"{label} address ({network})"
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        inner = _refused_label(embedded[0])
        if inner is not None:
            return f"{embedded[1]} form of {embedded[0]}, a {inner}"
    return None


def _allow_hint(address: IPAddress, port: int) -> str:
    rule = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    return f"--allow {rule}"
