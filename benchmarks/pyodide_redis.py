"""Redis GET/SET round trips per second from Pyodide vs CPython, through the same gateway.

One real redis-server and one netshim gateway (CPython, Wisp on 127.0.0.1)
serve every client in turn, each running SET then GET, ``ROUNDS`` rounds,
``--repeat`` times (the median is printed, every run beside it):

* **direct**: CPython, redis-py asyncio, to redis-server over the kernel's
  loopback (baseline);
* **cpython-wisp**: the same with ``netshim.install(WispStack, mode="loop")``;
* **pyodide-node**: the same redis-py code inside Pyodide under Node (pinned
  npm package), its WebSocket JavaScript's (the ``ws`` package on Node 20);
* **chromium-js**: in a page in Debian's headless Chromium, the same commands
  written by JavaScript through wisp-js's client over the browser's WebSocket
  (what the browser itself costs: the ceiling for Python there);
* **pyodide-chromium**: redis-py asyncio inside Pyodide in that same page.

    python benchmarks/pyodide_redis.py [--rounds N] [--repeat N] [--no-browser]
                                       [--wheel netshim-X-py3-none-any.whl]

``--wheel`` runs another build of netshim in Pyodide (an older checkout's, to
compare before and after in one run); by default the wheel is built from
this checkout.  Needs redis-server, Node, ``npm ci`` in tests/peers/pyodide
(and in tests/peers/node for wisp-js), and Chromium for the browser rows.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "pyodide"))

import pyodide_support  # noqa: E402 - found through the path set just above

ROUNDS = 2000
WISP_JS = ROOT / "tests" / "peers" / "node" / "node_modules" / "@mercuryworkshop" / "wisp-js"

# The benchmark page: wisp-js first (JavaScript's own round trips through the
# gateway), then Pyodide with redis-py through netshim, in the same page.
PAGE_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">
<title>netshim Pyodide redis benchmark</title></head>
<body><p id="status">running</p><pre id="log"></pre>
<script type="module" src="bench.mjs"></script></body></html>
"""

PAGE_SCRIPT = r"""
import { loadPyodide } from "./pyodide/pyodide.mjs";
import { client } from "./wisp/wisp-client.mjs";

const params = new URLSearchParams(location.search);
const gateway = params.get("gateway");
const port = Number(params.get("port"));
const rounds = Number(params.get("rounds"));
const encoder = new TextEncoder();
const decoder = new TextDecoder();

// Whether buffer holds one whole RESP reply (+OK, :1, $n bulk string).
function complete(text) {
  const end = text.indexOf("\r\n");
  if (end < 0) return false;
  if (text[0] !== "$") return true;
  const size = Number(text.slice(1, end));
  return size < 0 || text.length >= end + 2 + size + 2;
}

async function javascriptRounds() {
  const conn = new client.ClientConnection(gateway);
  await new Promise((resolve, reject) => { conn.onopen = resolve; conn.onclose = reject; });
  const stream = conn.create_stream("127.0.0.1", port);
  let pending = null;
  let reply = "";
  stream.onmessage = (data) => {
    reply += decoder.decode(data);
    if (pending && complete(reply)) { const done = pending; pending = null; reply = ""; done(); }
  };
  const command = (text) => new Promise((resolve) => {
    pending = resolve;
    stream.send(encoder.encode(text));
  });
  await command("*1\r\n$4\r\nPING\r\n");
  const start = performance.now();
  for (let number = 0; number < rounds; number++) {
    const value = String(number);
    await command(`*3\r\n$3\r\nSET\r\n$15\r\nnetshim:counter\r\n$${value.length}\r\n${value}\r\n`);
    await command("*2\r\n$3\r\nGET\r\n$15\r\nnetshim:counter\r\n");
  }
  const rate = (2 * rounds) / ((performance.now() - start) / 1000);
  stream.close();
  return Math.round(rate);
}

async function pyodideRounds() {
  const pyodide = await loadPyodide({
    indexURL: new URL("pyodide/", location.href).href,
    env: { HOME: "/home/pyodide", NETSHIM_WISP_URL: gateway, NETSHIM_REDIS_PORT: String(port),
           NETSHIM_ROUNDS: String(rounds) },
  });
  const names = await (await fetch("wheels/index.json")).json();
  for (const name of names) {
    const data = await (await fetch(`wheels/${name}`)).arrayBuffer();
    pyodide.FS.writeFile(`/tmp/${name}`, new Uint8Array(data));
  }
  const code = await (await fetch("rounds.py")).text();
  pyodide.globals.set("_wheels", pyodide.toPy(names));
  return await pyodide.runPythonAsync(code, { filename: "rounds.py" });
}

try {
  const javascript = await javascriptRounds();
  const python = await pyodideRounds();
  window.netshimResult = { javascript, pyodide: python };
} catch (error) {
  window.netshimResult = { error: String(error.stack ?? error) };
}
"""

