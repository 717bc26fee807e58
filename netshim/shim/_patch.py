"""install(), uninstall(), installed() and acting_as(): patching the socket module, reversibly.

``install(stack)`` replaces, in the running interpreter:

* ``socket.socket`` with :class:`ShimSocket` (``socket.SocketType`` stays
  ``_socket.socket``, of which every socket, shim or not, is an instance);
* ``socket.getaddrinfo``, ``gethostbyname``, ``gethostbyname_ex``,
  ``gethostbyaddr``, ``getnameinfo``, ``gethostname`` and ``sethostname``
  with functions answered by the stack;
* ``ssl.SSLContext.sslsocket_class`` with :class:`ShimSSLSocket`, and
  ``SSLContext.wrap_socket`` with one that gives a program's own
  ``sslsocket_class`` ShimSSLSocket's behaviour when it wraps a shim socket;
* the few methods trio's socket class takes unbound (see :mod:`._trio`);
* ``create_connection``, ``create_server``, ``connect_accepted_socket`` and
  ``sock_connect`` of ``uvloop.Loop``, for shim sockets only (see :mod:`._uvloop`).

asyncio, anyio, trio, ``http.client``, urllib3, ``socketserver`` and the rest
look these names up when they use them, so they follow without patches of
their own.  Everything is recorded and ``uninstall()`` puts back the very same
objects; installing again only changes the stack.  Sockets created before
``install()`` stay real sockets and keep working; shim sockets created while
installed keep working after ``uninstall()``.  The patch is process-wide, so
every thread sees it; :func:`acting_as` chooses, per context (thread or
task), which stack new sockets use.
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from ..stack import Stack
from . import _names
from ._socket import ShimSocket
from ._trio import register_hooks, trio_patches
from ._uvloop import uvloop_patches

try:
    import ssl

    from ._ssl import ShimSSLSocket, shim_wrap_socket
except ImportError:  # Pyodide ships no ssl module: there is no SSLSocket to replace.
    ssl = None  # type: ignore[assignment]

__all__ = ["acting_as", "current_acting_stack", "install", "installed", "is_installed", "uninstall"]

_lock = threading.RLock()
_stack: Stack | None = None
_mode = "socket"
_saved: dict[tuple[Any, str], Any] = {}
# Recorded for a name the class inherits: restoring it means deleting ours.
_ABSENT = object()
_acting: ContextVar[Stack | None] = ContextVar("netshim_acting_stack", default=None)

_SOCKET_NAMES = {
    "socket": ShimSocket,
    "getaddrinfo": _names.getaddrinfo,
    "gethostbyname": _names.gethostbyname,
    "gethostbyname_ex": _names.gethostbyname_ex,
    "gethostbyaddr": _names.gethostbyaddr,
    "getnameinfo": _names.getnameinfo,
    "gethostname": _names.gethostname,
}
if hasattr(socket, "sethostname"):
    _SOCKET_NAMES["sethostname"] = _names.sethostname


def _replace(owner: Any, name: str, value: Any) -> None:
    key = (owner, name)
    if key not in _saved:
        _saved[key] = (
            owner.__dict__.get(name, _ABSENT) if isinstance(owner, type) else getattr(owner, name)
        )
    setattr(owner, name, value)


def install(stack: Stack | None = None, *, mode: str = "auto") -> Stack:
    """Route every AF_INET/AF_INET6 socket of the process through ``stack``.

    Without ``stack``, the one the environment names (``NETSHIM_STACK``,
    else ``ALL_PROXY`` / ``NO_PROXY``; see :func:`netshim.stack_from_url`),
    else the host network (:class:`netshim.HostStack`).
    Calling it again while installed switches the stack and changes nothing
    else.  Returns the stack.

    ``mode="socket"`` patches the socket module (shim sockets on socketpairs,
    see the module documentation); ``mode="loop"`` only replaces the asyncio
    event loop's network methods with ones that need no file descriptor
    (:mod:`netshim.aio`).  ``"auto"`` is ``"loop"`` where there is no
    socketpair (Pyodide) and ``"socket"`` elsewhere.  In Pyodide ``"loop"``
    also puts :class:`netshim.aio.StackSocket` in place of ``socket.socket``
    (the synchronous API; see :mod:`netshim.aio._sync`).
    """
    global _stack, _mode
    if mode == "auto":
        mode = "loop" if sys.platform == "emscripten" else "socket"
    if mode not in ("socket", "loop"):
        raise ValueError(f"install() mode is 'auto', 'socket' or 'loop', not {mode!r}")
    if stack is None:
        from .._config import stack_from_environment

        stack = stack_from_environment()
    if not isinstance(stack, Stack):
        raise TypeError(f"install() needs a netshim Stack, not {type(stack).__name__}")
    from ..aio import install_loop_hooks, uninstall_loop_hooks

    with _lock:
        _stack = stack
        _mode = mode
        if mode == "loop":
            _restore()
            install_loop_hooks(stack)
            _httpcore_on_views()
            if sys.platform == "emscripten":
                # Pyodide's own sockets reach nothing; ours run on the stack.
                from ..aio._sync import SYNC_SOCKET_NAMES

                for name, value in SYNC_SOCKET_NAMES.items():
                    _replace(socket, name, value)
                _urllib3_on_sockets(stack)
            return stack
        uninstall_loop_hooks()
        for name, value in _SOCKET_NAMES.items():
            _replace(socket, name, value)
        if ssl is not None:
            _replace(ssl.SSLContext, "sslsocket_class", ShimSSLSocket)
            _replace(ssl.SSLContext, "wrap_socket", shim_wrap_socket)
        for owner, name, value in trio_patches() + uvloop_patches():
            _replace(owner, name, value)
        if (threading.Thread, "start") not in _saved:
            _replace(threading.Thread, "start", _thread_start_acting(threading.Thread.start))
    register_hooks()
    return stack


def _urllib3_on_sockets(stack: Stack) -> None:
    """In Pyodide with JSPI, urllib3 (requests) connects through netshim's sockets.

    urllib3 2.2+ swaps its connection classes, as it is imported in Pyodide,
    for ones that send each request through the host's ``fetch``: CORS rules
    apply and netshim's stack is never asked.  Where synchronous sockets work
    (JSPI, or a FetchStack that blocks by itself: synchronous XHR in a Web
    Worker), put its own socket-speaking classes back for as long as netshim
    is installed (``uninstall()`` restores the fetch ones).  Otherwise a
    blocking socket could not wait, so urllib3's fetch backend stays.
    """
    import importlib.util

    from ..aio._sync import can_block

    blocks = can_block() or getattr(stack, "blocking_backend", None) is not None
    if not blocks or importlib.util.find_spec("urllib3") is None:
        return
    try:
        import urllib3.connection as connection
        import urllib3.connectionpool as pools
    except Exception:  # a broken install: leave urllib3 as it is
        return
    # connectionpool keeps the classes it imported before urllib3 swapped them.
    native_http = getattr(pools, "HTTPConnection")  # noqa: B009 - not re-exported
    native_https = getattr(pools, "HTTPSConnection")  # noqa: B009
    if pools.HTTPConnectionPool.ConnectionCls is native_http:
        return
    _replace(pools.HTTPConnectionPool, "ConnectionCls", native_http)
    _replace(pools.HTTPSConnectionPool, "ConnectionCls", native_https)
    _replace(connection, "HTTPConnection", native_http)
    _replace(connection, "HTTPSConnection", native_https)
    _replace(connection, "VerifiedHTTPSConnection", native_https)
    native_wait = getattr(connection, "wait_for_read")  # noqa: B009 - not re-exported

    def wait_for_read(sock: Any, timeout: float | None = None) -> bool:
        # urllib3 asks select whether a pooled connection was dropped; netshim's
        # sockets here have no descriptor (-1), so one is taken as alive.
        if sock.fileno() < 0:
            return False
        return bool(native_wait(sock, timeout))

    _replace(connection, "wait_for_read", wait_for_read)


def _httpcore_on_views() -> None:
    """httpcore (httpx) keeps pooled connections the server has not closed.

    It asks select whether an idle connection is readable (a server's close
    would be), and takes a socket without a descriptor for a closed one, so
    over the loop hooks' transports (``fileno()`` -1) it opened a connection
    per request.  Their socket view knows when its stream ended: ask it.
    """
    import importlib.util

    if importlib.util.find_spec("httpcore") is None:
        return
    try:
        import httpcore._backends.anyio as backend
    except Exception:  # a broken install: leave httpcore as it is
        return
    from ..aio._transports import StackSocketView

    native = getattr(backend, "is_socket_readable")  # noqa: B009 - not re-exported

    def is_socket_readable(sock: Any) -> bool:
        if isinstance(sock, StackSocketView):
            return sock.ended
        return bool(native(sock))

    _replace(backend, "is_socket_readable", is_socket_readable)


def uninstall() -> None:
    """Put back every original; idempotent."""
    global _stack
    from ..aio import uninstall_loop_hooks

    with _lock:
        _restore()
        uninstall_loop_hooks()
        _stack = None


def _restore() -> None:
    for (owner, name), value in reversed(list(_saved.items())):
        if value is _ABSENT:
            delattr(owner, name)
        else:
            setattr(owner, name, value)
    _saved.clear()


def is_installed() -> bool:
    return _stack is not None


@contextmanager
def installed(stack: Stack | None = None, *, mode: str = "auto") -> Iterator[Stack]:
    """``install(stack, mode=mode)`` for the ``with`` block, then restore what was there before.

    Nested blocks restore the outer stack (and mode) when they end.
    """
    previous, previous_mode = _stack, _mode
    result = install(stack, mode=mode)
    try:
        yield result
    finally:
        if previous is None:
            uninstall()
        else:
            install(previous, mode=previous_mode)


@contextmanager
def acting_as(stack: Stack) -> Iterator[Stack]:
    """Inside the block (this thread or task, and threads it starts), new sockets use ``stack``.

    With a VirtualNetwork this lets one process be several machines: servers
    on ``web.internal``, clients on ``laptop``.  Sockets keep the stack they
    were created (or bound) on.
    """
    if not isinstance(stack, Stack):
        raise TypeError(f"acting_as() needs a netshim Stack, not {type(stack).__name__}")
    token = _acting.set(stack)
    try:
        yield stack
    finally:
        _acting.reset(token)


def _thread_start_acting(start: Any) -> Any:
    """``Thread.start`` that carries :func:`acting_as` into the new thread.

    A thread starts with an empty context, so without this a server that
    hands each request to a thread (``socketserver.ThreadingMixIn``) would
    make its handlers' new sockets and lookups on the installed stack
    instead of its own host.  Only the acting stack is carried, the way
    Python 3.14's ``thread_inherit_context`` carries the whole context; a
    pool's worker keeps the stack of the block that started it.
    """

    def start_acting(self: threading.Thread) -> None:
        acting = _acting.get()
        if acting is not None:
            run = self.run

            def run_acting() -> None:
                _acting.set(acting)
                run()

            self.run = run_acting  # type: ignore[method-assign]
        start(self)

    return start_acting


def current_acting_stack() -> Stack:
    """The stack for new shim sockets here; ``RuntimeError`` if netshim is not installed."""
    stack = _acting.get()
    if stack is not None:
        return stack
    if _stack is None:
        raise RuntimeError("netshim is not installed: call netshim.install(stack) first")
    return _stack
