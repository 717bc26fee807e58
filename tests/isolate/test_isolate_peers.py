"""C clients and other runtimes under ``--isolate``: psql and psycopg (libpq), Node's net.

These are exactly what ``netshim.install()`` cannot reach: libpq opens its own
sockets, and node is another program.  Each runs confined, once on the host
network and once through a real ``netshim gateway`` process over Wisp, whose
metrics must show the connection; a destination the policy refuses never sees
one.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import urllib.request
from collections.abc import Iterator

import anyio
import pytest
from isolate_support import confined, isolation_available  # noqa: F401
from postgres_cluster import postgres_cluster

from netshim import WispStack
from netshim.policy import Policy
from netshim.testing import require_peer

pytestmark = [
    pytest.mark.peer("netns"),
    pytest.mark.anyio,
    pytest.mark.usefixtures("isolation_available"),
]

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "gateway"))
from gateway_process import gateway_process  # noqa: E402


@pytest.fixture(scope="module")
def postgres_port() -> Iterator[int]:
    with postgres_cluster() as port:
        yield port


def streams_through(http: tuple[str, int]) -> float:
    """Wisp streams the gateway has ended so far, from its /metrics."""
    text = urllib.request.urlopen(f"http://{http[0]}:{http[1]}/metrics", timeout=10).read()
    total = 0.0
    for line in text.decode().splitlines():
        if line.startswith('netshim_gateway_streams_closed_total{protocol="wisp"'):
            total += float(line.rsplit(" ", 1)[1])
    return total


PSYCOPG = """
import sys, psycopg
with psycopg.connect(f"host=10.0.2.2 port={sys.argv[1]} user=postgres dbname=postgres") as db:
    print(db.execute("select 6 * 7").fetchone()[0])
"""


async def test_psql_and_psycopg_on_the_host_network(postgres_port: int) -> None:
    psql = require_peer("psql")
    policy = Policy(allow=[f"127.0.0.1:{postgres_port}"])
    with anyio.fail_after(60):
        status, output = await confined(
            [psql, "-h", "10.0.2.2", "-p", str(postgres_port), "-U", "postgres", "-At",
             "-c", "select 40 + 2"],
            policy=policy,
        )  # fmt: skip
    assert (status, output.strip()) == (0, "42")
    with anyio.fail_after(60):
        status, output = await confined(
            [sys.executable, "-c", PSYCOPG, str(postgres_port)], policy=policy
        )
    assert (status, output.strip()) == (0, "42")


async def test_psql_refused_by_the_default_policy_never_reaches_the_server(
    postgres_port: int,
) -> None:
    psql = require_peer("psql")
    with anyio.fail_after(60):
        status, _ = await confined(
            [psql, "-h", "10.0.2.2", "-p", str(postgres_port), "-U", "postgres", "-c", "select 1"]
        )
    assert status == 2  # psql: could not connect


async def test_psql_and_node_through_a_wisp_gateway(postgres_port: int) -> None:
    psql = require_peer("psql")
    node = require_peer("node")
    listener = socket.create_server(("127.0.0.1", 0))
    node_port = listener.getsockname()[1]

    def greet() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"hello node\n")

    threading.Thread(target=greet, daemon=True).start()
    with gateway_process("--allow", f"127.0.0.1:{postgres_port}", "--allow",
                         f"127.0.0.1:{node_port}") as gateway:  # fmt: skip
        stack = WispStack(f"ws://{gateway.http[0]}:{gateway.http[1]}/")
        before = streams_through(gateway.http)
        with anyio.fail_after(60):
            status, output = await confined(
                [psql, "-h", "10.0.2.2", "-p", str(postgres_port), "-U", "postgres", "-At",
                 "-c", "select 40 + 2"],
                stack=stack,
                policy=Policy(allow_private=True),
            )  # fmt: skip
        assert (status, output.strip()) == (0, "42")
        script = (
            "const s = require('net').connect(process.argv[1], '10.0.2.2');"
            "s.on('data', d => process.stdout.write(d)); s.on('end', () => s.end());"
        )
        with anyio.fail_after(60):
            status, output = await confined(
                [node, "-e", script, str(node_port)], stack=stack, policy=Policy(allow_private=True)
            )
        assert (status, output) == (0, "hello node\n")
        # The gateway counts a stream when it ends, a moment after the program.
        for _ in range(100):
            if streams_through(gateway.http) >= before + 2:
                break
            await anyio.sleep(0.1)
        assert streams_through(gateway.http) >= before + 2
        await stack.aclose()
    listener.close()
