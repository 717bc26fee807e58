"""Running Python scripts inside real Pyodide (the pinned npm package, under Node).

:func:`pyodide_wheels` builds netshim's wheel from this checkout and gathers
its pure-Python dependencies' wheels, at the versions installed here, from
PyPI with pip (cached in ``tests/peers/pyodide/.wheels``); :func:`run_in_pyodide`
runs a script with them installed and returns what it printed.  Scripts
report results as one JSON object on their last line.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.from_thread
import pytest

from netshim._pyodide_cli import download_pure_wheels
from netshim.testing import REQUIRE_PEERS_VARIABLE, require_peer

ROOT = Path(__file__).resolve().parents[2]
PEER_DIR = ROOT / "tests" / "peers" / "pyodide"
SCRIPTS = Path(__file__).resolve().parent / "scripts"
WHEEL_CACHE = PEER_DIR / ".wheels"
# netshim's runtime dependencies and theirs, as a pure-Python install needs them.
DEPENDENCIES = ("anyio", "idna", "typing_extensions", "dnslib")


def require_pyodide() -> str:
    """Node, with the pinned pyodide package installed beside the runner."""
    node = require_peer("node")
    if not (PEER_DIR / "node_modules" / "pyodide" / "pyodide.asm.wasm").exists():
        message = "the pyodide npm package is not installed: npm ci in tests/peers/pyodide"
        if os.environ.get(REQUIRE_PEERS_VARIABLE) == "1":
            pytest.fail(message)
        pytest.skip(message)
    return node


def dependency_wheels(names: tuple[str, ...] = DEPENDENCIES) -> list[Path]:
    """Wheels of ``names`` at the versions installed in this Python, from PyPI via pip."""
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    wanted = [f"{name}=={importlib.metadata.version(name)}" for name in names]
    found = []
    missing = []
    for name, requirement in zip(names, wanted, strict=True):
        version = requirement.split("==")[1]
        stem = f"{name.replace('-', '_')}-{version}-"
        matches = [p for p in WHEEL_CACHE.glob("*.whl") if p.name.lower().startswith(stem.lower())]
        if matches:
            found.append(matches[0])
        else:
            missing.append(requirement)
    if missing:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary=:all:", "--dest", str(WHEEL_CACHE), *missing],
            check=True,
        )  # fmt: skip
        return dependency_wheels(names)
    return found


def build_netshim_wheel(directory: Path) -> Path:
    """netshim's own pure-Python wheel, built from this checkout."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
         "--wheel-dir", str(directory), str(ROOT)],
        check=True,
    )  # fmt: skip
    (wheel,) = directory.glob("netshim-*.whl")
    return wheel


def run_in_pyodide(
    script: str | Path,
    wheels: list[Path],
    env: dict[str, str] | None = None,
    timeout: float = 120,
    node_options: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (a file in tests/pyodide/scripts, or a path) inside Pyodide.

    ``node_options`` go to node itself (``--experimental-wasm-stack-switching``
    turns JSPI on in Node 20).
    """
    node = require_pyodide()
    path = Path(script)
    if not path.is_absolute():
        path = SCRIPTS / path
    environment = {**os.environ, **(env or {})}
    return subprocess.run(
        [node, *node_options, str(PEER_DIR / "run.mjs"), str(path), *map(str, wheels)],
        cwd=PEER_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def result_of(completed: subprocess.CompletedProcess[str]) -> Any:
    """The JSON object a script printed last; fails the test with its output otherwise."""
    if completed.returncode != 0:
        pytest.fail(
            f"Pyodide script failed ({completed.returncode}):\n"
            f"{completed.stdout[-4000:]}\n{completed.stderr[-4000:]}"
        )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if not lines:
        pytest.fail(f"Pyodide script printed no result:\n{completed.stdout[-4000:]}")
    return json.loads(lines[-1])


# What the Wisp client test installs besides netshim's own dependencies.
CLIENT_LIBRARIES = ("redis", "httpx", "httpcore", "h11", "certifi", "sniffio")
# Libraries whose wheel for this machine is compiled (charset_normalizer) or
# which Pyodide needs as pure Python anyway: fetched as py3-none-any wheels.
PURE_LIBRARIES = ("requests", "urllib3", "charset_normalizer")


def pure_wheels(names: tuple[str, ...] = PURE_LIBRARIES) -> list[Path]:
    """Pure-Python (py3-none-any) wheels of ``names`` for Pyodide's Python, from PyPI via pip.

    Each call gets the current versions into a directory of its own (pip's
    own cache keeps that quick).
    """
    destination = Path(tempfile.mkdtemp(prefix="netshim-pure-wheels-"))
    download_pure_wheels(names, destination)
    wheels = sorted(destination.glob("*.whl"))
    if len(wheels) != len(names):
        raise FileNotFoundError(f"pip left {[w.name for w in wheels]} for {names}")
    return wheels


@contextlib.contextmanager
def redis_server() -> Iterator[int]:
    """A real redis-server on a free loopback port, with no persistence."""
    program = require_peer("redis-server")
    port = free_port()
    process = subprocess.Popen(
        [program, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def http_server(body: bytes) -> Iterator[str]:
    """A real HTTP server (the standard library's) answering ``body`` to every GET."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hello"
    finally:
        server.shutdown()
        server.server_close()


# What the TLS test installs besides those: tlslite-ng and its dependencies.
TLS_LIBRARIES = ("tlslite-ng", "ecdsa", "six")


@contextlib.contextmanager
def https_server(body: bytes) -> Iterator[tuple[int, str]]:
    """A real TLS HTTP server (the standard library's, OpenSSL) for localhost.

    Yields its port and the PEM of the trustme CA that issued its certificate.
    """
    import ssl

    import trustme

    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        def get_request(self) -> tuple[socket.socket, Any]:
            connection, address = super().get_request()
            return context.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            ), address

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # clients that refuse the certificate, on purpose

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], ca.cert_pem.bytes().decode()
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def wisp_gateway() -> Iterator[str]:
    """netshim's gateway on loopback in CPython, allowed to reach loopback; its Wisp URL."""
    from netshim import HostStack
    from netshim.gateway import Gateway, GatewayConfig
    from netshim.policy import Policy

    gateway = Gateway(HostStack(), GatewayConfig(policy=Policy(allow_private=True)))
    with anyio.from_thread.start_blocking_portal() as portal:
        future, _ = portal.start_task(functools.partial(gateway.serve, host="127.0.0.1", port=0))
        try:
            host, port = gateway.addresses["http"]
            yield f"ws://{host}:{port}/"
        finally:
            future.cancel()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
