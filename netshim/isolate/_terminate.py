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
  relayed both ways with half-closes and resets carried across.  Onto the
  host network under asyncio, a connection to an address and port the
  policy allowed before is carried by callbacks alone, from the SYN on
  (:meth:`Terminator._direct_tcp`): no task, no anyio stream;
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

import asyncio
import collections
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
from .._errors import os_error
from .._loops import running_library
from ..dns import Record, Request, serve
from ..ip.intercept import InterceptedSyn
from ..ip.links import TunLink
from ..ip.tcp import TcpConfig
from ..policy import DestinationBlockedError, Policy
from ..protocols.dns import from_reverse_name
from ..shim._names import SyntheticNames
from ..stack import Stack, TcpStream, UdpSocket
from ..stacks.host import HostStack
from ..stacks.ip import Interception, IpStack
from . import Addressing
from ._splice import SocketTransport, Splice, splice

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


#: Refusal reasons :class:`TerminatorCounters` keeps (the latest ones).
RECENT_REFUSALS = 64


@dataclass
class TerminatorCounters:
    """What the terminator did, for logs and tests.

    ``refusals`` holds the reasons of the latest :data:`RECENT_REFUSALS`
    policy refusals only: a confined program, or a WireGuard client of the
    gateway, may repeat a refused connect for as long as it runs.
    """

    tcp_accepted: int = 0
    tcp_refused: int = 0
    udp_flows: int = 0
    udp_refused: int = 0
    dns_queries: int = 0
    refusals: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=RECENT_REFUSALS)
    )


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
        self._direct = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._direct_flows: set[_DirectFlow] = set()
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
            # Onto the host network under asyncio, a connection to a
            # destination the policy allowed before is carried by callbacks
            # (see _direct_tcp); anything else by a task of its own.
            self._direct = type(self.stack) is HostStack and running_library() == "asyncio"
            if self._direct:
                # Kept: asyncio.get_running_loop() is a getpid() system call
                # each time, and three objects per connection asked it.
                self._loop = asyncio.get_running_loop()
                interception.take_syns_with(lambda syn: self._take_syn(interception, syn))
            async with contextlib.AsyncExitStack() as exits:
                for server in servers:
                    await exits.enter_async_context(server)
                group.start_soon(self._expire_udp_flows)
                task_status.started()
                try:
                    while True:
                        try:
                            flow = await interception.next_flow()
                        except OSError as exc:
                            if exc.errno != errno.ENETDOWN:
                                raise
                            # The device failed: its namespace ended (the
                            # program exited) before the owner stopped us.
                            # Nothing more can come; the owner cancels us.
                            logger.info("the namespace's device is gone: %s", exc)
                            break
                        if isinstance(flow, InterceptedSyn):
                            group.start_soon(self._tcp_flow, interception, flow)
                        else:
                            await self._udp_datagram(interception, group, *flow)
                finally:
                    for direct in list(self._direct_flows):
                        direct.close()
                    self._direct_flows.clear()

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
        if host is None:
            interception.refuse(syn, "reset")
            return
        try:
            upstream = await self._dial_tcp(syn.local, host, port)
        except OSError as exc:
            self._dial_failed(interception, syn, exc)
            return
        async with upstream:
            try:
                program = await interception.accept(syn)
            except OSError:
                return
            self.counters.tcp_accepted += 1
            async with program:
                done = anyio.Event()
                joined = splice(program, upstream, done.set)
                if joined is None:
                    await _relay(program, upstream)
                else:
                    await _spliced(joined, done, program, upstream)

    def _dial_failed(self, interception: Interception, syn: InterceptedSyn, exc: OSError) -> None:
        """Refuse ``syn`` as the failure to dial its destination says; log it."""
        where = f"{syn.local[0]}:{syn.local[1]}"
        self.counters.tcp_refused += 1
        if isinstance(exc, DestinationBlockedError):
            self.counters.refusals.append(str(exc))
            logger.warning("refused protocol=tcp destination=%s %s", where, exc)
            interception.refuse(syn, "reset" if self.refusal == "reset" else "prohibited")
        elif isinstance(exc, TimeoutError):
            logger.info("unreachable protocol=tcp destination=%s timed out", where)
            interception.refuse(syn, "host-unreachable")
        else:
            logger.info("failed protocol=tcp destination=%s error=%s", where, exc)
            if exc.errno == errno.ENETUNREACH:
                interception.refuse(syn, "net-unreachable")
            elif exc.errno == errno.EHOSTUNREACH or isinstance(exc, socket.gaierror):
                interception.refuse(syn, "host-unreachable")
            else:
                interception.refuse(syn, "reset")

    def _take_syn(self, interception: Interception, syn: InterceptedSyn) -> bool:
        """The IpStack's offer of a new SYN (in its driver's wake-up): True if carried here.

        A failure here would stop the driver, and every flow with it: it
        ends this connection only (a reset for the program), and is logged.
        """
        try:
            return self._direct_tcp(interception, syn)
        except Exception:
            logger.exception("relaying tcp to %s:%s failed", syn.local[0], syn.local[1])
            with contextlib.suppress(Exception):
                interception.refuse(syn, "reset")
            return True

    def _direct_tcp(self, interception: Interception, syn: InterceptedSyn) -> bool:
        """Carry ``syn`` onto the host network with callbacks, no task; False if it cannot be.

        Only for an address and port the policy allowed before (its
        decision is remembered, as :meth:`_dial_tcp` does: a refused or new
        destination takes the task, which asks the policy and logs), with
        the host network as the outer stack under asyncio.  The host socket's
        connect starts here; once it is connected (at once, on loopback) the
        program's SYN is answered and a :class:`Splice` over a
        :class:`SocketTransport` relays; a connect that fails or times out
        refuses the SYN as :meth:`_tcp_flow` would.  A task per connection,
        anyio's stream and asyncio's transport cost the parent about as
        much as the TCP work itself on a connect-heavy run.
        """
        if not self._direct:
            return False
        host = self._allowed_tcp.get(syn.local)
        if host is None:
            return False
        stack = self.stack
        assert isinstance(stack, HostStack)
        try:
            sock, connected = stack.connect_nowait(host, syn.local[1])
        except OSError as exc:
            self._dial_failed(interception, syn, exc)
            return True
        assert self._loop is not None
        flow = _DirectFlow(self, interception, syn, sock, self._loop)
        self._direct_flows.add(flow)
        if connected:
            flow.splice()
        else:
            flow.wait_connected(self.connect_timeout)
        return True

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
                self.counters.udp_refused += 1
                self.counters.refusals.append(str(exc))
                logger.warning(
                    "refused protocol=udp destination=%s:%s %s", destination[0], destination[1], exc
                )
                return
            except OSError as exc:
                self.counters.udp_refused += 1
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


