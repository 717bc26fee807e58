"""Unmodified redis-py (sync and asyncio) and asyncpg reach real servers through each tunnel stack.

A real ``redis-server`` and a throw-away PostgreSQL cluster listen on
loopback; our gateway runs as its own process (so that its sockets are never
the patched ones), allowed to reach loopback, and logs one line per stream.
Each test installs netshim with a Wisp, SOCKS5 or websockify stack to that
gateway, runs the client libraries as they are, and then finds its
connections in the gateway's log: the traffic really went through the tunnel.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from postgres_cluster import postgres_cluster
from tunnel_helpers import free_port

import netshim
from netshim import Socks5Stack, Stack, WebsockifyStack, WispStack
from netshim.shim._engine import get_engine
from netshim.testing import require_peer

#: One value big enough to need many Wisp credits and WebSocket frames.
BIG = os.urandom(3 << 20)


def _wait_for(address: tuple[str, int], process: subprocess.Popen[bytes], what: str) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with status {process.returncode}")
        try:
            socket.create_connection(address, timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{what} did not listen on {address} within 30 s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Gateway:
    """Our gateway in a subprocess: its ports and the file its log goes to."""

    port: int
    socks_port: int
    log: Path

    def stacks(self) -> dict[str, Callable[[], Stack]]:
        return {
            "wisp": lambda: WispStack(f"wisp://127.0.0.1:{self.port}/"),
            "socks5": lambda: Socks5Stack(f"socks5h://127.0.0.1:{self.socks_port}"),
            "websockify": lambda: WebsockifyStack(f"ws://127.0.0.1:{self.port}/"),
        }

    def wait_for_streams(self, protocol: str, port: int, count: int = 1) -> None:
        """Wait until the log shows ``count`` finished streams of ``protocol`` to ``port``."""
        needle = f"stream protocol={protocol} transport=tcp"
        deadline = time.monotonic() + 10
        while True:
            lines = [
                line
                for line in self.log.read_text().splitlines()
                if needle in line and f"dest=127.0.0.1:{port} " in line
            ]
            if len(lines) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(lines) >= count, f"no {protocol} stream to port {port} in the gateway log"


PROTOCOL = {"wisp": "wisp", "socks5": "socks5", "websockify": "wsproxy"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    port, socks_port = free_port(), free_port()
    command = [
        sys.executable,
        "-m",
        "netshim",
        "gateway",
        "--port",
        str(port),
        "--socks-port",
        str(socks_port),
        "--allow",
        "127.0.0.1",
        "--shutdown-grace",
        "0",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        _wait_for(("127.0.0.1", port), process, "the gateway")
        _wait_for(("127.0.0.1", socks_port), process, "the gateway's SOCKS5 port")
        yield Gateway(port, socks_port, log)
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    server = require_peer("redis-server")
    port = free_port()
    command = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    process = subprocess.Popen(
        [*command, "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for(("127.0.0.1", port), process, "redis-server")
        yield port
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def postgres_port() -> Iterator[int]:
    with postgres_cluster() as port:
        yield port


@pytest.fixture(params=["wisp", "socks5", "websockify"])
def stack_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def installed_stack(gateway: Gateway, stack_name: str) -> Iterator[Stack]:
    stack = gateway.stacks()[stack_name]()
    with netshim.installed(stack):
        yield stack
    # The stack's WebSocket or control connections live on the shim's
    # engine loop, so they are closed there.
    get_engine().call(stack.aclose)


def test_redis_sync(
    gateway: Gateway, redis_port: int, stack_name: str, installed_stack: Stack
) -> None:
    import redis

    client = redis.Redis(host="127.0.0.1", port=redis_port, socket_timeout=20)
    try:
        key = f"netshim:{stack_name}"
        assert client.ping() is True
        client.delete(key, f"{key}:list")
        assert client.set(key, BIG) is True
        assert client.get(key) == BIG
        with client.pipeline() as pipe:
            for i in range(200):
                pipe.rpush(f"{key}:list", i)
            pipe.lrange(f"{key}:list", 0, -1)
            replies = pipe.execute()
        assert replies[-1] == [str(i).encode() for i in range(200)]
        assert client.connection_pool.connection_kwargs["host"] == "127.0.0.1"
    finally:
        client.close()
    gateway.wait_for_streams(PROTOCOL[stack_name], redis_port)


def test_a_program_that_leaves_its_client_to_the_finalizer_exits(
    gateway: Gateway, redis_port: int, stack_name: str
) -> None:
    # Redis.__del__ closes the socket while the interpreter finalizes, when
    # netshim's engine thread never runs again: the close must not wait for it.
    url = {"wisp": "wisp://127.0.0.1:{port}/", "socks5": "socks5h://127.0.0.1:{socks}"}.get(
        stack_name, "ws://127.0.0.1:{port}/"
    )
    stack_url = url.format(port=gateway.port, socks=gateway.socks_port)
    script = (
        "import netshim, redis\n"
        f"netshim.install(netshim.stack_from_url({stack_url!r}))\n"
        f"client = redis.Redis(host='127.0.0.1', port={redis_port})\n"
        "client.set('netshim:exit', b'x')\n"
        "print(client.get('netshim:exit'))\n"
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "b'x'"
    assert time.monotonic() - started < 20


def test_redis_asyncio(
    gateway: Gateway, redis_port: int, stack_name: str, installed_stack: Stack
) -> None:
    import redis.asyncio

    async def main() -> None:
        # Wisp and SOCKS5 (socks5h) resolve "localhost" at the gateway.  A
        # websockify stream only fails after the WebSocket opened, so
        # asyncio would not fall back from ::1 (refused there) to 127.0.0.1.
        host = "127.0.0.1" if stack_name == "websockify" else "localhost"
        client = redis.asyncio.Redis(host=host, port=redis_port, socket_timeout=20)
        try:
            key = f"netshim:aio:{stack_name}"
            await client.set(key, BIG)
            assert await client.get(key) == BIG
            assert await client.incrby(f"{key}:n", 5) >= 5
            async with client.pubsub() as pubsub:
                await pubsub.subscribe("news")
                assert (await pubsub.get_message(timeout=10))["type"] == "subscribe"
                assert await client.publish("news", b"hello") == 1
                message = await pubsub.get_message(timeout=10)
                assert message is not None
                assert message["data"] == b"hello"
        finally:
            await client.aclose()
        # Concurrent commands open connections side by side on one tunnel;
        # each reply must reach its own connection whoever reads the tunnel.
        for _ in range(10):
            pool = redis.asyncio.Redis(host=host, port=redis_port, socket_timeout=20)
            try:
                replies = await asyncio.wait_for(
                    asyncio.gather(*(pool.ping() for _ in range(4))), 10
                )
                assert replies == [True] * 4
            finally:
                await pool.aclose()

    asyncio.run(main())
    gateway.wait_for_streams(PROTOCOL[stack_name], redis_port, count=2)


def test_asyncpg(
    gateway: Gateway, postgres_port: int, stack_name: str, installed_stack: Stack
) -> None:
    import asyncpg

    async def main() -> None:
        connection = await asyncpg.connect(
            host="127.0.0.1", port=postgres_port, user="postgres", database="postgres", timeout=20
        )
        try:
            assert await connection.fetchval("select 1 + 1") == 2
            await connection.execute("create temporary table t (id int primary key, body bytea)")
            rows = [(i, os.urandom(i * 37)) for i in range(500)]
            await connection.executemany("insert into t values ($1, $2)", rows)
            assert [tuple(r) for r in await connection.fetch("select * from t order by id")] == rows
            assert await connection.fetchval("select $1::bytea", BIG) == BIG
            async with connection.transaction():
                await connection.execute("delete from t where id < 100")
            assert await connection.fetchval("select count(*) from t") == 400
        finally:
            await connection.close()

    asyncio.run(main())
    gateway.wait_for_streams(PROTOCOL[stack_name], postgres_port)
