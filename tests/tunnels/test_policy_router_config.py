"""PolicyStack, RouterStack, stack_from_url, install() from the environment, the shim on Wisp."""

from __future__ import annotations

import socket

import anyio
import pytest
from tunnel_helpers import bulk_exchange, bulk_target, running_gateway

import netshim
from netshim import (
    HostStack,
    PolicyStack,
    RouterStack,
    Socks5Stack,
    WebsockifyStack,
    WispStack,
    stack_from_environment,
    stack_from_url,
)
from netshim.policy import DestinationBlockedError
from netshim.shim._engine import get_engine
from netshim.testing import StackPair, check_stack

pytestmark = pytest.mark.anyio


async def test_policy_blocks_and_names_the_rule() -> None:
    async with bulk_target() as target:
        stack = PolicyStack(HostStack(), allow=["127.0.0.1", "localhost"], deny=["*:25"])
        stream = await stack.connect_tcp("localhost", target.address[1])
        async with stream:
            _, _, received = await bulk_exchange(stream, 1, 2)
        assert received == 2
        with pytest.raises(DestinationBlockedError, match=r"deny rule '\*:25'"):
            await stack.connect_tcp("127.0.0.1", 25)
        with pytest.raises(DestinationBlockedError, match=r"127\.0\.0\.2:80.*allow rules"):
            await stack.connect_tcp("127.0.0.2", 80)
        sock = await stack.open_udp("127.0.0.1")
        async with sock:
            with pytest.raises(DestinationBlockedError, match="allow rules"):
                await sock.send(b"x", ("127.0.0.3", 53))


async def test_policy_stack_passes_the_conformance_kit() -> None:
    async def make() -> StackPair:
        stack = PolicyStack(HostStack(), deny=["10.0.0.0/8"])
        return StackPair(stack, stack, "127.0.0.1", "127.0.0.1")

    await check_stack(make)


async def test_policy_on_a_tunnel_checks_names() -> None:
    async with running_gateway() as gateway:
        host, port = gateway.addresses["http"]
        stack = PolicyStack(WispStack(f"wisp://{host}:{port}/"), deny=["*.blocked.test"])
        with pytest.raises(DestinationBlockedError, match=r"a\.blocked\.test"):
            await stack.connect_tcp("a.blocked.test", 80)
        await stack.aclose()


async def test_router_sends_each_destination_to_its_stack() -> None:
    async with bulk_target() as target, running_gateway(socks=True) as gateway:
        host, port = gateway.addresses["http"]
        socks_host, socks_port = gateway.addresses["socks5"]
        wisp = WispStack(f"wisp://{host}:{port}/")
        socks = Socks5Stack(f"socks5h://{socks_host}:{socks_port}")
        direct = HostStack()
        router = RouterStack([("*.via-socks", socks), (f"*:{target.address[1]}", wisp)], direct)
        assert router.route("db.via-socks", 5432) is socks
        assert router.route("127.0.0.1", target.address[1]) is wisp
        assert router.route("127.0.0.1", 1) is direct
        stream = await router.connect_tcp(*target.address)
        assert isinstance(stream, type(await wisp.connect_tcp(*target.address)))
        async with stream:
            _, _, received = await bulk_exchange(stream, 10, 10)
        assert received == 10
        await router.aclose()


def test_stack_from_url_and_environment() -> None:
    assert isinstance(stack_from_url("wisp://h:1/"), WispStack)
    assert isinstance(stack_from_url("wss://h/wisp/"), WispStack)
    assert isinstance(stack_from_url("ws://h:1/websockify?token=x"), WebsockifyStack)
    assert isinstance(stack_from_url("socks5h://u:p@h:1080"), Socks5Stack)
    assert isinstance(stack_from_url("host:"), HostStack)
    with pytest.raises(ValueError, match="scheme 'ftp'"):
        stack_from_url("ftp://h/")
    with pytest.raises(ValueError, match="bad port"):
        stack_from_url("socks5://h:70000")
    assert isinstance(stack_from_environment({}), HostStack)
    assert isinstance(stack_from_environment({"NETSHIM_STACK": "wisp://h:1/"}), WispStack)
    routed = stack_from_environment({"ALL_PROXY": "socks5h://h:1", "NO_PROXY": "localhost,.corp"})
    assert isinstance(routed, RouterStack)
    assert isinstance(routed.route("x.corp", 80), HostStack)
    assert isinstance(routed.route("example.org", 80), Socks5Stack)
    assert isinstance(
        stack_from_environment({"ALL_PROXY": "socks5://h:1", "NO_PROXY": "*"}), HostStack
    )


def test_install_without_a_stack_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETSHIM_STACK", "wisp://127.0.0.1:9/")
    with netshim.installed() as stack:
        assert isinstance(stack, WispStack)


# The gateway runs in this process; under trio its own sockets would be
# created while the patch is in place, so this test runs the loop on asyncio.
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_unmodified_socket_code_through_wisp(anyio_backend: str) -> None:
    # Plain blocking socket code in a worker thread, with netshim installed
    # on a Wisp tunnel to our gateway: the name goes through as a name.
    async with bulk_target() as target, running_gateway() as gateway:
        host, port = gateway.addresses["http"]
        stack = WispStack(f"wisp://{host}:{port}/")

        def client() -> bytes:
            with socket.create_connection(("localhost", target.address[1]), timeout=10) as sock:
                sock.sendall((0).to_bytes(8, "big") + (100_000).to_bytes(8, "big"))
                chunks = []
                while sum(map(len, chunks)) < 100_000:
                    chunks.append(sock.recv(65536))
                return b"".join(chunks)

        with netshim.installed(stack):
            data = await anyio.to_thread.run_sync(client)
        # The stack lives on the shim's engine: close its WebSocket there,
        # from a worker thread so that this loop keeps serving the gateway.
        await anyio.to_thread.run_sync(get_engine().call, stack.aclose)
        assert len(data) == 100_000
        assert target.transfers[0].down_bytes == 100_000


async def test_policy_keeps_the_inner_stacks_names_and_local_addresses() -> None:
    from netshim import VirtualNetwork

    net = VirtualNetwork(seed=0)
    net.add_host("web.internal", ["10.0.0.2"])
    client = net.add_host("client.internal", ["10.0.0.3"])
    policy = PolicyStack(client, deny=["10.0.0.2"])
    # Lookups are not connections: the policy answers with the inner stack's names...
    assert policy.hostname == client.hostname == "client.internal"
    assert await policy.reverse_lookup("10.0.0.2") == "web.internal"
    assert {info[4][0] for info in await policy.getaddrinfo("web.internal", 80)} == {"10.0.0.2"}
    # ...binds locally through itself, so sockets opened there stay checked...
    assert policy.stack_for_local_address("10.0.0.3") is policy
    listener = await policy.listen_tcp("10.0.0.3", 0)
    async with listener:
        assert listener.local_address[0] == "10.0.0.3"
    # ...and refuses the destination it denies, by name as well as by address.
    with pytest.raises(DestinationBlockedError):
        await policy.connect_tcp("web.internal", 80)
    with pytest.raises(DestinationBlockedError):
        await policy.open_udp(remote=("10.0.0.2", 53))
    # A forwarding stack never claims the host network: the shim would bypass it.
    assert not PolicyStack(HostStack()).uses_host_sockets
