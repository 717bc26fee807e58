"""LANs across gateway processes (docs/lan.md, "More than one gateway") with a real redis-server.

Every test that needs Redis starts its own ``redis-server`` on a free
loopback port (no persistence, in a temporary directory).  Gateways are
played at three depths: :class:`RedisLanDirectory` objects with distinct
cluster URLs (claims, expiry, news, the listener registry), two
:class:`LanHub` with their :class:`GatewayCluster` (membership news, relays
in), gateways served in this process (relay sessions, forwards, Redis going
away), and two ``netshim gateway`` processes with WispStack members (TCP and
UDP between them, a gateway killed).  Waits are for events (news heard,
renewals done), each bounded by a generous guard so a broken build fails
instead of hanging; nothing asserts a duration.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio
import anyio.abc
import pytest
from gateway_process import GatewayProcess, config_from_flags, gateway_process
from transfer_targets import running_gateway

from netshim import WispStack
from netshim._addresses import Address
from netshim.gateway import Gateway, GatewayConfig
from netshim.gateway._cluster import (
    RELAY_LAN,
    ClusterConfig,
    ClusterRecord,
    GatewayCluster,
    MemberNews,
    RedisLanDirectory,
    parse_relay_host,
    relay_host,
)
from netshim.gateway._lan import Forward, LanHub, LanSpec, NameInUseError, ipv6_subnet_for
from netshim.policy import Policy
from netshim.protocols import wisp
from netshim.stack import TcpStream
from netshim.stacks._tunnel import TunnelEvent, TunnelEventKind
from netshim.testing import require_peer

pytestmark = pytest.mark.anyio

# A guard against hangs, not a measured bound.
GUARD = 30.0
LANS = [LanSpec("demo", "10.77.0.0/24", "demo-token"), LanSpec("tiny", "10.78.0.0/29", "tiny")]


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
        results: list[ClusterRecord | Exception] = []

        async def claim(directory: RedisLanDirectory, wanted: str) -> None:
            try:
                results.append(await directory.claim("demo", wanted))
            except NameInUseError as exc:
                results.append(exc)

        async with anyio.create_task_group() as group:
            for i in range(40):
                # Each name asked by both gateways at once, and some with no name.
                for directory in (a, b):
                    group.start_soon(claim, directory, f"m{i % 20}" if i < 20 else "")
        members = [r for r in results if isinstance(r, ClusterRecord)]
        refused = [r for r in results if isinstance(r, NameInUseError)]
        assert len(refused) == 20
        assert len(members) == 60
        assert len({m.name for m in members}) == 60
        assert len({m.address for m in members}) == 60
        network = LANS[0].network
        v6 = ipv6_subnet_for("demo")
        for member in members:
            address = ipaddress.IPv4Address(member.address)
            assert address in network
            assert address not in (network.network_address, network.network_address + 1)
            assert address != network.broadcast_address
            # The same host number in the LAN's IPv6 subnet.
            number = int(address) - int(network.network_address)
            assert member.address6 == str(v6[number])
        assert {m.name for m in members} >= {f"m{i}" for i in range(20)}
        listed = await a.read_members("demo")
        assert sorted(listed, key=lambda m: m.name) == sorted(members, key=lambda m: m.name)
        assert {m.gateway for m in listed} == {a.gateway, b.gateway}


async def test_a_full_lan_refuses_then_reuses_a_released_address(redis_url: str) -> None:
    async with gateway(redis_url, "a") as a:
        # 10.78.0.0/29: .2 to .6 (the network, the gateway's .1 and broadcast kept).
        members = [await a.claim("tiny", "") for _ in range(5)]
        assert sorted(m.name for m in members) == [f"member-{i}" for i in range(2, 7)]
        assert sorted(str(m.address) for m in members) == [f"10.78.0.{i}" for i in range(2, 7)]
        with pytest.raises(OSError) as caught:
            await a.claim("tiny", "late")
        assert caught.value.errno == errno.EADDRNOTAVAIL
        await a.release("tiny", members[2].name)
        again = await a.claim("tiny", "late")
        assert again.address == members[2].address
        with pytest.raises(KeyError):
            await a.claim("nowhere", "x")
        with pytest.raises(ValueError):
            await a.claim("demo", "not a label")
        with pytest.raises(NameInUseError):
            await a.claim("demo", "gateway")


async def test_route_by_address_and_name(redis_url: str) -> None:
    async with gateway(redis_url, "a") as a, gateway(redis_url, "b") as b:
        alice = await a.claim("demo", "alice")
        for host in (alice.address, alice.address6, "alice.demo", "ALICE.demo."):
            assert await b.route("demo", host) == alice
        for host in ("alice", "bob.demo", "10.77.0.200", "10.1.2.3", "alice.other", "x.alice.demo"):
            assert await b.route("demo", host) is None
        assert await b.route("tiny", "alice.tiny") is None
        assert await b.route("nowhere", "alice.nowhere") is None
        # Answered from memory: B's own members and what it heard of A's.
        bob = await b.claim("demo", "bob")
        with anyio.fail_after(GUARD):
            while len(await b.members("demo")) < 2:
                await b.wait_renewals(1)
        assert sorted(await b.members("demo"), key=lambda m: m.name) == [alice, bob]
        await a.release("demo", "alice")
        with anyio.fail_after(GUARD):
            while b.known("demo") != [bob] and alice in b.known("demo"):
                await b.wait_renewals(1)
        assert await b.route("demo", "alice.demo") is None
        assert await b.route("demo", alice.address) is None


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
            assert await b.route("demo", "alice.demo") == alice
            assert await b.is_listening("demo", ipaddress.ip_address(alice.address), "tcp", 8000)
            # Now gateway A dies: nobody says goodbye.
            await a.stop_renewing()
            await ears.wait_for(lambda news: len(news) == 4)
        assert {(n.joined, n.member.name) for n in ears.news[2:]} == {
            (False, "alice"),
            (False, "carol"),
        }
        assert await b.route("demo", "alice.demo") is None
        assert await b.route("demo", alice.address) is None
        assert not await b.is_listening("demo", ipaddress.ip_address(alice.address), "tcp", 8000)
        assert await b.read_members("demo") == []
        assert await b.members("demo") == []
        # The name and the address are free again.
        again = await b.claim("demo", "alice")
        assert again.gateway == b.gateway


async def test_listener_registry(redis_url: str) -> None:
    async with gateway(redis_url, "a") as a, gateway(redis_url, "b") as b:
        alice = await a.claim("demo", "alice")
        assert not await b.is_listening("demo", ipaddress.ip_address(alice.address), "tcp", 8000)
        await a.add_listener("demo", "alice", "tcp", 8000)
        await a.add_listener("demo", "alice", "udp", 5353)
        assert await b.is_listening("demo", ipaddress.ip_address(alice.address), "tcp", 8000)
        assert await b.is_listening("demo", ipaddress.ip_address(alice.address), "udp", 5353)
        assert not await b.is_listening("demo", ipaddress.ip_address(alice.address), "udp", 8000)
        # Only the owner records its member's listeners.
        await b.add_listener("demo", "alice", "tcp", 9000)
        assert not await b.is_listening("demo", ipaddress.ip_address(alice.address), "tcp", 9000)
        # B also heard of them, so its connects need not ask Redis.
        with anyio.fail_after(GUARD):
            while not b.listens(alice, "udp", 5353):
                await b.wait_renewals(1)
        assert b.cached("demo", alice.address) == alice
        assert b.cached("demo", alice.address6) == alice
        assert b.listens(alice, "tcp", 8000)
        assert not b.listens(alice, "tcp", 9000)
        await a.remove_listener("demo", "alice", "tcp", 8000)
        assert not await b.is_listening("demo", ipaddress.ip_address(alice.address), "tcp", 8000)
        with anyio.fail_after(GUARD):
            while b.listens(alice, "tcp", 8000):
                await b.wait_renewals(1)
        await a.release("demo", "alice")
        assert not await b.is_listening("demo", ipaddress.ip_address(alice.address), "udp", 5353)
        # The next member at that address starts with no listeners.
        await a.claim("tiny", "x")
        bob = await b.claim("demo", "bob")
        assert not await a.is_listening("demo", ipaddress.ip_address(bob.address), "udp", 5353)


async def test_a_member_taken_over_is_reported_lost(redis_url: str) -> None:
    import redis.asyncio

    lost: list[tuple[str, str]] = []
    async with (
        gateway(redis_url, "a", lost=lost, refresh=3600) as a,
        gateway(redis_url, "b", refresh=3600) as b,
    ):
        await a.claim("demo", "alice")
        carol = await a.claim("demo", "carol")
        await a.add_listener("demo", "carol", "tcp", 80)
        client = redis.asyncio.Redis.from_url(redis_url)

        async def holder(name: str) -> bytes | None:
            value: bytes | None = await client.get(f"netshim:lan:demo:n:{name}")
            return value

        try:
            # Redis forgot everything (a restart): renewing puts it back.
            await client.flushall()
            assert await holder("alice") is None
            await a.renew()
            assert lost == []
            assert await holder("alice") == b"2|" + a.gateway.encode()
            assert await holder("carol") == b"3|" + a.gateway.encode()
            # With the listeners it had.
            assert await b.is_listening("demo", ipaddress.ip_address(carol.address), "tcp", 80)
            # Alice's keys expired while A was away, and B took the name.
            await client.delete("netshim:lan:demo:n:alice")
            taken = await b.claim("demo", "alice")
            await a.renew()
            assert lost == [("demo", "alice")]
            assert await b.route("demo", "alice.demo") == taken
            assert await holder("carol") == b"3|" + a.gateway.encode()
            # Releasing what it lost leaves the new owner alone.
            await a.release("demo", "alice")
            assert await holder("alice") == b"4|" + b.gateway.encode()
        finally:
            await client.aclose()


# -- the hubs of two gateways over one Redis (no servers: the hubs' own methods)

SECRET = "cluster-secret-for-tests"


@contextlib.asynccontextmanager
async def two_hubs(redis_url: str) -> AsyncIterator[list[tuple[GatewayCluster, LanHub]]]:
    pairs = []
    for name in "ab":
        cluster = GatewayCluster(ClusterConfig(redis_url, f"ws://{name}.test:8080/", SECRET, 0.1))
        hub = LanHub(LANS, directory=cluster.directory_for(LANS))
        cluster.attach(hub)
        pairs.append((cluster, hub))
    async with pairs[0][0], pairs[1][0]:
        yield pairs


class Inbox:
    """A member's MEMBERSHIP news; waits for one."""

    def __init__(self) -> None:
        self.events: list[wisp.Membership] = []
        self._changed = anyio.Event()

    def __call__(self, event: wisp.Membership) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, change: wisp.MembershipChange, name: str) -> None:
        with anyio.fail_after(GUARD):
            while not any(e.change is change and e.name == name for e in self.events):
                await self._changed.wait()

    async def changed(self) -> None:
        await self._changed.wait()


