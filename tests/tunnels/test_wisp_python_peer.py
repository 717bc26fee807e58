"""WispStack against wisp-server-python (PyPI ``wisp-python``), a Wisp v1 server.

The server runs from a virtual environment of its own under /tmp with
``websockets==12.0``: with websockets 17 it hangs on parallel downloads (a
bug of the server's).  The environment is built once and reused while its
pins still import; under ``NETSHIM_REQUIRE_PEERS=1`` a failure to build it
fails the tests instead of skipping them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from tunnel_helpers import (
    bulk_exchange,
    bulk_target,
    free_port,
    run_checks,
    udp_echo,
    wait_for_port,
)

from netshim import WispStack
from netshim.testing import REQUIRE_PEERS_VARIABLE, require_peer

pytestmark = pytest.mark.anyio

VENV = Path("/tmp/netshim-wisp-python-venv")
PINS = ("wisp-python==0.9.0", "websockets==12.0")
CHECK = "import wisp.server.cli, websockets; assert websockets.__version__ == '12.0'"
# The CLI forks one server process per CPU (SO_REUSEPORT); without that
# support it serves in its own process, which the test can stop by its id.
SERVE = "from wisp.server import cli, net; net.reuse_port_supported = lambda: False; cli.main()"


def _usable(venv: Path) -> bool:
    python = venv / "bin" / "python"
    return python.exists() and subprocess.run([python, "-c", CHECK], check=False).returncode == 0


def _build() -> Path:
    if _usable(VENV):
        return VENV
    # Built beside the final place and renamed into it, so that two test
    # sessions building at once never use a half-installed environment.
    staging = VENV.with_name(f"{VENV.name}.{os.getpid()}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", staging], check=True)
    subprocess.run(
        [staging / "bin" / "python", "-m", "pip", "install", "-q", *PINS],
        check=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        timeout=300,
    )
    try:
        staging.rename(VENV)
    except OSError:
        subprocess.run(["rm", "-rf", staging], check=False)
    if not _usable(VENV):
        raise RuntimeError(f"{VENV} does not import wisp-python with websockets 12.0")
    return VENV


@pytest.fixture(scope="session")
def wisp_python() -> str:
    """The Python of the server's environment."""
    try:
        venv = _build()
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        message = f"cannot build the wisp-server-python environment: {exc}"
        if os.environ.get(REQUIRE_PEERS_VARIABLE) == "1":
            pytest.fail(f"{message} ({REQUIRE_PEERS_VARIABLE}=1)")
        pytest.skip(message)
    return require_peer(str(venv / "bin" / "python"))


@asynccontextmanager
async def wisp_python_server(python: str) -> AsyncIterator[str]:
    """wisp-server-python on a free loopback port; yields its ``wisp://`` URL."""
    port = free_port()
    command = [python, "-c", SERVE, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--allow-loopback", "--log-level", "warning"]
    async with await anyio.open_process(command, stdout=None, stderr=None) as process:
        try:
            await wait_for_port("127.0.0.1", port)
            yield f"wisp://127.0.0.1:{port}/"
        finally:
            process.kill()


async def test_conformance_against_wisp_python(wisp_python: str) -> None:
    async with wisp_python_server(wisp_python) as url:
        stack = WispStack(url)
        try:
            await stack.connect()
            # A v1 server: it ignores the subprotocol and starts with CONTINUE.
            assert stack.negotiated_version == 1
            assert stack.motd is None
            # tcp_bulk_integrity ends its upload with send_eof (a CLOSE right
            # behind the DATA); wisp-server-python then sometimes closes the
            # target socket before writing the DATA it still holds, so the
            # target gets a truncated upload (seen: 550,000 of 1,048,576
            # bytes, on a loaded machine), as with wisp-js.
            await run_checks(stack, ["tcp_echo_both_ways", "tcp_closed_resource", "bad_ports"])
        finally:
            await stack.aclose()


@pytest.mark.parametrize(("upload", "download"), [(0, 16 << 20), (16 << 20, 0), (3 << 20, 5 << 20)])
async def test_wisp_python_transfer_sha256(wisp_python: str, upload: int, download: int) -> None:
    async with bulk_target() as target, wisp_python_server(wisp_python) as url:
        stack = WispStack(url)
        try:
            with anyio.fail_after(60):
                stream = await stack.connect_tcp(*target.address)
                async with stream:
                    up, down, received = await bulk_exchange(stream, upload, download)
                    # Closed only once the target has it all: see the conformance test.
                    while not target.transfers:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
        finally:
            await stack.aclose()
        record = target.transfers[-1]
        assert received == download
        assert (record.up_sha, record.down_sha, record.up_bytes) == (up, down, upload)


async def test_wisp_python_parallel_downloads(wisp_python: str) -> None:
    # The case that hangs the server under websockets 17.
    sizes = [(0, 4 << 20), (0, 4 << 20), (0, 2 << 20), (1 << 20, 3 << 20), (17, 123_457)]
    async with bulk_target() as target, wisp_python_server(wisp_python) as url:
        stack = WispStack(url)
        results: list[tuple[str, str, int]] = []

        async def one(upload: int, download: int) -> None:
            stream = await stack.connect_tcp(*target.address)
            async with stream:
                results.append(await bulk_exchange(stream, upload, download))

        try:
            with anyio.fail_after(60):
                async with anyio.create_task_group() as group:
                    for upload, download in sizes:
                        group.start_soon(one, upload, download)
        finally:
            await stack.aclose()
    assert sorted(r[2] for r in results) == sorted(d for _, d in sizes)
    for up_sha, down_sha, received in results:
        match = [t for t in target.transfers if t.up_sha == up_sha and t.down_sha == down_sha]
        assert match, "a transfer was corrupted on the way"
        assert match[0].down_bytes == received


async def test_wisp_python_udp(wisp_python: str) -> None:
    async with udp_echo() as echo, wisp_python_server(wisp_python) as url:
        stack = WispStack(url)
        try:
            sock = await stack.open_udp()
            async with sock:
                for size in (1, 1200, 9000):
                    payload = os.urandom(size)
                    await sock.send(payload, echo)
                    with anyio.fail_after(5):
                        data, source = await sock.receive()
                    assert (data, source) == (payload, echo)
        finally:
            await stack.aclose()
