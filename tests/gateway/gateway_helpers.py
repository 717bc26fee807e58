"""What the gateway tests add to tests/transfer_targets.py: the wisp-js client, nginx in front."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from transfer_targets import NODE_PEERS as NODE_PEERS
from transfer_targets import BulkTarget as BulkTarget
from transfer_targets import Transfer as Transfer
from transfer_targets import bulk_target as bulk_target
from transfer_targets import free_port
from transfer_targets import running_gateway as running_gateway
from transfer_targets import udp_echo as udp_echo

from netshim._addresses import Address
from netshim.testing import REQUIRE_PEERS_VARIABLE
from netshim.testing import require_peer as require_peer

REQUIRE_PEERS = os.environ.get(REQUIRE_PEERS_VARIABLE) == "1"


def node_client() -> list[str]:
    """The command that runs tests/peers/node/wisp_client.mjs (wisp-js's client) under Node."""
    node = require_peer("node")
    if not (NODE_PEERS / "node_modules" / "@mercuryworkshop" / "wisp-js").is_dir():
        message = f"run 'npm ci' in {NODE_PEERS} to install the Node peers"
        if REQUIRE_PEERS:
            pytest.fail(message)
        pytest.skip(message)
    return [node, str(NODE_PEERS / "wisp_client.mjs")]


async def run_wisp_js_client(plan: dict[str, object], limit: float = 60) -> dict[str, object]:
    """Run the wisp-js client on ``plan`` (JSON on its command line); the JSON it printed."""
    command = [*node_client(), json.dumps(plan)]
    # A stall guard, not a timing.
    with anyio.fail_after(limit):
        result = await anyio.run_process(command, check=False)
    assert result.returncode == 0, result.stderr.decode()
    output: dict[str, object] = json.loads(result.stdout)
    return output


NGINX_CONFIG = """\
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {directory}/access.log;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    server {{
        listen {listen_host}:{listen_port};
        location / {{
            proxy_pass http://{gateway_host}:{gateway_port};
            # The gateway sees this address as its peer, so that a test can
            # tell the proxy apart from the client, both on loopback.
            proxy_bind {bind};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_buffering off;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
        }}
    }}
}}
"""


@asynccontextmanager
async def nginx_in_front(
    gateway: Address, directory: Path, *, bind: str = "127.0.0.2"
) -> AsyncIterator[Address]:
    """Run Debian's nginx as a WebSocket reverse proxy to ``gateway``; yield its address.

    nginx connects to the gateway from ``bind`` (another loopback address)
    and adds the client's address to ``X-Forwarded-For``, as the deployment
    in docs/gateway.md does.  Its own config, pid file and logs live in
    ``directory``; the process is stopped when the block ends.
    """
    nginx = require_peer("nginx")
    for _attempt in range(5):
        port = free_port("127.0.0.1")
        config = directory / "nginx.conf"
        config.write_text(
            NGINX_CONFIG.format(
                directory=directory,
                listen_host="127.0.0.1",
                listen_port=port,
                gateway_host=gateway[0],
                gateway_port=gateway[1],
                bind=bind,
            )
        )
        process = await anyio.open_process(
            [nginx, "-e", str(directory / "error.log"), "-c", str(config), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            ready = False
            with anyio.move_on_after(10):
                while process.returncode is None and not ready:
                    try:
                        probe = await anyio.connect_tcp("127.0.0.1", port)
                    except OSError:
                        await anyio.sleep(0.02)
                        continue
                    await probe.aclose()
                    ready = True
            if ready:
                yield ("127.0.0.1", port)
                return
        finally:
            if process.returncode is None:
                process.terminate()
                with anyio.move_on_after(5, shield=True):
                    await process.wait()
            await process.aclose()
        # Another process took the port between the probe and nginx's bind.
    log = (directory / "error.log").read_text() if (directory / "error.log").exists() else ""
    raise RuntimeError(f"nginx did not start: {log[-2000:]}")
