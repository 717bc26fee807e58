"""Blocking the real network for a test: a stack that refuses by an allow list.

:class:`BlockingStack` wraps the host network (or any stack) and lets through
only the destinations its allow rules name.  Rules are the policy module's
strings (:class:`netshim.policy.Rule`): an IP (``127.0.0.1``), a network
(``10.0.0.0/8``, ``[::1]``), a name pattern (``*.example.com``), each
optionally with ports (``:443``, ``:8000-8100``).

A refusal is :class:`NetworkBlockedError`, deliberately *not* an ``OSError``:
client libraries retry on ``OSError`` and would turn a policy decision into
a slow, confusing timeout.  The check runs in the program's own thread (the
socket shim calls :meth:`BlockingStack.check_destination` from ``connect()``
and ``sendto()``), so the error reaches the caller as raised, also from
asyncio's and trio's non-blocking connects.  Every refusal is also recorded,
so that the pytest plugin fails the test even when the program swallows the
exception.

The stack must not claim ``uses_host_sockets``: with that flag the shim hands
out real sockets that never pass through :meth:`check_destination`.
"""

from __future__ import annotations

import fnmatch
import socket
import threading
from collections.abc import Iterable, Sequence

from .._addresses import check_host, format_address, parse_ip
from ..policy import Rule, parse_numeric_ipv4
from ..stack import (
    AddrInfo,
    ForwardingStack,
    ForwardingUdpSocket,
    Stack,
    TcpStream,
    UdpSocket,
)

__all__ = ["BlockingStack", "NetworkBlockedError", "parse_rules"]

# Names the C library answers from /etc/hosts or nss-myhostname without a
# query leaving the machine; their addresses are still checked on connect.
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


class NetworkBlockedError(Exception):
    """A test reached for a real destination its allow list does not name.

    Not an ``OSError``, so retry loops that catch network errors let it
    through.  ``destination`` is what was blocked (``"93.184.216.34:443"`` or
    a name), ``transport`` ``"tcp"``, ``"udp"`` or ``"dns"``, ``rule`` the
    allow rule that would let it pass, ``test`` the test's node id.
    """

    def __init__(self, transport: str, destination: str, rule: str, test: str) -> None:
        self.transport = transport
        self.destination = destination
        self.rule = rule
        self.test = test
        super().__init__(self.message)

    @property
    def message(self) -> str:
        what = {
            "tcp": "a TCP connection to",
            "udp": "a UDP datagram to",
            "dns": "a DNS lookup of",
        }[self.transport]
        where = f" in {self.test}" if self.test else ""
        return (
            f"netshim blocked {what} {self.destination}{where}; to allow it, "
            f'mark the test @pytest.mark.netshim(allow=["{self.rule}"])'
        )


def parse_rules(items: Iterable[str]) -> list[Rule]:
    """Allow rules from strings; ``ValueError`` naming the bad one."""
    rules = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"netshim allow rules are strings, not {item!r}")
        try:
            rules.append(Rule.parse(item))
        except ValueError as exc:
            raise ValueError(f"bad netshim allow rule {item!r}: {exc}") from None
    return rules


def _name_allowed(rule: Rule, name: str, port: int | None) -> bool:
    if rule.pattern is None:
        return False
    if rule.ports and port and not any(low <= port <= high for low, high in rule.ports):
        return False
    return fnmatch.fnmatchcase(name, rule.pattern)


class BlockingStack(ForwardingStack):
    """``inner`` (normally :class:`netshim.HostStack`) restricted to ``allow``.

    ``test`` names the test in messages; ``blocked`` lists every refusal in
    order.  Listening and binding are always allowed: only reaching out is
    checked.  Name lookups are refused unless an allow rule names the name
    (or it is ``localhost`` or numeric); the addresses an allowed name
    resolved to may then be connected to on the rule's ports.
    """

    def __init__(self, inner: Stack, allow: Sequence[str | Rule] = (), *, test: str = "") -> None:
        super().__init__(inner)
        self.rules = [rule if isinstance(rule, Rule) else Rule.parse(rule) for rule in allow]
        self.test = test
        self.blocked: list[NetworkBlockedError] = []
        self._lock = threading.Lock()
        # Addresses that allowed names resolved to, with the names.
        self._resolved: dict[str, set[str]] = {}

    def __repr__(self) -> str:
        return f"BlockingStack({self.inner!r}, allow={[rule.text for rule in self.rules]!r})"

    # -- the checks --------------------------------------------------------------

    def _refuse(self, transport: str, destination: str, rule: str) -> NetworkBlockedError:
        error = NetworkBlockedError(transport, destination, rule, self.test)
        with self._lock:
            self.blocked.append(error)
        return error

    def check_destination(self, host: str, port: int, transport: str) -> None:
        ip = parse_ip(host)
        if ip is None:
            self._check_name(host, port)
            return
        text = str(ip)
        if any(rule.matches(text, ip, port) for rule in self.rules):
            return
        names = self._resolved.get(text, ())
        if any(_name_allowed(rule, name, port) for rule in self.rules for name in names):
            return
        destination = format_address((text, port))
        raise self._refuse(transport, destination, destination)

    def _check_name(self, name: str, port: int | None) -> None:
        if name in _LOCAL_NAMES or name.endswith(".localhost") or name == socket.gethostname():
            return
        if parse_numeric_ipv4(name) is not None:
            return
        if any(_name_allowed(rule, name, port) for rule in self.rules):
            return
        raise self._refuse("dns", name, name)

    # -- the contract ---------------------------------------------------------------

    async def getaddrinfo(
        self,
        host: str | bytes | None,
        port: str | bytes | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[AddrInfo]:
        name = None if host is None else check_host(host, "getaddrinfo")
        if name is not None and parse_ip(name) is None:
            self._check_name(name, port if isinstance(port, int) else None)
        infos = await self.inner.getaddrinfo(host, port, family, type, proto, flags)
        if name is not None and parse_ip(name) is None:
            with self._lock:
                for info in infos:
                    self._resolved.setdefault(str(info[4][0]), set()).add(name)
        return infos

    async def reverse_lookup(self, ip: str) -> str:
        address = parse_ip(ip)
        if address is None or not (
            address.is_loopback
            or any(rule.network and address in rule.network for rule in self.rules)
        ):
            # A PTR query would leave the machine; answer as a resolver without
            # the name would, because servers ask this (getfqdn) merely to log.
            raise socket.herror(1, f"Unknown host ({ip})")
        return await self.inner.reverse_lookup(ip)

    async def connect_tcp(
        self, host: str, port: int, *, local_address: tuple[str, int] | None = None
    ) -> TcpStream:
        self.check_destination(check_host(host, "connect_tcp"), port, "tcp")
        return await self.inner.connect_tcp(host, port, local_address=local_address)

    async def open_udp(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        *,
        remote: tuple[str, int] | None = None,
        ipv6_only: bool = False,
    ) -> UdpSocket:
        if remote is not None:
            self.check_destination(check_host(remote[0], "open_udp"), remote[1], "udp")
        udp = await self.inner.open_udp(host, port, remote=remote, ipv6_only=ipv6_only)
        return _CheckedUdpSocket(udp, self)


class _CheckedUdpSocket(ForwardingUdpSocket):
    """A UDP socket whose every destination passes the stack's check first."""

    def __init__(self, inner: UdpSocket, stack: BlockingStack) -> None:
        super().__init__(inner)
        self._stack = stack

    async def send(self, data: bytes, address: tuple[str, int] | None = None) -> None:
        if address is not None:
            self._stack.check_destination(check_host(address[0], "send"), address[1], "udp")
        await self.inner.send(data, address)
