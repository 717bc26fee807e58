"""The synchronous ``socket`` API where there are no file descriptors (Pyodide).

In Pyodide a blocking call cannot wait: the event loop is the browser's (or
Node's), and it only runs once Python returns to it.  So a blocking socket
method here runs the stack's coroutine to completion *on the spot*:

* With JSPI stack switching (``pyodide.ffi.can_run_sync()``: Chrome 137+,
  Node started with ``--experimental-wasm-stack-switching``, and code started
  by ``runPythonAsync``), ``pyodide.ffi.run_sync`` suspends the WebAssembly
  stack while the loop runs, so every call works on every stack, tunnels
  included.
* Without it, the coroutine is stepped by hand.  Most calls on an in-process
  :class:`~netshim.VirtualNetwork` never need to wait (a connect to a
  listening port, a send below the window, a receive with data already
  there, an accept with a connection queued), so one program can be both
  server and client, as single-threaded tests often are.  A call that would
  have to wait raises :class:`CannotBlockError` saying why; a non-blocking
  socket raises ``BlockingIOError`` as the kernel would.

:class:`StackSocket` is the socket class ``netshim.install()`` puts in place
of ``socket.socket`` in Pyodide.  It is pure Python with no descriptor
(``fileno()`` is -1), so ``select`` cannot watch it.
"""

from __future__ import annotations

import asyncio
import errno
import io
import math
import socket
import sys
from collections.abc import Coroutine
from contextvars import ContextVar
from typing import Any, TypeVar

import anyio

from .._addresses import parse_ip
from .._errors import os_error
from ..stack import Stack, TcpListener, TcpStream
from ._hooks import _connect, _getaddrinfo
from ._transports import inside_stack

__all__ = [
    "SYNC_SOCKET_NAMES",
    "CannotBlockError",
    "StackSocket",
    "blocking_call_timeout",
    "can_block",
    "getaddrinfo",
    "gethostbyname",
    "run_blocking",
]

T = TypeVar("T")
# Closes still under way, kept so that the loop does not lose the tasks.
_closing: set[asyncio.Future[None]] = set()

_WHY = (
    "socket.{operation}() would have to wait for the network, and a synchronous call in "
    "Pyodide cannot let the event loop run without JSPI stack switching "
    "(pyodide.ffi.can_run_sync() is False here). Use asyncio (netshim's loop hooks), "
    "run under JSPI (Chrome 137+, or Node with --experimental-wasm-stack-switching, "
    "from code started by runPythonAsync), or use a non-blocking socket"
)


class CannotBlockError(OSError):
    """A blocking socket call had to wait, and this runtime cannot block (no JSPI)."""

    def __init__(self, operation: str, hint: str = "") -> None:
        super().__init__(errno.EWOULDBLOCK, _WHY.format(operation=operation) + hint)


# While a blocking call is stepped by hand (no JSPI): its timeout in seconds
# (inf for none).  A stack that can wait by itself without the event loop
# (FetchStack's synchronous XHR in a Web Worker) asks for it.
_stepped_timeout: ContextVar[float | None] = ContextVar("netshim_stepped_timeout", default=None)


def blocking_call_timeout() -> float | None:
    """The timeout of the blocking call being stepped without JSPI (inf: none), else ``None``.

    ``None`` also inside event-loop tasks, JSPI calls and non-blocking calls:
    there nothing may wait outside the loop.
    """
    return _stepped_timeout.get()


# pyodide.ffi.can_run_sync, found once: the import machinery cost more than
# a blocking recv's own work (False where there is no Pyodide).
_can_run_sync: Any = None


def can_block() -> bool:
    """Whether a synchronous call can wait for the event loop here (JSPI in Pyodide)."""
    global _can_run_sync
    if _can_run_sync is None:
        try:
            from pyodide.ffi import can_run_sync  # type: ignore[import-not-found]
        except ImportError:
            _can_run_sync = False
        else:
            _can_run_sync = can_run_sync
    return _can_run_sync is not False and bool(_can_run_sync())


