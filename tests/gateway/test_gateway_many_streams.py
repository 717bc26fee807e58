"""1,000 concurrent streams over one Wisp connection, each moving 1 MiB with SHA-256 intact.

The client is the sans-I/O Wisp core over netshim's own WebSocket client:
it opens every stream at once, sends each target a header and a stream-unique
upload, and reads all downloads interleaved on one WebSocket.  The targets
are kernel loopback sockets served by the bulk target of gateway_helpers.
"""

from __future__ import annotations

import hashlib
import struct

import anyio
import pytest
from gateway_helpers import bulk_target, running_gateway

from netshim.gateway import GatewayConfig
from netshim.policy import Limits, Policy
from netshim.protocols import wisp
from netshim.transports.websocket import open_websocket, parse_websocket_url

pytestmark = pytest.mark.anyio

STREAMS = 1000
SIZE = 1 << 20


@pytest.fixture
def anyio_backend() -> str:
    # One backend is enough for a load test; the protocol tests run both.
    return "asyncio"


async def test_thousand_streams_of_one_mib_over_one_connection() -> None:
    policy = Policy(
        allow=["127.0.0.1"],
        limits=Limits(max_streams_per_client=STREAMS, max_streams_total=STREAMS),
    )
    async with (
        # Every stream's connection waits in the target's accept queue at once.
        bulk_target(backlog=STREAMS) as target,
        running_gateway(GatewayConfig(policy=policy)) as gateway,
    ):
        host, port = target.address
        endpoint = parse_websocket_url(
            f"ws://{gateway.addresses['http'][0]}:{gateway.addresses['http'][1]}/"
        )
        websocket = await open_websocket(endpoint, subprotocols=("wisp-v2",))
        conn = wisp.WispConnection(wisp.Role.CLIENT, version=2)
        digests = {i: hashlib.sha256() for i in range(1, STREAMS + 1)}
        received = dict.fromkeys(digests, 0)
        uploads: dict[int, bytes] = {}
        closed: dict[int, int] = {}
        try:
            # A stall guard, not a timing: the run takes about 15 s on two cores.
            with anyio.fail_after(120):
                while conn.state is not wisp.ConnectionState.OPEN:
                    message = await websocket.receive()
                    assert isinstance(message, bytes)
                    conn.receive_data(message)
                    for event in conn.events():
                        if isinstance(event, wisp.Info):
                            await websocket.send(conn.send(conn.local_info()))
                for stream_id in digests:
                    upload = b"stream %08d" % stream_id
                    uploads[stream_id] = upload
                    await websocket.send(conn.send(wisp.Connect(stream_id, host, port)))
                    header = struct.pack("!QQ", len(upload), SIZE)
                    await websocket.send(conn.send(wisp.Data(stream_id, header + upload)))
                while len(closed) < STREAMS:
                    message = await websocket.receive()
                    assert message is not None, "the gateway closed the WebSocket"
                    assert isinstance(message, bytes)
                    conn.receive_data(message)
                    for event in conn.events():
                        if isinstance(event, wisp.Data):
                            digests[event.stream_id].update(event.data)
                            received[event.stream_id] += len(event.data)
                        elif isinstance(event, wisp.Close):
                            closed[event.stream_id] = event.reason
        finally:
            await websocket.aclose()
    assert set(closed.values()) == {wisp.CloseReason.VOLUNTARY}
    assert set(received.values()) == {SIZE}
    assert len(target.transfers) == STREAMS
    for stream_id, digest in digests.items():
        transfer = target.find(hashlib.sha256(uploads[stream_id]).hexdigest())
        assert digest.hexdigest() == transfer.down_sha
    # Every stream's log line was written and its slot given back.
    assert gateway._total_streams == 0
