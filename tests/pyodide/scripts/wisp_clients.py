"""Inside Pyodide: redis-py asyncio and httpx, unmodified, through netshim's gateway over Wisp.

The WebSocket is JavaScript's; the gateway (CPython, on loopback) opens the
TCP connections to a real redis-server and a real HTTP server.  Run by
tests/pyodide/test_pyodide_node.py with NETSHIM_WISP_URL, NETSHIM_REDIS_PORT
and NETSHIM_HTTP_URL set; prints one JSON object of findings.
"""

import asyncio
import json
import os
import sys
import time
from typing import Any

import netshim  # first: it gives Pyodide the ssl module that redis-py and httpx import
from netshim.stacks import WispStack

import httpx  # isort: skip
import redis.asyncio  # isort: skip

result: dict[str, object] = {"platform": sys.platform}
stack = WispStack(os.environ["NETSHIM_WISP_URL"])
netshim.install(stack)


async def main() -> None:
    client = redis.asyncio.Redis(host="127.0.0.1", port=int(os.environ["NETSHIM_REDIS_PORT"]))
    result["ping"] = await client.ping()
    await client.set("netshim:pyodide", "hello from wasm")
    result["get"] = (await client.get("netshim:pyodide")).decode()
    rounds = int(os.environ.get("NETSHIM_ROUNDS", "200"))
    start = time.perf_counter()
    for number in range(rounds):
        await client.set("netshim:counter", number)
        await client.get("netshim:counter")
    elapsed = time.perf_counter() - start
    result["round_trips_per_second"] = round(2 * rounds / elapsed)

    # Loop callbacks per command (redis-py's timeouts are timers, not counted):
    # in Pyodide each is a JavaScript task and a call into Python.
    loop = asyncio.get_running_loop()
    callbacks = 0
    call_soon = loop.call_soon

    def counting_call_soon(*args: Any, **kwargs: Any) -> asyncio.Handle:
        nonlocal callbacks
        callbacks += 1
        return call_soon(*args, **kwargs)

    loop.call_soon = counting_call_soon  # type: ignore[method-assign]
    try:
        for number in range(50):
            await client.set("netshim:counter", number)
            await client.get("netshim:counter")
    finally:
        del loop.call_soon
    result["loop_callbacks_per_command"] = callbacks / 100
    await client.aclose()

    async with httpx.AsyncClient() as http:
        response = await http.get(os.environ["NETSHIM_HTTP_URL"])
        result["http_status"] = response.status_code
        result["http_body"] = response.text
    result["wisp_version"] = stack.negotiated_version
    await stack.aclose()


await main()  # type: ignore[top-level-await]  # noqa: F704 - Pyodide runs this at top level
print(json.dumps(result))
