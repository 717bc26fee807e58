"""Hostile and unlucky clients: close reasons, auth, fuzzed frames, credit abuse.

The gateway here serves a VirtualNetwork host (any stack works), and a raw
Wisp client built from the sans-I/O cores speaks to it over loopback, so
each test controls every byte it sends.
"""

from __future__ import annotations

import contextlib
import random
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest
from gateway_helpers import running_gateway
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from netshim import VirtualHost, VirtualNetwork
from netshim.gateway import GatewayConfig
from netshim.policy import Policy
from netshim.protocols import wisp
from netshim.protocols.wisp import CloseReason, Role, WispConnection

pytestmark = pytest.mark.anyio


class RawWebSocket:
    """The smallest WebSocket client: whole binary messages in and out."""

    def __init__(self, stream: anyio.abc.SocketStream, protocol: ClientProtocol) -> None:
        self.stream = stream
        self.protocol = protocol

    async def flush(self) -> None:
        for chunk in self.protocol.data_to_send():
            if chunk:
                await self.stream.send(chunk)

    async def send(self, message: bytes) -> None:
        self.protocol.send_binary(message)
        await self.flush()

    async def receive(self) -> bytes | None:
        while True:
            for event in self.protocol.events_received():
                if isinstance(event, Frame) and event.opcode is Opcode.BINARY:
                    self._pending.append(bytes(event.data))
            if self._pending:
                return self._pending.pop(0)
            try:
                data = await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return None
            self.protocol.receive_data(data)
            await self.flush()

    _pending: list[bytes]


@asynccontextmanager
async def raw_websocket(
    address: tuple[str, int], path: str = "/", subprotocol: str | None = "wisp-v2"
) -> AsyncIterator[RawWebSocket]:
    protocol = ClientProtocol(
        parse_uri(f"ws://{address[0]}:{address[1]}{path}"),
        subprotocols=[subprotocol] if subprotocol else None,  # type: ignore[list-item]
    )
    stream = await anyio.connect_tcp(*address)
    async with stream:
        protocol.send_request(protocol.connect())
        websocket = RawWebSocket(stream, protocol)
        websocket._pending = []
        await websocket.flush()
        while True:
            events = protocol.events_received()
            responses = [e for e in events if isinstance(e, Response)]
            if responses:
                assert responses[0].status_code == 101, responses[0]
                # Frames that came in the same read as the response (the
                # gateway's Wisp INFO, say) are kept for receive().
                for event in events:
                    if isinstance(event, Frame) and event.opcode is Opcode.BINARY:
                        websocket._pending.append(bytes(event.data))
                break
            protocol.receive_data(await stream.receive())
        yield websocket


@asynccontextmanager
async def wisp_client(
    address: tuple[str, int], extensions: list[wisp.Extension] | None = None
) -> AsyncIterator[tuple[RawWebSocket, WispConnection]]:
    async with raw_websocket(address) as websocket:
        conn = WispConnection(Role.CLIENT, extensions=extensions or [wisp.UdpExtension()])
        while conn.state is not wisp.ConnectionState.OPEN:
            message = await websocket.receive()
            assert message is not None
            conn.receive_data(message)
            for event in conn.events():
                if isinstance(event, wisp.Info):
                    await websocket.send(conn.send(conn.local_info()))
                if isinstance(event, wisp.Close):
                    raise ConnectionRefusedError(event.reason)
        yield websocket, conn


async def next_event(websocket: RawWebSocket, conn: WispConnection) -> wisp.Event:
    while True:
        event = conn.next_event()
        if isinstance(event, wisp.Event):
            return event
        with anyio.fail_after(10):
            message = await websocket.receive()
        assert message is not None, "the gateway closed the WebSocket"
        conn.receive_data(message)


@asynccontextmanager
async def virtual_world() -> AsyncIterator[tuple[VirtualNetwork, VirtualHost, VirtualHost]]:
    network = VirtualNetwork()
    server = network.add_host("server")
    gateway_host = network.add_host("gateway")
    yield network, server, gateway_host


async def echo_forever(stream: anyio.abc.ByteStream) -> None:
    try:
        while True:
            await stream.send(await stream.receive())
    except (anyio.EndOfStream, OSError):
        pass


