"""Inside Pyodide: FetchStack against JavaScript's own fetch, called from the same Python.

Run by benchmarks/pyodide_fetch.py (under Node and in Chromium) with
NETSHIM_BASE, the test server; leaves its figures in ``result`` and prints them.
"""

import asyncio
import json
import os
import time

import netshim  # first: it gives Pyodide the ssl module that httpx imports
from netshim.stacks.fetch import FetchStack

import httpx  # isort: skip
import js  # isort: skip

BASE = os.environ["NETSHIM_BASE"]
PORT = int(BASE.rstrip("/").rsplit(":", 1)[1])
ROUNDS = 50
MIB10 = 10 * 1024 * 1024
result: dict[str, float] = {}


def rate(count: float, start: float) -> float:
    return round(count / (time.perf_counter() - start), 1)


async def main() -> None:
    stack = FetchStack()
    for _ in range(5):  # warm-up: the first fetches cost more everywhere
        await (await js.fetch(BASE + "hello")).text()
    start = time.perf_counter()
    for _ in range(ROUNDS):
        await (await js.fetch(BASE + "hello")).text()
    result["js_fetch_requests_per_s"] = rate(ROUNDS, start)
    stream = await stack.connect_tcp("127.0.0.1", PORT)
    start = time.perf_counter()
    for _ in range(ROUNDS):
        await stream.send(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while not data.endswith(b"fetch"):
            data += await stream.receive()
    result["stream_requests_per_s"] = rate(ROUNDS, start)
    await stream.aclose()
    netshim.install(stack)
    reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
    start = time.perf_counter()
    for _ in range(ROUNDS):
        writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while not data.endswith(b"fetch"):
            data += await reader.read(1000)
    result["asyncio_requests_per_s"] = rate(ROUNDS, start)
    writer.close()
    async with httpx.AsyncClient() as client:
        start = time.perf_counter()
        for _ in range(ROUNDS):
            await client.get(BASE + "hello")
        result["httpx_requests_per_s"] = rate(ROUNDS, start)
        start = time.perf_counter()
        for _ in range(3):
            await (await js.fetch(BASE + "big")).arrayBuffer()
        result["js_download_mb_per_s"] = rate(3 * MIB10 / 1e6, start)
        start = time.perf_counter()
        for _ in range(3):
            await client.get(BASE + "big")
        result["httpx_download_mb_per_s"] = rate(3 * MIB10 / 1e6, start)
        body = b"x" * MIB10
        start = time.perf_counter()
        reply = await js.fetch(BASE + "echo", method="POST", body=js.Uint8Array.new(MIB10))
        await reply.text()
        result["js_upload_mb_per_s"] = rate(MIB10 / 1e6, start)
        start = time.perf_counter()
        await client.post(BASE + "echo", content=body)
        result["httpx_upload_mb_per_s"] = rate(MIB10 / 1e6, start)


await main()  # type: ignore[top-level-await]  # noqa: F704 - Pyodide runs this at top level
print(json.dumps(result))
