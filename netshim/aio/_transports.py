"""asyncio transports over a Stack's streams and datagram sockets, with no file descriptor.

asyncio's own transports read and write a socket when the selector says it
is ready.  These instead run one task that receives from the stack and one
that sends to it, so they work on any event loop, Pyodide's WebLoop included,
and never need a descriptor, a thread or a socketpair.

They keep the transport contract protocols rely on:

* ``connection_made`` before anything else, ``connection_lost`` exactly once
  and last (``None`` after a clean close, the error after a failure);
* ``pause_reading()`` stops ``data_received`` until ``resume_reading()``: the
  reading task stops asking the stack, so the stack's window fills and the
  peer's sends wait, which is TCP flow control end to end;
* ``write()`` never blocks: data waits in a buffer, and the protocol's
  ``pause_writing()`` / ``resume_writing()`` follow the high and low water
  marks, as ``StreamWriter.drain()`` expects;
* ``write_eof()`` half-closes once the buffer is sent; ``close()`` sends what
  is buffered, then closes; ``abort()`` drops the buffer and closes at once;
* ``BufferedProtocol`` is fed through ``get_buffer`` / ``buffer_updated``, so
  asyncio's SSL protocol runs on top for ``ssl=``.

A stream whose data arrives by itself (WispStack over JavaScript's
WebSocket in Pyodide) may offer a shorter way, which the stream transport
takes when it is there: ``set_readable_callback(callback)`` (returning True
when arrivals need no reader), ``receive_nowait(max_bytes)`` (raising
``anyio.WouldBlock``) and ``send_nowait(data)`` (returning whether it sent).
Received data then reaches the protocol inside the arrival itself, and a
``write()`` with nothing queued before it goes out inside the call, instead
of each waking a task: in Pyodide every wake-up is a JavaScript task and a
call into Python, and a redis-py round trip took four such hops here.
Anything that cannot go at once (no credit, a full WebSocket buffer, data
already queued) takes the task path as before, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import socket
import sys
from collections import deque
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any

import anyio

from ..stack import Address, TcpStream, UdpSocket

__all__ = [
    "DEFAULT_HIGH_WATER",
    "DEFAULT_LOW_WATER",
    "StackDatagramTransport",
    "StackSocketView",
    "StackStreamTransport",
    "inside_stack",
]

log = logging.getLogger("netshim.aio")

# asyncio's selector transports use the same marks (64 KiB high, a quarter
# of it low), so StreamWriter.drain() behaves as it does on real sockets.
DEFAULT_HIGH_WATER = 64 * 1024
DEFAULT_LOW_WATER = DEFAULT_HIGH_WATER // 4
# One receive asks the stack for at most this much: asyncio's selector
# transports read 256 KiB at a time.
MAX_RECEIVE = 256 * 1024
# What abort() still lets the stack send, standing for the kernel's socket
# send buffer (net.core.wmem_default) that keeps sending after close(2).
KERNEL_SEND_BUFFER = 212992
# One send hands the stack at most this much, so a slow peer's window is
# filled in steps and the write buffer size the protocol sees stays honest.
MAX_SEND = 256 * 1024

#: True in tasks that work for a stack: their own network calls (a tunnel
#: reaching its gateway over the real network) must not come back into the
#: hooks, or a tunnel would try to run through itself.
inside_stack: ContextVar[bool] = ContextVar("netshim_inside_stack", default=False)


def _spawn(
    loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, None], name: str
) -> asyncio.Task[None]:
    context = contextvars.copy_context()
    context.run(inside_stack.set, True)
    return loop.create_task(coroutine, name=name, context=context)


class StackSocketView:
    """What ``transport.get_extra_info("socket")`` gives: a socket's read-only face.

    There is no descriptor (``fileno()`` is -1); family, type and the virtual
    addresses are the stack's.  Options are accepted and ignored, since the
    stack has no per-socket knobs for them (anyio sets ``TCP_NODELAY``).
    """

    def __init__(
        self,
        family: socket.AddressFamily,
        kind: socket.SocketKind,
        local: Address | None,
        remote: Address | None = None,
    ) -> None:
        self.family = family
        self.type = kind
        self.proto = socket.IPPROTO_TCP if kind == socket.SOCK_STREAM else socket.IPPROTO_UDP
        self._local = local
        self._remote = remote
        #: Whether the stream behind ended (EOF, reset, closed): what a pool's
        #: "did the server close this idle connection?" check asks here, since
        #: select cannot (``netshim.install`` answers httpcore's with it).
        self.ended = False

    def fileno(self) -> int:
        return -1

    def getsockname(self) -> Any:
        return self._format(self._local or ("0.0.0.0", 0))

    def getpeername(self) -> Any:
        if self._remote is None:
            raise OSError(107, "Transport endpoint is not connected")
        return self._format(self._remote)

    def _format(self, address: Address) -> Any:
        if self.family == socket.AF_INET6:
            return (address[0], address[1], 0, 0)
        return (address[0], address[1])

    def setsockopt(self, *args: Any) -> None:
        pass

    def getsockopt(self, level: int, option: int, buflen: int = 0) -> Any:
        return b"\0" * buflen if buflen else 0

    def setblocking(self, flag: bool) -> None:
        pass

    def __repr__(self) -> str:
        return (
            f"<StackSocketView family={self.family!r} type={self.type!r}"
            f" laddr={self._local} raddr={self._remote}>"
        )


def family_of(address: Address) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address[0] else socket.AF_INET


def feed_protocol(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Deliver ``data`` to a Protocol or, through its buffer, to a BufferedProtocol."""
    if isinstance(protocol, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buffer = memoryview(protocol.get_buffer(len(view))).cast("B")
            if not len(buffer):
                raise RuntimeError("get_buffer() returned an empty buffer")
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            protocol.buffer_updated(size)
            view = view[size:]
    else:
        protocol.data_received(data)  # type: ignore[attr-defined]


def _web_loop_class() -> type | None:
    """Pyodide's ``WebLoop`` where it is loaded, else None."""
    if "pyodide" not in sys.modules and sys.platform != "emscripten":
        return None
    try:
        from pyodide.webloop import WebLoop  # type: ignore[import-not-found]
    except ImportError:
        return None
    web_loop: type = WebLoop
    return web_loop


class _DirectFutures:
    """A loop as a ``StreamReader`` sees it: its waits are plain ``asyncio.Future`` objects.

    Pyodide's ``WebLoop.create_future`` adds a done callback to every future
    (its count of work in progress), and each callback is one more
    JavaScript task and call into Python when the future is set: a
    ``StreamReader`` waiting for a reply woke through two hops instead of
    one.  The task that waits is counted by the loop all the same.
    Everything else is the loop's own.
    """

    __slots__ = ("_loop",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self._loop)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


def _let_readers_wait_directly(
    loop: asyncio.AbstractEventLoop, protocol: asyncio.BaseProtocol
) -> None:
    """In Pyodide, let ``protocol``'s ``StreamReader`` (if any) wait with one hop, not two."""
    web_loop = _web_loop_class()
    if web_loop is None or not isinstance(loop, web_loop):
        return
    # asyncio's SSL protocol carries the application's protocol inside.
    application = getattr(protocol, "_app_protocol", protocol)
    if not isinstance(application, asyncio.StreamReaderProtocol):
        return
    reader = getattr(application, "_stream_reader", None)
    if isinstance(reader, asyncio.StreamReader) and getattr(reader, "_loop", None) is loop:
        reader._loop = _DirectFutures(loop)  # type: ignore[attr-defined]


class _FlowControl:
    """Write buffer accounting and the protocol's pause/resume_writing calls."""

    _protocol: asyncio.BaseProtocol
    _loop: asyncio.AbstractEventLoop

    def _init_flow(self) -> None:
        self._high_water = DEFAULT_HIGH_WATER
        self._low_water = DEFAULT_LOW_WATER
        self._protocol_paused = False

    def get_write_buffer_size(self) -> int:
        raise NotImplementedError

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low_water, self._high_water)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high_water, self._low_water = high, low
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self) -> None:
        if self._protocol_paused or self.get_write_buffer_size() <= self._high_water:
            return
        self._protocol_paused = True
        try:
            self._protocol.pause_writing()
        except Exception as exc:
            self._report("protocol.pause_writing() failed", exc)

    def _maybe_resume_protocol(self) -> None:
        if not self._protocol_paused or self.get_write_buffer_size() > self._low_water:
            return
        self._protocol_paused = False
        try:
            self._protocol.resume_writing()
        except Exception as exc:
            self._report("protocol.resume_writing() failed", exc)

    def _report(self, message: str, exc: BaseException) -> None:
        self._loop.call_exception_handler(
            {"message": message, "exception": exc, "transport": self, "protocol": self._protocol}
        )


