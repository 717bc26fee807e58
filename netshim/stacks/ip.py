"""IpStack: a :class:`~netshim.stack.Stack` whose sockets are packets on a link.

The driver of the ip engine (:mod:`netshim.ip`) under anyio.  An
:class:`~netshim.ip.iface.Interface` keeps the TCP/IP state; this module moves
packets between it and a link (a TUN or TAP device, a cable, a bridge port:
anything with the :class:`PacketLink` methods), runs its timers, and gives
programs anyio streams, listeners and datagram sockets on top of its
connections, so that ``netshim.install(IpStack(link, ...))`` turns an
unmodified program's sockets into packets.

One background task per stack does the work: it waits for a packet from the
link, a socket call that left something to send, or the interface's next
deadline (a retransmission, a delayed ACK, an ARP retry), whichever comes
first; then it lets the interface take the packet or run its timers, puts
what the interface gives out on the link, and wakes the tasks waiting on the
sockets whose state changed.  On a link that can write without waiting (a
TUN or TAP device: ``write_nowait``) a socket call that leaves output
transmits it itself, in that call, and the timer task is woken only when a
deadline moved earlier: a round trip through the task cost loop iterations
on every send.  The task starts with the first use of the stack,
in that event loop (a system task: ``asyncio`` tasks or trio's system
nursery), or in the caller's task group under ``async with stack:``; it is
what answers ARP, pings and the peer's segments while no program task
waits.  A stack belongs to the event loop it started in.

Names are looked up with netshim's DNS client (:class:`netshim.dns.Resolver`)
over the stack's own UDP, asking the servers given (or learnt from DHCP).
Loopback addresses (``127.0.0.0/8``, ``::1``) are served by a second,
in-memory interface, as a kernel's ``lo``.

With ``dhcp=True`` the stack asks for an IPv4 address with
:class:`netshim.ip.dhcp.DhcpClient` before its first connection, and follows
the lease (renewals; a lost lease removes the address).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import math
import random
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.lowlevel

from .._addresses import (
    Address,
    IPAddress,
    check_host,
    check_port,
    parse_ip,
    parse_service,
    service_socket_types,
)
from .._addrinfo import AddrInfo, resolve_addrinfo
from .._errors import name_temporarily_unresolvable, os_error
from .._loops import loop_clock, running_library
from ..ip.dhcp import CLIENT_PORT, SERVER_PORT, DhcpClient
from ..ip.iface import GsoInfo, Interface, Medium
from ..ip.intercept import InterceptedSyn, Interceptor, Refusal
from ..ip.udp import UdpSocket as _EngineUdpSocket
from ..protocols.ip import EthernetAddress
from ..stack import DEFAULT_BACKLOG, Stack, TcpListener, TcpStream, UdpSocket

__all__ = ["Interception", "IpStack", "PacketLink"]

_LOOPBACK4 = ipaddress.IPv4Interface("127.0.0.1/8")
_LOOPBACK6 = ipaddress.IPv6Interface("::1/128")
_ANY4 = ipaddress.IPv4Address(0)
_ANY6 = ipaddress.IPv6Address(0)
# DNS answers wait this long per try, with this many tries (glibc's defaults).
# Packets taken from the link before the interface's replies are sent.
_BURST = 64
_DNS_TIMEOUT = 5.0
_DNS_TRIES = 2


class _Incoming(Protocol):
    @property
    def data(self) -> bytes: ...

    @property
    def checksum_verified(self) -> bool: ...


class PacketLink(Protocol):
    """What :class:`IpStack` needs of a link (:class:`netshim.ip.links.Link` has it)."""

    @property
    def medium(self) -> Medium: ...

    async def send(self, packet: bytes, gso: GsoInfo | None = None) -> None: ...

    async def receive(self) -> _Incoming: ...

    async def aclose(self) -> None: ...


def _ip(address: IPAddress) -> str:
    return str(address)


def _endpoint(address: Address) -> tuple[IPAddress, int]:
    ip = parse_ip(address[0])
    if ip is None:
        raise socket.gaierror(socket.EAI_NONAME, f"Name or service not known ({address[0]!r})")
    return ip, int(address[1])


def _clock() -> Callable[[], float]:
    """The running event loop's clock (anyio.current_time without asking which loop each time)."""
    clock = loop_clock()
    # asyncio's own loop.time() is time.monotonic() behind a Python call,
    # read about ten times per connection: the C function itself then (a
    # loop class with a clock of its own keeps it).
    if getattr(clock, "__func__", None) is asyncio.BaseEventLoop.time:
        return time.monotonic
    return clock


