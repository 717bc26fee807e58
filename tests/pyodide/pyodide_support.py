"""Running Python scripts inside real Pyodide (the pinned npm package, under Node).

:func:`pyodide_wheels` builds netshim's wheel from this checkout and gathers
its pure-Python dependencies' wheels, at the versions installed here, from
PyPI with pip (cached in ``tests/peers/pyodide/.wheels``); :func:`run_in_pyodide`
runs a script with them installed and returns what it printed.  Scripts
report results as one JSON object on their last line.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (a file in tests/pyodide/scripts, or a path) inside Pyodide."""
    node = require_pyodide()
    path = Path(script)
    if not path.is_absolute():
        path = SCRIPTS / path
    environment = {**os.environ, **(env or {})}
    return subprocess.run(
        [node, str(PEER_DIR / "run.mjs"), str(path), *map(str, wheels)],
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
