"""asyncio, anyio and trio on shim sockets: unmodified event-loop code on a virtual network."""

from __future__ import annotations

import asyncio
import socket

import anyio
import pytest
import trio
from shim_support import Installed, answer_upper, tls_contexts

from netshim.shim import acting_as


def test_asyncio_streams_with_and_without_tls(installed: Installed) -> None:
    server_tls, client_tls = tls_contexts()

    async def main() -> None:
        with acting_as(installed.web):
            plain = await asyncio.start_server(answer_upper, "0.0.0.0", 8080)
            secure = await asyncio.start_server(answer_upper, "0.0.0.0", 8443, ssl=server_tls)
        assert plain.sockets[0].getsockname() == ("0.0.0.0", 8080)
        reader, writer = await asyncio.open_connection("web.internal", 8080)
        assert writer.get_extra_info("peername")[:2] in (("10.0.0.2", 8080), ("fd00::2", 8080))
        writer.write(b"hello\n")
        assert await reader.readline() == b"HELLO\n"
        assert (await reader.readline()).strip() in (b"10.0.0.3", b"fd00::3", b"::ffff:10.0.0.3")
        writer.close()
        await writer.wait_closed()
        reader, writer = await asyncio.open_connection(
            "web.internal", 8443, ssl=client_tls, server_hostname="web.internal"
        )
        assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        writer.write(b"secret\n")
        assert await reader.readline() == b"SECRET\n"
        writer.close()
        await writer.wait_closed()
        for server in (plain, secure):
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_asyncio_start_tls_and_getaddrinfo(installed: Installed) -> None:
    server_tls, client_tls = tls_contexts()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readline() == b"STARTTLS\n"
        writer.write(b"GO\n")
        await writer.drain()
        await writer.start_tls(server_tls)
        writer.write((await reader.readline()).strip()[::-1] + b"\n")
        await writer.drain()
        writer.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo("web.internal", 25, type=socket.SOCK_STREAM)
        assert [info[4][0] for info in infos] == ["fd00::2", "10.0.0.2"]
        with acting_as(installed.web):
            server = await asyncio.start_server(handle, "10.0.0.2", 25)
        reader, writer = await asyncio.open_connection("10.0.0.2", 25)
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"GO\n"
        await writer.start_tls(client_tls, server_hostname="web.internal")
        writer.write(b"abc\n")
        assert await reader.readline() == b"cba\n"
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_asyncio_sock_calls(installed: Installed) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with acting_as(installed.web):
            listener = socket.socket()
            listener.bind(("0.0.0.0", 7000))
            listener.listen()
            listener.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        accept = asyncio.ensure_future(loop.sock_accept(listener))
        await loop.sock_connect(client, ("10.0.0.2", 7000))
        conn, address = await accept
        assert address[0] == "10.0.0.3"
        await loop.sock_sendall(client, b"over sock_sendall")
        conn.setblocking(False)
        assert await loop.sock_recv(conn, 100) == b"over sock_sendall"
        refused = socket.socket()
        refused.setblocking(False)
        with pytest.raises(ConnectionRefusedError):
            await loop.sock_connect(refused, ("10.0.0.2", 7001))
        refused.close()
        for sock in (client, conn, listener):
            sock.close()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_asyncio_datagram_endpoints(installed: Installed) -> None:
    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, address: tuple[str, int]) -> None:
            self.transport.sendto(data.upper(), address)  # type: ignore[attr-defined]

    class Client(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.received: asyncio.Future[tuple[bytes, tuple[str, int]]] = (
                asyncio.get_running_loop().create_future()
            )

        def datagram_received(self, data: bytes, address: tuple[str, int]) -> None:
            self.received.set_result((data, address))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with acting_as(installed.web):
            server, _ = await loop.create_datagram_endpoint(Echo, local_addr=("0.0.0.0", 5353))
        transport, protocol = await loop.create_datagram_endpoint(
            Client, remote_addr=("web.internal", 5353), family=socket.AF_INET
        )
        transport.sendto(b"ping")
        assert await protocol.received == (b"PING", ("10.0.0.2", 5353))
        transport.close()
        server.close()

    asyncio.run(asyncio.wait_for(main(), 20))


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_anyio_streams_and_listeners(installed: Installed, backend: str) -> None:
    async def main() -> None:
        with acting_as(installed.web):
            listener = await anyio.create_tcp_listener(local_host="10.0.0.2", local_port=9000)

        async def serve(stream: anyio.abc.SocketStream) -> None:
            async with stream:
                await stream.send(await stream.receive())

        async with anyio.create_task_group() as group:
            group.start_soon(listener.serve, serve)
            async with await anyio.connect_tcp("web.internal", 9000) as stream:
                remote = stream.extra(anyio.abc.SocketAttribute.remote_address)
                assert remote[0] in ("10.0.0.2", "fd00::2")
                await stream.send(b"through anyio")
                assert await stream.receive() == b"through anyio"
            group.cancel_scope.cancel()
        await listener.aclose()

    anyio.run(main, backend=backend)


def test_trio_native_sockets(installed: Installed) -> None:
    async def main() -> None:
        async def handler(stream: trio.SocketStream) -> None:
            await stream.send_all(b"hello from " + socket.gethostname().encode())

        async with trio.open_nursery() as nursery:
            with acting_as(installed.web):
                listeners = await nursery.start(trio.serve_tcp, handler, 4000)
            assert listeners[0].socket.getsockname()[1] == 4000
            stream = await trio.open_tcp_stream("web.internal", 4000)
            data = b""
            while chunk := await stream.receive_some():
                data += chunk
            assert data == b"hello from web.internal", "the handler runs as the host that serves"
            await stream.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_trio_udp_sockets(installed: Installed) -> None:
    async def main() -> None:
        with acting_as(installed.web):
            server = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            await server.bind(("0.0.0.0", 5000))
        client = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await client.sendto(b"ping", ("web.internal", 5000))
        with trio.fail_after(5):
            data, address = await server.recvfrom(100)
        assert data == b"ping"
        assert address[0] == "10.0.0.3"
        await server.sendto(b"pong", address)
        with trio.fail_after(5):
            assert await client.recvfrom(100) == (b"pong", ("10.0.0.2", 5000))
        server.close()
        client.close()

    trio.run(main)