class _Driver:
    """The background work of one :class:`IpStack`: link in, timers, link out, wake-ups."""

    def __init__(self, stack: IpStack) -> None:
        self.stack = stack
        self.kick = anyio.Event()
        self.waiters: dict[object, anyio.Event] = {}
        self.stopped = anyio.Event()
        # stopped.is_set() as a plain attribute: asked on every socket call
        # and wake-up (anyio's is_set is two Python calls).
        self.has_stopped = False
        self.scope: anyio.CancelScope | None = None
        # Set by IpStack.aclose(); run() honours it if it starts afterwards.
        self.stop_requested = False
        self.error: BaseException | None = None
        # A socket call left output to transmit (links that cannot write
        # without waiting: the timer task transmits for them).
        self.dirty = False
        # Links that can write without waiting (TUN/TAP: write_nowait) get
        # a socket call's packets at once, in that call: a 1-byte round trip
        # through the driver's timer task took two more loop iterations.
        self._write_nowait: Any = getattr(stack._link, "write_nowait", None)
        # Packets transmitted but not yet written (the link would block, or
        # cannot write without waiting): the timer task writes them, in order.
        self.backlog: deque[Any] = deque()
        # Set while a task writes the backlog (others wait for it).
        self.draining: anyio.Event | None = None
        self._event = type(anyio.Event())
        # When the timer task sleeps until (inf: no deadline; -inf: awake).
        self.sleep_until = -math.inf
        self.now = _clock()
        # The link's reads under asyncio (see _link_readable): its
        # receive_nowait, the event that wakes _serve_link_callbacks (None
        # while the link is read by a task), and the error that stopped it.
        self._receive_nowait: Callable[[], _Incoming | None] = lambda: None
        self._link_stalled: anyio.Event | None = None
        self._link_error: Exception | None = None
        self._unwatch_link: Callable[[], None] = lambda: None

    def wake_changed(self) -> None:
        for interface in self.stack._used_interfaces:
            for changed in interface.take_changed():
                event = self.waiters.pop(changed, None)
                if event is not None:
                    event.set()

    async def wait_for(self, sock: object) -> None:
        """Wait until ``sock``'s state may have changed (or the stack stopped)."""
        if self.has_stopped:
            # Still a schedule point: a task that retries on OSError (a
            # server's receive loop) must not hold the event loop forever
            # once the driver stopped (the TUN device went with its namespace).
            await anyio.lowlevel.checkpoint()
            raise os_error(errno.ENETDOWN, str(self.error or "the IpStack is closed"))
        event = self.waiters.get(sock)
        if event is None:
            event = self.waiters[sock] = self._event()
        await event.wait()
        if self.has_stopped:
            raise os_error(errno.ENETDOWN, str(self.error or "the IpStack is closed"))

    async def wait_established(self, connection: Any, ended: int, detail: str) -> None:
        """Wait until ``connection``'s handshake completes.

        Raises the connection's error if it failed, ``OSError(ended)`` if it
        finished without one, ``ENETDOWN`` if the stack stopped.
        """
        while not connection.established:
            if connection.error is not None:
                raise connection.error
            if connection.finished:
                raise os_error(ended, detail)
            await self.wait_for(connection)

    def wake(self, sock: object) -> None:
        """Wake the tasks waiting on ``sock`` now (it was closed under them)."""
        event = self.waiters.pop(sock, None)
        if event is not None:
            event.set()

    def poke(self, connection: Any = None) -> None:
        """A socket call queued output or opened a window: transmit now, or soon.

        On a link that writes without waiting the packets leave in this call;
        the timer task is woken only when ``connection``'s next deadline
        (any deadline, without one) may come before the one it sleeps until.
        """
        if connection is not None:
            # The interfaces visit only connections with something due.
            for interface in self.stack._used_interfaces:
                interface.touch(connection)
        if self._write_nowait is None or self.has_stopped:
            self.dirty = True
            self.kick.set()
            return
        if connection is not None:
            # The core's contract: a connection with output due has a
            # deadline at or before now (a read that opened no window
            # update worth sending costs no transmit pass).
            when = connection.deadline()
            if when is None or when > self.now():
                if when is not None and when < self.sleep_until:
                    self.kick.set()
                return
        self.transmit_now()
        if connection is None:
            self.kick.set()
        else:
            when = connection.deadline()
            if when is not None and when < self.sleep_until:
                self.kick.set()

    def transmit_now(self) -> None:
        """Run the interfaces' transmit pass and hand its packets to the link without waiting.

        What the link cannot take now waits in :attr:`backlog` for the timer
        task, and everything after it too, so packets keep their order.
        """
        stack = self.stack
        now = self.now()
        # The loopback interface's packets come straight back in.
        if stack._loopback_used:
            loopback = stack._loopback
            for _ in range(64):
                if loopback.quiet():
                    break
                looped = loopback.transmit(now)
                if not looped:
                    break
                for packet in looped:
                    loopback.receive(packet.data, now, checksum_verified=True)
        if stack._dhcp is not None:
            stack._run_dhcp(now)
        out = stack._interface.transmit(now)
        if out:
            self._put(out)
        self.wake_changed()

    def _put(self, out: list[Any]) -> None:
        if not self.backlog and self.draining is None and self._write_nowait is not None:
            try:
                written = self._write_nowait([(packet.data, packet.gso) for packet in out])
            except Exception:
                # The timer task meets the same error writing, and stops the stack.
                written = 0
            if written == len(out):
                return
            out = out[written:]
        self.backlog.extend(out)
        self.kick.set()

    async def flush(self) -> None:
        """Transmit, and write everything transmitted (waiting for the link if it must)."""
        self.transmit_now()
        await self.drain()

    async def drain(self) -> None:
        """Write :attr:`backlog` to the link, waiting as the link asks."""
        if self.draining is not None:
            # Another task writes; what it writes includes ours.
            await self.draining.wait()
            return
        link = self.stack._link
        send_many = getattr(link, "send_many", None)
        self.draining = done = self._event()
        try:
            while self.backlog:
                batch = list(self.backlog)
                self.backlog.clear()
                if send_many is not None:
                    await send_many([(packet.data, packet.gso) for packet in batch])
                else:
                    for packet in batch:
                        await link.send(packet.data, packet.gso)
        finally:
            self.draining = None
            done.set()
        self.wake_changed()

    async def run(self) -> None:
        try:
            with anyio.CancelScope() as self.scope:
                if self.stop_requested:
                    # Closed before this task first ran (trio starts system
                    # tasks later than asyncio): there was no scope to cancel.
                    self.scope.cancel()
                async with anyio.create_task_group() as group:
                    group.start_soon(self._read_link)
                    await self._timers()
        except Exception as exc:
            self.error = exc
        finally:
            self.has_stopped = True
            self.stopped.set()
            for event in self.waiters.values():
                event.set()
            self.waiters.clear()

    async def _read_link(self) -> None:
        stack = self.stack
        link, interface = stack._link, stack._interface
        # Links that can say "nothing more now" let a burst be taken whole
        # and answered with one transmit pass: a download's stream of ACKs
        # costs one pass per burst instead of one per ACK.
        receive_nowait = getattr(link, "receive_nowait", None)
        # Links that can wait for a packet without taking it (TUN/TAP) are
        # read only when the device says there is something: after a burst
        # that emptied it, no read that fails and no extra loop iteration.
        wait_readable = getattr(link, "wait_readable", None)
        if receive_nowait is None:
            wait_readable = None
        # Under asyncio a TUN/TAP device's bursts are handled in the
        # selector's callback itself (see _link_readable).
        watch_readable = getattr(link, "watch_readable", None)
        if receive_nowait is not None and watch_readable is not None:
            self._receive_nowait = receive_nowait
            self._unwatch_link = link.unwatch_readable  # type: ignore[attr-defined]
            if watch_readable(self._link_readable):
                try:
                    await self._serve_link_callbacks(watch_readable)
                finally:
                    self._unwatch_link()
                return
        drained = True
        while True:
            incoming: _Incoming | None
            if wait_readable is None:
                incoming = await link.receive()
            else:
                if drained:
                    await wait_readable()
                else:
                    # A full burst: let the other tasks run before the next.
                    await anyio.lowlevel.checkpoint()
                assert receive_nowait is not None
                incoming = receive_nowait()
                if incoming is None:
                    drained = True
                    continue
            drained = False
            now = self.now()
            for taken in range(1, _BURST + 1):
                assert incoming is not None
                interface.receive(incoming.data, now, checksum_verified=incoming.checksum_verified)
                # After a full pass, the next packet waits for the next read:
                # asking for it now would take it off the link and drop it.
                if receive_nowait is None or taken == _BURST:
                    break
                incoming = receive_nowait()
                if incoming is None:
                    drained = True
                    break
            # Replies (ACKs, ARP answers) leave before the next read; the
            # timer task looks again if input set a timer earlier than its own.
            self.transmit_now()
            if self.backlog:
                await self.drain()
            if self._deadline() < self.sleep_until:
                self.kick.set()

    async def _serve_link_callbacks(self, watch_readable: Callable[[Any], bool]) -> None:
        """Stand by while :meth:`_link_readable` takes the link's packets; write what it cannot.

        The callback stops watching the link when its answer could not all
        be written (the device is full): reading more would only grow the
        backlog.  This task writes it, waiting as the link asks, then
        watches again.  A failure in the callback is raised here, which
        stops the driver as a failed read in :meth:`_read_link` would.
        """
        while True:
            stalled = self._link_stalled = self._event()
            await stalled.wait()
            if self._link_error is not None:
                raise self._link_error
            await self.drain()
            if self._deadline() < self.sleep_until:
                self.kick.set()
            watch_readable(self._link_readable)

    def _link_readable(self) -> None:
        """The link's readiness callback (asyncio): take a burst, answer it, wake its sockets.

        What :meth:`_read_link`'s loop does per burst, run by the event
        loop's selector callback itself: waking a task for it cost a loop
        iteration per burst (a third ``epoll_wait`` per 1-byte round trip
        through ``--isolate``).  A burst is at most :data:`_BURST`
        packets; what it leaves on the link makes the loop call again on
        its next iteration, after the other callbacks that are ready.
        """
        stalled = self._link_stalled
        if stalled is None or stalled.is_set():
            return
        try:
            receive_nowait = self._receive_nowait
            interface = self.stack._interface
            now = self.now()
            taken = 0
            while taken < _BURST:
                incoming = receive_nowait()
                if incoming is None:
                    break
                taken += 1
                interface.receive(incoming.data, now, checksum_verified=incoming.checksum_verified)
            if not taken:
                # A stale report: another callback emptied the device.
                return
            self.transmit_now()
        except Exception as exc:
            self._link_error = exc
            self._unwatch_link()
            stalled.set()
            return
        if self.backlog:
            self._unwatch_link()
            stalled.set()
        elif self._deadline() < self.sleep_until:
            self.kick.set()

    def _deadline(self) -> float:
        stack = self.stack
        deadlines = [
            d
            for d in (
                stack._interface.deadline(),
                stack._loopback.deadline() if stack._loopback_used else None,
                stack._dhcp.deadline() if stack._dhcp is not None else None,
            )
            if d is not None
        ]
        return min(deadlines) if deadlines else math.inf

    async def _timers(self) -> None:
        self.dirty = True
        while True:
            deadline = self._deadline()
            if self.dirty or self.backlog or deadline <= self.now():
                self.dirty = False
                await self.flush()
                deadline = self._deadline()
            if self.kick.is_set():
                self.kick = self._event()
                continue
            self.sleep_until = deadline
            try:
                with anyio.move_on_after(max(0.0, deadline - self.now())):
                    await self.kick.wait()
            finally:
                self.sleep_until = -math.inf
            self.kick = self._event()


