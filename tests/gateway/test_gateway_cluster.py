"""LANs across gateway processes: the Redis directory against a real redis-server.

Every test here starts its own ``redis-server`` on a free loopback port (no
persistence, in a temporary directory).  Gateways are played by
:class:`RedisLanDirectory` objects with distinct cluster URLs sharing it.
Waits are for events (news heard, renewals done), each bounded by a generous
guard so a broken build fails instead of hanging; nothing asserts a duration.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio
import pytest

from netshim.gateway._cluster import (
    ClusterMember,
    LanExhaustedError,
    MemberNews,
    NameTakenError,
    RedisLanDirectory,
)
from netshim.testing import require_peer

pytestmark = pytest.mark.anyio

# A guard against hangs, not a measured bound.
GUARD = 30.0
LANS = {"demo": "10.77.0.0/24", "tiny": "10.78.0.0/29"}


@pytest.fixture
def anyio_backend() -> str:
    # redis-py's asyncio client: the cluster runs on asyncio (and uvloop).
    return "asyncio"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """A real redis-server on a free loopback port; its ``redis://`` URL."""
    program = require_peer("redis-server")
    port = _free_port()
    process = subprocess.Popen(
        [program, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + GUARD
        while True:
            assert process.poll() is None, "redis-server exited"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with redis_server(tmp_path) as url:
        yield url


class Ears:
    """Collects a directory's news; waits for a predicate over them."""

    def __init__(self) -> None:
        self.news: list[MemberNews] = []
        self._changed = anyio.Event()

    def __call__(self, news: MemberNews) -> None:
        self.news.append(news)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, check: Callable[[list[MemberNews]], bool]) -> None:
        with anyio.fail_after(GUARD):
            while not check(self.news):
                await self._changed.wait()

    def heard(self, joined: bool, name: str) -> bool:
        return any(n.joined is joined and n.member.name == name for n in self.news)


@contextlib.asynccontextmanager
async def gateway(
    redis_url: str,
    name: str,
    ears: Ears | None = None,
    lost: list[tuple[str, str]] | None = None,
    refresh: float = 0.1,
) -> AsyncIterator[RedisLanDirectory]:
    directory = RedisLanDirectory(
        redis_url,
        f"ws://{name}.test:8080/",
        LANS,
        refresh=refresh,
        on_news=ears,
        on_lost=None if lost is None else (lambda lan, member: lost.append((lan, member))),
    )
    async with directory:
        yield directory


async def wait_renewals(directory: RedisLanDirectory, count: int) -> None:
    with anyio.fail_after(GUARD):
        await directory.wait_renewals(count)


async def test_concurrent_claims_are_unique(redis_url: str) -> None:
    async with gateway(redis_url, "a") as a, gateway(redis_url, "b") as b:
        results: list[ClusterMember | Exception] = []

        async def claim(directory: RedisLanDirectory, wanted: str) -> None:
            try:
                results.append(await directory.claim("demo", wanted))
            except NameTakenError as exc:
                results.append(exc)

        async with anyio.create_task_group() as group:
            for i in range(40):
                # Each name asked by both gateways at once, and some with no name.
                for directory in (a, b):
                    group.start_soon(claim, directory, f"m{i % 20}" if i < 20 else "")
        members = [r for r in results if isinstance(r, ClusterMember)]
        refused = [r for r in results if isinstance(r, NameTakenError)]
        assert len(refused) == 20
        assert len(members) == 60
        assert len({m.name for m in members}) == 60
        assert len({m.address for m in members}) == 60
        network = ipaddress.ip_network(LANS["demo"])
        for member in members:
            assert member.address in network
            assert member.address not in (network.network_address, network.network_address + 1)
            assert member.address != network.broadcast_address
        assert {m.name for m in members} >= {f"m{i}" for i in range(20)}
        listed = await a.members("demo")
        assert sorted(listed, key=lambda m: m.name) == sorted(members, key=lambda m: m.name)
        assert {m.gateway for m in listed} == {a.gateway, b.gateway}


async def test_a_full_lan_refuses_then_reuses_a_released_address(redis_url: str) -> None:
    async with gateway(redis_url, "a") as a:
        # 10.78.0.0/29: .2 to .6 (the network, the gateway's .1 and broadcast kept).
        members = [await a.claim("tiny") for _ in range(5)]
        assert sorted(str(m.address) for m in members) == [f"10.78.0.{i}" for i in range(2, 7)]
        with pytest.raises(LanExhaustedError):
            await a.claim("tiny", "late")
        await a.release("tiny", members[2].name)
        again = await a.claim("tiny", "late")
        assert again.address == members[2].address
        with pytest.raises(KeyError):
            await a.claim("nowhere", "x")


async def test_lookup_by_address_and_name(redis_url: str) -> None:
    async with gateway(redis_url, "a") as a, gateway(redis_url, "b") as b:
        alice = await a.claim("demo", "alice")
        for host in (str(alice.address), "alice", "alice.demo", "ALICE.demo."):
            assert await b.lookup("demo", host) == alice
        for host in ("bob", "bob.demo", "10.77.0.200", "10.1.2.3", "alice.other", "x.alice.demo"):
            assert await b.lookup("demo", host) is None
        assert await b.lookup("tiny", "alice") is None
        await a.release("demo", "alice")
        assert await b.lookup("demo", "alice") is None
        assert await b.lookup("demo", str(alice.address)) is None


async def test_news_reach_other_gateways(redis_url: str) -> None:
    heard_by_b = Ears()
    async with gateway(redis_url, "a") as a, gateway(redis_url, "b", heard_by_b) as b:
        alice = await a.claim("demo", "alice")
        await heard_by_b.wait_for(lambda news: heard_by_b.heard(True, "alice"))
        assert heard_by_b.news == [MemberNews(True, alice)]
        assert b.known("demo") == [alice]
        # A gateway is not told about its own members.
        own = await b.claim("demo", "bob")
        await a.release("demo", "alice")
        await heard_by_b.wait_for(lambda news: heard_by_b.heard(False, "alice"))
        await wait_renewals(b, 3)
        assert heard_by_b.news == [MemberNews(True, alice), MemberNews(False, alice)]
        assert b.known("demo") == []
        assert own.name == "bob"


async def test_a_late_gateway_learns_the_members_already_there(redis_url: str) -> None:
    async with gateway(redis_url, "a") as a:
        alice = await a.claim("demo", "alice")
        ears = Ears()
        async with gateway(redis_url, "b", ears) as b:
            assert b.known("demo") == [alice]
            assert ears.news == [MemberNews(True, alice)]


async def test_members_of_a_gateway_that_stops_renewing_expire(redis_url: str) -> None:
    ears = Ears()
    async with gateway(redis_url, "b", ears) as b:
        async with gateway(redis_url, "a") as a:
            alice = await a.claim("demo", "alice")
            await a.claim("demo", "carol")
            await a.add_listener("demo", "alice", "tcp", 8000)
            await ears.wait_for(lambda news: len(news) == 2)
            # Renewed past several TTLs, they are still there.
            await wait_renewals(a, 4 * 3)
            assert await b.lookup("demo", "alice") == alice
            assert await b.is_listening("demo", alice.address, "tcp", 8000)
            # Now gateway A dies: nobody says goodbye.
            await a.stop_renewing()
            await ears.wait_for(lambda news: len(news) == 4)
        assert {(n.joined, n.member.name) for n in ears.news[2:]} == {
            (False, "alice"),
            (False, "carol"),
        }
        assert await b.lookup("demo", "alice") is None
        assert await b.lookup("demo", str(alice.address)) is None
        assert not await b.is_listening("demo", alice.address, "tcp", 8000)
        assert await b.members("demo") == []
        # The name and the address are free again.
        again = await b.claim("demo", "alice")
        assert again.gateway == b.gateway


async def test_listener_registry(redis_url: str) -> None:
    async with gateway(redis_url, "a") as a, gateway(redis_url, "b") as b:
        alice = await a.claim("demo", "alice")
        assert not await b.is_listening("demo", alice.address, "tcp", 8000)
        await a.add_listener("demo", "alice", "tcp", 8000)
        await a.add_listener("demo", "alice", "udp", 5353)
        assert await b.is_listening("demo", alice.address, "tcp", 8000)
        assert await b.is_listening("demo", alice.address, "udp", 5353)
        assert not await b.is_listening("demo", alice.address, "udp", 8000)
        # Only the owner records its member's listeners.
        await b.add_listener("demo", "alice", "tcp", 9000)
        assert not await b.is_listening("demo", alice.address, "tcp", 9000)
        await a.remove_listener("demo", "alice", "tcp", 8000)
        assert not await b.is_listening("demo", alice.address, "tcp", 8000)
        await a.release("demo", "alice")
        assert not await b.is_listening("demo", alice.address, "udp", 5353)
        # The next member at that address starts with no listeners.
        await a.claim("tiny", "x")
        bob = await b.claim("demo", "bob")
        assert not await a.is_listening("demo", bob.address, "udp", 5353)


async def test_a_member_taken_over_is_reported_lost(redis_url: str) -> None:
    import redis.asyncio

    lost: list[tuple[str, str]] = []
    async with (
        gateway(redis_url, "a", lost=lost, refresh=3600) as a,
        gateway(redis_url, "b", refresh=3600) as b,
    ):
        await a.claim("demo", "alice")
        await a.claim("demo", "carol")
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            # Redis forgot everything (a restart): renewing puts it back.
            await client.flushall()
            assert await b.lookup("demo", "alice") is None
            await a.renew()
            assert lost == []
            assert (await b.lookup("demo", "alice")) is not None
            # Alice's keys expired while A was away, and B took the name.
            await client.delete("netshim:lan:demo:n:alice")
            taken = await b.claim("demo", "alice")
            await a.renew()
            assert lost == [("demo", "alice")]
            assert await b.lookup("demo", "alice") == taken
            assert (await b.lookup("demo", "carol")) is not None
            # Releasing what it lost leaves the new owner alone.
            await a.release("demo", "alice")
            assert await b.lookup("demo", "alice") == taken
        finally:
            await client.aclose()