async def test_close_reasons_for_failed_streams() -> None:
    async with virtual_world() as (_network, server, gateway_host):
        policy = Policy(allow=[server.addresses[0]])
        config = GatewayConfig(policy=policy)
        async with (
            running_gateway(config, gateway_host) as gateway,
            wisp_client(gateway.addresses["http"]) as (websocket, conn),
        ):
            cases = {
                1: ("server", 9, CloseReason.REFUSED),
                2: ("nowhere.invalid", 80, CloseReason.UNREACHABLE),
                3: ("10.0.0.77", 80, CloseReason.BLOCKED),
                4: ("169.254.169.254", 80, CloseReason.BLOCKED),
                5: ("::ffff:127.0.0.1", 80, CloseReason.BLOCKED),
            }
            for stream_id, (host, port, _) in cases.items():
                await websocket.send(conn.send(wisp.Connect(stream_id, host, port)))
            got = {}
            while len(got) < len(cases):
                event = await next_event(websocket, conn)
                assert isinstance(event, wisp.Close)
                got[event.stream_id] = event.reason
            assert got == {sid: reason for sid, (_, _, reason) in cases.items()}
        assert gateway._total_streams == 0


async def test_wrong_password_closes_the_connection_without_streams() -> None:
    async with virtual_world() as (_, _server, gateway_host):
        config = GatewayConfig(policy=Policy.permissive(), users={"alice": "right"})
        async with running_gateway(config, gateway_host) as gateway:
            address = gateway.addresses["http"]
            bad = [wisp.UdpExtension(), wisp.PasswordCredentials("alice", "wrong")]
            with pytest.raises(ConnectionRefusedError) as caught:
                async with wisp_client(address, bad):
                    pass
            assert caught.value.args[0] == CloseReason.AUTH_BAD_PASSWORD
            with pytest.raises(ConnectionRefusedError) as caught:
                async with wisp_client(address, [wisp.UdpExtension()]):
                    pass
            assert caught.value.args[0] == CloseReason.AUTH_MISSING_CREDENTIALS
            good = [wisp.PasswordCredentials("alice", "right")]
            async with wisp_client(address, good) as (_, conn):
                assert conn.state is wisp.ConnectionState.OPEN
            metrics = gateway.metrics.render().decode()
            assert 'netshim_gateway_auth_failures_total{protocol="wisp"} 2.0' in metrics
            assert gateway._total_streams == 0


async def test_fuzzed_frames_close_only_the_offending_stream() -> None:
    async with virtual_world() as (_, server, gateway_host):
        listener = await server.listen_tcp(None, 7)
        config = GatewayConfig(policy=Policy.permissive())
        async with (
            listener,
            anyio.create_task_group() as group,
            running_gateway(config, gateway_host) as gateway,
            wisp_client(gateway.addresses["http"]) as (websocket, conn),
        ):
            group.start_soon(listener.serve, echo_forever)
            await websocket.send(conn.send(wisp.Connect(1, "server", 7)))
            rng = random.Random(5)
            for _ in range(300):
                kind = rng.choice([0, 1, 2, 3, 4, 5, 9, 255])
                stream_id = rng.choice([0, 2, 3, 0xFFFFFFFF])
                junk = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 40)))
                if kind == wisp.PacketType.CLOSE and stream_id == 0:
                    continue  # a legitimate "close the connection", not garbage
                message = struct.pack("<BI", kind, stream_id) + junk
                await websocket.send(message[: rng.randrange(0, len(message) + 1)])
            await websocket.send(conn.send(wisp.Data(1, b"still alive")))
            received = b""
            while received != b"still alive":
                event = await next_event(websocket, conn)
                if isinstance(event, wisp.Data) and event.stream_id == 1:
                    received += event.data
            group.cancel_scope.cancel()


