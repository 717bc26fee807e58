"""Inside Pyodide: unmodified HTTP clients through FetchStack, the host's fetch, no gateway.

Run under Node by tests/pyodide/test_pyodide_node.py and in Chromium by
tests/pyodide/test_pyodide_fetch_browser.py, with NETSHIM_BASE (the test
server, the page's own origin in the browser), NETSHIM_CORS_BASE (a second
origin; its /cors/ paths allow the page, /nocors/ do not) and NETSHIM_REFUSED
(a port where nothing listens).  Leaves its findings in ``result`` and prints
them as one JSON object.
"""

import hashlib
import json
import os
import sys
import time

import netshim  # first: it gives Pyodide the ssl module that httpx imports
from netshim.aio import can_block
from netshim.stacks.fetch import FetchStack

import httpx  # isort: skip

BASE = os.environ["NETSHIM_BASE"]
CORS = os.environ.get("NETSHIM_CORS_BASE", "")
REFUSED = os.environ["NETSHIM_REFUSED"]
# An HTTPS server whose CA the host trusts (Node: NODE_EXTRA_CA_CERTS).
HTTPS = os.environ.get("NETSHIM_HTTPS_BASE", "")
# A WebSocket echo server (any origin: WebSockets know no CORS).
WS_URL = os.environ.get("NETSHIM_WS_URL", "")

result: dict[str, object] = {"platform": sys.platform, "can_block": can_block()}
stack = FetchStack()
opened: list[str] = []
_connect = stack.connect_tcp


async def counting_connect(host: str, port: int, **kwargs: object) -> object:
    opened.append(f"{host}:{port}")
    return await _connect(host, port, **kwargs)  # type: ignore[arg-type]


stack.connect_tcp = counting_connect  # type: ignore[method-assign,assignment]
netshim.install(stack)


def message_of(error: BaseException | None, kind: type[BaseException]) -> str:
    """The message of the first ``kind`` among the exception and its causes."""
    while error is not None:
        if isinstance(error, kind):
            return str(error)
        error = error.__cause__ or error.__context__
    return ""


def causes(error: BaseException | None) -> list[str]:
    """The exception's class and its causes' (httpx wraps the socket's error)."""
    names: list[str] = []
    while error is not None and len(names) < 8:
        names.append(type(error).__name__)
        error = error.__cause__ or error.__context__
    return names


async def async_clients() -> None:
    body = bytes(range(256)) * (40 * 1024)  # 10 MiB
    async with httpx.AsyncClient() as client:
        response = await client.get(BASE + "hello")
        result["get"] = [response.status_code, response.text, response.headers.get("x-served-by")]
        start = time.perf_counter()
        rounds = 50
        for _ in range(rounds):
            await client.get(BASE + "hello")
        result["requests_per_second"] = round(rounds / (time.perf_counter() - start))
        result["connections_for_51_gets"] = len(opened)
        # A 10 MiB body: read ahead by JavaScript in many chunks, joined in pieces.
        big = await client.get(BASE + "big")
        result["download"] = [len(big.content), hashlib.sha256(big.content).hexdigest()]
        head = await client.head(BASE + "hello")
        result["head"] = [head.status_code, head.headers.get("content-length"), head.text]
        start = time.perf_counter()
        posted = await client.post(BASE + "echo", content=body)
        elapsed = time.perf_counter() - start
        result["post"] = posted.json()
        result["post_expected"] = hashlib.sha256(body).hexdigest()
        result["post_mb_per_s"] = round(len(body) / elapsed / 1e6, 1)

        async def pieces():  # type: ignore[no-untyped-def]
            for number in range(4):
                yield b"piece %d;" % number

        chunked = await client.post(BASE + "echo", content=pieces())
        result["chunked_upload"] = chunked.json()["size"]
        result["chunked"] = (await client.get(BASE + "chunked")).text
        redirected = await client.get(BASE + "redirect")
        result["redirect"] = [redirected.status_code, redirected.text]
        result["statuses"] = [
            (await client.get(BASE + "missing")).status_code,
            (await client.get(BASE + "error")).status_code,
        ]
        await client.get(BASE + "set-cookie")
        result["cookie"] = (await client.get(BASE + "show-cookie")).text
        seen = await client.get(BASE + "headers", headers={"X-Test": "1"})
        result["headers_seen"] = seen.json()
        try:
            await client.get(BASE + "cut")
            result["cut"] = ["no error"]
        except httpx.HTTPError as exc:
            result["cut"] = causes(exc)
        try:
            await client.get(REFUSED + "hello")
            result["refused"] = ["no error"]
        except httpx.HTTPError as exc:
            result["refused"] = causes(exc)
            result["refused_message"] = message_of(exc, ConnectionRefusedError)
        if HTTPS:
            secure = await client.get(HTTPS + "hello")
            result["https"] = [secure.status_code, secure.text]
        if CORS:
            allowed = await client.get(CORS + "cors/hello")
            result["cors_allowed"] = [allowed.status_code, allowed.text]
            try:
                await client.get(CORS + "nocors/hello")
                result["cors_refused"] = ["no error"]
            except httpx.HTTPError as exc:
                result["cors_refused"] = causes(exc)
                result["cors_message"] = message_of(exc, ConnectionRefusedError)