class StackStreamTransport(_FlowControl, asyncio.Transport):
    """An ``asyncio.Transport`` over a :class:`~netshim.stack.TcpStream`.

    Construct it with the stream and the protocol; it calls
    ``protocol.connection_made(self)`` soon after and then starts reading.
    ``waiter``, if given, gets its result once ``connection_made`` ran.
    ``on_lost`` is called once the connection is gone (servers count their
    connections with it).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        stream: TcpStream,
        protocol: asyncio.BaseProtocol,
        *,
        waiter: asyncio.Future[None] | None = None,
        on_lost: Callable[[StackStreamTransport], None] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        local, remote = stream.local_address, stream.remote_address
        family = family_of(local)
        view = StackSocketView(family, socket.SOCK_STREAM, local, remote)
        info = {
            "socket": view,
            "sockname": view.getsockname(),
            "peername": view.getpeername(),
            "netshim_stream": stream,
        }
        info.update(extra or {})
        super().__init__(info)
        self._init_flow()
        self._loop = loop
        self._stream = stream
        self._protocol = protocol
        self._on_lost = on_lost
        self._view = view
        self._buffer = bytearray()
        self._in_flight = 0
        self._reading_paused = False
        self._resume_reading: asyncio.Future[None] | None = None
        self._wake_writer: asyncio.Future[None] | None = None
        self._eof_requested = False
        self._closing = False
        self._lost = False
        self._held = 0
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._write_failures = 0
        # The stream's shorter ways, where it has them (see the module's
        # documentation); None where it has not.
        self._receive_nowait: Callable[[int], bytes] | None = None
        self._send_nowait: Callable[[bytes], bool] | None = getattr(stream, "send_nowait", None)
        self._feeding = False
        _let_readers_wait_directly(loop, protocol)
        loop.call_soon(self._start, waiter)

    def __repr__(self) -> str:
        state = "closed" if self._lost else "closing" if self._closing else "open"
        return (
            f"<StackStreamTransport {state} local={self._stream.local_address}"
            f" remote={self._stream.remote_address}>"
        )

    def _start(self, waiter: asyncio.Future[None] | None) -> None:
        if self._lost:
            return
        self._protocol.connection_made(self)
        if not self._closing:
            set_callback = getattr(self._stream, "set_readable_callback", None)
            if set_callback is not None and set_callback(self._on_readable):
                self._receive_nowait = self._stream.receive_nowait  # type: ignore[attr-defined]
                # What arrived before connection_made.
                self._on_readable()
            else:
                if set_callback is not None:
                    set_callback(None)
                self._reader = _spawn(self._loop, self._read_loop(), "netshim transport reader")
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- reading -------------------------------------------------------------

    def _on_readable(self) -> None:
        """The stream has data, its end or an error: hand it on now (pushed streams)."""
        receive = self._receive_nowait
        if receive is None or self._feeding or self._closing:
            return
        if self._reading_paused:
            self._held = 1  # left unread: closing now resets, as close(2) does
            return
        # Not re-entered from the protocol (a write answered at once, say):
        # the outer call goes on reading.
        self._feeding = True
        try:
            while not self._reading_paused and not self._closing:
                try:
                    data = receive(MAX_RECEIVE)
                except anyio.WouldBlock:
                    self._held = 0
                    return
                except anyio.EndOfStream:
                    self._held = 0
                    self._stop_pushed()
                    self._eof_received()
                    return
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    self._stop_pushed()
                    return
                except OSError as exc:
                    self._stop_pushed()
                    self._fatal(exc)
                    return
                try:
                    feed_protocol(self._protocol, data)
                except Exception as exc:
                    self._report("protocol failed to take received data", exc)
                    self.abort()
                    return
            if self._reading_paused:
                self._held = 1
        finally:
            self._feeding = False

    def _stop_pushed(self) -> None:
        """No more arrivals to hand on: the end, an error, or closing."""
        self._receive_nowait = None
        set_callback = getattr(self._stream, "set_readable_callback", None)
        if set_callback is not None:
            set_callback(None)

    async def _read_loop(self) -> None:
        try:
            await self._read_until_done()
        finally:
            self._view.ended = True

    async def _read_until_done(self) -> None:
        while True:
            try:
                data = await self._stream.receive(MAX_RECEIVE)
            except anyio.EndOfStream:
                self._eof_received()
                return
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            except OSError as exc:
                self._fatal(exc)
                return
            # Held, not yet read: closing now must reset, as close(2) does
            # with data left in the receive buffer.
            self._held = len(data)
            while self._reading_paused and not self._closing:
                self._resume_reading = self._loop.create_future()
                await self._resume_reading
            if self._closing:
                return
            self._held = 0
            try:
                feed_protocol(self._protocol, data)
            except Exception as exc:
                self._report("protocol failed to take received data", exc)
                self.abort()
                return

    def _eof_received(self) -> None:
        if self._closing:
            return
        try:
            keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
        except Exception as exc:
            self._report("protocol.eof_received() failed", exc)
            self.abort()
            return
        if not keep_open:
            self.close()

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._closing

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        was_paused, self._reading_paused = self._reading_paused, False
        waiter, self._resume_reading = self._resume_reading, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if was_paused and self._receive_nowait is not None and not self._closing:
            # Soon, not inside the protocol's call (StreamReader resumes from read()).
            self._loop.call_soon(self._on_readable)

    # -- writing -------------------------------------------------------------

    def get_write_buffer_size(self) -> int:
        return len(self._buffer) + self._in_flight

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__}")
        if self._eof_requested:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data:
            return
        if self._lost or self._closing:
            # As asyncio's transports do: writes after close are dropped, with
            # a warning once they keep coming.
            self._write_failures += 1
            if self._write_failures == 5:
                log.warning("socket.send() raised exception.")
            return
        if (
            self._send_nowait is not None
            and not self._buffer
            and not self._in_flight
            and len(data) <= MAX_SEND
        ):
            try:
                if self._send_nowait(bytes(data)):
                    return
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            except OSError as exc:
                self._fatal(exc)
                return
        self._buffer.extend(data)
        self._kick_writer()
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._eof_requested:
            return
        self._eof_requested = True
        self._kick_writer()

    def _kick_writer(self) -> None:
        if self._writer is None:
            self._writer = _spawn(self._loop, self._write_loop(), "netshim transport writer")
        waiter, self._wake_writer = self._wake_writer, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _write_loop(self) -> None:
        eof_sent = False
        while True:
            if self._buffer:
                chunk = bytes(self._buffer[:MAX_SEND])
                del self._buffer[:MAX_SEND]
                self._in_flight = len(chunk)
                try:
                    await self._stream.send(chunk)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return
                except OSError as exc:
                    self._fatal(exc)
                    return
                finally:
                    self._in_flight = 0
                self._maybe_resume_protocol()
                continue
            if self._eof_requested and not eof_sent:
                eof_sent = True
                try:
                    await self._stream.send_eof()
                except OSError as exc:
                    self._fatal(exc)
                    return
            if self._closing:
                await self._finish(None)
                return
            self._wake_writer = self._loop.create_future()
            await self._wake_writer

    # -- closing -------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop reading, send what is buffered, then close; ``connection_lost(None)``."""
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        self._kick_writer()

    def abort(self) -> None:
        """Close at once, as ``close(2)`` on a real socket; ``connection_lost(None)`` soon.

        asyncio's own transports hand data to the kernel as ``write()`` is
        called, and the kernel still sends it after the close; only what did
        not fit is dropped.  Here the stack takes the first
        :data:`KERNEL_SEND_BUFFER` bytes still buffered, the rest is dropped.
        """
        if self._lost:
            return
        self._closing = True
        self._stop_reading()
        del self._buffer[KERNEL_SEND_BUFFER:]
        self._lost = True
        self._loop.call_soon(self._connection_lost, None)
        self._kick_writer()

    def _force_close(self, exc: Exception | None) -> None:
        # asyncio's SSL protocol calls this private method of asyncio's own
        # transports when TLS fails.
        if exc is None:
            self.abort()
        else:
            self._fatal(exc)

    def _fatal(self, exc: Exception) -> None:
        """The stream broke (a reset, a broken pipe): drop everything, report ``exc``."""
        self._closing = True
        self._buffer.clear()
        current = asyncio.current_task()
        for task in (self._reader, self._writer):
            if task is not None and task is not current:
                task.cancel()
        if not self._lost:
            self._lost = True
            self._loop.call_soon(self._connection_lost, exc)
        _spawn(self._loop, self._close_stream(), "netshim transport close")

    def _stop_reading(self) -> None:
        self._stop_pushed()
        self.resume_reading()  # lets a paused reader see that we are closing
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()

    async def _close_stream(self) -> None:
        # close(2): a FIN, or a reset when received data was left unread.
        with contextlib.suppress(Exception):
            if self._held and self._unread_left():
                await self._stream.abort()
            else:
                await self._stream.aclose()

    def _unread_left(self) -> bool:
        """Whether received data really waits unread (``_held`` only says it may).

        A pushed stream marks data held when reading paused; if the protocol
        then read everything and closed before the resumed hand-on ran, nothing
        is left, and the close must be a FIN.  Streams without a way to look
        count as holding data.
        """
        receive_nowait = getattr(self._stream, "receive_nowait", None)
        if receive_nowait is None:
            return True
        try:
            receive_nowait(1)
        except anyio.WouldBlock:
            return False
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            return False
        return True

    async def _finish(self, exc: Exception | None) -> None:
        await self._close_stream()
        if not self._lost:
            self._lost = True
            self._loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc: Exception | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            if self._on_lost is not None:
                self._on_lost(self)

    # -- protocol ------------------------------------------------------------

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol


class StackDatagramTransport(_FlowControl, asyncio.DatagramTransport):
    """An ``asyncio.DatagramTransport`` over a :class:`~netshim.stack.UdpSocket`.

    ``sendto`` queues the datagram and returns; a task hands it to the stack
    and reports a failure (``ECONNREFUSED``, ``EMSGSIZE``, ``EACCES`` ...) to
    ``protocol.error_received``, as a real datagram transport does.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        udp: UdpSocket,
        protocol: asyncio.DatagramProtocol,
        *,
        waiter: asyncio.Future[None] | None = None,
    ) -> None:
        local, remote = udp.local_address, udp.remote_address
        view = StackSocketView(family_of(local), socket.SOCK_DGRAM, local, remote)
        info: dict[str, Any] = {
            "socket": view,
            "sockname": view.getsockname(),
            "netshim_udp": udp,
        }
        if remote is not None:
            info["peername"] = view.getpeername()
        super().__init__(info)
        self._init_flow()
        self._loop = loop
        self._udp = udp
        self._protocol = protocol
        self._datagram_protocol = protocol
        self._address = view.getpeername() if remote is not None else None
        self._queue: deque[tuple[bytes, tuple[str, int] | None]] = deque()
        self._queued = 0
        self._closing = False
        self._lost = False
        self._wake_sender: asyncio.Future[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        loop.call_soon(self._start, waiter)

    def _start(self, waiter: asyncio.Future[None] | None) -> None:
        if self._lost:
            return
        self._protocol.connection_made(self)
        if not self._closing:
            self._reader = _spawn(self._loop, self._read_loop(), "netshim datagram reader")
            self._sender = _spawn(self._loop, self._send_loop(), "netshim datagram sender")
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_write_buffer_size(self) -> int:
        return self._queued

    def sendto(self, data: Any, addr: Any = None) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__}")
        if self._address is not None:
            if addr not in (None, self._address, self._address[:2]):
                raise ValueError(f"Invalid address: must be None or {self._address}")
            addr = None
        elif addr is None:
            raise ValueError("Invalid address: must be given on an unconnected socket")
        if self._closing:
            return
        target = None if addr is None else (str(addr[0]), int(addr[1]))
        payload = bytes(data)
        self._queue.append((payload, target))
        self._queued += len(payload)
        waiter, self._wake_sender = self._wake_sender, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._maybe_pause_protocol()

    async def _send_loop(self) -> None:
        while True:
            while self._queue:
                payload, target = self._queue.popleft()
                try:
                    await self._udp.send(payload, target)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return
                except OSError as exc:
                    self._datagram_protocol.error_received(exc)
                finally:
                    self._queued -= len(payload)
                self._maybe_resume_protocol()
            if self._closing:
                await self._finish()
                return
            self._wake_sender = self._loop.create_future()
            await self._wake_sender

    async def _read_loop(self) -> None:
        while True:
            try:
                data, source = await self._udp.receive()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
                return
            except OSError as exc:
                self._datagram_protocol.error_received(exc)
                continue
            if self._closing:
                return
            sender: Any = (source[0], source[1])
            if self._udp.local_address and ":" in self._udp.local_address[0]:
                sender = (source[0], source[1], 0, 0)
            try:
                self._datagram_protocol.datagram_received(data, sender)
            except Exception as exc:
                self._report("protocol.datagram_received() failed", exc)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Send what is queued, then close; ``connection_lost(None)``."""
        if self._closing:
            return
        self._closing = True
        if self._reader is not None:
            self._reader.cancel()
        if self._sender is None:
            _spawn(self._loop, self._finish(), "netshim datagram close")
        else:
            waiter, self._wake_sender = self._wake_sender, None
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def abort(self) -> None:
        self._closing = True
        self._queue.clear()
        self._queued = 0
        for task in (self._reader, self._sender):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        _spawn(self._loop, self._finish(), "netshim datagram abort")

    async def _finish(self) -> None:
        if self._lost:
            return
        self._lost = True
        with contextlib.suppress(Exception):
            await self._udp.aclose()
        self._loop.call_soon(self._protocol.connection_lost, None)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._datagram_protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol
