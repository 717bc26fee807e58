"""Serve the two-tab LAN example: Pyodide, the wheels, the page and a gateway with a LAN.

    python examples/pyodide-lan/serve.py [--port 8000] [--gateway-port 8765] [--forward-port 9000]

Builds netshim's wheel from this checkout, fetches pure-Python wheels of aiohttp, httpx
and their dependencies with pip, serves them with Pyodide's files (the npm package in
tests/peers/pyodide/node_modules, ``npm ci`` there first) and runs ``netshim gateway``
with the LAN ``demo`` and a port forward from ``127.0.0.1:FORWARD-PORT`` to the member
``alice``'s port 8000.  Open the server tab first, then the client tab; ``curl`` the
forward to reach the server tab from this machine.  Nothing is loaded from a CDN.

:func:`gateway_command` and :func:`build_wheels` are also what the page's test uses.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from netshim._pyodide_cli import download_pure_wheels

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PYODIDE = ROOT / "tests" / "peers" / "pyodide" / "node_modules" / "pyodide"
# Pure-Python wheels (py3-none-any) of what the page imports, with their dependencies.
# sniffio: httpcore asks for it when it picks its async backend.
REQUIREMENTS = (
    "anyio",
    "idna",
    "typing_extensions",
    "dnslib",
    "h11",
    "aiohttp",
    "httpx",
    "sniffio",
)
LAN = "demo"
SERVER_PORT = 8000


def _redis_example() -> ModuleType:
    """The Redis example's serve.py, whose static server this example shares."""
    spec = importlib.util.spec_from_file_location(
        "pyodide_redis_example_serve", ROOT / "examples" / "pyodide-redis" / "serve.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_shared = _redis_example()
static_server = _shared.static_server
write_wheel_index = _shared.write_wheel_index


def example_routes(wheel_dir: Path) -> dict[str, Path]:
    """The page, Pyodide's files and ``wheel_dir`` (with its index.json) as the page expects."""
    return {"/": HERE, "/pyodide/": PYODIDE, "/wheels/": wheel_dir}


def build_wheels(wheel_dir: Path, cache: Path | None = None) -> None:
    """netshim's wheel from this checkout and pure-Python wheels of the rest from PyPI."""
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(wheel_dir), str(ROOT)], check=True)
    download_pure_wheels(REQUIREMENTS, cache or wheel_dir, dependencies=True)
    if cache is not None:
        for wheel in cache.glob("*.whl"):
            (wheel_dir / wheel.name).write_bytes(wheel.read_bytes())
    write_wheel_index(wheel_dir)


def gateway_command(port: int, forward_port: int, token_file: Path) -> list[str]:
    """``netshim gateway`` with the LAN ``demo`` and the forward to alice's port 8000."""
    return [
        sys.executable, "-m", "netshim", "gateway", "--host", "127.0.0.1", "--port", str(port),
        "--lan", LAN, "--lan-token-file", str(token_file),
        "--forward", f"127.0.0.1:{forward_port}={LAN}/alice:{SERVER_PORT}",
    ]  # fmt: skip


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until something accepts on 127.0.0.1:``port`` (or ``process`` died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with status {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@contextlib.contextmanager
def lan_gateway(port: int, forward_port: int, token: str) -> Iterator[str]:
    """The gateway as a process, its LAN token in a file; its Wisp URL."""
    with tempfile.TemporaryDirectory() as directory:
        token_file = Path(directory) / "lan-tokens.txt"
        token_file.write_text(f"{LAN} {token}\n")
        process = subprocess.Popen(gateway_command(port, forward_port, token_file))
        try:
            wait_for_port(port, process)
            yield f"ws://127.0.0.1:{port}/"
        finally:
            process.terminate()
            process.wait(timeout=15)


def tab_urls(base: str, gateway: str, token: str, requests: int) -> tuple[str, str]:
    """The server tab's and the client tab's addresses."""
    query = f"gateway={gateway}&lan={LAN}&token={token}"
    return (f"{base}?role=server&requests={requests}&{query}", f"{base}?role=client&{query}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="port of the page")
    parser.add_argument("--gateway-port", type=int, default=8765)
    parser.add_argument("--forward-port", type=int, default=9000)
    parser.add_argument("--requests", type=int, default=3, help="requests the server tab serves")
    options = parser.parse_args()
    if not (PYODIDE / "pyodide.asm.wasm").exists():
        sys.exit(f"Pyodide is missing: run npm ci in {PYODIDE.parents[1]}")
    token = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory() as wheels:
        build_wheels(Path(wheels))
        with (
            lan_gateway(options.gateway_port, options.forward_port, token) as gateway,
            static_server(example_routes(Path(wheels)), options.port) as base,
        ):
            server_tab, client_tab = tab_urls(base, gateway, token, options.requests)
            print(f"server tab: {server_tab}\nclient tab: {client_tab}")
            print(f"from this machine: curl http://127.0.0.1:{options.forward_port}/")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)


if __name__ == "__main__":
    main()
