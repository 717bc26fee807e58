"""``netshim pyodide serve``: a Python console in the browser whose sockets go through a gateway.

::

    netshim pyodide serve [--port 8000] [--via URL] [--with NAME[==VERSION]] ...
                          [gateway options: --allow RULE, --allow-private ...]

One HTTP server on ``--host:--port`` serves the console page, the pinned npm
Pyodide's files and the wheels (netshim's own, its dependencies, those named
with ``--with``), the same ones ``netshim pyodide run`` uses, from the same
cache: the page loads nothing from elsewhere, so it works offline.  In the
page, netshim is installed on ``stack_from_url(URL)`` before the first
prompt, so ``asyncio.open_connection``, redis-py or httpx typed there go
through the gateway.

Without ``--via`` the gateway runs in this process on the same port (a
WebSocket upgrade is the gateway's, a plain GET is the page's: one origin,
so the page needs no URL and no cross-origin exceptions); the gateway's
policy options apply to it.  With ``--via URL`` the page talks to that
gateway instead (it must be reachable from the browser) and only pages are
served here.  Ctrl-C stops the server.

Inside Pyodide, :func:`start_console` installs netshim and :func:`run_cell`
runs what was typed, as ``runPythonAsync`` does (top-level ``await`` allowed),
printing the value of a last expression and a traceback cut down to the
typed code.
"""

from __future__ import annotations

import argparse
import functools
import json
import mimetypes
import signal
import sys
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "ConsolePages",
    "add_serve_arguments",
    "interrupt",
    "run_cell",
    "serve",
    "start_console",
]

#: The port the console is served on unless told otherwise (the gateway's own
#: default, 8080, is left to a gateway of its own).
DEFAULT_PORT = 8000
PAGE_DIRECTORY = Path(__file__).resolve().parent / "_pyodide"
PROGRAM = "netshim pyodide serve"
# Browsers compile WebAssembly while it downloads only when it comes with
# this type, and load modules only with a JavaScript type.
CONTENT_TYPES = {
    ".wasm": "application/wasm",
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".json": "application/json",
    ".map": "application/json",
    ".html": "text/html; charset=utf-8",
    ".zip": "application/zip",
    ".whl": "application/zip",
}


def add_serve_arguments(
    commands: Any, add_install_options: Callable[[argparse.ArgumentParser], None]
) -> None:
    """The ``serve`` subcommand of ``netshim pyodide``."""
    from ._gateway_cli import add_arguments as add_gateway_arguments

    parser = commands.add_parser(
        "serve",
        help="serve a Python console in the browser (Pyodide) whose sockets go through a gateway",
        description=(
            "Serve a page with a Python console running in Pyodide, with netshim installed "
            "on a gateway: asyncio.open_connection, redis-py or httpx typed there go through "
            "it. Pyodide's files and the wheels are served from here (works offline). "
            "Without --via the gateway runs in this process on the same port, with the "
            "gateway options below. Ctrl-C stops."
        ),
    )
    parser.add_argument(
        "--via",
        metavar="URL",
        help="use this gateway instead of starting one: ws://host:port/, wisp://..., "
        "websockify://... (reached by the browser, so it must be reachable from there)",
    )
    add_install_options(parser)
    gateway = parser.add_argument_group(
        "gateway (without --via)",
        "the gateway started in this process; --host and --port are also the page's "
        f"(default 127.0.0.1:{DEFAULT_PORT}, 0 picks a free port)",
    )
    add_gateway_arguments(gateway)
    parser.set_defaults(log_level="WARNING")
    actions = gateway._group_actions
    for action in actions:
        # The gateway's own help names its own defaults.
        if action.dest == "port":
            action.help = f"port of the page and the gateway (default {DEFAULT_PORT}, 0: any)"
        elif action.dest == "log_level":
            action.help = "the gateway's DEBUG, INFO, WARNING (default WARNING)"
    parser.set_defaults(gateway_options=[action.dest for action in actions])