def _step(coroutine: Coroutine[Any, Any, T], operation: str, nonblocking: bool) -> T:
    """Run ``coroutine`` as far as it goes without waiting; its result, or an error."""
    sniffio = sys.modules.get("sniffio")
    if sniffio is None or sniffio.current_async_library_cvar.get() is not None:
        return _step_through(coroutine, operation, nonblocking)
    # Called from outside any task (a JavaScript callback, runPython): anyio
    # asks sniffio, which looks for a task; the loop here is asyncio's.
    token = sniffio.current_async_library_cvar.set("asyncio")
    try:
        return _step_through(coroutine, operation, nonblocking)
    finally:
        sniffio.current_async_library_cvar.reset(token)


def _step_through(coroutine: Coroutine[Any, Any, T], operation: str, nonblocking: bool) -> T:
    while True:
        try:
            yielded = coroutine.send(None)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        if yielded is None:
            # A bare checkpoint (asyncio.sleep(0)): nothing to wait for.
            continue
        if isinstance(yielded, asyncio.Future) and yielded.done():
            # Resuming is what a Task would do for a future that is already done.
            yielded._asyncio_future_blocking = False
            continue
        coroutine.close()
        if nonblocking:
            code = errno.EINPROGRESS if operation == "connect" else errno.EAGAIN
            raise BlockingIOError(code, f"socket.{operation}() would block")
        raise CannotBlockError(operation)


def run_blocking(
    coroutine: Coroutine[Any, Any, T],
    operation: str,
    timeout: float | None = None,
) -> T:
    """Run ``coroutine`` to completion from synchronous code; see the module documentation.

    ``timeout`` is the socket's: ``0.0`` never waits (``BlockingIOError``),
    ``None`` waits as long as it takes, a number raises ``TimeoutError``
    ("timed out", as ``socket.timeout``) after that many seconds.
    """
    if timeout == 0.0:
        return _step(coroutine, operation, True)
    if not can_block():
        token = _stepped_timeout.set(math.inf if timeout is None else timeout)
        try:
            return _step(coroutine, operation, False)
        finally:
            _stepped_timeout.reset(token)
    from pyodide.ffi import run_sync

    async def bounded() -> T:
        if timeout is None:
            return await coroutine
        try:
            # asyncio's own timeout, not anyio's: Pyodide's WebLoop refuses
            # call_at() in the past, which anyio's rescheduling can ask for.
            async with asyncio.timeout(timeout):
                return await coroutine
        except TimeoutError:
            raise TimeoutError("timed out") from None

    result: T = run_sync(bounded())
    return result


def _address(address: Any, family: int) -> tuple[str, int]:
    """``(host, port)`` from a socket address; '' means any address, as bind() reads it."""
    if not isinstance(address, tuple) or len(address) < 2:
        raise TypeError(f"{family!r} address must be a tuple (host, port), not {address!r}")
    host, port = address[0], address[1]
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise OverflowError("port must be 0-65535.")
    if host == "":
        host = "::" if family == socket.AF_INET6 else "0.0.0.0"
    return str(host), port


