"""A Wisp v2 client with the LAN extension, for driving a gateway's LANs from tests.

It speaks the real protocol: netshim's WebSocket client (the websockets
library's sans-I/O ``ClientProtocol``) carries the sans-I/O
:class:`~netshim.protocols.wisp.WispConnection`, and a reader task sorts
what arrives per stream.  The client counts its credits as the protocol asks
and can be told to stop reading its WebSocket (:meth:`LanClient.pause`), as a
member that never reads would.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.abc

from netshim._addresses import Address
from netshim.protocols import wisp
from netshim.transports.websocket import ClientWebSocket, open_websocket, parse_websocket_url

__all__ = ["JoinRefusedError", "LanClient", "StreamClosedError", "lan_client"]

CHUNK = 1 << 16
TIMEOUT = 20


class JoinRefusedError(Exception):
    def __init__(self, reason: int) -> None:
        super().__init__(f"the gateway closed the connection: {reason:#x}")
        self.reason = reason


class StreamClosedError(Exception):
    def __init__(self, stream_id: int, reason: int) -> None:
        super().__init__(f"stream {stream_id:#x} closed: {reason:#x}")
        self.stream_id = stream_id
        self.reason = reason


@dataclass
class _Stream:
    data: bytearray = field(default_factory=bytearray)
    datagrams: deque[tuple[str, int, bytes]] = field(default_factory=deque)
    accepts: deque[wisp.Accept] = field(default_factory=deque)
    listening: wisp.Listening | None = None
    confirmed: bool = False
    closed: int | None = None


class LanClient:
    """One Wisp v2 connection that joined (or did not join) a LAN."""

    def __init__(self, websocket: ClientWebSocket, conn: wisp.WispConnection) -> None:
        self.websocket = websocket
        self.conn = conn
        self.streams: dict[int, _Stream] = {}
        self.news: list[wisp.Membership] = []
        self.closed_reason: int | None = None
        self._changed = anyio.Event()
        self._next_id = 1
        self._reading = anyio.Event()
        self._reading.set()
        self._send_lock = anyio.Lock()

    @property
    def joined(self) -> wisp.Membership:
        first = self.news[0]
        assert first.change is wisp.MembershipChange.JOINED, first
        return first

    # -- reading

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _wait(self) -> None:
        # Also looks again now and then: a predicate may be about the gateway.
        with anyio.move_on_after(0.02):
            await self._changed.wait()

    async def wait_for(self, predicate: object, limit: float = TIMEOUT) -> None:
        """Wait until ``predicate()`` is true (checked after each received message)."""
        with anyio.fail_after(limit):
            while not predicate():  # type: ignore[operator]
                await self._wait()

    def pause(self) -> None:
        """Stop reading the WebSocket (the gateway's output towards us backs up)."""
        self._reading = anyio.Event()

    def resume(self) -> None:
        self._reading.set()

    async def run_reader(self) -> None:
        try:
            while True:
                await self._reading.wait()
                message = await self.websocket.receive()
                if message is None:
                    break
                self.conn.receive_data(message)
                for event in self.conn.events():
                    self._route(event)
                self._notify()
        finally:
            self.closed_reason = self.closed_reason or -1
            for stream in self.streams.values():
                if stream.closed is None:
                    stream.closed = -1
            self._notify()

    def _route(self, event: wisp.Event) -> None:
        if isinstance(event, wisp.Membership):
            self.news.append(event)
        elif isinstance(event, wisp.Data):
            stream = self.streams.setdefault(event.stream_id, _Stream())
            if self.conn.is_listener(event.stream_id):
                stream.datagrams.append(wisp.parse_datagram(event.data))
            else:
                stream.data += event.data
        elif isinstance(event, wisp.Continue):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.confirmed = True
        elif isinstance(event, wisp.Close):
            if event.stream_id == 0:
                self.closed_reason = event.reason
            else:
                self.streams.setdefault(event.stream_id, _Stream()).closed = event.reason
        elif isinstance(event, wisp.Listening):
            self.streams.setdefault(event.stream_id, _Stream()).listening = event
        elif isinstance(event, wisp.Accept):
            self.streams[event.stream_id] = _Stream(confirmed=True)
            self.streams.setdefault(event.listener_id, _Stream()).accepts.append(event)

    # -- sending

    async def send_event(self, event: wisp.Event) -> None:
        async with self._send_lock:
            await self.websocket.send(self.conn.send(event))

    async def send_raw(self, packet: bytes) -> None:
        """Bytes the core would not build (malformed packets)."""
        async with self._send_lock:
            await self.websocket.send(packet)

    def track(self, stream_id: int) -> None:
        """Keep what arrives for ``stream_id`` (opened by hand with :meth:`send_raw`)."""
        self.streams.setdefault(stream_id, _Stream())
        self._next_id = max(self._next_id, stream_id + 1)

    def _new_id(self) -> int:
        stream_id = self._next_id
        self._next_id += 1
        self.streams[stream_id] = _Stream()
        return stream_id

    async def connect(self, host: str, port: int, *, udp: bool = False) -> int:
        """Open a stream and wait for the gateway's confirmation; StreamClosedError if refused."""
        stream_id = self._new_id()
        kind = wisp.StreamType.UDP if udp else wisp.StreamType.TCP
        await self.send_event(wisp.Connect(stream_id, host, port, kind))
        stream = self.streams[stream_id]
        if udp:
            # UDP streams are not confirmed: a refusal comes as a CLOSE later.
            return stream_id
        await self.wait_for(lambda: stream.confirmed or stream.closed is not None)
        if stream.closed is not None:
            raise StreamClosedError(stream_id, stream.closed)
        return stream_id

    async def listen(
        self, port: int = 0, host: str = "", *, udp: bool = False
    ) -> tuple[int, Address]:
        """Listen; the listener's stream and where it is bound. StreamClosedError if refused."""
        stream_id = self._new_id()
        kind = wisp.StreamType.UDP if udp else wisp.StreamType.TCP
        await self.send_event(wisp.Listen(stream_id, port, host, kind))
        stream = self.streams[stream_id]
        await self.wait_for(lambda: stream.listening is not None or stream.closed is not None)
        if stream.listening is None:
            assert stream.closed is not None
            raise StreamClosedError(stream_id, stream.closed)
        return stream_id, (stream.listening.host, stream.listening.port)

    async def accept(self, listener_id: int) -> wisp.Accept:
        listener = self.streams[listener_id]
        await self.wait_for(lambda: bool(listener.accepts) or listener.closed is not None)
        if not listener.accepts:
            assert listener.closed is not None
            raise StreamClosedError(listener_id, listener.closed)
        return listener.accepts.popleft()

    async def send(self, stream_id: int, data: bytes) -> None:
        """Send ``data`` as DATA packets, waiting for credits as the protocol asks."""
        stream = self.streams[stream_id]
        view = memoryview(data)
        for start in range(0, len(data), CHUNK):
            await self.wait_for(
                lambda: self.conn.credit(stream_id) > 0 or stream.closed is not None
            )
            if stream.closed is not None:
                raise StreamClosedError(stream_id, stream.closed)
            await self.send_event(wisp.Data(stream_id, bytes(view[start : start + CHUNK])))

    async def send_datagram(self, listener_id: int, host: str, port: int, payload: bytes) -> None:
        await self.send_event(wisp.Data(listener_id, wisp.pack_datagram(host, port, payload)))

    async def receive_datagram(self, listener_id: int) -> tuple[str, int, bytes]:
        stream = self.streams[listener_id]
        await self.wait_for(lambda: bool(stream.datagrams) or stream.closed is not None)
        if not stream.datagrams:
            assert stream.closed is not None
            raise StreamClosedError(listener_id, stream.closed)
        return stream.datagrams.popleft()

    async def receive_exactly(self, stream_id: int, size: int) -> bytes:
        stream = self.streams[stream_id]
        await self.wait_for(lambda: len(stream.data) >= size or stream.closed is not None)
        if len(stream.data) < size:
            assert stream.closed is not None
            raise StreamClosedError(stream_id, stream.closed)
        data = bytes(stream.data[:size])
        del stream.data[:size]
        return data

    async def closed(self, stream_id: int) -> int:
        """Wait for the gateway's CLOSE of the stream; its reason."""
        stream = self.streams[stream_id]
        await self.wait_for(lambda: stream.closed is not None)
        assert stream.closed is not None
        return stream.closed

    async def close(self, stream_id: int, reason: int = wisp.CloseReason.VOLUNTARY) -> None:
        await self.send_event(wisp.Close(stream_id, reason))

    async def news_about(self, name: str, change: wisp.MembershipChange) -> wisp.Membership:
        def found() -> wisp.Membership | None:
            return next((n for n in self.news if n.name == name and n.change is change), None)

        await self.wait_for(lambda: found() is not None)
        result = found()
        assert result is not None
        return result


def _address(gateway: object) -> Address:
    if isinstance(gateway, tuple):
        return gateway  # type: ignore[return-value]
    return gateway.addresses["http"]  # type: ignore[attr-defined,no-any-return]


@asynccontextmanager
async def lan_client(
    gateway: object, lan: str = "", member: str = "", token: str = "", *, lan_extension: bool = True
) -> AsyncIterator[LanClient]:
    """A client connected to ``gateway`` (a Gateway or its HTTP address) that joined ``lan``.

    Raises :class:`JoinRefusedError` when the gateway closes the connection
    in the handshake.  ``lan_extension=False``: a client without the extension.
    """
    host, port = _address(gateway)
    websocket = await open_websocket(
        parse_websocket_url(f"ws://{host}:{port}/"), subprotocols=("wisp-v2",)
    )
    extensions: list[wisp.Extension] = [wisp.UdpExtension(), wisp.StreamConfirmationExtension()]
    if lan_extension:
        extensions.append(wisp.LanExtension(lan, member, token))
    conn = wisp.WispConnection(wisp.Role.CLIENT, version=2, extensions=extensions)
    client = LanClient(websocket, conn)
    try:
        with anyio.fail_after(TIMEOUT):
            while conn.state is not wisp.ConnectionState.OPEN:
                message = await websocket.receive()
                if message is None:
                    raise JoinRefusedError(client.closed_reason or -1)
                conn.receive_data(message)
                for event in conn.events():
                    if isinstance(event, wisp.Info):
                        await websocket.send(conn.send(conn.local_info()))
                    elif isinstance(event, wisp.Close) and event.stream_id == 0:
                        raise JoinRefusedError(event.reason)
                    else:
                        client._route(event)
        async with anyio.create_task_group() as group:
            group.start_soon(client.run_reader)
            if lan:
                await client.wait_for(lambda: bool(client.news))
            try:
                yield client
            finally:
                group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            await websocket.aclose()
