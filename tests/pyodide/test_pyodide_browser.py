"""netshim in real Pyodide in Debian's headless Chromium, from a page served on localhost.

The page is the example in examples/pyodide-redis: it loads Pyodide from files
this test serves (no CDN), installs netshim's wheel and redis-py's, and does a
redis-py asyncio round trip to a real redis-server through netshim's gateway,
over Wisp on the browser's own WebSocket.  Chromium is driven by the pinned
npm playwright-core (tests/peers/pyodide/browser.mjs), which also takes the
screenshot the example's test looks at.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pyodide_support import (
    PEER_DIR,
    ROOT,
    build_netshim_wheel,
    dependency_wheels,
    redis_server,
    require_pyodide,
    wisp_gateway,
)

from netshim.testing import REQUIRE_PEERS_VARIABLE, require_peer

EXAMPLE = ROOT / "examples" / "pyodide-redis"


def load_example_server() -> ModuleType:
    """The example's serve.py, loaded by path (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "pyodide_redis_example_serve", EXAMPLE / "serve.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def require_playwright() -> None:
    if not (PEER_DIR / "node_modules" / "playwright-core").exists():
        message = "playwright-core is not installed: npm ci in tests/peers/pyodide"
        if os.environ.get(REQUIRE_PEERS_VARIABLE) == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def browser_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """Open the example page once in Chromium: its report and its screenshot."""
    chromium = require_peer("chromium")
    node = require_pyodide()
    require_playwright()
    serve = load_example_server()
    wheel_dir = tmp_path_factory.mktemp("page-wheels")
    build_netshim_wheel(wheel_dir)
    for wheel in dependency_wheels((*serve.REQUIREMENTS,)):
        shutil.copy(wheel, wheel_dir)
    serve.write_wheel_index(wheel_dir)
    screenshot = tmp_path_factory.mktemp("screenshot") / "pyodide-redis.png"
    with (
        redis_server() as redis_port,
        wisp_gateway() as gateway,
        serve.static_server(serve.example_routes(wheel_dir)) as base,
    ):
        completed = subprocess.run(
            [node, str(PEER_DIR / "browser.mjs"),
             f"{base}?gateway={gateway}&redis=127.0.0.1:{redis_port}", str(screenshot)],
            cwd=PEER_DIR,
            env={**os.environ, "NETSHIM_CHROMIUM": chromium},
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )  # fmt: skip
    if completed.returncode != 0:
        pytest.fail(
            f"the page failed in Chromium:\n{completed.stdout[-4000:]}\n{completed.stderr[-4000:]}"
        )
    return json.loads(completed.stdout.splitlines()[-1]), screenshot


def test_redis_round_trip_from_chromium_through_the_gateway(
    browser_run: tuple[dict[str, Any], Path],
) -> None:
    report, _ = browser_run
    result = report["result"]
    assert "error" not in result, report
    assert not [line for line in report["console"] if line.startswith(("error", "pageerror"))]
    assert "HeadlessChrome" in report["userAgent"] or "Chrome" in report["userAgent"]
    assert result["platform"] == "emscripten"
    assert result["ping"] is True
    assert result["get"] == "hello from Python in the browser"
    assert result["redis_version"].count(".") == 2
    assert result["round_trips_per_second"] > 0
    assert result["wisp_version"] == 2


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_example_page_shows_the_round_trip(browser_run: tuple[dict[str, Any], Path]) -> None:
    report, screenshot = browser_run
    assert report["state"] == "ok"
    assert report["status"] == "Redis answered: 'hello from Python in the browser'"
    assert "PING -> True" in report["log"]
    assert "round trips/s" in report["log"]
    width, height = png_size(screenshot)
    assert width == 900
    assert height >= 400
    # A rendered page, not a blank one: a blank 900-pixel-wide PNG compresses to a few KB.
    assert screenshot.stat().st_size > 20_000
