"""Two Chromium tabs on one LAN: an aiohttp server in Pyodide, reached by httpx and by curl.

The page is the example in examples/pyodide-lan.  The first tab (member ``alice``)
runs aiohttp's server inside Pyodide on port 8000 of its LAN address; the second
(member ``bob``) fetches ``http://alice.demo:8000/`` with httpx and with aiohttp; then ``curl`` on
this machine fetches the same page through the gateway's port forward.  The gateway
is the real ``netshim gateway`` process with ``--lan`` and ``--forward``; both tabs
reach it over the browser's own WebSocket.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import subprocess
from types import ModuleType
from typing import Any

import pytest
from pyodide_support import PEER_DIR, ROOT, free_port, require_pyodide
from test_pyodide_browser import require_playwright

from netshim.testing import require_peer

EXAMPLE = ROOT / "examples" / "pyodide-lan"
# Pure-Python wheels for Pyodide, kept between runs.
WHEEL_CACHE = PEER_DIR / ".wheels-any"


def load_example_server() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pyodide_lan_example_serve", EXAMPLE / "serve.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def two_tabs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run both tabs and the forwarded curl once; what each reported."""
    chromium = require_peer("chromium")
    curl = require_peer("curl")
    node = require_pyodide()
    require_playwright()
    serve = load_example_server()
    wheel_dir = tmp_path_factory.mktemp("lan-wheels")
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    serve.build_wheels(wheel_dir, cache=WHEEL_CACHE)
    token = secrets.token_urlsafe(12)
    forward_port = free_port()
    forwarded: list[str] = []
    lines: list[dict[str, Any]] = []
    with (
        serve.lan_gateway(free_port(), forward_port, token) as gateway,
        serve.static_server(serve.example_routes(wheel_dir)) as base,
    ):
        server_tab, client_tab = serve.tab_urls(base, gateway, token, requests=3)
        driver = subprocess.Popen(
            [node, str(PEER_DIR / "two_tabs.mjs"), server_tab, client_tab],
            cwd=PEER_DIR,
            env={**os.environ, "NETSHIM_CHROMIUM": chromium},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert driver.stdout is not None
            for line in driver.stdout:
                if not line.startswith("{"):
                    continue
                lines.append(json.loads(line))
                if lines[-1]["event"] == "second-done":
                    # The server tab is still serving: reach it from this machine.
                    completed = subprocess.run(
                        [curl, "-sS", "--max-time", "30", f"http://127.0.0.1:{forward_port}/"],
                        capture_output=True, text=True, timeout=60, check=False,
                    )  # fmt: skip
                    forwarded.append(completed.stdout + completed.stderr)
            driver.wait(timeout=240)
        finally:
            if driver.poll() is None:
                driver.kill()
            stderr = driver.stderr.read() if driver.stderr else ""
            for pipe in (driver.stdout, driver.stderr):
                if pipe is not None:
                    pipe.close()
    if not lines or lines[-1]["event"] != "done":
        pytest.fail(f"the tabs did not finish in Chromium: {lines!r}\n{stderr[-4000:]}")
    return {"first": lines[-1]["first"], "second": lines[-1]["second"], "curl": forwarded}


def test_client_tab_fetches_from_the_server_tab_by_name(two_tabs: dict[str, Any]) -> None:
    client = two_tabs["second"]["result"]
    assert "error" not in client, two_tabs["second"]
    assert client["platform"] == "emscripten"
    assert client["name"] == "bob.demo"
    assert client["status"] == 200
    assert client["body"] == "hello from alice.demo, request 1\n"
    assert client["aiohttp_body"] == "hello from alice.demo, request 2\n"
    server = two_tabs["first"]["result"]
    assert client["members"]["alice.demo"] == server["address"]


def test_server_tab_saw_both_peers_with_their_lan_addresses(two_tabs: dict[str, Any]) -> None:
    server = two_tabs["first"]["result"]
    assert "error" not in server, two_tabs["first"]
    assert server["name"] == "alice.demo"
    client = two_tabs["second"]["result"]
    assert server["served"][:2] == [f"{client['address']} GET /"] * 2
    # The forward comes from the gateway's own address on the LAN, .1.
    gateway_address = server["address"].rsplit(".", 1)[0] + ".1"
    assert server["served"][2] == f"{gateway_address} GET /"
    assert two_tabs["first"]["state"] == "ok"
    assert not [
        line
        for tab in ("first", "second")
        for line in two_tabs[tab]["console"]
        if line.startswith("pageerror")
    ]


def test_host_reaches_the_server_tab_through_the_port_forward(two_tabs: dict[str, Any]) -> None:
    assert two_tabs["curl"] == ["hello from alice.demo, request 3\n"]
