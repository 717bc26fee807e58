"""A relay without tasks: one intercepted connection and one host socket, joined by callbacks.

The terminator's general relay (:func:`netshim.isolate._terminate._relay`)
copies with two tasks, one each way, over the :class:`~netshim.stack.Stack`
stream contract.  Under asyncio, with the host network as the outer stack,
each piece then crossed two event-loop hops: the host socket's transport
woke the task that waits in ``receive()`` (and was registered with the
selector for that one read, then unregistered), and the task copied; the
other way the IpStack driver woke a task that wrote to the socket.  A
1-byte round trip took four loop iterations, and a connection that opens
and closes cost a task group, a second task and two selector registrations
of the host socket, which showed in the profile of a connect-heavy run.

A :class:`Splice` is the host socket's asyncio protocol instead: bytes the
host sends go straight into the program's TCP connection (the IpStack core)
in ``data_received``, and the IpStack driver, which wakes whatever waits on
a connection whose state changed, calls the splice (through
``call_soon``: never inside the driver's own pass) to write what the
program sent to the host socket.  The host socket stays registered for
reading for the whole connection.

Flow control is kept both ways: when the program's send buffer is full, the
host socket stops being read (the kernel's window closes) until the
connection takes the rest; when the host socket's write buffer passes
:data:`HOST_WRITE_LIMIT`, nothing more is taken from the program's
connection (its window closes) until the transport drains.  Half-closes
are carried each way; a reset or error on one side resets the other, as
the general relay does.

:func:`splice` says whether a pair of streams can be joined this way
(an asyncio transport under a host stream, an IpStack connection on the
other side), and takes over what the host stream read already; otherwise
the caller uses the general relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

from ..stack import TcpStream

__all__ = ["HOST_WRITE_LIMIT", "SocketTransport", "Splice", "splice"]

#: Bytes the host socket's transport may hold unsent before the splice stops
#: taking data from the program (the relay's chunk size, as before).
HOST_WRITE_LIMIT = 256 * 1024
# Bytes taken from the program's connection per read.
_CHUNK = 256 * 1024

Outcome = Literal["closed", "reset-host", "reset-program"]


class _Wake:
    """Stands in the IpStack driver's table of waiters for a splice: its ``set`` calls back."""

    __slots__ = ("_callback",)

    def __init__(self, callback: Any) -> None:
        self._callback = callback

    def set(self) -> None:
        self._callback()


