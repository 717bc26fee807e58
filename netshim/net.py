"""Node.js's ``net`` module in Python: TCP servers and sockets on any netshim stack.

The names are Node's in snake case (``createServer`` is :func:`create_server`,
``setKeepAlive`` is :meth:`Socket.set_keep_alive`), and every operation runs
on a :class:`~netshim.stack.Stack`: the one given as ``stack=``, else the
current stack (:func:`netshim.current_stack`).  The differences from Node
follow from Python's async model:

* Operations that wait are coroutines: ``await sock.write(b"...")`` returns
  once the stack took the bytes (that is the backpressure, so there is no
  ``"drain"`` event), ``await server.listen(0)``, ``await net.connect(...)``.
  Returning stands for Node's callback, raising for the error it would get.
* Background work (reading, idle timers, accepting) needs a task group, so
  sockets and servers are async context managers::

      async with net.create_server(handle) as server:
          await server.listen(0, "127.0.0.1")
          async with net.connect(server.address().port, "127.0.0.1") as sock:
              await sock.end(b"hello")

  Leaving the block destroys what is still open, as a process exit would.
  A socket used only with ``await`` and ``async for`` needs no task group
  (it then reads only while iterated, where Node reads all along).
* Events work as in Node (``on``, ``once``, ``off``; listeners may be
  coroutine functions, which are awaited), and Python code can instead use
  ``async for chunk in sock`` and ``async for sock in server``.
* Times are in seconds, not milliseconds.
* Errors are the ``OSError`` subclasses Python raises, carrying Node's
  ``code``, ``syscall``, ``address`` and ``port`` (see
  :class:`netshim._node.NodeError`).
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import errno
import ipaddress
import math
import socket
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import anyio.abc
from anyio.abc import SocketAttribute, TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._addresses import parse_ip
from ._node import EventEmitter, NodeError, TaskGroupUser, node_error, system_error
from .stack import Stack, TcpListener, TcpStream, current_stack

__all__ = [
    "AddressInfo",
    "BlockList",
    "NodeError",
    "Server",
    "Socket",
    "SocketAddress",
    "connect",
    "create_connection",
    "create_server",
    "is_ip",
    "is_ipv4",
    "is_ipv6",
]

# Node's default listen() backlog.
DEFAULT_BACKLOG = 511
# How much one read asks the stack for: Node reads 64 KiB at a time too.
READ_SIZE = 65536
# The most one write hands the stack at a time.
WRITE_SIZE = 65536
# Node 20's readableHighWaterMark for sockets: a socket nobody reads keeps
# reading until this much waits unread, then stops (and the window fills).
HIGH_WATER_MARK = 16384

ReadyState = Literal["opening", "open", "readOnly", "writeOnly", "closed"]


# --- addresses -----------------------------------------------------------


def is_ip(text: object) -> int:
    """6 for an IPv6 address, 4 for an IPv4 address, else 0 (``net.isIP``).

    IPv6 addresses may carry a zone (``fe80::1%eth0``); IPv4 addresses are
    dotted quads only, without leading zeros.
    """
    if not isinstance(text, str):
        return 0
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return 0


def is_ipv4(text: object) -> bool:
    return is_ip(text) == 4


def is_ipv6(text: object) -> bool:
    return is_ip(text) == 6


def _family_name(address: str) -> Literal["IPv4", "IPv6"]:
    return "IPv6" if ":" in address else "IPv4"


@dataclass(frozen=True, slots=True)
class AddressInfo:
    """What ``server.address()`` and ``sock.address()`` return in Node."""

    address: str
    family: Literal["IPv4", "IPv6"]
    port: int


_FamilyArg = Literal["ipv4", "ipv6", "IPv4", "IPv6"]


def _check_family(family: str) -> Literal["ipv4", "ipv6"]:
    lowered = family.lower() if isinstance(family, str) else family
    if lowered not in ("ipv4", "ipv6"):
        raise ValueError(f"family must be 'ipv4' or 'ipv6', got {family!r}")
    return lowered  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class SocketAddress:
    """An address, port and family, validated (``net.SocketAddress``).

    ``SocketAddress()`` is ``127.0.0.1:0``; an IPv6 address needs
    ``family="ipv6"``, and ``flowlabel`` is allowed only with it.
    """

    address: str = ""
    port: int = 0
    family: _FamilyArg = "ipv4"
    flowlabel: int = 0

    def __post_init__(self) -> None:
        family = _check_family(self.family)
        object.__setattr__(self, "family", family)
        address = self.address or ("127.0.0.1" if family == "ipv4" else "::")
        ip = parse_ip(address)
        if ip is None or ip.version != (4 if family == "ipv4" else 6):
            raise ValueError(f"{address!r} is not an {family} address")
        object.__setattr__(self, "address", address)
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise TypeError(f"port must be an int, not {type(self.port).__name__}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0-65535, got {self.port}")
        if not 0 <= self.flowlabel < 1 << 20:
            raise ValueError(f"flowlabel is 0..2**20 - 1, got {self.flowlabel}")
        if self.flowlabel and family != "ipv6":
            raise ValueError("a flowlabel needs an ipv6 address")

    @classmethod
    def parse(cls, text: str) -> SocketAddress | None:
        """``"1.2.3.4:80"`` or ``"[::1]:80"`` as an address, or ``None`` if it is not one."""
        try:
            if text.startswith("["):
                host, _, rest = text[1:].partition("]")
                port = int(rest[1:]) if rest.startswith(":") else 0
                if rest and not rest.startswith(":"):
                    return None
                return cls(host, port, "ipv6")
            host, sep, port_text = text.rpartition(":")
            if not sep or ":" in host:
                return cls(text, 0, "ipv6" if ":" in text else "ipv4")
            return cls(host, int(port_text), "ipv4")
        except (ValueError, TypeError):
            return None


@dataclass(slots=True)
class _Rule:
    kind: Literal["Address", "Range", "Subnet"]
    low: ipaddress.IPv4Address | ipaddress.IPv6Address
    high: ipaddress.IPv4Address | ipaddress.IPv6Address
    text: str


def _as_ip(
    value: str | SocketAddress, family: str
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(value, SocketAddress):
        return ipaddress.ip_address(value.address.split("%")[0])
    wanted = 4 if _check_family(family) == "ipv4" else 6
    ip = parse_ip(value)
    if ip is None or ip.version != wanted:
        raise ValueError(f"{value!r} is not an {family} address")
    return ip


def _both_forms(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """``ip`` plus its IPv4-mapped twin, so rules of either family match it."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return [ip, ip.ipv4_mapped]
    if isinstance(ip, ipaddress.IPv4Address):
        return [ip, ipaddress.IPv6Address(f"::ffff:{ip}")]
    return [ip]