class _IpTcpStream(TcpStream):
    def __init__(self, stack: IpStack, connection: Any) -> None:
        self._stack = stack
        self._connection = connection
        self._closed = False
        local, remote = connection.local, connection.remote
        self._local: Address = (_ip(local[0]), local[1])
        self._remote: Address = (_ip(remote[0]), remote[1])

    def __repr__(self) -> str:
        return f"<IpStack TCP {self._local} -> {self._remote} {self._connection.state.name}>"

    @property
    def local_address(self) -> Address:
        return self._local

    @property
    def remote_address(self) -> Address:
        return self._remote

    async def receive(self, max_bytes: int = 65536) -> bytes:
        connection = self._connection
        driver = self._stack._driver_for_use()
        # One schedule point per call, before anything is taken (a
        # cancellation must not lose data): the wait if there is one, else
        # a checkpoint.  A yield after the data is taken would cost a loop
        # iteration between its arrival and its use.
        scheduled = False
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            if not scheduled and (connection.readable() or connection.at_eof):
                await anyio.lowlevel.checkpoint()
                scheduled = True
                continue
            if connection.readable():
                data = bytes(connection.receive(max_bytes))
                # Reading opens the receive window: the update may be due.
                driver.poke(connection)
                return data
            if connection.at_eof:
                raise anyio.EndOfStream
            if connection.error is not None:
                raise connection.error
            await driver.wait_for(connection)
            scheduled = True

    async def send(self, item: bytes) -> None:
        connection = self._connection
        driver = self._stack._driver_for_use()
        view = memoryview(item).cast("B")
        # The bytes leave first and the schedule point comes after (a
        # cancelled send may have sent any part, as a socket's): before, it
        # cost a loop iteration on every round trip.
        waited = False
        while view:
            if self._closed:
                raise anyio.ClosedResourceError
            taken = connection.send(view)
            if taken:
                view = view[taken:]
                driver.poke(connection)
                continue
            if connection.error is not None:
                raise connection.error
            await driver.wait_for(connection)
            waited = True
        if not waited:
            await anyio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        self._connection.shutdown()
        self._stack._driver_for_use().poke(self._connection)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._stack._closed:
            # The stack went down first: nothing is left to tell the peer.
            await anyio.lowlevel.checkpoint()
            return
        connection = self._connection
        driver = self._stack._driver_for_use()
        # As a Linux close(): unread data means a reset, not a FIN.  A kernel
        # would have put what send() took on the wire already; here it may
        # still wait for the driver, so it leaves first, as far as the
        # peer's window allows.
        if connection.readable():
            with anyio.CancelScope(shield=True):
                await driver.flush()
            connection.abort()
        else:
            connection.shutdown()
        driver.wake(connection)
        driver.poke(connection)
        await anyio.lowlevel.checkpoint()

    async def abort(self) -> None:
        if not self._closed:
            self._closed = True
            if not self._stack._closed:
                self._connection.abort()
                driver = self._stack._driver_for_use()
                driver.wake(self._connection)
                driver.poke(self._connection)
        await anyio.lowlevel.checkpoint()


