"""Inside Pyodide in a dedicated Web Worker without JSPI: blocking clients through FetchStack.

Run by tests/pyodide/test_pyodide_fetch.py in Chromium (the worker hides
WebAssembly stack switching, so ``pyodide.ffi.can_run_sync()`` is False) with
NETSHIM_BASE (the test server, the worker's own origin), NETSHIM_CORS_BASE (a
second origin; /cors/ allows the page, /nocors/ does not), NETSHIM_HTTPS_BASE
(an HTTPS origin) and NETSHIM_REFUSED (a port where nothing listens).
requests, urllib and http.client run unmodified; each blocking request is one
synchronous XMLHttpRequest.  Leaves its findings in ``result``.
"""

import asyncio
import hashlib
import json
import os
import sys

import netshim  # first: it gives Pyodide the ssl module that the clients import
from netshim.aio import can_block
from netshim.stacks.fetch import FetchStack, xhr_available

import http.client  # isort: skip
import urllib.error  # isort: skip
import urllib.parse  # isort: skip
import urllib.request  # isort: skip

BASE = os.environ["NETSHIM_BASE"]
CORS = os.environ["NETSHIM_CORS_BASE"]
HTTPS = os.environ["NETSHIM_HTTPS_BASE"]
REFUSED = os.environ["NETSHIM_REFUSED"]

result: dict[str, object] = {
    "platform": sys.platform,
    "can_block": can_block(),
    "xhr_available": xhr_available(),
}
stack = FetchStack()
result["blocking_backend"] = type(stack.blocking_backend).__name__
calls = {"xhr": 0, "fetch": 0}
_blocking = stack.blocking_backend.fetch_blocking  # type: ignore[union-attr]
_fetch = stack.backend.fetch


def counting_blocking(*args: object) -> object:
    calls["xhr"] += 1
    return _blocking(*args)  # type: ignore[arg-type]


async def counting_fetch(*args: object) -> object:
    calls["fetch"] += 1
    return await _fetch(*args)  # type: ignore[arg-type]


stack.blocking_backend.fetch_blocking = counting_blocking  # type: ignore[union-attr,method-assign,assignment]
stack.backend.fetch = counting_fetch  # type: ignore[method-assign,assignment]
netshim.install(stack)

import requests  # noqa: E402 - after install(), as a program would import it

import urllib3  # isort: skip  # noqa: E402


def causes(error: BaseException | None) -> list[str]:
    """The exception's class and its causes' (requests wraps the socket's error)."""
    names: list[str] = []
    while error is not None and len(names) < 10:
        names.append(type(error).__name__)
        error = error.__cause__ or error.__context__
    return names


def message_of(error: BaseException | None, kind: type[BaseException]) -> str:
    while error is not None:
        if isinstance(error, kind):
            return str(error)
        error = error.__cause__ or error.__context__
    return ""


def with_requests() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    result["urllib3_connection"] = (
        urllib3.connectionpool.HTTPConnectionPool.ConnectionCls.__module__
    )
    with requests.Session() as session:
        reply = session.get(BASE + "hello")
        result["requests_get"] = [reply.status_code, reply.text, reply.headers.get("x-served-by")]
        posted = session.post(BASE + "echo", data=body)
        result["requests_post"] = posted.json()
        expected = {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        result["requests_post_expected"] = expected
        result["requests_chunked"] = session.get(BASE + "chunked").text
        redirected = session.get(BASE + "redirect")
        result["requests_redirect"] = [redirected.status_code, redirected.text, redirected.url]
        result["requests_statuses"] = [
            session.get(BASE + "missing").status_code,
            session.get(BASE + "error").status_code,
        ]
        session.get(BASE + "set-cookie")
        # The browser keeps the cookie (Set-Cookie never reaches the program) and sends it.
        result["requests_cookie"] = session.get(BASE + "show-cookie").text
        result["requests_big"] = len(session.get(BASE + "big").content)
        allowed = session.get(CORS + "cors/hello")
        result["requests_cors_allowed"] = [allowed.status_code, allowed.text]
        try:
            session.get(CORS + "nocors/hello")
            result["requests_cors_refused"] = ["no error"]
        except requests.RequestException as exc:
            result["requests_cors_refused"] = causes(exc)
            result["requests_cors_message"] = message_of(exc, ConnectionRefusedError)
        try:
            session.get(BASE + "cut")
            result["requests_cut"] = ["no error"]
        except requests.RequestException as exc:
            result["requests_cut"] = causes(exc)
        secure = session.get(HTTPS + "hello")
        result["requests_https"] = [secure.status_code, secure.text]


def with_urllib() -> None:
    with urllib.request.urlopen(BASE + "chunked") as reply:
        result["urllib_chunked"] = reply.read().decode()
    request = urllib.request.Request(BASE + "echo", data=b"y" * 100000, method="POST")
    with urllib.request.urlopen(request) as reply:
        result["urllib_post"] = json.loads(reply.read())["size"]
    with urllib.request.urlopen(BASE + "redirect") as reply:
        result["urllib_redirect"] = [reply.status, reply.read().decode()]
    try:
        urllib.request.urlopen(BASE + "missing")
        result["urllib_missing"] = "no error"
    except urllib.error.HTTPError as exc:
        result["urllib_missing"] = [exc.code, exc.read().decode()]
    with urllib.request.urlopen(HTTPS + "chunked") as reply:
        result["urllib_https"] = reply.read().decode()
    try:
        urllib.request.urlopen(REFUSED + "hello")
        result["urllib_refused"] = ["no error"]
    except OSError as exc:
        result["urllib_refused"] = causes(exc)


def with_http_client() -> None:
    host, port = BASE.split("//")[1].rstrip("/").split(":")
    connection = http.client.HTTPConnection(host, int(port))
    answers: list[object] = []
    for _ in range(2):
        connection.request("GET", "/hello")
        response = connection.getresponse()
        answers.append([response.status, response.read().decode()])
    connection.request("POST", "/echo", body=b"x" * 100000)
    answers.append(json.loads(connection.getresponse().read())["size"])
    connection.request("GET", "/error")
    response = connection.getresponse()
    answers.append([response.status, response.read().decode()])
    connection.close()
    result["http_client"] = answers
    parts = urllib.parse.urlsplit(HTTPS)
    secure = http.client.HTTPSConnection(parts.hostname, parts.port)
    secure.request("GET", parts.path + "hello")
    reply = secure.getresponse()
    result["http_client_https"] = [reply.status, reply.read().decode()]
    secure.close()
    # A WebSocket upgrade from a blocking socket: answered 501, saying why.
    upgrade = http.client.HTTPConnection(host, int(port))
    upgrade.request(
        "GET",
        "/socket",
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        },
    )
    response = upgrade.getresponse()
    result["websocket_upgrade"] = [response.status, response.getheader("x-netshim-fetch-error")]
    upgrade.close()


async def async_client_beside() -> None:
    """An asyncio client in the same worker still goes through fetch (streamed, no blocking)."""
    port = int(BASE.rstrip("/").rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    before = dict(calls)
    writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = await reader.read()
    writer.close()
    result["asyncio_beside"] = [
        data.split(b"\r\n", 1)[0].decode(),
        data.endswith(b"hello through fetch"),
        calls["fetch"] - before["fetch"],
        calls["xhr"] - before["xhr"],
    ]


def from_a_javascript_callback() -> "asyncio.Future[object]":
    """A blocking call from a plain JavaScript callback (no Python task runs it)."""
    import js
    from pyodide.ffi import create_once_callable

    done: asyncio.Future[object] = asyncio.get_running_loop().create_future()

    def callback() -> None:
        try:
            with urllib.request.urlopen(BASE + "hello") as reply:
                done.set_result([asyncio.current_task() is None, reply.read().decode()])
        except BaseException as exc:
            import traceback

            done.set_result([*causes(exc), str(exc), traceback.format_exc()])

    js.setTimeout(create_once_callable(callback), 0)
    return done


for name, run in (
    ("requests", with_requests),
    ("urllib", with_urllib),
    ("http_client", with_http_client),
):
    try:
        run()
    except Exception as exc:
        result[f"{name}_error"] = [*causes(exc), str(exc)]
await async_client_beside()  # type: ignore[top-level-await]  # noqa: F704 - Pyodide runs this at top level
result["from_callback"] = await from_a_javascript_callback()  # type: ignore[top-level-await]  # noqa: F704
result["calls"] = calls
print(json.dumps(result))
