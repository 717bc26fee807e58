"""uvloop on shim sockets: ``create_connection(sock=...)``, ``create_server(sock=...)``.

uvloop hands a ``sock=`` descriptor to libuv as a TCP handle, and libuv's TCP
setup (``TCP_NODELAY``) fails on the AF_UNIX descriptor a shim socket owns
(``EOPNOTSUPP``).  While netshim is installed, ``uvloop.Loop`` (a Python
subclass of uvloop's compiled loop, so its class dictionary can take new
entries) gets ``create_connection``, ``create_server``,
``connect_accepted_socket`` and ``sock_connect`` methods that serve shim sockets with
:class:`ShimTransport`, a small transport driven by ``loop.add_reader`` /
``add_writer``, which uvloop supports on any descriptor; ``ssl=`` runs
through :class:`asyncio.sslproto.SSLProtocol` over it.  Every other call goes
to uvloop's own method, unchanged.  ``sock_recv``, ``sock_sendall``,
``sock_accept`` and the other ``sock_*`` methods need nothing: uvloop calls
the socket's own Python methods for them; ``sock_connect`` only has names
resolved through the socket module first, since uvloop resolves them with
libuv.
"""

from __future__ import annotations

import asyncio
import importlib.util
import ipaddress
import socket
import ssl as ssl_module
from asyncio import sslproto, trsock
from collections.abc import Callable
from typing import Any

from ..aio._server import ServesForever
from ..aio._transports import _FlowControl, feed_protocol

__all__ = ["ShimServer", "ShimTransport", "uvloop_patches"]

_READ_SIZE = 256 * 1024
_ProtocolFactory = Callable[[], asyncio.BaseProtocol]


def _is_shim(sock: Any) -> bool:
    return getattr(sock, "_netshim", None) is not None


