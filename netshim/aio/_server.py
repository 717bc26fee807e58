"""StackServer: what ``loop.create_server`` returns when the listeners are a stack's.

It behaves as ``asyncio.Server`` does (Python 3.12 semantics): ``close()``
stops accepting and closes the listeners, leaving accepted connections
alone; ``wait_closed()`` returns once the server is closed *and* its last
connection is gone; ``serve_forever()`` serves until cancelled, then closes;
``close_clients()`` and ``abort_clients()`` end the connections (3.13).
``sockets`` are :class:`StackSocketView` objects, so
``server.sockets[0].getsockname()`` gives the bound address as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any

import anyio

from ..stack import TcpListener, TcpStream
from ._transports import StackSocketView, StackStreamTransport, _spawn, family_of

__all__ = ["StackServer"]

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


class ServesForever(asyncio.AbstractServer):
    """``serve_forever()`` as ``asyncio.Server`` has it: serve until cancelled, then close.

    A subclass sets ``_loop``, starts accepting in :meth:`_start` (at once,
    without yielding, so that a cancellation always finds the server
    serving and closes it), says whether it is closed in :meth:`_is_closed`
    and calls :meth:`_stop_serving_forever` from ``close()``.
    """

    _loop: asyncio.AbstractEventLoop
    _forever: asyncio.Future[None] | None = None

    def _start(self) -> None:
        raise NotImplementedError

    def _is_closed(self) -> bool:
        raise NotImplementedError

    async def serve_forever(self) -> None:
        if self._forever is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._is_closed():
            raise RuntimeError(f"server {self!r} is closed")
        self._start()
        self._forever = self._loop.create_future()
        try:
            await self._forever
        except asyncio.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._forever = None

    def _stop_serving_forever(self) -> None:
        if self._forever is not None and not self._forever.done():
            self._forever.cancel()


class StackServer(ServesForever):
    """An ``asyncio.AbstractServer`` over one or more :class:`~netshim.stack.TcpListener`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listeners: list[TcpListener],
        protocol_factory: ProtocolFactory,
        *,
        ssl_context: Any = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> None:
        self._loop = loop
        self._listeners = listeners
        self._protocol_factory = protocol_factory
        self._ssl_context = ssl_context
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._ssl_shutdown_timeout = ssl_shutdown_timeout
        self._serving = False
        self._closed = False
        self._accepting: list[asyncio.Task[None]] = []
        self._transports: set[StackStreamTransport] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._views = tuple(
            StackSocketView(
                family_of(listener.local_address), socket.SOCK_STREAM, listener.local_address
            )
            for listener in listeners
        )

    def __repr__(self) -> str:
        return f"<StackServer sockets={self.sockets!r}>"

    @property
    def sockets(self) -> tuple[Any, ...]:
        return () if self._closed else self._views

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        if self._closed:
            raise RuntimeError(f"server {self!r} is closed")
        self._start()
        await asyncio.sleep(0)

    def _start(self) -> None:
        if self._serving:
            return
        self._serving = True
        for listener in self._listeners:
            self._accepting.append(
                _spawn(self._loop, self._accept_loop(listener), "netshim server accept")
            )

    def _is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._serving = False
        for task in self._accepting:
            task.cancel()
        self._accepting.clear()
        _spawn(self._loop, self._close_listeners(), "netshim server close")
        self._stop_serving_forever()
        self._wake_if_done()

    async def _close_listeners(self) -> None:
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                await listener.aclose()

    def close_clients(self) -> None:
        for transport in list(self._transports):
            transport.close()

    def abort_clients(self) -> None:
        for transport in list(self._transports):
            transport.abort()

    async def wait_closed(self) -> None:
        if self._closed and not self._transports:
            return
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter

    def _wake_if_done(self) -> None:
        if not self._closed or self._transports:
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _lost(self, transport: StackStreamTransport) -> None:
        self._transports.discard(transport)
        self._wake_if_done()

    async def _accept_loop(self, listener: TcpListener) -> None:
        while True:
            try:
                stream = await listener.accept()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            except OSError as exc:
                # A real accept loop logs and goes on (EMFILE, ECONNABORTED ...).
                self._loop.call_exception_handler(
                    {"message": "accept failed on a netshim listener", "exception": exc}
                )
                continue
            try:
                self._connection(stream)
            except Exception as exc:
                self._loop.call_exception_handler(
                    {"message": "protocol factory failed on a netshim server", "exception": exc}
                )
                await stream.abort()

    def _connection(self, stream: TcpStream) -> None:
        protocol = self._protocol_factory()
        if self._ssl_context is not None:
            from ._hooks import wrap_ssl

            waiter: asyncio.Future[None] = self._loop.create_future()
            # A failed handshake is the client's problem; the SSL protocol
            # already reports it, so only consume the outcome here.
            waiter.add_done_callback(lambda done: done.cancelled() or done.exception())
            protocol = wrap_ssl(
                self._loop,
                protocol,
                self._ssl_context,
                waiter,
                server_side=True,
                server_hostname=None,
                handshake_timeout=self._ssl_handshake_timeout,
                shutdown_timeout=self._ssl_shutdown_timeout,
            )
        transport = StackStreamTransport(self._loop, stream, protocol, on_lost=self._lost)
        self._transports.add(transport)
