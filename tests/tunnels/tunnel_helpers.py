"""Servers the tunnel tests reach through each stack, and a running gateway.

Targets run on the host network (or any stack) on loopback.  The bulk
target reads a 16-byte header (upload and download sizes, big-endian),
swallows the upload, answers with ``download`` random bytes and closes; it
records SHA-256 digests of both directions so tests compare them end to end.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc

from netshim import HostStack as HostStack
from netshim import Stack, TcpStream
from netshim.gateway import Gateway, GatewayConfig
from netshim.policy import Policy
from netshim.testing import CHECKS, StackPair

TESTS = Path(__file__).resolve().parent.parent
NODE_PEERS = TESTS / "peers" / "node"
LOOPBACK = Policy(allow=["127.0.0.1", "::1", "localhost"])

#: Checks of the conformance kit that a tunnel can pass.  Left out, because a
#: tunnel cannot answer them: local addresses (they are the server's),
#: half-close (Wisp and websockify have none), and UDP sources and
#: ECONNREFUSED (the server's UDP socket is the one that sees them).
TUNNEL_CHECKS = (
    "tcp_echo_both_ways",
    "tcp_bulk_integrity",
    "tcp_abort_resets_peer",
    "tcp_closed_resource",
    "tcp_refused",
    "bad_ports",
    "udp_size_limit",
    "getaddrinfo_numeric",
)


async def run_checks(client: Stack, names: Iterable[str] = TUNNEL_CHECKS) -> None:
    """Run the named conformance checks with ``client`` connecting to the host network."""
    for name in names:
        pair = StackPair(HostStack(), client, "127.0.0.1", "0.0.0.0")
        try:
            with anyio.fail_after(30):
                await CHECKS[name](pair)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc


@dataclass
class Transfer:
    up_sha: str
    down_sha: str
    up_bytes: int
    down_bytes: int


@dataclass
class BulkTarget:
    address: tuple[str, int] = ("127.0.0.1", 0)
    transfers: list[Transfer] = field(default_factory=list)


async def _read_exactly(stream: TcpStream, size: int, digest: hashlib._Hash | None = None) -> bytes:
    parts = []
    while size:
        data = await stream.receive(min(size, 1 << 16))
        size -= len(data)
        if digest is None:
            parts.append(data)
        else:
            digest.update(data)
    return b"".join(parts)


async def _serve_bulk(stream: TcpStream, target: BulkTarget) -> None:
    try:
        header = await _read_exactly(stream, 16)
        upload, download = struct.unpack("!QQ", header)
        up = hashlib.sha256()
        await _read_exactly(stream, upload, up)
        down = hashlib.sha256()
        left = download
        while left:
            chunk = os.urandom(min(left, 1 << 16))
            down.update(chunk)
            await stream.send(chunk)
            left -= len(chunk)
    except (anyio.EndOfStream, OSError):
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


async def bulk_exchange(
    stream: anyio.abc.ByteStream, upload: int, download: int
) -> tuple[str, str, int]:
    """Run one bulk transfer on ``stream``: (SHA-256 up, SHA-256 down, bytes down)."""
    up, down = hashlib.sha256(), hashlib.sha256()
    received = 0

    async def send() -> None:
        await stream.send(struct.pack("!QQ", upload, download))
        left = upload
        while left:
            chunk = os.urandom(min(left, 1 << 16))
            up.update(chunk)
            await stream.send(chunk)
            left -= len(chunk)

    async with anyio.create_task_group() as group:
        group.start_soon(send)
        while received < download:
            try:
                data = await stream.receive()
            except anyio.EndOfStream:
                break
            down.update(data)
            received += len(data)
    return up.hexdigest(), down.hexdigest(), received


@asynccontextmanager
async def udp_echo(host: str = "127.0.0.1") -> AsyncIterator[tuple[str, int]]:
    sock = await HostStack().open_udp(host, 0)
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
    config: GatewayConfig | None = None,
    stack: Stack | None = None,
    *,
    socks: bool = False,
    listen_stack: Stack | None = None,
    host: str = "127.0.0.1",
) -> AsyncIterator[Gateway]:
    """Our gateway on loopback (ports chosen by the kernel), allowed to reach loopback."""
    gateway = Gateway(stack, config or GatewayConfig(policy=LOOPBACK))
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


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for peer programs that need one on the command line)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def wait_for_port(host: str, port: int, limit: float = 20) -> None:
    """Wait until something accepts TCP connections on ``host:port``."""
    with anyio.fail_after(limit):
        while True:
            try:
                stream = await anyio.connect_tcp(host, port)
            except OSError:
                await anyio.sleep(0.05)
                continue
            await stream.aclose()
            return


def node_program(script: str) -> list[str]:
    """``node`` and one of the scripts in tests/peers/node, failing or skipping as peers do."""
    import pytest

    from netshim.testing import REQUIRE_PEERS_VARIABLE, require_peer

    node = require_peer("node")
    if not (NODE_PEERS / "node_modules" / "@mercuryworkshop" / "wisp-js").is_dir():
        message = f"run 'npm ci' in {NODE_PEERS} to install the Node peers"
        if os.environ.get(REQUIRE_PEERS_VARIABLE) == "1":
            pytest.fail(message)
        pytest.skip(message)
    return [node, str(NODE_PEERS / script)]


@asynccontextmanager
async def wisp_js_server(**settings: object) -> AsyncIterator[str]:
    """The wisp-js server on loopback; yields its ``wisp://`` URL."""
    import json

    command = [*node_program("wisp_server.mjs"), json.dumps(settings)]
    async with await anyio.open_process(command) as process:
        try:
            assert process.stdout is not None
            line = b""
            with anyio.fail_after(20):
                while not line.endswith(b"\n"):
                    line += await process.stdout.receive(1)
            port = json.loads(line)["port"]
            yield f"wisp://127.0.0.1:{port}/"
        finally:
            process.kill()
