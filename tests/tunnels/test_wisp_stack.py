"""WispStack against our gateway: the conformance kit, flow control, auth, errors, reconnection."""

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
    run_checks,
    running_gateway,
    udp_echo,
)

from netshim import HostStack, WispStack
from netshim.gateway import GatewayConfig
from netshim.policy import DestinationBlockedError, Policy

pytestmark = pytest.mark.anyio


def wisp_url(gateway: object, path: str = "/") -> str:
    host, port = gateway.addresses["http"]  # type: ignore[attr-defined]
    return f"wisp://{host}:{port}{path}"


@pytest.mark.parametrize("version", [1, 2])
async def test_conformance_through_gateway(version: int) -> None:
    async with running_gateway() as gateway:
        stack = WispStack(wisp_url(gateway), version=version)
        try:
            if version == 2:
                await run_checks(stack)
            else:
                # Without stream confirmation (v1) a refusal shows at the
                # first receive, not in connect_tcp.
                await run_checks(stack, [c for c in TUNNEL_CHECKS if c != "tcp_refused"])
                listener = await HostStack().listen_tcp("127.0.0.1", 0)
                port = listener.local_address[1]
                await listener.aclose()
                stream = await stack.connect_tcp("127.0.0.1", port)
                with pytest.raises(ConnectionRefusedError), anyio.fail_after(5):
                    await stream.receive()
            assert stack.negotiated_version == version
        finally:
            await stack.aclose()


async def test_parallel_streams_keep_every_byte() -> None:
    config = GatewayConfig(policy=LOOPBACK, wisp_buffer_size=4)
    async with bulk_target() as target, running_gateway(config) as gateway:
        stack = WispStack(wisp_url(gateway), packet_size=8192)
        sizes = [(0, 3 << 20), (2 << 20, 0), (1 << 20, 1 << 20), (17, 123_457)]
        results: list[tuple[str, str, int]] = []

        async def one(upload: int, download: int) -> None:
            stream = await stack.connect_tcp(*target.address)
            async with stream:
                results.append(await bulk_exchange(stream, upload, download))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                for upload, download in sizes:
                    group.start_soon(one, upload, download)
        await stack.aclose()
        # Each transfer reached the target intact and came back intact.
        for up_sha, down_sha, received in results:
            match = [t for t in target.transfers if t.up_sha == up_sha]
            assert match, "an upload was corrupted on the way"
            assert match[0].down_sha == down_sha
            assert received == match[0].down_bytes


async def test_never_sends_past_the_credit() -> None:
    # A window of 2 packets: the gateway's core rejects a client that goes
    # past twice the window with THROTTLED, so success means we obeyed.
    config = GatewayConfig(policy=LOOPBACK, wisp_buffer_size=2)
    async with bulk_target() as target, running_gateway(config) as gateway:
        stack = WispStack(wisp_url(gateway), packet_size=1024)
        stream = await stack.connect_tcp(*target.address)
        with anyio.fail_after(30):
            up, _, received = await bulk_exchange(stream, 2 << 20, 10)
        await stream.aclose()
        await stack.aclose()
        assert received == 10
        assert target.transfers[0].up_sha == up


async def test_password_auth_and_motd() -> None:
    config = GatewayConfig(policy=LOOPBACK, users={"ada": "s3cret"}, motd="hello from the gateway")
    async with bulk_target() as target, running_gateway(config) as gateway:
        host, port = gateway.addresses["http"]
        good = WispStack(f"wisp://ada:s3cret@{host}:{port}/")
        await good.connect()
        assert good.motd == "hello from the gateway"
        assert "s3cret" not in repr(good)
        stream = await good.connect_tcp(*target.address)
        await stream.aclose()
        await good.aclose()
        bad = WispStack(f"wisp://{host}:{port}/", username="ada", password="wrong")
        with pytest.raises(PermissionError, match="AUTH_BAD_PASSWORD"):
            await bad.connect()
        missing = WispStack(f"wisp://{host}:{port}/")
        with pytest.raises(PermissionError, match="AUTH_MISSING_CREDENTIALS"):
            await missing.connect_tcp(*target.address)


async def test_close_reasons_become_faithful_errors() -> None:
    policy = Policy(allow=["127.0.0.1"], deny=["127.0.0.2"])
    async with running_gateway(GatewayConfig(policy=policy)) as gateway:
        stack = WispStack(wisp_url(gateway))
        with pytest.raises(DestinationBlockedError, match=r"127\.0\.0\.2:80") as blocked:
            await stack.connect_tcp("127.0.0.2", 80)
        assert blocked.value.errno == errno.EACCES
        with pytest.raises(DestinationBlockedError, match=r"10\.1\.2\.3"):
            await stack.connect_tcp("10.1.2.3", 80)
        with pytest.raises(OSError) as unreachable:
            await stack.connect_tcp("no-such-host.invalid", 80)
        assert unreachable.value.errno == errno.EHOSTUNREACH
        await stack.aclose()