class _IpTcpListener(TcpListener):
    def __init__(self, stack: IpStack, listeners: list[Any]) -> None:
        self._stack = stack
        self._listeners = listeners
        self._closed = False
        local = listeners[0].local
        self._local: Address = (_ip(local[0]), local[1])

    @property
    def local_address(self) -> Address:
        return self._local

    async def accept(self) -> TcpStream:
        driver = self._stack._driver_for_use()
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            for listener in self._listeners:
                connection = listener.accept()
                if connection is not None:
                    await anyio.lowlevel.checkpoint()
                    return _IpTcpStream(self._stack, connection)
            waits = self._listeners
            if len(waits) == 1:
                await driver.wait_for(waits[0])
            else:
                async with anyio.create_task_group() as group:

                    async def wait_one(listener: Any) -> None:
                        await driver.wait_for(listener)
                        group.cancel_scope.cancel()

                    for listener in waits:
                        group.start_soon(wait_one, listener)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            # A stack that went down first has nobody left to tell.
            if not self._stack._closed:
                driver = self._stack._driver_for_use()
                for listener in self._listeners:
                    listener.close()
                    # A task waiting in accept() must see the close.
                    driver.wake(listener)
                driver.poke()
        await anyio.lowlevel.checkpoint()


class _IpUdpSocket(UdpSocket):
    def __init__(self, stack: IpStack, sock: _EngineUdpSocket) -> None:
        self._stack = stack
        self._sock = sock
        self._broadcast = False

    @property
    def local_address(self) -> Address:
        local = self._sock.local
        return (_ip(local[0]), local[1])

    @property
    def remote_address(self) -> Address | None:
        remote = self._sock.remote
        return None if remote is None else (_ip(remote[0]), remote[1])

    @property
    def broadcast(self) -> bool:
        return self._broadcast

    @broadcast.setter
    def broadcast(self, enabled: bool) -> None:
        self._broadcast = bool(enabled)

    async def send(self, data: bytes, address: tuple[str, int] | None = None) -> None:
        driver = self._stack._driver_for_use()
        if self._sock.closed:
            raise anyio.ClosedResourceError
        now = driver.now()
        if address is None:
            self._sock.send(bytes(data), now)
        else:
            remote = _endpoint((check_host(address[0], "send"), check_port(address[1], "send")))
            ip = remote[0]
            if (
                isinstance(ip, ipaddress.IPv4Address)
                and not self._broadcast
                and any(interface.is_broadcast_v4(ip) for interface in self._stack._interfaces)
            ):
                raise os_error(errno.EACCES, "sending to a broadcast address needs SO_BROADCAST")
            self._sock.send_to(bytes(data), remote, now)
        driver.poke()
        await anyio.lowlevel.checkpoint()

    async def receive(self) -> tuple[bytes, Address]:
        driver = self._stack._driver_for_use()
        while True:
            if self._sock.closed:
                raise anyio.ClosedResourceError
            item = self._sock.receive()
            if item is not None:
                payload, source = item
                await anyio.lowlevel.checkpoint()
                return payload, (_ip(source[0]), source[1])
            await driver.wait_for(self._sock)

    async def aclose(self) -> None:
        self._sock.close()
        if self._stack._driver is not None:
            self._stack._driver.wake(self._sock)
        await anyio.lowlevel.checkpoint()


