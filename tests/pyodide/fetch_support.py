"""Servers for FetchStack's tests in real Pyodide: the page's origin and a second origin.

:func:`origin_server` is a real HTTP/1.1 server (the standard library's,
keep-alive on) answering the requests tests/pyodide/scripts/fetch_clients.py
makes: text, an echo of a body's length and SHA-256, a chunked response, a
redirect, 404 and 500, cookies, a body cut off midway, and a slow stream.
With ``files`` it also serves the page, Pyodide and the wheels, so the page
and its requests share one origin.  ``cors`` adds
``Access-Control-Allow-Origin`` (the page's origin) to paths under ``/cors/``
and leaves ``/nocors/`` without, so a browser refuses those.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import mimetypes
import ssl
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["origin_server"]

_TYPES = {
    ".wasm": "application/wasm",
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".py": "text/plain; charset=utf-8",
    ".json": "application/json",
    ".html": "text/html; charset=utf-8",
}


# What /big answers: 10 MiB, for throughput figures.
_BIG = bytes(range(256)) * (40 * 1024)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm and
    # the client's delayed ACK, each keep-alive response would wait 40 ms.
    disable_nagle_algorithm = True
    files: Mapping[str, Path] = {}
    allow_origin: str | None = None
    connections: ClassVar[list[int]] = []

    def setup(self) -> None:
        super().setup()
        self.connections.append(1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _path(self) -> str:
        path = self.path.split("?", 1)[0]
        for prefix in ("/cors/", "/nocors/"):
            if path.startswith(prefix):
                return "/" + path[len(prefix) :]
        return path

    def _cors(self) -> None:
        if self.allow_origin is not None and self.path.startswith("/cors/"):
            self.send_header("Access-Control-Allow-Origin", self.allow_origin)
            self.send_header("Access-Control-Expose-Headers", "X-Served-By")

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Served-By", "netshim-test")
        self._cors()
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_OPTIONS(self) -> None:
        # A CORS preflight (a POST with a custom type, or custom headers).
        self.send_response(204)
        self._cors()
        if self.allow_origin is not None and self.path.startswith("/cors/"):
            self.send_header("Access-Control-Allow-Methods", "GET, POST, PUT")
            self.send_header("Access-Control-Allow-Headers", "*")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = self._path()
        if path == "/hello":
            self._reply(200, b"hello through fetch")
        elif path == "/big":
            self._reply(200, _BIG, "application/octet-stream")
        elif path == "/headers":
            seen = {name.lower(): value for name, value in self.headers.items()}
            self._reply(200, json.dumps(seen).encode(), "application/json")
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self._cors()
            self.end_headers()
            for piece in (b"one,", b"two,", b"three"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", self.path.replace("redirect", "hello"))
            self.send_header("Content-Length", "0")
            self._cors()
            self.end_headers()
        elif path == "/missing":
            self._reply(404, b"no such thing")
        elif path == "/error":
            self._reply(500, b"server error")
        elif path == "/set-cookie":
            self.send_response(200)
            self.send_header("Set-Cookie", "netshim=baked; Path=/")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        elif path == "/show-cookie":
            self._reply(200, (self.headers.get("Cookie") or "").encode())
        elif path == "/cut":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self._cors()
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
        else:
            self._serve_file(path)

    def _serve_file(self, path: str) -> None:
        for prefix in sorted(self.files, key=len, reverse=True):
            if path.startswith(prefix):
                base = self.files[prefix].resolve()
                target = (base / path[len(prefix) :]).resolve()
                if (target == base or base in target.parents) and target.is_file():
                    kind = _TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0]
                    self._reply(200, target.read_bytes(), kind or "application/octet-stream")
                    return
        self._reply(404, b"not found")

    def do_POST(self) -> None:
        if self._path() != "/echo":
            self._reply(404, b"not found")
            return
        digest = hashlib.sha256()
        size = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                line = self.rfile.readline()
                length = int(line.split(b";")[0], 16)
                if length == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                piece = self.rfile.read(length)
                self.rfile.readline()
                digest.update(piece)
                size += len(piece)
        else:
            remaining = int(self.headers.get("Content-Length", "0"))
            while remaining:
                piece = self.rfile.read(min(remaining, 1 << 16))
                if not piece:
                    break
                digest.update(piece)
                size += len(piece)
                remaining -= len(piece)
        answer = {"size": size, "sha256": digest.hexdigest()}
        self._reply(200, json.dumps(answer).encode(), "application/json")

    do_PUT = do_POST  # noqa: N815


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that drop a connection (the cut-off test, fetch's pool) are expected.
        pass


@contextlib.contextmanager
def origin_server(
    files: Mapping[str, Path] | None = None,
    allow_origin: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> Iterator[tuple[str, list[int]]]:
    """A server on 127.0.0.1: its base URL, and a list that grows by one per connection.

    With ``tls`` (a server context) it speaks HTTPS.
    """
    connections: ClassVar[list[int]] = []
    handler = type(
        "Handler",
        (_Handler,),
        {"files": dict(files or {}), "allow_origin": allow_origin, "connections": connections},
    )
    server = _QuietServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        scheme = "https" if tls is not None else "http"
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}/", connections
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def websocket_echo_server() -> Iterator[str]:
    """A WebSocket server (the websockets library's) on 127.0.0.1 that echoes; its ws:// URL."""
    from websockets.sync.server import ServerConnection, serve

    def echo(connection: ServerConnection) -> None:
        for message in connection:
            connection.send(message)

    with serve(echo, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/echo"
        finally:
            server.shutdown()
