"""The Stack contract: the one seam between netshim's users and its networks.

Everything above this module (the socket shim, the Node-style API, the gateway)
speaks to a :class:`Stack` and never asks which one it is; everything below it
(the virtual network, the host network, tunnels) implements it.  A stack
offers four operations, all async on anyio so that they run under asyncio and
trio alike:

* :meth:`Stack.connect_tcp` gives a :class:`TcpStream`, an anyio byte stream
  with half-close and the local and remote addresses as typed attributes;
* :meth:`Stack.listen_tcp` gives a :class:`TcpListener` bound to a known
  address, which yields incoming streams;
* :meth:`Stack.open_udp` gives a :class:`UdpSocket` that sends and receives
  datagrams with addresses;
* :meth:`Stack.getaddrinfo` answers as :func:`socket.getaddrinfo` does.

Failures are the operating system's: ``ConnectionRefusedError``,
``ConnectionResetError``, ``BrokenPipeError``, ``TimeoutError`` and ``OSError``
with ``errno`` set to ``EHOSTUNREACH``, ``ENETUNREACH``, ``EADDRINUSE`` or
``EADDRNOTAVAIL``; name failures are ``socket.gaierror``.  anyio's own
exceptions keep their anyio meaning: ``anyio.EndOfStream`` after the peer's
FIN, ``anyio.ClosedResourceError`` when *this* side closed the object,
``anyio.BusyResourceError`` when two tasks receive (or send) at once.

Beside the contract the module keeps the *current stack* in a context
variable, and offers :func:`connect_tcp`, :func:`listen_tcp`,
:func:`open_udp` and :func:`getaddrinfo` on it, in the style of tcpip.js.
"""

from __future__ import annotations

import errno
import socket
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeAlias

import anyio
import anyio.abc
from anyio.abc import SocketAttribute, TaskGroup

from . import _system
from ._addresses import Address
from ._errors import os_error

__all__ = [
    "AddrInfo",
    "Address",
    "ForwardingStack",
    "ForwardingUdpSocket",
    "Stack",
    "StreamAttribute",
    "TcpListener",
    "TcpStream",
    "UDP_OPTIONS",
    "UdpSocket",
    "connect_tcp",
    "current_stack",
    "getaddrinfo",
    "listen_tcp",
    "open_udp",
    "set_default_stack",
    "use_stack",
]

SockAddr: TypeAlias = tuple[str, int] | tuple[str, int, int, int]
AddrInfo: TypeAlias = tuple[socket.AddressFamily, socket.SocketKind, int, str, SockAddr]

# Linux's default for the listen() backlog when the caller does not care
# (SOMAXCONN before kernel 5.4); anyio uses the same figure.
DEFAULT_BACKLOG = 128


def _family_of(address: Address) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address[0] else socket.AF_INET


class StreamAttribute(anyio.TypedAttributeSet):
    """Extra attributes a stack may offer on its streams, beyond anyio's socket ones."""

    #: Offered only while a connection joins two ends in this process and
    #: nothing observes, delays or breaks it: ``(peer stream, the listener
    #: the peer waits in)``.  The socket shim then joins the two programs'
    #: sockets directly, so the bytes never pass through Python.  (Most such
    #: connections it makes with :meth:`Stack.connect_tcp_joined` instead.)
    splice_peer: tuple[Any, Any] = anyio.typed_attribute()


