"""State events of tunnel stacks: connecting, connected, closed, reconnection at next use.

Against our gateway (stopped and started again on the same port) and the
wisp-js server, which has no LAN extension: there listening is refused with
EOPNOTSUPP and everything else works as before.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from tunnel_helpers import LOOPBACK, bulk_exchange, bulk_target, running_gateway, wisp_js_server

from netshim import HostStack, WispStack
from netshim.gateway import Gateway, GatewayConfig
from netshim.stacks._tunnel import TunnelEvent, TunnelEventKind

pytestmark = pytest.mark.anyio

CONNECTING = TunnelEventKind.CONNECTING
CONNECTED = TunnelEventKind.CONNECTED
CLOSED = TunnelEventKind.CLOSED


def wisp_url(gateway: Gateway) -> str:
    host, port = gateway.addresses["http"]
    return f"wisp://{host}:{port}/"


@asynccontextmanager
async def gateway_on(port: int) -> AsyncIterator[Gateway]:
    """Our gateway on a given loopback port (to stand in for one that restarted)."""
    gateway = Gateway(None, GatewayConfig(policy=LOOPBACK))
    async with anyio.create_task_group() as group:
        await group.start(
            lambda task_status: gateway.serve(host="127.0.0.1", port=port, task_status=task_status)
        )
        try:
            yield gateway
        finally:
            group.cancel_scope.cancel()


async def test_connect_and_close_are_told_to_callbacks_and_iterators() -> None:
    async with running_gateway() as gateway:
        stack = WispStack(wisp_url(gateway))
        told: list[TunnelEvent] = []
        unsubscribe = stack.on_event(told.append)
        async with stack.events() as events:
            await stack.connect()
            # Connecting again while connected tells nothing new.
            await stack.connect()
            await stack.aclose()
            kinds = [event.kind for event in told]
            assert kinds == [CONNECTING, CONNECTED, CLOSED]
            assert told[1].address is None
            assert told[1].name is None
            assert "closed" in told[2].reason
            with anyio.fail_after(5):
                seen = [await events.__anext__() for _ in range(3)]
            assert seen == told
        unsubscribe()
        unsubscribe()  # idempotent
        await stack.connect()
        await stack.aclose()
        assert len(told) == 3  # nothing after unsubscribing
        assert str(CONNECTED) == "connected"


async def test_a_dropped_gateway_is_closed_then_reconnected_at_next_use() -> None:
    async with bulk_target() as target:
        async with running_gateway() as gateway:
            url = wisp_url(gateway)
            port = gateway.addresses["http"][1]
            stack = WispStack(url)
            told: list[TunnelEvent] = []
            stack.on_event(told.append)
            stream = await stack.connect_tcp(*target.address)
            await stream.send(b"\x00" * 16)
        # The gateway is gone: the stream notices, and so do the events.
        with pytest.raises(ConnectionResetError), anyio.fail_after(5):
            await stream.receive()
        await stream.aclose()
        assert [e.kind for e in told] == [CONNECTING, CONNECTED, CLOSED]
        assert told[-1].reason
        # With nothing listening, nobody reconnects by itself ...
        await anyio.sleep(0.2)
        assert len(told) == 3
        # ... and the next use connects to the gateway that took the port.
        async with gateway_on(port):
            again = await stack.connect_tcp(*target.address)
            async with again:
                _, _, received = await bulk_exchange(again, 3, 5)
            assert received == 5
            assert [e.kind for e in told[3:]] == [CONNECTING, CONNECTED]
            await stack.aclose()
        assert told[-1].kind is CLOSED


async def test_a_refused_connection_is_closed_with_its_reason() -> None:
    listener = await HostStack().listen_tcp("127.0.0.1", 0)
    port = listener.local_address[1]
    await listener.aclose()
    stack = WispStack(f"wisp://127.0.0.1:{port}/")
    told: list[TunnelEvent] = []
    stack.on_event(told.append)
    with pytest.raises(ConnectionRefusedError):
        await stack.connect()
    assert [e.kind for e in told] == [CONNECTING, CLOSED]
    assert "refused" in told[1].reason.lower()


async def test_wrong_password_is_closed_with_a_permission_error() -> None:
    config = GatewayConfig(policy=LOOPBACK, users={"ann": "right"})
    async with running_gateway(config) as gateway:
        host, port = gateway.addresses["http"]
        stack = WispStack(f"wisp://ann:wrong@{host}:{port}/")
        told: list[TunnelEvent] = []
        stack.on_event(told.append)
        with pytest.raises(PermissionError):
            await stack.connect()
        assert [e.kind for e in told] == [CONNECTING, CLOSED]
        assert "wrong" not in repr(stack)
        assert "wrong" not in told[1].reason


async def test_a_raising_callback_does_not_stop_the_others() -> None:
    async with running_gateway() as gateway:
        stack = WispStack(wisp_url(gateway))
        told: list[TunnelEventKind] = []

        def broken(event: TunnelEvent) -> None:
            raise RuntimeError("a bug in the program's callback")

        stack.on_event(broken)
        stack.on_event(lambda event: told.append(event.kind))
        await stack.connect()
        await stack.aclose()
        assert told == [CONNECTING, CONNECTED, CLOSED]


async def test_the_event_queue_keeps_the_newest_and_counts_the_dropped() -> None:
    stack = WispStack("wisp://127.0.0.1:9/")
    async with stack.events(max_queued=2) as events:
        for attempt in range(1, 6):
            stack.emit(TunnelEvent(TunnelEventKind.RECONNECTING, attempt=attempt))
        assert events.dropped == 3
        got = [await events.__anext__(), await events.__anext__()]
        assert [e.attempt for e in got] == [4, 5]
    # Closed: the iteration ends.
    assert [event async for event in events] == []
    with pytest.raises(ValueError):
        stack.events(max_queued=0)


async def test_events_from_another_thread_wake_the_reader() -> None:
    # The socket shim's engine runs the stack in a thread of its own: events
    # it emits must wake a reader in the program's event loop.
    stack = WispStack("wisp://127.0.0.1:9/")
    async with stack.events() as events:

        def elsewhere() -> None:
            stack.emit(TunnelEvent(TunnelEventKind.CONNECTING))

        async with anyio.create_task_group() as group:
            group.start_soon(anyio.to_thread.run_sync, elsewhere)
            with anyio.fail_after(5):
                event = await events.__anext__()
        assert event.kind is CONNECTING
    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    # After aclose nothing is queued any more.
    assert [event async for event in events] == []


async def test_without_the_lan_extension_listening_is_not_supported() -> None:
    # wisp-js offers no LAN extension: listen_tcp says so, nothing else changes.
    async with bulk_target() as target, wisp_js_server() as url:
        stack = WispStack(url)
        told: list[TunnelEvent] = []
        stack.on_event(told.append)
        try:
            with pytest.raises(OSError) as caught:
                await stack.listen_tcp("0.0.0.0", 8000)
            assert caught.value.errno == errno.EOPNOTSUPP
            assert "does not offer listening" in str(caught.value)
            stream = await stack.connect_tcp(*target.address)
            async with stream:
                _, _, received = await bulk_exchange(stream, 10, 20)
            assert received == 20
            # A UDP socket bound to a port stays as it was: no LAN, no listener.
            udp = await stack.open_udp("0.0.0.0", 5353)
            assert udp.local_address == ("0.0.0.0", 0)
            await udp.aclose()
        finally:
            await stack.aclose()
        assert [e.kind for e in told] == [CONNECTING, CONNECTED, CLOSED]


async def test_joining_a_lan_at_a_server_without_lans_is_refused() -> None:
    async with wisp_js_server() as url:
        stack = WispStack(url, lan="demo", member="alice", token="secret-token")
        with pytest.raises(OSError) as caught:
            await stack.connect()
        assert caught.value.errno == errno.EOPNOTSUPP
        assert "demo" in str(caught.value)
        assert "secret-token" not in str(caught.value)
        await stack.aclose()


@pytest.mark.parametrize("kind", ["websockify", "socks5"])
async def test_per_connection_tunnels_tell_whether_their_server_answers(kind: str) -> None:
    # websockify and SOCKS5 open a connection to their server per stream:
    # connected when it answers, closed when it does not; nothing new while
    # it keeps answering; each attempt while it is down is connecting, closed.
    from netshim import Socks5Stack, WebsockifyStack

    async with bulk_target() as target:
        async with running_gateway(socks=True) as gateway:
            if kind == "websockify":
                host, port = gateway.addresses["http"]
                stack: WebsockifyStack | Socks5Stack = WebsockifyStack(f"ws://{host}:{port}/")
            else:
                host, port = gateway.addresses["socks5"]
                stack = Socks5Stack(f"socks5h://{host}:{port}")
            told: list[TunnelEvent] = []
            stack.on_event(told.append)
            for _ in range(2):
                stream = await stack.connect_tcp(*target.address)
                async with stream:
                    _, _, received = await bulk_exchange(stream, 3, 5)
                assert received == 5
            assert [e.kind for e in told] == [CONNECTING, CONNECTED]
        for _ in range(2):
            with pytest.raises(OSError), anyio.fail_after(10):
                await stack.connect_tcp(*target.address)
        assert [e.kind for e in told] == [CONNECTING, CONNECTED, CLOSED, CONNECTING, CLOSED]
        assert "Error" in told[2].reason
