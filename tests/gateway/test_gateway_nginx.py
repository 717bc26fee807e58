"""The gateway behind Debian's nginx as the WebSocket reverse proxy (docs/gateway.md).

Real clients go through nginx: wisp-js (v1 and v2, TCP and UDP) and a
websockify-style client on the wsproxy path, with SHA-256 checked end to end.
nginx connects to the gateway from 127.0.0.2 and sets ``X-Forwarded-For``,
so the tests can check that a gateway trusting that proxy logs the client's
real address (127.0.0.1), and that one trusting nobody, or a forged header,
changes nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import pytest
from gateway_helpers import (
    bulk_target,
    nginx_in_front,
    run_wisp_js_client,
    running_gateway,
    udp_echo,
)

from netshim.gateway import GatewayConfig
from netshim.policy import Policy
from netshim.protocols import wisp
from netshim.transports.websocket import open_websocket, parse_websocket_url

pytestmark = pytest.mark.anyio

LOOPBACK = Policy(allow=["127.0.0.1"])
PROXY_IP = "127.0.0.2"


def stream_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("stream ")]


@pytest.mark.parametrize("version", [1, 2])
async def test_wisp_js_through_nginx_keeps_every_byte_and_the_real_ip(
    version: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="netshim.gateway")
    config = GatewayConfig(policy=LOOPBACK, trusted_proxies=(f"{PROXY_IP}/32",))
    sizes = [(0, 3 << 20), (2 << 20, 0), (1 << 20, 1 << 20)]
    async with (
        bulk_target() as target,
        udp_echo() as echo,
        running_gateway(config) as gateway,
        nginx_in_front(gateway.addresses["http"], tmp_path, bind=PROXY_IP) as proxy,
    ):
        host, port = target.address
        streams: list[dict[str, object]] = [
            {"type": "tcp", "host": host, "port": port, "upload": up, "download": down}
            for up, down in sizes
        ]
        streams.append({"type": "udp", "host": echo[0], "port": echo[1], "datagrams": 20})
        result = await run_wisp_js_client(
            {
                "mode": "wisp",
                "url": f"ws://{proxy[0]}:{proxy[1]}/",
                "version": version,
                "streams": streams,
            }
        )
    assert result["version"] == version
    got = result["streams"]
    assert isinstance(got, list)
    for (up, down), stream in zip(sizes, got[:-1], strict=True):
        transfer = target.find(stream["up"])
        assert (transfer.up_bytes, transfer.down_bytes) == (up, down)
        assert stream["received"] == down
        assert stream["down"] == transfer.down_sha
    udp = got[-1]
    assert udp["echoed"] == 20
    assert udp["down"] == udp["up"]
    lines = stream_lines(caplog)
    assert len(lines) == len(streams)
    # The client's address from X-Forwarded-For, not nginx's 127.0.0.2.
    assert all(" client=127.0.0.1:0 " in line for line in lines), lines


async def test_wsproxy_through_nginx(tmp_path: Path) -> None:
    async with (
        bulk_target() as target,
        running_gateway(GatewayConfig(policy=LOOPBACK)) as gateway,
        nginx_in_front(gateway.addresses["http"], tmp_path, bind=PROXY_IP) as proxy,
    ):
        host, port = target.address
        result = await run_wisp_js_client(
            {
                "mode": "wsproxy",
                "url": f"ws://{proxy[0]}:{proxy[1]}/{host}:{port}",
                "streams": [{"type": "tcp", "upload": 1 << 20, "download": 2 << 20}],
            }
        )
    assert result["protocol"] == "binary"
    [stream] = result["streams"]  # type: ignore[misc]
    assert stream["received"] == 2 << 20
    assert stream["down"] == target.find(stream["up"]).down_sha


async def open_one_stream(proxy: tuple[str, int], target: tuple[str, int], forged: str) -> None:
    """A Wisp v1 client over the sans-I/O core that sends a forged X-Forwarded-For."""
    endpoint = parse_websocket_url(f"ws://{proxy[0]}:{proxy[1]}/")
    websocket = await open_websocket(endpoint, headers={"X-Forwarded-For": forged})
    conn = wisp.WispConnection(wisp.Role.CLIENT, version=1)
    try:
        with anyio.fail_after(10):
            while conn.state is not wisp.ConnectionState.OPEN:
                message = await websocket.receive()
                assert isinstance(message, bytes)
                conn.receive_data(message)
                list(conn.events())
            await websocket.send(conn.send(wisp.Connect(1, target[0], target[1])))
            await websocket.send(conn.send(wisp.Data(1, bytes(16))))
            while True:
                message = await websocket.receive()
                assert isinstance(message, bytes)
                conn.receive_data(message)
                if any(isinstance(e, wisp.Close) for e in conn.events()):
                    break
    finally:
        await websocket.aclose()


@pytest.mark.parametrize("trusted", [True, False])
async def test_forged_forwarded_for_is_not_believed(
    trusted: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="netshim.gateway")
    proxies = (f"{PROXY_IP}/32",) if trusted else ()
    config = GatewayConfig(policy=LOOPBACK, trusted_proxies=proxies)
    async with (
        bulk_target() as target,
        running_gateway(config) as gateway,
        nginx_in_front(gateway.addresses["http"], tmp_path, bind=PROXY_IP) as proxy,
    ):
        await open_one_stream(proxy, target.address, forged="203.0.113.7")
    # Leaving the block ended the gateway, so every stream has logged its line.
    [line] = stream_lines(caplog)
    assert "203.0.113.7" not in line
    # nginx appends the address it saw; the gateway takes the rightmost hop
    # that is not a trusted proxy.  Trusting nobody, it logs nginx itself.
    assert (" client=127.0.0.1:0 " in line) is trusted, line
    assert (f" client={PROXY_IP}:" in line) is not trusted, line
