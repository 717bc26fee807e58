"""netshim.net: Node's net module on the virtual network and on the host network."""

from __future__ import annotations

import errno
import socket
from typing import Any

import anyio
import pytest

from netshim import HostStack, VirtualHost, VirtualNetwork, net, use_stack

pytestmark = pytest.mark.anyio


async def eventually(check: Any) -> None:
    """Wait (a second at most) until ``check()`` is true."""
    with anyio.fail_after(1):
        for _ in range(100_000):
            if check():
                return
            await anyio.sleep(0.001)


def hosts() -> tuple[VirtualNetwork, VirtualHost, VirtualHost]:
    network = VirtualNetwork(seed=1)
    return network, network.add_host("server"), network.add_host("client")


async def test_echo_with_events_and_iteration() -> None:
    _, server_host, client_host = hosts()
    seen: list[Any] = []

    async def on_connection(sock: net.Socket) -> None:
        seen.append((sock.remote_family, sock.local_address, sock.local_port))

        async def echo(chunk: bytes) -> None:
            await sock.write(chunk.upper())

        sock.on("data", echo)
        sock.on("end", lambda: seen.append("server saw end"))

    async with net.create_server(on_connection, stack=server_host) as server:
        await server.listen(7000, "10.0.0.2")
        assert server.address() == net.AddressInfo("10.0.0.2", "IPv4", 7000)
        async with net.connect(7000, "server", stack=client_host) as sock:
            assert sock.remote_address == "10.0.0.2"
            assert sock.remote_port == 7000
            assert sock.remote_family == "IPv4"
            assert sock.ready_state == "open"
            await sock.write(b"hello ")
            await sock.end("world")
            assert sock.ready_state == "readOnly"
            received = b"".join([chunk async for chunk in sock])  # type: ignore[misc]
            assert received == b"HELLO WORLD"
            assert sock.bytes_written == 11
            assert sock.bytes_read == 11
            await sock.wait_closed()
            assert sock.ready_state == "closed"
        assert seen[0] == ("IPv4", "10.0.0.2", 7000)
        assert "server saw end" in seen


async def test_async_for_over_server_and_get_connections() -> None:
    _, server_host, client_host = hosts()
    async with net.create_server(stack=server_host) as server:
        await server.listen(0)
        port = server.address().port  # type: ignore[union-attr]
        assert server.address().address == "::"  # type: ignore[union-attr]
        async with net.connect(port, "10.0.0.2", stack=client_host) as client:
            async for accepted in server:
                assert server.get_connections() == 1
                assert accepted.remote_address == "::ffff:" + client.local_address  # type: ignore[operator]
                await accepted.write(b"hi")
                await accepted.destroy()
                break
            assert [chunk async for chunk in client] == [b"hi"]
        assert server.get_connections() == 0
        await server.close()
        assert not server.listening


async def test_allow_half_open_keeps_writing_after_end() -> None:
    _, server_host, client_host = hosts()
    ended = anyio.Event()

    async def on_connection(sock: net.Socket) -> None:
        data = b"".join([chunk async for chunk in sock])  # type: ignore[misc]
        ended.set()
        assert sock.ready_state == "writeOnly"
        await sock.write(b"got " + data)
        await sock.end()

    async with net.create_server(on_connection, allow_half_open=True, stack=server_host) as server:
        await server.listen(7001)
        async with net.connect(7001, "10.0.0.2", stack=client_host) as sock:
            await sock.end(b"question")
            assert b"".join([c async for c in sock]) == b"got question"  # type: ignore[misc]
            assert ended.is_set()


async def test_without_half_open_the_server_ends_when_the_client_does() -> None:
    _, server_host, client_host = hosts()
    server_closed: list[bool] = []

    def on_connection(sock: net.Socket) -> None:
        sock.on("close", server_closed.append)
        sock.resume()

    async with net.create_server(on_connection, stack=server_host) as server:
        await server.listen(7002)
        async with net.connect(7002, "10.0.0.2", stack=client_host) as sock:
            closes: list[bool] = []
            sock.on("close", closes.append)
            await sock.end()
            assert [chunk async for chunk in sock] == []
            assert closes == [False]
        await eventually(lambda: server_closed)
        assert server_closed == [False]


async def test_pause_applies_backpressure_and_resume_releases_it() -> None:
    _, server_host, client_host = hosts()
    total = 0
    got_everything = anyio.Event()
    size = 2 * 1024 * 1024

    def on_connection(sock: net.Socket) -> None:
        def count(chunk: bytes) -> None:
            nonlocal total
            total += len(chunk)
            if total == size:
                got_everything.set()

        sock.pause()
        sock.on("data", count)
        assert sock.is_paused

        async def later() -> None:
            await anyio.sleep(0.05)
            assert total == 0
            sock.resume()

        sock.once("resume-later", later)

    async with net.create_server(on_connection, stack=server_host) as server:
        await server.listen(7003)
        async with net.connect(7003, "10.0.0.2", stack=client_host) as sock:
            chunk = bytes(64 * 1024)
            with anyio.move_on_after(0.05) as scope:
                while sock.bytes_written < size:
                    await sock.write(chunk)
            # The window filled while the server was paused: the writes waited.
            assert scope.cancelled_caught
            assert sock.bytes_written < size
            (accepted,) = server.connections
            assert accepted.bytes_read < size
            await accepted.emit("resume-later")
            while sock.bytes_written < size:
                await sock.write(chunk)
            with anyio.fail_after(2):
                await got_everything.wait()


async def test_set_encoding_joins_split_characters() -> None:
    _, server_host, client_host = hosts()
    async with net.create_server(stack=server_host) as server:
        await server.listen(7004)
        async with net.connect(7004, "10.0.0.2", stack=client_host) as sock:
            async for accepted in server:
                encoded = "héllo €".encode()
                for index in range(len(encoded)):
                    await accepted.write(encoded[index : index + 1])
                await accepted.end()
                break
            sock.set_encoding("utf-8")
            assert "".join([c async for c in sock]) == "héllo €"  # type: ignore[misc]


async def test_set_timeout_emits_timeout_and_keeps_the_socket_open() -> None:
    _, server_host, client_host = hosts()
    async with net.create_server(stack=server_host) as server:
        await server.listen(7005)
        async with net.connect(7005, "10.0.0.2", stack=client_host) as sock:
            fired = anyio.Event()
            sock.set_timeout(0.02, fired.set)
            assert sock.timeout == 0.02
            with anyio.fail_after(1):
                await fired.wait()
            assert sock.ready_state == "open"
            sock.set_timeout(0)
            assert sock.timeout is None


async def test_connect_option_timeout_is_the_idle_timeout() -> None:
    _, server_host, client_host = hosts()
    async with net.create_server(stack=server_host) as server:
        await server.listen(7006)
        async with net.connect(7006, "10.0.0.2", timeout=0.01, stack=client_host) as sock:
            fired = anyio.Event()
            sock.on("timeout", fired.set)
            with anyio.fail_after(1):
                await fired.wait()


async def test_destroy_sends_fin_and_reset_and_destroy_sends_rst() -> None:
    _, server_host, client_host = hosts()
    async with net.create_server(stack=server_host) as server:
        await server.listen(7007)
        async with (
            net.connect(7007, "10.0.0.2", stack=client_host) as polite,
            net.connect(7007, "10.0.0.2", stack=client_host) as rude,
        ):
            accepted = []
            async for sock in server:
                accepted.append(sock)
                if len(accepted) == 2:
                    break
            by_port = {sock.remote_port: sock for sock in accepted}
            await polite.destroy()
            assert polite.destroyed
            assert [c async for c in by_port[polite.local_port]] == []
            errors: list[Exception] = []
            peer = by_port[rude.local_port]
            peer.on("error", errors.append)
            await rude.reset_and_destroy()
            assert [c async for c in peer] == []
            (error,) = errors
            assert isinstance(error, ConnectionResetError)
            assert isinstance(error, net.NodeError)
            assert error.code == "ECONNRESET"
            assert error.syscall == "read"


