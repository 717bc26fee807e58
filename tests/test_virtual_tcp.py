"""TCP on VirtualNetwork: binding, backlog, resets, faults and timing."""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
import trio.testing

import netshim
from netshim import VirtualHost, VirtualNetwork

pytestmark = pytest.mark.anyio


def run_in_virtual_time(function: Callable[[], Awaitable[Any]]) -> Any:
    """Run under trio with a clock that jumps whenever all tasks wait: exact timings, no waits."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    return anyio.run(function, backend="trio", backend_options={"clock": clock})


def two_hosts(seed: int = 0, **options: Any) -> tuple[VirtualNetwork, VirtualHost, VirtualHost]:
    net = VirtualNetwork(seed=seed, **options)
    return net, net.add_host("web.internal", ["10.0.0.2", "fd00::2"]), net.add_host("client")


async def receive_all(stream: netshim.TcpStream) -> bytes:
    parts = []
    while True:
        try:
            parts.append(await stream.receive())
        except anyio.EndOfStream:
            return b"".join(parts)


async def test_hosts_get_addresses_and_names() -> None:
    net, web, client = two_hosts()
    assert web.addresses == ["10.0.0.2", "fd00::2"]
    assert client.addresses == ["10.0.0.3", "fd00::3"]
    assert net.host("WEB.internal") is web
    assert net["client"] is client
    with pytest.raises(ValueError, match="already a host named 'client'"):
        net.add_host("client")
    with pytest.raises(ValueError, match=r"10\.0\.0\.2 already belongs to web\.internal"):
        net.add_host("other", ["10.0.0.2"])
    with pytest.raises(ValueError, match="not an IP address: 'ten'"):
        net.add_host("bad", ["ten"])
    with pytest.raises(ValueError, match="cannot be a host address"):
        net.add_host("bad", ["127.0.0.5"])
    with pytest.raises(KeyError, match="no host 'nobody'"):
        net.host("nobody")


async def test_ipv6_connection_and_addresses() -> None:
    _, web, client = two_hosts()
    listener = await web.listen_tcp("fd00::2", 443)
    stream = await client.connect_tcp("fd00::2", 443)
    accepted = await listener.accept()
    assert stream.remote_address == ("fd00::2", 443)
    assert accepted.remote_address == ("fd00::3", stream.local_address[1])


async def test_dual_stack_listener_shows_ipv4_mapped_peers() -> None:
    _, web, client = two_hosts()
    listener = await web.listen_tcp(None, 80)
    assert listener.local_address == ("::", 80)
    v4 = await client.connect_tcp("10.0.0.2", 80)
    accepted_v4 = await listener.accept()
    assert accepted_v4.remote_address == ("::ffff:10.0.0.3", v4.local_address[1])
    assert accepted_v4.local_address == ("::ffff:10.0.0.2", 80)
    await client.connect_tcp("fd00::2", 80)
    accepted_v6 = await listener.accept()
    assert accepted_v6.remote_address[0] == "fd00::3"


async def test_binding_conflicts_follow_linux() -> None:
    _, web, _ = two_hosts()
    specific = await web.listen_tcp("10.0.0.2", 8000)
    with pytest.raises(OSError, match="Address already in use") as caught:
        await web.listen_tcp("0.0.0.0", 8000)
    assert caught.value.errno == errno.EADDRINUSE
    with pytest.raises(OSError) as caught:
        await web.listen_tcp(None, 8000)
    assert caught.value.errno == errno.EADDRINUSE
    # Another address on the same port is a different binding.
    loopback = await web.listen_tcp("127.0.0.1", 8000)
    await specific.aclose()
    await loopback.aclose()
    again = await web.listen_tcp("0.0.0.0", 8000)
    await again.aclose()


async def test_binding_an_address_of_another_host_fails() -> None:
    _, web, _ = two_hosts()
    with pytest.raises(OSError, match=r"Cannot assign requested address \(10.0.0.3:80\)") as caught:
        await web.listen_tcp("10.0.0.3", 80)
    assert caught.value.errno == errno.EADDRNOTAVAIL


async def test_ephemeral_ports_are_in_linux_range_and_distinct() -> None:
    _, web, client = two_hosts()
    listener = await web.listen_tcp("0.0.0.0", 0)
    assert 32768 <= listener.local_address[1] <= 60999
    streams = [await client.connect_tcp("10.0.0.2", listener.local_address[1]) for _ in range(50)]
    ports = {stream.local_address[1] for stream in streams}
    assert len(ports) == 50
    assert all(32768 <= port <= 60999 for port in ports)


async def test_local_address_binding() -> None:
    _, web, client = two_hosts()
    listener = await web.listen_tcp("0.0.0.0", 80)
    stream = await client.connect_tcp("10.0.0.2", 80, local_address=("10.0.0.3", 40000))
    assert stream.local_address == ("10.0.0.3", 40000)
    with pytest.raises(OSError) as caught:
        await client.connect_tcp("10.0.0.2", 80, local_address=("10.0.0.3", 40000))
    assert caught.value.errno == errno.EADDRINUSE
    with pytest.raises(OSError) as caught:
        await client.connect_tcp("10.0.0.2", 80, local_address=("10.0.0.2", 0))
    assert caught.value.errno == errno.EADDRNOTAVAIL
    await listener.aclose()


async def test_loopback_is_private_to_each_host() -> None:
    _, web, client = two_hosts()
    listener = await web.listen_tcp("127.0.0.1", 5432)
    with pytest.raises(ConnectionRefusedError):
        await client.connect_tcp("127.0.0.1", 5432)
    stream = await web.connect_tcp("localhost", 5432)
    assert stream.remote_address == ("127.0.0.1", 5432)
    assert stream.local_address[0] == "127.0.0.1"
    await listener.aclose()


async def test_backlog_holds_backlog_plus_one_then_connects_wait() -> None:
    _, web, client = two_hosts()
    listener = await web.listen_tcp("0.0.0.0", 80, backlog=1)
    first = await client.connect_tcp("10.0.0.2", 80)
    second = await client.connect_tcp("10.0.0.2", 80)
    third_done = anyio.Event()

    async def third() -> None:
        await client.connect_tcp("10.0.0.2", 80)
        third_done.set()

    async with anyio.create_task_group() as group:
        group.start_soon(third)
        await anyio.sleep(0.05)
        assert not third_done.is_set(), "a full accept queue must make connect wait"
        await listener.accept()
        with anyio.fail_after(1):
            await third_done.wait()
    await first.aclose()
    await second.aclose()


async def test_closing_listener_resets_queued_connections() -> None:
    _, web, client = two_hosts()
    listener = await web.listen_tcp("0.0.0.0", 80)
    stream = await client.connect_tcp("10.0.0.2", 80)
    await listener.aclose()
    with pytest.raises(ConnectionResetError):
        await stream.receive()
    with pytest.raises(ConnectionRefusedError):
        await client.connect_tcp("10.0.0.2", 80)


async def test_close_with_unread_data_sends_reset() -> None:
    _, web, client = two_hosts()
    listener = await web.listen_tcp("0.0.0.0", 80)
    stream = await client.connect_tcp("10.0.0.2", 80)
    server = await listener.accept()
    await stream.send(b"never read")
    await server.aclose()
    with pytest.raises(ConnectionResetError):
        await stream.receive()


async def test_data_before_reset_is_still_delivered() -> None:
    _, web, client = two_hosts()
    listener = await web.listen_tcp("0.0.0.0", 80)
    stream = await client.connect_tcp("10.0.0.2", 80)
    server = await listener.accept()
    await server.send(b"last words")
    await server.abort()
    assert await stream.receive() == b"last words"
    with pytest.raises(ConnectionResetError):
        await stream.receive()
    with pytest.raises(ConnectionResetError):
        await stream.send(b"too late")


async def test_sending_to_a_closed_peer_breaks_the_pipe() -> None:
    _, web, client = two_hosts()
    listener = await web.listen_tcp("0.0.0.0", 80)
    stream = await client.connect_tcp("10.0.0.2", 80)
    server = await listener.accept()
    await server.aclose()
    with pytest.raises(anyio.EndOfStream):
        await stream.receive()
    await stream.send(b"first send succeeds, the peer answers RST")
    with pytest.raises(BrokenPipeError):
        await stream.send(b"second send fails")
    with pytest.raises(anyio.EndOfStream):
        await stream.receive()


async def test_receive_coalesces_and_splits_segments() -> None:
    _, web, client = two_hosts()
    listener = await web.listen_tcp("0.0.0.0", 80)
    stream = await client.connect_tcp("10.0.0.2", 80)
    server = await listener.accept()
    for piece in (b"ab", b"cd", b"ef"):
        await stream.send(piece)
    assert await server.receive(3) == b"abc"
    assert await server.receive() == b"def"
    await stream.send(bytearray(b"mutable"))
    assert await server.receive() == b"mutable"


async def test_concurrent_receives_are_refused() -> None:
    _, web, client = two_hosts()
    listener = await web.listen_tcp("0.0.0.0", 80)
    stream = await client.connect_tcp("10.0.0.2", 80)
    await listener.accept()

    async def blocked_receive() -> None:
        with pytest.raises(anyio.ClosedResourceError):
            await stream.receive()

    async with anyio.create_task_group() as group:
        group.start_soon(blocked_receive)
        await anyio.sleep(0.01)
        with pytest.raises(anyio.BusyResourceError):
            await stream.receive()
        await stream.aclose()


async def test_closing_wakes_a_blocked_receive() -> None:
    _, web, client = two_hosts()
    listener = await web.listen_tcp("0.0.0.0", 80)
    stream = await client.connect_tcp("10.0.0.2", 80)
    await listener.accept()
    outcome: list[type[BaseException]] = []

    async def reader() -> None:
        try:
            await stream.receive()
        except anyio.ClosedResourceError as exc:
            outcome.append(type(exc))

    async with anyio.create_task_group() as group:
        group.start_soon(reader)
        await anyio.sleep(0.01)
        await stream.aclose()
    assert outcome == [anyio.ClosedResourceError]


async def test_send_waits_for_the_window() -> None:
    _, web, client = two_hosts()
    listener = await web.listen_tcp("0.0.0.0", 80)
    stream = await client.connect_tcp("10.0.0.2", 80)
    server = await listener.accept()
    sent = 0
    with anyio.move_on_after(0.1):
        while True:
            await stream.send(b"x" * 65536)
            sent += 65536
    assert sent == 256 * 1024, "the sender stops once the window is full"
    await server.receive()
    with anyio.fail_after(1):
        await stream.send(b"x")


async def test_one_large_send_waits_for_the_window_too() -> None:
    # A 4 MiB send() goes into the pipe a window at a time, as the peer reads,
    # instead of parking all of it at once.
    _, web, client = two_hosts()
    listener = await web.listen_tcp("0.0.0.0", 80)
    stream = await client.connect_tcp("10.0.0.2", 80)
    server = await listener.accept()
    payload = bytes(range(256)) * (4 * 4096)
    done = anyio.Event()

    async def send() -> None:
        await stream.send(payload)
        done.set()

    async with anyio.create_task_group() as group:
        group.start_soon(send)
        await anyio.sleep(0.05)
        assert not done.is_set(), "the send waits while the peer reads nothing"
        received = bytearray()
        with anyio.fail_after(10):
            while len(received) < len(payload):
                received += await server.receive(1 << 20)
            await done.wait()
    assert received == payload


async def test_refuse_rejects_even_with_a_listener() -> None:
    net, web, client = two_hosts()
    listener = await web.listen_tcp("0.0.0.0", 443)
    net.refuse(web, 443)
    with pytest.raises(ConnectionRefusedError, match=r"10\.0\.0\.2:443"):
        await client.connect_tcp("10.0.0.2", 443)
    net.refuse("web.internal", 443, False)
    await client.connect_tcp("10.0.0.2", 443)
    await listener.aclose()


@pytest.mark.parametrize("limit", [0, 1, 10, 100_000])
async def test_reset_after_delivers_exactly_the_budget(limit: int) -> None:
    net, web, client = two_hosts()
    net.reset_after(web, client, limit)
    listener = await web.listen_tcp("0.0.0.0", 80)
    stream = await client.connect_tcp("10.0.0.2", 80)
    server = await listener.accept()
    payload = bytes(range(256)) * 1000
    await stream.send(payload)
    received = b""

    async def read_until_reset() -> None:
        nonlocal received
        while True:
            received += await server.receive()

    with pytest.raises(ConnectionResetError):
        await read_until_reset()
    assert received == payload[:limit]
    with pytest.raises(ConnectionResetError):
        await stream.send(b"more")


def test_latency_delays_connect_and_data() -> None:
    async def main() -> None:
        net, web, client = two_hosts()
        net.set_link(web, client, latency=0.050)
        listener = await web.listen_tcp("0.0.0.0", 80)
        start = anyio.current_time()
        stream = await client.connect_tcp("10.0.0.2", 80)
        assert anyio.current_time() - start == pytest.approx(0.100)
        server = await listener.accept()
        start = anyio.current_time()
        await stream.send(b"hello")
        assert await server.receive() == b"hello"
        assert anyio.current_time() - start == pytest.approx(0.050)

    run_in_virtual_time(main)


def test_bandwidth_limits_throughput() -> None:
    async def main() -> None:
        net, web, client = two_hosts()
        net.set_link(web, client, bandwidth=1_000_000)
        listener = await web.listen_tcp("0.0.0.0", 80)
        stream = await client.connect_tcp("10.0.0.2", 80)
        server = await listener.accept()
        start = anyio.current_time()

        async def send() -> None:
            for _ in range(20):
                await stream.send(b"x" * 100_000)
            await stream.send_eof()

        async with anyio.create_task_group() as group:
            group.start_soon(send)
            assert len(await receive_all(server)) == 2_000_000
        assert anyio.current_time() - start == pytest.approx(2.0, rel=0.01)

    run_in_virtual_time(main)


def test_partition_times_out_connects_and_stalls_streams() -> None:
    async def main() -> None:
        net, web, client = two_hosts(connect_timeout=30)
        listener = await web.listen_tcp("0.0.0.0", 80)
        stream = await client.connect_tcp("10.0.0.2", 80)
        server = await listener.accept()
        net.partition(web, client)
        start = anyio.current_time()
        with pytest.raises(TimeoutError) as caught:
            await client.connect_tcp("10.0.0.2", 80)
        assert caught.value.errno == errno.ETIMEDOUT
        assert anyio.current_time() - start == pytest.approx(30)
        await stream.send(b"queued while cut")
        with anyio.move_on_after(10) as scope:
            await server.receive()
        assert scope.cancelled_caught, "a partitioned link must stall established streams"

        async def heal_later() -> None:
            await anyio.sleep(5)
            net.heal()

        async with anyio.create_task_group() as group:
            group.start_soon(heal_later)
            start = anyio.current_time()
            assert await server.receive() == b"queued while cut"
            assert anyio.current_time() - start == pytest.approx(5)

    run_in_virtual_time(main)


async def test_fault_arguments_are_checked() -> None:
    net, web, client = two_hosts()
    with pytest.raises(ValueError, match=r"loss must be between 0 and 1, got 1\.5"):
        net.set_link(web, client, loss=1.5)
    with pytest.raises(ValueError, match="latency must be a finite number of seconds >= 0, got -1"):
        net.set_link(web, client, latency=-1)
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        net.set_link(web, client, bandwidth=0)
    with pytest.raises(ValueError, match="loopback"):
        net.set_link(web, web, latency=1)
    with pytest.raises(TypeError, match="nbytes must be an integer or None"):
        net.reset_after(web, client, 1.5)  # type: ignore[arg-type]


async def test_bad_hosts_and_ports_raise_as_the_stdlib_does() -> None:
    _, web, client = two_hosts()
    with pytest.raises(OverflowError, match="port must be 0-65535, got 65536"):
        await client.connect_tcp("10.0.0.2", 65536)
    with pytest.raises(TypeError, match="port must be an integer, not str"):
        await web.listen_tcp("0.0.0.0", "80")  # type: ignore[arg-type]
    with pytest.raises(socket.gaierror, match="a label of 64 characters") as caught:
        await client.connect_tcp("a" * 64 + ".example", 80)
    assert caught.value.errno == socket.EAI_NONAME
    with pytest.raises(socket.gaierror, match="at most 253"):
        await client.connect_tcp(".".join(["abcdefghi"] * 30), 80)
    with pytest.raises(TypeError, match="host must be str or bytes"):
        await client.connect_tcp(1234, 80)  # type: ignore[arg-type]


async def test_module_helpers_use_the_current_stack() -> None:
    _, web, client = two_hosts()
    with netshim.use_stack(web):
        listener = await netshim.listen_tcp("0.0.0.0", 7)
        assert netshim.current_stack() is web
    with netshim.use_stack(client):
        stream = await netshim.connect_tcp("10.0.0.2", 7)
        udp = await netshim.open_udp()
        assert udp.local_address[0] == "0.0.0.0"
    assert stream.remote_address == ("10.0.0.2", 7)
    assert isinstance(netshim.current_stack(), netshim.HostStack)
    await listener.aclose()


async def test_serve_runs_a_handler_per_connection() -> None:
    _, web, client = two_hosts()
    listener = await web.listen_tcp("0.0.0.0", 7)

    async def echo(stream: netshim.TcpStream) -> None:
        await stream.send(await stream.receive())

    async with anyio.create_task_group() as group:
        group.start_soon(listener.serve, echo)
        for word in (b"one", b"two"):
            async with await client.connect_tcp("web.internal", 7) as stream:
                await stream.send(word)
                assert await stream.receive() == word
        await listener.aclose()


async def test_a_listener_that_is_not_accepting_refuses() -> None:
    net = VirtualNetwork(seed=0)
    server = net.add_host("server", ["10.0.0.2"])
    client = net.add_host("client", ["10.0.0.3"])
    listener = await server.listen_tcp("10.0.0.2", 0)
    async with listener:
        listener.accepting = False
        with pytest.raises(ConnectionRefusedError):
            await client.connect_tcp(*listener.local_address)
        assert not listener.queue
        listener.accepting = True
        stream = await client.connect_tcp(*listener.local_address)
        async with stream, await listener.accept() as accepted:
            await stream.send(b"taken")
            assert await accepted.receive() == b"taken"


def test_errors_name_their_errno_where_numbers_are_emscriptens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from netshim import _errors

    assert str(_errors.os_error(errno.EACCES)) == f"[Errno {errno.EACCES}] Permission denied"
    monkeypatch.setattr(_errors, "_EMSCRIPTEN", True)
    error = _errors.os_error(errno.EACCES, "10.0.0.9:80")
    assert str(error) == f"[Errno {errno.EACCES}] Permission denied (EACCES) (10.0.0.9:80)"
    assert isinstance(error, PermissionError)
