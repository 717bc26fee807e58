"""Targets and a running gateway for the gateway tests.

The bulk target speaks the tests' one-line protocol: a 16-byte header (upload
and download sizes as big-endian uint64), the upload, then the target sends
``download`` random bytes and closes.  It records the SHA-256 of what it
received and of what it sent, so a test compares digests end to end.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc

from netshim import HostStack, Stack, TcpStream
from netshim._addresses import Address
from netshim.gateway import Gateway, GatewayConfig
from netshim.testing import REQUIRE_PEERS_VARIABLE
from netshim.testing import require_peer as require_peer

TESTS = Path(__file__).resolve().parent.parent
NODE_PEERS = TESTS / "peers" / "node"


REQUIRE_PEERS = os.environ.get(REQUIRE_PEERS_VARIABLE) == "1"


@dataclass
class Transfer:
    up_sha: str
    down_sha: str
    up_bytes: int
    down_bytes: int


@dataclass
class BulkTarget:
    address: Address = ("127.0.0.1", 0)
    transfers: list[Transfer] = field(default_factory=list)

    def find(self, up_sha: str) -> Transfer:
        for transfer in self.transfers:
            if transfer.up_sha == up_sha:
                return transfer
        raise AssertionError(f"no transfer uploaded {up_sha}: {self.transfers}")


async def _read_exactly(stream: TcpStream, size: int, digest: hashlib._Hash | None = None) -> bytes:
    parts = []
    while size:
        data = await stream.receive(min(size, 1 << 18))
        size -= len(data)
        if digest is None:
            parts.append(data)
        else:
            digest.update(data)
    return b"".join(parts)


async def _serve_bulk(stream: TcpStream, target: BulkTarget) -> None:
    try:
        header = await _read_exactly(stream, 16)
    except (anyio.EndOfStream, OSError):
        return
    upload, download = struct.unpack("!QQ", header)
    up = hashlib.sha256()
    await _read_exactly(stream, upload, up)
    down = hashlib.sha256()
    left = download
    try:
        while left:
            chunk = os.urandom(min(left, 1 << 16))
            down.update(chunk)
            await stream.send(chunk)
            left -= len(chunk)
    except OSError:
        return
    target.transfers.append(Transfer(up.hexdigest(), down.hexdigest(), upload, download))


@asynccontextmanager
async def bulk_target(
    stack: Stack | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[BulkTarget]:
    stack = stack or HostStack()
    target = BulkTarget()
    listener = await stack.listen_tcp(host, 0)
    target.address = listener.local_address
    async with anyio.create_task_group() as group:
        group.start_soon(listener.serve, lambda s: _serve_bulk(s, target))
        try:
            yield target
        finally:
            await listener.aclose()
            group.cancel_scope.cancel()


@asynccontextmanager
async def udp_echo(stack: Stack | None = None, host: str = "127.0.0.1") -> AsyncIterator[Address]:
    stack = stack or HostStack()
    sock = await stack.open_udp(host, 0)
    async with anyio.create_task_group() as group:

        async def echo() -> None:
            async for data, source in sock:
                await sock.send(data, source)

        group.start_soon(echo)
        try:
            yield sock.local_address
        finally:
            await sock.aclose()
            group.cancel_scope.cancel()


@asynccontextmanager
async def running_gateway(
    config: GatewayConfig,
    stack: Stack | None = None,
    *,
    socks: bool = False,
    listen_stack: Stack | None = None,
    host: str = "127.0.0.1",
) -> AsyncIterator[Gateway]:
    gateway = Gateway(stack, config)
    async with anyio.create_task_group() as group:
        await group.start(
            lambda task_status: gateway.serve(
                host=host,
                port=0,
                socks_port=0 if socks else None,
                listen_stack=listen_stack,
                task_status=task_status,
            )
        )
        try:
            yield gateway
        finally:
            group.cancel_scope.cancel()


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


def _free_port(host: str) -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


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
        port = _free_port("127.0.0.1")
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