async def test_members_of_two_gateways_hear_of_each_other(redis_url: str) -> None:
    async with two_hubs(redis_url) as [(_, hub_a), (b, hub_b)]:
        alice_news, bob_news = Inbox(), Inbox()
        alice, others = await hub_a.join("demo", "alice", alice_news)
        assert others == []
        assert b.directory is not None
        with anyio.fail_after(GUARD):
            while not b.directory.known("demo"):
                await b.directory.wait_renewals(1)
        # Names are the cluster's: B cannot give out alice again.
        with pytest.raises(NameInUseError):
            await hub_b.join("demo", "alice", bob_news)
        bob, others = await hub_b.join("demo", "bob", bob_news)
        assert [(o.name, o.address) for o in others] == [("alice", alice.address)]
        assert bob.address != alice.address
        await alice_news.wait_for(wisp.MembershipChange.MEMBER_JOINED, "bob.demo")
        joined = [e for e in alice_news.events if e.name == "bob.demo"]
        assert [(e.change, e.host) for e in joined] == [
            (wisp.MembershipChange.MEMBER_JOINED, bob.address)
        ]
        # Each hub routes the other's member by name.
        assert await hub_a.destination(alice, "bob.demo") == bob.address
        await hub_b.leave(bob)
        await alice_news.wait_for(wisp.MembershipChange.MEMBER_LEFT, "bob.demo")
        with pytest.raises(socket.gaierror):
            await hub_a.destination(alice, "bob.demo")