class TcpStream(anyio.abc.ByteStream):
    """A connected TCP stream.

    ``receive(max_bytes)`` returns between 1 and ``max_bytes`` bytes as they
    arrive; after the peer's FIN and once everything before it was read it
    raises ``anyio.EndOfStream`` (every time it is called again).  It raises
    ``ConnectionResetError`` once the peer reset the connection, after the
    data that arrived before the reset was read.

    ``send(data)`` returns once the stack accepted all of ``data``; it may
    wait while the peer's receive window is full.  If it is cancelled, any
    amount of ``data`` may have been sent.  After :meth:`send_eof` it raises
    ``BrokenPipeError``, after a reset ``ConnectionResetError`` (or
    ``BrokenPipeError`` when the peer had already closed, as Linux reports it).

    ``send_eof()`` half-closes: the peer reads to ``EndOfStream`` while this
    side can still receive.  ``aclose()`` closes both directions and is
    idempotent; if unread data is waiting it resets the connection instead,
    as a Linux ``close()`` does.  :meth:`abort` always resets.

    Addresses are available as ``stream.extra(SocketAttribute.local_address)``
    (and ``remote_address``, ``local_port``, ``remote_port``, ``family``), and
    as the :attr:`local_address` / :attr:`remote_address` properties.
    """

    @property
    @abstractmethod
    def local_address(self) -> Address:
        """``(ip, port)`` of this end."""

    @property
    @abstractmethod
    def remote_address(self) -> Address:
        """``(ip, port)`` of the peer."""

    @abstractmethod
    async def abort(self) -> None:
        """Reset the connection: the peer's next operation raises ``ConnectionResetError``.

        Data not yet delivered to the peer may be lost; this side is closed.
        Idempotent, like :meth:`aclose`.
        """

    def close_joined(self) -> bool:
        """Close now, from any thread, an end whose bytes travel another way.

        Only for the ends of a connection the socket shim joined (see
        ``StreamAttribute.splice_peer`` and :meth:`Stack.connect_tcp_joined`):
        no task reads or writes them.  Returns False when the stack cannot
        (the default): the stream is then closed with :meth:`aclose` on its
        event loop.
        """
        return False

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {
            SocketAttribute.family: lambda: _family_of(self.local_address),
            SocketAttribute.local_address: lambda: self.local_address,
            SocketAttribute.local_port: lambda: self.local_address[1],
            SocketAttribute.remote_address: lambda: self.remote_address,
            SocketAttribute.remote_port: lambda: self.remote_address[1],
        }


class TcpListener(anyio.abc.Listener[TcpStream]):
    """A bound, listening TCP socket.

    ``await listener.accept()`` waits for the next connection; ``async for``
    yields connections until the listener is closed (then it ends quietly).
    Closing the listener resets connections still waiting to be accepted.
    """

    #: Whether connections are taken.  The socket shim binds a TCP socket by
    #: listening at once (so that ``getsockname()`` knows the port) and clears
    #: this until ``listen()``: Linux refuses connections to a socket that is
    #: bound but not listening.  A stack that cannot refuse them meanwhile
    #: may ignore it.
    accepting: bool = True

    @property
    @abstractmethod
    def local_address(self) -> Address:
        """``(ip, port)`` the listener is bound to; the port is the real one when 0 was asked."""

    def set_backlog(self, backlog: int) -> None:
        """``listen(backlog)`` again: the queue of finished connections takes a new bound.

        The socket shim listens at ``bind()`` (see :attr:`accepting`), before
        the program's ``listen(n)`` says how many connections may wait, and a
        program may call ``listen()`` again to change it, as Linux allows.
        Called in the stack's event loop.  A stack that cannot bound its queue
        (or whose bound is the host kernel's) ignores it, as this default does.
        """

    @abstractmethod
    async def accept(self) -> TcpStream:
        """The next incoming connection.

        Raises ``anyio.ClosedResourceError`` if the listener is (or gets) closed.
        """

    async def serve(
        self,
        handler: Callable[[TcpStream], Any],
        task_group: TaskGroup | None = None,
    ) -> None:
        """Accept forever, running ``handler(stream)`` in its own task for each connection.

        The stream is closed when the handler returns.  Returns when the
        listener is closed.  Without ``task_group`` the handlers run in a task
        group of this call, which waits for them.
        """

        async def run(stream: TcpStream) -> None:
            async with stream:
                await handler(stream)

        async with anyio.create_task_group() as own_group:
            group = task_group or own_group
            async for stream in self:
                group.start_soon(run, stream)

    def __aiter__(self) -> AsyncIterator[TcpStream]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[TcpStream]:
        while True:
            try:
                stream = await self.accept()
            except anyio.ClosedResourceError:
                return
            yield stream

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {
            SocketAttribute.family: lambda: _family_of(self.local_address),
            SocketAttribute.local_address: lambda: self.local_address,
            SocketAttribute.local_port: lambda: self.local_address[1],
        }


