"""WispStack on a gateway's LAN: members listen, reach each other by address and by name.

Two (or three) WispStacks join one LAN of our gateway; one serves, another
connects, with bulk transfers checked by SHA-256, an asyncio server under
``netshim.install``, UDP between members, refusals (port in use, not a
member, wrong token, name taken), membership news and a listener that keeps
working after the gateway restarted on the same port.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import pytest
from tunnel_helpers import LOOPBACK, bulk_exchange, bulk_target

import netshim
import netshim.transports.websocket as websocket_module
from netshim import WispStack, stack_from_url
from netshim.gateway import Gateway, GatewayConfig
from netshim.gateway._lan import LanSpec
from netshim.policy import DestinationBlockedError, Policy
from netshim.stack import TcpStream
from netshim.stacks._tunnel import TunnelEvent, TunnelEventKind
from netshim.testing import CHECKS, StackPair

pytestmark = pytest.mark.anyio

TOKEN = "demo-token-8f2c"
LAN = LanSpec("demo", "10.77.0.0/24", TOKEN)


def lan_config(**settings: Any) -> GatewayConfig:
    settings.setdefault("policy", LOOPBACK)
    return GatewayConfig(lans=(LAN,), **settings)


@asynccontextmanager
async def lan_gateway(port: int = 0, **settings: Any) -> AsyncIterator[str]:
    """Our gateway with the LAN ``demo`` on loopback; yields its ``wisp://`` URL."""
    gateway = Gateway(None, lan_config(**settings))
    async with anyio.create_task_group() as group:
        await group.start(
            lambda task_status: gateway.serve(host="127.0.0.1", port=port, task_status=task_status)
        )
        host, bound = gateway.addresses["http"]
        try:
            yield f"wisp://{host}:{bound}/"
        finally:
            group.cancel_scope.cancel()


@contextmanager
def lan_gateway_in_thread() -> Iterator[str]:
    """The LAN gateway on an event loop of its own thread; yields its ``wisp://`` URL.

    For tests whose own loop blocks in socket calls the gateway must answer
    (the socket shim's calls wait for its engine, which waits for the gateway).
    """
    started = threading.Event()
    urls: list[str] = []
    stop: list[Callable[[], None]] = []

    async def main() -> None:
        async with lan_gateway() as url:
            done = anyio.Event()
            token = anyio.lowlevel.current_token()
            stop.append(lambda: anyio.from_thread.run_sync(done.set, token=token))
            urls.append(url)
            started.set()
            await done.wait()

    thread = threading.Thread(target=anyio.run, args=(main,), daemon=True)
    thread.start()
    assert started.wait(20), "the gateway did not start"
    try:
        yield urls[0]
    finally:
        stop[0]()
        thread.join(20)


@asynccontextmanager
async def members(url: str, *names: str, **options: Any) -> AsyncIterator[list[WispStack]]:
    """One joined WispStack per name, closed at the end."""
    stacks = [WispStack(url, lan="demo", member=name, token=TOKEN, **options) for name in names]
    try:
        for stack in stacks:
            await stack.connect()
        yield stacks
    finally:
        for stack in stacks:
            await stack.aclose()


class Recorder:
    """A stack's events as they come, with a way to wait for one."""

    def __init__(self, stack: WispStack) -> None:
        self.events: list[TunnelEvent] = []
        self.changed = anyio.Event()
        stack.on_event(self._add)

    def _add(self, event: TunnelEvent) -> None:
        self.events.append(event)
        self.changed.set()
        self.changed = anyio.Event()

    async def wait_for(
        self, match: Callable[[TunnelEvent], bool], limit: float = 10
    ) -> TunnelEvent:
        with anyio.fail_after(limit):
            while True:
                for event in self.events:
                    if match(event):
                        return event
                await self.changed.wait()

    def kinds(self) -> list[TunnelEventKind]:
        return [event.kind for event in self.events]


async def test_members_get_addresses_and_names() -> None:
    async with lan_gateway() as url, members(url, "alice", "bob") as (alice, bob):
        assert alice.lan_address == "10.77.0.2"
        assert alice.lan_name == "alice.demo"
        assert alice.lan_prefix_length == 24
        assert bob.lan_address == "10.77.0.3"
        assert bob.lan_name == "bob.demo"
        # The token is no part of what the stack shows.
        assert TOKEN not in repr(alice)
        assert "lan='demo'" in repr(alice)