async def test_a_relayed_stream_comes_from_the_source_address(redis_url: str) -> None:
    async with two_hubs(redis_url) as [(_, hub_a), (b, hub_b)]:
        alice, _ = await hub_a.join("demo", "alice", Inbox())
        bob, _ = await hub_b.join("demo", "bob", Inbox())
        listener = await bob.host.listen_tcp(bob.address, 8000)
        listener6 = await bob.host.listen_tcp(bob.record.address6, 8000)
        async with listener, listener6:
            for source, destination, listening in (
                (alice.address, bob.address, listener),
                (alice.record.address6, bob.record.address6, listener6),
            ):
                stream = await b.accept(relay_host("demo", source, destination), 8000)
                # As bob's session takes it: the relayed stream is spliced to it.
                accepted = hub_b.accepted(bob, await listening.accept())
                async with stream, accepted:
                    assert accepted.remote_address[0] == source
                    await stream.send(b"ping")
                    with anyio.fail_after(GUARD):
                        assert await accepted.receive() == b"ping"
            # A port nobody listens on, a member elsewhere, a malformed host.
            with pytest.raises(ConnectionRefusedError):
                await b.accept(relay_host("demo", alice.address, bob.address), 8001)
            with pytest.raises(ConnectionRefusedError):
                await b.accept(relay_host("demo", bob.address, alice.address), 8000)
            for host in ("bob.demo", "10-77-0-2.bob.demo", "10-77-0-2.10-77-0-3.nowhere"):
                with pytest.raises(ConnectionRefusedError):
                    await b.accept(host, 8000)
            # The stand-in goes when its member leaves; the address can be a local member's.
            await hub_a.leave(alice)
            assert b.directory is not None
            with anyio.fail_after(GUARD):
                while b.directory.known("demo"):
                    await b.directory.wait_renewals(1)
            assert hub_b.lans["demo"].network.owner_of(ipaddress.ip_address(alice.address)) is None


