"""TCP on the virtual network: connections, streams and listeners.

A connection is two :class:`Pipe` objects, one per direction.  A pipe holds
*segments*: data, FIN or RST, each stamped with the time the link delivers it
(0.0 when the link adds no delay, so the common case never reads the clock).
Readers take segments in order once their time has come, so TCP stays
reliable and ordered whatever the link does; writers wait while the pipe holds
:data:`DEFAULT_WINDOW` unread bytes, which is the flow control.  Bytes are
never copied between sender and receiver: the object handed to ``send`` is the
object ``receive`` returns, unless the reader asks for less.

What Linux does, and so what happens here:

* ``close()`` with unread data sends RST instead of FIN;
* data sent to a peer that has closed makes the peer answer RST, so the
  sender's *next* ``send`` fails (``BrokenPipeError`` if the peer had sent
  FIN first, ``ConnectionResetError`` otherwise);
* data that arrived before a RST is still read, then the reset is reported;
* after the FIN has been read, ``receive`` keeps reporting end of stream;
* a listener's queue holds ``backlog + 1`` established connections; further
  connects wait for room (the client keeps retrying its SYN), and closing the
  listener resets the connections still queued.
"""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio
import anyio.lowlevel

from ..._addresses import Address
from ..._errors import os_error
from ...stack import StreamAttribute, TcpListener, TcpStream
from .link import Link

if TYPE_CHECKING:
    from .host import PortBinding, VirtualHost
    from .network import VirtualNetwork

__all__ = [
    "DEFAULT_WINDOW",
    "MAX_BACKLOG",
    "JoinedTcpStream",
    "Pipe",
    "TcpServiceHandler",
    "VirtualTcpListener",
    "VirtualTcpStream",
]

# Bytes a pipe holds before the sender waits: Linux's default receive buffer
# (net.ipv4.tcp_rmem) is 128 KiB; twice that keeps bulk transfers streaming
# without letting one connection hoard memory.
DEFAULT_WINDOW: Final = 256 * 1024

# The largest listen() backlog: Linux clamps larger ones to net.core.somaxconn.
MAX_BACKLOG: Final = 4096


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


FIN: Final = _Marker("FIN")
RST: Final = _Marker("RST")

Segment = bytes | _Marker


class TcpServiceHandler(Protocol):
    """A server written as callbacks, run inside the sender's call (no task needed).

    The virtual network's DNS server uses this so that a network works
    without any background task.  ``data_received`` returns bytes to send back;
    ``eof_received`` returns whether to close our side as well.
    """

    def data_received(self, data: bytes) -> bytes: ...

    def eof_received(self) -> bool: ...


class Pipe:
    """One direction of a connection: segments in flight or unread."""

    __slots__ = (
        "buffered",
        "last_at",
        "reader_event",
        "reader_gone",
        "segments",
        "sink",
        "writer_event",
    )

    def __init__(self) -> None:
        self.segments: deque[tuple[float, Segment]] = deque()
        self.buffered = 0
        self.last_at = 0.0
        self.reader_gone = False
        self.reader_event: anyio.Event | None = None
        self.writer_event: anyio.Event | None = None
        # Set for service connections: segments go to this callback instead.
        self.sink: Callable[[Segment], None] | None = None

    def push(self, at: float, segment: Segment) -> None:
        if at < self.last_at:
            at = self.last_at
        self.last_at = at
        if self.sink is not None:
            self.sink(segment)
            return
        self.segments.append((at, segment))
        if isinstance(segment, bytes):
            self.buffered += len(segment)
        self.wake_reader()

    def wake_reader(self) -> None:
        event = self.reader_event
        if event is not None:
            self.reader_event = None
            event.set()

    def wake_writer(self) -> None:
        event = self.writer_event
        if event is not None:
            self.writer_event = None
            event.set()

    def has_arrived_data(self) -> bool:
        """Whether data is here to read (reads the clock only for segments still in flight)."""
        now = None
        for at, segment in self.segments:
            if isinstance(segment, bytes):
                if not at:
                    return True
                if now is None:
                    now = anyio.current_time()
                if at <= now:
                    return True
        return False

    def discard(self) -> None:
        self.segments.clear()
        self.buffered = 0


