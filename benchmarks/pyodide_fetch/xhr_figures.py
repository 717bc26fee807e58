"""Inside Pyodide in a Web Worker without JSPI: blocking clients on FetchStack's XHR path.

Run by benchmarks/pyodide_fetch.py in a dedicated Worker whose page hides
WebAssembly stack switching, with NETSHIM_BASE, the test server.  The
ceiling is a synchronous ``XMLHttpRequest`` made by JavaScript in the same
worker; FetchStack's blocking path makes one such request per HTTP request.
Leaves its figures in ``result`` and prints them.
"""

import json
import os
import time

from pyodide.code import run_js

import netshim  # first: it gives Pyodide the ssl module that the clients import
from netshim.stacks.fetch import FetchStack

import http.client  # isort: skip

BASE = os.environ["NETSHIM_BASE"]
HOST, PORT = BASE.split("//")[1].rstrip("/").split(":")
ROUNDS = 50
MIB10 = 10 * 1024 * 1024
result: dict[str, float] = {}

sync_xhr = run_js(
    """((url, method, body) => {
  const request = new XMLHttpRequest();
  request.open(method, url, false);
  request.responseType = "arraybuffer";
  request.send(body ?? null);
  return request.response.byteLength;
})"""
)


def rate(count: float, start: float) -> float:
    return round(count / (time.perf_counter() - start), 1)


netshim.install(FetchStack())
import requests  # noqa: E402 - after install(), as a program would import it

for _ in range(5):  # warm-up
    sync_xhr(BASE + "hello", "GET", None)
start = time.perf_counter()
for _ in range(ROUNDS):
    sync_xhr(BASE + "hello", "GET", None)
result["js_xhr_requests_per_s"] = rate(ROUNDS, start)
connection = http.client.HTTPConnection(HOST, int(PORT))
start = time.perf_counter()
for _ in range(ROUNDS):
    connection.request("GET", "/hello")
    connection.getresponse().read()
result["http_client_requests_per_s"] = rate(ROUNDS, start)
connection.close()
with requests.Session() as session:
    session.get(BASE + "hello")
    start = time.perf_counter()
    for _ in range(ROUNDS):
        session.get(BASE + "hello")
    result["requests_requests_per_s"] = rate(ROUNDS, start)
    start = time.perf_counter()
    for _ in range(3):
        sync_xhr(BASE + "big", "GET", None)
    result["js_xhr_download_mb_per_s"] = rate(3 * MIB10 / 1e6, start)
    start = time.perf_counter()
    for _ in range(3):
        assert len(session.get(BASE + "big").content) == MIB10
    result["requests_download_mb_per_s"] = rate(3 * MIB10 / 1e6, start)
    body = b"x" * MIB10
    start = time.perf_counter()
    sync_xhr(BASE + "echo", "POST", run_js(f"new Uint8Array({MIB10})"))
    result["js_xhr_upload_mb_per_s"] = rate(MIB10 / 1e6, start)
    start = time.perf_counter()
    session.post(BASE + "echo", data=body)
    result["requests_upload_mb_per_s"] = rate(MIB10 / 1e6, start)
print(json.dumps(result))