# Inside Pyodide in the page: the same loop as redis_rounds() below.
PAGE_PYTHON = """
import os, site, time, zipfile
for name in _wheels:
    with zipfile.ZipFile("/tmp/" + name) as wheel:
        wheel.extractall(site.getsitepackages()[0])
import netshim
from netshim.stacks import WispStack
import redis.asyncio

stack = WispStack(os.environ["NETSHIM_WISP_URL"])
netshim.install(stack)
client = redis.asyncio.Redis(host="127.0.0.1", port=int(os.environ["NETSHIM_REDIS_PORT"]))
await client.ping()
rounds = int(os.environ["NETSHIM_ROUNDS"])
start = time.perf_counter()
for number in range(rounds):
    await client.set("netshim:counter", number)
    await client.get("netshim:counter")
rate = round(2 * rounds / (time.perf_counter() - start))
await client.aclose()
await stack.aclose()
rate
"""


async def redis_rounds(port: int, rounds: int) -> float:
    """Round trips per second of SET+GET pairs with redis-py asyncio."""
    import redis.asyncio

    client = redis.asyncio.Redis(host="127.0.0.1", port=port)
    await client.ping()
    start = time.perf_counter()
    for number in range(rounds):
        await client.set("netshim:counter", number)
        await client.get("netshim:counter")
    elapsed = time.perf_counter() - start
    await client.aclose()
    return 2 * rounds / elapsed


async def through_wisp(url: str, port: int, rounds: int) -> float:
    import netshim
    from netshim.stacks import WispStack

    stack = WispStack(url)
    netshim.install(stack, mode="loop")
    try:
        return await redis_rounds(port, rounds)
    finally:
        netshim.uninstall()
        await stack.aclose()


def pyodide_under_node(wheels: list[Path], url: str, port: int, rounds: int) -> float:
    with pyodide_support.http_server(b"unused") as http_url:
        completed = pyodide_support.run_in_pyodide(
            "wisp_clients.py",
            wheels,
            env={
                "NETSHIM_WISP_URL": url,
                "NETSHIM_REDIS_PORT": str(port),
                "NETSHIM_HTTP_URL": http_url,
                "NETSHIM_ROUNDS": str(rounds),
            },
            timeout=600,
        )
    if completed.returncode != 0:
        sys.exit(f"Pyodide run failed:\n{completed.stdout}\n{completed.stderr}")
    result = json.loads(completed.stdout.splitlines()[-1])
    return float(result["round_trips_per_second"])