def sync_clients() -> None:
    import http.client
    import urllib.parse
    import urllib.request

    host, port = BASE.split("//")[1].rstrip("/").split(":")
    connection = http.client.HTTPConnection(host, int(port))
    answers = []
    for _ in range(2):
        connection.request("GET", "/hello")
        response = connection.getresponse()
        answers.append([response.status, response.read().decode()])
    connection.request("POST", "/echo", body=b"x" * 100000)
    answers.append(json.loads(connection.getresponse().read())["size"])
    connection.close()
    result["http_client"] = answers
    with urllib.request.urlopen(BASE + "chunked") as reply:
        result["urllib"] = reply.read().decode()
    if HTTPS:
        parts = urllib.parse.urlsplit(HTTPS)
        secure = http.client.HTTPSConnection(parts.hostname, parts.port)
        secure.request("GET", parts.path + "hello")
        reply = secure.getresponse()
        result["https_http_client"] = [reply.status, reply.read().decode()]
        secure.close()
        with urllib.request.urlopen(HTTPS + "chunked") as reply:
            result["https_urllib"] = reply.read().decode()
    try:
        urllib.request.urlopen(REFUSED + "hello")
        result["urllib_refused"] = "no error"
    except OSError as exc:
        result["urllib_refused"] = causes(exc)


async def websocket_client() -> None:
    from websockets.asyncio.client import connect

    async with connect(WS_URL) as websocket:
        await websocket.send("hello, socket")
        text = await websocket.recv()
        await websocket.send(bytes(range(256)) * 400)
        binary = await websocket.recv()
    result["websocket"] = [text, len(binary), binary == bytes(range(256)) * 400]


async def read_ahead() -> None:
    """How much of a 10 MiB body JavaScript reads ahead of a program that stopped reading."""
    import asyncio

    from netshim.stacks import fetch

    host, port = BASE.split("//")[1].rstrip("/").split(":")
    stream = await _connect(host, int(port))
    await stream.send(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    await stream.receive()
    body = stream.exchange.response._body  # type: ignore[attr-defined]
    # Until the reading ahead stops (it stops at the bound, or at the end
    # when the bound is not kept).
    for _ in range(1000):
        if not body.reading:
            break
        await asyncio.sleep(0.01)
    result["read_ahead"] = [body.size, body.done, fetch.READ_AHEAD]
    await stream.aclose()


await async_clients()  # type: ignore[top-level-await]  # noqa: F704 - Pyodide runs this at top level
await read_ahead()  # type: ignore[top-level-await]  # noqa: F704
if WS_URL:
    await websocket_client()  # type: ignore[top-level-await]  # noqa: F704
try:
    sync_clients()
except OSError as exc:
    result["sync_error"] = [type(exc).__name__, str(exc)]
print(json.dumps(result))