@dataclass
class BlockList:
    """Rules for disabling inbound or outbound access to addresses (``net.BlockList``).

    An IPv4 rule also matches the IPv4-mapped IPv6 form of its addresses
    (``::ffff:10.0.0.1``), and the other way round, as in Node.
    """

    _rules: list[_Rule] = field(default_factory=list)

    def add_address(self, address: str | SocketAddress, family: _FamilyArg = "ipv4") -> None:
        ip = _as_ip(address, family)
        self._rules.append(_Rule("Address", ip, ip, f"Address: IPv{ip.version} {ip}"))

    def add_range(
        self, start: str | SocketAddress, end: str | SocketAddress, family: _FamilyArg = "ipv4"
    ) -> None:
        low, high = _as_ip(start, family), _as_ip(end, family)
        if low.version != high.version or low > high:  # type: ignore[operator]
            raise ValueError(f"{start!r} must not be greater than {end!r}")
        self._rules.append(_Rule("Range", low, high, f"Range: IPv{low.version} {low}-{high}"))

    def add_subnet(
        self, net: str | SocketAddress, prefix: int, family: _FamilyArg = "ipv4"
    ) -> None:
        ip = _as_ip(net, family)
        network = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
        text = f"Subnet: IPv{ip.version} {ip}/{prefix}"
        self._rules.append(_Rule("Subnet", network[0], network[-1], text))

    def check(self, address: str | SocketAddress, family: _FamilyArg = "ipv4") -> bool:
        """Whether ``address`` matches any rule; an invalid address matches none."""
        try:
            ip = _as_ip(address, family)
        except ValueError:
            return False
        for candidate in _both_forms(ip):
            for rule in self._rules:
                if rule.low.version == candidate.version and rule.low <= candidate <= rule.high:  # type: ignore[operator]
                    return True
        return False

    @property
    def rules(self) -> list[str]:
        """The rules as text, newest first, as Node lists them."""
        return [rule.text for rule in reversed(self._rules)]


# --- sockets -------------------------------------------------------------


def _wrap(exc: OSError, syscall: str, address: tuple[str, int] | None) -> NodeError:
    if address is None:
        return system_error(exc, syscall)
    return system_error(exc, syscall, address[0], address[1])


