"""asyncio through the loop hooks (install(mode="loop")): transports with no file descriptor.

These are the hooks Pyodide uses; here they run on CPython's own event loop,
over a VirtualNetwork, so every behaviour is checked before it runs in wasm.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from typing import Any

import anyio
import pytest
import trustme

import netshim
from netshim import VirtualHost, VirtualNetwork
from netshim.aio import StackServer, StackStreamTransport

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def start_echo(web: VirtualHost, port: int = 7) -> asyncio.AbstractServer:
    with netshim.acting_as(web):
        return await asyncio.start_server(echo, "0.0.0.0", port)


async def test_install_replaces_and_uninstall_restores_the_loop_methods() -> None:
    originals = {
        name: asyncio.BaseEventLoop.__dict__[name]
        for name in ("create_connection", "create_server", "getaddrinfo")
    }
    original_socket = socket.socket
    net = VirtualNetwork()
    with netshim.installed(net.add_host("a"), mode="loop"):
        assert asyncio.BaseEventLoop.create_connection is not originals["create_connection"]
        assert socket.socket is original_socket  # the socket module is left alone
    for name, original in originals.items():
        assert asyncio.BaseEventLoop.__dict__[name] is original
    with pytest.raises(ValueError, match="mode"):
        netshim.install(net.add_host("b"), mode="fd")


async def test_open_connection_and_start_server(hosts: tuple[VirtualHost, VirtualHost]) -> None:
    web, _ = hosts
    server = await start_echo(web)
    assert isinstance(server, StackServer)
    assert server.sockets[0].getsockname() == ("0.0.0.0", 7)
    assert server.is_serving()
    reader, writer = await asyncio.open_connection("web.internal", 7)
    assert isinstance(writer.transport, StackStreamTransport)
    assert writer.get_extra_info("peername") == ("10.0.0.2", 7)
    assert writer.get_extra_info("sockname")[0] == "10.0.0.3"
    assert writer.get_extra_info("socket").fileno() == -1
    writer.write(b"hello " * 10_000)
    await writer.drain()
    assert await reader.readexactly(60_000) == b"hello " * 10_000
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    assert server.sockets == ()
    assert not server.is_serving()


async def test_ipv6_and_the_server_side_addresses(hosts: tuple[VirtualHost, VirtualHost]) -> None:
    web, _ = hosts
    seen: list[Any] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append((writer.get_extra_info("sockname"), writer.get_extra_info("peername")))
        writer.write(await reader.read(10))
        writer.close()

    with netshim.acting_as(web):
        server = await asyncio.start_server(handler, "fd00::2", 8080)
    async with server:
        reader, writer = await asyncio.open_connection("fd00::2", 8080)
        writer.write(b"v6")
        assert await reader.read() == b"v6"
        assert writer.get_extra_info("peername") == ("fd00::2", 8080, 0, 0)
        assert seen[0][0] == ("fd00::2", 8080, 0, 0)
        assert seen[0][1][0] == "fd00::3"
        writer.close()


async def test_half_close_with_write_eof(hosts: tuple[VirtualHost, VirtualHost]) -> None:
    web, _ = hosts

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # to EOF: the client half-closed
        writer.write(f"{len(data)} bytes".encode())
        await writer.drain()
        writer.close()

    with netshim.acting_as(web):
        server = await asyncio.start_server(count, None, 9000)
    reader, writer = await asyncio.open_connection("10.0.0.2", 9000)
    assert writer.can_write_eof()
    writer.write(b"x" * 1000)
    writer.write_eof()
    with pytest.raises(RuntimeError, match="write_eof"):
        writer.write(b"more")
    assert await reader.read() == b"1000 bytes"
    writer.close()
    server.close()
    await server.wait_closed()


async def test_refused_and_unknown_names(hosts: tuple[VirtualHost, VirtualHost]) -> None:
    with pytest.raises(ConnectionRefusedError) as refused:
        await asyncio.open_connection("web.internal", 1)
    assert refused.value.errno == errno.ECONNREFUSED
    with pytest.raises(socket.gaierror):
        await asyncio.open_connection("nowhere.internal", 80)


async def test_flow_control_with_a_slow_reader(hosts: tuple[VirtualHost, VirtualHost]) -> None:
    web, _ = hosts
    received = bytearray()
    release = asyncio.Event()
    done = asyncio.Event()

    class Slow(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport
            transport.pause_reading()
            asyncio.get_running_loop().create_task(self.later())

        async def later(self) -> None:
            await release.wait()
            self.transport.resume_reading()

        def data_received(self, data: bytes) -> None:
            assert self.transport.is_reading()
            received.extend(data)

        def eof_received(self) -> None:
            done.set()

    with netshim.acting_as(web):
        server = await asyncio.get_running_loop().create_server(Slow, "10.0.0.2", 5000)
    _, writer = await asyncio.open_connection("10.0.0.2", 5000)
    transport = writer.transport
    payload = bytes(range(256)) * 8192  # 2 MiB, far more than any window
    writer.write(payload)
    assert transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(writer.drain(), 0.2)  # the reader is paused: no progress
    assert transport.get_write_buffer_size() > 0
    assert received == b""
    release.set()
    await writer.drain()
    writer.write_eof()
    await done.wait()
    assert bytes(received) == payload
    writer.close()
    server.close()


async def test_abort_drops_the_buffer_and_closes(hosts: tuple[VirtualHost, VirtualHost]) -> None:
    web, _ = hosts
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    class Paused(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.data = bytearray()

        def data_received(self, data: bytes) -> None:
            self.data.extend(data)

        def eof_received(self) -> None:
            received.set_result(bytes(self.data))

    with netshim.acting_as(web):
        server = await asyncio.get_running_loop().create_server(Paused, "10.0.0.2", 6000)
    _, writer = await asyncio.open_connection("10.0.0.2", 6000)
    writer.write(b"sent")
    await writer.drain()
    writer.transport.pause_reading()
    writer.write(b"x" * 10_000_000)  # more than the window: most of it stays buffered
    writer.transport.abort()
    assert writer.transport.is_closing()
    data = await asyncio.wait_for(received, 2)
    # As on a real socket, abort() is close(2): what a kernel would hold is
    # still sent, the rest of the buffer is dropped, and the peer sees a FIN.
    assert data.startswith(b"sentxxx")
    assert len(data) < 1_000_000
    server.close()
    await server.wait_closed()


async def test_unread_data_makes_close_a_reset(hosts: tuple[VirtualHost, VirtualHost]) -> None:
    web, _ = hosts
    outcome: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"unread by the client")
        await writer.drain()
        try:
            await reader.read()
            outcome.set_result(None)
        except OSError as exc:
            outcome.set_result(exc)

    with netshim.acting_as(web):
        server = await asyncio.start_server(handler, "10.0.0.2", 6001)
    _, writer = await asyncio.open_connection("10.0.0.2", 6001)
    writer.transport.pause_reading()
    await asyncio.sleep(0.05)
    writer.transport.abort()
    assert isinstance(await asyncio.wait_for(outcome, 2), ConnectionResetError)
    server.close()
    await server.wait_closed()


async def test_server_wait_closed_waits_for_connections(
    hosts: tuple[VirtualHost, VirtualHost],
) -> None:
    server = await start_echo(hosts[0])
    reader, writer = await asyncio.open_connection("web.internal", 7)
    writer.write(b"ping")
    assert await reader.read(4) == b"ping"
    server.close()
    waiting = asyncio.ensure_future(server.wait_closed())
    await asyncio.sleep(0.05)
    assert not waiting.done()  # one connection is still open
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("web.internal", 7)
    writer.write(b"still")  # the accepted connection outlives the listener
    assert await reader.read(5) == b"still"
    writer.close()
    await asyncio.wait_for(waiting, 2)


async def test_serve_forever_closes_when_cancelled(hosts: tuple[VirtualHost, VirtualHost]) -> None:
    server = await start_echo(hosts[0])
    serving = asyncio.ensure_future(server.serve_forever())
    await asyncio.sleep(0)
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    assert not server.is_serving()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("web.internal", 7)


async def test_abort_clients(hosts: tuple[VirtualHost, VirtualHost]) -> None:
    server = await start_echo(hosts[0])
    reader, writer = await asyncio.open_connection("web.internal", 7)
    writer.write(b"x")
    assert await reader.read(1) == b"x"
    server.close()
    server.abort_clients()  # type: ignore[attr-defined]
    assert await reader.read() == b""
    writer.close()
    await asyncio.wait_for(server.wait_closed(), 2)


async def test_loop_getaddrinfo_and_getnameinfo(hosts: tuple[VirtualHost, VirtualHost]) -> None:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo("web.internal", 80, type=socket.SOCK_STREAM)
    assert infos == await hosts[1].getaddrinfo("web.internal", 80, type=socket.SOCK_STREAM)
    assert {info[4] for info in infos} == {("10.0.0.2", 80), ("fd00::2", 80, 0, 0)}
    assert await loop.getnameinfo(("10.0.0.2", 80)) == ("web.internal", "http")
    with pytest.raises(socket.gaierror):
        await loop.getaddrinfo("nowhere.internal", 80)


async def test_datagram_endpoints(hosts: tuple[VirtualHost, VirtualHost]) -> None:
    web, _ = hosts
    loop = asyncio.get_running_loop()

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.DatagramTransport)
            self.transport = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.transport.sendto(data.upper(), addr)

    class Client(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.received: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
            self.errors: asyncio.Queue[Exception] = asyncio.Queue()

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.received.put_nowait((data, addr))

        def error_received(self, exc: Exception) -> None:
            self.errors.put_nowait(exc)

    with netshim.acting_as(web):
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=("0.0.0.0", 53000))
    assert server.get_extra_info("sockname") == ("0.0.0.0", 53000)

    transport, client = await loop.create_datagram_endpoint(
        Client, remote_addr=("web.internal", 53000), family=socket.AF_INET
    )
    assert transport.get_extra_info("peername") == ("10.0.0.2", 53000)
    transport.sendto(b"hello")
    data, source = await asyncio.wait_for(client.received.get(), 2)
    assert (data, source) == (b"HELLO", ("10.0.0.2", 53000))
    with pytest.raises(ValueError, match="Invalid address"):
        transport.sendto(b"x", ("10.0.0.9", 1))
    transport.close()

    unconnected, client2 = await loop.create_datagram_endpoint(Client, local_addr=("0.0.0.0", 0))
    unconnected.sendto(b"one", ("10.0.0.2", 53000))
    assert (await asyncio.wait_for(client2.received.get(), 2))[0] == b"ONE"
    with pytest.raises(ValueError, match="Invalid address"):
        unconnected.sendto(b"nowhere")
    unconnected.close()

    # A connected socket hears of a closed port as the kernel tells it: ECONNREFUSED.
    refused, client3 = await loop.create_datagram_endpoint(Client, remote_addr=("10.0.0.2", 1))
    refused.sendto(b"anyone?")
    refused.sendto(b"anyone?")
    error = await asyncio.wait_for(client3.errors.get(), 2)
    assert isinstance(error, ConnectionRefusedError)
    refused.close()
    server.close()


async def test_anyio_on_top(hosts: tuple[VirtualHost, VirtualHost]) -> None:
    server = await start_echo(hosts[0])
    async with await anyio.connect_tcp("web.internal", 7) as stream:
        assert stream.extra(anyio.abc.SocketAttribute.remote_address) == ("10.0.0.2", 7)
        await stream.send(b"through anyio")
        assert await stream.receive() == b"through anyio"
    async with await anyio.create_udp_socket(local_host="0.0.0.0") as udp:
        assert udp.extra(anyio.abc.SocketAttribute.local_address)[0] == "0.0.0.0"
    server.close()


async def test_tls_end_to_end(hosts: tuple[VirtualHost, VirtualHost]) -> None:
    web, _ = hosts
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("web.internal").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        writer.write(b"secret: " + line)
        await writer.drain()
        writer.close()

    with netshim.acting_as(web):
        server = await asyncio.start_server(handler, "0.0.0.0", 443, ssl=server_context)
    reader, writer = await asyncio.open_connection("web.internal", 443, ssl=client_context)
    assert writer.get_extra_info("peercert")["subjectAltName"] == (("DNS", "web.internal"),)
    assert writer.get_extra_info("peername") == ("10.0.0.2", 443)
    writer.write(b"hi\n")
    assert await reader.read() == b"secret: hi\n"
    writer.close()

    # The wrong name fails the handshake, as it must.
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.open_connection(
            "10.0.0.2", 443, ssl=client_context, server_hostname="other.internal"
        )
    server.close()
    await server.wait_closed()


async def test_sock_connect_then_create_connection_on_a_stack_socket(
    hosts: tuple[VirtualHost, VirtualHost],
) -> None:
    # What aiohappyeyeballs (aiohttp's connector) does, on the descriptor-less
    # socket class that install() puts in place of socket.socket in Pyodide.
    from netshim.aio import StackSocket

    web, _ = hosts
    server = await start_echo(web)
    loop = asyncio.get_running_loop()
    sock = StackSocket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("10.0.0.2", 7))
    assert sock.getpeername() == ("10.0.0.2", 7)
    reader = asyncio.StreamReader()
    transport, _ = await loop.create_connection(
        lambda: asyncio.StreamReaderProtocol(reader), sock=sock
    )
    transport.write(b"through sock_connect")
    assert await reader.readexactly(20) == b"through sock_connect"
    # The transport owns the connection now, as with a real socket.
    with pytest.raises(OSError, match="Bad file descriptor"):
        sock.send(b"x")
    transport.close()
    server.close()
    refused = StackSocket(socket.AF_INET, socket.SOCK_STREAM)
    with pytest.raises(ConnectionRefusedError):
        await loop.sock_connect(refused, ("10.0.0.2", 9))
    with pytest.raises(OSError, match="not connected"):
        await loop.create_connection(asyncio.Protocol, sock=refused)


async def test_aiohttp_client_and_server_on_descriptor_less_sockets(
    hosts: tuple[VirtualHost, VirtualHost], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in Pyodide: socket.socket is netshim's StackSocket, and aiohttp's
    # client connects with loop.sock_connect + create_connection(sock=).
    from aiohttp import ClientSession, web

    from netshim.aio import StackSocket

    monkeypatch.setattr(socket, "socket", StackSocket)
    server_host, _ = hosts

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {request.remote}")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    with netshim.acting_as(server_host):
        site = web.TCPSite(runner, "0.0.0.0", 8080)
        await site.start()
    try:
        async with (
            ClientSession() as session,
            session.get("http://web.internal:8080/") as response,
        ):
            assert response.status == 200
            assert await response.text() == "hello 10.0.0.3"
    finally:
        await runner.cleanup()
