"""Runs in the browser, inside Pyodide: an aiohttp server in one tab, its clients in another.

Both tabs join the LAN ``demo`` of netshim's gateway with ``WispStack(url, lan=...,
member=..., token=...)`` and ``netshim.install(stack)``; nothing in aiohttp or httpx
knows.  The server tab is the member ``alice`` and listens on port 8000 of its LAN
address; the client tab is ``bob`` and fetches ``http://alice.demo:8000/`` with httpx,
then with aiohttp's client.  The server tab serves ``NETSHIM_REQUESTS`` requests (the
client tab's and, in the test, one through the gateway's port forward), then stops.
``window.netshimResult`` holds what happened as JSON for the page's test.
"""

import asyncio
import json
import os
import sys

import js

import netshim  # first: it gives Pyodide the ssl module that httpx imports
from netshim.stacks import WispStack

PORT = 8000


def show(state: str, text: str, log: list[str]) -> None:
    status = js.document.getElementById("status")
    status.dataset.state = state
    status.textContent = text
    js.document.getElementById("log").textContent = "\n".join(log)


def join(member: str) -> WispStack:
    return WispStack(
        os.environ["NETSHIM_WISP_URL"],
        lan=os.environ["NETSHIM_LAN"],
        member=member,
        token=os.environ["NETSHIM_LAN_TOKEN"],
    )


async def serve() -> dict[str, object]:
    from aiohttp import web

    stack = join("alice")
    await stack.connect()
    netshim.install(stack)
    js.document.getElementById("address").textContent = f"{stack.lan_address} ({stack.lan_name})"
    expected = int(os.environ["NETSHIM_REQUESTS"])
    served: list[str] = []
    finished = asyncio.Event()

    async def hello(request: web.Request) -> web.Response:
        served.append(f"{request.remote} GET {request.path}")
        show("serving", f"Serving on port {PORT}: {len(served)} of {expected} requests", served)
        if len(served) >= expected:
            # After this response has gone out.
            asyncio.get_running_loop().call_later(0.2, finished.set)
        return web.Response(text=f"hello from {stack.lan_name}, request {len(served)}\n")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "0.0.0.0", PORT)
    await site.start()
    show("serving", f"Serving on port {PORT} of {stack.lan_address}", [])
    js.window.netshimListening = True
    try:
        await finished.wait()
    finally:
        await runner.cleanup()
        await stack.aclose()
    return {
        "role": "server",
        "platform": sys.platform,
        "address": stack.lan_address,
        "name": stack.lan_name,
        "served": served,
    }


async def fetch() -> dict[str, object]:
    import aiohttp
    import httpx

    stack = join("bob")
    await stack.connect()
    netshim.install(stack)
    js.document.getElementById("address").textContent = f"{stack.lan_address} ({stack.lan_name})"
    url = f"http://alice.{os.environ['NETSHIM_LAN']}:{PORT}/"
    try:
        async with httpx.AsyncClient() as client:
            response = await client.get(url)
        # aiohttp's client too: it connects with loop.sock_connect on a socket object.
        async with aiohttp.ClientSession() as session, session.get(url) as second:
            second_body = await second.text()
        members = dict(stack.members)
    finally:
        await stack.aclose()
    return {
        "role": "client",
        "platform": sys.platform,
        "address": stack.lan_address,
        "name": stack.lan_name,
        "status": response.status_code,
        "body": response.text,
        "aiohttp_body": second_body,
        "members": members,
    }


role = os.environ["NETSHIM_ROLE"]
try:
    result = await (serve() if role == "server" else fetch())  # type: ignore[top-level-await]  # noqa: F704 - Pyodide's top level
except Exception as exc:
    result = {"error": f"{type(exc).__name__}: {exc}"}
    show("error", f"Failed: {result['error']}", [])
else:
    if role == "server":
        show("ok", f"Served {len(result['served'])} requests", result["served"])
    else:
        show("ok", f"alice answered: {result['body'].strip()!r}", [f"HTTP {result['status']}"])
js.window.netshimResult = js.JSON.parse(json.dumps(result))
