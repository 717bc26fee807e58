"""PolicyStack and RouterStack: a policy in front of any stack, and routes between stacks.

Both use the rule language of :mod:`netshim.policy` (``TARGET[:PORTS]``
with an IP, a CIDR, a name pattern such as ``*.internal``, or ``*``).

:class:`PolicyStack` checks every outgoing connection and datagram before
the inner stack sees it.  Deny rules win; when ``allow`` rules are given a
destination must match one of them.  Names are checked as spelled; on a
stack that resolves locally they are also resolved once and every address
is checked, and the connection goes to exactly the address that passed (no
second lookup, so no DNS-rebinding gap).  On a tunnel (which resolves at
the far end) names are checked by name only.  A refusal is
:class:`~netshim.policy.DestinationBlockedError` naming the destination and
the rule.

:class:`RouterStack` sends each destination to the first route whose rule
matches it (by the name as given, the IP when it is a literal, the port),
else to the default stack.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from .._addresses import IPAddress, parse_ip
from ..policy import DestinationBlockedError, Rule, parse_numeric_ipv4
from ..stack import (
    DEFAULT_BACKLOG,
    AddrInfo,
    ForwardingStack,
    ForwardingUdpSocket,
    Stack,
    TcpListener,
    TcpStream,
    UdpSocket,
)
from ._tunnel import TunnelStack

__all__ = ["PolicyStack", "RouterStack"]


def _rules(items: Sequence[str | Rule] | str | None) -> tuple[Rule, ...]:
    if items is None:
        return ()
    if isinstance(items, str):
        items = [part for part in items.split(",") if part.strip()]
    return tuple(item if isinstance(item, Rule) else Rule.parse(item) for item in items)


def _matches(rule: Rule, host: str, ip: IPAddress | None, port: int) -> bool:
    if rule.network is not None and ip is None:
        return False
    # A name pattern is matched against the name; an IP literal is its own name.
    return rule.matches(host, ip if ip is not None else parse_ip("0.0.0.0"), port)  # type: ignore[arg-type]


class PolicyStack(ForwardingStack):
    """``inner`` behind ``allow`` and ``deny`` rules (see the module documentation)."""

    def __init__(
        self,
        inner: Stack,
        *,
        allow: Sequence[str | Rule] | str | None = None,
        deny: Sequence[str | Rule] | str | None = None,
    ) -> None:
        super().__init__(inner)
        self.allow = _rules(allow)
        self.deny = _rules(deny)

    def __repr__(self) -> str:
        allow = [r.text for r in self.allow]
        deny = [r.text for r in self.deny]
        return f"PolicyStack({self.inner!r}, allow={allow}, deny={deny})"

    def check(self, host: str, ip: IPAddress | None, port: int, asked: str | None = None) -> None:
        """Raise :class:`DestinationBlockedError` unless the destination may be reached."""
        where = f"{host}:{port}" if ip is None or str(ip) == host else f"{ip}:{port}"
        if asked and asked != host:
            where += f" (asked as {asked!r})"
        name = asked or host
        for rule in self.deny:
            if _matches(rule, name, ip, port):
                raise DestinationBlockedError(
                    where, f"matches deny rule {rule.text!r}", "remove that deny rule"
                )
        if self.allow and not any(_matches(rule, name, ip, port) for rule in self.allow):
            rules = ", ".join(repr(r.text) for r in self.allow)
            raise DestinationBlockedError(
                where,
                f"matches none of the allow rules ({rules})",
                f"add an allow rule such as {host!r}",
            )

    async def _checked(self, host: str, port: int, transport: str) -> list[str]:
        """The addresses to try, every one of them checked."""
        name, port = TunnelStack.destination(host, port, "connect_tcp")
        literal = parse_ip(name) or parse_numeric_ipv4(name)
        if literal is not None:
            self.check(str(literal), literal, port, name if name != str(literal) else None)
            return [str(literal)]
        if self.inner.resolves_remotely:
            self.check(name, None, port)
            return [name]
        kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
        infos = await self.inner.getaddrinfo(name, port, 0, kind)
        allowed: list[str] = []
        first: DestinationBlockedError | None = None
        for info in infos:
            ip = str(info[4][0])
            if ip in allowed:
                continue
            try:
                self.check(ip, parse_ip(ip), port, name)
            except DestinationBlockedError as exc:
                first = first or exc
                continue
            allowed.append(ip)
        if not allowed:
            assert first is not None
            raise first
        return allowed

    async def connect_tcp(
        self, host: str, port: int, *, local_address: tuple[str, int] | None = None
    ) -> TcpStream:
        errors: list[OSError] = []
        for ip in await self._checked(host, port, "tcp"):
            try:
                return await self.inner.connect_tcp(ip, port, local_address=local_address)
            except OSError as exc:
                errors.append(exc)
        raise errors[0]

    async def open_udp(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        *,
        remote: tuple[str, int] | None = None,
        ipv6_only: bool = False,
    ) -> UdpSocket:
        if remote is not None:
            remote = ((await self._checked(remote[0], remote[1], "udp"))[0], remote[1])
        inner = await self.inner.open_udp(host, port, remote=remote, ipv6_only=ipv6_only)
        return _PolicedUdpSocket(self, inner)

    async def aclose(self) -> None:
        # The policy owns what it wraps (see the module documentation).
        await self.inner.aclose()


class _PolicedUdpSocket(ForwardingUdpSocket):
    """A UDP socket whose every destination passes the policy first."""

    def __init__(self, stack: PolicyStack, inner: UdpSocket) -> None:
        super().__init__(inner)
        self.stack = stack

    async def send(self, data: bytes, address: tuple[str, int] | None = None) -> None:
        if address is not None:
            address = ((await self.stack._checked(address[0], address[1], "udp"))[0], address[1])
        await self.inner.send(data, address)


class RouterStack(Stack):
    """Routes each destination to a stack: ``routes`` are ``(rule, stack)`` pairs, first match wins.

    ``RouterStack([("*.internal", lan), ("10.0.0.0/8", socks)], default=wisp)``.
    Listening and local binding go to ``default``; ``getaddrinfo`` for a
    name goes to the stack its route names (the port is ignored there).
    Names resolve remotely when the default stack does.
    """

    def __init__(self, routes: Sequence[tuple[str | Rule, Stack]], default: Stack) -> None:
        self.routes: list[tuple[Rule, Stack]] = []
        for rule, stack in routes:
            if not isinstance(stack, Stack):
                raise TypeError(f"route {rule!r} needs a netshim Stack, not {type(stack).__name__}")
            self.routes.append((rule if isinstance(rule, Rule) else Rule.parse(rule), stack))
        if not isinstance(default, Stack):
            raise TypeError(f"default must be a netshim Stack, not {type(default).__name__}")
        self.default = default
        self.resolves_remotely = default.resolves_remotely or any(
            s.resolves_remotely for _, s in self.routes
        )

    def __repr__(self) -> str:
        routes = ", ".join(f"{r.text!r}: {s!r}" for r, s in self.routes)
        return f"RouterStack({{{routes}}}, default={self.default!r})"

    def route(self, host: str, port: int) -> Stack:
        """The stack that ``host:port`` goes to."""
        name, port = TunnelStack.destination(host, port, "connect_tcp")
        ip = parse_ip(name)
        for rule, stack in self.routes:
            if _matches(rule, name, ip, port):
                return stack
        return self.default

    async def connect_tcp(
        self, host: str, port: int, *, local_address: tuple[str, int] | None = None
    ) -> TcpStream:
        name, port = TunnelStack.destination(host, port, "connect_tcp")
        stack = self.route(name, port)
        return await stack.connect_tcp(name, port, local_address=local_address)

    async def listen_tcp(
        self,
        host: str | None = None,
        port: int = 0,
        *,
        backlog: int = DEFAULT_BACKLOG,
        ipv6_only: bool = False,
    ) -> TcpListener:
        return await self.default.listen_tcp(host, port, backlog=backlog, ipv6_only=ipv6_only)

    async def open_udp(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        *,
        remote: tuple[str, int] | None = None,
        ipv6_only: bool = False,
    ) -> UdpSocket:
        # A datagram socket is bound to one stack: the route of its remote
        # address, else the default.
        stack = self.default if remote is None else self.route(*remote)
        if remote is not None:
            remote = TunnelStack.destination(remote[0], remote[1], "open_udp")
        return await stack.open_udp(host, port, remote=remote, ipv6_only=ipv6_only)

    async def getaddrinfo(
        self,
        host: str | bytes | None,
        port: str | bytes | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[AddrInfo]:
        stack = self.default
        if isinstance(host, str | bytes) and host:
            text = host.decode() if isinstance(host, bytes) else host
            number = port if isinstance(port, int) else 0
            stack = self.route(text, number)
        return await stack.getaddrinfo(host, port, family, type, proto, flags)

    async def aclose(self) -> None:
        seen: dict[int, Stack] = {id(s): s for _, s in self.routes}
        seen[id(self.default)] = self.default
        for stack in seen.values():
            await stack.aclose()
