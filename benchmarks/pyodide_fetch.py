"""FetchStack's requests per second and MB/s against JavaScript's own fetch, in Pyodide.

Runs benchmarks/pyodide_fetch/fetch_figures.py in real Pyodide under Node
(the pinned npm package) and in Debian's headless Chromium (a page served by
the same test server, tests/pyodide/fetch_support.py, with TCP_NODELAY so the
server is not the bottleneck), and prints, per runtime, each figure beside
the ceiling: JavaScript's ``fetch`` called from the same Python, measured in
rounds that alternate with FetchStack's.  httpx is measured both ways: handed
the stream itself (the default) and the usual way, through the loop hooks'
transport (``httpx_usual``: ``FetchStack(direct_httpcore=False)``).  Under
Node it also prints the process's CPU time per request and per GiB beside
fetch's own.  In Chromium
it also runs benchmarks/pyodide_fetch/xhr_figures.py in a dedicated Worker
without JSPI: blocking clients (http.client, requests) on FetchStack's
synchronous-XHR path against JavaScript's own synchronous XHR there.

    python benchmarks/pyodide_fetch.py [--no-browser]

Needs Node, ``npm ci`` in tests/peers/pyodide, and Chromium for the browser row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "pyodide"))

import pyodide_support  # noqa: E402 - found through the path set just above
from fetch_support import origin_server  # noqa: E402
from test_pyodide_fetch import SYNC_CLIENTS, pure_wheel  # noqa: E402

HERE = ROOT / "benchmarks" / "pyodide_fetch"
PAGE = ROOT / "tests" / "pyodide" / "fetch_page"
HTTPX = ("httpx", "httpcore", "h11", "certifi", "sniffio")
PAIRS = (
    ("stream_requests_per_s", "js_fetch_requests_per_s"),
    ("asyncio_requests_per_s", "js_fetch_requests_per_s"),
    ("httpx_requests_per_s", "js_fetch_requests_per_s"),
    ("httpx_usual_requests_per_s", "js_fetch_requests_per_s"),
    ("stream_download_mb_per_s", "js_download_mb_per_s"),
    ("httpx_download_mb_per_s", "js_download_mb_per_s"),
    ("httpx_usual_download_mb_per_s", "js_download_mb_per_s"),
    ("httpx_upload_mb_per_s", "js_upload_mb_per_s"),
)
# CPU time (Pyodide under Node only): FetchStack's cost against fetch's own.
CPU_PAIRS = (
    ("stream_cpu_ms_per_request", "js_fetch_cpu_ms_per_request"),
    ("asyncio_cpu_ms_per_request", "js_fetch_cpu_ms_per_request"),
    ("httpx_cpu_ms_per_request", "js_fetch_cpu_ms_per_request"),
    ("httpx_usual_cpu_ms_per_request", "js_fetch_cpu_ms_per_request"),
    ("stream_download_cpu_s_per_gib", "js_download_cpu_s_per_gib"),
    ("httpx_download_cpu_s_per_gib", "js_download_cpu_s_per_gib"),
    ("httpx_usual_download_cpu_s_per_gib", "js_download_cpu_s_per_gib"),
    ("httpx_upload_cpu_s_per_gib", "js_upload_cpu_s_per_gib"),
)
WORKER_PAIRS = (
    ("http_client_requests_per_s", "js_xhr_requests_per_s"),
    ("requests_requests_per_s", "js_xhr_requests_per_s"),
    ("requests_download_mb_per_s", "js_xhr_download_mb_per_s"),
    ("requests_upload_mb_per_s", "js_xhr_upload_mb_per_s"),
)


def wheels(directory: Path) -> list[Path]:
    return [
        pyodide_support.build_netshim_wheel(directory),
        *pyodide_support.dependency_wheels(),
        *pyodide_support.dependency_wheels(HTTPX),
        *(pure_wheel(name) for name in SYNC_CLIENTS),
    ]


def under_node(found: list[Path]) -> dict[str, float]:
    with origin_server() as (base, _):
        completed = pyodide_support.run_in_pyodide(
            HERE / "fetch_figures.py", found, env={"NETSHIM_BASE": base}, timeout=600
        )
    figures: dict[str, float] = pyodide_support.result_of(completed)
    return figures


def in_chromium(found: list[Path], extra: dict[str, str] | None = None) -> dict[str, float]:
    wheel_dir = Path(tempfile.mkdtemp(prefix="netshim-fetch-bench-"))
    for wheel in found:
        shutil.copy(wheel, wheel_dir)
    names = sorted(path.name for path in wheel_dir.glob("*.whl"))
    (wheel_dir / "index.json").write_text(json.dumps(names))
    files = {
        "/page/": PAGE,
        "/pyodide/": pyodide_support.PEER_DIR / "node_modules" / "pyodide",
        "/wheels/": wheel_dir,
        "/scripts/": HERE,
    }
    with origin_server(files) as (base, _):
        query = urllib.parse.urlencode(
            {"NETSHIM_BASE": base, "script": "fetch_figures.py", **(extra or {})}
        )
        completed = subprocess.run(
            [
                "node",
                str(pyodide_support.PEER_DIR / "browser.mjs"),
                f"{base}page/index.html?{query}",
            ],
            cwd=pyodide_support.PEER_DIR,
            env={**os.environ, "NETSHIM_CHROMIUM": shutil.which("chromium") or "/usr/bin/chromium"},
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
    shutil.rmtree(wheel_dir, ignore_errors=True)
    report = json.loads(completed.stdout.splitlines()[-1])
    figures: dict[str, float] = report["result"]
    if "error" in figures:
        raise SystemExit(f"the page failed: {figures['error']}")
    return figures


def show(
    runtime: str, figures: dict[str, float], pairs: tuple[tuple[str, str], ...] = PAIRS
) -> None:
    print(f"{runtime}:")
    for ours, ceiling in pairs:
        ratio = figures[ours] / figures[ceiling] if figures[ceiling] else 0.0
        print(
            f"  {ours:26} {figures[ours]:8.1f}   {ceiling} {figures[ceiling]:8.1f}   {ratio:4.2f}x"
        )
    cpu = [(ours, ceiling) for ours, ceiling in CPU_PAIRS if ours in figures]
    if cpu:
        print("  CPU time of the Node process (FetchStack's against fetch's own):")
    for ours, ceiling in cpu:
        ratio = figures[ours] / figures[ceiling] if figures[ceiling] else 0.0
        print(
            f"  {ours:30} {figures[ours]:7.2f}   {ceiling} {figures[ceiling]:7.2f}"
            f"   {ratio:4.2f}x the CPU"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-browser", action="store_true", help="only Pyodide under Node")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        found = wheels(Path(directory))
        show("Pyodide under Node", under_node(found))
        if not arguments.no_browser:
            show("Pyodide in Chromium", in_chromium(found))
            worker = {"script": "xhr_figures.py", "worker": "1", "jspi": "0"}
            show("Chromium Worker, no JSPI", in_chromium(found, worker), WORKER_PAIRS)


if __name__ == "__main__":
    main()
