"""Servers as virtual hosts: run an app or handler on ``host:port`` in one line.

:func:`start_server` runs a server of one of several kinds on a
:class:`~netshim.VirtualHost` of the installed network, in a thread of its
own, acting as that host (``netshim.acting_as``), so that the server uses the
socket shim exactly as it would use real sockets:

* an aiohttp ``web.Application`` (run by aiohttp's own ``AppRunner``);
* an ASGI application ``async (scope, receive, send)`` (HTTP/1.1 through
  :mod:`._asgi`);
* an asyncio streams handler ``async (reader, writer)`` (``asyncio.start_server``);
* an anyio handler ``async (stream)`` (``anyio.create_tcp_listener``);
* a WSGI application ``(environ, start_response)`` (``wsgiref``);
* a ``socketserver.BaseRequestHandler`` subclass: TCP, or UDP for a
  ``DatagramRequestHandler``;
* for :func:`start_udp_server`, a function ``(data, address) -> reply or None``.

Each server listens on every address of the host, both families, as a
server bound to ``""`` or ``"::"`` would.  A running server is a
:class:`Server`; ``stop()`` ends it and joins its thread.  Servers are
threads rather than tasks of the test's event loop so that one line works in
synchronous tests and under asyncio and trio alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import socketserver
import threading
from collections.abc import Awaitable, Callable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from ..shim import acting_as
from ..stack import Stack

__all__ = ["Server", "UdpHandler", "start_server", "start_udp_server"]

UdpHandler = Callable[[bytes, Any], "bytes | None"]

# How long start_server waits for a server to listen before giving up.
START_TIMEOUT = 10.0
# How long stop() waits for a server thread to finish its connections.
STOP_TIMEOUT = 5.0


class Server:
    """A server running on a virtual host in its own thread."""

    def __init__(self, kind: str, host: str, port: int) -> None:
        self.kind = kind
        self.host = host
        self.port = port
        self._stop: Callable[[], None] = lambda: None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<netshim Server {self.kind} on {self.host}:{self.port}>"

    def stop(self) -> None:
        """Stop serving and wait for the thread to end; idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop()
        thread.join(STOP_TIMEOUT)


def _is_async(app: Any) -> bool:
    return inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(
        getattr(app, "__call__", None)  # noqa: B004 - callable objects with an async __call__
    )


def _arity(app: Any) -> int:
    try:
        parameters = inspect.signature(app).parameters.values()
    except (TypeError, ValueError):
        return -1
    return sum(
        1
        for parameter in parameters
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
        and parameter.default is parameter.empty
    )


def _kind(app: Any) -> str:
    if isinstance(app, type) and issubclass(app, socketserver.BaseRequestHandler):
        if issubclass(app, socketserver.DatagramRequestHandler):
            return "socketserver-udp"
        return "socketserver"
    if type(app).__module__.startswith("aiohttp.") and type(app).__name__ == "Application":
        return "aiohttp"
    if _is_async(app):
        arity = _arity(app)
        if arity == 3:
            return "asgi"
        if arity == 2:
            return "asyncio"
        if arity == 1:
            return "anyio"
    elif callable(app) and _arity(app) == 2:
        return "wsgi"
    raise TypeError(
        f"netshim cannot serve {app!r}: expected an aiohttp Application, an ASGI app "
        "async (scope, receive, send), an asyncio handler async (reader, writer), an anyio "
        "handler async (stream), a WSGI app (environ, start_response) or a socketserver "
        "request handler class"
    )


def start_server(stack: Stack, host: str, port: int, app: Any, *, ssl: Any = None) -> Server:
    """Serve ``app`` on ``port`` of ``stack`` (a virtual host called ``host``).

    ``ssl`` is an ``ssl.SSLContext`` for TLS (asyncio, anyio, aiohttp and
    ASGI servers).  Returns once the server listens; raises what the server
    raised while starting (``OSError(EADDRINUSE)`` ...).
    """
    kind = _kind(app)
    server = Server(kind, host, port)
    if kind in ("socketserver", "socketserver-udp", "wsgi"):
        _start_socketserver(server, stack, kind, app)
    else:
        _start_async(server, stack, kind, app, ssl)
    return server


def start_udp_server(stack: Stack, host: str, port: int, handler: UdpHandler) -> Server:
    """Answer datagrams on ``port``: ``handler(data, address)`` returns a reply or ``None``."""

    class Handler(socketserver.DatagramRequestHandler):
        def handle(self) -> None:
            reply = handler(self.rfile.read(), self.client_address)
            if reply is not None:
                self.wfile.write(reply)

    server = Server("udp", host, port)
    _start_socketserver(server, stack, "socketserver-udp", Handler)
    return server