# Options a UdpSocket takes by name, with Linux's defaults: IP_TTL 64,
# IP_MULTICAST_TTL 1, IP_MULTICAST_LOOP on, and net.core.rmem_default /
# wmem_default for the buffers.
UDP_OPTIONS: Mapping[str, int] = {
    "ttl": 64,
    "multicast_ttl": 1,
    "multicast_loop": 1,
    "receive_buffer": 212992,
    "send_buffer": 212992,
}
_UDP_OPTION_RANGES: Mapping[str, tuple[int, int]] = {
    "ttl": (1, 255),
    "multicast_ttl": (0, 255),
    "multicast_loop": (0, 1),
    "receive_buffer": (1, 2**31 - 1),
    "send_buffer": (1, 2**31 - 1),
}


def _check_option(name: str) -> str:
    if name not in UDP_OPTIONS:
        raise ValueError(f"unknown UDP option {name!r}: one of {', '.join(UDP_OPTIONS)}")
    return name


class UdpSocket(anyio.abc.AsyncResource, anyio.TypedAttributeProvider):
    """A bound UDP socket, optionally connected to one remote address.

    ``send(data, address)`` sends one datagram; ``address`` may be omitted on
    a connected socket.  Datagrams larger than the family allows (65,507
    payload bytes over IPv4, 65,527 over IPv6) raise ``OSError(EMSGSIZE)``;
    sending to a broadcast address without :attr:`broadcast` set raises
    ``PermissionError(EACCES)``.

    ``receive()`` waits for the next datagram and returns ``(data, (ip,
    port))``.  A connected socket only receives from its remote address, and
    as on Linux, after it sent to a port where nothing listens its next
    ``send`` or ``receive`` raises ``ConnectionRefusedError`` once.

    ``async for data, address in sock`` receives until the socket is closed.
    """

    @property
    @abstractmethod
    def local_address(self) -> Address:
        """``(ip, port)`` the socket is bound to."""

    @property
    @abstractmethod
    def remote_address(self) -> Address | None:
        """The connected remote address, or ``None``."""

    @property
    @abstractmethod
    def broadcast(self) -> bool:
        """Whether sending to broadcast addresses is allowed (``SO_BROADCAST``)."""

    @broadcast.setter
    @abstractmethod
    def broadcast(self, enabled: bool) -> None: ...

    # -- multicast and options (not abstract: stacks without them keep working) --

    async def join_multicast(self, group: str, interface: str | None = None) -> None:
        """Receive datagrams sent to the multicast ``group`` (``IP_ADD_MEMBERSHIP``).

        ``interface`` is the local address to join on; ``None`` lets the
        stack choose.  Raises ``OSError(EINVAL)`` when ``group`` is not a
        multicast address of the socket's family, ``OSError(EADDRINUSE)``
        when already a member (as Linux does), and ``OSError(EOPNOTSUPP)`` on
        a stack without multicast, which is this default.
        """
        raise os_error(errno.EOPNOTSUPP, f"{type(self).__name__} has no multicast")

    async def leave_multicast(self, group: str, interface: str | None = None) -> None:
        """Stop receiving ``group`` (``IP_DROP_MEMBERSHIP``).

        Raises ``OSError(EADDRNOTAVAIL)`` when not a member, and
        ``OSError(EOPNOTSUPP)`` on a stack without multicast.
        """
        raise os_error(errno.EOPNOTSUPP, f"{type(self).__name__} has no multicast")

    def set_option(self, name: str, value: int) -> None:
        """Set one of :data:`UDP_OPTIONS` by name (``"ttl"`` is ``IP_TTL`` ...).

        Stacks apply what they can; the value is kept either way and
        :meth:`get_option` reports it.  Raises ``ValueError`` for an unknown
        name or a value out of the option's range.
        """
        low, high = _UDP_OPTION_RANGES[_check_option(name)]
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"UDP option {name!r} is {low}..{high}, got {value!r}")
        options = self.__dict__.setdefault("_udp_options", {})
        options[name] = value

    def get_option(self, name: str) -> int:
        """The value of a :data:`UDP_OPTIONS` entry: as set, else Linux's default."""
        options = self.__dict__.get("_udp_options", {})
        return int(options.get(_check_option(name), UDP_OPTIONS[name]))

    @abstractmethod
    async def send(self, data: bytes, address: tuple[str, int] | None = None) -> None:
        """Send one datagram to ``address`` (or the connected remote address)."""

    @abstractmethod
    async def receive(self) -> tuple[bytes, Address]:
        """The next datagram and its sender."""

    def __aiter__(self) -> AsyncIterator[tuple[bytes, Address]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[tuple[bytes, Address]]:
        while True:
            try:
                yield await self.receive()
            except anyio.ClosedResourceError:
                return

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        attributes: dict[Any, Callable[[], Any]] = {
            SocketAttribute.family: lambda: _family_of(self.local_address),
            SocketAttribute.local_address: lambda: self.local_address,
            SocketAttribute.local_port: lambda: self.local_address[1],
        }
        if self.remote_address is not None:
            attributes[SocketAttribute.remote_address] = lambda: self.remote_address
            attributes[SocketAttribute.remote_port] = lambda: self.remote_address[1]  # type: ignore[index]
        return attributes


class ForwardingUdpSocket(UdpSocket):
    """A :class:`UdpSocket` that hands every call to ``inner``.

    Stacks that wrap another stack (a policy, a test's network block)
    subclass it and override only what they change, usually :meth:`send`.
    """

    def __init__(self, inner: UdpSocket) -> None:
        self.inner = inner

    @property
    def local_address(self) -> Address:
        return self.inner.local_address

    @property
    def remote_address(self) -> Address | None:
        return self.inner.remote_address

    @property
    def broadcast(self) -> bool:
        return self.inner.broadcast

    @broadcast.setter
    def broadcast(self, enabled: bool) -> None:
        self.inner.broadcast = enabled

    async def join_multicast(self, group: str, interface: str | None = None) -> None:
        await self.inner.join_multicast(group, interface)

    async def leave_multicast(self, group: str, interface: str | None = None) -> None:
        await self.inner.leave_multicast(group, interface)

    def set_option(self, name: str, value: int) -> None:
        self.inner.set_option(name, value)

    def get_option(self, name: str) -> int:
        return self.inner.get_option(name)

    async def send(self, data: bytes, address: tuple[str, int] | None = None) -> None:
        await self.inner.send(data, address)

    async def receive(self) -> tuple[bytes, Address]:
        return await self.inner.receive()

    async def aclose(self) -> None:
        await self.inner.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self.inner.extra_attributes


class Stack(ABC):
    """A network: what :func:`netshim.install` and the gateway route sockets through."""

    @abstractmethod
    async def connect_tcp(
        self, host: str, port: int, *, local_address: tuple[str, int] | None = None
    ) -> TcpStream:
        """Open a TCP connection to ``host`` (an IP or a name) and ``port``.

        Names resolve through the stack; each address is tried in order and
        the first error is raised if all fail, as ``socket.create_connection``
        does.  ``local_address`` binds the local end first.  Raises
        ``ConnectionRefusedError``, ``TimeoutError``, ``OSError`` with
        ``EHOSTUNREACH`` / ``ENETUNREACH`` / ``EADDRNOTAVAIL`` /
        ``EADDRINUSE``, or ``socket.gaierror``.
        """

    def connect_tcp_joined(
        self,
        host: str,
        port: int,
        claim: Callable[[TcpListener, TcpStream], bool],
        *,
        local_address: tuple[str, int] | None = None,
    ) -> TcpStream | None:
        """Connect at once, from any thread, when the connection can be joined in this process.

        The socket shim's common case: its own client connecting to its own
        listener, in one process.  A stack whose connection to ``host`` (an
        IP) and ``port`` would join two ends in this process with nothing
        observing, delaying or breaking it (what ``StreamAttribute.splice_peer``
        offers) may make it here, without waiting and outside its event loop,
        and hand the server's end to ``claim(listener, server_end)`` instead
        of the listener's queue.  When ``claim`` returns True the connection
        is made and the client's end returned; both ends carry no bytes
        (the caller joins the two programs' sockets) and are closed with
        :meth:`TcpStream.close_joined`.  Returns None, having changed
        nothing, whenever it cannot (the default, a name to look up, a fault,
        a listener missing, busy or refusing, ``claim`` saying no): then
        :meth:`connect_tcp` connects or raises the error.
        """
        return None

    def getaddrinfo_now(
        self,
        host: str | bytes | None,
        port: str | bytes | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[AddrInfo] | None:
        """:meth:`getaddrinfo` answered at once, from any thread, when the stack can.

        For the socket shim, which otherwise awaits :meth:`getaddrinfo` on its
        engine's loop: a stack that can answer a name without waiting and
        with nothing observing (a virtual network's own DNS over a perfect
        link) returns the answer, or raises the same ``socket.gaierror``.
        Returns None (the default) whenever it cannot; then
        :meth:`getaddrinfo` answers.
        """
        return None

    #: True for stacks whose far end resolves names (tunnels): the socket
    #: shim then hands out synthetic addresses and connects by name.
    resolves_remotely: bool = False

    #: True when the stack *is* the operating system's network with nothing
    #: added: the socket shim then hands out real sockets, at no cost.
    uses_host_sockets: bool = False

    def check_destination(self, host: str, port: int, transport: str) -> None:  # noqa: B027 - most stacks refuse nothing
        """Refuse a destination at once, before any I/O; the default allows all.

        The socket shim calls it in the program's own thread from
        ``connect()``, ``connect_ex()`` and ``sendto()`` with the address it
        is about to use (an IP, or a name for stacks that resolve remotely)
        and ``transport`` ``"tcp"`` or ``"udp"``.  Whatever it raises reaches
        the program unchanged, even from a non-blocking connect, so a policing
        stack can raise an exception that is not an ``OSError``.
        """

    @abstractmethod
    async def listen_tcp(
        self,
        host: str | None = None,
        port: int = 0,
        *,
        backlog: int = DEFAULT_BACKLOG,
        ipv6_only: bool = False,
    ) -> TcpListener:
        """Listen on ``host`` and ``port``.

        ``host`` ``None``, ``""`` or ``"::"`` means every address of both
        families (one dual-stack socket, as Linux does by default) unless
        ``ipv6_only`` (``IPV6_V6ONLY``); ``"0.0.0.0"`` every IPv4 address.
        Port 0 picks a free ephemeral port.  Raises ``OSError(EADDRINUSE)`` or
        ``OSError(EADDRNOTAVAIL)``.
        """

    @abstractmethod
    async def open_udp(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        *,
        remote: tuple[str, int] | None = None,
        ipv6_only: bool = False,
    ) -> UdpSocket:
        """Bind a UDP socket, and connect it to ``remote`` if given.

        ``"::"`` is dual-stack unless ``ipv6_only``, as for :meth:`listen_tcp`.
        """

    @abstractmethod
    async def getaddrinfo(
        self,
        host: str | bytes | None,
        port: str | bytes | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[AddrInfo]:
        """Resolve as :func:`socket.getaddrinfo` does, with the same return shape and errors."""

    async def reverse_lookup(self, ip: str) -> str:
        """The name of ``ip`` (a PTR lookup); ``socket.herror`` if it has none."""
        raise socket.herror(1, f"Unknown host ({ip})")

    @property
    def hostname(self) -> str:
        """What ``socket.gethostname()`` answers for programs on this stack."""
        return _system.gethostname()

    def stack_for_local_address(self, host: str) -> Stack:
        """The stack that owns the local address ``host``, for ``bind()``.

        A network of several hosts answers with the host owning ``host``, so
        one process can serve as several machines; others answer ``self``.
        """
        return self

    async def aclose(self) -> None:  # noqa: B027 - most stacks hold nothing to release
        """Release what the stack holds (tunnels, background tasks). Idempotent."""


class ForwardingStack(Stack):
    """A :class:`Stack` that hands every call to ``inner``.

    Stacks that check or change some calls of another (a policy, a test's
    network block) subclass it and override only those.  It keeps
    ``inner``'s name resolution (``resolves_remotely``, :meth:`getaddrinfo`,
    :meth:`reverse_lookup`, :attr:`hostname`) but never claims
    ``uses_host_sockets``, which would let the socket shim hand out real
    sockets past the checks, and local addresses stay with the wrapper for
    the same reason.  ``inner`` is not owned: :meth:`aclose` leaves it open
    unless a subclass says otherwise.
    """

    def __init__(self, inner: Stack) -> None:
        if not isinstance(inner, Stack):
            raise TypeError(
                f"{type(self).__name__} needs a netshim Stack, not {type(inner).__name__}"
            )
        self.inner = inner
        self.resolves_remotely = inner.resolves_remotely

    async def connect_tcp(
        self, host: str, port: int, *, local_address: tuple[str, int] | None = None
    ) -> TcpStream:
        return await self.inner.connect_tcp(host, port, local_address=local_address)

    async def listen_tcp(
        self,
        host: str | None = None,
        port: int = 0,
        *,
        backlog: int = DEFAULT_BACKLOG,
        ipv6_only: bool = False,
    ) -> TcpListener:
        return await self.inner.listen_tcp(host, port, backlog=backlog, ipv6_only=ipv6_only)

    async def open_udp(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        *,
        remote: tuple[str, int] | None = None,
        ipv6_only: bool = False,
    ) -> UdpSocket:
        return await self.inner.open_udp(host, port, remote=remote, ipv6_only=ipv6_only)

    async def getaddrinfo(
        self,
        host: str | bytes | None,
        port: str | bytes | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[AddrInfo]:
        return await self.inner.getaddrinfo(host, port, family, type, proto, flags)

    async def reverse_lookup(self, ip: str) -> str:
        return await self.inner.reverse_lookup(ip)

    @property
    def hostname(self) -> str:
        return self.inner.hostname


_current_stack: ContextVar[Stack | None] = ContextVar("netshim_current_stack", default=None)
_default_stack: Stack | None = None


def set_default_stack(stack: Stack | None) -> Stack | None:
    """Make ``stack`` the process-wide default and return the previous one.

    ``None`` restores the built-in default, the host network.
    """
    global _default_stack
    previous = _default_stack
    _default_stack = stack
    return previous


def current_stack() -> Stack:
    """The stack chosen by :func:`use_stack` in this context, else the default.

    The default is the host network (:class:`netshim.HostStack`) unless
    :func:`set_default_stack` chose another.
    """
    global _default_stack
    stack = _current_stack.get()
    if stack is not None:
        return stack
    if _default_stack is None:
        from .stacks.host import HostStack

        _default_stack = HostStack()
    return _default_stack


@contextmanager
def use_stack(stack: Stack) -> Iterator[Stack]:
    """Make ``stack`` the current stack inside the ``with`` block (and tasks started there)."""
    token = _current_stack.set(stack)
    try:
        yield stack
    finally:
        _current_stack.reset(token)


def connect_tcp(
    host: str, port: int, *, local_address: tuple[str, int] | None = None
) -> Awaitable[TcpStream]:
    """:meth:`Stack.connect_tcp` on the current stack."""
    return current_stack().connect_tcp(host, port, local_address=local_address)


def listen_tcp(
    host: str | None = None,
    port: int = 0,
    *,
    backlog: int = DEFAULT_BACKLOG,
    ipv6_only: bool = False,
) -> Awaitable[TcpListener]:
    """:meth:`Stack.listen_tcp` on the current stack."""
    return current_stack().listen_tcp(host, port, backlog=backlog, ipv6_only=ipv6_only)


def open_udp(
    host: str = "0.0.0.0",
    port: int = 0,
    *,
    remote: tuple[str, int] | None = None,
    ipv6_only: bool = False,
) -> Awaitable[UdpSocket]:
    """:meth:`Stack.open_udp` on the current stack."""
    return current_stack().open_udp(host, port, remote=remote, ipv6_only=ipv6_only)


def getaddrinfo(
    host: str | bytes | None,
    port: str | bytes | int | None,
    family: int = 0,
    type: int = 0,
    proto: int = 0,
    flags: int = 0,
) -> Awaitable[list[AddrInfo]]:
    """:meth:`Stack.getaddrinfo` on the current stack."""
    return current_stack().getaddrinfo(host, port, family, type, proto, flags)