async def test_connection_refused_carries_node_fields() -> None:
    _, _, client_host = hosts()
    with pytest.raises(ConnectionRefusedError) as caught:
        await net.connect(9, "10.0.0.2", stack=client_host)
    error = caught.value
    assert isinstance(error, net.NodeError)
    assert (error.code, error.errno) == ("ECONNREFUSED", errno.ECONNREFUSED)
    assert error.syscall == "connect"
    assert (error.address, error.port) == ("10.0.0.2", 9)
    assert error.strerror == "connect ECONNREFUSED 10.0.0.2:9 (Connection refused)"

    sock = net.Socket(stack=client_host)
    events: list[Any] = []
    sock.on("error", events.append).on("close", events.append)
    with pytest.raises(ConnectionRefusedError):
        await sock.connect(9, "10.0.0.2")
    assert isinstance(events[0], ConnectionRefusedError)
    assert events[1] is True


async def test_unknown_name_is_enotfound() -> None:
    _, _, client_host = hosts()
    with pytest.raises(socket.gaierror) as caught:
        await net.connect(80, "nowhere.test", stack=client_host)
    assert isinstance(caught.value, net.NodeError)
    assert caught.value.code == "ENOTFOUND"
    assert caught.value.syscall == "getaddrinfo"
    assert caught.value.hostname == "nowhere.test"


async def test_listen_on_a_used_port_is_eaddrinuse() -> None:
    _, server_host, _ = hosts()
    async with (
        net.create_server(stack=server_host) as first,
        net.create_server(stack=server_host) as second,
    ):
        await first.listen(7008)
        errors: list[Exception] = []
        second.on("error", errors.append)
        with pytest.raises(OSError) as caught:
            await second.listen(7008)
        assert caught.value.errno == errno.EADDRINUSE
        assert errors == [caught.value]
        assert caught.value.code == "EADDRINUSE"  # type: ignore[attr-defined]
        assert caught.value.syscall == "listen"  # type: ignore[attr-defined]


async def test_max_connections_drops_the_extra_ones() -> None:
    _, server_host, client_host = hosts()
    drops: list[dict[str, Any]] = []
    async with net.create_server(lambda sock: None, stack=server_host) as server:
        server.max_connections = 1
        server.on("drop", drops.append)
        await server.listen(7009)
        async with net.connect(7009, "10.0.0.2", stack=client_host) as first:
            await eventually(lambda: server.get_connections() == 1)
            async with net.connect(7009, "10.0.0.2", stack=client_host) as second:
                # The server closes the extra connection at once: EOF, no data.
                assert [chunk async for chunk in second] == []
                assert drops[0]["remote_port"] == second.local_port
                assert first.ready_state == "open"


async def test_close_waits_for_open_connections() -> None:
    _, server_host, client_host = hosts()
    async with net.create_server(lambda sock: sock.resume(), stack=server_host) as server:
        await server.listen(7010)
        closed: list[str] = []
        server.on("close", lambda: closed.append("close"))
        async with net.connect(7010, "10.0.0.2", stack=client_host) as sock:
            await eventually(lambda: server.get_connections() == 1)
            async with anyio.create_task_group() as group:
                group.start_soon(server.close)
                await anyio.sleep(0.01)
                assert closed == []
                # No new connection gets in once close() has begun.
                with pytest.raises(ConnectionRefusedError):
                    await net.connect(7010, "10.0.0.2", stack=client_host)
                await sock.end()
            assert closed == ["close"]
        with pytest.raises(OSError) as caught:
            await server.close()
        assert caught.value.errno == errno.ENOTCONN


async def test_current_stack_is_the_default() -> None:
    _, server_host, client_host = hosts()
    with use_stack(server_host):
        async with net.create_server(lambda sock: sock.end(b"from server")) as server:
            await server.listen(7011)
            with use_stack(client_host):
                sock = await net.create_connection(7011, "server")
            assert sock.local_address in client_host.addresses
            assert b"".join([c async for c in sock]) == b"from server"  # type: ignore[misc]