class ShimTransport(_FlowControl, asyncio.Transport):
    """A stream transport over a shim socket's descriptor, for any loop with add_reader."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[None] | None = None,
        server: ShimServer | None = None,
    ) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._server = server
        self._init_flow()
        self._buffer = bytearray()
        self._reading = True  # what the protocol wants
        self._reader_on = False  # what the loop watches
        self._writer_on = False
        self._closing = False
        self._eof_requested = False
        self._eof_sent = False
        self._lost = False
        # Captured now: after close() the socket can no longer answer.
        self._extra: dict[str, Any] = {"socket": trsock.TransportSocket(sock)}
        for key, method in (("sockname", sock.getsockname), ("peername", sock.getpeername)):
            try:
                self._extra[key] = method()
            except OSError:
                self._extra[key] = None
        if server is not None:
            server._attach()
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._watch_reads)
        if waiter is not None:
            loop.call_soon(_resolve, waiter)

    def __repr__(self) -> str:
        state = "closed" if self._lost else "closing" if self._closing else "open"
        return f"<ShimTransport fd={self._fd} {state}>"

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    # -- reading ---------------------------------------------------------------

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    def pause_reading(self) -> None:
        self._reading = False
        self._unwatch_reads()

    def resume_reading(self) -> None:
        if self._reading or self._closing:
            return
        self._reading = True
        self._watch_reads()

    def _watch_reads(self) -> None:
        if self._reading and not self._closing and not self._reader_on:
            self._reader_on = True
            self._loop.add_reader(self._fd, self._on_readable)

    def _unwatch_reads(self) -> None:
        if self._reader_on:
            self._reader_on = False
            self._loop.remove_reader(self._fd)

    def _on_readable(self) -> None:
        protocol = self._protocol
        try:
            if isinstance(protocol, asyncio.BufferedProtocol):
                # Straight into the protocol's buffer, as the selector loop does.
                buffer = memoryview(protocol.get_buffer(-1))
                if not buffer.nbytes:
                    raise RuntimeError("get_buffer() returned an empty buffer")
                size = self._sock.recv_into(buffer)
                if size:
                    protocol.buffer_updated(size)
                    return
            else:
                data = self._sock.recv(_READ_SIZE)
                if data:
                    feed_protocol(protocol, data)
                    return
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        except Exception as exc:
            self._report("reading from the socket failed", exc)
            self._force_close(exc)
            return
        self._unwatch_reads()
        try:
            keep_open = protocol.eof_received()  # type: ignore[attr-defined]
        except Exception as exc:
            self._report("protocol.eof_received() failed", exc)
            self._force_close(exc)
            return
        if not keep_open:
            self.close()

    # -- writing ---------------------------------------------------------------

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__}")
        if self._eof_requested:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._closing or not data:
            return
        if not self._buffer:
            # Nothing queued: try the descriptor now and queue only the rest.
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._fatal(exc)
                return
            data = memoryview(data)[sent:]
            if not data:
                return
            self._buffer += data
            self._writer_on = True
            self._loop.add_writer(self._fd, self._on_writable)
        else:
            self._buffer += data
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def _on_writable(self) -> None:
        try:
            sent = self._sock.send(self._buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        del self._buffer[:sent]
        self._maybe_resume_protocol()
        if self._buffer:
            return
        self._writer_on = False
        self._loop.remove_writer(self._fd)
        if self._eof_requested:
            self._send_eof()
        if self._closing:
            self._schedule_lost(None)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._eof_requested:
            return
        self._eof_requested = True
        if not self._buffer:
            self._send_eof()

    def _send_eof(self) -> None:
        if self._eof_sent:
            return
        self._eof_sent = True
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._fatal(exc)

    # -- closing ---------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._unwatch_reads()
        if not self._buffer:
            self._schedule_lost(None)

    def abort(self) -> None:
        self._force_close(None)

    def _fatal(self, exc: OSError) -> None:
        # A reset or broken pipe is the peer's doing and no bug; report the rest.
        if not isinstance(exc, ConnectionError):
            self._report("fatal error on the shim transport", exc)
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._buffer.clear()
        if self._writer_on:
            self._writer_on = False
            self._loop.remove_writer(self._fd)
        self._closing = True
        self._unwatch_reads()
        self._schedule_lost(exc)

    def _schedule_lost(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc)  # type: ignore[arg-type]
        finally:
            self._sock.close()
            if self._server is not None:
                self._server._detach()
                self._server = None

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _context(ssl: Any, server_side: bool) -> ssl_module.SSLContext | None:
    if isinstance(ssl, ssl_module.SSLContext):
        return ssl
    if ssl is True:
        return None  # SSLProtocol then builds the default context itself.
    raise TypeError("ssl argument must be an SSLContext, True or None")


def _transport_for(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    protocol: asyncio.BaseProtocol,
    waiter: asyncio.Future[None] | None,
    *,
    ssl: Any,
    server_side: bool,
    server_hostname: str | None,
    ssl_handshake_timeout: float | None,
    ssl_shutdown_timeout: float | None,
    server: ShimServer | None = None,
) -> asyncio.Transport:
    """A ShimTransport for ``protocol``, with TLS layered on it when ``ssl`` is given."""
    sock.setblocking(False)
    if not ssl:
        return ShimTransport(loop, sock, protocol, waiter, server)
    # Typed loosely: typeshed's stub lags the class (no waiter=None, int timeouts).
    make_tls: Any = sslproto.SSLProtocol
    tls = make_tls(
        loop,
        protocol,
        _context(ssl, server_side),
        waiter,
        server_side,
        server_hostname,
        ssl_handshake_timeout=ssl_handshake_timeout,
        ssl_shutdown_timeout=ssl_shutdown_timeout,
    )
    ShimTransport(loop, sock, tls, None, server)
    return tls._get_app_transport()  # type: ignore[no-any-return]


def _check_stream(sock: socket.socket) -> None:
    if sock.type != socket.SOCK_STREAM:
        raise ValueError(f"A Stream Socket was expected, got {sock!r}")


async def _open(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: _ProtocolFactory,
    sock: socket.socket,
    *,
    ssl: Any,
    server_side: bool,
    server_hostname: str | None,
    ssl_handshake_timeout: float | None,
    ssl_shutdown_timeout: float | None,
) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
    _check_stream(sock)
    if not ssl and (ssl_handshake_timeout is not None or ssl_shutdown_timeout is not None):
        raise ValueError(
            "ssl_handshake_timeout and ssl_shutdown_timeout are only meaningful with ssl"
        )
    if ssl and not server_side and server_hostname is None:
        raise ValueError("You must set server_hostname when using ssl without a host")
    protocol = protocol_factory()
    waiter: asyncio.Future[None] = loop.create_future()
    transport = _transport_for(
        loop,
        sock,
        protocol,
        waiter,
        ssl=ssl,
        server_side=server_side,
        server_hostname=server_hostname,
        ssl_handshake_timeout=ssl_handshake_timeout,
        ssl_shutdown_timeout=ssl_shutdown_timeout,
    )
    try:
        await waiter
    except BaseException:
        transport.close()
        raise
    return transport, protocol


class ShimServer(ServesForever):
    """What ``create_server`` returns on shim sockets: accepts on their listening descriptors."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        socks: list[socket.socket],
        protocol_factory: _ProtocolFactory,
        *,
        backlog: int,
        ssl: Any,
        ssl_handshake_timeout: float | None,
        ssl_shutdown_timeout: float | None,
    ) -> None:
        self._loop = loop
        self._socks: list[socket.socket] | None = socks
        self._fds = [sock.fileno() for sock in socks]
        self._factory = protocol_factory
        self._backlog = backlog
        self._ssl = ssl
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._ssl_shutdown_timeout = ssl_shutdown_timeout
        self._serving = False
        self._active = 0
        self._idle: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<ShimServer sockets={self.sockets!r}>"

    @property
    def sockets(self) -> tuple[trsock.TransportSocket, ...]:
        return tuple(trsock.TransportSocket(sock) for sock in self._socks or ())

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        self._start()
        # Let the loop start watching, as asyncio's servers do.
        await asyncio.sleep(0)

    def _start(self) -> None:
        if self._serving or self._socks is None:
            return
        self._serving = True
        for sock, fd in zip(self._socks, self._fds, strict=True):
            sock.listen(self._backlog)
            self._loop.add_reader(fd, self._on_acceptable, sock)

    def _is_closed(self) -> bool:
        return self._socks is None

    def close(self) -> None:
        socks, self._socks = self._socks, None
        if socks is None:
            return
        if self._serving:
            self._serving = False
            for fd in self._fds:
                self._loop.remove_reader(fd)
        for sock in socks:
            sock.close()
        self._stop_serving_forever()

    async def wait_closed(self) -> None:
        """Wait until the server is closed and every connection it accepted is gone."""
        if self._socks is not None or self._active == 0:
            return
        if self._idle is None:
            self._idle = self._loop.create_future()
        await asyncio.shield(self._idle)

    def _attach(self) -> None:
        self._active += 1

    def _detach(self) -> None:
        self._active -= 1
        if self._active == 0 and self._idle is not None:
            _resolve(self._idle)
            self._idle = None

    def _on_acceptable(self, listener: socket.socket) -> None:
        # One readiness report may stand for several queued connections.
        for _ in range(max(self._backlog, 1)):
            if self._socks is None:
                return
            try:
                conn, _address = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                self._loop.call_exception_handler(
                    {"message": "socket.accept() failed", "exception": exc, "socket": listener}
                )
                return
            self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        try:
            protocol = self._factory()
            waiter: asyncio.Future[None] | None = None
            if self._ssl:
                waiter = self._loop.create_future()
                # A failed handshake closes the connection; nobody awaits it.
                waiter.add_done_callback(_consume)
            _transport_for(
                self._loop,
                conn,
                protocol,
                waiter,
                ssl=self._ssl,
                server_side=True,
                server_hostname=None,
                ssl_handshake_timeout=self._ssl_handshake_timeout,
                ssl_shutdown_timeout=self._ssl_shutdown_timeout,
                server=self,
            )
        except Exception as exc:
            conn.close()
            self._loop.call_exception_handler(
                {"message": "starting an accepted connection failed", "exception": exc}
            )


