"""The engine: one background thread that drives the stack on behalf of shim sockets.

A :class:`~netshim.shim.ShimSocket` owns one end of an OS ``socketpair``; the
engine owns the other end and moves bytes between it and a stream, listener
or datagram socket of the stack.  All stack objects live on the engine's
event loop (anyio on asyncio), so the stack sees one loop whatever threads
and event loops the program itself uses; user threads hand it work through
one queue (see ``Engine._submit``), waiting for the result or not.

What the engine does to the pair is how the program sees the network:

* data from the stack is written into the pair (the user's ``recv`` and
  ``select`` see it natively); the peer's FIN becomes ``shutdown(SHUT_WR)``;
* a reset from the stack is turned into a real ``ECONNRESET`` on the user's
  end: the engine leaves one unread byte in its own end and closes it, and
  Linux reports a reset to the other end of an AF_UNIX stream pair closed
  with unread data;
* a pending connect keeps the user's end unwritable (its send buffer shrunk
  and filled) until the stack answers, so ``select``/``epoll`` say
  "writable" exactly when a real socket would;
* a listener's end becomes readable when a connection is waiting: the engine
  passes each queued connection's descriptor through it (SCM_RIGHTS) and
  ``accept`` takes one, in whichever process holds the listener (a
  connection joined in ``connect()`` is announced without one: its end waits
  in the listener's queue, see ``join_accepted``).
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import contextvars
import errno
import logging
import os
import select
import socket
import struct
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from .._ip_header import DEFAULT_HEADER, CarriesIpHeader, IpHeader
from ..stack import StreamAttribute, TcpListener, TcpStream, UdpSocket
from ._state import Phase, SocketState

__all__ = ["Engine", "get_engine"]

_logger = logging.getLogger("netshim.engine")

T = TypeVar("T")

# How long a close with SO_LINGER 0 lets the pump send what the program wrote
# before it (see close_tcp): Linux resets at once, having sent at send() time
# what the window allowed; a peer whose window is full must not delay it long.
ABORT_GRACE = 0.5

# How much one engine read takes from a pair: large enough for bulk transfers
# to move in few calls, small enough that one busy socket cannot starve others.
PUMP_CHUNK = 256 * 1024

# Where there is no epoll (see Engine.hold): how long the end a closed joined
# socket leaves open may wait before the engine watches it.  Most peers close
# soon after, which releases the end in their own thread; one wake of the
# engine then covers every end held in this time instead of one wake per
# connection.  It is the longest a peer's send after the close can go
# unanswered by a reset, a fraction of the 40 ms Linux waits for a delayed ACK.
HOLD_WATCH_DELAY = 0.002
_EPOLL = getattr(select, "epoll", None)


class Engine:
    """The background thread and its event loop; shared by every shim socket."""

    def __init__(self) -> None:
        # Set in a child process for the engine its parent ran (see _after_fork).
        self.left_behind = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.thread_id: int | None = None
        # Stack listeners that a shim listening socket serves (the objects, not
        # their ids, so that a freed object's id can never match), with the
        # listening socket's state.
        self.shim_listeners: dict[object, SocketState] = {}
        # Guards every listening socket's accept queue and announcements,
        # which connect() (joining in the caller's thread), accept() and
        # the engine's serve_listener all change.
        self.queue_lock = threading.Lock()
        # Descriptors of closed joined sockets not watched yet: state -> fd (see hold).
        self._held: dict[SocketState, int] = {}
        self._held_watch_due = False
        # The kernel's watch over the held ends, where epoll exists: each end
        # is registered when held, and the engine loop wakes only when one
        # of them becomes readable.
        self._held_events: select.epoll | None = None
        # Connected shim sockets whose peer is a shim socket still to be
        # accepted: server stream -> (client state, listener).
        self.splice_waiting: dict[object, tuple[SocketState, object]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # The engine loop's own context, in which every engine task starts.
        self._context = contextvars.Context()
        # Every task the engine runs (see _start), kept until it ends.
        self._tasks: set[asyncio.Task[None]] = set()

    def _ensure_started(self) -> None:
        if self._loop is not None:
            return
        with self._lock:
            if self._loop is None:
                self._thread = threading.Thread(
                    target=anyio.run, args=(self._main,), name="netshim-engine", daemon=True
                )
                self._thread.start()
                self._ready.wait()

    async def _main(self) -> None:
        # Runs until the process ends (a daemon thread): work arrives as
        # loop callbacks (see _submit) that start tasks.
        self.thread_id = threading.get_ident()
        self._context = contextvars.copy_context()
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        await anyio.sleep_forever()

    def in_engine_thread(self) -> bool:
        return threading.get_ident() == self.thread_id

    def call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``function(*args)`` on the engine loop and wait for its result.

        Raises ``OSError(ESHUTDOWN)`` once the interpreter is finalizing:
        the engine is a daemon thread, which never runs again then, so
        waiting for it would never end.
        """
        if self.in_engine_thread():
            raise RuntimeError("a blocking socket call was made on netshim's own engine thread")
        if sys.is_finalizing():
            raise _finalizing()
        if self.left_behind:
            raise OSError(
                errno.EOPNOTSUPP,
                "this socket was inherited across fork(): its data still flows, "
                "but only the parent process can change it",
            )
        self._ensure_started()
        future: Future[T] = Future()

        async def run() -> None:
            try:
                future.set_result(await function(*args))
            except BaseException as exc:
                future.set_exception(exc)
                if isinstance(exc, anyio.get_cancelled_exc_class()):
                    raise

        self._submit(run)
        return future.result()

    def _submit(self, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Hand ``run`` to the engine from another thread, without waiting.

        Calls and spawns from every thread become callbacks of the engine's
        loop, which runs them in the order they were made (a socket's close
        before the next bind of its port), and a spawn costs the caller no
        round trip to the engine thread.
        """
        loop = self._loop
        assert loop is not None
        # In the engine's context: a callback runs in the caller's by default,
        # and a trio caller's would make anyio pick trio inside the engine.
        loop.call_soon_threadsafe(self._start, run, context=self._context)

    def _start(self, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start ``run`` as a task of the engine loop (a plain callback on the engine thread).

        A plain asyncio task rather than one of an anyio task group: a group's
        ``start_soon`` needs one of its tasks to be woken first (a loop
        iteration) and costs more itself; that was a third of an engine round
        trip.  anyio's cancel scopes and task groups work in plain tasks, and
        ``run`` keeps its own outcome, so nothing needs a parent group.
        """
        loop = self._loop
        assert loop is not None
        task = loop.create_task(run(), context=self._context.copy())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def spawn(self, function: Callable[..., Awaitable[T]], *args: Any) -> Future[T]:
        """Start ``function(*args)`` on the engine loop without waiting.

        Works from any thread, the engine's own included.  A failure is logged
        and kept in the returned future; it never stops the engine.
        """
        future: Future[T] = Future()
        if self.left_behind:
            # A socket inherited across fork(): the parent's engine pumps it
            # and closes its side once every process closed the socket (the
            # pair's end then reads EOF); here there is nothing to do.
            future.set_exception(OSError(errno.EOPNOTSUPP, "inherited across fork()"))
            return future
        if sys.is_finalizing() and not self.in_engine_thread():
            # At exit (a finalizer closing a socket, say) the engine never
            # runs again: the socket closes on the program's side only, and
            # the process's end takes the engine's side with it.
            future.set_exception(_finalizing())
            return future

        async def run() -> None:
            try:
                future.set_result(await function(*args))
            except BaseException as exc:
                if not isinstance(exc, anyio.get_cancelled_exc_class()):
                    _logger.exception(
                        "engine task %s failed", getattr(function, "__name__", function)
                    )
                future.set_exception(exc)
                if isinstance(exc, anyio.get_cancelled_exc_class()):
                    raise

        if not self.in_engine_thread():
            self._ensure_started()
            self._submit(run)
        else:
            # Also from a plain loop callback (a garbage collector's finalizer
            # closing a socket), where anyio could not start a task.
            self._start(run)
        return future

    def hold(self, state: SocketState, held: int) -> None:
        """Keep ``held``, the descriptor a closed joined socket leaves open, until its peer acts.

        The peer's close releases it at once, in the peer's thread
        (:meth:`release_held`).  Otherwise the engine closes it when the peer
        sends or closes: an epoll set watches every held end from the moment
        it is held, and wakes the engine only when one becomes readable, so
        holding and releasing cost the program's thread two quick system
        calls and the engine nothing.  Without epoll, ends still held after
        ``HOLD_WATCH_DELAY`` are handed to the engine loop, one wake serving
        all the ends held meanwhile.
        """
        watcher = self._held_events
        if watcher is None and _EPOLL is not None:
            watcher = self._watch_held_events()
        if watcher is not None:
            try:
                watcher.register(held, select.EPOLLIN)
            except OSError:
                # (ENOMEM, ENOSPC) The engine watches this end on its own;
                # unlisted, it waits for the peer to send or close.
                self.call_soon(_release_when_readable, held)
                return
            # Watched before it is listed, and no lock: until it is listed no
            # other thread knows the descriptor, so none can close it; the
            # engine's watch takes listed ends only, under the lock (see
            # _release_ready_held).
            self._held[state] = held
            return
        with self.queue_lock:
            self._held[state] = held
            if self._held_watch_due:
                return
            self._held_watch_due = True
        self.call_soon(self._watch_held_later)

    def release_held(self, state: SocketState) -> None:
        """The peer of ``state``'s held end closed: close that end, unless the engine watches it."""
        if state not in self._held:
            # Nothing held for it (the usual answer, read without the lock):
            # an end held at this moment by another thread is released by
            # the engine's watch when this socket's close reaches it.
            return
        lock = self.queue_lock
        lock.acquire()
        try:
            held = self._held.pop(state, None)
            if held is not None and self._held_events is not None:
                # Not contextlib.suppress, which costs more than the call.
                try:  # noqa: SIM105
                    self._held_events.unregister(held)
                except OSError:  # (held before the epoll failed)
                    pass
        finally:
            lock.release()
        if held is not None:
            os.close(held)

    def _watch_held_events(self) -> select.epoll:
        """The epoll set of held ends, made and handed to the engine loop on first use."""
        assert _EPOLL is not None
        with self._lock:
            made = self._held_events is None
            if made:
                self._held_events = _EPOLL()
            watcher = self._held_events
            assert watcher is not None
        if made:
            # Level-triggered: ends that became readable before the loop
            # watches the set are seen then.
            self.call_soon(self._add_held_reader)
        return watcher

    def _add_held_reader(self) -> None:
        loop = self._loop
        watcher = self._held_events
        assert loop is not None
        assert watcher is not None
        loop.add_reader(watcher.fileno(), self._release_ready_held)

    def _release_ready_held(self) -> None:
        """On the engine loop: close the held ends whose peer sent or closed (the reset)."""
        watcher = self._held_events
        assert watcher is not None
        with self.queue_lock:
            # Asked under the lock: an end released (and its number reused)
            # since the loop saw the set readable is not reported now.
            ready = {fd for fd, _ in watcher.poll(0)}
            # A copy: hold() lists ends without the lock.
            taken = [(state, fd) for state, fd in list(self._held.items()) if fd in ready]
            for state, fd in taken:
                del self._held[state]
                with contextlib.suppress(OSError):
                    watcher.unregister(fd)
        for _, fd in taken:
            os.close(fd)

    def _watch_held_later(self) -> None:
        loop = self._loop
        assert loop is not None
        loop.call_later(HOLD_WATCH_DELAY, self._watch_held, context=self._context)

    def _watch_held(self) -> None:
        with self.queue_lock:
            held, self._held = self._held, {}
            self._held_watch_due = False
        for end in held.values():
            _release_when_readable(end)

    def call_soon(self, callback: Callable[..., object], *args: Any) -> None:
        """Run the plain function ``callback(*args)`` on the engine loop soon, from any thread.

        For work that needs the loop but never waits: no task is made.  At
        exit, or for a socket inherited across fork(), nothing runs (as for
        :meth:`spawn`).
        """
        if self.left_behind or (sys.is_finalizing() and not self.in_engine_thread()):
            return
        if self.in_engine_thread():
            loop = self._loop
            assert loop is not None
            loop.call_soon(callback, *args, context=self._context)
            return
        self._ensure_started()
        loop = self._loop
        assert loop is not None
        loop.call_soon_threadsafe(callback, *args, context=self._context)


def _finalizing() -> OSError:
    return OSError(
        errno.ESHUTDOWN, "netshim's engine has stopped: the interpreter is shutting down"
    )


_engine = Engine()


def get_engine() -> Engine:
    return _engine


def _after_fork_in_child() -> None:
    """fork() copies no thread: the child gets an engine of its own, started on first use.

    Sockets the child inherited keep their parent's engine, marked left
    behind: their bytes go through the kernel's socketpair, which the parent
    still pumps, so ``send``/``recv`` go on working; closing them in the child
    is local.  Sockets the child makes use the new engine.  (A forking server's
    child serves its request and closes it; the parent closed its copy at
    once, and the connection ends when the child's close reaches the pair.)
    """
    global _engine
    _engine.left_behind = True
    if _engine._held_events is not None:
        _engine._held_events.close()  # the parent's watch, which the child has no part in
    _engine = Engine()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _release_when_readable(held: int) -> None:
    """Close the descriptor ``held`` once the peer sends or closes (a plain loop callback).

    Data the peer sent stays unread in it, so Linux reports ECONNRESET to
    the peer, as TCP's reset would.
    """
    loop = asyncio.get_running_loop()

    def release() -> None:
        loop.remove_reader(held)
        os.close(held)

    loop.add_reader(held, release)


# -- moving bytes -------------------------------------------------------------


async def _write_all(sock: _socket.socket, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await anyio.wait_writable(sock)
            continue
        view = view[sent:]


async def _read_some(sock: _socket.socket, size: int = PUMP_CHUNK) -> bytes:
    while True:
        try:
            return sock.recv(size)
        except BlockingIOError:
            await anyio.wait_readable(sock)


def engine_end_of(state: SocketState) -> _socket.socket:
    """``state``'s engine end, made non-blocking: every engine task that uses one asks here.

    A shim socket's pair is made blocking (see ``ShimSocket.__init__``): the
    end the engine never takes up (a connection joined in ``connect()``)
    becomes the accepted socket's as it is.
    """
    engine_end = state.engine_end
    assert engine_end is not None
    engine_end.setblocking(False)
    return engine_end


def reset_user_end(state: SocketState) -> None:
    """Close the engine's end so that the user's end reports ECONNRESET."""
    engine_end = state.engine_end
    assert engine_end is not None
    state.peer_reset = True
    user = state.user_socket()
    if user is not None and user.fileno() >= 0:
        # A byte from the user's end that the engine never reads: closing an
        # AF_UNIX stream end with unread data makes Linux reset its peer.
        # Full means unread data is there already; closed means nobody listens.
        with contextlib.suppress(OSError):
            _socket.socket.send(user, b"\0", socket.MSG_DONTWAIT)
    engine_end.close()


async def pump_tcp(state: SocketState, stream: TcpStream) -> None:
    """Move bytes both ways between a connected shim socket and its stream until both end.

    The program's ``shutdown(SHUT_WR)`` (EOF on the pair) becomes a FIN; its
    ``close()`` ends the upstream once everything written before it has been
    sent, then closes the stream.  Data arriving after the program closed,
    or ``SO_LINGER`` with a zero timeout, resets the stream, as Linux does.
    A reset from the network becomes ECONNRESET on the program's socket.
    """
    engine_end = engine_end_of(state)
    # "network": the stack's stream failed; "local": the program's end did
    # (it closed, or reset with SO_LINGER 0).
    failures: dict[str, BaseException] = {}
    errors = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError)

    async def upstream() -> None:
        while True:
            try:
                data = await _read_some(engine_end)
            except errors as exc:
                failures.setdefault("local", exc)
                break
            try:
                if not data:
                    if state.closed_by_user:
                        group.cancel_scope.cancel()
                    else:
                        await stream.send_eof()
                        state.upstream_done = True
                    return
                await stream.send(data)
            except errors as exc:
                failures.setdefault("network", exc)
                break
        group.cancel_scope.cancel()

    async def downstream() -> None:
        while True:
            try:
                data = await stream.receive(PUMP_CHUNK)
            except anyio.EndOfStream:
                with contextlib.suppress(OSError):
                    engine_end.shutdown(socket.SHUT_WR)
                return
            except errors as exc:
                failures.setdefault("network", exc)
                break
            try:
                await _write_all(engine_end, data)
            except errors as exc:
                failures.setdefault("local", exc)
                break
        group.cancel_scope.cancel()

    async with anyio.create_task_group() as group:
        state.pump_scope = group.cancel_scope
        group.start_soon(upstream)
        group.start_soon(downstream)
    if state.pump_scope is group.cancel_scope:
        state.pump_scope = None
    network_failure = failures.get("network")
    # Whatever ended the stream from the network's side (a reset, a tunnel's
    # refusal after connect, an unreachable host) reaches the program as the
    # one error an AF_UNIX pair can carry, ECONNRESET, never as a clean end
    # of stream; a ClosedResourceError is the stream closed on our side.
    if (
        network_failure is not None
        and not isinstance(network_failure, anyio.ClosedResourceError)
        and not state.closed_by_user
    ):
        await stream.aclose()
        reset_user_end(state)
        return
    if state.abort_on_close or (state.closed_by_user and "local" in failures):
        if state.abort_on_close and network_failure is None:
            await _send_what_was_written(engine_end, stream)
        await stream.abort()
    else:
        await stream.aclose()
    engine_end.close()


async def _send_what_was_written(engine_end: _socket.socket, stream: TcpStream) -> None:
    """Send what the program wrote before it closed with ``SO_LINGER`` 0, then let it reset.

    Linux sends at ``send()`` time when the window allows (always, on
    loopback), so such a close discards nothing the peer has not already got,
    and the peer reads that data before the reset.
    """
    while True:
        try:
            data = engine_end.recv(PUMP_CHUNK)
        except OSError:
            return  # nothing more (or the pair failed)
        if not data:
            return
        try:
            await stream.send(data)
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return


def establish(state: SocketState, stream: TcpStream) -> None:
    """A shim socket connected: join it to its peer directly, or start pumping.

    When the stack says the connection joins two ends in this process and
    nothing observes or delays it, and the peer waits in a listener a shim
    socket serves, the peer's accepted socket will get this socket's engine
    end as its own descriptor (see :func:`serve_listener`): one kernel
    socketpair carries the bytes, with no copy through Python.
    """
    state.stream = stream
    state.local = stream.local_address
    state.remote = stream.remote_address
    state.phase = Phase.CONNECTED
    engine = state.engine
    splice = stream.extra(StreamAttribute.splice_peer, None)
    if splice is not None and splice[1] in engine.shim_listeners:
        state.splice_pending = True
        engine.splice_waiting[splice[0]] = (state, splice[1])
        return
    engine.spawn(pump_tcp, state, stream)


def unsplice(state: SocketState) -> None:
    """Give up joining a connected socket to its peer: pump it like any other."""
    if not state.splice_pending:
        return
    state.splice_pending = False
    engine = state.engine
    for key, (waiting, _) in list(engine.splice_waiting.items()):
        if waiting is state:
            del engine.splice_waiting[key]
    assert state.stream is not None
    engine.spawn(pump_tcp, state, state.stream)


async def close_tcp(state: SocketState) -> None:
    """The program closed a connected socket (see :func:`pump_tcp` for the rest)."""
    scope = state.pump_scope
    if scope is None:
        return
    if state.upstream_done:
        scope.cancel()
    elif state.abort_on_close:
        # SO_LINGER 0: the pump sends what the program wrote (cancelled, it
        # could lose a chunk it had read and not sent), sees the end and
        # resets; a peer whose window holds the data up is reset anyway.
        scope.deadline = min(scope.deadline, anyio.current_time() + ABORT_GRACE)


# What announces an accepted connection on a listener's pair, beside the
# connection's descriptor itself (SCM_RIGHTS): its local and remote addresses
# (IP text, NUL-padded, and port), so that a process that did not make the
# connection (a pre-fork worker, after fork()) can serve it too.  Fixed size,
# so that one recvmsg() takes exactly one.
_ACCEPTED = struct.Struct("!46sH46sH")
ACCEPTED_SIZE = _ACCEPTED.size
# The announcement of a connection joined in this process (see join_accepted):
# no descriptor and no addresses (no IP's text is empty): the connection waits
# in the listener's queue, in this process's memory, and in that of a child
# forked meanwhile, which tells the parent's engine when it takes one.
JOINED_ANNOUNCEMENT = bytes(ACCEPTED_SIZE)
# What the accepting process answers on the listener's pair (see serve_listener):
# it took a connection whose descriptor came with its announcement, or a
# joined one (only a forked child answers those: this process takes its own).
TOOK_PASSED, TOOK_JOINED = b"\1", b"\2"


def pack_accepted(local: tuple[str, int], remote: tuple[str, int]) -> bytes:
    return _ACCEPTED.pack(local[0].encode("ascii"), local[1], remote[0].encode("ascii"), remote[1])


def unpack_accepted(frame: bytes) -> tuple[tuple[str, int], tuple[str, int]]:
    local_ip, local_port, remote_ip, remote_port = _ACCEPTED.unpack(frame)
    return (
        (local_ip.rstrip(b"\0").decode("ascii"), local_port),
        (remote_ip.rstrip(b"\0").decode("ascii"), remote_port),
    )


def join_accepted(client: SocketState, listener: TcpListener, server_end: TcpStream) -> bool:
    """Join a connecting shim socket to the shim listener ``listener`` at once, in any thread.

    The ``claim`` of :meth:`~netshim.stack.Stack.connect_tcp_joined`: the
    client's engine end becomes the accepted socket's descriptor (one kernel
    socketpair joins the two programs) and waits in the listener's queue,
    announced on the listener's pair so that ``accept()`` finds it and
    ``select`` sees the listener readable before ``connect()`` returns.  The
    announcement carries no descriptor (``accept()`` takes the queued one)
    unless the listener is shared with another process since a fork, where
    it goes as :func:`serve_listener` passes its connections.  Says no
    (False, nothing changed) when the listener is not served by this engine,
    its queue is full, or its pair has no room.
    """
    engine = client.engine
    served = engine.shim_listeners.get(listener)
    user_end = client.engine_end
    if served is None or user_end is None or client.filler:
        return False
    lock = engine.queue_lock
    lock.acquire()  # not a with block: see Engine.hold
    try:
        engine_end = served.engine_end
        queue = served.accept_queue
        if not served.serving or engine_end is None or len(queue) > served.backlog:
            return False
        # The descriptor the program gets blocks, as a fresh socket does (and
        # as the client's engine end still does, see engine_end_of).
        accepted = SocketState.for_accepted(served, server_end, None, user_end)
        accepted.splice_partner = client
        passed = served.shared_by_fork
        try:
            if passed:
                engine_end.sendmsg(*_announcement(accepted, user_end))
            else:
                engine_end.send(JOINED_ANNOUNCEMENT)
        except OSError:
            accepted.unregister()
            return False
        queue.append((user_end, accepted, passed))
    finally:
        lock.release()
    client.engine_end = None
    client.splice_partner = accepted
    return True


def take_accepted(state: SocketState) -> None:
    """``accept()`` took a joined connection passed with its announcement, in this process.

    What the accepting process's answer byte tells :func:`serve_listener`,
    done in the caller's thread: the queue's first such entry (every one
    before a taken one was taken: announcements are read in order) is
    dropped, and the engine hears of it only if it waits for room in the queue.
    """
    taken, event = _dequeue_taken(state, 1, passed=True)
    for user_end, _ in taken:
        user_end.close()
    if event is not None:
        state.engine.call_soon(event.set)


def take_joined(state: SocketState) -> tuple[_socket.socket, SocketState] | None:
    """The connection a joined announcement stands for, out of listener ``state``'s queue.

    The first joined entry: joined announcements are read in the order
    their entries were queued.  None when this process's queue has none
    (the listener was closed).  The caller owns the end it returns.
    """
    taken, event = _dequeue_taken(state, 1, passed=False)
    if event is not None:
        state.engine.call_soon(event.set)
    return taken[0] if taken else None


def _dequeue_taken(
    state: SocketState, count: int, *, passed: bool
) -> tuple[list[tuple[_socket.socket, SocketState]], anyio.Event | None]:
    """Drop the first ``count`` taken connections of one kind from listener ``state``'s queue.

    ``passed`` says which kind: those whose descriptor went with their
    announcement, or those joined in this process (the queue keeps both, in
    the order of their announcements).  Returns their ends and states, for
    the caller to close or use outside the lock, and the event a waiting
    :func:`serve_listener` is to be woken by when the queue now has room
    (else None).
    """
    lock = state.engine.queue_lock
    lock.acquire()  # not a with block: see Engine.hold
    try:
        queue = state.accept_queue
        if count == 1 and queue and queue[0][2] is passed:
            user_end, accepted, _ = queue.popleft()  # the usual case
            taken = [(user_end, accepted)]
        else:
            taken = []
            for entry in list(queue):
                if len(taken) == count:
                    break
                if entry[2] is passed:
                    queue.remove(entry)
                    taken.append((entry[0], entry[1]))
        event = state.room_event
        if event is not None and len(queue) <= state.backlog:
            state.room_event = None
        else:
            event = None
    finally:
        lock.release()
    return taken, event


def _announcement(
    accepted: SocketState, user_end: _socket.socket
) -> tuple[list[bytes], list[tuple[int, int, bytes]]]:
    assert accepted.local is not None
    assert accepted.remote is not None
    return (
        [pack_accepted(accepted.local, accepted.remote)],
        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", user_end.fileno()))],
    )


async def serve_listener(state: SocketState, listener: TcpListener) -> None:
    """Accept from the stack while the program's queue has room, and hand each over.

    Each connection goes to the program as its descriptor, passed through
    the listener's pair with SCM_RIGHTS, and its addresses: ``accept()`` in
    whichever process reads it first (the parent, or any pre-fork worker
    that inherited the listener) serves it.  The accepting process answers
    with one byte; only then does the engine drop its own reference to the
    connection's end (until then it may still have to report a reset on it,
    see :func:`reset_user_end`) and count the connection out of the backlog.
    (Connections joined in ``connect()`` by :func:`join_accepted` are
    queued and announced the same way, and taken by :func:`take_accepted`.)
    This task owns the listener's engine end from here on and closes it.
    """
    engine_end = engine_end_of(state)
    engine = state.engine
    queue = state.accept_queue
    lock = engine.queue_lock
    loop = asyncio.get_running_loop()
    fd = engine_end.fileno()

    def take_answers() -> None:
        # A plain loop callback: cheaper than a task woken per connection.
        try:
            answers = engine_end.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            answers = b""
        if not answers:  # every process closed the listener
            loop.remove_reader(fd)
            return
        joined = answers.count(TOOK_JOINED)
        for passed, count in ((True, len(answers) - joined), (False, joined)):
            if count:
                taken, event = _dequeue_taken(state, count, passed=passed)
                for user_end, _ in taken:
                    user_end.close()
                if event is not None:
                    event.set()

    with lock:
        state.serving = True
        engine.shim_listeners[listener] = state
    loop.add_reader(fd, take_answers)
    try:
        while True:
            while True:
                with lock:
                    if len(queue) <= state.backlog:
                        break
                    event = anyio.Event()
                    state.room_event = event
                await event.wait()
            stream = await listener.accept()
            waiting = engine.splice_waiting.pop(stream, None)
            client = waiting[0] if waiting is not None else None
            if client is not None and client.engine_end is not None and client.splice_pending:
                # Hand the client's engine end to the program as the accepted
                # socket: the two programs now share one socketpair.
                user_end = client.engine_end
                user_end.setblocking(True)
                client.engine_end = None
                client.splice_pending = False
                accepted = SocketState.for_accepted(state, stream, None, user_end)
                accepted.splice_partner = client
                client.splice_partner = accepted
            else:
                if client is not None:
                    unsplice(client)
                pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                user_end, engine_side = pair
                engine_side.setblocking(False)
                accepted = SocketState.for_accepted(state, stream, engine_side, user_end)
                engine.spawn(pump_tcp, accepted, stream)
            announcement = _announcement(accepted, user_end)
            while True:
                # Sent and queued together, so that the queue keeps the
                # order in which accept() reads the announcements.
                with lock:
                    try:
                        engine_end.sendmsg(*announcement)
                    except BlockingIOError:
                        pass
                    except OSError:
                        # Closed by every process: reset, as a closing listener's queue.
                        accepted.unregister()
                        user_end.close()
                        raise
                    else:
                        queue.append((user_end, accepted, True))
                        break
                await anyio.wait_writable(engine_end)
    except (anyio.ClosedResourceError, OSError):
        pass
    finally:
        with lock:
            state.serving = False
            engine.shim_listeners.pop(listener, None)
            queued = list(queue)
            queue.clear()
        loop.remove_reader(fd)
        for client, waiting_in in list(engine.splice_waiting.values()):
            if waiting_in is listener:
                unsplice(client)
        await listener.aclose()
        for user_end, accepted, _ in queued:
            # Never accepted: forget it, before its inode can be reused.
            accepted.unregister()
            user_end.close()
        engine_end.close()


# -- datagrams ----------------------------------------------------------------

# A datagram crossing the pair carries its address and IP header: kind (0 data,
# 1 error), port, hop limit, traffic class, the IP's length, the IP as text,
# then the payload.
_HEADER = struct.Struct("!BHBBB")
DATA, ERROR = 0, 1


def pack_datagram(
    data: bytes, address: tuple[str, int], header: IpHeader = DEFAULT_HEADER
) -> bytes:
    host = address[0].encode("ascii")
    return (
        _HEADER.pack(DATA, address[1], header.hop_limit, header.traffic_class, len(host))
        + host
        + data
    )


def pack_error(code: int) -> bytes:
    return _HEADER.pack(ERROR, code, 0, 0, 0)


def unpack_datagram(message: bytes) -> tuple[int, bytes, tuple[str, int], IpHeader]:
    kind, port, hop_limit, traffic_class, size = _HEADER.unpack_from(message)
    start = _HEADER.size + size
    host = message[_HEADER.size : start].decode("ascii")
    if hop_limit == DEFAULT_HEADER.hop_limit and traffic_class == DEFAULT_HEADER.traffic_class:
        header = DEFAULT_HEADER
    else:
        header = IpHeader(hop_limit, traffic_class)
    return kind, message[start:], (host, port), header


async def send_datagram(
    udp: UdpSocket, data: bytes, address: tuple[str, int] | None, header: IpHeader
) -> None:
    """``udp.send``, with ``header`` on stacks that carry one (see :mod:`netshim._ip_header`)."""
    if isinstance(udp, CarriesIpHeader):
        await udp.send_with_header(data, address, header)
    else:
        await udp.send(data, address)


async def pump_udp(state: SocketState, udp: UdpSocket) -> None:
    """Move datagrams both ways between a shim UDP socket and the stack's socket.

    Sending goes to the stack directly (see ``ShimSocket.sendto``), except
    from a process that inherited the socket across ``fork()``: it writes
    framed datagrams into the pair, which this pump sends.
    """
    engine_end = engine_end_of(state)
    receive_with_header = udp.receive_with_header if isinstance(udp, CarriesIpHeader) else None

    async def upstream() -> None:
        while True:
            message = await _read_some(engine_end, 70_000)
            if not message:
                group.cancel_scope.cancel()
                return
            _, data, address, header = unpack_datagram(message)
            try:
                await send_datagram(udp, data, address, header)
            except OSError as exc:
                await _write_all(engine_end, pack_error(exc.errno or errno.EIO))

    async def downstream() -> None:
        header = DEFAULT_HEADER
        while True:
            try:
                if receive_with_header is not None:
                    data, address, header = await receive_with_header()
                else:
                    data, address = await udp.receive()
            except anyio.ClosedResourceError:
                group.cancel_scope.cancel()
                return
            except OSError as exc:
                message = pack_error(exc.errno or errno.EIO)
            else:
                message = pack_datagram(data, address, header)
            try:
                engine_end.send(message)
            except BlockingIOError:
                pass  # The program's receive buffer is full: drop, as the kernel does.
            except OSError:
                group.cancel_scope.cancel()
                return

    try:
        async with anyio.create_task_group() as group:
            state.pump_scope = group.cancel_scope
            group.start_soon(upstream)
            group.start_soon(downstream)
    finally:
        # A reconnect may already have started the next pump: leave its scope.
        if state.pump_scope is group.cancel_scope:
            state.pump_scope = None
        await udp.aclose()
        if state.closed_by_user:
            engine_end.close()


def drain_filler(sock: _socket.socket, count: int) -> None:
    """Read the bytes written to keep a connecting socket unwritable."""
    sock.setblocking(False)
    while count > 0:
        try:
            count -= len(sock.recv(count))
        except BlockingIOError:
            break