class Socket(TaskGroupUser, EventEmitter):
    """A TCP connection (``net.Socket``).

    Events: ``"connect"``, ``"ready"``, ``"data"`` (bytes, or str after
    :meth:`set_encoding`), ``"end"`` (the peer sent FIN), ``"finish"`` (our
    FIN is sent), ``"timeout"``, ``"error"`` (a :class:`NodeError`),
    ``"close"`` (``had_error``).

    As in Node, a socket with a task group (every server-side socket, and a
    client inside ``async with``) reads in the background from the start:
    into a buffer of up to :data:`HIGH_WATER_MARK` bytes while nobody
    consumes, then it stops and the stack's window fills, so the peer's
    writes wait (real backpressure).  ``"data"`` is emitted once the socket
    flows: after a ``"data"`` listener is added or :meth:`resume` is called
    (not after :meth:`pause`).  ``"end"`` comes once the peer's FIN is read
    and the buffer is empty, flowing or not; data left unread holds it back.
    Alternatively ``async for chunk in sock`` takes the chunks (without a task
    group it reads in the caller's task).

    An error with no ``"error"`` listener is raised: into the ``async for``
    loop, or, on a flowing socket, out of the background task (and so out of
    the task group), as an unhandled ``"error"`` event throws in Node.  A read
    error on a socket that does not flow destroys it and waits for the next
    ``async for`` step instead.

    With ``allow_half_open`` False (the default) the socket ends its side
    automatically once the peer's FIN arrived, so the connection closes.
    """

    def __init__(
        self,
        *,
        allow_half_open: bool = False,
        stack: Stack | None = None,
        task_group: TaskGroup | None = None,
    ) -> None:
        super().__init__()
        self.allow_half_open = allow_half_open
        self._stack = stack
        self._stream: TcpStream | None = None
        self._task_group = task_group
        self._own_group = None
        self._server: Server | None = None
        self.connecting = False
        self.destroyed = False
        self.bytes_read = 0
        self.bytes_written = 0
        self._readable = False
        self._writable = False
        self._ended = False
        # Node's readableFlowing: None until a "data" listener or resume()
        # (True) or pause() (False).
        self._flowing: bool | None = None
        # pause_on_connect: nothing is read until resume() or async for.
        self._read_stopped = False
        self._buffer: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._eof = False  # the stream gave the peer's FIN
        self._read_closed = False  # no more to read, and no "end" either
        self._tail_taken = False
        self._end_started = False
        self._end_done = anyio.Event()
        self._pumping = False
        self._direct = False  # a consumer without task group is reading itself
        self._iterating = False
        self._pending_error: NodeError | None = None
        self._changed = anyio.Event()
        self._connected = anyio.Event()
        self._closed = anyio.Event()
        self._had_error = False
        self._decoder: codecs.IncrementalDecoder | None = None
        self._timeout = 0.0
        self._last_activity = 0.0
        self._activity_count = 0
        self._activity: anyio.Event | None = None
        self._timer_running = False
        self._timer_scope: anyio.CancelScope | None = None
        self._no_delay = False
        self._keep_alive = False
        self._remote_cache: tuple[str, int] | None = None
        self._local_cache: tuple[str, int] | None = None
        self._remote_target: tuple[str, int] | None = None

    def __repr__(self) -> str:
        where = ""
        if self._local_cache and self._remote_cache:
            where = f" {self._local_cache[0]}:{self._local_cache[1]} -> "
            where += f"{self._remote_cache[0]}:{self._remote_cache[1]}"
        return f"<net.Socket{where} {self.ready_state}>"

    # -- attaching to a connection -----------------------------------------

    @classmethod
    def _from_stream(
        cls, stream: TcpStream, *, allow_half_open: bool, task_group: TaskGroup | None
    ) -> Socket:
        sock = cls(allow_half_open=allow_half_open, task_group=task_group)
        sock._attach(stream)
        return sock

    def _attach(self, stream: TcpStream) -> None:
        self._stream = stream
        self._local_cache = stream.local_address
        self._remote_cache = stream.remote_address
        self._readable = self._writable = True
        self.connecting = False
        self._touch()
        self._connected.set()

    async def connect(
        self,
        port: int,
        host: str = "localhost",
        *,
        local_address: str | None = None,
        local_port: int = 0,
        no_delay: bool = False,
        keep_alive: bool = False,
        keep_alive_initial_delay: float = 0.0,
    ) -> Socket:
        """Open the connection (``socket.connect``); emits ``"connect"`` and ``"ready"``.

        To bound the time it takes, wrap it in ``anyio.fail_after``; a stack
        that gives up itself raises ``TimeoutError`` (code ``ETIMEDOUT``).
        Raises the stack's error as a :class:`NodeError` with syscall
        ``"connect"`` (``"getaddrinfo"`` for a name that does not resolve),
        after emitting it as ``"error"`` when there is a listener.
        """
        if self._stream is not None or self.connecting:
            raise RuntimeError("this socket is already connected or connecting")
        if self.destroyed:
            raise RuntimeError("this socket was destroyed; make a new one")
        stack = self._stack or current_stack()
        self.connecting = True
        self._remote_target = (host, port)
        local = None
        if local_address is not None or local_port:
            local = (local_address or ("::" if ":" in host else "0.0.0.0"), local_port)
        try:
            stream = await stack.connect_tcp(host, port, local_address=local)
        except OSError as exc:
            self.connecting = False
            syscall = "getaddrinfo" if isinstance(exc, socket.gaierror) else "connect"
            if syscall == "getaddrinfo":
                error = system_error(exc, syscall, hostname=host)
            else:
                error = system_error(exc, syscall, host, port)
            await self._fail(error, raise_always=True)
            raise AssertionError("unreachable") from None  # _fail raised
        self._attach(stream)
        if no_delay:
            self.set_no_delay(True)
        if keep_alive:
            self.set_keep_alive(True, keep_alive_initial_delay)
        await self.emit("connect")
        await self.emit("ready")
        self._ensure_pump(required=bool(self._flowing))
        return self

    # -- async context manager ----------------------------------------------

    async def _end(self) -> None:
        await self.destroy()

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        self._ensure_pump()
        return self

    def _group(self, what: str) -> TaskGroup:
        if self._task_group is None:
            raise RuntimeError(
                f"{what} runs in the background and needs a task group: use "
                "'async with net.connect(...) as sock', or pass task_group="
            )
        return self._task_group

    # -- state ----------------------------------------------------------------

    @property
    def ready_state(self) -> ReadyState:
        if self.connecting:
            return "opening"
        if self._readable and self._writable:
            return "open"
        if self._readable:
            return "readOnly"
        if self._writable:
            return "writeOnly"
        return "closed"

    @property
    def pending(self) -> bool:
        """True until the connection is established (Node's ``socket.pending``)."""
        return self._stream is None

    @property
    def readable(self) -> bool:
        return self._readable

    @property
    def writable(self) -> bool:
        return self._writable

    @property
    def remote_address(self) -> str | None:
        return self._remote_cache[0] if self._remote_cache else None

    @property
    def remote_port(self) -> int | None:
        return self._remote_cache[1] if self._remote_cache else None

    @property
    def remote_family(self) -> Literal["IPv4", "IPv6"] | None:
        return _family_name(self._remote_cache[0]) if self._remote_cache else None

    @property
    def local_address(self) -> str | None:
        return self._local_cache[0] if self._local_cache else None

    @property
    def local_port(self) -> int | None:
        return self._local_cache[1] if self._local_cache else None

    @property
    def local_family(self) -> Literal["IPv4", "IPv6"] | None:
        return _family_name(self._local_cache[0]) if self._local_cache else None

    def address(self) -> AddressInfo | None:
        """The local end as Node's ``socket.address()`` gives it; ``None`` before connect."""
        if self._local_cache is None:
            return None
        host, port = self._local_cache
        return AddressInfo(host, _family_name(host), port)

    @property
    def timeout(self) -> float | None:
        """The idle timeout in seconds, or ``None`` when there is none."""
        return self._timeout or None

    @property
    def stream(self) -> TcpStream | None:
        """The stack's stream under this socket (``None`` before connect)."""
        return self._stream

    # -- options --------------------------------------------------------------

    def _raw_socket(self) -> Any:
        """The OS socket under the stream, if the stack has one (asyncio wraps it)."""
        if self._stream is None:
            return None
        raw = self._stream.extra(SocketAttribute.raw_socket, None)
        if raw is None or not hasattr(raw, "setsockopt") or raw.fileno() < 0:
            return None
        return raw

    def set_no_delay(self, no_delay: bool = True) -> Socket:
        """Disable (or enable) Nagle's algorithm: ``TCP_NODELAY`` on a real socket.

        Virtual stacks have no Nagle delay to disable; the setting is kept and
        reported by :attr:`no_delay`.
        """
        self._no_delay = bool(no_delay)
        raw = self._raw_socket()
        if raw is not None:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(self._no_delay))
        return self

    @property
    def no_delay(self) -> bool:
        return self._no_delay

    def set_keep_alive(self, enable: bool = False, initial_delay: float = 0.0) -> Socket:
        """Turn TCP keep-alive on or off (``SO_KEEPALIVE``, ``TCP_KEEPIDLE``).

        ``initial_delay`` is the idle time in seconds before the first probe;
        0 keeps the system default.  Stacks without a real socket keep the
        setting (see :attr:`keep_alive`) but send no probes.
        """
        self._keep_alive = bool(enable)
        raw = self._raw_socket()
        if raw is not None:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(self._keep_alive))
            if enable and initial_delay > 0 and hasattr(socket, "TCP_KEEPIDLE"):
                seconds = max(1, math.ceil(initial_delay))
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, seconds)
        return self

    @property
    def keep_alive(self) -> bool:
        return self._keep_alive

    def set_encoding(self, encoding: str | None = None) -> Socket:
        """Emit ``"data"`` (and iterate) as ``str`` decoded with ``encoding``; ``None`` for bytes.

        A character split across two reads is decoded whole, once complete.
        """
        self._decoder = None if encoding is None else codecs.getincrementaldecoder(encoding)()
        return self

    def set_timeout(self, timeout: float, callback: Callable[[], Any] | None = None) -> Socket:
        """Emit ``"timeout"`` after ``timeout`` idle seconds; 0 turns it off.

        As in Node the socket stays open: the listener decides what to do.
        ``callback`` is added as a ``"timeout"`` listener (once).  The timer
        runs in the socket's task group.
        """
        if timeout < 0 or math.isnan(timeout):
            raise ValueError(f"timeout must be >= 0 seconds, got {timeout}")
        self._timeout = float(timeout)
        if callback is not None:
            self.once("timeout", callback)
        self._touch()
        if self._timeout and not self._timer_running:
            self._group("set_timeout()").start_soon(self._timer)
        elif not self._timeout and self._timer_scope is not None:
            self._timer_scope.cancel()
        return self

    def _touch(self) -> None:
        """Activity (connect, read, write, set_timeout): a new idle period starts."""
        with contextlib.suppress(RuntimeError):
            self._last_activity = anyio.current_time()
        self._activity_count += 1
        activity, self._activity = self._activity, None
        if activity is not None:
            activity.set()

    async def _timer(self) -> None:
        self._timer_running = True
        fired_for = -1
        try:
            with anyio.CancelScope() as scope:
                self._timer_scope = scope
                while self._timeout and not self.destroyed:
                    if fired_for == self._activity_count:
                        # Fired once for this idle period: the next starts with activity.
                        self._activity = anyio.Event()
                        await self._activity.wait()
                        continue
                    deadline = self._last_activity + self._timeout
                    delay = deadline - anyio.current_time()
                    if delay > 0:
                        await anyio.sleep(delay)
                        continue
                    fired_for = self._activity_count
                    await self.emit("timeout")
        finally:
            self._timer_running = False
            self._timer_scope = None

    # -- reading --------------------------------------------------------------

    def _listeners_changed(self, event: str) -> None:
        if event == "data" and self.listener_count("data") and self._flowing is not False:
            # As in Node, a "data" listener starts the flow unless pause() said no.
            self._flowing = True
            self._notify()
            self._ensure_pump(required=True)

    def pause(self) -> Socket:
        """Stop emitting ``"data"``.

        As in Node the socket still reads until :data:`HIGH_WATER_MARK` bytes
        wait unread; then the stack's window fills and the peer's writes wait.
        """
        self._flowing = False
        self._notify()
        return self

    def resume(self) -> Socket:
        """Emit ``"data"`` (flowing mode), also with no ``"data"`` listener."""
        if self._iterating:
            raise RuntimeError("this socket is read with 'async for'; it cannot also flow")
        self._flowing = True
        self._read_stopped = False
        self._notify()
        self._ensure_pump(required=True)
        return self

    @property
    def is_paused(self) -> bool:
        """True after :meth:`pause` (or ``pause_on_connect``) until :meth:`resume`, as in Node."""
        return self._flowing is False

    def _notify(self) -> None:
        """Wake whoever waits for the buffer or the flowing state to change."""
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def _ensure_pump(self, *, required: bool = False) -> None:
        """Start the background reader if it can run (see the class documentation)."""
        if self._pumping or self._direct or self._stream is None or self.destroyed:
            return
        if self._eof or self._read_closed:
            return
        if self._task_group is None:
            if required:
                self._group("reading in flowing mode")
            return
        self._pumping = True
        self._task_group.start_soon(self._pump)

    async def _pump(self) -> None:
        """Read into the buffer, emit ``"data"`` while flowing, and ``"end"`` at the end."""
        try:
            # Whoever started the pump (the task emitting "connection", the
            # caller of connect()) adds its listeners before the first event.
            await anyio.lowlevel.checkpoint()
            while not self.destroyed and not self._read_closed:
                if self._flowing and not self._iterating:
                    chunk = self._take()
                    if chunk is not None:
                        await self.emit("data", chunk)
                        continue
                if self._eof:
                    if not self._buffer:
                        await self._finish_reading()
                        return
                elif not self._read_stopped and (self._flowing or self._buffered < HIGH_WATER_MARK):
                    await self._fill()
                    continue
                await self._changed.wait()
        finally:
            self._pumping = False

    async def _fill(self) -> None:
        """Read one chunk from the stream into the buffer (or note the end, or fail)."""
        stream = self._stream
        assert stream is not None
        try:
            data = await stream.receive(READ_SIZE)
        except anyio.EndOfStream:
            self._eof = True
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._read_closed = True
        except OSError as exc:
            self._read_closed = True
            if not self.destroyed:
                await self._read_failed(_wrap(exc, "read", self._remote_cache))
        else:
            self.bytes_read += len(data)
            self._touch()
            self._buffer.append(data)
            self._buffered += len(data)
        self._notify()

    async def _read_failed(self, error: NodeError) -> None:
        if self.listener_count("error") or (self._flowing and not self._iterating):
            # Emitted, or raised out of the task group when nobody listens.
            await self._fail(error)
            return
        # Nobody reads in flowing mode: keep it for the next async for step.
        self._pending_error = error
        self._had_error = True
        await self._close(had_error=True, reset=False)

    def _take(self) -> bytes | str | None:
        """The next buffered chunk, decoded when an encoding is set; ``None`` if none."""
        taken = False
        try:
            while self._buffer:
                data = self._buffer.popleft()
                self._buffered -= len(data)
                taken = True
                if self._decoder is None:
                    return data
                text = self._decoder.decode(data)
                if text:
                    return text
            if self._eof and self._decoder is not None and not self._tail_taken:
                self._tail_taken = True
                tail = self._decoder.decode(b"", final=True)
                if tail:
                    return tail
            return None
        finally:
            if taken:
                self._notify()

    def __aiter__(self) -> Socket:
        return self

    async def __anext__(self) -> bytes | str:
        """The next chunk; ends at the peer's FIN (after ``"end"``) or on close."""
        if self._flowing:
            raise RuntimeError(
                "this socket is flowing (a 'data' listener or resume()); no async for"
            )
        if self._stream is None and not self.destroyed:
            await self._connected.wait()
        self._iterating = True
        try:
            while True:
                if self._pending_error is not None:
                    error, self._pending_error = self._pending_error, None
                    raise error
                chunk = self._take()
                if chunk is not None:
                    return chunk
                if self._end_started or (self._eof and not self.destroyed):
                    # Ends after "end" (and the close it may bring) was emitted.
                    await self._finish_reading()
                    raise StopAsyncIteration
                if self.destroyed:
                    # After the "error" and "close" the destroying task emits.
                    await self._closed.wait()
                    raise StopAsyncIteration
                if self._read_closed:
                    raise StopAsyncIteration
                self._ensure_pump()
                if self._pumping:
                    # Iterating is reading, also on a pause_on_connect socket.
                    if self._read_stopped:
                        self._read_stopped = False
                        self._notify()
                    await self._changed.wait()
                    continue
                # No task group: read in this task.
                self._direct = True
                try:
                    await self._fill()
                finally:
                    self._direct = False
        finally:
            self._iterating = False

    async def _finish_reading(self) -> None:
        """Emit ``"end"`` once (whoever sees the end first), or wait until it was."""
        if self._end_started:
            await self._end_done.wait()
            return
        self._end_started = True
        try:
            await self._end_received()
        finally:
            self._end_done.set()

    async def _end_received(self) -> None:
        self._readable = False
        await self.emit("end")
        if not self.allow_half_open and self._writable:
            await self.end()
        await self._maybe_finish()

    # -- writing --------------------------------------------------------------

    async def write(
        self, data: bytes | bytearray | memoryview | str, encoding: str = "utf-8"
    ) -> None:
        """Send ``data``; returns once the stack accepted all of it.

        Returning is Node's write callback; raising is the callback's error.
        Before the connection is up it waits for it, as Node buffers early
        writes.  Refused writes fail as in Node, as ``BrokenPipeError``:

        * after :meth:`end`: ``ERR_STREAM_WRITE_AFTER_END``, which is also
          emitted as ``"error"`` and destroys the socket;
        * after the peer ended and the socket ended itself (not
          ``allow_half_open``): ``EPIPE``, "ended by the other party";
        * after :meth:`destroy`: ``ERR_STREAM_DESTROYED``, raised only.

        A failed send is emitted as ``"error"`` (when listened) and raised.
        """
        payload = data.encode(encoding) if isinstance(data, str) else bytes(data)
        if self.connecting:
            await self._connected.wait()
        refused = self._write_refused()
        if refused is not None:
            error, emit = refused
            if emit and not self.destroyed:
                await self._fail(error, raise_always=True)
            raise error
        assert self._stream is not None
        # In pieces, so that a stack that takes any one send whole still makes a
        # big write wait for the peer's window, as a kernel's send buffer does.
        for start in range(0, len(payload), WRITE_SIZE):
            piece = payload[start : start + WRITE_SIZE]
            try:
                await self._stream.send(piece)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                raise _wrap(
                    OSError(errno.EPIPE, "socket closed"), "write", self._remote_cache
                ) from None
            except OSError as exc:
                await self._fail(_wrap(exc, "write", self._remote_cache), raise_always=True)
            self.bytes_written += len(piece)
            self._touch()

    def _write_refused(self) -> tuple[NodeError, bool] | None:
        """Why a write cannot happen now, and whether Node emits it as "error"."""
        if self._ended and self._end_started and not self.allow_half_open:
            # Node's writeAfterFIN: the peer ended and so did this socket.
            message = "This socket has been ended by the other party"
            return node_error(errno.EPIPE, "EPIPE", message), True
        if self._ended:
            error = node_error(errno.EPIPE, "ERR_STREAM_WRITE_AFTER_END", "write after end")
            return error, True
        if self.destroyed:
            message = "Cannot call write after a stream was destroyed"
            return node_error(errno.EPIPE, "ERR_STREAM_DESTROYED", message), False
        if self._stream is None:
            return node_error(errno.EPIPE, "ERR_SOCKET_CLOSED", "Socket is closed"), False
        return None

    async def end(self, data: bytes | str | None = None, encoding: str = "utf-8") -> Socket:
        """Write ``data`` if given, then half-close (FIN) and emit ``"finish"``; idempotent.

        Returning is Node's ``end`` callback.  The socket closes once the
        peer has ended too; with ``allow_half_open`` False that happens as
        soon as its FIN is read.
        """
        if data is not None:
            await self.write(data, encoding)
        if self.connecting:
            await self._connected.wait()
        if self._ended or self._stream is None or self.destroyed:
            return self
        self._ended = True
        self._writable = False
        try:
            await self._stream.send_eof()
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass
        except OSError as exc:
            await self._fail(_wrap(exc, "shutdown", self._remote_cache))
            return self
        if not self.destroyed:
            await self.emit("finish")
        await self._maybe_finish()
        return self

    async def _maybe_finish(self) -> None:
        if not self._readable and not self._writable and not self.destroyed:
            await self._close(had_error=False, reset=False)

    # -- closing --------------------------------------------------------------

    async def destroy(self, error: BaseException | None = None) -> Socket:
        """Close both directions now; emit ``"error"`` (if given) and ``"close"``.

        The stream closes as Linux's ``close()`` does: FIN, or RST when
        unread data is waiting.  Idempotent.
        """
        if self.destroyed:
            return self
        if error is not None:
            self._had_error = True
            await self._close(had_error=True, reset=False, error=error)
        else:
            await self._close(had_error=self._had_error, reset=False)
        return self

    async def reset_and_destroy(self) -> Socket:
        """Close with a TCP RST: the peer's next operation gets ``ECONNRESET``."""
        if self._stream is None:
            raise _wrap(
                OSError(errno.ENOTCONN, "resetAndDestroy() needs a connected socket"),
                "reset",
                None,
            )
        if not self.destroyed:
            await self._close(had_error=self._had_error, reset=True)
        return self

    async def _close(
        self, *, had_error: bool, reset: bool, error: BaseException | None = None
    ) -> None:
        self.destroyed = True
        self._readable = self._writable = False
        self._notify()
        self._connected.set()
        stream = self._stream
        if stream is not None:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(OSError, anyio.BrokenResourceError):
                    if reset:
                        await stream.abort()
                    else:
                        await stream.aclose()
        if self._timer_scope is not None:
            self._timer_scope.cancel()
        if self._server is not None:
            self._server._forget(self)
        if error is not None and self.listener_count("error"):
            await self.emit("error", error)
        self._closed.set()
        await self.emit("close", had_error)

    async def _fail(self, error: NodeError, *, raise_always: bool = False) -> None:
        """Destroy with ``error``; raise it when nobody listens for ``"error"``."""
        listened = bool(self.listener_count("error"))
        self._had_error = True
        if not self.destroyed:
            await self._close(had_error=True, reset=False, error=error)
        if raise_always or not listened:
            raise error

    async def wait_closed(self) -> None:
        """Wait until ``"close"`` has been emitted."""
        await self._closed.wait()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()


