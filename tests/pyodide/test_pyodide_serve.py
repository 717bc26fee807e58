"""``netshim pyodide serve``: a Python console in Chromium whose sockets go through the gateway.

The command runs as a real process, as a user starts it: Pyodide from the
tests' npm package (``--pyodide-dir``), wheels from a cache seeded with the
other Pyodide tests' wheels, and the gateway in the same process on the same
port, allowed to reach one loopback port (the echo server's).  Debian's
Chromium, driven by the pinned npm playwright-core
(tests/peers/pyodide/console.mjs), opens the page and types code into the
console with the keyboard; the test reads what the console printed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pyodide_support import PEER_DIR, free_port, require_pyodide

from netshim._pyodide_serve import ConsolePages
from netshim.testing import REQUIRE_PEERS_VARIABLE, require_peer

PYODIDE_DIR = PEER_DIR / "node_modules" / "pyodide"


class Served:
    def __init__(self, process: subprocess.Popen[str], url: str, announcement: list[str]) -> None:
        self.process = process
        self.url = url
        self.announcement = announcement


def start_serve(cache: Path, *arguments: str) -> Served:
    process = subprocess.Popen(
        [sys.executable, "-m", "netshim", "pyodide", "serve", "--port", "0",
         "--cache-dir", str(cache), "--pyodide-dir", str(PYODIDE_DIR), *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert process.stdout is not None
    lines = [process.stdout.readline(), process.stdout.readline()]
    if not lines[0].startswith("netshim pyodide serve: open http://"):
        process.kill()
        _, errors = process.communicate(timeout=10)
        pytest.fail(f"serve did not start: {lines} {errors}")
    return Served(process, lines[0].split()[-1], lines)


def stop(served: Served) -> tuple[int, str]:
    """Ctrl-C, as a user stops it: the status and what it printed on stderr."""
    served.process.send_signal(signal.SIGINT)
    try:
        _, errors = served.process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        served.process.kill()
        served.process.communicate()
        pytest.fail("serve did not stop on SIGINT")
    return served.process.returncode, errors


def require_playwright() -> None:
    if not (PEER_DIR / "node_modules" / "playwright-core").exists():
        message = "playwright-core is not installed: npm ci in tests/peers/pyodide"
        if os.environ.get(REQUIRE_PEERS_VARIABLE) == "1":
            pytest.fail(message)
        pytest.skip(message)


def type_into_console(url: str, cells: list[Any], tmp_path: Path) -> dict[str, Any]:
    chromium = require_peer("chromium")
    node = require_pyodide()
    require_playwright()
    cells_file = tmp_path / "cells.json"
    cells_file.write_text(json.dumps(cells))
    completed = subprocess.run(
        [node, str(PEER_DIR / "console.mjs"), url, str(cells_file)],
        cwd=PEER_DIR,
        env={**os.environ, "NETSHIM_CHROMIUM": chromium},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if completed.returncode != 0:
        pytest.fail(f"the console failed in Chromium:\n{completed.stdout[-4000:]}\n"
                    f"{completed.stderr[-4000:]}")  # fmt: skip
    report: dict[str, Any] = json.loads(completed.stdout.splitlines()[-1])
    return report


ECHO_CELL = """\
reader, writer = await asyncio.open_connection("127.0.0.1", {port})
writer.write(b"typed in the browser, echoed on loopback")
await writer.drain()
print("echo:", (await reader.readexactly(40)).decode())
writer.close()"""

# Chromium has JSPI: a blocking socket waits by switching stacks.
BLOCKING_CELL = """\
import socket
with socket.create_connection(("127.0.0.1", {port})) as sock:
    sock.sendall(b"blocking, under JSPI")
    print("blocking:", sock.recv(100))"""

REFUSED_CELL = 'await asyncio.open_connection("127.0.0.1", {port})'

CAUGHT_CELL = """\
try:
    await asyncio.open_connection("127.0.0.1", {port})