async def test_listen_and_connect_by_address_and_by_name_with_bulk_integrity() -> None:
    async with (
        lan_gateway() as url,
        members(url, "alice", "bob") as (alice, bob),
        bulk_target(alice, "0.0.0.0") as target,
    ):
        assert target.address[0] == alice.lan_address
        for host in (alice.lan_address, "alice.demo"):
            assert host is not None
            stream = await bob.connect_tcp(host, target.address[1])
            async with stream:
                with anyio.fail_after(60):
                    up, down, received = await bulk_exchange(stream, 3 << 20, 2 << 20)
            assert received == 2 << 20
            transfer = target.find(up)
            assert transfer.up_bytes == 3 << 20
            assert transfer.down_sha == down


#: Checks of the conformance kit two members pass, one listening, one
#: connecting.  Left out: tcp_addresses (an outgoing stream's local address
#: is the gateway's to know), tcp_half_close (Wisp has none),
#: and udp_connected_refused (no ICMP comes back through a tunnel).
LAN_CHECKS = (
    "tcp_echo_both_ways",
    "tcp_abort_resets_peer",
    "tcp_bulk_integrity",
    "tcp_closed_resource",
    "tcp_refused",
    "tcp_address_in_use",
    "listener_close_ends_iteration",
    "bad_ports",
    "udp_round_trip",
    "udp_size_limit",
    "getaddrinfo_numeric",
)


@pytest.mark.parametrize("check", LAN_CHECKS)
async def test_conformance_between_members(check: str) -> None:
    async with lan_gateway() as url, members(url, "alice", "bob") as (alice, bob):
        pair = StackPair(alice, bob, alice.lan_address or "", bob.lan_address or "")
        with anyio.fail_after(30):
            await CHECKS[check](pair)


async def test_accepted_streams_know_both_ends_and_the_listener_closes() -> None:
    async with lan_gateway() as url, members(url, "alice", "bob") as (alice, bob):
        listener = await alice.listen_tcp(None, 0)
        host, port = listener.local_address
        assert host == alice.lan_address
        assert port > 0
        client = await bob.connect_tcp("alice.demo", port)
        with anyio.fail_after(10):
            served = await listener.accept()
        assert served.remote_address[0] == bob.lan_address
        assert served.local_address == (alice.lan_address, port)
        await client.send(b"ping")
        with anyio.fail_after(10):
            assert await served.receive() == b"ping"
        await served.send(b"pong")
        with anyio.fail_after(10):
            assert await client.receive() == b"pong"
        await served.aclose()
        with pytest.raises((anyio.EndOfStream, ConnectionResetError)), anyio.fail_after(10):
            await client.receive()
        await client.aclose()
        await listener.aclose()
        await listener.aclose()  # idempotent
        with pytest.raises(anyio.ClosedResourceError):
            await listener.accept()
        # The port is free again, and nobody listens meanwhile.
        with pytest.raises(ConnectionRefusedError):
            await bob.connect_tcp("alice.demo", port)
        again = await alice.listen_tcp("0.0.0.0", port)
        assert again.local_address[1] == port
        await again.aclose()


async def test_listen_errors_are_faithful() -> None:
    async with lan_gateway(lan_listeners=2) as url, members(url, "alice", "bob") as (alice, bob):
        first = await alice.listen_tcp("0.0.0.0", 8000)
        with pytest.raises(OSError) as in_use:
            await alice.listen_tcp("0.0.0.0", 8000)
        assert in_use.value.errno == errno.EADDRINUSE
        # Not another member's address, and not loopback: not ours to bind.
        for host in (bob.lan_address, "127.0.0.1"):
            with pytest.raises(OSError) as foreign:
                await alice.listen_tcp(host, 8001)
            assert foreign.value.errno == errno.EADDRNOTAVAIL
        # The same port on bob's address is bob's to take.
        bobs = await bob.listen_tcp("bob.demo", 8000)
        second = await alice.listen_tcp(alice.lan_address, 8001)
        with pytest.raises(OSError) as quota:
            await alice.listen_tcp("0.0.0.0", 8002)
        assert quota.value.errno == errno.ENOBUFS
        assert "LISTEN_QUOTA" in str(quota.value)
        for listener in (first, second, bobs):
            await listener.aclose()
        # Closed listeners no longer count.
        third = await alice.listen_tcp("0.0.0.0", 8002)
        await third.aclose()


async def test_a_port_the_policy_forbids() -> None:
    policy = Policy(allow=["127.0.0.1"], ports="1024-65535")
    async with lan_gateway(policy=policy) as url, members(url, "alice") as (alice,):
        with pytest.raises(DestinationBlockedError) as caught:
            await alice.listen_tcp("0.0.0.0", 80)
        assert "BLOCKED" in str(caught.value)
        assert isinstance(caught.value, PermissionError)
        with pytest.raises(DestinationBlockedError):
            await alice.open_udp("0.0.0.0", 53)
        allowed = await alice.listen_tcp("0.0.0.0", 8080)
        await allowed.aclose()


async def test_a_client_that_is_not_a_member() -> None:
    async with lan_gateway() as url, members(url, "alice") as (alice,):
        listener = await alice.listen_tcp("0.0.0.0", 8000)
        outsider = WispStack(url)
        try:
            # Speaks the extension without joining: it has nowhere to listen.
            with pytest.raises(OSError) as caught:
                await outsider.listen_tcp("0.0.0.0", 8000)
            assert caught.value.errno == errno.EADDRNOTAVAIL
            assert "join" in str(caught.value)
            # The LAN's addresses are private ones: the policy refuses them.
            with pytest.raises(PermissionError):
                await outsider.connect_tcp(alice.lan_address or "", 8000)
        finally:
            await outsider.aclose()
            await listener.aclose()


async def test_refused_joins_name_the_reason() -> None:
    async with lan_gateway() as url, members(url, "alice"):
        wrong = WispStack(url, lan="demo", member="carol", token="not-the-token")
        with pytest.raises(PermissionError) as bad_token:
            await wrong.connect()
        assert "AUTH_BAD_PASSWORD" in str(bad_token.value)
        assert "not-the-token" not in str(bad_token.value)
        unknown = WispStack(url, lan="nosuch", member="carol", token=TOKEN)
        with pytest.raises(PermissionError):
            await unknown.connect()
        taken = WispStack(url, lan="demo", member="alice", token=TOKEN)
        with pytest.raises(OSError) as in_use:
            await taken.connect()
        assert in_use.value.errno == errno.EADDRINUSE
        assert "NAME_IN_USE" in str(in_use.value)
        assert TOKEN not in str(in_use.value)


async def test_membership_news() -> None:
    async with lan_gateway() as url, members(url, "alice") as (alice,):
        news = Recorder(alice)
        # News comes while somebody reads alice's WebSocket: a listener's
        # accept() does, as the socket shim's engine always does.
        listener = await alice.listen_tcp("0.0.0.0", 0)
        async with anyio.create_task_group() as group:
            group.start_soon(listener.accept)
            bob = WispStack(url, lan="demo", member="bob", token=TOKEN)
            bobs_news = Recorder(bob)
            await bob.connect()
            joined = await news.wait_for(lambda e: e.kind is TunnelEventKind.MEMBER_JOINED)
            assert (joined.name, joined.address) == ("bob.demo", bob.lan_address)
            assert dict(alice.members) == {"bob.demo": bob.lan_address}
            # A newcomer hears of those already there, after its own "connected"
            # (here its UDP socket's receive reads its WebSocket).
            udp = await bob.open_udp("0.0.0.0", 5300)

            async def read_bobs() -> None:
                with pytest.raises(anyio.ClosedResourceError):
                    await udp.receive()  # until bob's stack closes

            group.start_soon(read_bobs)
            told = await bobs_news.wait_for(lambda e: e.kind is TunnelEventKind.MEMBER_JOINED)
            assert (told.name, told.address) == ("alice.demo", alice.lan_address)
            assert bobs_news.kinds()[:2] == [TunnelEventKind.CONNECTING, TunnelEventKind.CONNECTED]
            assert bobs_news.events[1].name == "bob.demo"
            assert bobs_news.events[1].address == bob.lan_address
            assert dict(bob.members) == {"alice.demo": alice.lan_address}
            await bob.aclose()
            left = await news.wait_for(lambda e: e.kind is TunnelEventKind.MEMBER_LEFT)
            group.cancel_scope.cancel()
        assert (left.name, left.address) == ("bob.demo", bob.lan_address)
        assert dict(alice.members) == {}
        await listener.aclose()


async def test_udp_between_members() -> None:
    async with lan_gateway() as url, members(url, "alice", "bob") as (alice, bob):
        server = await alice.open_udp("0.0.0.0", 5300)
        assert server.local_address == (alice.lan_address, 5300)
        client = await bob.open_udp(bob.lan_address or "", 0)
        client_address = client.local_address
        assert client_address[0] == bob.lan_address
        assert client_address[1] > 0

        async def echo() -> None:
            async for data, source in server:
                await server.send(data[::-1], source)

        async with anyio.create_task_group() as group:
            group.start_soon(echo)
            for target in (("alice.demo", 5300), (alice.lan_address, 5300)):
                payload = os.urandom(1200)
                await client.send(payload, target)  # type: ignore[arg-type]
                with anyio.fail_after(10):
                    data, source = await client.receive()
                assert data == payload[::-1]
                assert source == (alice.lan_address, 5300)
            # An unbound socket (a client's, as before) reaches it too, one
            # Wisp UDP stream per destination.
            unbound = await bob.open_udp()
            await unbound.send(b"abc", ("alice.demo", 5300))
            with anyio.fail_after(10):
                data, source = await unbound.receive()
            assert data == b"cba"
            assert source == ("alice.demo", 5300)
            await unbound.aclose()
            group.cancel_scope.cancel()
        # A port in use is in use for UDP too.
        with pytest.raises(OSError) as in_use:
            await alice.open_udp("0.0.0.0", 5300)
        assert in_use.value.errno == errno.EADDRINUSE
        await client.aclose()
        await server.aclose()


async def test_a_full_backlog_refuses_more() -> None:
    async with lan_gateway() as url, members(url, "alice", "bob") as (alice, bob):
        listener = await alice.listen_tcp("0.0.0.0", 8000, backlog=2)
        # Something else keeps alice's WebSocket read while nobody accepts.
        idle = await alice.open_udp("0.0.0.0", 5301)
        clients = []
        async with anyio.create_task_group() as group:
            group.start_soon(idle.receive)
            for _ in range(4):
                client = await bob.connect_tcp("alice.demo", 8000)
                await client.send(b"x")
                clients.append(client)
            # Two wait to be accepted; the other two are refused.
            refused = 0
            for client in clients:
                try:
                    with anyio.fail_after(2):
                        await client.receive()
                except (ConnectionResetError, ConnectionRefusedError, anyio.EndOfStream):
                    refused += 1
                except TimeoutError:
                    pass
            group.cancel_scope.cancel()
        assert refused == 2
        with anyio.fail_after(10):
            first = await listener.accept()
            second = await listener.accept()
        for served in (first, second):
            with anyio.fail_after(10):
                assert await served.receive() == b"x"
            await served.aclose()
        for client in clients:
            await client.aclose()
        await idle.aclose()
        await listener.aclose()


async def test_the_listener_comes_back_after_the_gateway_restarts() -> None:
    port = 0
    async with lan_gateway() as url, members(url, "carol") as (carol,):
        port = int(url.rsplit(":", 1)[1].strip("/"))
        alice = WispStack(url, lan="demo", member="alice", token=TOKEN, reconnect_delay=0.05)
        news = Recorder(alice)
        await alice.connect()
        listener = await alice.listen_tcp("0.0.0.0", 8000)
        assert dict(alice.members) == {"carol.demo": carol.lan_address}
    served: list[bytes] = []

    async def serve() -> None:
        async for stream in listener:
            async with stream:
                data = await stream.receive()
                served.append(data)
                await stream.send(data.upper())

    async with anyio.create_task_group() as group:
        group.start_soon(serve)
        # The gateway is gone: accept() keeps trying, with backoff.
        await news.wait_for(
            lambda e: e.kind is TunnelEventKind.RECONNECTING and e.attempt >= 3, limit=20
        )
        delays = [e.delay for e in news.events if e.kind is TunnelEventKind.RECONNECTING]
        assert delays[0] == 0.0
        assert all(later > 0 for later in delays[1:])
        async with lan_gateway(port) as url2, members(url2, "bob") as (bob,):
            connected = await news.wait_for(
                lambda e: e.kind is TunnelEventKind.CONNECTED and e is not news.events[1],
                limit=30,
            )
            assert connected.name == "alice.demo"
            with anyio.fail_after(20):
                while True:
                    try:
                        client = await bob.connect_tcp("alice.demo", 8000)
                        break
                    except ConnectionRefusedError:
                        # bob can be quicker than alice's next attempt.
                        await anyio.sleep(0.05)
            async with client:
                await client.send(b"still here")
                with anyio.fail_after(10):
                    assert await client.receive() == b"STILL HERE"
            assert listener.local_address == (alice.lan_address, 8000)
            # carol was not there any more; bob was new.
            left = await news.wait_for(lambda e: e.kind is TunnelEventKind.MEMBER_LEFT)
            assert (left.name, left.address) == ("carol.demo", carol.lan_address)
            joined = await news.wait_for(
                lambda e: e.kind is TunnelEventKind.MEMBER_JOINED and e.name == "bob.demo"
            )
            assert joined.address == bob.lan_address
            assert dict(alice.members) == {"bob.demo": bob.lan_address}
            group.cancel_scope.cancel()
    assert served == [b"still here"]
    await listener.aclose()
    await alice.aclose()


async def test_a_dropped_websocket_reregisters_the_listener_on_the_same_gateway() -> None:
    async with lan_gateway() as url, members(url, "alice", "bob") as (alice, bob):
        news = Recorder(alice)
        listener = await alice.listen_tcp("0.0.0.0", 8080)
        session = alice._sessions[threading.get_ident()]
        async with anyio.create_task_group() as group:

            async def serve() -> None:
                async for stream in listener:
                    async with stream:
                        await stream.send(await stream.receive())

            group.start_soon(serve)
            await session.ws.aclose()
            await news.wait_for(lambda e: e.kind is TunnelEventKind.RECONNECTING)
            await news.wait_for(lambda e: e.kind is TunnelEventKind.CONNECTED)
            with anyio.fail_after(20):
                while True:
                    try:
                        client = await bob.connect_tcp("alice.demo", 8080)
                        await client.send(b"again")
                        assert await client.receive() == b"again"
                        break
                    except (ConnectionRefusedError, ConnectionResetError):
                        await anyio.sleep(0.05)
            await client.aclose()
            group.cancel_scope.cancel()
        assert alice._sessions[threading.get_ident()] is not session
        await listener.aclose()


async def test_stack_close_closes_listeners() -> None:
    async with lan_gateway() as url:
        alice = WispStack(url, lan="demo", member="alice", token=TOKEN)
        listener = await alice.listen_tcp("0.0.0.0", 8000)
        udp = await alice.open_udp("0.0.0.0", 5300)
        news = Recorder(alice)
        await alice.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await listener.accept()
        with pytest.raises(anyio.ClosedResourceError):
            await udp.receive()
        assert news.kinds() == [TunnelEventKind.CLOSED]
        # The name is free again for the next connection.
        again = WispStack(url, lan="demo", member="alice", token=TOKEN)
        with anyio.fail_after(10):
            while True:
                try:
                    await again.connect()
                    break
                except OSError as exc:
                    # Until the gateway noticed the old connection's end.
                    if exc.errno != errno.EADDRINUSE:
                        raise
                    await anyio.sleep(0.05)
        await again.aclose()


async def test_the_url_carries_the_lan_but_the_server_never_sees_it() -> None:
    async with lan_gateway() as url:
        host_port = url.removeprefix("wisp://").rstrip("/")
        stack = stack_from_url(f"ws://{host_port}/?lan=demo&member=alice&token={TOKEN}")
        assert isinstance(stack, WispStack)
        assert stack.lan == "demo"
        assert stack.member == "alice"
        assert TOKEN not in repr(stack)
        assert "?" not in stack.url
        assert stack.endpoint.path == "/"
        await stack.connect()
        assert stack.lan_name == "alice.demo"
        await stack.aclose()
    with pytest.raises(ValueError, match="only meaningful with lan"):
        WispStack("wisp://127.0.0.1:1/?member=alice")
    with pytest.raises(ValueError, match="version 2"):
        WispStack("wisp://127.0.0.1:1/?lan=demo", version=1)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asyncio_server_under_install_reached_by_another_member() -> None:
    # alice's program is unmodified asyncio code, run with the socket module
    # patched onto her WispStack; bob reaches it by name through his.
    with lan_gateway_in_thread() as url:
        async with members(url, "bob") as (bob,):
            await serve_under_install(url, bob)


async def serve_under_install(url: str, bob: WispStack) -> None:
    alice = WispStack(url, lan="demo", member="alice", token=TOKEN)
    netshim.install(alice)
    try:

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            digest = hashlib.sha256()
            size = int((await reader.readline()).decode())
            while size:
                chunk = await reader.read(min(size, 65536))
                digest.update(chunk)
                size -= len(chunk)
            writer.write(digest.hexdigest().encode() + b"\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "0.0.0.0", 8000)
        # Bound to every address of alice's, which is her LAN address.
        assert server.sockets[0].getsockname() == (alice.lan_address, 8000)
        payload = os.urandom(1 << 20)
        with anyio.fail_after(30):
            client = await bob.connect_tcp("alice.demo", 8000)
            async with client:
                await client.send(b"%d\n" % len(payload))
                await client.send(payload)
                answer = b""
                while not answer.endswith(b"\n"):
                    answer += await client.receive()
        assert answer.strip().decode() == hashlib.sha256(payload).hexdigest()
        server.close()
        await server.wait_closed()
    finally:
        netshim.uninstall()
        await alice.aclose()


class PushingWebSocket:
    """A WebSocket that hands each message to a handler, as JavaScript's does in Pyodide."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.outgoing: asyncio.Queue[bytes] = asyncio.Queue()
        self.tasks = [asyncio.get_running_loop().create_task(self._send_all())]

    @property
    def subprotocol(self) -> str | None:
        return self.inner.subprotocol  # type: ignore[no-any-return]

    @property
    def writable(self) -> bool:
        return not self.inner.closed

    async def _send_all(self) -> None:
        while True:
            await self.inner.send(await self.outgoing.get())

    def send_nowait(self, data: bytes | memoryview, prefix: bytes = b"") -> None:
        self.outgoing.put_nowait(prefix + data)

    @property
    def must_drain(self) -> bool:
        return False

    async def drain(self) -> None:
        pass

    async def send(self, data: bytes, prefix: bytes = b"") -> None:
        self.outgoing.put_nowait(prefix + data)

    async def receive(self) -> bytes | None:
        return await self.inner.receive()  # type: ignore[no-any-return]

    def set_message_handler(self, handler: Callable[[bytes | None], None]) -> None:
        async def push() -> None:
            while True:
                message = await self.inner.receive()
                handler(message)
                if message is None:
                    return

        self.tasks.append(asyncio.get_running_loop().create_task(push()))

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        for task in self.tasks:
            task.cancel()
        await self.inner.aclose()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_accept_with_pushed_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    # In Pyodide nobody reads the WebSocket: messages are pushed, and
    # accept() only waits for their dispatch.  A full backlog is refused
    # from inside that dispatch.
    opened: list[PushingWebSocket] = []
    original = websocket_module.open_websocket

    async def open_pushing(*args: Any, **kwargs: Any) -> Any:
        websocket = PushingWebSocket(await original(*args, **kwargs))
        opened.append(websocket)
        return websocket

    async with lan_gateway() as url, members(url, "bob") as (bob,):
        monkeypatch.setattr(websocket_module, "open_websocket", open_pushing)
        alice = WispStack(url, lan="demo", member="alice", token=TOKEN)
        try:
            listener = await alice.listen_tcp("0.0.0.0", 8000, backlog=1)
            assert len(opened) == 1
            first = await bob.connect_tcp("alice.demo", 8000)
            await first.send(b"one")
            with anyio.fail_after(10):
                served = await listener.accept()
                assert await served.receive() == b"one"
            await served.send(b"ONE")
            with anyio.fail_after(10):
                assert await first.receive() == b"ONE"
            # Nobody accepts now: one waits, the next is refused.
            waiting = await bob.connect_tcp("alice.demo", 8000)
            refused = await bob.connect_tcp("alice.demo", 8000)
            with (
                pytest.raises((ConnectionResetError, ConnectionRefusedError, anyio.EndOfStream)),
                anyio.fail_after(10),
            ):
                await refused.receive()
            await waiting.send(b"two")
            with anyio.fail_after(10):
                second = await listener.accept()
                assert await second.receive() == b"two"
            for stream in (served, second, first, waiting, refused):
                await stream.aclose()
            # The WebSocket drops: the waiting accept() reconnects (on a new
            # pushed WebSocket) and listens on the same port again.
            news = Recorder(alice)
            async with anyio.create_task_group() as group:
                accepted: list[TcpStream] = []

                async def accept_one() -> None:
                    accepted.append(await listener.accept())

                group.start_soon(accept_one)
                await opened[0].inner.aclose()
                await news.wait_for(lambda e: e.kind is TunnelEventKind.CONNECTED)
                assert len(opened) == 2
                with anyio.fail_after(10):
                    third = await bob.connect_tcp("alice.demo", 8000)
            assert accepted[0].remote_address[0] == bob.lan_address
            assert news.kinds()[:2] == [TunnelEventKind.RECONNECTING, TunnelEventKind.CONNECTING]
            await third.aclose()
            await accepted[0].aclose()
            await listener.aclose()
        finally:
            await alice.aclose()


async def test_a_bound_udp_socket_comes_back_after_the_websocket_drops() -> None:
    async with lan_gateway() as url, members(url, "alice", "bob") as (alice, bob):
        news = Recorder(alice)
        server = await alice.open_udp("0.0.0.0", 5300)
        client = await bob.open_udp("0.0.0.0", 5301)
        session = alice._sessions[threading.get_ident()]
        await session.ws.aclose()
        async with anyio.create_task_group() as group:
            received: list[tuple[bytes, Any]] = []

            async def receive_one() -> None:
                received.append(await server.receive())

            group.start_soon(receive_one)
            await news.wait_for(lambda e: e.kind is TunnelEventKind.CONNECTED)
            with anyio.fail_after(10):
                while not received:
                    await client.send(b"anyone?", ("alice.demo", 5300))
                    await anyio.sleep(0.05)
        assert received[0] == (b"anyone?", (bob.lan_address, 5301))
        assert server.local_address == (alice.lan_address, 5300)
        await server.aclose()
        await client.aclose()


async def test_reconnection_gives_up_after_the_attempts_allowed() -> None:
    async with lan_gateway() as url:
        alice = WispStack(
            url,
            lan="demo",
            member="alice",
            token=TOKEN,
            reconnect_attempts=3,
            reconnect_delay=0.01,
            reconnect_seed=1,
        )
        listener = await alice.listen_tcp("0.0.0.0", 8000)
        news = Recorder(alice)
    # The gateway is gone for good.
    with pytest.raises(ConnectionRefusedError), anyio.fail_after(20):
        await listener.accept()
    assert news.kinds() == [
        TunnelEventKind.RECONNECTING,
        TunnelEventKind.CONNECTING,
        TunnelEventKind.RECONNECTING,
        TunnelEventKind.CONNECTING,
        TunnelEventKind.RECONNECTING,
        TunnelEventKind.CONNECTING,
        TunnelEventKind.CLOSED,
    ]
    attempts = [e.attempt for e in news.events if e.kind is TunnelEventKind.RECONNECTING]
    assert attempts == [1, 2, 3]
    delays = [e.delay for e in news.events if e.kind is TunnelEventKind.RECONNECTING]
    # At once, then 0.01 s and 0.02 s, each jittered down to no less than half.
    assert delays[0] == 0.0
    assert 0.005 <= delays[1] <= 0.01
    assert 0.01 <= delays[2] <= 0.02
    # It stays failed; closing it is still clean.
    with pytest.raises(ConnectionRefusedError):
        await listener.accept()
    await listener.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await listener.accept()
    await alice.aclose()


def test_members_is_read_only() -> None:
    stack = WispStack("wisp://127.0.0.1:1/", lan="demo", member="alice", token=TOKEN)
    assert stack.lan_address is None
    assert stack.lan_name is None
    assert dict(stack.members) == {}
    with pytest.raises(TypeError):
        stack.members["x"] = "y"  # type: ignore[index]