async def test_write_after_end_fails() -> None:
    _, server_host, client_host = hosts()
    async with net.create_server(stack=server_host) as server:
        await server.listen(7012)
        sock = await net.connect(7012, "10.0.0.2", stack=client_host)
        events: list[Any] = []
        sock.on("error", events.append).on("close", events.append)
        await sock.end()
        with pytest.raises(BrokenPipeError) as caught:
            await sock.write(b"late")
        # As in Node: the write's error is also emitted, and destroys the socket.
        assert caught.value.code == "ERR_STREAM_WRITE_AFTER_END"  # type: ignore[attr-defined]
        assert events == [caught.value, True]
        assert sock.destroyed
        with pytest.raises(BrokenPipeError) as caught:
            await sock.write(b"later")
        assert caught.value.code == "ERR_STREAM_WRITE_AFTER_END"  # type: ignore[attr-defined]
        assert len(events) == 2


async def test_flowing_without_task_group_says_how_to_fix_it() -> None:
    _, server_host, client_host = hosts()
    async with net.create_server(stack=server_host) as server:
        await server.listen(7013)
        sock = await net.connect(7013, "10.0.0.2", stack=client_host)
        with pytest.raises(RuntimeError, match="task group"):
            sock.on("data", print)
        await sock.destroy()


async def test_host_stack_sets_real_socket_options_and_resets() -> None:
    stack = HostStack()
    async with net.create_server(stack=stack) as server:
        await server.listen(0, "127.0.0.1")
        port = server.address().port  # type: ignore[union-attr]
        async with net.connect(port, "127.0.0.1", stack=stack, keep_alive=True) as sock:
            raw = sock.stream.extra(anyio.abc.SocketAttribute.raw_socket)  # type: ignore[union-attr]
            assert raw.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            sock.set_keep_alive(True, 30)
            assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
            sock.set_no_delay(False)
            assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
            sock.set_no_delay()
            assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            accepted = await anext(server)
            await accepted.write(b"x")
            await sock.reset_and_destroy()
            with pytest.raises(ConnectionResetError):
                async for _ in accepted:
                    pass


def test_is_ip() -> None:
    assert net.is_ip("127.0.0.1") == 4
    assert net.is_ip("::1") == 6
    assert net.is_ip("fe80::1%eth0") == 6
    assert net.is_ip("example.com") == 0
    assert net.is_ip("01.2.3.4") == 0
    assert net.is_ip(1234) == 0
    assert net.is_ipv4("10.0.0.1")
    assert not net.is_ipv4("::1")
    assert net.is_ipv6("::ffff:10.0.0.1")


def test_block_list() -> None:
    blocked = net.BlockList()
    blocked.add_address("123.123.123.123")
    blocked.add_range("10.0.0.1", "10.0.0.10")
    blocked.add_subnet("8592:757c:efae:4e45::", 64, "ipv6")
    assert blocked.check("123.123.123.123")
    assert blocked.check("10.0.0.3")
    assert not blocked.check("10.0.0.11")
    assert not blocked.check("222.111.111.222")
    assert blocked.check("8592:757c:efae:4e45::f", "ipv6")
    assert not blocked.check("8592:757c:efae:4e46::", "ipv6")
    # An IPv4 rule matches the IPv4-mapped IPv6 form too.
    assert blocked.check("::ffff:7b7b:7b7b", "ipv6")
    assert blocked.check("::ffff:123.123.123.123", "ipv6")
    assert not blocked.check("not an address")
    assert blocked.check(net.SocketAddress("10.0.0.5"))
    assert blocked.rules == [
        "Subnet: IPv6 8592:757c:efae:4e45::/64",
        "Range: IPv4 10.0.0.1-10.0.0.10",
        "Address: IPv4 123.123.123.123",
    ]
    with pytest.raises(ValueError, match="greater"):
        blocked.add_range("10.0.0.9", "10.0.0.1")
    with pytest.raises(ValueError, match="ipv4"):
        blocked.add_address("::1")


def test_socket_address() -> None:
    assert net.SocketAddress() == net.SocketAddress("127.0.0.1", 0, "ipv4")
    assert net.SocketAddress(family="ipv6").address == "::"
    assert net.SocketAddress.parse("1.2.3.4:80") == net.SocketAddress("1.2.3.4", 80)
    assert net.SocketAddress.parse("[::1]:443") == net.SocketAddress("::1", 443, "ipv6")
    assert net.SocketAddress.parse("nonsense:1") is None
    with pytest.raises(ValueError, match="ipv4"):
        net.SocketAddress("::1")
    with pytest.raises(ValueError, match="0-65535"):
        net.SocketAddress("1.2.3.4", 70000)
    with pytest.raises(ValueError, match="flowlabel"):
        net.SocketAddress("1.2.3.4", 1, flowlabel=5)


async def test_a_socket_nobody_reads_still_ends_and_closes() -> None:
    # Node reads every socket: the peer's FIN on an empty stream ends and closes it.
    _, server_host, client_host = hosts()
    events: list[Any] = []
    async with net.create_server(lambda sock: None, stack=server_host) as server:
        await server.listen(7014)
        async with net.connect(7014, "10.0.0.2", stack=client_host) as sock:
            await eventually(lambda: server.get_connections() == 1)
            (accepted,) = server.connections
            accepted.on("end", lambda: events.append("end"))
            accepted.on("finish", lambda: events.append("finish"))
            accepted.on("close", events.append)
            await sock.end()
            await accepted.wait_closed()
            await sock.wait_closed()
        assert events == ["end", "finish", False]
        assert server.get_connections() == 0
        with anyio.fail_after(1):
            await server.close()


async def test_unread_data_holds_end_back_until_read() -> None:
    _, server_host, client_host = hosts()
    async with net.create_server(lambda sock: None, stack=server_host) as server:
        await server.listen(7015)
        async with net.connect(7015, "10.0.0.2", stack=client_host) as sock:
            await eventually(lambda: server.get_connections() == 1)
            (accepted,) = server.connections
            await sock.end(b"unread")
            await anyio.sleep(0.05)
            assert accepted.readable
            assert not accepted.closed
            assert [chunk async for chunk in accepted] == [b"unread"]
            await accepted.wait_closed()


async def test_timeout_fires_once_per_idle_period() -> None:
    _, server_host, client_host = hosts()
    async with net.create_server(stack=server_host) as server:
        await server.listen(7016)
        async with net.connect(7016, "10.0.0.2", stack=client_host) as sock:
            fired: list[float] = []
            sock.on("timeout", lambda: fired.append(anyio.current_time()))
            sock.set_timeout(0.02)
            await anyio.sleep(0.15)
            assert len(fired) == 1
            await sock.write(b"activity")
            await anyio.sleep(0.15)
            assert len(fired) == 2


async def test_write_errors_have_node_codes() -> None:
    _, server_host, client_host = hosts()
    async with net.create_server(stack=server_host) as server:
        await server.listen(7017)
        sock = await net.connect(7017, "10.0.0.2", stack=client_host)
        finished: list[str] = []
        sock.on("finish", lambda: finished.append("finish"))
        await sock.end()
        assert finished == ["finish"]
        await sock.destroy()
        fresh = await net.connect(7017, "10.0.0.2", stack=client_host)
        errors: list[Exception] = []
        fresh.on("error", errors.append)
        await fresh.destroy()
        with pytest.raises(BrokenPipeError) as caught:
            await fresh.write(b"late")
        assert caught.value.code == "ERR_STREAM_DESTROYED"  # type: ignore[attr-defined]
        assert caught.value.syscall is None  # type: ignore[attr-defined]
        assert errors == []  # as in Node: the callback's error only
        await server.close()
        with pytest.raises(OSError) as not_running:
            await server.close()
        assert not_running.value.code == "ERR_SERVER_NOT_RUNNING"  # type: ignore[attr-defined]