class StackSocket:
    """A TCP socket on the acting stack, for runtimes without file descriptors.

    It offers the methods unmodified blocking clients and simple servers use:
    ``connect``/``connect_ex``, ``bind``, ``listen``, ``accept``, ``send``,
    ``sendall``, ``recv``, ``recv_into``, ``shutdown``, ``close``,
    ``makefile``, timeouts, ``getsockname``/``getpeername`` (the virtual
    addresses) and ``setsockopt``/``getsockopt`` (recorded, not acted on).
    Datagram sockets are not offered here: use asyncio's
    ``create_datagram_endpoint``, which the loop hooks serve.
    """

    def __init__(
        self,
        family: int = -1,
        type: int = -1,
        proto: int = -1,
        fileno: int | None = None,
    ) -> None:
        from ..shim._patch import current_acting_stack

        if fileno is not None:
            raise OSError(errno.EBADF, "there are no file descriptors to adopt here")
        family = socket.AF_INET if family == -1 else family
        type = socket.SOCK_STREAM if type == -1 else type
        if family not in (socket.AF_INET, socket.AF_INET6):
            raise OSError(
                errno.EAFNOSUPPORT, "only AF_INET and AF_INET6 sockets go through netshim"
            )
        if type & 0xF != socket.SOCK_STREAM:
            raise OSError(
                errno.EPROTONOSUPPORT,
                "only SOCK_STREAM sockets are synchronous here; "
                "use asyncio's create_datagram_endpoint for UDP",
            )
        self.family = socket.AddressFamily(family)
        self.type = socket.SocketKind.SOCK_STREAM
        self.proto = 0 if proto == -1 else proto
        self._stack: Stack = current_acting_stack()
        self._timeout: float | None = socket.getdefaulttimeout()
        self._stream: TcpStream | None = None
        self._listener: TcpListener | None = None
        self._bound: tuple[str, int] | None = None
        self._pending: asyncio.Task[TcpStream] | None = None
        self._options: dict[tuple[int, int], int | bytes] = {}
        self._closed = False
        self._read_shut = False
        self._io_refs = 0
        self._close_with_files = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "listening" if self._listener else "open"
        return f"<netshim StackSocket {state} family={self.family.name} on {self._stack!r}>"

    def __enter__(self) -> StackSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- settings ----------------------------------------------------------

    def fileno(self) -> int:
        # No descriptor exists; -1 is what a closed socket reports too.
        return -1

    def settimeout(self, value: float | None) -> None:
        if value is not None and value < 0:
            raise ValueError("Timeout value out of range")
        self._timeout = None if value is None else float(value)

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def getblocking(self) -> bool:
        return self._timeout != 0.0

    @property
    def timeout(self) -> float | None:
        return self._timeout

    def setsockopt(self, level: int, option: int, value: Any, optlen: int | None = None) -> None:
        self._check_open()
        self._options[(level, option)] = value

    def getsockopt(self, level: int, option: int, buflen: int | None = None) -> Any:
        self._check_open()
        if (level, option) == (socket.SOL_SOCKET, socket.SO_ERROR):
            return self._connect_error()
        if (level, option) == (socket.SOL_SOCKET, socket.SO_TYPE):
            return int(self.type)
        return self._options.get((level, option), 0)

    # -- names ---------------------------------------------------------------

    def getsockname(self) -> tuple[Any, ...]:
        self._check_open()
        if self._stream is not None:
            return tuple(self._stream.local_address)
        if self._listener is not None:
            return tuple(self._listener.local_address)
        if self._bound is not None:
            return self._bound
        return ("::", 0, 0, 0) if self.family == socket.AF_INET6 else ("0.0.0.0", 0)

    def getpeername(self) -> tuple[Any, ...]:
        self._check_open()
        self._settle_connect()
        if self._stream is None:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        return tuple(self._stream.remote_address)

    # -- connecting ------------------------------------------------------------

    def bind(self, address: Any) -> None:
        self._check_open()
        if self._bound is not None or self._stream is not None:
            raise OSError(errno.EINVAL, "Invalid argument")
        host, port = _address(address, self.family)
        if self.family == socket.AF_INET and parse_ip(host) is None:
            infos = run_blocking(
                _getaddrinfo(self._stack, host, port, self.family, socket.SOCK_STREAM, 0, 0),
                "bind",
                self._timeout,
            )
            host = str(infos[0][4][0])
        self._bound = (host, port)

    def listen(self, backlog: int = 128) -> None:
        self._check_open()
        if self._listener is not None:
            return
        if self._stream is not None:
            raise OSError(errno.EINVAL, "Invalid argument")
        host, port = self._bound or _address(("", 0), self.family)

        async def listen() -> TcpListener:
            token = inside_stack.set(True)
            try:
                return await self._stack.listen_tcp(host, port, backlog=max(backlog, 1))
            finally:
                inside_stack.reset(token)

        self._listener = run_blocking(listen(), "listen", self._timeout)

    def accept(self) -> tuple[StackSocket, tuple[Any, ...]]:
        self._check_open()
        if self._listener is None:
            raise OSError(errno.EINVAL, "Invalid argument")
        stream = run_blocking(self._listener.accept(), "accept", self._timeout)
        peer = self._adopt(stream)
        return peer, tuple(stream.remote_address)

    def _adopt(self, stream: TcpStream) -> StackSocket:
        peer = StackSocket.__new__(StackSocket)
        peer.__dict__.update(self.__dict__)
        peer._listener = None
        peer._stream = stream
        peer._options = dict(self._options)
        peer._io_refs = 0
        peer._close_with_files = False
        peer._timeout = socket.getdefaulttimeout()
        return peer

    def connect(self, address: Any) -> None:
        self._check_open()
        if self._pending is not None:
            self._settle_connect(raise_pending=True)
            raise OSError(errno.EISCONN, "Transport endpoint is already connected")
        if self._stream is not None or self._listener is not None:
            raise OSError(errno.EISCONN, "Transport endpoint is already connected")
        host, port = _address(address, self.family)
        local = self._bound if self._bound and self._bound[1] else None
        coroutine = _connect(self._stack, host, port, self.family, local)
        if self._timeout == 0.0:
            # A non-blocking connect carries on in a task, as the kernel's handshake would.
            self._pending = asyncio.ensure_future(coroutine)
            raise BlockingIOError(errno.EINPROGRESS, "Operation now in progress")
        self._stream = run_blocking(coroutine, "connect", self._timeout)

    async def connect_async(self, address: Any) -> None:
        """Connect without blocking anything: what ``loop.sock_connect`` does with this socket.

        aiohttp (through aiohappyeyeballs) makes a socket, awaits
        ``loop.sock_connect`` and hands the socket to ``create_connection(sock=)``;
        the loop hooks answer both with this and :meth:`take_stream`.
        """
        self._check_open()
        if self._stream is not None or self._listener is not None or self._pending is not None:
            raise OSError(errno.EISCONN, "Transport endpoint is already connected")
        host, port = _address(address, self.family)
        local = self._bound if self._bound and self._bound[1] else None
        self._stream = await _connect(self._stack, host, port, self.family, local)

    def take_stream(self) -> TcpStream:
        """The connected stream, now owned by the caller (a transport); the socket is done.

        As with a real socket handed to ``create_connection(sock=)``, the
        transport owns the connection from then on.
        """
        stream = self._connected()
        self._stream = None
        self._closed = True
        return stream

    def connect_ex(self, address: Any) -> int:
        try:
            self.connect(address)
        except OSError as exc:
            return exc.errno or errno.EIO
        return 0

    def _settle_connect(self, raise_pending: bool = False) -> None:
        pending = self._pending
        if pending is None:
            return
        if not pending.done():
            if raise_pending:
                raise BlockingIOError(errno.EALREADY, "Operation already in progress")
            return
        self._pending = None
        error = pending.exception()
        if error is not None:
            raise error
        self._stream = pending.result()

    def _connect_error(self) -> int:
        pending = self._pending
        if pending is None or not pending.done():
            return 0
        try:
            self._settle_connect()
        except OSError as exc:
            return exc.errno or errno.EIO
        return 0

    # -- data ------------------------------------------------------------------

    def _connected(self) -> TcpStream:
        self._check_open()
        self._settle_connect()
        if self._stream is None:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        return self._stream

    def send(self, data: Any, flags: int = 0) -> int:
        stream = self._connected()
        payload = bytes(data)
        run_blocking(_send(stream, payload), "send", self._timeout)
        return len(payload)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self.send(data, flags)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        stream = self._connected()
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        if bufsize == 0 or self._read_shut:
            return b""
        return run_blocking(_receive(stream, bufsize), "recv", self._timeout)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        data = self.recv(nbytes or len(view), flags)
        view[: len(data)] = data
        return len(data)

    def shutdown(self, how: int) -> None:
        stream = self._connected()
        if how in (socket.SHUT_RD, socket.SHUT_RDWR):
            self._read_shut = True
        if how in (socket.SHUT_WR, socket.SHUT_RDWR):
            run_blocking(stream.send_eof(), "shutdown", self._timeout)

    def makefile(
        self,
        mode: str = "r",
        buffering: int | None = None,
        *,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> Any:
        """A file on the socket, as ``socket.makefile`` gives (``socket.SocketIO`` underneath)."""
        reading, writing = "r" in mode, "w" in mode
        raw = _SocketFile(self, ("r" if reading else "") + ("w" if writing else ""))  # type: ignore[arg-type]
        self._io_refs += 1
        if buffering is None:
            buffering = -1
        if buffering < 0:
            buffering = io.DEFAULT_BUFFER_SIZE
        if buffering == 0:
            if "b" not in mode:
                raise ValueError("unbuffered streams must be binary")
            return raw
        buffered: io.BufferedIOBase
        if reading and writing:
            buffered = io.BufferedRWPair(raw, raw, buffering)
        elif reading:
            buffered = io.BufferedReader(raw, buffering)
        else:
            buffered = io.BufferedWriter(raw, buffering)
        if "b" in mode:
            return buffered
        text = io.TextIOWrapper(buffered, encoding, errors, newline)  # type: ignore[type-var]
        text.mode = mode  # type: ignore[misc]
        return text

    def _decref_socketios(self) -> None:
        # socket.SocketIO calls this when a file made by makefile() closes.
        self._io_refs -= 1
        if self._io_refs <= 0 and self._close_with_files:
            self.close()

    # -- closing -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise OSError(errno.EBADF, "Bad file descriptor")

    def close(self) -> None:
        """Close the socket (a FIN to the peer); idempotent, as ``socket.close``."""
        if self._closed:
            return
        if self._io_refs > 0:
            # As socket.socket: files made by makefile() keep the connection
            # until they close too (urllib closes the socket, then reads the body).
            self._close_with_files = True
            return
        self._closed = True
        if self._pending is not None:
            self._pending.cancel()
        resource: Any = self._stream or self._listener
        if resource is not None:
            # Closing never has to wait on the stacks (they queue the FIN), so
            # step it here even without JSPI; a stack that does wait still closes.
            try:
                run_blocking(resource.aclose(), "close", 0.0)
            except BlockingIOError:
                task = asyncio.ensure_future(resource.aclose())
                _closing.add(task)
                task.add_done_callback(_closing.discard)

    def detach(self) -> int:
        raise OSError(errno.EBADF, "there is no file descriptor to detach")


class _SocketFile(socket.SocketIO):
    """``socket.SocketIO`` that lets :class:`CannotBlockError` reach the reader.

    SocketIO takes an ``EWOULDBLOCK`` from ``recv_into`` for "no data yet" and
    returns ``None``, which a buffered file on a blocking socket turns into a
    silent end of file (``http.client`` then reports ``RemoteDisconnected``).
    """

    def readinto(self, b: Any) -> int | None:
        self._checkClosed()
        self._checkReadable()  # type: ignore[attr-defined]
        if self._timeout_occurred:  # type: ignore[has-type]
            raise OSError("cannot read from timed out object")
        try:
            return int(self._sock.recv_into(b))  # type: ignore[attr-defined]
        except TimeoutError:
            self._timeout_occurred = True
            raise
        except CannotBlockError:
            raise
        except OSError as exc:
            # A non-blocking socket's "no data yet", as SocketIO reads it.
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return None
            raise


async def _send(stream: TcpStream, data: bytes) -> None:
    try:
        await stream.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
        raise os_error(errno.EPIPE, "send") from exc


async def _receive(stream: TcpStream, size: int) -> bytes:
    try:
        return await stream.receive(size)
    except anyio.EndOfStream:
        return b""
    except anyio.BrokenResourceError as exc:
        raise os_error(errno.ECONNRESET, "recv") from exc


def _acting() -> Stack:
    from ..shim._patch import current_acting_stack

    return current_acting_stack()


def getaddrinfo(
    host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
) -> list[Any]:
    """:func:`socket.getaddrinfo` on the acting stack (synthetic addresses for tunnels)."""
    return run_blocking(
        _getaddrinfo(_acting(), host, port, family, type, proto, flags), "getaddrinfo"
    )


def gethostbyname(hostname: str) -> str:
    """:func:`socket.gethostbyname` on the acting stack: its first IPv4 address."""
    infos = getaddrinfo(hostname, None, socket.AF_INET, socket.SOCK_STREAM)
    return str(infos[0][4][0])


#: What ``netshim.install()`` replaces in the socket module where there are no descriptors.
SYNC_SOCKET_NAMES: dict[str, Any] = {
    "socket": StackSocket,
    "SocketType": StackSocket,
    "getaddrinfo": getaddrinfo,
    "gethostbyname": gethostbyname,
}
