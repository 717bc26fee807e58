"""netshim.dgram: Node's dgram module on the virtual network and against socat."""

from __future__ import annotations

import errno
import socket
import subprocess

import anyio
import pytest
from node_helpers import require_peer

from netshim import HostStack, VirtualNetwork, dgram

pytestmark = pytest.mark.anyio


async def test_send_receive_connect_disconnect() -> None:
    net = VirtualNetwork(seed=5)
    a, b = net.add_host("a"), net.add_host("b")
    server = dgram.create_socket("udp4", stack=a)
    await server.bind(9000)
    assert server.address() == {"address": "0.0.0.0", "family": "IPv4", "port": 9000}
    client = dgram.create_socket("udp4", stack=b)
    assert await client.send(b"one", 9000, "a") == 3
    data, rinfo = await anext(server)
    assert data == b"one"
    assert rinfo == dgram.RemoteInfo("10.0.0.3", "IPv4", client.address()["port"], 3)
    await server.send([b"re", b"ply"], rinfo.port, rinfo.address)
    assert (await anext(client))[0] == b"reply"
    await client.connect(9000, "10.0.0.2")
    assert client.remote_address()["port"] == 9000
    with pytest.raises(OSError) as caught:
        await client.send(b"x", 9000, "10.0.0.2")
    assert caught.value.errno == errno.EISCONN
    await client.send("connected")
    assert (await anext(server))[0] == b"connected"
    await client.disconnect()
    with pytest.raises(OSError) as caught:
        client.remote_address()
    assert caught.value.errno == errno.ENOTCONN
    await client.close()
    await server.close()


async def test_message_events_and_broadcast() -> None:
    net = VirtualNetwork(seed=5)
    a, b, c = net.add_host("a"), net.add_host("b"), net.add_host("c")
    heard: list[tuple[str, bytes]] = []
    done = anyio.Event()

    def listener(name: str):  # type: ignore[no-untyped-def]
        def on_message(data: bytes, rinfo: dgram.RemoteInfo) -> None:
            heard.append((name, data))
            if len(heard) == 2:
                done.set()

        return on_message

    async with (
        dgram.create_socket("udp4", listener("b"), stack=b) as rb,
        dgram.create_socket("udp4", listener("c"), stack=c) as rc,
    ):
        await rb.bind(7777)
        await rc.bind(7777)
        sender = dgram.create_socket("udp4", stack=a)
        with pytest.raises(PermissionError):
            await sender.send(b"all", 7777, "10.0.0.255")
        sender.set_broadcast(True)
        await sender.send(b"all", 7777, "10.0.0.255")
        with anyio.fail_after(1):
            await done.wait()
        assert sorted(heard) == [("b", b"all"), ("c", b"all")]
        await sender.close()


async def test_multicast_membership_on_a_virtual_network() -> None:
    net = VirtualNetwork(seed=5)
    a, b, c = net.add_host("a"), net.add_host("b"), net.add_host("c")
    member = dgram.create_socket("udp4", stack=b)
    await member.bind(5353)
    await member.add_membership("224.0.0.251")
    outsider = dgram.create_socket("udp4", stack=c)
    await outsider.bind(5353)
    local_member = dgram.create_socket("udp4", stack=a)
    await local_member.bind(5353)
    await local_member.add_membership("224.0.0.251")
    sender = dgram.create_socket("udp4", stack=a)
    await sender.send(b"mdns", 5353, "224.0.0.251")
    assert (await anext(member))[0] == b"mdns"
    assert (await anext(local_member))[0] == b"mdns"  # multicast loop is on by default
    sender.set_multicast_loopback(False)
    await sender.send(b"quiet", 5353, "224.0.0.251")
    assert (await anext(member))[0] == b"quiet"
    with anyio.move_on_after(0.05) as scope:
        await anext(local_member)
    assert scope.cancelled_caught
    with anyio.move_on_after(0.05) as scope:
        await anext(outsider)
    assert scope.cancelled_caught  # never joined
    with pytest.raises(OSError) as caught:
        await member.add_membership("224.0.0.251")
    assert caught.value.errno == errno.EADDRINUSE
    await member.drop_membership("224.0.0.251")
    with pytest.raises(OSError) as caught:
        await member.drop_membership("224.0.0.251")
    assert caught.value.errno == errno.EADDRNOTAVAIL
    await sender.send(b"gone", 5353, "224.0.0.251")
    with anyio.move_on_after(0.05) as scope:
        await anext(member)
    assert scope.cancelled_caught
    with pytest.raises(OSError) as caught:
        await member.add_membership("10.0.0.1")
    assert caught.value.errno == errno.EINVAL
    for sock in (member, outsider, local_member, sender):
        await sock.close()


async def test_options_and_buffer_sizes() -> None:
    net = VirtualNetwork(seed=5)
    a = net.add_host("a")
    sock = dgram.create_socket("udp4", recv_buffer_size=4096, stack=a)
    await sock.bind()
    assert sock.get_recv_buffer_size() == 4096
    assert sock.set_ttl(12) == 12
    assert sock.set_multicast_ttl(0) == 0
    with pytest.raises(ValueError, match="ttl"):
        sock.set_ttl(0)
    # A small receive buffer drops what does not fit, as a kernel does.
    sender = dgram.create_socket("udp4", stack=a)
    for _ in range(10):
        await sender.send(bytes(1000), sock.address()["port"], "127.0.0.1")
    received = 0
    with anyio.move_on_after(0.05):
        async for _ in sock:
            received += 1
    assert 0 < received < 10
    await sender.close()
    await sock.close()


async def test_host_stack_options_reach_the_kernel() -> None:
    sock = dgram.create_socket("udp4", stack=HostStack())
    await sock.bind(0, "127.0.0.1")
    sock.set_recv_buffer_size(65536)
    assert sock.get_recv_buffer_size() == 2 * 65536  # Linux doubles it (socket(7))
    sock.set_multicast_ttl(3)
    assert sock._sock is not None
    assert sock._sock.get_option("multicast_ttl") == 3
    await sock.add_membership("239.255.0.1")
    await sock.drop_membership("239.255.0.1")
    await sock.close()