async def test_credit_ignoring_client_is_throttled_and_bounded() -> None:
    async with virtual_world() as (_, server, gateway_host):
        listener = await server.listen_tcp(None, 9)
        stalled = anyio.Event()

        async def never_read(stream: anyio.abc.ByteStream) -> None:
            await stalled.wait()

        config = GatewayConfig(policy=Policy.permissive(), wisp_buffer_size=8)
        async with (
            listener,
            anyio.create_task_group() as group,
            running_gateway(config, gateway_host) as gateway,
            wisp_client(gateway.addresses["http"]) as (websocket, conn),
        ):
            group.start_soon(listener.serve, never_read)
            await websocket.send(conn.send(wisp.Connect(1, "server", 9)))
            chunk = bytes(64 * 1024)
            header = struct.pack("<BI", wisp.PacketType.DATA, 1)
            # Far past the 8 credits, bypassing the client core's own check.
            for _ in range(200):
                await websocket.send(header + chunk)
            event = await next_event(websocket, conn)
            while not isinstance(event, wisp.Close):
                event = await next_event(websocket, conn)
            assert event == wisp.Close(1, CloseReason.THROTTLED)
            stalled.set()
            group.cancel_scope.cancel()
        assert gateway._total_streams == 0


async def test_streams_per_client_limit() -> None:
    async with virtual_world() as (_, server, gateway_host):
        listener = await server.listen_tcp(None, 7)
        policy = Policy(
            allow_private=True, limits=Policy().limits.__class__(max_streams_per_client=3)
        )
        async with (
            listener,
            anyio.create_task_group() as group,
            running_gateway(GatewayConfig(policy=policy), gateway_host) as gateway,
            wisp_client(gateway.addresses["http"]) as (websocket, conn),
        ):
            group.start_soon(listener.serve, echo_forever)
            for stream_id in range(1, 6):
                await websocket.send(conn.send(wisp.Connect(stream_id, "server", 7)))
            closed = []
            while len(closed) < 2:
                event = await next_event(websocket, conn)
                if isinstance(event, wisp.Close):
                    closed.append(event.reason)
            assert closed == [CloseReason.THROTTLED] * 2
            group.cancel_scope.cancel()


async def test_a_client_obeying_credits_parks_no_more_than_its_upload_budget() -> None:
    # Credits count packets: 8 streams x 12 packets of 256 KiB are well within
    # 128 credits each, yet 24 MiB.  A destination that does not read yet must
    # not make the gateway hold it all: the client's reads pause at its budget.
    async with virtual_world() as (_, server, gateway_host):
        listener = await server.listen_tcp(None, 9)
        release = anyio.Event()
        arrived = 0

        async def read_later(stream: anyio.abc.ByteStream) -> None:
            nonlocal arrived
            await release.wait()
            with contextlib.suppress(anyio.EndOfStream, OSError):
                while True:
                    data = await stream.receive()
                    arrived += len(data)

        budget = 2 << 20
        packet = bytes(256 * 1024)
        streams, packets = range(1, 9), 12
        config = GatewayConfig(policy=Policy.permissive(), upload_buffer=budget)
        async with (
            listener,
            anyio.create_task_group() as group,
            running_gateway(config, gateway_host) as gateway,
            wisp_client(gateway.addresses["http"]) as (websocket, conn),
        ):
            group.start_soon(listener.serve, read_later)

            async def upload() -> None:
                for stream_id in streams:
                    await websocket.send(conn.send(wisp.Connect(stream_id, "server", 9)))
                for _ in range(packets):
                    for stream_id in streams:
                        await websocket.send(conn.send(wisp.Data(stream_id, packet)))

            group.start_soon(upload)
            peak = 0
            with anyio.move_on_after(1.5):
                while True:
                    held = gateway._budgets.get("127.0.0.1")
                    peak = max(peak, held.queued if held is not None else 0)
                    await anyio.sleep(0.002)
            # It filled up to the budget and no further (one message may be
            # read past it: the check comes before each message).
            assert budget // 2 < peak <= budget + len(packet) + wisp.HEADER_SIZE
            release.set()
            total = len(streams) * packets * len(packet)
            with anyio.fail_after(20):
                while arrived < total:  # noqa: ASYNC110 - counted by the readers
                    await anyio.sleep(0.01)
            assert arrived == total
            assert gateway._budgets["127.0.0.1"].queued == 0
            group.cancel_scope.cancel()