class Connection:
    """What both ends of one connection share."""

    __slots__ = ("budget", "client_end", "conn_id", "link", "network", "reset", "server_end")

    def __init__(self, network: VirtualNetwork, link: Link, conn_id: int) -> None:
        self.network = network
        self.link = link
        self.conn_id = conn_id
        self.budget = link.reset_after
        self.reset = False
        self.client_end: VirtualTcpStream
        self.server_end: VirtualTcpStream


class VirtualTcpStream(TcpStream):
    """One end of a virtual TCP connection (see :class:`netshim.stack.TcpStream`)."""

    __slots__ = (
        "_binding",
        "_closed",
        "_conn",
        "_eof_received",
        "_eof_sent",
        "_inbound",
        "_is_client",
        "_local",
        "_outbound",
        "_receive_error",
        "_receiving",
        "_remote",
        "_send_error",
        "_send_error_at",
        "_sending",
        "accepted_from",
        "host",
    )

    def __init__(
        self,
        conn: Connection,
        host: VirtualHost,
        is_client: bool,
        local: Address,
        remote: Address,
        inbound: Pipe,
        outbound: Pipe,
        binding: PortBinding | None,
    ) -> None:
        self._conn = conn
        self.host = host
        self._is_client = is_client
        self._local = local
        self._remote = remote
        self._inbound = inbound
        self._outbound = outbound
        self._binding = binding
        self._closed = False
        self._eof_sent = False
        self._eof_received = False
        self._receiving = False
        self._sending = False
        self._receive_error: OSError | None = None
        self._send_error: int = 0
        self._send_error_at = 0.0
        # The listener a server end waits in (or was accepted from).
        self.accepted_from: VirtualTcpListener | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<VirtualTcpStream {self._local[0]}:{self._local[1]} -> "
            f"{self._remote[0]}:{self._remote[1]} {state}>"
        )

    @property
    def local_address(self) -> Address:
        return self._local

    @property
    def remote_address(self) -> Address:
        return self._remote

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        attributes = dict(super().extra_attributes)
        peer = self._peer
        if self._spliceable() and peer.accepted_from is not None:
            attributes[StreamAttribute.splice_peer] = lambda: (peer, peer.accepted_from)
        return attributes

    def _spliceable(self) -> bool:
        conn = self._conn
        link = conn.link
        return not (
            conn.network.has_observers
            or link.conditions.delays
            or link.partitioned
            or conn.budget is not None
            or conn.reset
            or self._closed
            or self._inbound.segments
        )

    @property
    def _peer(self) -> VirtualTcpStream:
        conn = self._conn
        return conn.server_end if self._is_client else conn.client_end

    # -- sending ---------------------------------------------------------

    def _check_send_error(self) -> None:
        code = self._send_error
        if code and (self._send_error_at == 0.0 or anyio.current_time() >= self._send_error_at):
            raise os_error(code, f"{self._remote[0]}:{self._remote[1]}")

    async def send(self, item: bytes) -> None:
        await anyio.lowlevel.checkpoint()
        if self._closed:
            raise anyio.ClosedResourceError
        if self._eof_sent:
            raise os_error(errno.EPIPE, "send() after send_eof()")
        self._check_send_error()
        if self._sending:
            raise anyio.BusyResourceError("sending")
        data = item if type(item) is bytes else bytes(item)
        if not data:
            return
        pipe = self._outbound
        if len(data) <= DEFAULT_WINDOW - pipe.buffered or pipe.reader_gone:
            # The common case: room for all of it now.
            self.transmit(data)
            return
        # Only what the window has room for goes at once, as a kernel takes a
        # large send into its buffer piece by piece while the peer reads: a
        # single 32 MiB send() must not park 32 MiB in the pipe.
        self._sending = True
        try:
            while True:
                while pipe.buffered >= DEFAULT_WINDOW and not pipe.reader_gone:
                    event = pipe.writer_event = anyio.Event()
                    await event.wait()
                    if self._closed:
                        raise anyio.ClosedResourceError
                    self._check_send_error()
                room = DEFAULT_WINDOW - pipe.buffered
                if len(data) <= room or pipe.reader_gone:
                    self.transmit(data)
                    return
                self.transmit(data[:room])
                data = data[room:]
        finally:
            self._sending = False

    def transmit(self, data: bytes) -> None:
        """Hand ``data`` to the network now (no waiting, no checks of our own state)."""
        conn = self._conn
        network = conn.network
        if self._outbound.reader_gone:
            # The peer's socket is gone: its stack answers with RST.
            network.observe_tcp_data(conn.conn_id, self._is_client, data)
            if not self._send_error:
                self._set_send_error(self._peer._eof_sent, conn.link.round_trip())
            if not conn.reset:
                conn.reset = True
                network.observe_tcp_reset(conn.conn_id, not self._is_client)
            return
        budget = conn.budget
        if budget is not None:
            if len(data) >= budget:
                if budget:
                    self._push(data[:budget])
                conn.budget = 0
                self._reset_both()
                return
            conn.budget = budget - len(data)
        self._push(data)

    def _push(self, data: bytes) -> None:
        conn = self._conn
        at = conn.link.delivery_time(self.host.name, len(data))
        self._outbound.push(at, data)
        conn.network.observe_tcp_data(conn.conn_id, self._is_client, data)

    def _set_send_error(self, peer_sent_fin: bool, delay: float) -> None:
        # Linux's tcp_reset(): EPIPE in CLOSE-WAIT (the peer's FIN came first).
        self._send_error = errno.EPIPE if peer_sent_fin else errno.ECONNRESET
        self._send_error_at = anyio.current_time() + delay if delay else 0.0

    def _send_rst(self) -> None:
        """Put RST behind everything already sent; the peer learns of it on arrival."""
        conn = self._conn
        conn.reset = True
        at = conn.link.delivery_time(self.host.name, 0)
        self._outbound.push(at, RST)
        peer = self._peer
        if not peer._send_error:
            peer._send_error = errno.EPIPE if self._eof_sent else errno.ECONNRESET
            peer._send_error_at = at
        self._outbound.wake_writer()
        peer._outbound.wake_writer()
        conn.network.observe_tcp_reset(conn.conn_id, self._is_client)

    def _reset_both(self) -> None:
        self._send_rst()
        self._peer._send_rst()
        self._inbound.reader_gone = True
        self._outbound.reader_gone = True

    def send_fin(self) -> None:
        if self._eof_sent or self._conn.reset:
            self._eof_sent = True
            return
        self._eof_sent = True
        conn = self._conn
        self._outbound.push(conn.link.delivery_time(self.host.name, 0), FIN)
        conn.network.observe_tcp_fin(conn.conn_id, self._is_client)

    async def send_eof(self) -> None:
        await anyio.lowlevel.checkpoint()
        if self._closed:
            raise anyio.ClosedResourceError
        self.send_fin()

    # -- receiving -------------------------------------------------------

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await anyio.lowlevel.checkpoint()
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        if self._receiving:
            raise anyio.BusyResourceError("receiving")
        self._receiving = True
        try:
            return await self._receive(max_bytes)
        finally:
            self._receiving = False

    async def _receive(self, max_bytes: int) -> bytes:
        pipe = self._inbound
        link = self._conn.link
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            if self._eof_received:
                raise anyio.EndOfStream
            if self._receive_error is not None:
                raise self._receive_error
            segments = pipe.segments
            if not segments:
                event = pipe.reader_event = anyio.Event()
                await event.wait()
                continue
            if link.partitioned:
                event = pipe.reader_event = anyio.Event()
                link.add_heal_waiter(event)
                await event.wait()
                continue
            at, segment = segments[0]
            if at:
                delay = at - anyio.current_time()
                if delay > 0:
                    event = pipe.reader_event = anyio.Event()
                    with anyio.move_on_after(delay):
                        await event.wait()
                    continue
            if isinstance(segment, bytes):
                return self._take(pipe, segment, max_bytes)
            segments.popleft()
            if segment is FIN:
                self._eof_received = True
                raise anyio.EndOfStream
            self._receive_error = os_error(errno.ECONNRESET, f"{self._remote[0]}:{self._remote[1]}")
            raise self._receive_error

    def _take(self, pipe: Pipe, first: bytes, max_bytes: int) -> bytes:
        segments = pipe.segments
        if len(first) > max_bytes:
            at = segments[0][0]
            segments[0] = (at, first[max_bytes:])
            chunk = first[:max_bytes]
        else:
            segments.popleft()
            chunk = first
            # Coalesce what has arrived, as a kernel receive buffer does.
            if segments and len(chunk) < max_bytes:
                parts = [chunk]
                size = len(chunk)
                now = 0.0
                while segments and size < max_bytes:
                    at, segment = segments[0]
                    if not isinstance(segment, bytes):
                        break
                    if at:
                        now = now or anyio.current_time()
                        if at > now:
                            break
                    room = max_bytes - size
                    if len(segment) > room:
                        segments[0] = (at, segment[room:])
                        segment = segment[:room]
                    else:
                        segments.popleft()
                    parts.append(segment)
                    size += len(segment)
                chunk = b"".join(parts)
        pipe.buffered -= len(chunk)
        if pipe.writer_event is not None and pipe.buffered < DEFAULT_WINDOW:
            pipe.wake_writer()
        return chunk

    # -- closing ---------------------------------------------------------

    def _finish(self) -> None:
        self._closed = True
        inbound = self._inbound
        inbound.reader_gone = True
        inbound.discard()
        inbound.wake_reader()
        self._outbound.wake_writer()
        inbound.wake_writer()
        if self._binding is not None:
            self.host.release(self._binding)
            self._binding = None

    def close_now(self, *, reset: bool = False) -> None:
        """Close synchronously: FIN (or RST with unread data, or when asked)."""
        if self._closed:
            return
        if not self._conn.reset:
            unread = self._inbound.has_arrived_data()
            if reset or unread:
                self._send_rst()
            else:
                self.send_fin()
        self._finish()

    def close_joined(self) -> bool:
        """Close, from any thread, an end whose bytes went another way (see ``splice_peer``).

        Nothing was ever sent or received on such a stream, and no task waits
        on it: closing it only marks it closed and releases the client's
        port, which needs no clock and wakes nobody.  A stream that carried
        anything is left to :meth:`aclose` on the network's loop (False).
        """
        inbound, outbound = self._inbound, self._outbound
        with self._conn.network.lock:
            if self._closed:
                return True
            if (
                inbound.segments
                or outbound.segments
                or inbound.reader_event is not None
                or inbound.writer_event is not None
                or outbound.writer_event is not None
                or outbound.reader_event is not None
            ):
                return False
            # close_now() without its FIN: no reader will ever take it, and
            # no observer saw the connection open.
            self._eof_sent = True
            self._closed = True
            inbound.reader_gone = True
            binding = self._binding
            if binding is not None:
                self._binding = None
                self.host.release(binding)
        return True

    async def aclose(self) -> None:
        self.close_now()
        await anyio.lowlevel.checkpoint()

    async def abort(self) -> None:
        self.close_now(reset=True)
        await anyio.lowlevel.checkpoint()


