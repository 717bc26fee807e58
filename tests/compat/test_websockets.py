"""The ``websockets`` library, asyncio and threaded implementations, on the virtual network."""

from __future__ import annotations

import asyncio
import ssl
import threading

import pytest
import websockets.asyncio.client
import websockets.asyncio.server
import websockets.sync.client
import websockets.sync.server
from compat_helpers import CLIENT_ADDRESSES, Installed, Tls

from netshim.shim import acting_as


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
def test_websockets_asyncio(installed: Installed, tls: Tls, secure: bool) -> None:
    async def handler(connection: websockets.asyncio.server.ServerConnection) -> None:
        await connection.send(f"welcome {connection.remote_address[0]}")
        async for message in connection:
            await connection.send(message[::-1])

    async def main() -> None:
        with acting_as(installed.web):
            server = await websockets.asyncio.server.serve(
                handler, "0.0.0.0", 8765, ssl=tls.server if secure else None
            )
        scheme = "wss" if secure else "ws"
        async with (
            server,
            websockets.asyncio.client.connect(
                f"{scheme}://web.internal:8765/", ssl=tls.client if secure else None
            ) as client,
        ):
            welcome = await client.recv()
            assert isinstance(welcome, str)
            assert welcome.split()[1] in CLIENT_ADDRESSES
            assert client.remote_address[:2] in (("10.0.0.2", 8765), ("fd00::2", 8765))
            await client.send("stressed")
            assert await client.recv() == "desserts"
            large = bytes(range(256)) * 4096
            await client.send(large)
            assert await client.recv() == large[::-1]
            await client.close()
            assert client.close_code == 1000

    asyncio.run(asyncio.wait_for(main(), 20))


def test_websockets_threaded(installed: Installed, tls: Tls) -> None:
    def handler(connection: websockets.sync.server.ServerConnection) -> None:
        for message in connection:
            connection.send(f"{message} from {connection.remote_address[0]}")

    # websockets' threaded implementation reads a TLS socket in one thread
    # while another writes it; under TLS 1.3 OpenSSL's state for the
    # session tickets it reads then races the writer, and about one
    # handshake in 400 stalls or fails with BAD_RECORD_TYPE on kernel
    # loopback too, without netshim.  TLS 1.2 has no such message.
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.maximum_version = ssl.TLSVersion.TLSv1_2
    tls.authority.issue_cert("web.internal", "10.0.0.2").configure_cert(server_context)
    with acting_as(installed.web):
        server = websockets.sync.server.serve(handler, "10.0.0.2", 8766, ssl=server_context)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        with websockets.sync.client.connect(
            "wss://web.internal:8766/", ssl=tls.client, open_timeout=5
        ) as client:
            client.send("ping")
            assert client.recv(timeout=5) == "ping from 10.0.0.3"
            assert client.remote_address[:2] == ("10.0.0.2", 8766)
    finally:
        server.shutdown()
        thread.join(5)
        server.socket.close()
    assert not thread.is_alive()