def load_example_server() -> ModuleType:
    """examples/pyodide-redis/serve.py, for its static file server."""
    spec = importlib.util.spec_from_file_location(
        "pyodide_redis_example_serve", ROOT / "examples" / "pyodide-redis" / "serve.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def in_chromium(
    chromium: str, wheels: list[Path], url: str, port: int, rounds: int
) -> tuple[float, float]:
    """Round trips per second in one page: wisp-js's JavaScript, then Pyodide."""
    serve = load_example_server()
    with tempfile.TemporaryDirectory() as scratch:
        page = Path(scratch) / "page"
        wheel_dir = Path(scratch) / "wheels"
        page.mkdir()
        wheel_dir.mkdir()
        (page / "index.html").write_text(PAGE_HTML)
        (page / "bench.mjs").write_text(PAGE_SCRIPT)
        (page / "rounds.py").write_text(PAGE_PYTHON)
        for wheel in wheels:
            shutil.copy(wheel, wheel_dir)
        serve.write_wheel_index(wheel_dir)
        routes = {
            "/": page,
            "/pyodide/": serve.PYODIDE,
            "/wheels/": wheel_dir,
            "/wisp/": WISP_JS / "dist",
        }
        with serve.static_server(routes) as base:
            completed = subprocess.run(
                [shutil.which("node") or "node", str(pyodide_support.PEER_DIR / "browser.mjs"),
                 f"{base}?gateway={url}&port={port}&rounds={rounds}"],
                cwd=pyodide_support.PEER_DIR,
                env={**os.environ, "NETSHIM_CHROMIUM": chromium,
                     "NETSHIM_BROWSER_TIMEOUT": "600000"},
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )  # fmt: skip
    if completed.returncode != 0:
        sys.exit(f"Chromium run failed:\n{completed.stdout}\n{completed.stderr}")
    result = json.loads(completed.stdout.splitlines()[-1])["result"]
    if "error" in result:
        sys.exit(f"the benchmark page failed: {result['error']}")
    return float(result["javascript"]), float(result["pyodide"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each client (median)")
    parser.add_argument("--no-browser", action="store_true", help="skip the Chromium rows")
    parser.add_argument("--wheel", type=Path, help="this netshim wheel in Pyodide")
    options = parser.parse_args()
    rounds = options.rounds
    own = options.wheel or pyodide_support.build_netshim_wheel(Path(tempfile.mkdtemp()))
    wheels = [
        own,
        *pyodide_support.dependency_wheels(),
        *pyodide_support.dependency_wheels(pyodide_support.CLIENT_LIBRARIES),
    ]
    chromium = None if options.no_browser else shutil.which("chromium")
    if chromium is not None and not (WISP_JS / "dist").is_dir():
        sys.exit("wisp-js is missing: npm ci in tests/peers/node (or --no-browser)")
    runs: dict[str, list[float]] = {}

    def record(name: str, value: float) -> None:
        runs.setdefault(name, []).append(value)

    with pyodide_support.redis_server() as port, pyodide_support.wisp_gateway() as url:
        # Interleaved, so that a busy moment of the machine hits every client alike.
        for _ in range(options.repeat):
            record("direct", asyncio.run(redis_rounds(port, rounds)))
            record("cpython", asyncio.run(through_wisp(url, port, rounds)))
            record("node", pyodide_under_node(wheels, url, port, rounds))
            if chromium is not None:
                javascript, python = in_chromium(chromium, wheels, url, port, rounds)
                record("chromium-js", javascript)
                record("chromium", python)
    median = {name: statistics.median(values) for name, values in runs.items()}

    def row(label: str, name: str, note: str = "") -> None:
        every = ", ".join(f"{value:.0f}" for value in runs[name])
        print(f"{label:34} {median[name]:8.0f} round trips/s  {note:44} [{every}]")

    print(f"{rounds} SET+GET rounds, median of {options.repeat} (every run in brackets)")
    row("direct (kernel loopback)", "direct")
    cpython = median["cpython"]
    row("CPython via gateway (Wisp)", "cpython", f"{cpython / median['direct']:.2f}x direct")
    row("Pyodide/Node via gateway", "node", f"{median['node'] / cpython:.2f}x CPython via gateway")
    if chromium is not None:
        row("Chromium, wisp-js (JavaScript)", "chromium-js")
        row(
            "Pyodide/Chromium via gateway",
            "chromium",
            f"{median['chromium'] / median['chromium-js']:.2f}x wisp-js, "
            f"{median['chromium'] / cpython:.2f}x CPython via gateway",
        )


if __name__ == "__main__":
    main()