def test_relay_hosts_round_trip() -> None:
    assert relay_host("demo", "10.77.0.5", "10.77.0.9") == "10-77-0-5.10-77-0-9.demo"
    lan, source, destination = parse_relay_host("10-77-0-5.10-77-0-9.demo")
    assert (lan, str(source), str(destination)) == ("demo", "10.77.0.5", "10.77.0.9")
    six = relay_host("demo", "fd00::5", "fd00::9")
    assert six == (
        "fd00-0000-0000-0000-0000-0000-0000-0005.fd00-0000-0000-0000-0000-0000-0000-0009.demo"
    )
    assert [str(x) for x in parse_relay_host(six)[1:]] == ["fd00::5", "fd00::9"]
    for bad in ("demo", "a.b.c.d", "10-77-0-5.fd00-0-0-0-0-0-0-9.demo", "x-y.10-77-0-9.demo"):
        with pytest.raises(ValueError):
            parse_relay_host(bad)


def test_cluster_config_is_checked() -> None:
    good = ClusterConfig("redis://127.0.0.1:6379/0", "ws://10.0.0.1:8080/", SECRET)
    assert SECRET not in repr(good)
    for redis, url, secret in (
        ("http://x/", "ws://10.0.0.1:8080/", SECRET),
        ("redis://x/", "http://10.0.0.1:8080/", SECRET),
        ("redis://x/", "ws://10.0.0.1:8080/a|b", SECRET),
        ("redis://x/", "ws://10.0.0.1:8080/", "short"),
    ):
        with pytest.raises(ValueError):
            ClusterConfig(redis, url, secret)
    with pytest.raises(ValueError):
        ClusterConfig("redis://x/", "ws://10.0.0.1:8080/", SECRET, refresh=1, ttl=0.5)
    cluster = GatewayCluster(good)
    assert cluster.secret_matches(SECRET)
    assert not cluster.secret_matches(SECRET + "x")
    assert not cluster.secret_matches("")


