"""Socks5Stack and WebsockifyStack against our gateway, microsocks and websockify."""

from __future__ import annotations

import errno
import socket

import anyio
import pytest
from tunnel_helpers import (
    LOOPBACK,
    TUNNEL_CHECKS,
    bulk_exchange,
    bulk_target,
    free_port,
    run_checks,
    running_gateway,
    udp_echo,
    wait_for_port,
)

from netshim import Socks5Stack, WebsockifyStack
from netshim.gateway import GatewayConfig
from netshim.policy import DestinationBlockedError, Policy
from netshim.testing import require_peer

pytestmark = pytest.mark.anyio

# Over TCP, SOCKS5 streams half-close for real.  A reset of the target
# reaches us as a FIN: proxies (ours, microsocks) close their side normally.
SOCKS_CHECKS = (
    *(c for c in TUNNEL_CHECKS if c != "tcp_abort_resets_peer"),
    "tcp_half_close",
)
# websockify connects after the upgrade (a refusal shows at the first
# receive), carries no UDP, and ends the WebSocket normally on a reset.
WS_CHECKS = tuple(
    c for c in TUNNEL_CHECKS if c not in ("tcp_refused", "udp_size_limit", "tcp_abort_resets_peer")
)


@pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
async def test_socks5_conformance_through_gateway(scheme: str) -> None:
    async with running_gateway(socks=True) as gateway:
        host, port = gateway.addresses["socks5"]
        stack = Socks5Stack(f"{scheme}://{host}:{port}")
        assert stack.resolves_remotely is (scheme == "socks5h")
        await run_checks(stack, [c for c in SOCKS_CHECKS if c != "udp_size_limit"])


async def test_socks5_password_udp_and_refusals() -> None:
    policy = Policy(allow=["127.0.0.1"], deny=["127.0.0.2"])
    config = GatewayConfig(policy=policy, users={"ada": "pw"})
    async with (
        udp_echo() as echo,
        bulk_target() as target,
        running_gateway(config, socks=True) as gw,
    ):
        host, port = gw.addresses["socks5"]
        stack = Socks5Stack(f"socks5h://ada:pw@{host}:{port}")
        stream = await stack.connect_tcp(*target.address)
        async with stream:
            up, down, _received = await bulk_exchange(stream, 1 << 20, 1 << 20)
        assert (target.transfers[0].up_sha, target.transfers[0].down_sha) == (up, down)
        sock = await stack.open_udp()
        async with sock:
            await sock.send(b"datagram", echo)
            with anyio.fail_after(5):
                assert await sock.receive() == (b"datagram", echo)
        with pytest.raises(DestinationBlockedError, match=r"127\.0\.0\.2:80"):
            await stack.connect_tcp("127.0.0.2", 80)
        with pytest.raises(PermissionError, match="username/password"):
            await Socks5Stack(f"socks5://ada:nope@{host}:{port}").connect_tcp(*target.address)


async def test_socks5_over_a_websocket() -> None:
    async with bulk_target() as target, running_gateway(socks=True) as gateway:
        socks_host, socks_port = gateway.addresses["socks5"]
        host, port = gateway.addresses["http"]
        # The gateway's wsproxy stands in front of its own SOCKS5 port.
        config_url = f"socks5h+ws://{host}:{port}/{socks_host}:{socks_port}"
        stack = Socks5Stack(config_url)
        stream = await stack.connect_tcp(*target.address)
        async with stream:
            _up, down, received = await bulk_exchange(stream, 100_000, 200_000)
        assert received == 200_000
        assert target.transfers[0].down_sha == down


async def test_socks5_against_microsocks() -> None:
    microsocks = require_peer("microsocks")
    port = free_port()
    async with await anyio.open_process(
        [microsocks, "-i", "127.0.0.1", "-p", str(port), "-u", "ada", "-P", "pw"]
    ) as process:
        try:
            await wait_for_port("127.0.0.1", port)
            stack = Socks5Stack(f"socks5h://ada:pw@127.0.0.1:{port}")
            # microsocks ends both directions when one side sends EOF, so no
            # half-close; and it has no UDP ASSOCIATE.
            checks = [c for c in SOCKS_CHECKS if c != "tcp_half_close" and not c.startswith("udp")]
            await run_checks(stack, checks)
            async with bulk_target() as target:
                stream = await stack.connect_tcp("localhost", target.address[1])
                async with stream:
                    up, down, _received = await bulk_exchange(stream, 3 << 20, 3 << 20)
                assert (target.transfers[0].up_sha, target.transfers[0].down_sha) == (up, down)
            with pytest.raises(PermissionError):
                await Socks5Stack(f"socks5://127.0.0.1:{port}").connect_tcp("127.0.0.1", 9)
        finally:
            process.kill()


async def test_websockify_through_gateway() -> None:
    async with running_gateway() as gateway:
        host, port = gateway.addresses["http"]
        stack = WebsockifyStack(f"ws://{host}:{port}/")
        await run_checks(stack, WS_CHECKS)
        with pytest.raises(OSError) as udp:
            await stack.open_udp()
        assert udp.value.errno == errno.EOPNOTSUPP


async def test_websockify_through_our_gateway_fails_at_connect_as_a_socket_does() -> None:
    # netshim's gateway connects before it answers the upgrade: a refusal is
    # the connect's error, the same exception Wisp and SOCKS5 raise.
    async with running_gateway() as gateway:
        host, port = gateway.addresses["http"]
        stack = WebsockifyStack(f"ws://{host}:{port}/")
        await run_checks(stack, ("tcp_refused",))
        with pytest.raises(PermissionError, match=r"netshim policy refused 10\.1\.2\.3:80"):
            await stack.connect_tcp("10.1.2.3", 80)
        with pytest.raises(socket.gaierror, match="invalid host name"):
            await stack.connect_tcp("a..b", 80)


async def test_a_refusal_through_websockify_is_never_a_clean_end_of_stream() -> None:
    import socket as stdlib_socket

    import netshim

    async with running_gateway() as gateway:
        host, port = gateway.addresses["http"]
        closed = free_port()
        stack = WebsockifyStack(f"ws://{host}:{port}/")

        def connect(address: tuple[str, int]) -> None:
            with netshim.installed(stack), stdlib_socket.create_connection(address, timeout=10):
                pass

        with pytest.raises(PermissionError):
            await anyio.to_thread.run_sync(connect, ("10.1.2.3", 80))
        with pytest.raises(ConnectionRefusedError):
            await anyio.to_thread.run_sync(connect, ("127.0.0.1", closed))


async def test_websockify_fixed_target_with_token() -> None:
    async with bulk_target() as target:
        config = GatewayConfig(policy=LOOPBACK, targets={"t1": target.address})
        async with running_gateway(config) as gateway:
            host, port = gateway.addresses["http"]
            stack = WebsockifyStack(f"ws://{host}:{port}/websockify?token=t1")
            stream = await stack.connect_tcp("anything.example", 1)
            async with stream:
                up, down, _received = await bulk_exchange(stream, 1 << 20, 1 << 20)
            assert (target.transfers[0].up_sha, target.transfers[0].down_sha) == (up, down)


async def test_websockify_against_debian_websockify() -> None:
    websockify = require_peer("websockify")
    async with bulk_target() as target:
        port = free_port()
        command = [websockify, f"127.0.0.1:{port}", f"127.0.0.1:{target.address[1]}"]
        async with await anyio.open_process(command) as process:
            try:
                await wait_for_port("127.0.0.1", port)
                stack = WebsockifyStack(f"ws://127.0.0.1:{port}/")
                for count, size in enumerate((1, 70_000, 2 << 20), 1):
                    stream = await stack.connect_tcp("127.0.0.1", target.address[1])
                    async with stream:
                        up, down, received = await bulk_exchange(stream, size, size)
                    assert received == size
                    with anyio.fail_after(5):
                        while len(target.transfers) < count:  # noqa: ASYNC110
                            await anyio.sleep(0.01)
                    assert target.transfers[-1].down_sha == down
                    assert target.transfers[-1].up_sha == up
            finally:
                process.kill()


async def test_bad_urls_name_the_bad_part() -> None:
    with pytest.raises(ValueError, match="scheme 'socks4'"):
        Socks5Stack("socks4://127.0.0.1:1080")
    with pytest.raises(ValueError, match="bad port"):
        Socks5Stack("socks5://127.0.0.1:99999")
    with pytest.raises(ValueError, match="path"):
        Socks5Stack("socks5://127.0.0.1:1080/x")
    with pytest.raises(ValueError, match="scheme 'http'"):
        WebsockifyStack("http://127.0.0.1:1/")
