"""What netshim knows about one shim socket, shared by its duplicates.

A :class:`SocketState` holds the virtual side of a socket: its family and
kind, the stack it runs on, its phase (new, bound, listening, connecting,
connected, failed), its virtual addresses, options, and the stack objects the
engine drives for it.  The program's file descriptor is one end of a
socketpair; ``socket.dup()``, ``detach()`` and ``socket.socket(fileno=...)``
find the state again through the registry, keyed by the pair end's inode,
which is read only when a lookup first needs it: most sockets are never
looked up by descriptor, and reading an inode is a system call.

Registering and unregistering take no lock (they run for every socket, and
a lock costs more than the rest of them); each is one atomic change of a
set or dict under the GIL, and the rare indexing, which does take the lock,
checks afterwards whether the state it indexed left meanwhile.
"""

from __future__ import annotations

import _socket
import enum
import os
import socket
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import anyio

    from ..stack import Stack, TcpListener, TcpStream, UdpSocket
    from ._engine import Engine

__all__ = ["Phase", "SocketState", "lookup_state"]


class Phase(enum.Enum):
    NEW = "new"
    BOUND = "bound"
    LISTENING = "listening"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    FAILED = "failed"
    CLOSED = "closed"


# Linux defaults, reported by getsockopt before anything was set.
_TCP_DEFAULTS: dict[tuple[int, int], int] = {
    (socket.SOL_SOCKET, socket.SO_RCVBUF): 131072,
    (socket.SOL_SOCKET, socket.SO_SNDBUF): 16384,
}
_UDP_DEFAULTS: dict[tuple[int, int], int] = {
    (socket.SOL_SOCKET, socket.SO_RCVBUF): 212992,
    (socket.SOL_SOCKET, socket.SO_SNDBUF): 212992,
}

_registry: dict[int, SocketState] = {}
# Registered states whose inode was not read yet (see _index_unindexed).
_unindexed: set[SocketState] = set()
_registry_lock = threading.Lock()


def _new_registry_lock() -> None:
    # Another thread may have held the lock when fork() copied it, held.
    global _registry_lock
    _registry_lock = threading.Lock()


def _mark_shared_by_fork() -> None:
    # Both processes now hold every open shim socket (the child's copies are
    # marked too: the flag is copied with the memory).
    for state in [*_registry.values(), *_unindexed]:
        state.shared_by_fork = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_mark_shared_by_fork, after_in_child=_new_registry_lock)


def _inode(fd: int) -> int | None:
    try:
        return os.fstat(fd).st_ino
    except OSError:
        return None


def _nobody() -> None:
    return None


def _forget(inode: int, state: SocketState) -> None:
    """Take ``state`` out of the registry at ``inode``, unless another state is there now."""
    if _registry.get(inode) is state:
        # pop(), not del: another thread may be forgetting it at the same time.
        _registry.pop(inode, None)


def lookup_state(fd: int) -> SocketState | None:
    """The state of the shim socket whose pair end ``fd`` is, if any."""
    if not _registry and not _unindexed:
        return None
    inode = _inode(fd)
    if inode is None:
        return None
    state = _registry.get(inode)
    if state is None and _unindexed:
        _index_unindexed()
        state = _registry.get(inode)
    return state


def _index_unindexed() -> None:
    """Read the inode of every registered state's descriptor not read yet.

    A state unregistered meanwhile (its socket closing) is never left in
    the registry (see :meth:`SocketState._index_locked`).  A state whose
    descriptor has no socket object now (accept() is making one) stays to be
    read later.
    """
    with _registry_lock:
        for state in list(_unindexed):
            user = state.user_socket()
            if user is None:
                _unindexed.discard(state)  # its socket is gone, and its descriptor
                continue
            fd = user.fileno()
            if fd >= 0:
                state._index_locked(fd)


