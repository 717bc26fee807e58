"""``netshim pyodide run``: a user's script inside real Pyodide under Node, one command.

Pyodide is the npm package already installed for the other Pyodide tests
(``--pyodide-dir tests/peers/pyodide/node_modules/pyodide``), and the wheel
cache is a temporary directory seeded from theirs, so nothing is downloaded
that those tests did not already need.  The command builds netshim's wheel
itself, from this checkout's files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pyodide_support import PEER_DIR, free_port, require_pyodide, wisp_gateway

PYODIDE_DIR = PEER_DIR / "node_modules" / "pyodide"


def netshim_pyodide(
    cache: Path, *arguments: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "netshim", "pyodide", "run", "--cache-dir", str(cache),
         "--pyodide-dir", str(PYODIDE_DIR), *arguments],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip


SCRIPT = """\
import sys
assert sys.platform == "emscripten", sys.platform
import netshim
print("hello from", sys.platform, sys.argv[1:], "installed:", netshim.is_installed())
print("to stderr", file=sys.stderr)
sys.exit(7)
"""


def test_script_runs_in_pyodide_with_its_output_and_status(cache: Path, tmp_path: Path) -> None:
    script = tmp_path / "hello.py"
    script.write_text(SCRIPT)
    completed = netshim_pyodide(cache, str(script), "one", "--two")
    assert completed.returncode == 7, completed.stderr
    # Without --via netshim is importable but not installed.
    assert completed.stdout == "hello from emscripten ['one', '--two'] installed: False\n"
    assert completed.stderr == "to stderr\n"


BROKEN_SCRIPT = """\
import asyncio, pyodide.ffi
print("can_run_sync:", pyodide.ffi.can_run_sync())
raise KeyError('nope')
"""


def test_uncaught_exception_prints_traceback_and_exits_1(cache: Path, tmp_path: Path) -> None:
    script = tmp_path / "broken.py"
    script.write_text(BROKEN_SCRIPT)
    # Node 20 turns JSPI on with this option: blocking sockets can then wait.
    jspi = "--node-option=--experimental-wasm-stack-switching"
    completed = netshim_pyodide(cache, jspi, str(script))
    assert completed.returncode == 1
    assert completed.stdout == "can_run_sync: True\n"
    assert "Traceback" in completed.stderr
    assert f'File "{script}", line 3' in completed.stderr
    assert completed.stderr.rstrip().endswith("KeyError: 'nope'")


ECHO_SCRIPT = """\
import asyncio, os, sys
import netshim
assert sys.platform == "emscripten", sys.platform
print("installed:", netshim.is_installed())
reader, writer = await asyncio.open_connection("127.0.0.1", int(os.environ["ECHO_PORT"]))
writer.write(b"ping through wisp")
await writer.drain()
print("echo:", (await reader.readexactly(17)).decode())
writer.close()
try:
    await asyncio.open_connection("127.0.0.1", int(os.environ["CLOSED_PORT"]))
except ConnectionRefusedError as exc:
    print("refused:", exc.errno, exc)
"""


def test_via_a_gateway_over_wisp(cache: Path, tmp_path: Path, echo_port: int) -> None:
    script = tmp_path / "echo.py"
    script.write_text(ECHO_SCRIPT)
    env = {"ECHO_PORT": str(echo_port), "CLOSED_PORT": str(free_port())}
    with wisp_gateway() as url:
        completed = netshim_pyodide(cache, "--via", url, str(script), env=env)
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[:2] == ["installed: True", "echo: ping through wisp"]
    # Emscripten's errno numbering: ECONNREFUSED is 14 inside Pyodide, and
    # netshim's messages name the error so that the number cannot mislead.
    assert lines[2].startswith("refused: 14 [Errno 14] Connection refused (ECONNREFUSED)"), lines


# Failures before Pyodide starts: one line on stderr, exit status 2.


def run_without_pyodide_dir(
    cache: Path, script: Path, *arguments: str, path: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "netshim", "pyodide", "run", "--cache-dir", str(cache),
         *arguments, str(script)],
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip


def test_missing_node_is_one_line(tmp_path: Path) -> None:
    script = tmp_path / "x.py"
    script.write_text("print(1)\n")
    completed = run_without_pyodide_dir(tmp_path, script, path=str(tmp_path / "empty"))
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1
    assert "node is not installed" in completed.stderr


def test_missing_npm_is_one_line(cache: Path, tmp_path: Path) -> None:
    node = require_pyodide()
    only_node = tmp_path / "bin"
    only_node.mkdir()
    (only_node / "node").symlink_to(node)
    empty_cache = tmp_path / "cache"
    shutil.copytree(cache / "wheels", empty_cache / "wheels")
    script = tmp_path / "x.py"
    script.write_text("print(1)\n")
    completed = run_without_pyodide_dir(empty_cache, script, path=str(only_node))
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1
    assert "npm is not installed" in completed.stderr


def test_requirement_without_a_pure_python_wheel_is_one_line(cache: Path, tmp_path: Path) -> None:
    script = tmp_path / "x.py"
    script.write_text("print(1)\n")
    completed = netshim_pyodide(cache, "--with", "nosuch-distribution-here", str(script))
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1
    assert "--with nosuch-distribution-here==VERSION" in completed.stderr
    pytest.importorskip("uvloop")  # compiled only: PyPI has no py3-none-any wheel of it
    completed = netshim_pyodide(cache, "--with", "uvloop", str(script))
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1
    assert "no pure-Python wheel of uvloop==" in completed.stderr