class Splice(asyncio.Protocol):
    """Relays between an IpStack connection (the program's) and a host socket's transport.

    ``on_done`` is called (once) when both sides finished sending
    (:attr:`outcome` ``"closed"``) or one failed: ``"reset-host"`` (the
    program's side failed: the host side is to be reset) or
    ``"reset-program"`` (the other way round).  The owner then closes or
    aborts both sides.
    """

    def __init__(
        self,
        connection: Any,
        driver: Any,
        transport: asyncio.Transport,
        on_done: Callable[[], object],
        *,
        received: list[bytes] | None = None,
        received_eof: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._connection = connection
        # What the host sent before the splice took over (its stream's queue).
        self._received = received or []
        self._received_eof = received_eof
        self._driver = driver
        self._transport = transport
        self._loop = asyncio.get_running_loop() if loop is None else loop
        self._wake = _Wake(self._schedule)
        self._scheduled = False
        # Host bytes the program's send buffer could not take yet.
        self._pending: memoryview | None = None
        self._host_eof = False
        self._program_fin_queued = False
        self._host_eof_sent = False
        self._writing_paused = False
        self.outcome: Outcome | None = None
        self._on_done = on_done

    def start(self) -> None:
        """Take over the transport and carry what either side already sent."""
        transport = self._transport
        transport.set_protocol(self)
        transport.set_write_buffer_limits(high=HOST_WRITE_LIMIT)
        if isinstance(getattr(transport, "max_size", None), int):
            # asyncio's socket transport reads up to ``max_size`` bytes at a
            # time (256 KiB).  A read of whole TSO packets leaves no tail: a
            # 256 KiB read made four 64 KiB packets and a fifth of one MSS,
            # a fifth of the per-packet work (and TUN writes) for 0.6 % of
            # the bytes.
            payload = self._connection.max_payload
            transport.max_size = max(1, _CHUNK // payload) * payload  # type: ignore[attr-defined]
        for data in self._received:
            self.data_received(data)
        self._received = []
        if self._received_eof:
            self.eof_received()
        elif self.outcome is None and self._pending is None:
            transport.resume_reading()
        if self.outcome is None:
            self._program_ready()

    def stop(self) -> None:
        """Stop relaying (the owner closes both sides); idempotent."""
        if self.outcome is None:
            self._finish("closed")

    # -- the host side (asyncio.Protocol) ---------------------------------

    def data_received(self, data: bytes) -> None:
        if self.outcome is not None:
            return
        if self._pending is not None:
            # Read before the pause took effect: keep it behind the rest.
            self._pending = memoryview(bytes(self._pending) + bytes(data))
            return
        self._to_program(memoryview(data))

    def eof_received(self) -> bool:
        self._host_eof = True
        if self.outcome is None and self._pending is None:
            self._program_fin()
        # Keep the transport open: the program may still send (a half-close).
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.outcome is None:
            self._finish("reset-program" if exc is not None else "closed")

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.outcome is None:
            self._program_ready()

    # -- the program side -------------------------------------------------

    def _to_program(self, view: memoryview) -> None:
        connection = self._connection
        try:
            taken = connection.send(view)
        except OSError:
            # The program's connection failed (reset): the host's goes too.
            self._finish("reset-host")
            return
        if taken:
            self._driver.poke(connection)
        if taken < len(view):
            self._pending = view[taken:]
            self._transport.pause_reading()
            self._watch()

    def _program_fin(self) -> None:
        if not self._program_fin_queued:
            self._program_fin_queued = True
            self._connection.shutdown()
            self._driver.poke(self._connection)
            self._maybe_done()

    def _watch(self) -> None:
        self._driver.waiters[self._connection] = self._wake

    def _schedule(self) -> None:
        # Called from the driver's wake-ups, at the end of a transmit pass
        # (which takes a new set of changed connections each time, so the
        # writes and pokes here may run their own pass).  A stopping driver
        # wakes every waiter while it walks their table: the work waits for
        # a callback of its own then.
        if not self._driver.has_stopped:
            self._program_ready()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._scheduled_ready)

    def _scheduled_ready(self) -> None:
        self._scheduled = False
        if self.outcome is None:
            self._program_ready()

    def _program_ready(self) -> None:
        """The program's connection may have changed: move what can move, then watch it again."""
        connection, driver = self._connection, self._driver
        if driver.has_stopped:
            self._finish("reset-host")
            return
        pending = self._pending
        if pending is not None:
            self._pending = None
            self._to_program(pending)
            if self.outcome is not None:
                return
            if self._pending is None:
                if self._host_eof:
                    self._program_fin()
                    if self.outcome is not None:
                        return
                else:
                    self._transport.resume_reading()
        transport = self._transport
        while not self._host_eof_sent and not self._writing_paused:
            if connection.readable():
                data = connection.receive(_CHUNK)
                transport.write(data)
                # Reading opened the receive window: the update may be due.
                driver.poke(connection)
            elif connection.at_eof:
                self._host_eof_sent = True
                if not transport.is_closing():
                    transport.write_eof()
            else:
                break
        if self.outcome is not None:
            # A write failed and the transport reported it.
            return
        if (
            connection.error is not None or (connection.finished and not connection.established)
        ) and not connection.readable():
            # Failed, or (spliced during its handshake) ended before it
            # completed: the program went away.
            self._finish("reset-host")
            return
        if not self._maybe_done():
            self._watch()

    def _maybe_done(self) -> bool:
        if self._host_eof_sent and self._program_fin_queued and self.outcome is None:
            self._finish("closed")
        return self.outcome is not None

    def _finish(self, outcome: Outcome) -> None:
        self.outcome = outcome
        waiters = self._driver.waiters
        if waiters.get(self._connection) is self._wake:
            del waiters[self._connection]
        if not self._transport.is_closing():
            self._transport.pause_reading()
        self._on_done()


def splice(program: TcpStream, upstream: TcpStream, on_done: Callable[[], object]) -> Splice | None:
    """A :class:`Splice` for ``program`` (an IpStack stream) and ``upstream`` (a host stream).

    None when the pair is of another kind (another stack, trio, a stream
    that already holds data): the caller relays with tasks then.
    """
    connection = getattr(program, "_connection", None)
    stack = getattr(program, "_stack", None)
    inner = getattr(upstream, "_stream", None)
    transport = getattr(inner, "_transport", None)
    protocol = getattr(inner, "_protocol", None)
    if connection is None or stack is None or protocol is None:
        return None
    # A transport that failed already (its error waits in the stream) is
    # left to the task relay, which reads what came before the error.
    if not isinstance(transport, asyncio.Transport) or transport.is_closing():
        return None
    queue = getattr(protocol, "read_queue", None)
    at_eof = getattr(protocol, "is_at_eof", None)
    if not isinstance(queue, deque) or not isinstance(at_eof, bool):
        return None
    if getattr(protocol, "exception", None) is not None:
        return None
    driver = stack._driver_for_use()
    if connection in driver.waiters:
        return None
    # The stream's protocol hands over what it read: the splice replaces it.
    received = list(queue)
    queue.clear()
    return Splice(connection, driver, transport, on_done, received=received, received_eof=at_eof)


class SocketTransport(asyncio.Transport):
    """The little of an asyncio transport a :class:`Splice` uses, over a connected socket.

    An asyncio transport is made by a coroutine (``loop.create_connection``
    with ``sock=``: a loop iteration for ``connection_made``, and a
    selector registration that the host stream's pause then removed again).
    This one is made at once, in the callback that accepted the program's
    connection, so a connection onto the host network needs no task: the
    socket is registered for reading while it is read, and for writing only
    while bytes wait.  Reads of up to :data:`_CHUNK` go to the protocol's
    ``data_received``; writes go to the socket at once, and what it does
    not take waits, with ``pause_writing`` past the high-water mark and
    ``resume_writing`` once drained.  Failures reach ``connection_lost``
    from a loop callback of their own, as asyncio's transports report them.
    The owner closes it: :meth:`close` (a FIN after what waits) or
    :meth:`abort` (a reset).
    """

    def __init__(
        self,
        sock: socket.socket,
        protocol: asyncio.Protocol | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__()
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop() if loop is None else loop
        self._protocol: Any = protocol
        self._reading = False
        self._writing = False
        self._closing = False
        self._eof_wanted = False
        self._close_after_write = False
        self._waiting: deque[memoryview] = deque()
        self._waiting_bytes = 0
        self._high = HOST_WRITE_LIMIT
        self._protocol_paused = False
        #: Bytes taken per read (a Splice sets whole TSO packets, as with asyncio's).
        self.max_size = _CHUNK

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._sock if name == "socket" else default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol  # type: ignore[no-any-return]

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return self._reading

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = HOST_WRITE_LIMIT if high is None else high

    def get_write_buffer_size(self) -> int:
        return self._waiting_bytes

    # -- reading ----------------------------------------------------------

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if not self._reading and not self._closing:
            self._reading = True
            self._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        try:
            data = self._sock.recv(self.max_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        if data:
            self._protocol.data_received(data)
        else:
            self.pause_reading()
            self._protocol.eof_received()

    # -- writing ----------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._eof_wanted:
            return
        view = memoryview(data).cast("B")
        if not self._waiting:
            try:
                sent = self._sock.send(view)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._fail(exc)
                return
            if sent == len(view):
                return
            view = view[sent:]
            self._writing = True
            self._loop.add_writer(self._fd, self._writable)
        # A view of the caller's bytes: the connection hands out new
        # objects each read, never a buffer it reuses.
        self._waiting.append(view)
        self._waiting_bytes += len(view)
        if self._waiting_bytes > self._high and not self._protocol_paused:
            self._protocol_paused = True
            self._protocol.pause_writing()

    def _writable(self) -> None:
        waiting = self._waiting
        while waiting:
            view = waiting[0]
            try:
                sent = self._sock.send(view)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._fail(exc)
                return
            self._waiting_bytes -= sent
            if sent < len(view):
                waiting[0] = view[sent:]
                return
            waiting.popleft()
        self._writing = False
        self._loop.remove_writer(self._fd)
        if self._close_after_write:
            self._release()
            self._sock.close()
            return
        if self._eof_wanted:
            self._shut_write()
        if self._protocol_paused:
            self._protocol_paused = False
            self._protocol.resume_writing()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._eof_wanted:
            return
        self._eof_wanted = True
        if not self._waiting:
            self._shut_write()

    def _shut_write(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._fail(exc)

    # -- the end ----------------------------------------------------------

    def _fail(self, exc: OSError) -> None:
        closed_by_owner = self._closing
        self._release()
        if self._close_after_write:
            self._sock.close()
        elif not closed_by_owner:
            self._loop.call_soon(self._protocol.connection_lost, exc)

    def _release(self) -> None:
        self._closing = True
        self.pause_reading()
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
        self._waiting.clear()
        self._waiting_bytes = 0

    def close(self) -> None:
        """Close the socket once what waits is sent (as asyncio's transports do); idempotent."""
        if self._closing:
            return
        if self._waiting:
            self._closing = self._close_after_write = True
            self.pause_reading()
            return
        self._release()
        self._sock.close()

    def abort(self) -> None:
        """Close the socket with a reset (``SO_LINGER`` zero), dropping what waits; idempotent."""
        if self._sock.fileno() < 0:
            return
        self._release()
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._sock.close()
