"""Runs in the browser, inside Pyodide: redis-py asyncio, unmodified, through netshim.

``netshim.install(WispStack(url))`` makes asyncio's connections go through the
gateway over the browser's own WebSocket.  The page shows what Redis answered
and how many round trips per second the tunnel carried; ``window.netshimResult``
holds the same as JSON for the page's test.
"""

import json
import os
import sys
import time

import js

import netshim  # first: it gives Pyodide the ssl module that redis-py imports
from netshim.stacks import WispStack

import redis.asyncio  # isort: skip

ROUNDS = 100


def show(state: str, text: str, log: list[str]) -> None:
    status = js.document.getElementById("status")
    status.dataset.state = state
    status.textContent = text
    js.document.getElementById("log").textContent = "\n".join(log)


async def main() -> dict[str, object]:
    stack = WispStack(os.environ["NETSHIM_WISP_URL"])
    netshim.install(stack)
    client = redis.asyncio.Redis(
        host=os.environ["NETSHIM_REDIS_HOST"], port=int(os.environ["NETSHIM_REDIS_PORT"])
    )
    try:
        pong = await client.ping()
        await client.set("netshim:browser", "hello from Python in the browser")
        value = (await client.get("netshim:browser")).decode()
        start = time.perf_counter()
        for number in range(ROUNDS):
            await client.set("netshim:counter", number)
            await client.get("netshim:counter")
        rate = round(2 * ROUNDS / (time.perf_counter() - start))
        info = await client.info("server")
        wisp_version = stack.negotiated_version
    finally:
        await client.aclose()
        await stack.aclose()
    return {
        "platform": sys.platform,
        "python": sys.version.split()[0],
        "ping": pong,
        "get": value,
        "redis_version": info["redis_version"],
        "round_trips_per_second": rate,
        "wisp_version": wisp_version,
    }


try:
    result = await main()  # type: ignore[top-level-await]  # noqa: F704 - Pyodide's top level
except Exception as exc:
    result = {"error": f"{type(exc).__name__}: {exc}"}
    show("error", f"Failed: {result['error']}", [])
else:
    show(
        "ok",
        f"Redis answered: {result['get']!r}",
        [
            f"PING -> {result['ping']}",
            f"GET netshim:browser -> {result['get']!r}",
            f"redis-server {result['redis_version']}, Python {result['python']} "
            f"on {result['platform']}, Wisp v{result['wisp_version']}",
            f"{result['round_trips_per_second']} round trips/s ({ROUNDS} SET+GET)",
        ],
    )
js.window.netshimResult = js.JSON.parse(json.dumps(result))
