"""aiohttp's client and server, HTTP, HTTPS and WebSocket, on the virtual network."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from compat_helpers import CLIENT_ADDRESSES, Installed, Tls

from netshim.shim import acting_as


def make_app(connections: list[object]) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        transport = request.transport
        assert transport is not None
        if transport not in connections:
            connections.append(transport)
        return web.json_response(
            {
                "method": request.method,
                "path": request.path_qs,
                "body": (await request.read()).decode(),
                "peer": request.remote,
                "secure": request.secure,
            }
        )

    async def socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(f"hello {request.remote}")
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str(message.data[::-1])
            elif message.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(bytes(reversed(message.data)))
        return ws

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/ws", socket)
    return app


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_aiohttp_client_and_server(installed: Installed, tls: Tls, scheme: str) -> None:
    async def main() -> None:
        connections: list[object] = []
        runner = web.AppRunner(make_app(connections))
        await runner.setup()
        port = 8443 if scheme == "https" else 8080
        with acting_as(installed.web):
            site = web.TCPSite(
                runner, "0.0.0.0", port, ssl_context=tls.server if scheme == "https" else None
            )
            await site.start()
        try:
            async with aiohttp.ClientSession() as session:
                url = f"{scheme}://web.internal:{port}/echo"
                for number in range(3):
                    async with session.post(
                        f"{url}?n={number}", data=b"body %d" % number, ssl=tls.client
                    ) as reply:
                        assert reply.status == 200
                        body = await reply.json()
                    assert body["path"] == f"/echo?n={number}"
                    assert body["body"] == f"body {number}"
                    assert body["secure"] == (scheme == "https")
                    assert body["peer"] in CLIENT_ADDRESSES
                    assert reply.connection is None, "the connection went back to the pool"
            assert len(connections) == 1, "keep-alive reused the connection"
            await asyncio.sleep(0.25)  # see test_aiohttp_websocket: aiohttp closes lazily
        finally:
            await runner.cleanup()

    asyncio.run(asyncio.wait_for(main(), 20))


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_aiohttp_websocket(installed: Installed, tls: Tls, scheme: str) -> None:
    async def main() -> None:
        runner = web.AppRunner(make_app([]))
        await runner.setup()
        with acting_as(installed.web):
            site = web.TCPSite(
                runner, "10.0.0.2", 8765, ssl_context=tls.server if scheme == "wss" else None
            )
            await site.start()
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.ws_connect(f"{scheme}://web.internal:8765/ws", ssl=tls.client) as ws,
            ):
                assert await ws.receive_str() == "hello 10.0.0.3"
                await ws.send_str("virtual")
                assert await ws.receive_str() == "lautriv"
                await ws.send_bytes(b"\x00\x01\x02" * 10_000)
                assert await ws.receive_bytes() == b"\x02\x01\x00" * 10_000
                peer = ws.get_extra_info("peername")
                assert peer[:2] == ("10.0.0.2", 8765)
                await ws.close()
                assert ws.closed
            # aiohttp closes the session's connections without waiting for
            # them (its guide on graceful shutdown asks for a short sleep);
            # otherwise the loop can end with a transport still closing.
            await asyncio.sleep(0.25)
        finally:
            await runner.cleanup()

    asyncio.run(asyncio.wait_for(main(), 20))