@pytest.mark.peer("socat")
async def test_dgram_with_socat_on_the_host_stack() -> None:
    program = require_peer("socat")
    sock = dgram.create_socket("udp4", stack=HostStack())
    await sock.bind(0, "127.0.0.1")
    port = sock.address()["port"]
    # socat sends one datagram from its own socket, then prints what comes back.
    # Started once and read from a worker thread, so blocking here is brief.
    process = subprocess.Popen(  # noqa: ASYNC220
        [program, "-T", "5", "-", f"UDP4:127.0.0.1:{port}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdin is not None
        process.stdin.write(b"ping from socat")
        process.stdin.flush()
        with anyio.fail_after(5):
            data, rinfo = await anext(sock)
        assert data == b"ping from socat"
        assert rinfo.address == "127.0.0.1"
        await sock.send(b"pong from netshim\n", rinfo.port, rinfo.address)
        assert process.stdout is not None
        line = await anyio.to_thread.run_sync(process.stdout.readline)
        assert line == b"pong from netshim\n"
    finally:
        process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
        await sock.close()


@pytest.mark.peer("socat")
async def test_socat_receives_from_dgram() -> None:
    program = require_peer("socat")
    import socket as stdlib_socket

    with stdlib_socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Started once and read from a worker thread, so blocking here is brief.
    process = subprocess.Popen(  # noqa: ASYNC220
        [program, "-u", f"UDP4-RECV:{port},bind=127.0.0.1", "-"],
        stdout=subprocess.PIPE,
    )
    try:
        sock = dgram.create_socket("udp4", stack=HostStack())
        assert process.stdout is not None
        # socat may not be bound yet: send until it prints what it got.
        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:

                async def keep_sending() -> None:
                    while True:
                        await sock.send(b"hello socat\n", port, "127.0.0.1")
                        await anyio.sleep(0.1)

                group.start_soon(keep_sending)
                line = await anyio.to_thread.run_sync(process.stdout.readline)
                group.cancel_scope.cancel()
        assert line == b"hello socat\n"
        await sock.close()
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


async def test_node_errors_before_bind_and_after_close() -> None:
    net = VirtualNetwork(seed=5)
    a = net.add_host("a")
    sock = dgram.create_socket("udp4", stack=a)
    with pytest.raises(OSError) as caught:
        sock.set_broadcast(True)
    assert (caught.value.code, caught.value.syscall) == ("EBADF", "setBroadcast")  # type: ignore[attr-defined]
    with pytest.raises(OSError) as caught:
        sock.set_recv_buffer_size(4096)
    assert caught.value.code == "ERR_SOCKET_BUFFER_SIZE"  # type: ignore[attr-defined]
    await sock.bind(0)
    sock.set_broadcast(True)
    await sock.close()
    for call in (sock.close, lambda: sock.send(b"x", 9), sock.bind):
        with pytest.raises(OSError) as caught:
            await call()
        assert caught.value.code == "ERR_SOCKET_DGRAM_NOT_RUNNING"  # type: ignore[attr-defined]
        assert caught.value.errno == errno.EBADF


async def test_bind_error_is_emitted_and_raised() -> None:
    net = VirtualNetwork(seed=5)
    a = net.add_host("a")
    first = dgram.create_socket("udp4", stack=a)
    await first.bind(9100)
    second = dgram.create_socket("udp4", stack=a)
    errors: list[Exception] = []
    second.on("error", errors.append)
    with pytest.raises(OSError) as caught:
        await second.bind(9100)
    assert errors == [caught.value]
    assert caught.value.errno == errno.EADDRINUSE
    await second.bind(9101)  # still usable
    await second.close()
    await first.close()


async def test_send_takes_lists_of_strings_and_buffers() -> None:
    net = VirtualNetwork(seed=5)
    a = net.add_host("a")
    receiver = dgram.create_socket("udp4", stack=a)
    await receiver.bind(9200)
    sender = dgram.create_socket("udp4", stack=a)
    assert await sender.send(["he", b"ll", bytearray(b"o")], 9200) == 5
    assert (await anext(receiver))[0] == b"hello"
    with pytest.raises(TypeError):
        await sender.send([1, 2], 9200)  # type: ignore[list-item]
    await sender.close()
    await receiver.close()


async def test_set_multicast_interface() -> None:
    net = VirtualNetwork(seed=5)
    a = net.add_host("a")
    sock = dgram.create_socket("udp4", stack=a)
    with pytest.raises(OSError) as caught:
        sock.set_multicast_interface("10.0.0.2")
    assert caught.value.errno == errno.EBADF
    await sock.bind(0)
    sock.set_multicast_interface("10.0.0.2")
    sock.set_multicast_interface("0.0.0.0")
    for interface, code in [
        ("nonsense", errno.EINVAL),
        ("10.9.9.9", errno.EADDRNOTAVAIL),
        ("::1", errno.ENOPROTOOPT),
    ]:
        with pytest.raises(OSError) as caught:
            sock.set_multicast_interface(interface)
        assert caught.value.errno == code
    await sock.close()
    host = dgram.create_socket("udp4", stack=HostStack())
    await host.bind(0, "127.0.0.1")
    host.set_multicast_interface("127.0.0.1")
    assert host._sock is not None
    raw = host._sock._sock  # type: ignore[attr-defined]
    assert raw.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, 4) == socket.inet_aton(
        "127.0.0.1"
    )
    with pytest.raises(OSError) as caught:
        host.set_multicast_interface("192.0.2.1")
    assert caught.value.errno == errno.EADDRNOTAVAIL
    await host.close()
