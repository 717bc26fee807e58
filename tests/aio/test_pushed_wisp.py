"""WispStack's pushed session and the transports' shorter way, end to end on CPython.

In Pyodide JavaScript's WebSocket calls Python for each message, so WispStack
dispatches messages as they arrive and asyncio's transports read and write
without tasks of their own.  Here a WebSocket of the same shape (messages
handed to a handler by a reader task of its own, as JavaScript's event loop
would, and a send that never waits) stands in for JavaScript's, in front of
netshim's real gateway, so that the whole path runs where a debugger reaches:
handshake, stream confirmation and refusals, data both ways, credit running
out mid-transfer, the end of a stream and the WebSocket going away.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from transfer_targets import running_gateway

import netshim
import netshim.transports.websocket as websocket_module
from netshim import WispStack
from netshim.aio import StackStreamTransport
from netshim.gateway import GatewayConfig
from netshim.policy import Policy

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class PushingWebSocket:
    """JsWebSocket's shape over a real client WebSocket (see the module documentation)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.outgoing: asyncio.Queue[bytes] = asyncio.Queue()
        self.sender = asyncio.get_running_loop().create_task(self._send_all())
        self.reader: asyncio.Task[None] | None = None
        self.pushed = 0
        self.sent_nowait = 0

    @property
    def subprotocol(self) -> str | None:
        return self.inner.subprotocol  # type: ignore[no-any-return]

    @property
    def closed(self) -> bool:
        return self.inner.closed  # type: ignore[no-any-return]

    @property
    def writable(self) -> bool:
        return not self.inner.closed and self.outgoing.qsize() < 64

    async def _send_all(self) -> None:
        while True:
            message = await self.outgoing.get()
            await self.inner.send(message)

    def send_nowait(self, data: bytes | memoryview, prefix: bytes = b"") -> None:
        self.sent_nowait += 1
        self.outgoing.put_nowait(prefix + data)

    @property
    def must_drain(self) -> bool:
        return not self.inner.closed and self.outgoing.qsize() >= 64

    async def drain(self) -> None:
        while self.must_drain:  # noqa: ASYNC110 - polled, as JsWebSocket polls bufferedAmount
            await asyncio.sleep(0.001)

    async def send(self, data: bytes, prefix: bytes = b"") -> None:
        self.outgoing.put_nowait(prefix + data)  # behind what send_nowait queued: one order

    async def receive(self) -> bytes | None:
        assert self.reader is None, "receive() after set_message_handler()"
        return await self.inner.receive()  # type: ignore[no-any-return]

    def set_message_handler(self, handler: Callable[[bytes | None], None]) -> None:
        async def push() -> None:
            while True:
                message = await self.inner.receive()
                self.pushed += 1
                handler(message)
                if message is None:
                    return

        self.reader = asyncio.get_running_loop().create_task(push())

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        for task in (self.sender, self.reader):
            if task is not None:
                task.cancel()
        await self.inner.aclose()


@pytest.fixture
def pushed(monkeypatch: pytest.MonkeyPatch) -> list[PushingWebSocket]:
    """Every WispStack WebSocket opened in the test is a PushingWebSocket (listed here)."""
    opened: list[PushingWebSocket] = []
    original = websocket_module.open_websocket

    async def open_pushing(*args: Any, **kwargs: Any) -> Any:
        websocket = PushingWebSocket(await original(*args, **kwargs))
        opened.append(websocket)
        return websocket

    monkeypatch.setattr(websocket_module, "open_websocket", open_pushing)
    return opened


async def echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_asyncio_through_a_pushed_session(pushed: list[PushingWebSocket]) -> None:
    server, port = await echo_server()
    # Four packets of credit: a 2 MiB upload runs out of it again and again.
    config = GatewayConfig(policy=Policy(allow=[f"127.0.0.1:{port}"]), wisp_buffer_size=4)
    async with running_gateway(config) as gateway:
        host, gateway_port = gateway.addresses["http"]
        stack = WispStack(f"ws://{host}:{gateway_port}/", packet_size=16384)
        netshim.install(stack, mode="loop")
        try:
            with anyio.fail_after(30):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                transport = writer.transport
                assert isinstance(transport, StackStreamTransport)
                assert transport._reader is None  # no reader task: data is pushed
                # Small round trips go out inside write() and come back inside the push.
                for number in range(20):
                    writer.write(b"ping %d\n" % number)
                    assert transport.get_write_buffer_size() == 0
                    assert await reader.readline() == b"ping %d\n" % number
                # Small writes faster than credit comes back: after four packets
                # write() queues, and the rest follows from the task, in order.
                lines = [b"%04d%s\n" % (number, b"x" * 1000) for number in range(50)]
                for line in lines:
                    writer.write(line)
                assert transport.get_write_buffer_size() > 0
                for line in lines:
                    assert await reader.readline() == line
                # A large upload outruns the credit too.
                payload = bytes(range(256)) * (8 << 10)  # 2 MiB
                writer.write(payload)
                writer.write(b"tail")
                echoed = await reader.readexactly(len(payload) + 4)
                assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload + b"tail").digest()
                writer.close()
                await writer.wait_closed()
                # A destination the gateway refuses: its confirmation says so.
                with pytest.raises(PermissionError):
                    await asyncio.open_connection("127.0.0.1", port + 1)
            (websocket,) = pushed
            assert websocket.reader is not None
            assert websocket.pushed > 20
            assert websocket.sent_nowait >= 20
        finally:
            netshim.uninstall()
            await stack.aclose()
    server.close()
    await server.wait_closed()


async def test_the_websocket_going_away_resets_pushed_streams(
    pushed: list[PushingWebSocket],
) -> None:
    server, port = await echo_server()
    config = GatewayConfig(policy=Policy(allow=[f"127.0.0.1:{port}"]))
    async with running_gateway(config) as gateway:
        host, gateway_port = gateway.addresses["http"]
        stack = WispStack(f"ws://{host}:{gateway_port}/")
        netshim.install(stack, mode="loop")
        try:
            with anyio.fail_after(30):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"hello\n")
                assert await reader.readline() == b"hello\n"
                # The gateway goes away under the stream.
                await pushed[0].inner.aclose()
                with pytest.raises(ConnectionResetError):
                    await reader.read(100)
        finally:
            netshim.uninstall()
            await stack.aclose()
    server.close()
    await server.wait_closed()