# -- two gateway processes, one redis-server, WispStack members


TOKEN = "demo-token-for-tests"


@contextlib.contextmanager
def two_gateways(redis_url: str, directory: Path) -> Iterator[list[GatewayProcess]]:
    """``netshim gateway`` twice, sharing LAN ``demo`` through ``redis_url``."""
    tokens = directory / "tokens.txt"
    tokens.write_text(f"demo {TOKEN}\n")
    secret = directory / "secret.txt"
    secret.write_text(SECRET + "\n")
    with contextlib.ExitStack() as stack:
        gateways = []
        for _ in range(2):
            port = _free_port()
            flags = [
                "--port", str(port), "--lan", "demo:10.77.0.0/24",
                "--lan-token-file", str(tokens), "--cluster-redis", redis_url,
                "--cluster-url", f"ws://127.0.0.1:{port}/",
                "--cluster-secret-file", str(secret), "--cluster-refresh", "0.5",
            ]  # fmt: skip
            gateways.append(stack.enter_context(gateway_process(*flags)))
        yield gateways


class Member:
    """A WispStack joined to ``demo`` at one gateway, echoing on a port, hearing the news."""

    def __init__(self, gateway: GatewayProcess | None, name: str, url: str = "") -> None:
        if gateway is not None:
            url = "ws://{}:{}/".format(*gateway.http)
        self.stack = WispStack(url, lan="demo", member=name, token=TOKEN)
        self.events: list[TunnelEvent] = []
        self.peers: list[Address] = []
        self.udp_peers: list[Address] = []
        self._changed = anyio.Event()
        self.stack.on_event(self._on_event)

    @classmethod
    def at(cls, url: str, name: str) -> Member:
        return cls(None, name, url)

    def _on_event(self, event: TunnelEvent) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, kind: TunnelEventKind, name: str) -> None:
        with anyio.fail_after(GUARD):
            while not any(e.kind is kind and e.name == name for e in self.events):
                await self._changed.wait()

    async def serve_echo(self, port: int, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Echo every connection to ``port``; accepting is what reads the news too."""
        listener = await self.stack.listen_tcp(None, port)
        task_status.started()
        async with listener, anyio.create_task_group() as group:
            while True:
                try:
                    stream = await listener.accept()
                except OSError:
                    # The gateway went away; only the news matters from here.
                    await anyio.sleep_forever()
                self.peers.append(stream.remote_address)
                group.start_soon(self._echo, stream)

    async def serve_udp_echo(self, port: int, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Send every datagram to ``port`` back to its sender."""
        sock = await self.stack.open_udp("0.0.0.0", port)
        task_status.started()
        async with sock:
            while True:
                try:
                    data, source = await sock.receive()
                except OSError:
                    await anyio.sleep_forever()
                self.udp_peers.append(source)
                await sock.send(data, source)

    @staticmethod
    async def _echo(stream: TcpStream) -> None:
        async with stream:
            with contextlib.suppress(anyio.EndOfStream, OSError):
                while True:
                    await stream.send(await stream.receive())


async def echo_through(stack: WispStack, host: str, port: int, size: int) -> None:
    payload = os.urandom(size)
    stream = await stack.connect_tcp(host, port)
    received = bytearray()
    async with stream, anyio.create_task_group() as group:

        async def send() -> None:
            for offset in range(0, size, 1 << 16):
                await stream.send(payload[offset : offset + (1 << 16)])

        group.start_soon(send)
        with anyio.fail_after(GUARD):
            while len(received) < size:
                received += await stream.receive()
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


async def test_members_on_two_gateway_processes(redis_url: str, tmp_path: Path) -> None:
    with two_gateways(redis_url, tmp_path) as (gateway_a, gateway_b):
        alice, bob = Member(gateway_a, "alice"), Member(gateway_b, "bob")
        async with anyio.create_task_group() as group:
            await group.start(alice.serve_echo, 7000)
            await group.start(bob.serve_echo, 8000)
            assert alice.stack.lan_address is not None
            assert bob.stack.lan_address is not None
            assert alice.stack.lan_address != bob.stack.lan_address
            await alice.wait_for(TunnelEventKind.MEMBER_JOINED, "bob.demo")
            # Alice (gateway A) reaches Bob's listener (gateway B) by name and
            # by address, and Bob sees Alice's LAN address; and back.
            await echo_through(alice.stack, "bob.demo", 8000, 1 << 20)
            await echo_through(alice.stack, bob.stack.lan_address, 8000, 1000)
            assert [peer[0] for peer in bob.peers] == [alice.stack.lan_address] * 2
            await echo_through(bob.stack, "alice.demo", 7000, 1 << 18)
            assert [peer[0] for peer in alice.peers] == [bob.stack.lan_address]
            # A port Bob does not listen on is refused.
            with pytest.raises(ConnectionRefusedError):
                await alice.stack.connect_tcp("bob.demo", 8001)
            # UDP to Bob's bound socket, and his answer back to where it came from.
            await group.start(bob.serve_udp_echo, 5353)
            udp = await alice.stack.open_udp(remote=("bob.demo", 5353))
            async with udp:
                for size in (1, 1000, 60000):
                    datagram = os.urandom(size)
                    await udp.send(datagram)
                    with anyio.fail_after(GUARD):
                        answer, _ = await udp.receive()
                    assert answer == datagram
            assert {peer[0] for peer in bob.udp_peers} == {alice.stack.lan_address}
            # Gateway B dies without a word: Bob leaves within the expiry.
            bob_address = bob.stack.lan_address
            gateway_b.process.kill()
            gateway_b.process.wait()
            await alice.wait_for(TunnelEventKind.MEMBER_LEFT, "bob.demo")
            with pytest.raises(OSError) as caught:
                await alice.stack.connect_tcp(bob_address, 8000)
            assert caught.value.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH)
            with pytest.raises(OSError):
                await alice.stack.connect_tcp("bob.demo", 8000)
            group.cancel_scope.cancel()
        await alice.stack.aclose()
        await bob.stack.aclose()
        assert gateway_a.alive()
        assert gateway_a.internal_errors() == []