class _Connecting:
    """What :func:`connect` returns: await it, or use it with ``async with``."""

    def __init__(self, socket_: Socket, connect: Callable[[Socket], Awaitable[Socket]]) -> None:
        self._socket = socket_
        self._connect = connect

    def __await__(self) -> Generator[Any, None, Socket]:
        return self._connect(self._socket).__await__()

    async def __aenter__(self) -> Socket:
        await self._socket.__aenter__()
        try:
            await self._connect(self._socket)
        except BaseException as exc:
            await self._socket.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self._socket

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        return await self._socket.__aexit__(kind, value, traceback)


def connect(
    port: int,
    host: str = "localhost",
    *,
    local_address: str | None = None,
    local_port: int = 0,
    timeout: float | None = None,
    allow_half_open: bool = False,
    no_delay: bool = False,
    keep_alive: bool = False,
    keep_alive_initial_delay: float = 0.0,
    stack: Stack | None = None,
    task_group: TaskGroup | None = None,
) -> _Connecting:
    """Connect to ``host:port`` (``net.connect``); await it or use ``async with``.

    ``sock = await net.connect(80, "example.com")`` gives a connected
    :class:`Socket` for ``await`` / ``async for`` use;
    ``async with net.connect(...) as sock`` also gives it a task group for
    events and timers and destroys it on exit.  ``timeout`` is Node's: the
    idle timeout of :meth:`Socket.set_timeout` (it needs the task group).
    Errors as :meth:`Socket.connect`.
    """
    sock = Socket(allow_half_open=allow_half_open, stack=stack, task_group=task_group)

    async def run(target: Socket) -> Socket:
        if timeout is not None:
            # Node's "timeout" option is the idle timeout, armed before connecting.
            target.set_timeout(timeout)
        return await target.connect(
            port,
            host,
            local_address=local_address,
            local_port=local_port,
            no_delay=no_delay,
            keep_alive=keep_alive,
            keep_alive_initial_delay=keep_alive_initial_delay,
        )

    return _Connecting(sock, run)