class _Callback:
    """Stands in the driver's table of waiters for a callback: ``set`` calls it."""

    __slots__ = ("_callback",)

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback

    def set(self) -> None:
        self._callback()


class Interception:
    """Every flow an :class:`IpStack`'s link carries to destinations it does not serve.

    What :meth:`IpStack.intercept` returns: the async side of
    :class:`netshim.ip.intercept.Interceptor`, for whoever terminates a
    namespace's or a tunnel's traffic (``netshim run --isolate``).
    """

    def __init__(self, stack: IpStack, interceptor: Interceptor) -> None:
        self._stack = stack
        self._interceptor = interceptor
        # See take_syns_with(): the SYNs it declined, for next_flow().
        self._syn_handler: Callable[[InterceptedSyn], bool] | None = None
        self._declined: deque[InterceptedSyn] = deque()
        self._flow_waiter: anyio.Event | None = None

    @property
    def pending(self) -> int:
        return self._interceptor.pending

    def take_syns_with(self, handler: Callable[[InterceptedSyn], bool]) -> None:
        """From now on, offer each new SYN to ``handler`` as soon as the interface takes it.

        ``handler(syn)`` runs in the driver's wake-up after the packet's
        receive pass (as a waiter's wake-up does: no task runs it, and it
        must not wait); it returns True when it took the SYN (accepted or
        refused it), False to leave it to :meth:`next_flow`.  A program's
        connect then costs no task switch before its SYN is answered.
        """
        self._syn_handler = handler
        self._arm(self._stack._driver_for_use())

    def _arm(self, driver: _Driver) -> None:
        if not driver.has_stopped:
            driver.waiters[self._interceptor] = _Callback(self._changed)  # type: ignore[assignment]

    def _changed(self) -> None:
        driver = self._stack._driver
        handler = self._syn_handler
        assert driver is not None
        assert handler is not None
        interceptor = self._interceptor
        if not driver.has_stopped:
            while (syn := interceptor.take_syn()) is not None:
                if not handler(syn):
                    self._declined.append(syn)
            self._arm(driver)
        waiter = self._flow_waiter
        if waiter is not None and (self._declined or interceptor.readable() or driver.has_stopped):
            self._flow_waiter = None
            waiter.set()

    async def next_flow(self) -> InterceptedSyn | tuple[bytes, Address, Address]:
        """The next connection attempt, or the next ``(payload, source, destination)`` datagram.

        With :meth:`take_syns_with`, the next SYN its handler declined.
        """
        driver = self._stack._driver_for_use()
        interceptor = self._interceptor
        while True:
            if self._declined:
                return self._declined.popleft()
            syn = interceptor.take_syn()
            if syn is not None:
                if self._syn_handler is None or not self._syn_handler(syn):
                    return syn
                continue
            datagram = interceptor.take_datagram()
            if datagram is not None:
                payload, source, destination = datagram
                return (
                    payload,
                    (_ip(source[0]), source[1]),
                    (_ip(destination[0]), destination[1]),
                )
            if self._syn_handler is None:
                await driver.wait_for(interceptor)
                continue
            if driver.has_stopped:
                await anyio.lowlevel.checkpoint()
                raise os_error(errno.ENETDOWN, str(driver.error or "the IpStack is closed"))
            waiter = self._flow_waiter = anyio.Event()
            await waiter.wait()

    async def accept(self, syn: InterceptedSyn) -> TcpStream:
        """Complete ``syn``'s handshake; the stream once established (its errors if not)."""
        driver = self._stack._driver_for_use()
        connection: Any = self._interceptor.accept(syn, driver.now())
        driver.poke(connection)
        try:
            await driver.wait_established(
                connection, errno.ECONNRESET, "the connection ended in its handshake"
            )
        except BaseException:
            connection.abort()
            driver.poke(connection)
            raise
        return _IpTcpStream(self._stack, connection)

    def accept_nowait(self, syn: InterceptedSyn) -> tuple[Any, _Driver]:
        """Answer ``syn`` (its SYN-ACK leaves now) without waiting for the handshake.

        The engine's connection, still in its handshake, and the stack's
        driver: for a relay made of callbacks
        (:class:`netshim.isolate._splice.Splice`), which may queue data and
        a FIN at once (they leave once the handshake completes) and sees a
        handshake that failed as the connection's error, or as finished
        without having been established.
        """
        # Called in the driver's own wake-up (take_syns_with), so in its
        # event loop: the check of _driver_for_use (anyio's current token,
        # a getpid() system call under asyncio) is needed only without one.
        driver = self._stack._driver
        if driver is None or self._stack._closed:
            driver = self._stack._driver_for_use()
        connection: Any = self._interceptor.accept(syn, driver.now())
        driver.poke(connection)
        return connection, driver

    def refuse(self, syn: InterceptedSyn, how: Refusal) -> None:
        """Turn ``syn`` down: a reset, an ICMP unreachable, or silence."""
        driver = self._stack._driver_for_use()
        self._interceptor.refuse(syn, how, driver.now())
        driver.poke()

    def send_datagram(self, payload: bytes, source: Address, destination: Address) -> None:
        """Send ``payload`` from ``source`` (any address) to ``destination``."""
        driver = self._stack._driver_for_use()
        self._interceptor.send_datagram(
            bytes(payload), _endpoint(source), _endpoint(destination), driver.now()
        )
        driver.poke()


