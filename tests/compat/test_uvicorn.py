"""uvicorn, as ``uvicorn.run(app)`` starts it, on the virtual network: asyncio and uvloop loops.

uvicorn's default loop is uvloop where it is installed, and uvloop's
``create_server(host=..., port=...)`` binds through libuv unless netshim
serves it; the server must be reachable at ``web.internal`` from the client
host whichever loop runs it.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from typing import Any

import pytest
import uvicorn
from compat_helpers import CLIENT_ADDRESSES, Installed

from netshim.shim import acting_as


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A plain ASGI app: who asked, and on which loop it runs."""
    import asyncio

    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = json.dumps(
        {
            "client": scope["client"][0],
            "server": scope["server"],
            "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_uvicorn_serves_the_virtual_network(installed: Installed, loop: str) -> None:
    config = uvicorn.Config(app, host="0.0.0.0", port=8000, loop=loop, log_level="warning")
    server = uvicorn.Server(config)
    with acting_as(installed.web):
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive(), "uvicorn stopped"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        with urllib.request.urlopen("http://web.internal:8000/", timeout=10) as response:
            answer = json.loads(response.read())
        assert answer["client"] in CLIENT_ADDRESSES
        assert answer["server"] == ["10.0.0.2", 8000]
        assert answer["loop"] == loop
    finally:
        server.should_exit = True
        thread.join(10)
    assert not thread.is_alive()
