"""How WispStack sends: whole and in order, never past the server's credit, CLOSE after the data.

On asyncio and uvloop a stream's DATA packets go straight into the host
connection's transport (``ClientWebSocket.send_nowait``), with no lock and no
scheduling point per packet, waiting only when the transport's buffer is
above its high-water mark or the stream has no credit; trio takes the locked
way.  These tests hold both ways to the same results.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from tunnel_helpers import LOOPBACK, pattern, running_gateway, websocket_of

from netshim import HostStack, WispStack
from netshim.gateway import GatewayConfig
from netshim.stack import TcpStream
from netshim.transports.websocket import WRITE_HIGH_WATER, ClientWebSocket

pytestmark = pytest.mark.anyio

PACKET = 64 << 10


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


def direct_writes(anyio_backend: Any) -> bool:
    """Whether the WebSocket is written straight into its transport on this backend."""
    return anyio_backend != "trio"


class Collector:
    """A host listener that keeps what its first connection sends, until the end."""

    def __init__(self, listener: Any) -> None:
        self.listener = listener
        self.received = bytearray()
        self.ended = anyio.Event()
        self.may_read = anyio.Event()
        self.may_read.set()

    @property
    def address(self) -> tuple[str, int]:
        return self.listener.local_address  # type: ignore[no-any-return]

    async def run(self) -> None:
        stream: TcpStream = await self.listener.accept()
        async with stream:
            await self.may_read.wait()
            while True:
                try:
                    self.received += await stream.receive(1 << 20)
                except anyio.EndOfStream:
                    break
        self.ended.set()


async def collector() -> Collector:
    return Collector(await HostStack().listen_tcp("127.0.0.1", 0))


def count_direct_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    counted = [0]
    original = ClientWebSocket.send_nowait

    def counting(self: ClientWebSocket, data: Any, prefix: bytes = b"") -> None:
        counted[0] += 1
        original(self, data, prefix)

    monkeypatch.setattr(ClientWebSocket, "send_nowait", counting)
    return counted


async def test_an_upload_in_many_sizes_arrives_whole_and_in_order(
    anyio_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Writes smaller than, equal to and larger than a packet, as bytes,
    # bytearray and memoryview, cut into packets without a copy of their own.
    sizes = [1, 7, 4096, PACKET - 1, PACKET, PACKET + 1, 200_000, 1 << 20, 3]
    data = pattern(sum(sizes) * 6)
    direct = count_direct_writes(monkeypatch)
    target = await collector()
    async with running_gateway() as gateway, anyio.create_task_group() as group:
        group.start_soon(target.run)
        host, port = gateway.addresses["http"]
        stack = WispStack(f"wisp://{host}:{port}/", packet_size=PACKET)
        try:
            stream = await stack.connect_tcp(*target.address)
            offset = 0
            kinds = [bytes, bytearray, memoryview]
            with anyio.fail_after(60):
                while offset < len(data):
                    size = sizes[(offset // 7) % len(sizes)]
                    piece = data[offset : offset + size]
                    kind = kinds[offset % len(kinds)]
                    await stream.send(kind(piece))  # type: ignore[arg-type]
                    offset += len(piece)
                await stream.aclose()
                await target.ended.wait()
            assert len(target.received) == len(data)
            assert target.received == data
        finally:
            await stack.aclose()
            await target.listener.aclose()
    if direct_writes(anyio_backend):
        # Most packets took the direct way (the rest waited for credit).
        assert direct[0] > len(data) // PACKET // 2
    else:
        assert direct[0] == 0


async def test_a_destination_that_does_not_read_stops_the_client_after_its_credit(
    anyio_backend: Any,
) -> None:
    # More than every buffer on the way holds (the kernel's few MiB per
    # socket, the gateway's queue of two windows): the sender cannot finish
    # while the destination does not read.
    data = pattern(96 << 20)
    target = await collector()
    target.may_read = anyio.Event()
    config = GatewayConfig(policy=LOOPBACK, wisp_buffer_size=8)
    async with running_gateway(config) as gateway, anyio.create_task_group() as group:
        group.start_soon(target.run)
        host, port = gateway.addresses["http"]
        stack = WispStack(f"wisp://{host}:{port}/", packet_size=PACKET)
        sent = [0]
        done = anyio.Event()
        try:
            stream = await stack.connect_tcp(*target.address)
            websocket = websocket_of(stack)
            (session,) = stack._sessions.values()
            stream_id = stream.stream_id  # type: ignore[attr-defined]

            async def send_all() -> None:
                for start in range(0, len(data), PACKET):
                    await stream.send(data[start : start + PACKET])
                    sent[0] += len(data[start : start + PACKET])
                done.set()

            group.start_soon(send_all)
            # Wait until the sender is held (for credit, or for the
            # WebSocket to drain while the gateway does not read it) and
            # stays held: nothing more written over several looks.
            last, still = -1, 0
            with anyio.fail_after(60):
                while still < 3:
                    await anyio.sleep(0.2)
                    still = still + 1 if websocket.bytes_out == last else 0
                    last = websocket.bytes_out
            assert not done.is_set()
            assert sent[0] < len(data)
            # Never past the credit: the gateway would have closed the
            # stream (0x49) or the connection otherwise.
            assert session.alive
            assert session.streams.get(stream_id) is stream
            assert session.conn.credit(stream_id) >= 0
            reader = websocket._transport_reader
            if direct_writes(anyio_backend):
                assert reader is not None
                # Bounded on our side: the transport's buffer holds at most
                # its high-water mark and one frame.
                assert reader.transport.get_write_buffer_size() <= WRITE_HIGH_WATER + PACKET + 64
            # Reading again lets the sender finish, every byte in order.
            target.may_read.set()
            with anyio.fail_after(60):
                await done.wait()
                await stream.aclose()
                await target.ended.wait()
            assert sent[0] == len(data)
            assert target.received == data
        finally:
            await stack.aclose()
            await target.listener.aclose()


@pytest.mark.parametrize("ending", ["aclose", "send_eof"])
async def test_close_follows_the_last_data(anyio_backend: Any, ending: str) -> None:
    # The CLOSE is written right behind packets that may still be in the
    # transport's buffer: the destination still gets every byte, then the end.
    for size in (1, PACKET, (3 << 20) + 12_345):
        data = pattern(size)
        target = await collector()
        async with running_gateway() as gateway, anyio.create_task_group() as group:
            group.start_soon(target.run)
            host, port = gateway.addresses["http"]
            stack = WispStack(f"wisp://{host}:{port}/", packet_size=PACKET)
            try:
                stream = await stack.connect_tcp(*target.address)
                with anyio.fail_after(60):
                    await stream.send(data)
                    if ending == "aclose":
                        await stream.aclose()
                    else:
                        await stream.send_eof()
                    await target.ended.wait()
                assert len(target.received) == size
                assert target.received == data
            finally:
                await stack.aclose()
                await target.listener.aclose()