class JoinedTcpStream(TcpStream):
    """One end of a connection the socket shim joined (see ``VirtualHost.connect_tcp_joined``).

    Its bytes never cross the network: the two programs share one kernel
    socketpair.  So it has no pipes and no :class:`Connection`, only its
    addresses and, at the client's end, the port it holds until closed (a
    connection costs a tenth of the objects a :class:`VirtualTcpStream` pair
    makes, which was a measurable share of a connect).  Sending or
    receiving on it is a broken stream.
    """

    # The addresses are plain attributes, not properties: read once per
    # connection on the way in, where a property's call is a measurable cost.
    __slots__ = ("_binding", "host", "local_address", "remote_address")
    local_address: Address
    remote_address: Address

    def __init__(
        self, host: VirtualHost, local: Address, remote: Address, binding: PortBinding | None
    ) -> None:
        self.host = host
        self.local_address = local
        self.remote_address = remote
        self._binding = binding

    def __repr__(self) -> str:
        state = "open" if self._binding is not None else "closed"
        local, remote = self.local_address, self.remote_address
        return f"<JoinedTcpStream {local[0]}:{local[1]} -> {remote[0]}:{remote[1]} {state}>"

    async def send(self, item: bytes) -> None:
        raise anyio.BrokenResourceError("a joined connection's bytes travel another way")

    async def receive(self, max_bytes: int = 65536) -> bytes:
        raise anyio.BrokenResourceError("a joined connection's bytes travel another way")

    async def send_eof(self) -> None:
        raise anyio.BrokenResourceError("a joined connection's bytes travel another way")

    def close_joined(self) -> bool:
        """Release the client's port, from any thread (idempotent)."""
        binding = self._binding
        if binding is not None:
            self._binding = None
            self.host.release(binding)
        return True

    async def aclose(self) -> None:
        self.close_joined()
        await anyio.lowlevel.checkpoint()

    async def abort(self) -> None:
        await self.aclose()


