"""requests, urllib3 and httpx (sync and async) over http and https on the virtual network.

The server is ``http.server.ThreadingHTTPServer`` serving as ``web.internal``,
with a certificate from a ``trustme`` authority for https.  Each test
checks status, bodies both ways, the peer the server saw, and that
keep-alive reuses one connection (the server counts connections).
"""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import anyio
import httpx
import pytest
import requests
import urllib3
from compat_helpers import CLIENT_ADDRESSES, Installed, Tls

from netshim.shim import acting_as


class _Server(http.server.ThreadingHTTPServer):
    connections: list[tuple[str, int]]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.connections.append(self.client_address[:2])

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length) if length else b""
        reply = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "body": body.decode(),
                "peer": list(self.client_address[:2]),
                "tls": isinstance(self.connection, ssl.SSLSocket),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = _answer  # noqa: N815 - the names http.server dispatches to

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def http_server(installed: Installed, port: int, tls: Tls | None = None) -> Iterator[_Server]:
    with acting_as(installed.web):
        server = _Server(("0.0.0.0", port), Handler)
    server.connections = []
    if tls is not None:
        server.socket = tls.server.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        assert not thread.is_alive()


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_requests_session_keeps_alive(installed: Installed, tls: Tls, scheme: str) -> None:
    port = 8443 if scheme == "https" else 8080
    with (
        http_server(installed, port, tls if scheme == "https" else None) as server,
        requests.Session() as session,
    ):
        # Per request: REQUESTS_CA_BUNDLE in the environment overrides session.verify.
        verify = str(tls.ca_file)
        reply = session.post(
            f"{scheme}://web.internal:{port}/submit", data=b"payload", timeout=5, verify=verify
        )
        assert reply.status_code == 200
        assert reply.json() == {
            "method": "POST",
            "path": "/submit",
            "body": "payload",
            "peer": reply.json()["peer"],
            "tls": scheme == "https",
        }
        assert reply.json()["peer"][0] in CLIENT_ADDRESSES
        again = session.get(f"{scheme}://web.internal:{port}/again", timeout=5, verify=verify)
        assert again.json()["path"] == "/again"
        assert again.json()["peer"] == reply.json()["peer"]
        assert len(server.connections) == 1, "keep-alive reused the connection"


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_urllib3_pool(installed: Installed, tls: Tls, scheme: str) -> None:
    port = 8443 if scheme == "https" else 8080
    with (
        http_server(installed, port, tls if scheme == "https" else None) as server,
        urllib3.PoolManager(ca_certs=str(tls.ca_file), timeout=5) as pool,
    ):
        for number in range(3):
            reply = pool.request(
                "POST", f"{scheme}://web.internal:{port}/n/{number}", body=str(number) * 1000
            )
            assert reply.status == 200
            body = json.loads(reply.data)
            assert body["path"] == f"/n/{number}"
            assert body["body"] == str(number) * 1000
            assert body["tls"] == (scheme == "https")
        assert len(server.connections) == 1
        assert server.connections[0][0] in CLIENT_ADDRESSES


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_httpx_sync_keeps_alive(installed: Installed, tls: Tls, scheme: str) -> None:
    port = 8443 if scheme == "https" else 8080
    with (
        http_server(installed, port, tls if scheme == "https" else None) as server,
        httpx.Client(verify=tls.client, timeout=5) as client,
    ):
        seen = []
        for number in range(3):
            reply = client.post(f"{scheme}://web.internal:{port}/{number}", content=b"x" * number)
            assert reply.status_code == 200
            assert reply.json()["body"] == "x" * number
            assert reply.json()["tls"] == (scheme == "https")
            seen.append(reply.extensions["network_stream"].get_extra_info("server_addr"))
        assert len(server.connections) == 1, "keep-alive reused the connection"
        assert seen[0] == seen[-1]
        assert seen[0][1] == port
        assert seen[0][0] in ("10.0.0.2", "fd00::2")


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_httpx_async_keeps_alive(installed: Installed, tls: Tls, scheme: str, backend: str) -> None:
    port = 8443 if scheme == "https" else 8080

    url = f"{scheme}://web.internal:{port}"

    async def main() -> list[str]:
        async with httpx.AsyncClient(verify=tls.client, timeout=5) as client:
            bodies = []
            for number in range(3):
                reply = await client.get(f"{scheme}://web.internal:{port}/a/{number}")
                assert reply.status_code == 200
                bodies.append(reply.json()["path"])
            # Concurrent requests need a second connection; keep-alive then reuses both.
            async with anyio.create_task_group() as group:
                for _ in range(2):
                    group.start_soon(partial(client.post, content=b"c"), f"{url}/c")
            reply = await client.post(f"{scheme}://web.internal:{port}/end", content=b"end")
            assert reply.json()["body"] == "end"
            assert reply.json()["peer"][0] in CLIENT_ADDRESSES
            return bodies

    with http_server(installed, port, tls if scheme == "https" else None) as server:
        assert anyio.run(main, backend=backend) == ["/a/0", "/a/1", "/a/2"]
        assert 1 <= len(server.connections) <= 2
