"""The parent's half of ``--isolate``: every flow from the namespace, ended and dialled again.

A :class:`Terminator` holds the namespace's TUN device (a
:class:`~netshim.ip.links.TunLink`) and runs an :class:`~netshim.stacks.ip.IpStack`
on it that owns the gateway and DNS addresses and intercepts everything else
(:mod:`netshim.ip.intercept`):

* a TCP connection to ``ip:port`` is dialled on the outer stack through the
  policy *before* the program's handshake completes; refused, the program
  gets a reset (``ECONNREFUSED``) or, with ``refusal="icmp"``, an ICMP
  administratively prohibited (``EHOSTUNREACH``); an unreachable or
  timed-out destination is an ICMP unreachable.  An accepted connection is
  relayed both ways with half-closes and resets carried across;
* a UDP flow (program address and port to destination address and port) gets
  a socket on the outer stack, connected to the destination; replies come
  back from the destination's address; flows idle for
  :data:`UDP_IDLE_TIMEOUT` seconds end, and at most :data:`MAX_UDP_FLOWS`
  live at once (the oldest goes);
* DNS queries to the namespace's DNS address are answered from the outer
  stack's ``getaddrinfo`` (A, AAAA) and ``reverse_lookup`` (PTR); a stack
  that resolves names remotely (a tunnel) gets synthetic addresses (as the
  socket shim hands out) that connections turn back into names;
* the gateway address stands for the machine's loopback (``127.0.0.1`` /
  ``::1``), reachable only where the policy allows loopback;
* ICMP echo requests are answered for every address.

Each refusal is logged once, naming the rule, as the gateway logs it.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import anyio.abc

from .._addresses import Address, IPAddress, parse_ip
from ..dns import Record, Request, serve
from ..ip.intercept import InterceptedSyn
from ..ip.links import TunLink
from ..ip.tcp import TcpConfig
from ..policy import DestinationBlockedError, Policy
from ..protocols.dns import from_reverse_name
from ..shim._names import SyntheticNames
from ..stack import Stack, TcpStream, UdpSocket
from ..stacks.ip import Interception, IpStack
from . import Addressing
from ._splice import Splice, splice

__all__ = ["MAX_UDP_FLOWS", "TCP_BUFFER", "UDP_IDLE_TIMEOUT", "Terminator", "TerminatorCounters"]

logger = logging.getLogger("netshim.isolate")

#: Seconds a UDP flow lives without traffic (Linux conntrack's unreplied UDP: 30 s).
UDP_IDLE_TIMEOUT = 30.0
#: UDP flows alive at once; a new one beyond ends the least recently used.
MAX_UDP_FLOWS = 1024
_RELAY_CHUNK = 256 * 1024
# Allowed TCP destinations remembered; beyond, the memory starts again (a
# program that scans addresses must not grow it without bound).
_MAX_ALLOWED_CACHED = 4096
#: Bytes each program connection holds each way (its send buffer, and the
#: window it offers the program): Linux's largest autotuned send buffer
#: (net.ipv4.tcp_wmem), held only while data waits.  With 256 KiB a transfer
#: waited for ACKs every 256 KiB relayed: a GiB uploaded cost the parent 2.3-2.6
#: CPU seconds, against 1.5 with 4 MiB (downloads 2.7-3.2 against 2.3-2.6).
TCP_BUFFER = 4 * 1024 * 1024
# A relay already coalesces what it is given; Nagle on the program's side
# would hold each relayed piece's sub-MSS tail for an ACK (a 256 KiB relay
# chunk ends in one), and pasta and slirp4netns do not delay either.
_TCP_CONFIG = TcpConfig(nodelay=True, send_buffer=TCP_BUFFER, receive_buffer=TCP_BUFFER)


@dataclass
class TerminatorCounters:
    """What the terminator did, for logs and tests."""

    tcp_accepted: int = 0
    tcp_refused: int = 0
    udp_flows: int = 0
    dns_queries: int = 0
    refusals: list[str] = field(default_factory=list)


class _UdpFlow:
    def __init__(self, upstream: UdpSocket, program: Address, destination: Address) -> None:
        self.upstream = upstream
        self.program = program
        self.destination = destination
        self.last_active = time.monotonic()
        self.scope = anyio.CancelScope()


class Terminator:
    """Carries a namespace's traffic (a TUN device) onto ``stack``, through ``policy``.

    ``refusal`` says how a policy refusal reaches the program: ``"reset"``
    (``ECONNREFUSED``) or ``"icmp"`` (ICMP administratively prohibited,
    ``EHOSTUNREACH``).
    """

    def __init__(
        self,
        link: TunLink | Any,
        stack: Stack,
        *,
        policy: Policy,
        addressing: Addressing,
        refusal: Literal["reset", "icmp"] = "reset",
        connect_timeout: float = 30.0,
    ) -> None:
        self.link = link
        self.stack = stack
        self.policy = policy
        self.addressing = addressing
        self.refusal = refusal
        self.connect_timeout = connect_timeout
        self.counters = TerminatorCounters()
        self._names = SyntheticNames() if stack.resolves_remotely else None
        self._udp_flows: OrderedDict[tuple[Address, Address], _UdpFlow] = OrderedDict()
        # Program-side destinations the policy allowed, with the address to
        # dial for each (the policy is read once per address and port).
        self._allowed_tcp: dict[tuple[IPAddress, int], str] = {}
        addresses: list[str] = [
            f"{addressing.gateway4}/{addressing.program4.network.prefixlen}",
            f"{addressing.dns4}/{addressing.program4.network.prefixlen}",
        ]
        if addressing.program6 is not None:
            prefix = addressing.program6.network.prefixlen
            addresses += [f"{addressing.gateway6}/{prefix}", f"{addressing.dns6}/{prefix}"]
        self.inner = IpStack(
            link,
            addresses=addresses,
            mtu=addressing.mtu,
            hostname="netshim-gateway",
            tcp_config=_TCP_CONFIG,
        )

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled; ``task_status.started()`` once traffic is carried."""
        addressing = self.addressing
        async with self.inner, anyio.create_task_group() as group:
            interception = self.inner.intercept()
            servers = [serve(self.inner, self._answer_dns, str(addressing.dns4), 53)]
            if addressing.program6 is not None:
                servers.append(serve(self.inner, self._answer_dns, str(addressing.dns6), 53))
            async with contextlib.AsyncExitStack() as exits:
                for server in servers:
                    await exits.enter_async_context(server)
                group.start_soon(self._expire_udp_flows)
                task_status.started()
                while True:
                    flow = await interception.next_flow()
                    if isinstance(flow, InterceptedSyn):
                        group.start_soon(self._tcp_flow, interception, flow)
                    else:
                        await self._udp_datagram(interception, group, *flow)

    # -- destinations ---------------------------------------------------

    def _destination(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        """What ``address`` stands for on the outer stack; None for the DNS address."""
        addressing = self.addressing
        if address in (addressing.dns4, addressing.dns6):
            return None
        if address == addressing.gateway4:
            return "127.0.0.1"
        if address == addressing.gateway6:
            return "::1"
        if self._names is not None:
            name = self._names.name_for(address)
            if name is not None:
                return name
        return str(address)

    # -- TCP --------------------------------------------------------------

    async def _tcp_flow(self, interception: Interception, syn: InterceptedSyn) -> None:
        host = self._destination(syn.local[0])
        port = syn.local[1]
        where = f"{syn.local[0]}:{port}"
        if host is None:
            interception.refuse(syn, "reset")
            return
        try:
            upstream = await self._dial_tcp(syn.local, host, port)
        except DestinationBlockedError as exc:
            self.counters.tcp_refused += 1
            self.counters.refusals.append(str(exc))
            logger.warning("refused protocol=tcp destination=%s %s", where, exc)
            interception.refuse(syn, "reset" if self.refusal == "reset" else "prohibited")
            return
        except TimeoutError:
            self.counters.tcp_refused += 1
            logger.info("unreachable protocol=tcp destination=%s timed out", where)
            interception.refuse(syn, "host-unreachable")
            return
        except OSError as exc:
            self.counters.tcp_refused += 1
            logger.info("failed protocol=tcp destination=%s error=%s", where, exc)
            if exc.errno == errno.ENETUNREACH:
                interception.refuse(syn, "net-unreachable")
            elif exc.errno == errno.EHOSTUNREACH or isinstance(exc, socket.gaierror):
                interception.refuse(syn, "host-unreachable")
            else:
                interception.refuse(syn, "reset")
            return
        async with upstream:
            try:
                program = await interception.accept(syn)
            except OSError:
                return
            self.counters.tcp_accepted += 1
            async with program:
                joined = splice(program, upstream)
                if joined is None:
                    await _relay(program, upstream)
                else:
                    await _spliced(joined, program, upstream)

    async def _dial_tcp(
        self, destination: tuple[IPAddress, int], host: str, port: int
    ) -> TcpStream:
        """``host``:``port`` on the outer stack through the policy, in :attr:`connect_timeout`.

        Raises what :meth:`Policy.connect_tcp` raises, ``TimeoutError`` when
        the destination did not answer in time.
        """
        allowed = self._allowed_tcp.get(destination)
        # A bare cancel scope: anyio.fail_after wraps one in a generator,
        # which showed in the profile of a connect-heavy run.
        with anyio.CancelScope(deadline=anyio.current_time() + self.connect_timeout) as scope:
            if allowed is not None:
                return await self.stack.connect_tcp(allowed, port)
            upstream, target = await self.policy.connect_tcp(self.stack, host, port)
            if target.ip == host:
                # An address (not a name) the policy let through: the same
                # address and port always would.  Names are checked each
                # time, since what they resolve to may change.
                if len(self._allowed_tcp) >= _MAX_ALLOWED_CACHED:
                    self._allowed_tcp.clear()
                self._allowed_tcp[destination] = host
            return upstream
        assert scope.cancelled_caught
        raise TimeoutError(f"{host}:{port} did not answer in {self.connect_timeout} s")

    # -- UDP --------------------------------------------------------------

    async def _udp_datagram(
        self,
        interception: Interception,
        group: anyio.abc.TaskGroup,
        payload: bytes,
        source: Address,
        destination: Address,
    ) -> None:
        key = (source, destination)
        flow = self._udp_flows.get(key)
        if flow is None:
            ip = parse_ip(destination[0])
            host = self._destination(ip) if ip is not None else None
            if host is None:
                return
            try:
                upstream, _ = await self.policy.open_udp(self.stack, host, destination[1])
            except DestinationBlockedError as exc:
                self.counters.refusals.append(str(exc))
                logger.warning(
                    "refused protocol=udp destination=%s:%s %s", destination[0], destination[1], exc
                )
                return
            except OSError as exc:
                logger.info("failed protocol=udp destination=%s error=%s", destination, exc)
                return
            flow = _UdpFlow(upstream, source, destination)
            self._udp_flows[key] = flow
            self.counters.udp_flows += 1
            while len(self._udp_flows) > MAX_UDP_FLOWS:
                _, oldest = self._udp_flows.popitem(last=False)
                oldest.scope.cancel()
            group.start_soon(self._udp_replies, interception, key, flow)
        self._udp_flows.move_to_end(key)
        flow.last_active = time.monotonic()
        with contextlib.suppress(OSError, anyio.ClosedResourceError, anyio.BrokenResourceError):
            await flow.upstream.send(payload)

    async def _udp_replies(
        self, interception: Interception, key: tuple[Address, Address], flow: _UdpFlow
    ) -> None:
        with flow.scope:
            try:
                async with flow.upstream:
                    while True:
                        data, _ = await flow.upstream.receive()
                        flow.last_active = time.monotonic()
                        with contextlib.suppress(OSError):
                            interception.send_datagram(data, flow.destination, flow.program)
            except (OSError, anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass
        if self._udp_flows.get(key) is flow:
            del self._udp_flows[key]

    async def _expire_udp_flows(self) -> None:
        while True:
            await anyio.sleep(UDP_IDLE_TIMEOUT / 4)
            horizon = time.monotonic() - UDP_IDLE_TIMEOUT
            for flow in [f for f in self._udp_flows.values() if f.last_active < horizon]:
                flow.scope.cancel()

    # -- DNS --------------------------------------------------------------

    async def _answer_dns(self, request: Request) -> list[Record] | None:
        self.counters.dns_queries += 1
        name = request.name
        if request.type in ("A", "AAAA"):
            family = socket.AF_INET if request.type == "A" else socket.AF_INET6
            if self._names is not None:
                # One address per name, whatever its case or final dot.
                v4, v6 = self._names.addresses_for(name.lower().rstrip("."))
                return [Record(request.type, str(v4 if family == socket.AF_INET else v6), ttl=60)]
            try:
                infos = await self.stack.getaddrinfo(name, None, family, socket.SOCK_STREAM)
            except socket.gaierror as exc:
                if exc.errno in (socket.EAI_NONAME,):
                    return None
                if exc.errno in (socket.EAI_ADDRFAMILY, getattr(socket, "EAI_NODATA", -5)):
                    return []
                raise
            seen: list[str] = []
            for info in infos:
                address = str(info[4][0])
                if address not in seen:
                    seen.append(address)
            return [Record(request.type, address, ttl=60) for address in seen]
        if request.type == "PTR":
            ip = from_reverse_name(name)
            if ip is None:
                return None
            try:
                return [Record("PTR", await self.stack.reverse_lookup(str(ip)) + ".", ttl=60)]
            except OSError:
                return None
        return []


async def _spliced(joined: Splice, program: TcpStream, upstream: TcpStream) -> None:
    """Relay with ``joined`` (callbacks, no task) until it is done; carry a reset across."""
    joined.start()
    try:
        await joined.done.wait()
    finally:
        joined.stop()
    if joined.outcome == "closed":
        return
    first, second = (upstream, program) if joined.outcome == "reset-host" else (program, upstream)
    for stream in (first, second):
        with contextlib.suppress(OSError, anyio.ClosedResourceError):
            await stream.abort()


async def _relay(program: TcpStream, upstream: TcpStream) -> None:
    """Copy both ways until both ends finished; a reset on one side resets the other."""

    async def copy(source: TcpStream, sink: TcpStream, group: anyio.abc.TaskGroup) -> None:
        try:
            while True:
                try:
                    data = await source.receive(_RELAY_CHUNK)
                except anyio.EndOfStream:
                    with contextlib.suppress(OSError, anyio.ClosedResourceError):
                        await sink.send_eof()
                    return
                await sink.send(data)
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            # One side failed: the other side is reset, as a router that
            # lost the connection state would make it.
            with contextlib.suppress(OSError, anyio.ClosedResourceError):
                await sink.abort()
            with contextlib.suppress(OSError, anyio.ClosedResourceError):
                await source.abort()
            group.cancel_scope.cancel()

    async with anyio.create_task_group() as group:
        # One new task per connection, not two: this one copies the other way.
        group.start_soon(copy, upstream, program, group)
        await copy(program, upstream, group)
