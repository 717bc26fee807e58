"""``netshim run``: unmodified programs in subprocesses reach an HTTP server through our gateway.

The gateway runs in the test's event loop on loopback, allowed to reach
127.0.0.1 only; the programs fetch over Wisp.  A fetch of 127.0.0.2, which
the gateway refuses, proves that their traffic goes through the gateway and
not straight to the kernel.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from tunnel_helpers import running_gateway

pytestmark = pytest.mark.anyio

FETCH = """\
import errno
import socket
import sys
import urllib.request

assert type(socket.socket(socket.AF_INET, socket.SOCK_STREAM)).__name__ == "ShimSocket"
with urllib.request.urlopen(sys.argv[1], timeout=10) as response:
    print(response.status, response.read().decode())
try:
    urllib.request.urlopen(sys.argv[1].replace("127.0.0.1", "127.0.0.2"), timeout=10)
except OSError as exc:
    # Straight to the kernel this would be ECONNREFUSED (nothing listens
    # on 127.0.0.2); the gateway's policy refusal arrives as EACCES, with
    # the gateway's reason in the message.
    reason = getattr(exc, "reason", exc)
    print("blocked:", reason.errno == errno.EACCES, "0x48 BLOCKED" in str(reason))
sys.exit(int(sys.argv[2]))
"""

OUTCOMES = """\
import sys

if sys.argv[1] == "raise":
    raise RuntimeError("the program failed on purpose")
if sys.argv[1] != "return":
    sys.exit(int(sys.argv[1]))
"""


@pytest.fixture
def anyio_backend() -> str:
    # The programs run in their own processes: the test's loop only hosts
    # the gateway, so one backend is enough.
    return "asyncio"


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def programs(tmp_path: Path) -> Path:
    (tmp_path / "fetch.py").write_text(FETCH)
    (tmp_path / "outcomes.py").write_text(OUTCOMES)
    return tmp_path


async def netshim_run(
    *arguments: str, cwd: Path, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run ``python -m netshim run ARGUMENTS`` and return (status, stdout, stderr)."""
    with anyio.fail_after(60):
        result = await anyio.run_process(
            [sys.executable, "-m", "netshim", "run", *arguments],
            cwd=cwd,
            env=env,
            check=False,
        )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_program_fetches_through_the_gateway(programs: Path, http_url: str) -> None:
    async with running_gateway() as gateway:
        host, port = gateway.addresses["http"]
        via = f"wisp://{host}:{port}/"
        url = f"{http_url}/child"
        status, out, err = await netshim_run(
            "--via", via, "--", sys.executable, "fetch.py", url, "0", cwd=programs
        )
        assert (status, out) == (0, "200 hello from /child\nblocked: True True\n"), err
        status, out, err = await netshim_run(
            "--via", via, "-m", "fetch", f"{http_url}/module", "5", cwd=programs
        )
        assert (status, out) == (5, "200 hello from /module\nblocked: True True\n"), err


async def test_without_via_the_environment_names_the_stack(programs: Path, http_url: str) -> None:
    async with running_gateway() as gateway:
        host, port = gateway.addresses["http"]
        env = {**os.environ, "NETSHIM_STACK": f"wisp://{host}:{port}/"}
        status, out, err = await netshim_run(
            "--", sys.executable, "fetch.py", f"{http_url}/env", "0", cwd=programs, env=env
        )
        assert (status, out) == (0, "200 hello from /env\nblocked: True True\n"), err


@pytest.mark.parametrize("form", ["program", "module", "script"])
@pytest.mark.parametrize(("outcome", "expected"), [("return", 0), ("3", 3), ("raise", 1)])
async def test_exit_status_is_passed_through(
    programs: Path, form: str, outcome: str, expected: int
) -> None:
    command = {
        "program": ["--", sys.executable, "outcomes.py"],
        "module": ["-m", "outcomes"],
        "script": ["outcomes.py"],
    }[form]
    status, _out, err = await netshim_run("--via", "host:", *command, outcome, cwd=programs)
    assert status == expected, err
    if outcome == "raise":
        assert "RuntimeError: the program failed on purpose" in err
        assert err.count("Traceback") == 1


async def test_bad_command_lines(programs: Path) -> None:
    status, _out, err = await netshim_run("--via", "gopher://x", "--", "true", cwd=programs)
    assert status == 2
    assert "scheme 'gopher'" in err
    status, _out, err = await netshim_run("--via", cwd=programs)
    assert (status, "--via needs a URL" in err) == (2, True)
    status, _out, err = await netshim_run("--", "no-such-program-here", cwd=programs)
    assert status == 127
    assert "no-such-program-here" in err


async def test_a_stack_that_cannot_be_built_stops_the_child(programs: Path) -> None:
    # A bad NETSHIM_STACK must not let the program run unpatched.
    env = {**os.environ, "NETSHIM_STACK": "gopher://x"}
    status, out, err = await netshim_run(
        "--", sys.executable, "-c", "print('ran')", cwd=programs, env=env
    )
    assert (status, out) == (1, "")
    assert "netshim run: cannot install netshim" in err
    assert "gopher" in err


def test_other_subcommands_still_parse() -> None:
    from netshim.__main__ import main

    with pytest.raises(SystemExit) as exited:
        main(["gateway", "--help"])
    assert exited.value.code == 0
    assert main(["run", "--help"]) == 0


def test_the_program_takes_the_place_of_netshim_run() -> None:
    # A supervisor that stops ``netshim run`` stops the program: it is the
    # same process, so nothing is left running.
    import signal

    program = "import os, time; print(os.getpid(), flush=True); time.sleep(60)"
    process = subprocess.Popen(
        [sys.executable, "-m", "netshim", "run", "--", sys.executable, "-c", program],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert int(process.stdout.readline()) == process.pid
        process.terminate()
        assert process.wait(timeout=10) == -signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
