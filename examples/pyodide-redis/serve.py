"""Serve the example page: Pyodide, netshim's wheels, the page and a Wisp gateway, on loopback.

    python examples/pyodide-redis/serve.py [--redis HOST:PORT] [--port 8000]

Builds netshim's wheel from this checkout, fetches its pure-Python dependencies'
wheels and redis-py's with pip, serves them with Pyodide's files (the npm
package in tests/peers/pyodide/node_modules, ``npm ci`` there first) and
runs netshim's gateway allowed to reach private addresses (Redis on loopback).
Open the address it prints.  Nothing is loaded from a CDN.

:func:`static_server` is also what the page's test serves it with.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PYODIDE = ROOT / "tests" / "peers" / "pyodide" / "node_modules" / "pyodide"
# netshim's runtime dependencies and redis-py, all pure Python.
REQUIREMENTS = ("anyio", "idna", "typing_extensions", "dnslib", "redis")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves each URL prefix from its own directory; quiet."""

    routes: Mapping[str, Path] = {}
    extensions_map: ClassVar[dict[str, str]] = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        # Browsers compile WebAssembly while it downloads only with this type,
        # and load modules only with a JavaScript type.
        ".wasm": "application/wasm",
        ".mjs": "text/javascript",
        ".js": "text/javascript",
        ".py": "text/plain; charset=utf-8",
    }

    def translate_path(self, path: str) -> str:
        path = path.split("?", 1)[0].split("#", 1)[0]
        for prefix in sorted(self.routes, key=len, reverse=True):
            if path.startswith(prefix):
                base = self.routes[prefix]
                target = (base / path[len(prefix) :]).resolve()
                # No escaping the served directory with "..".
                if target == base.resolve() or base.resolve() in target.parents:
                    return str(target)
        return str(HERE / "does-not-exist")

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def static_server(routes: Mapping[str, Path], port: int = 0) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 serving ``routes`` (URL prefix -> directory); its base URL."""
    handler = type("Handler", (_Handler,), {"routes": dict(routes)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def example_routes(wheel_dir: Path) -> dict[str, Path]:
    """The page, Pyodide's files and ``wheel_dir`` (with its index.json) as the page expects."""
    return {"/": HERE, "/pyodide/": PYODIDE, "/wheels/": wheel_dir}


def write_wheel_index(wheel_dir: Path) -> None:
    """List the wheels in ``wheel_dir`` in the index.json the page reads."""
    names = sorted(path.name for path in wheel_dir.glob("*.whl"))
    (wheel_dir / "index.json").write_text(json.dumps(names))


def build_wheels(wheel_dir: Path) -> None:
    """netshim's wheel from this checkout and its dependencies' wheels from PyPI."""
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(wheel_dir), str(ROOT)], check=True)
    subprocess.run(
        [*pip, "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheel_dir),
         *REQUIREMENTS],
        check=True,
    )  # fmt: skip
    write_wheel_index(wheel_dir)


def main() -> None:
    import anyio.from_thread

    from netshim import HostStack
    from netshim.gateway import Gateway, GatewayConfig
    from netshim.policy import Policy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="port of the page")
    parser.add_argument("--gateway-port", type=int, default=8765)
    parser.add_argument("--redis", default="127.0.0.1:6379", help="HOST:PORT of Redis")
    options = parser.parse_args()
    if not (PYODIDE / "pyodide.asm.wasm").exists():
        sys.exit(f"Pyodide is missing: run npm ci in {PYODIDE.parents[1]}")
    gateway = Gateway(HostStack(), GatewayConfig(policy=Policy(allow_private=True)))
    with (
        tempfile.TemporaryDirectory() as wheels,
        anyio.from_thread.start_blocking_portal() as portal,
    ):
        build_wheels(Path(wheels))
        serve = functools.partial(gateway.serve, host="127.0.0.1", port=options.gateway_port)
        portal.start_task(serve)
        with static_server(example_routes(Path(wheels)), options.port) as url:
            print(f"{url}?gateway=ws://127.0.0.1:{options.gateway_port}/&redis={options.redis}")
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()


if __name__ == "__main__":
    main()
