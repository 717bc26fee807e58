"""What every tunnel stack shares: names resolved at the far end, state events, byte buffers.

A tunnel (Wisp, websockify, SOCKS5) carries connections to a server that
connects on our behalf, so by default it cannot listen (Wisp can, on a
gateway's LAN), its local addresses are not ours to know, and names are
best resolved by the server.  For code that calls ``getaddrinfo`` before
connecting, :meth:`TunnelStack.getaddrinfo` hands out the socket shim's
synthetic addresses (see :mod:`netshim.shim._names`) and every connect maps
them back to the name, so the name travels through the tunnel either way.

A tunnel's connection to its server comes and goes: :class:`TunnelEvent`
says so (connecting, connected, reconnecting, closed, and a LAN's members
joining and leaving), to callbacks (:meth:`TunnelStack.on_event`) and to
async iterators (:meth:`TunnelStack.events`), as CheerpX's
``stateUpdateCb`` / ``netmapUpdateCb`` do for its VPN.  Events are
emitted where the stack notices the change, with no task of their own: a
callback runs inside that call (in Pyodide possibly inside JavaScript's
WebSocket callback), so it must be quick and must not raise (what it raises
is logged and dropped).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import socket
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import anyio

from .._addresses import (
    IPAddress,
    check_host,
    check_port,
    parse_ip,
    parse_service,
    service_socket_types,
)
from .._addrinfo import AddrInfo, resolve_addrinfo
from .._errors import os_error
from ..stack import DEFAULT_BACKLOG, Stack, TcpListener

__all__ = [
    "DEFAULT_EVENT_QUEUE",
    "UNKNOWN_LOCAL",
    "ByteBuffer",
    "TunnelEvent",
    "TunnelEventKind",
    "TunnelEvents",
    "TunnelStack",
]

_logger = logging.getLogger("netshim.tunnel")

#: The local address a tunnelled stream reports: the real one is the
#: server's, on another machine.
UNKNOWN_LOCAL = ("0.0.0.0", 0)

#: Events one :meth:`TunnelStack.events` iterator keeps for a reader that is
#: not reading; past it the oldest are dropped (and counted).  State changes
#: come a few a minute; a LAN of a few hundred members joining at once fits.
DEFAULT_EVENT_QUEUE = 256


class TunnelEventKind(enum.Enum):
    """What a :class:`TunnelEvent` reports; the value is the name CheerpX-style callers use."""

    #: A connection to the server is being opened.
    CONNECTING = "connecting"
    #: The connection is open (and, on a LAN, joined: see ``address``/``name``).
    CONNECTED = "connected"
    #: The connection dropped while listeners need it; another attempt follows
    #: after ``delay`` seconds (``attempt`` counts from 1).
    RECONNECTING = "reconnecting"
    #: The connection ended (``reason`` says why); the next use opens a new one.
    CLOSED = "closed"
    #: Another member joined the LAN (``address``, ``name``).
    MEMBER_JOINED = "member-joined"
    #: Another member left the LAN (``address``, ``name``).
    MEMBER_LEFT = "member-left"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class TunnelEvent:
    """One change of a tunnel stack's connection or LAN.

    ``reason`` is a sentence for ``closed`` and ``reconnecting`` (the error
    that ended the connection or failed the last attempt).  ``address`` and
    ``name`` are this client's LAN address and DNS name with ``connected``
    (``None`` off a LAN), the other member's with ``member-joined`` and
    ``member-left``.  ``attempt`` and ``delay`` belong to ``reconnecting``.
    """

    kind: TunnelEventKind
    reason: str = ""
    address: str | None = None
    name: str | None = None
    attempt: int = 0
    delay: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", TunnelEventKind(self.kind))
        if self.attempt < 0 or self.delay < 0:
            raise ValueError("attempt and delay are never negative")


def _thread_safe_caller() -> Callable[[Callable[[], object]], object] | None:
    """How another thread schedules a call in the running event loop (``None``: no loop).

    Asked of asyncio and trio themselves (not of sniffio, which Pyodide's
    netshim does not install); without a running loop, only wakes from the
    same thread work.
    """
    import asyncio

    try:
        return asyncio.get_running_loop().call_soon_threadsafe
    except RuntimeError:
        pass
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            return trio.lowlevel.current_trio_token().run_sync_soon  # type: ignore[no-any-return]
        except RuntimeError:
            pass
    return None


class _Waker:
    """Sets an anyio event of one event loop from any thread (or from no task at all)."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.event = anyio.Event()
        self._call_soon = _thread_safe_caller()

    def wake(self) -> None:
        if threading.get_ident() == self.thread or self._call_soon is None:
            self.event.set()
        else:
            # A closed loop (RuntimeError) has nobody waiting any more.
            with contextlib.suppress(RuntimeError):
                self._call_soon(self.event.set)

    def reset(self) -> None:
        if self.event.is_set():
            self.event = anyio.Event()