async def test_abort_resets_the_destination_and_close_ends_it() -> None:
    # A client's CLOSE with NETWORK_ERROR (what abort() sends) reaches the
    # destination as a reset; a plain close as an end of stream.
    async with running_gateway() as gateway:
        stack = WispStack(wisp_url(gateway))
        listener = await HostStack().listen_tcp("127.0.0.1", 0)
        port = listener.local_address[1]
        try:
            for how, expected in (("abort", ConnectionResetError), ("aclose", anyio.EndOfStream)):
                stream = await stack.connect_tcp("127.0.0.1", port)
                with anyio.fail_after(10):
                    served = await listener.accept()
                    await stream.send(b"x")
                    assert await served.receive() == b"x"
                    await getattr(stream, how)()
                    with pytest.raises(expected):
                        await served.receive()
                await served.aclose()
        finally:
            await listener.aclose()
            await stack.aclose()


async def test_udp_round_trip() -> None:
    async with udp_echo() as echo, running_gateway() as gateway:
        stack = WispStack(wisp_url(gateway))
        sock = await stack.open_udp()
        async with sock:
            for size in (1, 1400, 60000):
                await sock.send(b"x" * size, echo)
                with anyio.fail_after(5):
                    data, source = await sock.receive()
                assert (len(data), source) == (size, echo)
        connected = await stack.open_udp(remote=echo)
        async with connected:
            await connected.send(b"ping")
            with anyio.fail_after(5):
                assert await connected.receive() == (b"ping", echo)
        await stack.aclose()


async def test_names_resolve_at_the_server() -> None:
    async with bulk_target() as target, running_gateway() as gateway:
        stack = WispStack(wisp_url(gateway))
        infos = await stack.getaddrinfo("localhost.example", 80, type=socket.SOCK_STREAM)
        synthetic = infos[0][4][0]
        assert synthetic.startswith("198.1"), infos
        # "localhost" goes to the server as a name and the server resolves it.
        stream = await stack.connect_tcp("localhost", target.address[1])
        async with stream:
            _, _, received = await bulk_exchange(stream, 5, 7)
        assert received == 7
        await stack.aclose()


async def test_a_silent_stream_does_not_hold_up_the_others() -> None:
    # One task waits on a stream nothing arrives on, so it is the one reading
    # the shared WebSocket.  Another stream's reply, read by that task, must
    # still reach its own reader at once.
    async with bulk_target() as target, running_gateway() as gateway:
        stack = WispStack(wisp_url(gateway))
        silent = await stack.connect_tcp(*target.address)
        await silent.send(b"\x00" * 8)  # half a header: the target waits, and so do we

        async with anyio.create_task_group() as group:
            group.start_soon(silent.receive)
            await anyio.sleep(0.05)
            for round in range(20):
                busy = await stack.connect_tcp(*target.address)
                async with busy:
                    with anyio.fail_after(5):
                        _, _, received = await bulk_exchange(busy, 10, 1000 + round)
                assert received == 1000 + round
            group.cancel_scope.cancel()
        await silent.aclose()
        await stack.aclose()


async def test_reconnects_after_the_websocket_drops() -> None:
    async with bulk_target() as target:
        async with running_gateway() as gateway:
            url = wisp_url(gateway)
            stack = WispStack(url)
            stream = await stack.connect_tcp(*target.address)
            await stream.send(b"\x00" * 16)
        # The gateway is gone: the open stream fails with a reset ...
        with pytest.raises(ConnectionResetError), anyio.fail_after(5):
            await stream.receive()
        await stream.aclose()
        # ... and a new gateway on the same port serves new streams.
        port = int(url.rsplit(":", 1)[1].strip("/"))
        gateway2 = None
        from netshim.gateway import Gateway

        gateway2 = Gateway(None, GatewayConfig(policy=LOOPBACK))
        async with anyio.create_task_group() as group:
            await group.start(
                lambda task_status: gateway2.serve(
                    host="127.0.0.1", port=port, task_status=task_status
                )
            )
            again = await stack.connect_tcp(*target.address)
            async with again:
                _, _, received = await bulk_exchange(again, 3, 4)
            assert received == 4
            group.cancel_scope.cancel()
        await stack.aclose()


async def test_bad_urls_name_the_bad_part() -> None:
    with pytest.raises(ValueError, match="scheme 'http'"):
        WispStack("http://127.0.0.1:1/")
    with pytest.raises(ValueError, match="port"):
        WispStack("wisp://127.0.0.1:99999/")
    with pytest.raises(ValueError, match="no host"):
        WispStack("wisp:///path/")
    with pytest.raises(ValueError, match="version"):
        WispStack("wisp://127.0.0.1:1/", version=3)


async def test_a_dead_server_fails_fast() -> None:
    listener = await HostStack().listen_tcp("127.0.0.1", 0)
    port = listener.local_address[1]
    await listener.aclose()
    stack = WispStack(f"wisp://127.0.0.1:{port}/")
    with pytest.raises(ConnectionRefusedError):
        await stack.connect_tcp("127.0.0.1", 80)
