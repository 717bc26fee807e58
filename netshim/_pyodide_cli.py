"""``netshim pyodide run``: run a Python script inside Pyodide under Node, with netshim.

::

    netshim pyodide run [--via URL] [--with NAME[==VERSION]] ... SCRIPT.py [ARGS ...]

(``netshim pyodide serve``, a console in the browser on the same Pyodide and
wheels, is :mod:`netshim._pyodide_serve`.)

The pinned npm ``pyodide`` package comes from ``--pyodide-dir`` (or
``NETSHIM_PYODIDE_DIR``), else from the cache (``NETSHIM_CACHE_DIR``, else
``$XDG_CACHE_HOME/netshim``, else ``~/.cache/netshim``), where ``npm install``
puts it the first time.  netshim's own wheel is built from the files of the
package running this command; its dependencies' wheels, and those named with
``--with``, are pure-Python wheels at the versions installed in this Python,
fetched once with ``pip download`` into the cache.  The runner
(``_pyodide/run.mjs``) unpacks them all into Pyodide's ``site-packages`` and
runs the script; its output and exit status are the command's.

Inside Pyodide :func:`run_in_pyodide` runs the script: netshim is imported
first (so the ``ssl`` stand-in is in place), installed on
``stack_from_url(URL)`` when ``--via`` was given, and the script runs as
``__main__`` with top-level ``await`` allowed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._run import wait_for_child

__all__ = [
    "DEPENDENCIES",
    "PYODIDE_VERSION",
    "CommandError",
    "add_arguments",
    "build_netshim_wheel",
    "download_pure_wheels",
    "run",
    "run_in_pyodide",
]

#: The npm ``pyodide`` package this command uses (tests/peers/pyodide pins the same).
PYODIDE_VERSION = "0.29.5"
#: Its Python, for ``pip download --python-version``.
PYODIDE_PYTHON = "3.13"
#: netshim's runtime dependencies, and theirs, as a pure-Python install needs them.
DEPENDENCIES = ("anyio", "idna", "typing_extensions", "dnslib", "h11")
RUNNER = Path(__file__).resolve().parent / "_pyodide" / "run.mjs"
PROGRAM = "netshim pyodide run"

_NAME = re.compile(r"\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(.*)", re.DOTALL)


PYODIDE_EXAMPLES = """\
examples:
  netshim pyodide run script.py                        # under Node, netshim importable
  netshim pyodide run --via ws://127.0.0.1:8080/ --with redis app.py
  netshim pyodide serve --allow-private --with redis   # console page + gateway on :8000
  netshim pyodide serve --via ws://gateway.example:8080/ --port 8001

'serve' prints the address to open; in the console, typed code runs with top-level
await and its sockets go through the gateway:
  >>> reader, writer = await asyncio.open_connection("127.0.0.1", 6379)
  >>> import redis.asyncio; await redis.asyncio.Redis(host="127.0.0.1").ping()
See docs/pyodide.md and 'netshim pyodide serve --help'.
"""


class CommandError(Exception):
    """A one-line reason the command cannot run (exit status 2)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``netshim pyodide``'s subcommands."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        f"Python in Pyodide (the npm package pyodide@{PYODIDE_VERSION}, installed once\n"
        "into the cache) with netshim and pure-Python wheels; nothing comes from a CDN."
    )
    parser.epilog = PYODIDE_EXAMPLES
    commands = parser.add_subparsers(dest="pyodide_command", metavar="COMMAND")
    run_parser = commands.add_parser(
        "run",
        help="run SCRIPT.py inside Pyodide under Node, with netshim",
        description=(
            "Run SCRIPT.py inside Pyodide (npm pyodide@"
            f"{PYODIDE_VERSION}) under Node, with netshim and its dependencies installed "
            "from local wheels. Top-level await is allowed. The exit status is the script's."
        ),
    )
    add = run_parser.add_argument
    add(
        "--via",
        metavar="URL",
        help="install netshim on stack_from_url(URL): ws://gateway/, wisp://..., "
        "websockify://... (default: netshim is imported, not installed)",
    )
    _add_install_options(run_parser)
    add(
        "--node-option",
        dest="node_options",
        action="append",
        default=[],
        metavar="OPTION",
        help="pass OPTION to node, e.g. --node-option=--experimental-wasm-stack-switching "
        "(JSPI on Node 20); repeatable",
    )
    add("script", metavar="SCRIPT.py", help="the Python script to run")
    add("arguments", nargs=argparse.REMAINDER, metavar="ARGS", help="the script's sys.argv[1:]")
    from ._pyodide_serve import add_serve_arguments

    add_serve_arguments(commands, _add_install_options)