class TunnelEvents:
    """An async iterator over a tunnel stack's events from its creation on.

    Made by :meth:`TunnelStack.events`.  It keeps at most ``max_queued``
    events for a reader that is not reading; when one more comes the oldest
    is dropped and :attr:`dropped` counts it (the latest state is what a
    reader usually needs).  Iteration ends after :meth:`aclose` (or ``async
    with`` ending) once the queued events were taken; events may be emitted
    from another thread (the socket shim's engine), and wake the reader's
    event loop safely.
    """

    def __init__(self, stack: TunnelStack, max_queued: int) -> None:
        if max_queued < 1:
            raise ValueError(f"max_queued must be at least 1, got {max_queued}")
        self.max_queued = max_queued
        #: Events dropped because the queue was full.
        self.dropped = 0
        self._queue: deque[TunnelEvent] = deque()
        self._lock = threading.Lock()
        self._closed = False
        self._waker = _Waker()
        self._unsubscribe = stack.on_event(self._push)

    def _push(self, event: TunnelEvent) -> None:
        with self._lock:
            if self._closed:
                return
            if len(self._queue) >= self.max_queued:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(event)
        self._waker.wake()

    def __aiter__(self) -> AsyncIterator[TunnelEvent]:
        return self

    async def __anext__(self) -> TunnelEvent:
        while True:
            with self._lock:
                if self._queue:
                    return self._queue.popleft()
                if self._closed:
                    raise StopAsyncIteration
                self._waker.reset()
            await self._waker.event.wait()

    async def aclose(self) -> None:
        """Stop receiving events; iteration ends once the queued ones were taken. Idempotent."""
        with self._lock:
            self._closed = True
        self._unsubscribe()
        self._waker.wake()

    async def __aenter__(self) -> TunnelEvents:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class TunnelStack(Stack):
    """Base of the stacks that reach the network through a server."""

    resolves_remotely = True

    #: How the stack names itself in messages ("Wisp", "SOCKS5" ...).
    kind = "tunnel"

    _event_callbacks: list[Callable[[TunnelEvent], object]] | None = None

    def on_event(self, callback: Callable[[TunnelEvent], object]) -> Callable[[], None]:
        """Call ``callback(event)`` for every :class:`TunnelEvent` from now on.

        Returns a function that unsubscribes (idempotent).  The callback runs
        synchronously where the change is noticed (see the module
        documentation): it must not block, and what it raises is logged and
        otherwise ignored.
        """
        callbacks = self._event_callbacks
        if callbacks is None:
            callbacks = self._event_callbacks = []
        callbacks.append(callback)

        def unsubscribe() -> None:
            # A copy, not in place: emit() may be iterating the old list.
            current = self._event_callbacks or []
            self._event_callbacks = [c for c in current if c is not callback]

        return unsubscribe

    def events(self, *, max_queued: int = DEFAULT_EVENT_QUEUE) -> TunnelEvents:
        """An async iterator of the events from now on (see :class:`TunnelEvents`).

        Use it as ``async with stack.events() as events: async for event in
        events: ...``; it must be made inside a running event loop.
        """
        return TunnelEvents(self, max_queued)

    # Stacks that open a connection to their server per stream (websockify,
    # SOCKS5) have no session to watch: their state is whether the server
    # answered last time ("up", "down"), "connecting" while a first attempt
    # runs, None before any.
    _server_state: str | None = None

    def _server_connecting(self) -> None:
        """A connection to the server is being opened: ``connecting`` unless it is up."""
        if self._server_state in (None, "down"):
            self._server_state = "connecting"
            self.emit(TunnelEvent(TunnelEventKind.CONNECTING))

    def _server_answered(self) -> None:
        """The server answered: ``connected``, unless it was up already."""
        if self._server_state != "up":
            self._server_state = "up"
            self.emit(TunnelEvent(TunnelEventKind.CONNECTED))

    def _server_lost(self, error: BaseException | str) -> None:
        """The server could not be reached: ``closed`` with why, unless it was down already."""
        if self._server_state != "down":
            self._server_state = "down"
            reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
            self.emit(TunnelEvent(TunnelEventKind.CLOSED, reason=reason))

    def emit(self, event: TunnelEvent) -> None:
        """Hand ``event`` to every subscriber, in the order they subscribed."""
        for callback in self._event_callbacks or ():
            try:
                callback(event)
            except Exception:
                _logger.exception("a tunnel event callback raised on %s", event)

    async def listen_tcp(
        self,
        host: str | None = None,
        port: int = 0,
        *,
        backlog: int = DEFAULT_BACKLOG,
        ipv6_only: bool = False,
    ) -> TcpListener:
        """Always ``OSError(EOPNOTSUPP)``: a tunnel only connects outwards."""
        raise os_error(errno.EOPNOTSUPP, f"{self.kind} tunnels cannot listen, only connect")

    async def getaddrinfo(
        self,
        host: str | bytes | None,
        port: str | bytes | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[AddrInfo]:
        """Numeric hosts as they are; names as synthetic addresses that stand for the name."""
        name = None if host is None else check_host(host, "getaddrinfo")
        number = parse_service(port, type, flags)

        async def lookup(name: str, family: int) -> tuple[list[IPAddress], str]:
            if flags & socket.AI_NUMERICHOST:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            from ..shim._names import synthetic

            return list(synthetic.addresses_for(name)), name

        return await resolve_addrinfo(
            lookup, name, number, family, type, proto, flags, service_socket_types(port)
        )

    @staticmethod
    def destination(host: object, port: object, function: str) -> tuple[str, int]:
        """``host`` and ``port`` checked, with a synthetic address turned back into its name."""
        port = check_port(port, function)
        name = check_host(host, function)
        if not name:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if parse_ip(name) is not None:
            from ..shim._names import synthetic_name

            original = synthetic_name(name)
            if original is not None:
                return original, port
        return name, port


class ByteBuffer:
    """Received bytes waiting to be read, with the end of the stream behind them.

    ``error`` is raised once the bytes before it were read, as a socket
    reports a reset after the data that arrived first.
    """

    __slots__ = ("chunks", "eof", "error", "size")

    def __init__(self) -> None:
        # A chunk read in part is kept as a view of what is left of it, so
        # small reads of a big chunk copy only what they take.
        self.chunks: deque[bytes | memoryview] = deque()
        self.size = 0
        self.eof = False
        self.error: OSError | None = None

    def push(self, data: bytes | memoryview) -> None:
        if data and not self.eof and self.error is None:
            self.chunks.append(data)
            self.size += len(data)

    @property
    def finished(self) -> bool:
        return self.eof or self.error is not None

    @property
    def ready(self) -> bool:
        """Whether :meth:`take` answers without waiting."""
        return bool(self.chunks) or self.finished

    def take(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes``; raises EndOfStream or the error once empty."""
        if self.chunks:
            first = self.chunks[0]
            if len(first) <= max_bytes:
                self.chunks.popleft()
                self.size -= len(first)
                return first if type(first) is bytes else bytes(first)
            rest = first if isinstance(first, memoryview) else memoryview(first)
            self.chunks[0] = rest[max_bytes:]
            self.size -= max_bytes
            return bytes(rest[:max_bytes])
        if self.error is not None:
            raise self.error
        if self.eof:
            raise anyio.EndOfStream
        raise AssertionError("take() on an empty buffer")