async def _spliced(
    joined: Splice, done: anyio.Event, program: TcpStream, upstream: TcpStream
) -> None:
    """Relay with ``joined`` (callbacks, no task) until ``done``; carry a reset across."""
    joined.start()
    try:
        await done.wait()
    finally:
        joined.stop()
    if joined.outcome == "closed":
        return
    first, second = (upstream, program) if joined.outcome == "reset-host" else (program, upstream)
    for stream in (first, second):
        with contextlib.suppress(OSError, anyio.ClosedResourceError):
            await stream.abort()


class _DirectFlow:
    """One connection of :meth:`Terminator._direct_tcp`: the host socket's connect, then the relay.

    Every step is a loop callback: the host socket turning writable (its
    connect ended) or the connect timer; the splice's end, which closes
    both sides as :func:`_spliced` and the streams' ``aclose`` do.
    """

    __slots__ = (
        "_connection",
        "_driver",
        "_interception",
        "_joined",
        "_loop",
        "_owner",
        "_sock",
        "_syn",
        "_timer",
        "_transport",
    )

    def __init__(
        self,
        owner: Terminator,
        interception: Interception,
        syn: InterceptedSyn,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._owner = owner
        self._interception = interception
        self._syn = syn
        self._sock = sock
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._transport: SocketTransport | None = None
        self._joined: Splice | None = None
        self._connection: Any = None
        self._driver: Any = None

    def wait_connected(self, timeout: float) -> None:
        self._loop.add_writer(self._sock.fileno(), self._connect_ended)
        self._timer = self._loop.call_later(timeout, self._connect_timed_out)

    def _stop_waiting(self) -> None:
        self._loop.remove_writer(self._sock.fileno())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _connect_ended(self) -> None:
        self._stop_waiting()
        code = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._refused(os_error(code, f"{self._syn.local[0]}:{self._syn.local[1]}"))
        else:
            self.splice()

    def _connect_timed_out(self) -> None:
        self._timer = None
        self._stop_waiting()
        self._refused(TimeoutError(f"did not answer in {self._owner.connect_timeout} s"))

    def _refused(self, exc: OSError) -> None:
        self._sock.close()
        self._owner._direct_flows.discard(self)
        self._owner._dial_failed(self._interception, self._syn, exc)

    def splice(self) -> None:
        """The host socket is connected: answer the program's SYN and relay."""
        try:
            self._connection, self._driver = self._interception.accept_nowait(self._syn)
        except OSError:
            # The stack went down meanwhile.
            self._sock.close()
            self._owner._direct_flows.discard(self)
            return
        self._owner.counters.tcp_accepted += 1
        self._transport = SocketTransport(self._sock, loop=self._loop)
        self._joined = Splice(
            self._connection, self._driver, self._transport, self._done, loop=self._loop
        )
        self._joined.start()

    def _done(self) -> None:
        # Called inside the splice's own callbacks: the sides close after them.
        self._loop.call_soon(self._close_both)

    def _close_both(self) -> None:
        self._owner._direct_flows.discard(self)
        joined, transport = self._joined, self._transport
        assert joined is not None
        assert transport is not None
        connection, driver = self._connection, self._driver
        program_open = not driver.has_stopped
        if joined.outcome == "closed":
            transport.close()
            if program_open:
                # As the program's stream's aclose(): unread data means a reset.
                if connection.readable():
                    driver.transmit_now()
                    connection.abort()
                else:
                    connection.shutdown()
        else:
            if joined.outcome == "reset-host":
                transport.abort()
            if program_open:
                connection.abort()
            transport.abort()
        if program_open:
            driver.wake(connection)
            driver.poke(connection)

    def close(self) -> None:
        """The terminator stops: end the relay, or the connect, leaving the sockets closed."""
        if self._joined is None:
            self._stop_waiting()
            self._sock.close()
            return
        self._joined.stop()
        assert self._transport is not None
        self._transport.close()


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