def _add_install_options(parser: argparse.ArgumentParser) -> None:
    """Where Pyodide and the wheels come from: ``run`` and ``serve`` alike."""
    add = parser.add_argument
    add(
        "--with",
        dest="requirements",
        action="append",
        default=[],
        metavar="NAME[==VERSION]",
        help="also install this pure-Python distribution (default version: the one "
        "installed here) and the dependencies it always needs; repeatable",
    )
    add(
        "--pyodide-dir",
        type=Path,
        default=os.environ.get("NETSHIM_PYODIDE_DIR") or None,
        metavar="DIR",
        help="an installed npm pyodide package (a node_modules/pyodide directory) to use "
        "instead of the cache (default: $NETSHIM_PYODIDE_DIR)",
    )
    add(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the npm package and the wheels are kept (default: $NETSHIM_CACHE_DIR, "
        "else $XDG_CACHE_HOME/netshim, else ~/.cache/netshim)",
    )


def run(arguments: argparse.Namespace) -> int:
    """Carry out ``netshim pyodide ...``; the exit status."""
    if arguments.pyodide_command == "serve":
        from ._pyodide_serve import serve

        return serve(arguments)
    if arguments.pyodide_command != "run":
        print(
            "usage: netshim pyodide run [options] SCRIPT.py [ARGS ...]\n"
            "       netshim pyodide serve [--port N] [--via URL] [--with NAME] [options]",
            file=sys.stderr,
        )
        return 2
    try:
        return _run(arguments)
    except CommandError as exc:
        print(f"{PROGRAM}: {exc}", file=sys.stderr)
        return 2


def _run(arguments: argparse.Namespace) -> int:
    node = shutil.which("node")
    if node is None:
        raise CommandError("node is not installed (not found on PATH): install Node.js 18+")
    script = Path(arguments.script)
    try:
        with open(script, "rb") as file:
            source_bytes = file.read()
    except OSError as exc:
        raise CommandError(f"cannot read {str(script)!r}: {exc.strerror or exc}") from None
    source = _decode_source(source_bytes, script)
    if arguments.via is not None:
        _check_url(arguments.via)
    cache = _cache_directory(arguments.cache_dir)
    wheels = dependency_wheels(
        [*DEPENDENCIES, *arguments.requirements], cache / "wheels", explicit=DEPENDENCIES
    )
    pyodide = _find_pyodide(arguments.pyodide_dir, cache)
    with tempfile.TemporaryDirectory(prefix="netshim-pyodide-") as scratch:
        own = build_netshim_wheel(Path(scratch))
        job = {
            "pyodide": str(pyodide),
            "wheels": [str(own), *map(str, wheels)],
            "script": str(script.resolve()),
            "source": source,
            "argv": [str(script), *arguments.arguments],
            "via": arguments.via,
        }
        job_file = Path(scratch) / "job.json"
        job_file.write_text(json.dumps(job), encoding="utf-8")
        command = [node, *arguments.node_options, str(RUNNER), str(job_file)]
        try:
            child = subprocess.Popen(command)
        except OSError as exc:
            raise CommandError(f"cannot start node: {exc.strerror or exc}") from None
        return wait_for_child(child)


def _decode_source(data: bytes, script: Path) -> str:
    import io
    import tokenize

    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        return data.decode(encoding)
    except (SyntaxError, UnicodeDecodeError, LookupError) as exc:
        raise CommandError(f"cannot decode {str(script)!r}: {exc}") from None


def _check_url(url: str) -> None:
    """A malformed ``--via`` fails here, before Pyodide starts."""
    from ._config import stack_from_url

    try:
        stack_from_url(url)
    except (ValueError, TypeError) as exc:
        raise CommandError(f"--via: {exc}") from None
    except Exception:
        pass  # e.g. a missing optional module: Pyodide builds it again and says


def _cache_directory(given: Path | None) -> Path:
    if given is not None:
        return given.expanduser()
    if os.environ.get("NETSHIM_CACHE_DIR"):
        return Path(os.environ["NETSHIM_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "netshim"
    return Path.home() / ".cache" / "netshim"


def _is_pyodide_package(directory: Path) -> bool:
    return (directory / "pyodide.mjs").is_file() and (directory / "pyodide.asm.wasm").is_file()


def _find_pyodide(given: Path | None, cache: Path) -> Path:
    """The npm pyodide package: the one given, or the cached one, installed if need be."""
    if given is not None:
        directory = given.expanduser().resolve()
        if not _is_pyodide_package(directory):
            raise CommandError(
                f"--pyodide-dir {str(given)!r} is not an npm pyodide package "
                "(no pyodide.mjs and pyodide.asm.wasm there)"
            )
        return directory
    root = cache / f"pyodide-{PYODIDE_VERSION}"
    directory = root / "node_modules" / "pyodide"
    if _is_pyodide_package(directory):
        return directory.resolve()
    npm = shutil.which("npm")
    if npm is None:
        raise CommandError(
            f"npm is not installed (not found on PATH): it installs pyodide@{PYODIDE_VERSION} "
            "once; or give --pyodide-dir"
        )
    root.mkdir(parents=True, exist_ok=True)
    # Its own package.json, so that npm installs here and not in a project above.
    manifest = root / "package.json"
    if not manifest.exists():
        manifest.write_text(
            '{"name": "netshim-pyodide-cache", "private": true, "version": "0.0.0"}\n',
            encoding="utf-8",
        )
    print(
        f"{PROGRAM}: installing pyodide@{PYODIDE_VERSION} with npm into {root} (once)",
        file=sys.stderr,
        flush=True,
    )
    completed = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--ignore-scripts",
         f"pyodide@{PYODIDE_VERSION}"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    if completed.returncode != 0 or not _is_pyodide_package(directory):
        raise CommandError(
            f"npm install pyodide@{PYODIDE_VERSION} failed: {_last_line(completed.stderr)}"
        )
    return directory.resolve()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "ERR" in line]
    return (errors or lines or ["no output"])[-1]


@dataclass(frozen=True)
class _Requirement:
    name: str
    version: str

    @property
    def key(self) -> str:
        return _normalize(self.name)

    def __str__(self) -> str:
        return f"{self.name}=={self.version}"


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _requirement(text: str) -> _Requirement:
    """``NAME`` (at the version installed here) or ``NAME==VERSION``."""
    match = _NAME.fullmatch(text)
    rest = match.group(2).strip() if match else ""
    if match is None or (rest and not rest.startswith("==")):
        raise CommandError(f"--with {text!r}: give NAME or NAME==VERSION")
    name = match.group(1)
    if rest:
        version = rest[2:].strip()
        if not version or any(character in version for character in "*,;<>=!~ "):
            raise CommandError(f"--with {text!r}: give NAME or NAME==VERSION")
        return _Requirement(name, version)
    try:
        return _Requirement(name, importlib.metadata.version(name))
    except importlib.metadata.PackageNotFoundError:
        raise CommandError(
            f"{name} is not installed in this Python: give its version, --with {name}==VERSION"
        ) from None


def _cached_wheel(requirement: _Requirement, directory: Path) -> Path | None:
    for path in sorted(directory.glob("*-none-any.whl")):
        parts = path.name.split("-")
        if _normalize(parts[0]) == requirement.key and parts[1] == requirement.version:
            return path
    return None


def download_pure_wheels(
    requirements: Sequence[str], directory: Path, *, dependencies: bool = False
) -> None:
    """Put pure-Python wheels of ``requirements`` that install in Pyodide into ``directory``.

    ``pip download`` fetches them from the package index (pip's own cache
    keeps a second call quick); with ``dependencies``, the wheels of what pip
    resolves they need as well.  Raises :class:`CommandError` with pip's last
    line when one has no such wheel.
    """
    directory.mkdir(parents=True, exist_ok=True)
    # Only wheels Pyodide's Python can use: a py3-none-any wheel or nothing.
    completed = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet",
         *(() if dependencies else ("--no-deps",)),
         "--only-binary=:all:", "--platform", "any", "--implementation", "py",
         "--abi", "none", "--python-version", PYODIDE_PYTHON,
         "--dest", str(directory), *requirements],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    if completed.returncode != 0:
        raise CommandError(
            f"no pure-Python wheel of {', '.join(requirements)} to install in Pyodide "
            f"(pip download: {_last_line(completed.stderr)})"
        )


def _download(requirement: _Requirement, directory: Path) -> Path:
    """A pure-Python wheel of ``requirement`` from the package index, via pip."""
    download_pure_wheels([str(requirement)], directory)
    wheel = _cached_wheel(requirement, directory)
    if wheel is None:
        raise CommandError(
            f"no pure-Python wheel of {requirement} to install in Pyodide (pip download left none)"
        )
    return wheel


def _always_required(wheel: Path) -> list[str]:
    """Names of the distributions ``wheel`` requires without a marker (so always)."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next((n for n in archive.namelist() if n.endswith(".dist-info/METADATA")), None)
        if metadata is None:
            return []
        text = archive.read(metadata).decode("utf-8", "replace")
    names = []
    for line in text.split("\n\n", 1)[0].splitlines():
        if line.lower().startswith("requires-dist:"):
            value = line.split(":", 1)[1]
            if ";" in value:
                continue  # conditional: an extra, a Python version, a platform
            match = _NAME.match(value)
            if match:
                names.append(match.group(1))
    return names


def dependency_wheels(
    requirements: list[str], directory: Path, explicit: tuple[str, ...] = ()
) -> list[Path]:
    """Pure-Python wheels of ``requirements`` and what they always require.

    Versions are the ones installed in this Python unless pinned with
    ``NAME==VERSION``; wheels are taken from ``directory`` when there and
    downloaded into it otherwise.  ``explicit`` names are already in the list,
    so they are not looked up again as dependencies.
    """
    wheels: list[Path] = []
    seen: set[str] = {_normalize(name) for name in explicit}
    pending = [_requirement(text) for text in requirements]
    done: set[str] = set()
    while pending:
        requirement = pending.pop(0)
        if requirement.key in done:
            continue
        done.add(requirement.key)
        seen.add(requirement.key)
        wheel = _cached_wheel(requirement, directory) or _download(requirement, directory)
        wheels.append(wheel)
        for name in _always_required(wheel):
            if _normalize(name) in seen:
                continue
            seen.add(_normalize(name))
            try:
                pending.append(_Requirement(name, importlib.metadata.version(name)))
            except importlib.metadata.PackageNotFoundError:
                raise CommandError(
                    f"{requirement.name} needs {name}, which is not installed in this Python: "
                    f"add --with {name}==VERSION"
                ) from None
    return wheels


def build_netshim_wheel(directory: Path) -> Path:
    """netshim's own pure-Python wheel, from the files of the package running now.

    That is what a wheel of this checkout (or of the installed netshim)
    holds: the ``netshim`` package and a ``.dist-info`` naming its version.
    """
    package = Path(__file__).resolve().parent
    try:
        version = importlib.metadata.version("netshim")
    except importlib.metadata.PackageNotFoundError:
        version = "0+local"
    wheel = directory / f"netshim-{version}-py3-none-any.whl"
    info = f"netshim-{version}.dist-info"
    records: list[str] = []

    def add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
        archive.writestr(name, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        records.append(f"{name},sha256={digest},{len(data)}")

    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(package.rglob("*")):
            relative = path.relative_to(package.parent)
            if path.is_dir() or "__pycache__" in relative.parts or path.suffix == ".pyc":
                continue
            add(archive, relative.as_posix(), path.read_bytes())
        metadata = f"Metadata-Version: 2.1\nName: netshim\nVersion: {version}\n"
        add(archive, f"{info}/METADATA", metadata.encode())
        add(
            archive,
            f"{info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: netshim pyodide\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n",
        )
        records.append(f"{info}/RECORD,,")
        archive.writestr(f"{info}/RECORD", "\n".join(records) + "\n")
    return wheel


async def run_in_pyodide(job: Any) -> int:
    """Inside Pyodide: run the script ``job`` describes; its exit status.

    ``job`` holds ``script`` (its path, for tracebacks), ``source``, ``argv``
    and ``via`` (a stack URL or ``None``).  Called by ``_pyodide/run.mjs``.
    """
    import ast
    import inspect
    import types

    import netshim

    from ._run import _exit_code

    if hasattr(job, "to_py"):
        job = job.to_py()
    if job.get("via"):
        try:
            netshim.install(netshim.stack_from_url(job["via"]))
        except (ValueError, TypeError, OSError) as exc:
            print(f"{PROGRAM}: --via: {exc}", file=sys.stderr)
            return 2
    sys.argv = list(job["argv"])
    module = types.ModuleType("__main__")
    module.__file__ = job["script"]
    sys.modules["__main__"] = module
    try:
        code = compile(job["source"], job["script"], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(code, module.__dict__)
        if inspect.isawaitable(result):
            await result
    except SystemExit as exc:
        return _exit_code(exc)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        return 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
    return 0