def serve(arguments: argparse.Namespace) -> int:
    """Carry out ``netshim pyodide serve``; the exit status."""
    from ._pyodide_cli import (
        DEPENDENCIES,
        CommandError,
        _cache_directory,
        _check_url,
        _find_pyodide,
        build_netshim_wheel,
        dependency_wheels,
    )

    try:
        if arguments.via is not None:
            _check_url(arguments.via)
            _refuse_gateway_options(arguments)
        cache = _cache_directory(arguments.cache_dir)
        wheels = dependency_wheels(
            [*DEPENDENCIES, *arguments.requirements], cache / "wheels", explicit=DEPENDENCIES
        )
        pyodide = _find_pyodide(arguments.pyodide_dir, cache)
    except CommandError as exc:
        print(f"{PROGRAM}: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="netshim-pyodide-serve-") as scratch:
        own = build_netshim_wheel(Path(scratch))
        pages = ConsolePages(pyodide, [own, *wheels], via=arguments.via)
        if arguments.via is not None:
            return _serve_pages_only(pages, arguments)
        return _serve_with_gateway(pages, arguments)


def _refuse_gateway_options(arguments: argparse.Namespace) -> None:
    from ._pyodide_cli import CommandError

    for name in arguments.gateway_options:
        if name in ("host", "port", "log_level"):
            continue
        if getattr(arguments, name, None) not in (None, False):
            option = "--" + name.replace("_", "-")
            raise CommandError(
                f"{option} is for the gateway this command starts; with --via the gateway "
                "is elsewhere: give it there"
            )


def _announce(url: str, gateway: str) -> None:
    print(f"{PROGRAM}: open {url}", flush=True)
    print(f"{PROGRAM}: sockets go through {gateway}; Ctrl-C stops", flush=True)


def _page_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else "[::1]" if host == "::" else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def _serve_with_gateway(pages: ConsolePages, arguments: argparse.Namespace) -> int:
    import logging

    import anyio

    from ._gateway_cli import backend_for, config_from

    try:
        from .gateway import Gateway
    except ImportError as exc:
        print(
            f"{PROGRAM}: {(exc.name or str(exc)).split('.')[0]} is not installed; install the "
            "gateway's dependencies with: pip install 'netshim[gateway]' (or give --via URL)",
            file=sys.stderr,
        )
        return 2
    if arguments.port is None:
        arguments.port = DEFAULT_PORT
    logging.basicConfig(
        level=getattr(logging, str(arguments.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        config, listen = config_from(arguments)
    except (ValueError, OSError) as exc:
        print(f"{PROGRAM}: {exc}", file=sys.stderr)
        return 2
    gateway = Gateway(config=config, pages=pages)
    backend, options = backend_for(listen.pop("event_loop"))

    async def main() -> None:
        async with anyio.create_task_group() as group:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                addresses = await group.start(functools.partial(gateway.serve, **listen))
                host, port = addresses["http"][:2]
                url = _page_url(host, port)
                _announce(url, f"the gateway in this process, {'ws' + url[4:]}")
                async for _ in signals:
                    break
                group.cancel_scope.cancel()

    try:
        anyio.run(main, backend=backend, backend_options=options)
    except KeyboardInterrupt:
        pass  # Ctrl-C before the signal handler was in place
    except BaseException as exc:
        # The task groups wrap it: a port in use, an address not ours.
        error = _first_os_error(exc)
        if error is None:
            raise
        where = f"{listen['host']}:{listen['port']}"
        print(f"{PROGRAM}: cannot listen on {where}: {error.strerror or error}", file=sys.stderr)
        return 2
    print(f"{PROGRAM}: stopped", file=sys.stderr)
    return 0


def _first_os_error(exc: BaseException) -> OSError | None:
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_os_error(inner)
            if found is not None:
                return found
    return None


def _serve_pages_only(pages: ConsolePages, arguments: argparse.Namespace) -> int:
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            page = pages(urllib.parse.urlsplit(self.path).path)
            status, content_type, body = page or (404, "text/plain", b"not found\n")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    host = arguments.host or "127.0.0.1"
    port = DEFAULT_PORT if arguments.port is None else arguments.port
    try:
        server = http.server.ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        print(f"{PROGRAM}: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    server.daemon_threads = True
    _announce(_page_url(host, server.server_address[1]), arguments.via)
    # SIGTERM stops as Ctrl-C does.
    with _stop_on_sigterm():
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    print(f"{PROGRAM}: stopped", file=sys.stderr)
    return 0


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class ConsolePages:
    """The console's files by URL path: the gateway's ``pages`` function.

    ``/`` is the console, ``/pyodide/NAME`` a file of the npm package,
    ``/wheels/NAME`` a wheel, ``/config.json`` what the page needs to know
    (the wheels' names and the ``--via`` URL, if any).  Anything else is
    ``None`` (the gateway answers 404).  Files are read once and kept: the
    whole set is about 15 MB, most of it Pyodide's.
    """

    def __init__(self, pyodide: Path, wheels: list[Path], via: str | None = None) -> None:
        self.pyodide = pyodide
        self.wheels = {wheel.name: wheel for wheel in wheels}
        config = {"wheels": list(self.wheels), "via": via}
        self._config = json.dumps(config).encode()
        self._cache: dict[Path, bytes] = {}
        self._lock = threading.Lock()

    def __call__(self, path: str) -> tuple[int, str, bytes] | None:
        path = urllib.parse.unquote(path)
        if path in ("/", "/index.html"):
            return self._file(PAGE_DIRECTORY / "console.html")
        if path == "/console.mjs":
            return self._file(PAGE_DIRECTORY / "console.mjs")
        if path == "/config.json":
            return 200, CONTENT_TYPES[".json"], self._config
        directory, _, name = path.rpartition("/")
        # One name, no subdirectories and no way up: only files really there.
        if not name or name.startswith(".") or "\\" in name:
            return None
        if directory == "/pyodide":
            return self._file(self.pyodide / name)
        if directory == "/wheels" and name in self.wheels:
            return self._file(self.wheels[name])
        return None

    def _file(self, path: Path) -> tuple[int, str, bytes] | None:
        with self._lock:
            data = self._cache.get(path)
        if data is None:
            try:
                data = path.read_bytes()
            except OSError:
                return None
            with self._lock:
                self._cache[path] = data
        content_type = CONTENT_TYPES.get(path.suffix) or (
            mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        )
        return 200, content_type, data


# -- inside Pyodide ---------------------------------------------------------

_namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
_cells = 0
_running: Any = None  # the asyncio.Task of the entry that runs now


async def start_console(via: str) -> None:
    """Install netshim on ``stack_from_url(via)`` and print the console's greeting."""
    import netshim

    netshim.install(netshim.stack_from_url(via))
    version = sys.version.split()[0]
    print(
        f"Python {version} in Pyodide, with netshim {netshim.__version__}: "
        f"connections go through {via}\n"
        "Top-level await works: reader, writer = await asyncio.open_connection(host, port)"
    )
    _namespace["asyncio"] = __import__("asyncio")
    _namespace["netshim"] = netshim


async def run_cell(source: str) -> None:
    """Run what was typed as ``runPythonAsync`` does; print a last value or the traceback.

    The code runs in a task of its own, which :func:`interrupt` cancels (the
    console's Stop button): awaiting code stops with ``KeyboardInterrupt``
    printed, as Ctrl-C stops the terminal's REPL.
    """
    import asyncio
    import linecache
    import traceback

    from pyodide.code import eval_code_async  # type: ignore[import-not-found]

    global _cells, _running
    _cells += 1
    filename = f"<console-{_cells}>"
    # So that tracebacks show the typed lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    running = asyncio.ensure_future(eval_code_async(source, _namespace, filename=filename))
    _running = running
    try:
        result = await running
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: the console stays
        cancelled = isinstance(exc, asyncio.CancelledError)
        current = asyncio.current_task()
        if cancelled and current is not None and current.cancelling():
            raise  # the console itself is being cancelled
        if cancelled and running.cancelling():
            sys.stderr.write("KeyboardInterrupt\n")  # interrupt() asked for it
        else:
            trace = exc.__traceback__
            # Only the typed code's frames and below, not the console's own.
            while trace is not None and not trace.tb_frame.f_code.co_filename.startswith(
                "<console-"
            ):
                trace = trace.tb_next
            sys.stderr.write("".join(traceback.format_exception(type(exc), exc, trace)))
    else:
        if result is not None:
            _namespace["_"] = result
            print(repr(result))
    finally:
        _running = None
        for stream in (sys.stdout, sys.stderr):
            stream.flush()


def interrupt() -> bool:
    """Cancel the entry that is running, if any; whether there was one."""
    if _running is None or _running.done():
        return False
    _running.cancel()
    return True