# -- the relay end of one gateway, in process


def cluster_config(redis_url: str, **overrides: object) -> GatewayConfig:
    options: dict[str, object] = {
        "policy": Policy(allow=["127.0.0.1"]),
        "lans": (LanSpec("demo", "10.77.0.0/24", TOKEN),),
        "cluster": ClusterConfig(redis_url, "ws://127.0.0.1:9/", SECRET, refresh=0.2),
    }
    options.update(overrides)
    return GatewayConfig(**options)  # type: ignore[arg-type]


def url_of(gateway: Gateway) -> str:
    host, port = gateway.addresses["http"][:2]
    return f"ws://{host}:{port}/"


async def test_a_relay_needs_the_cluster_secret_and_reaches_members_only(
    redis_url: str,
) -> None:
    async with (
        running_gateway(cluster_config(redis_url)) as gateway,
        anyio.create_task_group() as group,
    ):
        url = url_of(gateway)
        with pytest.raises(PermissionError):
            await WispStack(url, lan=RELAY_LAN, token="not-the-cluster-secret").connect()
        bob = Member.at(url, "bob")
        await group.start(bob.serve_echo, 8000)
        assert bob.stack.lan_address is not None
        relay = WispStack(url, lan=RELAY_LAN, token=SECRET)
        try:
            await relay.connect()
            # The listener sees the source the relay names.
            await echo_through(
                relay, relay_host("demo", "10.77.0.77", bob.stack.lan_address), 8000, 1000
            )
            assert [peer[0] for peer in bob.peers] == ["10.77.0.77"]
            # Another gateway's port forward comes from the gateways' own address.
            await echo_through(
                relay, relay_host("demo", "10.77.0.1", bob.stack.lan_address), 8000, 10
            )
            assert [peer[0] for peer in bob.peers] == ["10.77.0.77", "10.77.0.1"]
            # Nothing but members of this gateway: not the outside, not a name,
            # not an address nobody here holds, not a source that is a member here.
            with (
                socket.create_server(("127.0.0.1", 0)) as outside,
                pytest.raises(ConnectionRefusedError),
            ):
                await relay.connect_tcp("127.0.0.1", outside.getsockname()[1])
            for host in (
                "bob.demo",
                relay_host("demo", "10.77.0.77", "10.77.0.99"),
                relay_host("demo", bob.stack.lan_address, bob.stack.lan_address),
            ):
                with pytest.raises(ConnectionRefusedError):
                    await relay.connect_tcp(host, 8000)
            with pytest.raises(ConnectionRefusedError):
                await relay.connect_tcp(
                    relay_host("demo", "10.77.0.77", bob.stack.lan_address), 8001
                )
        finally:
            await relay.aclose()
            group.cancel_scope.cancel()
            await bob.stack.aclose()