create_connection = connect


# --- servers -------------------------------------------------------------


class Server(EventEmitter):
    """A TCP server (``net.Server``).

    Events: ``"listening"``, ``"connection"`` (a :class:`Socket`), ``"drop"``
    (a dict with the local and remote address of a connection refused by
    :attr:`max_connections`), ``"error"``, ``"close"``.

    Use it as an async context manager, which provides the task group that
    accepts and serves connections.  A ``"connection"`` listener runs in its
    own task for each connection; with no such listener connections are
    queued for ``async for sock in server`` (the queue holds ``backlog``
    connections, then accepting waits, so clients wait in the listen queue).
    """

    def __init__(
        self,
        connection_listener: Callable[[Socket], Any] | None = None,
        *,
        allow_half_open: bool = False,
        pause_on_connect: bool = False,
        no_delay: bool = False,
        keep_alive: bool = False,
        keep_alive_initial_delay: float = 0.0,
        stack: Stack | None = None,
    ) -> None:
        super().__init__()
        self.allow_half_open = allow_half_open
        self.pause_on_connect = pause_on_connect
        self.no_delay = no_delay
        self.keep_alive = keep_alive
        self.keep_alive_initial_delay = keep_alive_initial_delay
        self.max_connections: int | None = None
        self._stack = stack
        self._listener: TcpListener | None = None
        self._group: TaskGroup | None = None
        self._connections: set[Socket] = set()
        # Accepted, but their "connection" listeners have not run yet.
        self._announcing: set[Socket] = set()
        self._idle = anyio.Event()
        self._idle.set()
        self._closed_event = anyio.Event()
        self._queue_send: MemoryObjectSendStream[Socket] | None = None
        self._queue_receive: MemoryObjectReceiveStream[Socket] | None = None
        if connection_listener is not None:
            self.on("connection", connection_listener)

    def __repr__(self) -> str:
        where = "not listening"
        if self._listener is not None:
            host, port = self._listener.local_address
            where = f"listening on {host}:{port}"
        return f"<net.Server {where}, {len(self._connections)} connections>"

    async def __aenter__(self) -> Server:
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group = group
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        group, self._group = self._group, None
        with anyio.CancelScope(shield=True):
            await self._stop_listening()
            for sock in list(self._connections):
                await sock.destroy()
            if self._queue_receive is not None:
                self._queue_receive.close()
        if group is None:
            return None
        group.cancel_scope.cancel()
        return await group.__aexit__(kind, value, traceback)

    @property
    def listening(self) -> bool:
        return self._listener is not None

    async def listen(
        self, port: int = 0, host: str | None = None, *, backlog: int = DEFAULT_BACKLOG
    ) -> Server:
        """Listen on ``host:port`` and start accepting; emits ``"listening"``.

        ``host`` ``None`` listens on every address of both families, as Node
        does.  Raises ``OSError`` (``EADDRINUSE``...) as a :class:`NodeError`
        with syscall ``"listen"``.
        """
        if self._group is None:
            raise RuntimeError("a server accepts in a task group: use 'async with server:'")
        if self._listener is not None:
            raise RuntimeError("the server is already listening")
        stack = self._stack or current_stack()
        try:
            self._listener = await stack.listen_tcp(host, port, backlog=backlog)
        except OSError as exc:
            error = system_error(exc, "listen", host or "::", port)
            if self.listener_count("error"):
                await self.emit("error", error)
            raise error from exc
        self._closed_event = anyio.Event()
        if self._queue_receive is not None:
            self._queue_receive.close()
        send, receive = anyio.create_memory_object_stream[Socket](max(1, backlog))
        self._queue_send, self._queue_receive = send, receive
        self._group.start_soon(self._accept_loop, self._listener, self._group)
        await self.emit("listening")
        return self

    def address(self) -> AddressInfo | None:
        """The bound address (with the real port when 0 was asked); ``None`` if not listening."""
        if self._listener is None:
            return None
        host, port = self._listener.local_address
        return AddressInfo(host, _family_name(host), port)

    def get_connections(self) -> int:
        """How many connections are open (Node passes it to a callback).

        As in Node, a connection counts from when its ``"connection"`` listeners
        are called.
        """
        return len(self._connections) - len(self._announcing)

    @property
    def connections(self) -> list[Socket]:
        return list(self._connections)

    async def _accept_loop(self, listener: TcpListener, group: TaskGroup) -> None:
        while True:
            try:
                stream = await listener.accept()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            except OSError as exc:
                error = system_error(exc, "accept")
                if self.listener_count("error"):
                    await self.emit("error", error)
                    continue
                raise error from exc
            if self.max_connections is not None and len(self._connections) >= self.max_connections:
                info = {
                    "local_address": stream.local_address[0],
                    "local_port": stream.local_address[1],
                    "remote_address": stream.remote_address[0],
                    "remote_port": stream.remote_address[1],
                    "remote_family": _family_name(stream.remote_address[0]),
                }
                await stream.aclose()
                await self.emit("drop", info)
                continue
            sock = Socket._from_stream(
                stream, allow_half_open=self.allow_half_open, task_group=group
            )
            sock._server = self
            self._connections.add(sock)
            self._idle = anyio.Event()
            if self.no_delay:
                sock.set_no_delay(True)
            if self.keep_alive:
                sock.set_keep_alive(True, self.keep_alive_initial_delay)
            if self.pause_on_connect:
                # Node stops reading at once: no data, no "end" until resume().
                sock._flowing = False
                sock._read_stopped = True
            listened = bool(self.listener_count("connection"))
            if listened:
                self._announcing.add(sock)
                group.start_soon(self._announce, sock)
            # Read in the background as Node does, so the peer's FIN ends and
            # closes the connection even when nobody reads it.
            sock._ensure_pump()
            if not listened and self._queue_send is not None:
                try:
                    await self._queue_send.send(sock)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    # The server closed while this connection waited for a taker.
                    await sock.destroy()
                    return

    async def _announce(self, sock: Socket) -> None:
        self._announcing.discard(sock)
        await self.emit("connection", sock)

    def _forget(self, sock: Socket) -> None:
        self._connections.discard(sock)
        self._announcing.discard(sock)
        if not self._connections:
            self._idle.set()

    def __aiter__(self) -> Server:
        return self

    async def __anext__(self) -> Socket:
        """The next connection, when no ``"connection"`` listener takes it; ends on close."""
        if self._queue_receive is None:
            raise RuntimeError("call listen() before iterating over the server")
        try:
            return await self._queue_receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def _stop_listening(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.aclose()
        if self._queue_send is not None:
            await self._queue_send.aclose()

    async def close(self) -> None:
        """Stop accepting, wait until every connection has closed, emit ``"close"``.

        As in Node, open connections are not closed by this: end or destroy
        them (or leave the ``async with`` block, which destroys them).
        Raises ``OSError`` (``ENOTCONN``) with Node's code
        ``ERR_SERVER_NOT_RUNNING`` when the server is not listening.
        """
        if self._listener is None:
            raise node_error(errno.ENOTCONN, "ERR_SERVER_NOT_RUNNING", "Server is not running.")
        await self._stop_listening()
        await self._idle.wait()
        self._closed_event.set()
        await self.emit("close")

    async def wait_closed(self) -> None:
        await self._closed_event.wait()


def create_server(
    connection_listener: Callable[[Socket], Any] | None = None,
    *,
    allow_half_open: bool = False,
    pause_on_connect: bool = False,
    no_delay: bool = False,
    keep_alive: bool = False,
    keep_alive_initial_delay: float = 0.0,
    stack: Stack | None = None,
) -> Server:
    """A new :class:`Server` (``net.createServer``); use it with ``async with``."""
    return Server(
        connection_listener,
        allow_half_open=allow_half_open,
        pause_on_connect=pause_on_connect,
        no_delay=no_delay,
        keep_alive=keep_alive,
        keep_alive_initial_delay=keep_alive_initial_delay,
        stack=stack,
    )