def _consume(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _create_connection(original: Callable[..., Any]) -> Callable[..., Any]:
    def create_connection(
        self: asyncio.AbstractEventLoop,
        protocol_factory: _ProtocolFactory,
        host: str | None = None,
        port: int | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        sock = kwargs.get("sock")
        if sock is None and not args and host is not None and _stack_is_virtual():
            # uvloop would resolve and connect through libuv, on the real
            # network: connect a shim socket instead and serve it as below.
            return _connect_address(self, create_connection, protocol_factory, host, port, kwargs)
        if not _is_shim(sock) or args:
            return original(self, protocol_factory, host, port, *args, **kwargs)
        if host is not None or port is not None:
            raise ValueError("host/port and sock can not be specified at the same time")
        options = dict(kwargs)
        del options["sock"]
        ssl = options.pop("ssl", None)
        server_hostname = options.pop("server_hostname", None)
        handshake = options.pop("ssl_handshake_timeout", None)
        shutdown = options.pop("ssl_shutdown_timeout", None)
        if server_hostname is not None and not ssl:
            raise ValueError("server_hostname is only meaningful with ssl")
        for name in ("family", "proto", "flags"):
            if options.pop(name, 0):
                raise ValueError(f"{name} can not be specified with sock")
        if options.pop("local_addr", None) is not None:
            raise ValueError("local_addr can not be specified with sock")
        if options:
            raise TypeError(f"create_connection() got unexpected arguments {sorted(options)}")
        return _open(
            self,
            protocol_factory,
            sock,  # type: ignore[arg-type]
            ssl=ssl,
            server_side=False,
            server_hostname=server_hostname,
            ssl_handshake_timeout=handshake,
            ssl_shutdown_timeout=shutdown,
        )

    create_connection.__doc__ = original.__doc__
    return create_connection


def _connect_accepted_socket(original: Callable[..., Any]) -> Callable[..., Any]:
    def connect_accepted_socket(
        self: asyncio.AbstractEventLoop,
        protocol_factory: _ProtocolFactory,
        sock: Any,
        *,
        ssl: Any = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> Any:
        if not _is_shim(sock):
            options: dict[str, Any] = {"ssl": ssl}
            # Only what the caller gave, so uvloop sees its own defaults.
            if ssl_handshake_timeout is not None:
                options["ssl_handshake_timeout"] = ssl_handshake_timeout
            if ssl_shutdown_timeout is not None:
                options["ssl_shutdown_timeout"] = ssl_shutdown_timeout
            return original(self, protocol_factory, sock, **options)
        return _open(
            self,
            protocol_factory,
            sock,
            ssl=ssl,
            server_side=True,
            server_hostname=None,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )

    connect_accepted_socket.__doc__ = original.__doc__
    return connect_accepted_socket


def _create_server(original: Callable[..., Any]) -> Callable[..., Any]:
    def create_server(
        self: asyncio.AbstractEventLoop,
        protocol_factory: _ProtocolFactory,
        host: Any = None,
        port: int | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        sock = kwargs.get("sock")
        if args:
            return original(self, protocol_factory, host, port, *args, **kwargs)
        if sock is None and _stack_is_virtual():
            # uvloop would bind host:port through libuv on the real network,
            # out of the stack's reach (uvicorn.run does this): listen on shim
            # sockets instead, as asyncio's create_server does.
            return _serve_address(self, protocol_factory, host, port, **kwargs)
        if not _is_shim(sock):
            return original(self, protocol_factory, host, port, *args, **kwargs)
        return _serve(self, protocol_factory, host, port, **kwargs)

    create_server.__doc__ = original.__doc__
    return create_server


async def _connect_address(
    loop: asyncio.AbstractEventLoop,
    create_connection: Callable[..., Any],
    protocol_factory: _ProtocolFactory,
    host: str,
    port: int | None,
    options: dict[str, Any],
) -> Any:
    """``create_connection(host, port)`` through a shim socket: each address in turn."""
    options = dict(options)
    family = options.pop("family", 0)
    proto = options.pop("proto", 0)
    flags = options.pop("flags", 0)
    local_addr = options.pop("local_addr", None)
    options.pop("happy_eyeballs_delay", None)
    options.pop("interleave", None)
    all_errors = options.pop("all_errors", False)
    if options.get("ssl") and options.get("server_hostname") is None:
        options["server_hostname"] = host
    infos = await loop.run_in_executor(
        None, socket.getaddrinfo, host, port, family, socket.SOCK_STREAM, proto, flags
    )
    errors: list[OSError] = []
    for info_family, kind, info_proto, _, address in infos:
        sock = socket.socket(info_family, kind, info_proto)
        try:
            sock.setblocking(False)
            if local_addr is not None:
                sock.bind(local_addr)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            errors.append(exc)
            continue
        except BaseException:
            sock.close()
            raise
        return await create_connection(loop, protocol_factory, sock=sock, **options)
    if not errors:
        raise OSError(f"getaddrinfo({host!r}) returned an empty list")
    if all_errors:
        raise ExceptionGroup("create_connection failed", errors)
    if len(errors) == 1:
        raise errors[0]
    raise OSError(f"Multiple exceptions: {', '.join(str(exc) for exc in errors)}")


def _stack_is_virtual() -> bool:
    """Whether the acting stack is not the host network (whose sockets uvloop serves itself)."""
    from ._socket import acting_stack

    return not acting_stack().uses_host_sockets


async def _serve_address(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: _ProtocolFactory,
    host: Any,
    port: int | None,
    *,
    family: int = socket.AF_UNSPEC,
    flags: int = socket.AI_PASSIVE,
    reuse_address: bool | None = None,
    reuse_port: bool | None = None,
    **kwargs: Any,
) -> ShimServer:
    """``create_server(host, port)`` on shim sockets: one per address, as asyncio binds them."""
    if kwargs.get("sock") is not None:
        raise ValueError("host/port and sock can not be specified at the same time")
    hosts = [host] if host is None or isinstance(host, str) else list(host)
    infos: list[tuple[Any, ...]] = []
    for name in hosts:
        for info in socket.getaddrinfo(
            None if name == "" else name, port, family, socket.SOCK_STREAM, 0, flags
        ):
            if info not in infos:
                infos.append(info)
    socks: list[socket.socket] = []
    try:
        for info_family, kind, proto, _, address in infos:
            sock = socket.socket(info_family, kind, proto)
            socks.append(sock)
            if reuse_address is not False:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if info_family == socket.AF_INET6:
                # As asyncio: the IPv4 wildcard gets a socket of its own.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    if not socks:
        raise OSError(f"no address to listen on for {host!r}")
    return await _serve_sockets(loop, protocol_factory, socks, **kwargs)


async def _serve(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: _ProtocolFactory,
    host: Any,
    port: int | None,
    *,
    sock: socket.socket,
    family: int = 0,
    flags: int = socket.AI_PASSIVE,
    reuse_address: bool | None = None,
    reuse_port: bool | None = None,
    **kwargs: Any,
) -> ShimServer:
    if host is not None or port is not None:
        raise ValueError("host/port and sock can not be specified at the same time")
    _check_stream(sock)
    return await _serve_sockets(loop, protocol_factory, [sock], **kwargs)


async def _serve_sockets(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: _ProtocolFactory,
    socks: list[socket.socket],
    *,
    backlog: int = 100,
    ssl: Any = None,
    ssl_handshake_timeout: float | None = None,
    ssl_shutdown_timeout: float | None = None,
    start_serving: bool = True,
) -> ShimServer:
    if not ssl and (ssl_handshake_timeout is not None or ssl_shutdown_timeout is not None):
        raise ValueError(
            "ssl_handshake_timeout and ssl_shutdown_timeout are only meaningful with ssl"
        )
    if ssl:
        _context(ssl, True)
    for sock in socks:
        sock.setblocking(False)
    server = ShimServer(
        loop,
        socks,
        protocol_factory,
        backlog=backlog,
        ssl=ssl,
        ssl_handshake_timeout=ssl_handshake_timeout,
        ssl_shutdown_timeout=ssl_shutdown_timeout,
    )
    if start_serving:
        await server.start_serving()
    return server


def _sock_connect(original: Callable[..., Any]) -> Callable[..., Any]:
    async def sock_connect(self: asyncio.AbstractEventLoop, sock: Any, address: Any) -> None:
        if _is_shim(sock) and isinstance(address, tuple) and _needs_lookup(address[0]):
            # uvloop resolves names with libuv's resolver, which never sees the
            # stack's names: resolve through the (patched) socket module instead.
            infos = await self.run_in_executor(
                None, socket.getaddrinfo, address[0], address[1], sock.family, sock.type
            )
            address = (infos[0][4][0], *address[1:])
        await original(self, sock, address)

    sock_connect.__doc__ = original.__doc__
    return sock_connect


def _needs_lookup(host: Any) -> bool:
    if not isinstance(host, str):
        return False
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return True
    return False


_WRAPPERS = {
    "sock_connect": _sock_connect,
    "create_connection": _create_connection,
    "create_server": _create_server,
    "connect_accepted_socket": _connect_accepted_socket,
}


def uvloop_patches() -> list[tuple[Any, str, Any]]:
    """``(owner, name, replacement)`` for ``uvloop.Loop``; empty without uvloop."""
    if importlib.util.find_spec("uvloop") is None:
        return []
    import uvloop

    owner = uvloop.Loop
    patches: list[tuple[Any, str, Any]] = []
    for name, wrap in _WRAPPERS.items():
        original = getattr(owner, name, None)
        # Installing twice must wrap uvloop's method, not the first wrapper.
        original = getattr(original, "_netshim_original", original)
        if original is not None:
            wrapper = wrap(original)
            wrapper._netshim_original = original  # type: ignore[attr-defined]
            patches.append((owner, name, wrapper))
    return patches
