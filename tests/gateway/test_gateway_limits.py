"""The gateway's rate and time limits, and a graceful shutdown with streams open.

A Wisp v2 client built from the sans-I/O core talks to a gateway on loopback
whose policy allows only 127.0.0.1, where the bulk target of gateway_helpers
listens.  Timings are only checked from below (a limit can make a transfer
slower, never faster), so a busy machine cannot make these tests fail.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest
from gateway_helpers import bulk_target, running_gateway

from netshim.gateway import Gateway, GatewayConfig
from netshim.policy import Limits, Policy
from netshim.protocols import wisp
from netshim.protocols.wisp import CloseReason
from netshim.transports.websocket import ClientWebSocket, open_websocket, parse_websocket_url

pytestmark = pytest.mark.anyio


class WispClient:
    """One Wisp v2 connection (with stream confirmation) and the events it received."""

    def __init__(self, websocket: ClientWebSocket, conn: wisp.WispConnection) -> None:
        self.websocket = websocket
        self.conn = conn

    async def send(self, event: wisp.Event) -> None:
        await self.websocket.send(self.conn.send(event))

    async def next_event(self) -> wisp.Event:
        with anyio.fail_after(10):
            while True:
                event = self.conn.next_event()
                if isinstance(event, wisp.Event):
                    return event
                message = await self.websocket.receive()
                assert message is not None, "the gateway closed the WebSocket"
                assert isinstance(message, bytes)
                self.conn.receive_data(message)

    async def download(self, stream_id: int, upload: bytes, size: int) -> tuple[str, int]:
        """Run the bulk target's exchange on an open stream; (SHA-256, close reason)."""
        await self.send(wisp.Data(stream_id, struct.pack("!QQ", len(upload), size)))
        for start in range(0, len(upload), 1 << 16):
            while self.conn.credit(stream_id) == 0:
                event = await self.next_event()
                assert isinstance(event, wisp.Continue), event
            await self.send(wisp.Data(stream_id, upload[start : start + (1 << 16)]))
        digest = hashlib.sha256()
        while True:
            event = await self.next_event()
            if isinstance(event, wisp.Data):
                digest.update(event.data)
            elif isinstance(event, wisp.Close):
                return digest.hexdigest(), event.reason


@asynccontextmanager
async def wisp_client(gateway: Gateway) -> AsyncIterator[WispClient]:
    host, port = gateway.addresses["http"]
    websocket = await open_websocket(
        parse_websocket_url(f"ws://{host}:{port}/"), subprotocols=("wisp-v2",)
    )
    conn = wisp.WispConnection(
        wisp.Role.CLIENT, version=2, extensions=[wisp.StreamConfirmationExtension()]
    )
    client = WispClient(websocket, conn)
    try:
        while conn.state is not wisp.ConnectionState.OPEN:
            event = await client.next_event()
            if isinstance(event, wisp.Info):
                await client.send(conn.local_info())
        yield client
    finally:
        await websocket.aclose()


def policy(**limits: object) -> Policy:
    return Policy(allow=["127.0.0.1"], limits=Limits(**limits))  # type: ignore[arg-type]


async def test_new_stream_rate_limit_throttles_the_excess() -> None:
    config = GatewayConfig(policy=policy(new_streams_per_second=5, new_streams_burst=3))
    async with (
        bulk_target() as target,
        running_gateway(config) as gateway,
        wisp_client(gateway) as client,
    ):
        for stream_id in range(1, 7):
            await client.send(wisp.Connect(stream_id, *target.address))
        answers: dict[int, wisp.Event] = {}
        while len(answers) < 6:
            event = await client.next_event()
            assert isinstance(event, wisp.Continue | wisp.Close), event
            answers[event.stream_id] = event
        accepted = [i for i, e in answers.items() if isinstance(e, wisp.Continue)]
        throttled = [i for i, e in answers.items() if isinstance(e, wisp.Close)]
        assert len(accepted) == 3
        assert {answers[i].reason for i in throttled} == {CloseReason.THROTTLED}  # type: ignore[union-attr]
        # The bucket refills at 5 per second: a stream opened 0.3 s later gets in.
        await anyio.sleep(0.3)
        await client.send(wisp.Connect(7, *target.address))
        assert await client.next_event() == wisp.Continue(7, 128)
        # The accepted streams work.
        digest, reason = await client.download(accepted[0], b"up", 1000)
        assert reason == CloseReason.VOLUNTARY
        assert digest == target.find(hashlib.sha256(b"up").hexdigest()).down_sha
        metrics = gateway.metrics.render().decode()
    assert 'netshim_gateway_streams_closed_total{protocol="wisp",reason="THROTTLED"} 3.0' in metrics


