"""The gateway against real clients: wisp-js (v1, v2, TCP, UDP), ws (wsproxy), curl (SOCKS5)."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import anyio
import pytest
from gateway_helpers import (
    NODE_PEERS,
    REQUIRE_PEERS,
    bulk_target,
    require_peer,
    run_wisp_js_client,
    running_gateway,
    udp_echo,
)

from netshim.gateway import GatewayConfig
from netshim.policy import Policy

pytestmark = pytest.mark.anyio

LOOPBACK = Policy(allow=["127.0.0.1"])


def http_url(address: tuple[str, int], path: str = "/") -> str:
    return f"ws://{address[0]}:{address[1]}{path}"


@pytest.mark.parametrize("version", [1, 2])
async def test_wisp_js_tcp_streams_keep_every_byte(version: int) -> None:
    config = GatewayConfig(policy=LOOPBACK, motd="welcome to netshim")
    async with bulk_target() as target, running_gateway(config) as gateway:
        host, port = target.address
        sizes = [(0, 3 << 20), (2 << 20, 0), (1 << 20, 1 << 20), (17, 123_457)]
        plan = {
            "mode": "wisp",
            "url": http_url(gateway.addresses["http"]),
            "version": version,
            "streams": [
                {"type": "tcp", "host": host, "port": port, "upload": up, "download": down}
                for up, down in sizes
            ],
        }
        result = await run_wisp_js_client(plan)
    assert result["version"] == version
    assert result["motd"] == ("welcome to netshim" if version == 2 else None)
    streams = result["streams"]
    assert isinstance(streams, list)
    for (up, down), stream in zip(sizes, streams, strict=True):
        transfer = target.find(stream["up"])
        assert (transfer.up_bytes, transfer.down_bytes) == (up, down)
        assert stream["down"] == transfer.down_sha
        assert stream["received"] == down
        assert stream["reason"] == 0x02  # VOLUNTARY: the target closed after sending all


@pytest.mark.parametrize("version", [1, 2])
async def test_wisp_js_udp_stream(version: int) -> None:
    async with udp_echo() as echo, running_gateway(GatewayConfig(policy=LOOPBACK)) as gateway:
        plan = {
            "mode": "wisp",
            "url": http_url(gateway.addresses["http"]),
            "version": version,
            "streams": [{"type": "udp", "host": echo[0], "port": echo[1], "datagrams": 50}],
        }
        result = await run_wisp_js_client(plan)
    [stream] = result["streams"]  # type: ignore[misc]
    assert stream["echoed"] == 50
    assert stream["down"] == stream["up"]


async def test_wisp_js_blocked_destination_gets_reason_0x48() -> None:
    async with bulk_target() as target, running_gateway(GatewayConfig()) as gateway:
        plan = {
            "mode": "wisp",
            "url": http_url(gateway.addresses["http"]),
            "version": 2,
            "streams": [
                {
                    "type": "tcp",
                    "host": "localhost",
                    "port": target.address[1],
                    "upload": 0,
                    "download": 10,
                },
                {
                    "type": "tcp",
                    "host": "2130706433",
                    "port": target.address[1],
                    "upload": 0,
                    "download": 10,
                },
            ],
        }
        result = await run_wisp_js_client(plan)
        metrics = gateway.metrics.render().decode()
    assert [s["reason"] for s in result["streams"]] == [0x48, 0x48]  # type: ignore[union-attr]
    assert target.transfers == []
    assert 'netshim_gateway_policy_refusals_total{protocol="wisp"} 2.0' in metrics


async def test_wisp_js_many_parallel_streams() -> None:
    async with bulk_target() as target, running_gateway(GatewayConfig(policy=LOOPBACK)) as gateway:
        host, port = target.address
        plan = {
            "mode": "wisp",
            "url": http_url(gateway.addresses["http"]),
            "version": 2,
            "streams": [
                {"type": "tcp", "host": host, "port": port, "upload": 1024, "download": 1 << 20}
                for _ in range(200)
            ],
        }
        result = await run_wisp_js_client(plan, limit=120)
    streams = result["streams"]
    assert isinstance(streams, list)
    assert len(target.transfers) == 200
    for stream in streams:
        assert stream["received"] == 1 << 20
        assert stream["down"] == target.find(stream["up"]).down_sha


async def test_ws_client_through_wsproxy_path_and_token() -> None:
    async with bulk_target() as target:
        host, port = target.address
        config = GatewayConfig(policy=LOOPBACK, targets={"s3cret": (host, port)})
        async with running_gateway(config) as gateway:
            spec = [{"type": "tcp", "upload": 1 << 20, "download": 2 << 20}]
            by_path = await run_wisp_js_client(
                {
                    "mode": "wsproxy",
                    "url": http_url(gateway.addresses["http"], f"/{host}:{port}"),
                    "streams": spec,
                }
            )
            by_token = await run_wisp_js_client(
                {
                    "mode": "wsproxy",
                    "url": http_url(gateway.addresses["http"], "/websockify?token=s3cret"),
                    "streams": spec,
                }
            )
            bad_token = await run_wisp_js_client(
                {
                    "mode": "wsproxy",
                    "url": http_url(gateway.addresses["http"], "/websockify?token=nope"),
                    "streams": spec,
                }
            )
    for result in (by_path, by_token):
        assert result["protocol"] == "binary"
        [stream] = result["streams"]  # type: ignore[misc]
        assert stream["received"] == 2 << 20
        assert stream["down"] == target.find(stream["up"]).down_sha
    assert bad_token == {"status": 400}


def _serve_file(directory: Path) -> list[str]:
    return [sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1", "-d", str(directory)]


@pytest.mark.parametrize("auth", [False, True])
async def test_curl_through_socks5(auth: bool, tmp_path: Path) -> None:
    curl = require_peer("curl")
    blob = os.urandom(5 << 20)
    (tmp_path / "blob").write_bytes(blob)
    users = {"alice": "wonder land"} if auth else {}
    # localhost resolves to the allowed 127.0.0.1, so only the name rule refuses it.
    config = GatewayConfig(policy=Policy(allow=["127.0.0.1"], deny=["localhost"]), users=users)
    async with (
        running_gateway(config, socks=True) as gateway,
        await anyio.open_process(_serve_file(tmp_path)) as http_server,
    ):
        assert http_server.stdout is not None
        # "Serving HTTP on 127.0.0.1 port N ..." tells us the port.
        line = b""
        with anyio.fail_after(10):
            while b"port" not in line:
                line += await http_server.stdout.receive()
        http_port = int(line.split(b"port ")[1].split()[0])
        socks_host, socks_port = gateway.addresses["socks5"]
        proxy = f"socks5h://{socks_host}:{socks_port}"
        if auth:
            proxy = f"socks5h://alice:wonder%20land@{socks_host}:{socks_port}"
        command = [curl, "-sS", "--fail", "--max-time", "30", "-x", proxy]
        fetched = await anyio.run_process(
            [*command, f"http://127.0.0.1:{http_port}/blob"], check=False
        )
        # socks5h: the gateway resolves the name, and its policy checks the result.
        blocked = await anyio.run_process(
            [*command, f"http://localhost:{http_port}/blob"], check=False
        )
        if auth:
            wrong = await anyio.run_process(
                [
                    curl,
                    "-sS",
                    "--max-time",
                    "10",
                    "-x",
                    f"socks5h://alice:nope@{socks_host}:{socks_port}",
                    f"http://127.0.0.1:{http_port}/blob",
                ],
                check=False,
            )
            assert wrong.returncode != 0
        http_server.terminate()
        metrics = gateway.metrics.render().decode()
    assert fetched.returncode == 0, fetched.stderr
    assert hashlib.sha256(fetched.stdout).hexdigest() == hashlib.sha256(blob).hexdigest()
    assert blocked.returncode != 0
    assert 'netshim_gateway_policy_refusals_total{protocol="socks5"} 1.0' in metrics
    failures = 'netshim_gateway_auth_failures_total{protocol="socks5"} 1.0'
    assert (failures in metrics) is auth


def test_node_peers_are_locked() -> None:
    assert (NODE_PEERS / "package-lock.json").is_file()
    assert shutil.which("node") is not None or not REQUIRE_PEERS