# -- socketserver and WSGI: a serve_forever thread ------------------------------------


class _TCPServer(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    allow_reuse_address = True
    netshim_stack: Stack | None = None

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # A new thread starts with an empty context: make the handler act as
        # the server's host too, so its own lookups and sockets come from there.
        assert self.netshim_stack is not None
        with acting_as(self.netshim_stack):
            super().process_request_thread(request, client_address)


class _UDPServer(socketserver.UDPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True


class _WSGIServer(WSGIServer):
    address_family = socket.AF_INET6


class _QuietWSGIRequestHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        # wsgiref logs each request to stderr, which would clutter test output.
        pass


def _start_socketserver(server: Server, stack: Stack, kind: str, app: Any) -> None:
    with acting_as(stack):
        # "::" without IPV6_V6ONLY listens on both families, as Linux does.
        base: socketserver.BaseServer
        if kind == "wsgi":
            wsgi = _WSGIServer(("::", server.port), _QuietWSGIRequestHandler)
            wsgi.set_app(app)
            base = wsgi
        elif kind == "socketserver-udp":
            base = _UDPServer(("::", server.port), app)
        else:
            tcp = _TCPServer(("::", server.port), app)
            tcp.netshim_stack = stack
            base = tcp

    def run() -> None:
        with acting_as(stack):
            base.serve_forever(poll_interval=0.05)

    def stop() -> None:
        base.shutdown()
        base.server_close()

    server._stop = stop
    server._thread = threading.Thread(target=run, name=f"netshim {server!r}", daemon=True)
    server._thread.start()


# -- async servers: an event loop in a thread ---------------------------------------------


def _start_async(server: Server, stack: Stack, kind: str, app: Any, ssl: Any) -> None:
    started = threading.Event()
    failure: list[BaseException] = []
    loop_box: list[asyncio.AbstractEventLoop] = []
    stop_event_box: list[asyncio.Event] = []

    async def main() -> None:
        stop_event = asyncio.Event()
        stop_event_box.append(stop_event)
        loop_box.append(asyncio.get_running_loop())
        try:
            close = await _open(kind, app, server.port, ssl)
        except BaseException as exc:
            failure.append(exc)
            started.set()
            return
        started.set()
        try:
            await stop_event.wait()
        finally:
            await close()

    def run() -> None:
        with acting_as(stack):
            asyncio.run(main())

    def stop() -> None:
        if loop_box and stop_event_box:
            with contextlib.suppress(RuntimeError):
                loop_box[0].call_soon_threadsafe(stop_event_box[0].set)

    server._stop = stop
    server._thread = threading.Thread(target=run, name=f"netshim {server!r}", daemon=True)
    server._thread.start()
    if not started.wait(START_TIMEOUT):
        raise TimeoutError(f"{server!r} did not start listening within {START_TIMEOUT} s")
    if failure:
        server._thread.join(STOP_TIMEOUT)
        server._thread = None
        raise failure[0]


async def _open(kind: str, app: Any, port: int, ssl: Any) -> Callable[[], Awaitable[None]]:
    """Start listening; returns the coroutine function that stops the server."""
    if kind == "aiohttp":
        from aiohttp import web

        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, None, port, ssl_context=ssl).start()
        return runner.cleanup

    if kind == "anyio":
        import anyio

        listener = await anyio.create_tcp_listener(local_port=port)
        if ssl is not None:
            from anyio.streams.tls import TLSListener

            listener = TLSListener(listener, ssl)  # type: ignore[assignment]

        async def serve_one(stream: Any) -> None:
            # anyio's serve() leaves closing the stream to the handler.
            async with stream:
                await app(stream)

        task = asyncio.ensure_future(listener.serve(serve_one))

        async def close_anyio() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await listener.aclose()

        return close_anyio

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await app(reader, writer)
        finally:
            # A handler that returns without closing would leak the
            # connection until the interpreter notices, with a ResourceWarning.
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    lifespan = None
    if kind == "asgi":
        from ._asgi import Lifespan, asgi_connection

        lifespan = Lifespan(app)
        await lifespan.startup()

        async def asgi_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asgi_connection(app, reader, writer, ssl is not None)

    chosen = handler if lifespan is None else asgi_handler
    streams_server = await asyncio.start_server(chosen, None, port, ssl=ssl)

    async def close_streams() -> None:
        streams_server.close()
        # Before 3.12 wait_closed() returns at once; from 3.12 it waits for
        # every client, which close_clients() (3.13) can hurry along.
        close_clients = getattr(streams_server, "close_clients", None)
        if close_clients is not None:
            close_clients()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(streams_server.wait_closed(), STOP_TIMEOUT)
        if lifespan is not None:
            await lifespan.shutdown()

    return close_streams