async def test_bandwidth_limit_paces_both_directions() -> None:
    rate = 1 << 20
    config = GatewayConfig(policy=policy(bandwidth=rate))
    upload = bytes(range(256)) * 4096  # 1 MiB
    async with (
        bulk_target() as target,
        running_gateway(config) as gateway,
        wisp_client(gateway) as client,
    ):
        await client.send(wisp.Connect(1, *target.address))
        assert isinstance(await client.next_event(), wisp.Continue)
        started = time.monotonic()
        digest, reason = await client.download(1, upload, 1 << 20)
        elapsed = time.monotonic() - started
    transfer = target.find(hashlib.sha256(upload).hexdigest())
    assert (transfer.up_bytes, reason, digest) == (
        1 << 20,
        CloseReason.VOLUNTARY,
        transfer.down_sha,
    )
    # 2 MiB at 1 MiB/s with a burst of one second's worth: at least one second.
    assert elapsed >= 0.9, elapsed


async def test_idle_timeout_closes_a_silent_stream_and_spares_a_busy_one() -> None:
    config = GatewayConfig(policy=policy(idle_timeout=0.5))
    async with (
        bulk_target() as target,
        running_gateway(config) as gateway,
        wisp_client(gateway) as client,
    ):
        # The bulk target waits for a 16-byte header: stream 1 never sends it.
        await client.send(wisp.Connect(1, *target.address))
        await client.send(wisp.Connect(2, *target.address))
        confirmations = {await client.next_event(), await client.next_event()}
        assert confirmations == {wisp.Continue(1, 128), wisp.Continue(2, 128)}
        started = time.monotonic()
        # Stream 2 sends its header a byte every 0.15 s, for more than twice the timeout.
        header = struct.pack("!QQ", 0, 10)
        sent = 0
        closed_after: float | None = None
        while time.monotonic() - started < 1.2:
            await client.send(wisp.Data(2, header[sent : sent + 1]))
            sent += 1
            with anyio.move_on_after(0.15):
                event = await client.next_event()
                assert event == wisp.Close(1, CloseReason.TRANSFER_TIMEOUT)
                closed_after = time.monotonic() - started
        assert closed_after is not None
        assert closed_after >= 0.45
        # Stream 2 kept moving bytes, so it lives: the rest of its header gets an answer.
        await client.send(wisp.Data(2, header[sent:]))
        received = b""
        while True:
            event = await client.next_event()
            if isinstance(event, wisp.Data):
                received += event.data
            else:
                assert event == wisp.Close(2, CloseReason.VOLUNTARY)
                break
    assert len(received) == 10


async def test_graceful_shutdown_drains_open_streams() -> None:
    size = 8 << 20
    async with bulk_target() as target, running_gateway(GatewayConfig(policy=policy())) as gateway:
        drained = anyio.Event()

        async def shut_down() -> None:
            await gateway.shutdown(grace=30)
            drained.set()

        async with anyio.create_task_group() as group, wisp_client(gateway) as client:
            await client.send(wisp.Connect(1, *target.address))
            assert await client.next_event() == wisp.Continue(1, 128)
            await client.send(wisp.Data(1, struct.pack("!QQ", 2, size) + b"up"))
            first = await client.next_event()
            assert isinstance(first, wisp.Data)
            group.start_soon(shut_down)
            await anyio.sleep(0.1)
            # No new clients, no new streams...
            with pytest.raises(OSError):
                await anyio.connect_tcp(*gateway.addresses["http"])
            await client.send(wisp.Connect(2, *target.address))
            # ...but the open stream ends with all its bytes, then CLOSE.
            digest = hashlib.sha256(first.data)
            received = len(first.data)
            events: list[wisp.Event] = []
            while not any(e == wisp.Close(1, CloseReason.VOLUNTARY) for e in events):
                event = await client.next_event()
                if isinstance(event, wisp.Data):
                    digest.update(event.data)
                    received += len(event.data)
                else:
                    events.append(event)
            assert wisp.Close(2, CloseReason.THROTTLED) in events
            assert received == size
            assert digest.hexdigest() == target.find(hashlib.sha256(b"up").hexdigest()).down_sha
            # The gateway waits while the client's connection is open.
            assert not drained.is_set()
        # The client went away: the drain is over long before the grace period.
        with anyio.fail_after(5):
            await drained.wait()