async def test_a_gateway_on_its_own_refuses_relays(redis_url: str) -> None:
    async with running_gateway(cluster_config(redis_url, cluster=None)) as gateway:
        assert gateway.cluster is None
        with pytest.raises(PermissionError):
            await WispStack(url_of(gateway), lan=RELAY_LAN, token=SECRET).connect()


# -- the command line


def test_cluster_flags(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"demo {TOKEN}\n")
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET + "\n")
    base = ["--lan", "demo", "--lan-token-file", str(tokens), "--cluster-redis", "redis://r:6379/0"]
    config, _ = config_from_flags(*base, "--port", "8081", "--cluster-secret-file", str(secret))
    assert config.cluster == ClusterConfig("redis://r:6379/0", "ws://127.0.0.1:8081/", SECRET)
    config, _ = config_from_flags(
        *base, "--host", "0.0.0.0", "--cluster-url", "wss://g1.example/", "--cluster-refresh",
        "2", "--cluster-secret-file", str(secret),
    )  # fmt: skip
    assert config.cluster.url == "wss://g1.example/"
    assert config.cluster.refresh == 2
    config, _ = config_from_flags("--lan", "demo", "--lan-token-file", str(tokens))
    assert config.cluster is None
    for flags, words in (
        (["--cluster-url", "ws://x:1/"], "need --cluster-redis"),
        ([*base], "--cluster-secret-file"),
        ([*base, "--cluster-secret-file", str(tokens), "--port", "0"], "--cluster-url is needed"),
        ([*base, "--cluster-secret-file", str(secret), "--event-loop", "trio"], "not trio"),
        (
            [
                "--lan",
                "demo",
                "--cluster-redis",
                "redis://r/",
                "--cluster-secret-file",
                str(secret),
            ],
            "every LAN needs its token",
        ),
        (["--cluster-redis", "redis://r/", "--cluster-secret-file", str(secret)], "declare"),
    ):
        with pytest.raises(ValueError, match=words):
            config_from_flags(*flags)
    short = tmp_path / "short.txt"
    short.write_text("short\n")
    with pytest.raises(ValueError, match="at least 16"):
        config_from_flags(*base, "--cluster-secret-file", str(short))


def test_a_gateway_whose_redis_is_down_says_so_in_one_line(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"demo {TOKEN}\n")
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET + "\n")
    command = [
        sys.executable, "-m", "netshim", "gateway", "--port", str(_free_port()), "--lan", "demo",
        "--lan-token-file", str(tokens), "--cluster-redis", f"redis://127.0.0.1:{_free_port()}/0",
        "--cluster-secret-file", str(secret), "--cluster-refresh", "0.2",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=GUARD, check=False)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("netshim gateway: ")
    assert "the cluster's Redis failed" in last
    assert "Traceback" not in done.stderr