class SocketState:
    """The virtual side of one shim socket.

    Attributes that start the same for every socket are class attributes
    until a socket changes them: a connection makes two states, and setting
    thirty attributes each was a measurable share of a connect.
    """

    phase = Phase.NEW
    # What the program asked for (0, or IPPROTO_TCP/UDP as getaddrinfo
    # gives it): reported back by ``sock.proto``, as a real socket does.
    proto = 0
    local: tuple[str, int] | None = None
    remote: tuple[str, int] | None = None
    bind_request: tuple[str, int] | None = None
    error = 0
    engine_end: _socket.socket | None = None
    # Joined directly to an in-process peer (see _engine.establish and
    # _engine.join_accepted).
    splice_pending = False
    splice_partner: SocketState | None = None
    inode: int | None = None
    stream: TcpStream | None = None
    listener: TcpListener | None = None
    udp: UdpSocket | None = None
    backlog = 128
    room_event: anyio.Event | None = None
    # A listener whose engine end serve_listener owns (and closes).
    serving = False
    pump_scope: Any = None
    filler = 0
    original_sndbuf = 0
    closed_by_user = False
    upstream_done = False
    abort_on_close = False
    # The peer reset the connection: as on Linux, whose socket is then
    # CLOSED, getpeername() says ENOTCONN while unread data stays readable
    # (ssl's check for data that arrived before a handshake relies on it).
    peer_reset = False
    # The descriptor was open when the process forked: another process may
    # hold the same socket, so closing ours must not end the connection.
    shared_by_fork = False
    # A non-blocking connect is under way or done and no second connect()
    # has asked yet (see ShimSocket._connect).
    report_connected = False
    # UDP data sent with MSG_MORE, waiting for the rest of its datagram.
    corked = b""
    # The socket closed (or its descriptor was taken as another kind): the
    # registry must not find it again (see _index_locked).
    unregistered = False
    # Options the program set, over its kind's Linux defaults: copied from
    # those on first use (see options), as most sockets never set one.
    _options: dict[tuple[int, int], Any] | None = None
    # A listening socket's connections waiting for accept(): their ends,
    # states, and whether the descriptor went with the announcement (see
    # _engine.join_accepted).  Made by listen().
    accept_queue: deque[tuple[_socket.socket, SocketState, bool]]

    def __init__(self, family: int, kind: int, stack: Stack, engine: Engine) -> None:
        # Converted only when needed: an enum's call is slow.
        self.family: socket.AddressFamily = (
            family if family.__class__ is socket.AddressFamily else socket.AddressFamily(family)
        )
        self.kind: socket.SocketKind = (
            kind if kind.__class__ is socket.SocketKind else socket.SocketKind(kind)
        )
        self.stack = stack
        self.engine = engine
        # The program's socket object for this state (the accepted end, until accepted).
        self.user_socket: Callable[[], _socket.socket | None] = _nobody

    def __repr__(self) -> str:
        return f"<SocketState {self.kind.name} {self.phase.value} {self.local} -> {self.remote}>"

    @property
    def is_tcp(self) -> bool:
        return self.kind == socket.SOCK_STREAM

    @property
    def options(self) -> dict[tuple[int, int], Any]:
        """Every option's value as the program set it or Linux starts it."""
        options = self._options
        if options is None:
            options = self._options = dict(
                _TCP_DEFAULTS if self.kind == socket.SOCK_STREAM else _UDP_DEFAULTS
            )
        return options

    def register(self, user: socket.socket) -> None:
        """Make the state findable from ``user``'s descriptor (read when first needed)."""
        self.user_socket = weakref.ref(user)
        _unindexed.add(self)

    def index(self, fd: int) -> None:
        """Make the state findable from ``fd``, its pair end, now (before it loses its socket)."""
        with _registry_lock:
            self._index_locked(fd)

    def _index_locked(self, fd: int) -> None:
        _unindexed.discard(self)
        inode = self.inode = _inode(fd)
        if inode is not None:
            _registry[inode] = self
            if self.unregistered:
                # unregister() ran meanwhile, in another thread, and may have
                # looked for the inode before it was set: take it out here.
                _forget(inode, self)

    def unregister(self) -> None:
        # The flag first: an indexing under way then either sees it or has
        # set the inode by the time it is read below.
        self.unregistered = True
        _unindexed.discard(self)
        inode = self.inode
        if inode is not None:
            _forget(inode, self)

    @classmethod
    def for_inherited_connection(
        cls, listener: SocketState, fd: int, local: tuple[str, int], remote: tuple[str, int]
    ) -> SocketState:
        """A connection accepted through a listener inherited across fork(), in the child.

        The parent's engine made it and pumps its pair; here it is a socket
        shared by fork: data flows, closing is local, changing it is refused.
        """
        state = cls(listener.family, socket.SOCK_STREAM, listener.stack, listener.engine)
        state.phase = Phase.CONNECTED
        state.local = local
        state.remote = remote
        state.shared_by_fork = True
        with _registry_lock:
            state._index_locked(fd)
        return state

    @classmethod
    def for_accepted(
        cls,
        listener: SocketState,
        stream: TcpStream,
        engine_end: _socket.socket | None,
        user_end: _socket.socket,
    ) -> SocketState:
        state = cls(listener.family, socket.SOCK_STREAM, listener.stack, listener.engine)
        state.phase = Phase.CONNECTED
        state.stream = stream
        state.local = stream.local_address
        state.remote = stream.remote_address
        state.engine_end = engine_end
        queued = user_end
        state.user_socket = lambda: queued
        _unindexed.add(state)
        return state
