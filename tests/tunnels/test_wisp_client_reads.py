"""How WispStack's WebSocket reads: whole and in order, and not past a program that stopped.

On asyncio and uvloop the client's WebSocket takes the host connection's
reads from the transport itself (``_TransportReader`` in
netshim.transports.websocket) and pauses the transport only when enough
waits unconsumed; these tests hold it to both halves of that.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from tunnel_helpers import pattern, running_gateway, websocket_of

from netshim import HostStack, WispStack
from netshim.stack import TcpStream
from netshim.transports.websocket import READ_AHEAD

pytestmark = pytest.mark.anyio

# asyncio and uvloop each take at most 256 KiB from a socket in one read.
LARGEST_READ = 256 << 10


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


async def serve_once(data: bytes, sent: list[int]) -> tuple[Any, Any]:
    """A host listener sending ``data`` to its first connection in 64 KiB writes, counted."""
    listener = await HostStack().listen_tcp("127.0.0.1", 0)

    async def run() -> None:
        stream: TcpStream = await listener.accept()
        async with stream:
            for start in range(0, len(data), 1 << 16):
                await stream.send(data[start : start + (1 << 16)])
                sent[0] += len(data[start : start + (1 << 16)])

    return listener, run


async def test_a_download_read_small_and_large_arrives_whole_and_in_order() -> None:
    data = pattern((5 << 20) + 12_345)
    sent = [0]
    listener, run = await serve_once(data, sent)
    async with running_gateway() as gateway, anyio.create_task_group() as group:
        group.start_soon(run)
        host, port = gateway.addresses["http"]
        stack = WispStack(f"wisp://{host}:{port}/")
        try:
            stream = await stack.connect_tcp(*listener.local_address)
            # The host connection's reads come from the transport, not anyio's stream.
            assert websocket_of(stack)._transport_reader is not None
            received = bytearray()
            sizes = [1, 7, 4096, 65536, 1 << 20, 3]
            with anyio.fail_after(60):
                while True:
                    size = sizes[len(received) % len(sizes)]
                    try:
                        chunk = await stream.receive(size)
                    except anyio.EndOfStream:
                        break
                    assert 0 < len(chunk) <= size
                    received += chunk
            assert len(received) == len(data)
            assert received == data
            await stream.aclose()
        finally:
            await stack.aclose()
            await listener.aclose()


async def test_a_program_that_does_not_read_stops_the_client_reading() -> None:
    # More than every buffer on the way holds (the kernel's few MiB per
    # socket, three sockets, the gateway's queue): the sender cannot finish
    # while the program does not read.
    data = pattern(96 << 20)
    sent = [0]
    listener, run = await serve_once(data, sent)
    async with running_gateway() as gateway, anyio.create_task_group() as group:
        group.start_soon(run)
        host, port = gateway.addresses["http"]
        stack = WispStack(f"wisp://{host}:{port}/")
        try:
            stream = await stack.connect_tcp(*listener.local_address)
            first = await stream.receive(1)
            websocket = websocket_of(stack)
            reader = websocket._transport_reader
            assert reader is not None
            # The stream's first receive started reading the WebSocket; with
            # nobody receiving now, what arrives piles up until the reader
            # pauses its transport.
            with anyio.fail_after(60):
                while not reader.paused:  # noqa: ASYNC110 - set by the transport's reads
                    await anyio.sleep(0.01)
            assert not reader.transport.is_reading()
            assert reader.buffered <= READ_AHEAD + LARGEST_READ
            assert sent[0] < len(data)
            # Reading again resumes it, and every byte arrives in order.
            received = bytearray(first)
            with anyio.fail_after(60):
                while True:
                    try:
                        received += await stream.receive(1 << 20)
                    except anyio.EndOfStream:
                        break
            assert sent[0] == len(data)
            assert received == data
            await stream.aclose()
        finally:
            await stack.aclose()
            await listener.aclose()
