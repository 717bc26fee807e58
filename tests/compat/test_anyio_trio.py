"""anyio (asyncio and trio backends) and trio: TLS streams, listeners, many clients and UDP sockets.

Plain anyio and trio TCP streams are covered in tests/shim/test_async.py;
these add what those do not: TLS on top of the stream, UDP, and several
concurrent clients of one listener.
"""

from __future__ import annotations

import socket

import anyio
import anyio.abc
import anyio.streams.tls
import pytest
import trio
from compat_helpers import CLIENT_ADDRESSES, Installed, Tls

from netshim.shim import acting_as

SIZE = 50_000


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_anyio_tls_listener_and_clients(installed: Installed, tls: Tls, backend: str) -> None:
    async def main() -> None:
        with acting_as(installed.web):
            tcp = await anyio.create_tcp_listener(local_host="0.0.0.0", local_port=8443)
        listener = anyio.streams.tls.TLSListener(tcp, tls.server, standard_compatible=False)
        seen: list[str] = []

        async def serve(stream: anyio.streams.tls.TLSStream) -> None:
            async with stream:
                peer = stream.extra(anyio.abc.SocketAttribute.remote_address)
                seen.append(peer[0])
                data = b""
                while len(data) < SIZE:
                    data += await stream.receive()
                await stream.send(data[::-1])

        async def client(number: int) -> None:
            stream = await anyio.connect_tcp(
                "web.internal",
                8443,
                tls=True,
                ssl_context=tls.client,
                tls_standard_compatible=False,
            )
            async with stream:
                assert stream.extra(anyio.streams.tls.TLSAttribute.server_side) is False
                payload = str(number).encode() * SIZE
                await stream.send(payload)
                received = b""
                while True:
                    try:
                        received += await stream.receive()
                    except anyio.EndOfStream:
                        break
                assert received == payload[::-1]

        async with anyio.create_task_group() as group:
            group.start_soon(listener.serve, serve)
            async with anyio.create_task_group() as clients:
                for number in range(3):
                    clients.start_soon(client, number)
            group.cancel_scope.cancel()
        await listener.aclose()
        assert len(seen) == 3
        assert set(seen) <= set(CLIENT_ADDRESSES)

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_anyio_udp(installed: Installed, backend: str) -> None:
    async def main() -> None:
        with acting_as(installed.web):
            server = await anyio.create_udp_socket(
                family=socket.AF_INET, local_host="10.0.0.2", local_port=5000
            )
        async with (
            server,
            await anyio.create_connected_udp_socket(
                "web.internal", 5000, family=socket.AF_INET
            ) as client,
        ):
            assert client.extra(anyio.abc.SocketAttribute.remote_address) == ("10.0.0.2", 5000)
            await client.send(b"question")
            data, source = await server.receive()
            assert data == b"question"
            assert source[0] == "10.0.0.3"
            await server.sendto(b"answer", *source)
            assert await client.receive() == b"answer"

    anyio.run(main, backend=backend)


def test_trio_ssl_stream_and_udp(installed: Installed, tls: Tls) -> None:
    async def main() -> None:
        async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
            peer = stream.transport_stream.socket.getpeername()
            line = await stream.receive_some()
            await stream.send_all(line.upper() + b" " + peer[0].encode())
            await stream.aclose()

        async with trio.open_nursery() as nursery:
            with acting_as(installed.web):
                listeners = await nursery.start(trio.serve_ssl_over_tcp, handler, 4443, tls.server)
            assert listeners[0].transport_listener.socket.getsockname()[1] == 4443
            stream = await trio.open_ssl_over_tcp_stream(
                "web.internal", 4443, ssl_context=tls.client
            )
            await stream.send_all(b"hello")
            data = b""
            while chunk := await stream.receive_some():
                data += chunk
            assert data.split(b" ")[0] == b"HELLO"
            assert data.split(b" ")[1].decode() in CLIENT_ADDRESSES
            await stream.aclose()

            with acting_as(installed.web):
                server = trio.socket.socket(trio.socket.AF_INET6, trio.socket.SOCK_DGRAM)
                await server.bind(("fd00::2", 5353))
            client = trio.socket.socket(trio.socket.AF_INET6, trio.socket.SOCK_DGRAM)
            await client.sendto(b"ping", ("web.internal", 5353, 0, 0))
            data, source = await server.recvfrom(100)
            assert (data, source[0]) == (b"ping", "fd00::3")
            await server.sendto(b"pong", source)
            assert await client.recvfrom(100) == (b"pong", ("fd00::2", 5353, 0, 0))
            server.close()
            client.close()
            nursery.cancel_scope.cancel()

    trio.run(main)
