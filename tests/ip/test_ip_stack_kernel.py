"""IpStack on a TAP device: a lease from dnsmasq, names from dnsmasq, TCP with the kernel.

The namespace's side of the device is a small LAN router: the kernel with
10.78.0.1/24, and dnsmasq serving DHCP (a pool of 10.78.0.50-60) and DNS
(``svc.test`` is 10.78.0.1).  The stack starts with no address at all.
"""

from __future__ import annotations

import ipaddress
import pathlib
import socket

import anyio
import pytest
from namespaces import DEVICE, in_namespace, open_device, run

from netshim.ip.links import TapLink
from netshim.stack import TcpStream
from netshim.stacks.ip import IpStack
from netshim.testing import require_peer

pytestmark = [pytest.mark.anyio, pytest.mark.peer("dnsmasq")]

ROUTER = "10.78.0.1"


async def test_dhcp_lease_and_dns_from_dnsmasq_then_tcp_with_the_kernel(
    netns: str, tmp_path: pathlib.Path
) -> None:
    dnsmasq = require_peer("dnsmasq")
    socat = require_peer("socat")
    link = TapLink.from_fd(open_device(netns, 0x0002))
    run("ip", "-n", netns, "addr", "add", f"{ROUTER}/24", "dev", DEVICE)
    run("ip", "-n", netns, "link", "set", DEVICE, "up")
    leases = tmp_path / "leases"
    command = [
        "ip", "netns", "exec", netns, dnsmasq, "--no-daemon", "--conf-file=/dev/null",
        "--no-resolv", "--no-hosts", f"--pid-file={tmp_path / 'pid'}",
        f"--dhcp-leasefile={leases}", f"--interface={DEVICE}", "--bind-interfaces",
        "--dhcp-range=10.78.0.50,10.78.0.60,255.255.255.0,1h",
        f"--dhcp-option=option:router,{ROUTER}", f"--dhcp-option=option:dns-server,{ROUTER}",
        f"--address=/svc.test/{ROUTER}", "--log-dhcp",
    ]  # fmt: skip
    async with await anyio.open_process(command) as server:
        try:
            stack = IpStack(link, dhcp=True, hostname="netshim-box")
            async with stack:
                with anyio.fail_after(30):
                    await stack.wait_for_address()
                (address,) = [a for a in stack.addresses if a.startswith("10.")]
                ip = ipaddress.IPv4Interface(address)
                assert ip.network == ipaddress.IPv4Network("10.78.0.0/24")
                assert (
                    ipaddress.IPv4Address("10.78.0.50")
                    <= ip.ip
                    <= ipaddress.IPv4Address("10.78.0.60")
                )
                # dnsmasq wrote the lease, with the host name the client gave.
                with anyio.fail_after(10):
                    # dnsmasq writes the file after its ACK: poll it.
                    for _ in range(100):
                        if str(ip.ip) in leases.read_text():
                            break
                        await anyio.sleep(0.1)
                assert "netshim-box" in leases.read_text()

                infos = await stack.getaddrinfo("svc.test", 80, socket.AF_INET)
                assert {info[4][0] for info in infos} == {ROUTER}
                with pytest.raises(socket.gaierror):
                    await stack.getaddrinfo("absent.test", 80, socket.AF_INET)

                # A kernel echo server in the namespace, reached by name.
                async with await anyio.open_process(
                    ["ip", "netns", "exec", netns, socat,
                     f"TCP-LISTEN:7777,bind={ROUTER},reuseaddr", "EXEC:cat"]
                ) as echo:  # fmt: skip
                    try:
                        with anyio.fail_after(20):
                            while True:
                                try:
                                    stream = await stack.connect_tcp("svc.test", 7777)
                                    break
                                except ConnectionRefusedError:
                                    await anyio.sleep(0.1)
                            await stream.send(b"over a leased address")
                            received = b""
                            while len(received) < 21:
                                received += await stream.receive()
                            assert received == b"over a leased address"
                            assert stream.local_address[0] == str(ip.ip)
                            await stream.aclose()
                    finally:
                        echo.terminate()

                # And the kernel reaches a listener on the stack.
                listener = await stack.listen_tcp(None, 8088)

                async def serve() -> None:
                    accepted = await listener.accept()
                    async with accepted:
                        await accepted.send(b"hello kernel\n")

                async with anyio.create_task_group() as group:
                    group.start_soon(serve)
                    out = await in_namespace(
                        netns, socat, "-u", f"TCP:{ip.ip}:8088,connect-timeout=5", "STDOUT"
                    )
                assert out == "hello kernel\n"
                await listener.aclose()
        finally:
            server.terminate()


# The kernel's side of a bulk transfer: a plain socket program in the namespace.
_KERNEL_PEER = """
import hashlib, socket, sys
mode, address, port, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if mode == "sink":
    server = socket.create_server((address, port))
    print("ready", flush=True)
    conn, _ = server.accept()
    digest, total = hashlib.sha256(), 0
    while data := conn.recv(1 << 20):
        digest.update(data)
        total += len(data)
    print(total, digest.hexdigest(), flush=True)
else:
    conn = socket.create_connection((address, port))
    block = bytes(range(256)) * 4096
    for _ in range(size // len(block)):
        conn.sendall(block)
    conn.close()
"""

BULK = 256 << 20


@pytest.mark.parametrize("faulty", [False, True], ids=["clean", "lossy"])
async def test_256_mib_each_way_with_the_kernel_arrive_intact(netns: str, faulty: bool) -> None:
    import hashlib
    import sys

    from netshim.ip.links import Faults, FaultyLink, TunLink

    tun = TunLink.from_fd(open_device(netns, 0x0001))
    run("ip", "-n", netns, "addr", "add", "10.80.0.1/24", "dev", DEVICE)
    run("ip", "-n", netns, "link", "set", DEVICE, "up")
    faults = Faults(loss=0.02, duplicate=0.01, reorder=0.01, seed=11)
    link = FaultyLink(tun, faults) if faulty else tun
    peer = ["ip", "netns", "exec", netns, sys.executable, "-c", _KERNEL_PEER]
    block = bytes(range(256)) * 4096
    async with IpStack(link, addresses=["10.80.0.2/24"]) as stack:
        # IpStack -> kernel.
        async with await anyio.open_process([*peer, "sink", "10.80.0.1", "9000", "0"]) as sink:
            assert sink.stdout is not None
            with anyio.fail_after(240):
                output = b""
                while b"ready\n" not in output:
                    output += await sink.stdout.receive()
                output = output.split(b"ready\n", 1)[1]
                stream = await stack.connect_tcp("10.80.0.1", 9000)
                for _ in range(BULK // len(block)):
                    await stream.send(block)
                await stream.send_eof()
                while b"\n" not in output:
                    output += await sink.stdout.receive()
                await stream.aclose()
        total, digest = output.decode().split()
        expected = hashlib.sha256(block * (BULK // len(block))).hexdigest()
        assert (int(total), digest) == (BULK, expected)
        # Kernel -> IpStack.
        listener = await stack.listen_tcp("10.80.0.2", 9001)
        async with await anyio.open_process([*peer, "send", "10.80.0.2", "9001", str(BULK)]):
            with anyio.fail_after(240):
                stream = await listener.accept()
                received, count = hashlib.sha256(), 0
                while True:
                    try:
                        data = await stream.receive(1 << 20)
                    except anyio.EndOfStream:
                        break
                    received.update(data)
                    count += len(data)
                await stream.aclose()
        assert (count, received.hexdigest()) == (BULK, expected)
        await listener.aclose()


_NGINX = """\
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    # A response that comes faster than curl takes it is held in memory,
    # never spilled to a temporary file: nginx's worker runs as nobody and
    # cannot write under the test's directory (it resets the upstream
    # connection, "Permission denied", and fails the request).
    proxy_max_temp_file_size 0;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    upstream ipstack {{ server {upstream}; keepalive 4; }}
    server {{
        listen 127.0.0.1:8081;
        location / {{
            proxy_pass http://ipstack;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


async def test_kernel_nginx_proxies_to_a_server_on_the_stack(
    netns: str, tmp_path: pathlib.Path
) -> None:
    """The kernel's nginx in the namespace, keep-alive to an HTTP server on IpStack."""
    import hashlib

    nginx = require_peer("nginx")
    curl = require_peer("curl")
    link = TapLink.from_fd(open_device(netns, 0x0002))
    run("ip", "-n", netns, "addr", "add", "10.81.0.1/24", "dev", DEVICE)
    run("ip", "-n", netns, "link", "set", DEVICE, "up")
    body = bytes(range(256)) * 16384  # 4 MiB
    served = 0
    async with IpStack(link, addresses=["10.81.0.2/24"]) as stack:
        listener = await stack.listen_tcp("10.81.0.2", 8080)

        async def one_connection(stream: TcpStream) -> None:
            nonlocal served
            async with stream:
                buffered = b""
                while True:
                    while b"\r\n\r\n" not in buffered:
                        try:
                            buffered += await stream.receive()
                        except anyio.EndOfStream:
                            return
                    _, buffered = buffered.split(b"\r\n\r\n", 1)
                    served += 1
                    await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
                    await stream.send(body)

        config = tmp_path / "nginx.conf"
        config.write_text(_NGINX.format(directory=tmp_path, upstream="10.81.0.2:8080"))
        async with anyio.create_task_group() as group:
            group.start_soon(listener.serve, one_connection)
            proxy = await anyio.open_process(
                ["ip", "netns", "exec", netns, nginx, "-e", str(tmp_path / "error.log"),
                 "-c", str(config), "-g", "daemon off;"],
            )  # fmt: skip
            try:
                with anyio.fail_after(60):
                    digests = []
                    for _ in range(3):
                        result = await anyio.run_process(
                            ["ip", "netns", "exec", netns, curl, "-sS", "--retry", "5",
                             "--retry-connrefused", "--retry-delay", "1",
                             "http://127.0.0.1:8081/"],
                            check=False,
                        )  # fmt: skip
                        assert result.returncode == 0, result.stderr
                        digests.append(hashlib.sha256(result.stdout).hexdigest())
            finally:
                proxy.terminate()
                await proxy.wait()
                await proxy.aclose()
            group.cancel_scope.cancel()
    assert digests == [hashlib.sha256(body).hexdigest()] * 3
    assert served == 3
