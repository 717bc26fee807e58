"""Targets the gateway and tunnel tests (and the benchmarks) move data to, and a running gateway.

The bulk target speaks the tests' one-line protocol: a 16-byte header (upload
and download sizes as big-endian uint64), the upload, then the target sends
``download`` random bytes and closes.  It records the SHA-256 of what it
received and of what it sent, so a test compares digests end to end.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc

from netshim import HostStack, Stack, TcpStream
from netshim._addresses import Address
from netshim.gateway import Gateway, GatewayConfig
from netshim.policy import Policy
from netshim.stack import DEFAULT_BACKLOG

TESTS = Path(__file__).resolve().parent
NODE_PEERS = TESTS / "peers" / "node"
LOOPBACK = Policy(allow=["127.0.0.1", "::1", "localhost"])


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
    stack: Stack | None = None, host: str = "127.0.0.1", *, backlog: int = DEFAULT_BACKLOG
) -> AsyncIterator[BulkTarget]:
    """The bulk target listening on ``host`` of ``stack`` (the host network by default).

    A test that opens more connections at once than the default ``backlog``
    passes a larger one: when the kernel's accept queue is full it drops
    handshakes, and under load some of those connections then time out or
    are reset (a failure of the target, not of what is tested).
    """
    stack = stack or HostStack()
    target = BulkTarget()
    listener = await stack.listen_tcp(host, 0, backlog=backlog)
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
async def udp_echo(stack: Stack | None = None, host: str = "127.0.0.1") -> AsyncIterator[Address]:
    """A UDP socket on ``host`` of ``stack`` that sends every datagram back to its source."""
    sock = await (stack or HostStack()).open_udp(host, 0)
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
    """Our gateway on ``host``, ports picked by the kernel; allowed to reach loopback by default."""
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