async def test_a_member_whose_name_another_gateway_took_is_taken_off(redis_url: str) -> None:
    import redis.asyncio

    async with two_hubs(redis_url) as [(a, hub_a), (_, hub_b)]:
        carol_news = Inbox()
        alice, _ = await hub_a.join("demo", "alice", Inbox())
        await hub_a.join("demo", "carol", carol_news)
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            # Gateway A was away past the TTL and B gave the name to another.
            await client.delete("netshim:lan:demo:n:alice")
            taken, _ = await hub_b.join("demo", "alice", Inbox())
        finally:
            await client.aclose()
        assert a.directory is not None
        # A's next renewal finds it out: alice leaves A's LAN, carol hears it,
        # and ends knowing of the alice that B serves now.
        await carol_news.wait_for(wisp.MembershipChange.MEMBER_LEFT, "alice.demo")
        assert "alice" not in hub_a.lans["demo"].members
        assert hub_a.lans["demo"].network.owner_of(ipaddress.ip_address(alice.address)) is None
        with anyio.fail_after(GUARD):
            while carol_news.events[-1].change is not wisp.MembershipChange.MEMBER_JOINED:
                await carol_news.changed()
        about_alice = [(e.change, e.host) for e in carol_news.events if e.name == "alice.demo"]
        assert about_alice[-1] == (wisp.MembershipChange.MEMBER_JOINED, taken.address)


@contextlib.asynccontextmanager
async def serving(config: GatewayConfig, port: int) -> AsyncIterator[Gateway]:
    gateway = Gateway(config=config)
    async with anyio.create_task_group() as group:
        await group.start(lambda task_status: gateway.serve(port=port, task_status=task_status))
        try:
            yield gateway
        finally:
            group.cancel_scope.cancel()


async def test_a_port_forward_reaches_a_member_of_another_gateway(redis_url: str) -> None:
    ports = _free_port(), _free_port()
    configs = [
        cluster_config(
            redis_url,
            cluster=ClusterConfig(redis_url, f"ws://127.0.0.1:{port}/", SECRET, refresh=0.2),
            forwards=(Forward("127.0.0.1", 0, "demo", "bob", 8000),) if port == ports[0] else (),
        )
        for port in ports
    ]
    async with (
        serving(configs[0], ports[0]) as gateway_a,
        serving(configs[1], ports[1]),
        anyio.create_task_group() as group,
    ):
        bob = Member.at(f"ws://127.0.0.1:{ports[1]}/", "bob")
        await group.start(bob.serve_echo, 8000)
        try:
            (address,) = gateway_a.forward_addresses
            payload = os.urandom(100_000)
            stream = await anyio.connect_tcp(*address[:2])
            async with stream:
                await stream.send(payload)
                received = b""
                with anyio.fail_after(GUARD):
                    while len(received) < len(payload):
                        received += await stream.receive()
            assert received == payload
            # From gateway A's LAN address, as a forward of bob's own gateway would be.
            assert [peer[0] for peer in bob.peers] == ["10.77.0.1"]
        finally:
            group.cancel_scope.cancel()
            await bob.stack.aclose()


async def test_a_gateway_whose_redis_goes_away(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    import redis.asyncio
    import redis.exceptions

    caplog.set_level(logging.INFO)
    async with running_gateway(cluster_config(redis_url)) as gateway:
        url = url_of(gateway)
        alice = WispStack(url, lan="demo", member="alice", token=TOKEN)
        await alice.connect()
        client = redis.asyncio.Redis.from_url(redis_url)
        with contextlib.suppress(redis.exceptions.ConnectionError):
            await client.shutdown(nosave=True)
        await client.aclose()
        # A join needs Redis: refused, and said why in the log.
        with pytest.raises(ConnectionRefusedError):
            await WispStack(url, lan="demo", member="bob", token=TOKEN).connect()
        assert "the cluster's Redis failed (claim)" in caplog.text
        # Alice leaves: her keys would expire on their own; nothing breaks.
        await alice.aclose()
        assert gateway.lans is not None
        members = gateway.lans.lans["demo"].members
        for _ in range(int(GUARD * 100)):
            if not members:
                break
            await anyio.sleep(0.01)
        assert not members
        assert "internal-error" not in caplog.text
