"""Inside Pyodide: FetchStack against JavaScript's own fetch, called from the same Python.

Run by benchmarks/pyodide_fetch.py (under Node and in Chromium) with
NETSHIM_BASE, the test server; leaves its figures in ``result`` and prints them.

Each figure and its ceiling are measured in alternating rounds (JavaScript,
then each FetchStack client, again and again) and summed, so a burst of load
on a shared machine weighs on both sides instead of on whichever ran then.
Under Node the process's CPU time (``process.cpuUsage()``: Python, JavaScript
and the fetch underneath) is summed too, per request and per GiB, which load
moves less than the wall clock; browsers give pages no such figure.
"""

import asyncio
import json
import os
import time
from collections import defaultdict

import netshim  # first: it gives Pyodide the ssl module that httpx imports
from netshim.stacks.fetch import FetchStack

import httpx  # isort: skip
import js  # isort: skip

BASE = os.environ["NETSHIM_BASE"]
PORT = int(BASE.rstrip("/").rsplit(":", 1)[1])
# Requests per round and client, and rounds: 50 requests of each kind in all.
REQUESTS = 10
REQUEST_ROUNDS = 5
# 10 MiB downloads and uploads, one per client per round.
MIB10 = 10 * 1024 * 1024
TRANSFER_ROUNDS = 3
GIB = 1024**3
result: dict[str, float] = {}
seconds: defaultdict[str, float] = defaultdict(float)
cpu_seconds: defaultdict[str, float] = defaultdict(float)
HAS_CPU_TIME = bool(getattr(getattr(js, "process", None), "cpuUsage", None))


def cpu_now() -> float:
    if not HAS_CPU_TIME:
        return 0.0
    usage = js.process.cpuUsage()
    return (usage.user + usage.system) / 1e6


async def timed(name: str, action) -> None:  # type: ignore[no-untyped-def]
    """Run ``action()`` and add its wall and CPU time to ``name``'s."""
    cpu, start = cpu_now(), time.perf_counter()
    await action()
    seconds[name] += time.perf_counter() - start
    cpu_seconds[name] += cpu_now() - cpu


async def main() -> None:
    stack = FetchStack()
    netshim.install(stack)
    stream = await stack.connect_tcp("127.0.0.1", PORT)
    reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
    client = httpx.AsyncClient()
    # httpx the usual way (the loop hooks' transport and anyio's stream),
    # as FetchStack(direct_httpcore=False) sends it: what the direct way saves.
    usual_stack = FetchStack(direct_httpcore=False)
    usual_client = httpx.AsyncClient()

    async def js_requests() -> None:
        for _ in range(REQUESTS):
            await (await js.fetch(BASE + "hello")).text()

    async def stream_requests() -> None:
        for _ in range(REQUESTS):
            await stream.send(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while not data.endswith(b"fetch"):
                data += await stream.receive()

    async def asyncio_requests() -> None:
        for _ in range(REQUESTS):
            writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while not data.endswith(b"fetch"):
                data += await reader.read(1000)

    async def httpx_requests() -> None:
        for _ in range(REQUESTS):
            await client.get(BASE + "hello")

    async def httpx_usual_requests() -> None:
        with netshim.acting_as(usual_stack):
            for _ in range(REQUESTS):
                await usual_client.get(BASE + "hello")

    async def js_download() -> None:
        await (await js.fetch(BASE + "big")).arrayBuffer()

    async def stream_download() -> None:
        # FetchStack's own share of a download: the raw stream, read as httpcore reads.
        await stream.send(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive(65536)
        left = MIB10 - len(head.partition(b"\r\n\r\n")[2])
        while left > 0:
            left -= len(await stream.receive(65536))

    async def httpx_download() -> None:
        assert len((await client.get(BASE + "big")).content) == MIB10

    async def httpx_usual_download() -> None:
        with netshim.acting_as(usual_stack):
            assert len((await usual_client.get(BASE + "big")).content) == MIB10

    js_body = js.Uint8Array.new(MIB10)
    body = b"x" * MIB10

    async def js_upload() -> None:
        await (await js.fetch(BASE + "echo", method="POST", body=js_body)).text()

    async def httpx_upload() -> None:
        await client.post(BASE + "echo", content=body)

    requests = {
        "js_fetch": js_requests,
        "stream": stream_requests,
        "asyncio": asyncio_requests,
        "httpx": httpx_requests,
        "httpx_usual": httpx_usual_requests,
    }
    transfers = {
        "js_download": js_download,
        "stream_download": stream_download,
        "httpx_download": httpx_download,
        "httpx_usual_download": httpx_usual_download,
        "js_upload": js_upload,
        "httpx_upload": httpx_upload,
    }
    # Warm-up: the first fetches cost more everywhere.
    for action in [
        *requests.values(),
        js_download,
        stream_download,
        httpx_download,
        httpx_usual_download,
    ]:
        await action()
    seconds.clear()
    cpu_seconds.clear()
    for round_number in range(REQUEST_ROUNDS):
        order = list(requests.items())
        for name, action in order if round_number % 2 == 0 else reversed(order):
            await timed(name, action)
    for round_number in range(TRANSFER_ROUNDS):
        order = list(transfers.items())
        for name, action in order if round_number % 2 == 0 else reversed(order):
            await timed(name, action)
    await stream.aclose()
    writer.close()
    await client.aclose()
    await usual_client.aclose()
    count = REQUESTS * REQUEST_ROUNDS
    for name in requests:
        result[f"{name}_requests_per_s"] = round(count / seconds[name], 1)
        if HAS_CPU_TIME:
            result[f"{name}_cpu_ms_per_request"] = round(cpu_seconds[name] / count * 1e3, 3)
    moved = TRANSFER_ROUNDS * MIB10
    for name in transfers:
        result[f"{name}_mb_per_s"] = round(moved / seconds[name] / 1e6, 1)
        if HAS_CPU_TIME:
            result[f"{name}_cpu_s_per_gib"] = round(cpu_seconds[name] / moved * GIB, 2)


await main()  # type: ignore[top-level-await]  # noqa: F704 - Pyodide runs this at top level
print(json.dumps(result))