class IpStack(Stack):
    """Sockets as packets on ``link``, through netshim's own TCP/IP.

    ``addresses`` are the interface's (``"10.0.2.15/24"``, ``"fd00::15/64"``
    or ``ipaddress`` interfaces), ``gateway4`` / ``gateway6`` its default
    routers, ``dns`` the name servers to ask; with ``dhcp=True`` the IPv4
    address, router and name servers come from a DHCP server instead (an
    Ethernet link is needed).  ``mac`` is the interface's MAC on Ethernet
    links (default: a locally administered one from ``rng``).  ``mtu`` and
    ``tso`` describe the link (``tso``: it cuts large TCP segments itself,
    as a TUN/TAP device with offloads does); ``tcp_config`` is
    :class:`netshim.ip.tcp.TcpConfig` for every connection; ``hostname`` what
    ``socket.gethostname()`` answers on this stack.
    """

    def __init__(
        self,
        link: PacketLink,
        *,
        addresses: Iterable[str | ipaddress.IPv4Interface | ipaddress.IPv6Interface] = (),
        gateway4: str | None = None,
        gateway6: str | None = None,
        dns: Sequence[str] = (),
        dhcp: bool = False,
        mac: str | EthernetAddress | None = None,
        mtu: int = 1500,
        tso: bool | None = None,
        tcp_config: Any = None,
        hostname: str = "localhost",
        rng: random.Random | None = None,
    ) -> None:
        self._link = link
        self._rng = rng if rng is not None else random.Random()
        medium = link.medium
        if medium is Medium.ETHERNET:
            if mac is None:
                octets = bytearray(self._rng.randbytes(6))
                # Locally administered, unicast.
                octets[0] = (octets[0] & 0xFC) | 0x02
                mac = EthernetAddress(bytes(octets))
            elif isinstance(mac, str):
                mac = EthernetAddress.from_text(mac)
        elif dhcp:
            raise ValueError("DHCP needs an Ethernet link (a TAP device, cable or bridge)")
        self._interface = Interface(
            medium,
            mac=mac if isinstance(mac, EthernetAddress) else None,
            addresses=[ipaddress.ip_interface(a) for a in addresses],
            gateway4=ipaddress.IPv4Address(gateway4) if gateway4 else None,
            gateway6=ipaddress.IPv6Address(gateway6) if gateway6 else None,
            mtu=mtu,
            tso=bool(getattr(link, "tso", False)) if tso is None else tso,
            rng=self._rng,
            tcp_config=tcp_config,
        )
        self._loopback = Interface(
            Medium.IP,
            addresses=[_LOOPBACK4, _LOOPBACK6],
            mtu=65535,
            rng=self._rng,
            tcp_config=tcp_config,
            slaac=False,
        )
        self._interfaces = (self._interface, self._loopback)
        # The driver's passes (wake-ups, transmit, deadlines) visit the
        # loopback interface only once something was made on it: a stack on
        # a TUN device (--isolate) never uses it, and asking it cost each
        # socket call and each received burst a few calls for nothing.
        self._used_interfaces: tuple[Interface, ...] = (self._interface,)
        self._loopback_used = False
        # The driver touches every connection it calls (see _Driver.poke):
        # transmit passes and deadlines need not ask every connection.
        for interface in self._interfaces:
            interface.visit_due_only()
        self._dns_servers = [str(ipaddress.ip_address(server)) for server in dns]
        self._hostname = hostname
        self._dhcp: DhcpClient | None = None
        self._dhcp_socket: _EngineUdpSocket | None = None
        if dhcp:
            assert isinstance(mac, EthernetAddress)
            self._dhcp = DhcpClient(mac, hostname=hostname, rng=self._rng)
            # With no IPv4 address yet, the interface sends this socket's
            # broadcasts from 0.0.0.0 and delivers broadcast replies to it.
            self._dhcp_socket = self._interface.udp_bind(_ANY4, CLIENT_PORT)
        self._dhcp_bound = anyio.Event() if dhcp else None
        self._driver: _Driver | None = None
        self._token: object = None
        self._closed = False
        self._resolver: Any = None

    # -- lifetime -------------------------------------------------------

    def _driver_for_use(self) -> _Driver:
        """The running driver, started in this event loop on first use."""
        if self._closed:
            raise os_error(errno.ENETDOWN, "the IpStack is closed")
        token = anyio.lowlevel.current_token()
        driver = self._driver
        if driver is None:
            driver = self._driver = _Driver(self)
            self._token = token
            self._spawn_system_task(driver.run)
        elif token != self._token:
            raise RuntimeError("an IpStack is used only in the event loop it started in")
        return driver

    @staticmethod
    def _spawn_system_task(function: Any) -> None:
        library = running_library()
        if library == "trio":
            import trio

            trio.lowlevel.spawn_system_task(function)
        else:
            task = asyncio.get_running_loop().create_task(function())
            _background_tasks.add(task)
            task.add_done_callback(_background_tasks.discard)

    async def __aenter__(self) -> IpStack:
        self._driver_for_use()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        driver = self._driver
        if driver is not None and not driver.has_stopped:
            if self._dhcp is not None and self._dhcp.lease is not None:
                now = driver.now()
                for message in self._dhcp.release():
                    self._send_dhcp(message.payload, message.destination, now)
                await driver.flush()
            driver.stop_requested = True
            if driver.scope is not None:
                driver.scope.cancel()
            await driver.stopped.wait()
        self._closed = True
        await self._link.aclose()

    # -- DHCP -----------------------------------------------------------

    def _send_dhcp(self, payload: bytes, destination: Any, now: float) -> None:
        # The source address is the interface's choice: 0.0.0.0 until it
        # holds the leased address, which RFC 2131 asks for either way.
        assert self._dhcp_socket is not None
        self._dhcp_socket.send_to(payload, (destination, SERVER_PORT), now)

    def _run_dhcp(self, now: float) -> None:
        client, sock = self._dhcp, self._dhcp_socket
        if client is None or sock is None:
            return
        while (item := sock.receive()) is not None:
            client.receive(item[0], now)
        for message in client.poll(now):
            self._send_dhcp(message.payload, message.destination, now)
        if client.take_change():
            interface = self._interface
            for address in [a for a in interface.addresses if a.version == 4]:
                interface.remove_address(address)
            interface.remove_route(ipaddress.IPv4Network("0.0.0.0/0"))
            lease = client.lease
            if lease is None:
                return
            interface.add_address(lease.interface)
            if lease.routers:
                interface.add_route(ipaddress.IPv4Network("0.0.0.0/0"), lease.routers[0])
            self._dns_servers = [str(server) for server in lease.dns_servers] + [
                server for server in self._dns_servers if ":" in server
            ]
            self._resolver = None
            assert self._dhcp_bound is not None
            self._dhcp_bound.set()

    async def wait_for_address(self) -> None:
        """Wait until DHCP gave the interface an address (at once without DHCP)."""
        self._driver_for_use()
        if self._dhcp_bound is not None:
            await self._dhcp_bound.wait()

    def intercept(self) -> Interception:
        """Take packets for every destination; flows nobody here serves come out of the result.

        For the router's side of a link (``netshim run --isolate``): see
        :mod:`netshim.ip.intercept`.
        """
        return Interception(self, self._interface.intercept())

    @property
    def addresses(self) -> list[str]:
        """The interface's addresses, as ``"ip/prefix"`` text."""
        return [str(a) for a in self._interface.addresses if not a.ip.is_unspecified]

    @property
    def dropped(self) -> dict[str, int]:
        """Packets the interface dropped, by reason."""
        return dict(self._interface.dropped)

    # -- the Stack contract ----------------------------------------------

    @property
    def hostname(self) -> str:
        return self._hostname

    def _interface_for(self, address: IPAddress) -> Interface:
        return self._use_loopback() if address.is_loopback else self._interface

    def _use_loopback(self) -> Interface:
        """The loopback interface, which the driver visits from now on."""
        if not self._loopback_used:
            self._loopback_used = True
            self._used_interfaces = self._interfaces
        return self._loopback

    async def connect_tcp(
        self, host: str, port: int, *, local_address: tuple[str, int] | None = None
    ) -> TcpStream:
        port = check_port(port, "connect_tcp")
        host = check_host(host, "connect_tcp")
        if local_address is not None:
            local_address = (local_address[0], check_port(local_address[1], "connect_tcp"))
        driver = self._driver_for_use()
        if self._dhcp_bound is not None:
            await self._dhcp_bound.wait()
        if parse_ip(host) is not None:
            targets = [parse_ip(host)]
        else:
            infos = await self.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
            targets = [parse_ip(info[4][0]) for info in infos]
        errors: list[OSError] = []
        for target in targets:
            assert target is not None
            local = _endpoint(local_address) if local_address is not None else None
            interface = self._interface_for(target)
            try:
                connection: Any = interface.tcp_connect(
                    (target, port), local=local, now=driver.now()
                )
            except OSError as exc:
                errors.append(exc)
                continue
            driver.poke(connection)
            try:
                await driver.wait_established(connection, errno.ECONNREFUSED, f"{target}:{port}")
            except OSError as exc:
                errors.append(exc)
                continue
            except BaseException:
                connection.abort()
                driver.poke(connection)
                raise
            return _IpTcpStream(self, connection)
        raise errors[0]

    async def listen_tcp(
        self,
        host: str | None = None,
        port: int = 0,
        *,
        backlog: int = DEFAULT_BACKLOG,
        ipv6_only: bool = False,
    ) -> TcpListener:
        port = check_port(port, "listen_tcp")
        self._driver_for_use()
        if host in (None, "", "::"):
            addresses: list[IPAddress] = [_ANY6] if ipv6_only else [_ANY6, _ANY4]
        else:
            ip = parse_ip(host)
            if ip is None:
                raise os_error(errno.EADDRNOTAVAIL, f"not an address: {host!r}")
            addresses = [ip]
        listeners: list[Any] = []
        try:
            for address in addresses:
                chosen = port or (listeners[0].local[1] if listeners else 0)
                for interface in self._interfaces:
                    if address.is_unspecified or interface.has_address(address):
                        if interface is self._loopback:
                            self._use_loopback()
                        listener = interface.tcp_listen(address, chosen, backlog)
                        listeners.append(listener)
                        chosen = listener.local[1]
        except BaseException:
            for listener in listeners:
                listener.close()
            raise
        if not listeners:
            raise os_error(errno.EADDRNOTAVAIL, f"{host} is not an address of this stack")
        return _IpTcpListener(self, listeners)

    async def open_udp(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        *,
        remote: tuple[str, int] | None = None,
        ipv6_only: bool = False,
    ) -> UdpSocket:
        port = check_port(port, "open_udp")
        if remote is not None:
            remote = (check_host(remote[0], "open_udp"), check_port(remote[1], "open_udp"))
        self._driver_for_use()
        ip = parse_ip(host) if host not in ("", "::") else _ANY6
        if ip is None:
            raise os_error(errno.EADDRNOTAVAIL, f"not an address: {host!r}")
        interface = self._use_loopback() if ip.is_loopback else self._interface
        sock = interface.udp_bind(ip, port)
        if remote is not None:
            sock.connect(_endpoint(remote))
        return _IpUdpSocket(self, sock)

    def _get_resolver(self) -> Any:
        if self._resolver is None:
            from ..dns import Resolver

            self._resolver = Resolver(
                stack=self,
                servers=self._dns_servers,
                timeout=_DNS_TIMEOUT,
                tries=_DNS_TRIES,
            )
        return self._resolver

    async def _lookup(self, name: str, family: int) -> tuple[list[IPAddress], str]:
        if name == self._hostname:
            own = [a.ip for a in self._interface.addresses if not a.ip.is_unspecified]
            return own or [ipaddress.IPv4Address("127.0.1.1")], name
        if self._dhcp_bound is not None:
            await self._dhcp_bound.wait()
        if not self._dns_servers:
            raise name_temporarily_unresolvable(name)
        from ..dns._resolver import addresses_by_dns

        resolver = self._get_resolver()
        qtypes = []
        if family in (0, socket.AF_INET):
            qtypes.append("A")
        # As glibc's AI_ADDRCONFIG: AAAA only with an IPv6 address beyond link-local.
        if family in (0, socket.AF_INET6) and any(
            not ip.is_link_local for ip in self._interface.addresses_of(6)
        ):
            qtypes.append("AAAA")
        return await addresses_by_dns(
            name, qtypes, lambda name, qtype: resolver.query(name, qtype, "getaddrinfo")
        )

    async def getaddrinfo(
        self,
        host: str | bytes | None,
        port: str | bytes | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[AddrInfo]:
        number = parse_service(port, type, flags)
        name = None if host is None else check_host(host, "getaddrinfo")
        kinds = service_socket_types(port)
        return await resolve_addrinfo(self._lookup, name, number, family, type, proto, flags, kinds)


# asyncio keeps only weak references to tasks: the stacks' drivers live here.
_background_tasks: set[Any] = set()