class VirtualTcpListener(TcpListener):
    """A listening socket on a virtual host."""

    def __init__(self, host: VirtualHost, binding: PortBinding, backlog: int) -> None:
        self.host = host
        self.binding = binding
        self.backlog = backlog
        self.queue: deque[VirtualTcpStream] = deque()
        self._accept_event: anyio.Event | None = None
        self._room_waiters: list[anyio.Event] = []
        self.closed = False
        self.service: Callable[[], TcpServiceHandler] | None = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.queue)} waiting"
        return f"<VirtualTcpListener {self.local_address[0]}:{self.local_address[1]} {state}>"

    @property
    def local_address(self) -> Address:
        return self.binding.address

    @property
    def full(self) -> bool:
        """Whether a connect waits for room: never while not accepting (it is refused)."""
        # Linux's sk_acceptq_is_full(): the queue holds backlog + 1 connections.
        return self.accepting and len(self.queue) > self.backlog

    def set_backlog(self, backlog: int) -> None:
        # Clamped as VirtualHost.listen_tcp clamps it (Linux: 0 .. somaxconn).
        self.backlog = max(0, min(backlog, MAX_BACKLOG))
        # A larger queue may have room now: waiting connects look again.
        waiters, self._room_waiters = self._room_waiters, []
        for event in waiters:
            event.set()

    def enqueue(self, stream: VirtualTcpStream) -> None:
        self.queue.append(stream)
        event = self._accept_event
        if event is not None:
            self._accept_event = None
            event.set()

    async def wait_for_room(self) -> None:
        while self.full and not self.closed:
            event = anyio.Event()
            self._room_waiters.append(event)
            await event.wait()

    async def accept(self) -> TcpStream:
        await anyio.lowlevel.checkpoint()
        while True:
            if self.closed:
                raise anyio.ClosedResourceError
            if self.queue:
                stream = self.queue.popleft()
                if self._room_waiters:
                    self._room_waiters.pop(0).set()
                return stream
            if self._accept_event is not None:
                raise anyio.BusyResourceError("accepting")
            event = self._accept_event = anyio.Event()
            try:
                await event.wait()
            finally:
                if self._accept_event is event:
                    self._accept_event = None

    def close_now(self) -> None:
        with self.host.network.lock:
            if self.closed:
                return
            self.closed = True
            self.host.release(self.binding)
            self.host.release_listener(self)
            queued = list(self.queue)
            self.queue.clear()
        for stream in queued:
            stream.close_now(reset=True)
        if self._accept_event is not None:
            self._accept_event.set()
        for event in self._room_waiters:
            event.set()
        self._room_waiters.clear()

    async def aclose(self) -> None:
        self.close_now()
        await anyio.lowlevel.checkpoint()