except PermissionError as exc:
    print("PermissionError:", exc)"""


@pytest.mark.peer("chromium")
def test_console_in_chromium_through_the_gateway_in_the_same_process(
    cache: Path, echo_port: int, tmp_path: Path
) -> None:
    blocked = free_port()
    served = start_serve(cache, "--allow", f"127.0.0.1:{echo_port}")
    try:
        assert "the gateway in this process" in served.announcement[1]
        report = type_into_console(
            served.url,
            [
                ECHO_CELL.format(port=echo_port),
                BLOCKING_CELL.format(port=echo_port),
                REFUSED_CELL.format(port=blocked),
                CAUGHT_CELL.format(port=blocked),
                {"code": "await asyncio.sleep(3600)", "stopAfter": 500},
                "6 * 7",
            ],
            tmp_path,
        )
    finally:
        status, errors = stop(served)
    assert report["state"] == "ready", report
    assert report["gateway"] == "ws" + served.url[len("http") :]
    echo, blocking, refused, caught, stopped, value = report["outputs"]
    assert "connections go through ws://127.0.0.1:" in echo  # the greeting
    # The typed code, as typed, then what it printed: the bytes came back.
    assert '>>> reader, writer = await asyncio.open_connection("127.0.0.1",' in echo
    assert echo.endswith("echo: typed in the browser, echoed on loopback\n")
    assert blocking.endswith("blocking: b'blocking, under JSPI'\n")
    # Uncaught: a traceback of the typed line, not of the console's machinery.
    new = refused[len(blocking) :]
    assert "Traceback (most recent call last):" in new
    assert 'File "<console-3>", line 1' in new
    assert "_pyodide_serve" not in new
    assert "DestinationBlockedError" in new
    assert f"netshim policy refused 127.0.0.1:{blocked}" in new
    assert (
        caught[len(refused) :]
        .splitlines()[-1]
        .startswith(f"PermissionError: [Errno 2] netshim policy refused 127.0.0.1:{blocked}")
    )
    # Ctrl+C interrupts an entry that awaits; the console goes on.
    assert stopped.endswith(">>> await asyncio.sleep(3600)\nKeyboardInterrupt\n")
    assert value.endswith(">>> 6 * 7\n42\n")
    assert not [line for line in report["console"] if line.startswith("pageerror")]
    # Ctrl-C stops it cleanly.
    assert status == 0, errors
    assert errors.strip().endswith("netshim pyodide serve: stopped")


# Without a browser: what the server answers, and the command's one-line errors.


def test_pages_serve_only_the_console_pyodide_and_the_wheels(tmp_path: Path) -> None:
    pyodide = tmp_path / "pyodide"
    pyodide.mkdir()
    (pyodide / "pyodide.asm.wasm").write_bytes(b"\0asm")
    (tmp_path / "secret.txt").write_text("no")
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    pages = ConsolePages(pyodide, [wheel], via=None)
    status, content_type, body = pages("/") or (0, "", b"")
    assert (status, content_type) == (200, "text/html; charset=utf-8")
    assert b'src="console.mjs"' in body
    assert (pages("/console.mjs") or (0, ""))[1] == "text/javascript"
    assert pages("/pyodide/pyodide.asm.wasm") == (200, "application/wasm", b"\0asm")
    assert pages("/wheels/demo-1.0-py3-none-any.whl") == (200, "application/zip", b"PK")
    config = json.loads((pages("/config.json") or (0, "", b""))[2])
    assert config == {"wheels": ["demo-1.0-py3-none-any.whl"], "via": None}
    for path in ("/pyodide/../secret.txt", "/pyodide/%2e%2e/secret.txt", "/wheels/secret.txt",
                 "/pyodide/", "/pyodide/nothing", "/secret.txt", "/pyodide/sub/x"):  # fmt: skip
        assert pages(path) is None, path


def test_gateway_options_with_via_are_one_line(cache: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "netshim", "pyodide", "serve", "--cache-dir", str(cache),
         "--pyodide-dir", str(PYODIDE_DIR), "--via", "ws://127.0.0.1:1/", "--allow-private"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1
    assert "--allow-private is for the gateway this command starts" in completed.stderr


def test_help_names_serve() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "netshim", "pyodide", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "serve" in completed.stdout
    assert "netshim pyodide serve --allow-private --with redis" in completed.stdout


def test_with_via_only_pages_are_served(cache: Path) -> None:
    import urllib.request

    served = start_serve(cache, "--via", "ws://gateway.example:8080/")
    try:
        assert served.announcement[1].startswith(
            "netshim pyodide serve: sockets go through ws://gateway.example:8080/"
        )
        with urllib.request.urlopen(served.url + "config.json", timeout=10) as response:
            config = json.load(response)
        assert config["via"] == "ws://gateway.example:8080/"
        assert config["wheels"][0].startswith("netshim-")
    finally:
        status, errors = stop(served)
    assert status == 0, errors


def test_a_port_in_use_is_one_line(cache: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        completed = subprocess.run(
            [sys.executable, "-m", "netshim", "pyodide", "serve", "--port", str(port),
             "--cache-dir", str(cache), "--pyodide-dir", str(PYODIDE_DIR)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )  # fmt: skip
    assert completed.returncode == 2
    assert completed.stderr == (
        f"netshim pyodide serve: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )
