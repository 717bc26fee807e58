"""The Wisp data path between a host destination and a client, on asyncio and on trio.

Under asyncio a stream's download is written to the client from the
destination's read callback and its upload runs as a bare task
(``_DownloadSplice``, ``_BareTaskGroup`` in ``netshim/gateway/_server.py``);
trio keeps anyio's tasks.  Both must give the client the same messages in
the same order, cut to ``read_size``, and keep the wall around a stream
whose upload fails; the bare task group ends its tasks as anyio's does.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import anyio
import anyio.abc
import pytest
from gateway_helpers import running_gateway
from test_gateway_security import RawWebSocket, next_event, wisp_client

from netshim import HostStack, TcpStream
from netshim._addresses import Address
from netshim.gateway import GatewayConfig
from netshim.gateway._server import MAX_UPLOAD_BATCH, QUEUE_BOUND_FACTOR, _BareTaskGroup
from netshim.policy import Policy
from netshim.protocols import wisp
from netshim.protocols.wisp import CloseReason, WispConnection
from netshim.stack import ForwardingStack

pytestmark = pytest.mark.anyio

LOOPBACK = Policy(allow=["127.0.0.1"])
READ_SIZE = 4096
BANNER = b"220 ready\r\n"
# A pattern no shifted, repeated or dropped piece of which matches the original.
BODY = bytes((i * 7 + i // 251) % 256 for i in range(300_000))


async def talking_destination(task_status: anyio.abc.TaskStatus[Address]) -> None:
    """Accept one connection: a banner at once, BODY once the client says ``go``, the end."""
    listener = (await anyio.create_tcp_listener(local_host="127.0.0.1")).listeners[0]
    async with listener:
        task_status.started(listener.extra(anyio.abc.SocketAttribute.local_address))
        stream = await listener.accept()
        async with stream:
            await stream.send(BANNER)
            # BODY comes while the gateway reads this connection (not all of
            # it queued before the stream's download began).
            assert await stream.receive(2) == b"go"
            await stream.send(BODY)


async def download(websocket: RawWebSocket, conn: WispConnection, stream_id: int) -> list[bytes]:
    """The payloads of DATA on ``stream_id``, sending ``go`` after the first, until its CLOSE."""
    received: list[bytes] = []
    while True:
        event = await next_event(websocket, conn)
        if isinstance(event, wisp.Close):
            assert event.stream_id == stream_id
            assert event.reason == CloseReason.VOLUNTARY
            return received
        if isinstance(event, wisp.Data):
            if not received:
                await websocket.send(conn.send(wisp.Data(stream_id, b"go")))
            received.append(event.data)


async def silent_destination(task_status: anyio.abc.TaskStatus[Address]) -> None:
    """Accept one connection and read it until its end, saying nothing."""
    listener = (await anyio.create_tcp_listener(local_host="127.0.0.1")).listeners[0]
    async with listener:
        task_status.started(listener.extra(anyio.abc.SocketAttribute.local_address))
        stream = await listener.accept()
        async with stream:
            try:
                while await stream.receive():
                    pass
            except (anyio.EndOfStream, OSError):
                pass


async def test_a_download_arrives_whole_in_order_in_read_size_messages_then_close() -> None:
    config = GatewayConfig(policy=LOOPBACK, read_size=READ_SIZE)
    async with anyio.create_task_group() as group, running_gateway(config) as gateway:
        host, port = await group.start(talking_destination)
        async with wisp_client(gateway.addresses["http"]) as (websocket, conn):
            await websocket.send(conn.send(wisp.Connect(1, host, port)))
            received = await download(websocket, conn, 1)
        assert max(len(piece) for piece in received) <= READ_SIZE
        assert b"".join(received) == BANNER + BODY


class _FailingStream(TcpStream):
    """A host stream whose ``send`` raises what no stream should (a bug's stand-in)."""

    def __init__(self, inner: TcpStream) -> None:
        self.inner = inner

    @property
    def local_address(self) -> Address:
        return self.inner.local_address

    @property
    def remote_address(self) -> Address:
        return self.inner.remote_address

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self.inner.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        raise ValueError("a bug nobody foresaw")

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def abort(self) -> None:
        await self.inner.abort()


class _FailingUploads(ForwardingStack):
    """The host network, but uploads to port ``fault_port`` raise."""

    def __init__(self, fault_port: int) -> None:
        super().__init__(HostStack())
        self.fault_port = fault_port

    async def connect_tcp(
        self, host: str, port: int, *, local_address: tuple[str, int] | None = None
    ) -> TcpStream:
        stream = await super().connect_tcp(host, port, local_address=local_address)
        return _FailingStream(stream) if port == self.fault_port else stream


async def test_an_upload_that_raises_ends_only_its_stream() -> None:
    async with anyio.create_task_group() as group:
        host, port = await group.start(silent_destination)
        config = GatewayConfig(policy=LOOPBACK)
        async with running_gateway(config, _FailingUploads(port)) as gateway:
            async with wisp_client(gateway.addresses["http"]) as (websocket, conn):
                await websocket.send(conn.send(wisp.Connect(1, host, port)))
                await websocket.send(conn.send(wisp.Data(1, b"upload")))
                event = await next_event(websocket, conn)
                while not isinstance(event, wisp.Close):
                    event = await next_event(websocket, conn)
                assert (event.stream_id, event.reason) == (1, CloseReason.NETWORK_ERROR)
                # The connection goes on: a second stream still works.
                second = await group.start(talking_destination)
                await websocket.send(conn.send(wisp.Connect(3, *second)))
                assert b"".join(await download(websocket, conn, 3)) == BANNER + BODY
            metrics = gateway.metrics.render().decode()
            assert 'netshim_gateway_internal_errors_total{front="wisp-stream"} 1.0' in metrics


async def test_an_upload_to_a_stalling_destination_arrives_whole_within_the_credits() -> None:
    # The destination reads nothing at first, with a small receive buffer:
    # once the kernel's buffers are full the gateway parks what the client
    # may still send, within the stream's bound, then everything arrives in
    # order once it reads, and the parked bytes leave the budget.
    packet, packets = 16 * 1024, 800
    upload = bytes((i * 13 + i // 509) % 256 for i in range(packet * packets))
    listener = (await anyio.create_tcp_listener(local_host="127.0.0.1")).listeners[0]
    # Taken over by the accepted socket: no autotuning up to many MiB.
    raw = listener.extra(anyio.abc.SocketAttribute.raw_socket)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = listener.extra(anyio.abc.SocketAttribute.local_address)
    release = anyio.Event()
    received = bytearray()

    async def stalling_destination() -> None:
        stream = await listener.accept()
        async with stream:
            await release.wait()
            # Small reads: the gateway's writes keep finding a full socket.
            with contextlib.suppress(anyio.EndOfStream):
                while True:
                    received.extend(await stream.receive(8192))

    config = GatewayConfig(policy=LOOPBACK)
    async with (
        listener,
        anyio.create_task_group() as group,
        running_gateway(config) as gateway,
        wisp_client(gateway.addresses["http"]) as (websocket, conn),
    ):
        group.start_soon(stalling_destination)
        await websocket.send(conn.send(wisp.Connect(1, host, port)))
        peak = 0

        async def watch_the_budget() -> None:
            nonlocal peak
            # Parked bytes show the kernel's buffers are full; the
            # destination starts reading once they stop growing for a while.
            steady = 0
            while not release.is_set():
                budget = gateway._budgets.get("127.0.0.1")
                queued = budget.queued if budget is not None else 0
                steady = steady + 1 if queued and queued == peak else 0
                peak = max(peak, queued)
                if steady >= 50:
                    release.set()
                await anyio.sleep(0.002)

        group.start_soon(watch_the_budget)
        with anyio.fail_after(30):
            for offset in range(0, len(upload), packet):
                while not conn.credit(1):
                    event = await next_event(websocket, conn)
                    assert not isinstance(event, wisp.Close), event
                await websocket.send(conn.send(wisp.Data(1, upload[offset : offset + packet])))
            release.set()
            await websocket.send(conn.send(wisp.Close(1, CloseReason.VOLUNTARY)))
            while len(received) < len(upload):  # noqa: ASYNC110 - filled by the destination
                await anyio.sleep(0.01)
        # Refills that cross DATA forgive what was in flight, so the queue's
        # own bound holds (QUEUE_BOUND_FACTOR windows), then one batch being
        # written and one message arriving.
        window = QUEUE_BOUND_FACTOR * conn.buffer_size + 1
        assert 0 < peak <= window * packet + MAX_UPLOAD_BATCH + packet + wisp.HEADER_SIZE
        assert received == upload
        with anyio.fail_after(5):
            # The stream's task settles after the last write; nothing to wait on.
            while gateway._budgets.get("127.0.0.1") is not None and (  # noqa: ASYNC110
                gateway._budgets["127.0.0.1"].queued
            ):
                await anyio.sleep(0.01)
        group.cancel_scope.cancel()


async def test_uploads_sent_before_the_connect_completed_arrive_whole_then_the_end() -> None:
    # A client that does not wait for the confirmation: its first packets
    # are queued while the gateway connects, then leave before any later one.
    packet, packets = 16 * 1024, 300
    upload = bytes((i * 11 + i // 487) % 256 for i in range(packet * packets))
    listener = (await anyio.create_tcp_listener(local_host="127.0.0.1")).listeners[0]
    host, port = listener.extra(anyio.abc.SocketAttribute.local_address)
    received = bytearray()
    ended = anyio.Event()

    async def reading_destination() -> None:
        stream = await listener.accept()
        async with stream:
            with contextlib.suppress(anyio.EndOfStream):
                while True:
                    received.extend(await stream.receive())
        ended.set()

    config = GatewayConfig(policy=LOOPBACK)
    async with (
        listener,
        anyio.create_task_group() as group,
        running_gateway(config) as gateway,
        wisp_client(gateway.addresses["http"]) as (websocket, conn),
    ):
        group.start_soon(reading_destination)
        # CONNECT and the whole first window in one go, before any answer.
        early = conn.buffer_size
        burst = [conn.send(wisp.Connect(1, host, port))]
        burst += [
            conn.send(wisp.Data(1, upload[i * packet : (i + 1) * packet])) for i in range(early)
        ]
        for message in burst:
            await websocket.send(message)
        with anyio.fail_after(20):
            for offset in range(early * packet, len(upload), packet):
                while not conn.credit(1):
                    event = await next_event(websocket, conn)
                    assert not isinstance(event, wisp.Close), event
                await websocket.send(conn.send(wisp.Data(1, upload[offset : offset + packet])))
            await websocket.send(conn.send(wisp.Close(1, CloseReason.VOLUNTARY)))
            await ended.wait()
        assert received == upload
        group.cancel_scope.cancel()


# -- the bare task group that runs a stream's upload beside its download (asyncio)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_bare_task_group_ends_as_a_task_group_does() -> None:
    loop = asyncio.get_running_loop()
    ended: list[str] = []

    async def waits_forever(name: str) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            ended.append(name)

    # A child's exception cancels the owner and comes out of the group.
    async def fails() -> None:
        await anyio.lowlevel.checkpoint()
        raise ValueError("child")

    async def failing_group() -> None:
        async with _BareTaskGroup(loop) as group:
            group.start_soon(fails)
            group.start_soon(lambda: waits_forever("sibling"))
            await waits_forever("owner")

    with pytest.raises(ValueError, match="child"):
        await failing_group()
    assert sorted(ended) == ["owner", "sibling"]

    # The scope's deadline ends the owner and the children; nothing is raised.
    ended.clear()
    async with _BareTaskGroup(loop) as group:
        group.cancel_scope.deadline = anyio.current_time() + 0.01
        group.start_soon(lambda: waits_forever("child"))
        await waits_forever("owner")
    assert group.cancel_scope.cancelled_caught
    assert sorted(ended) == ["child", "owner"]

    # Leaving normally waits for the children; an outer cancellation cancels them.
    finished: list[str] = []

    async def finishes() -> None:
        await anyio.sleep(0.01)
        finished.append("child")

    async with _BareTaskGroup(loop) as group:
        group.start_soon(finishes)
    assert finished == ["child"]
    ended.clear()
    with anyio.CancelScope() as outer:
        async with _BareTaskGroup(loop) as group:
            group.start_soon(lambda: waits_forever("child"))
            outer.cancel()
            await waits_forever("owner")
    assert outer.cancelled_caught
    assert sorted(ended) == ["child", "owner"]
