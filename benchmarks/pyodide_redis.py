"""Redis GET/SET round trips per second from Pyodide vs CPython, through the same gateway.

One real redis-server and one netshim gateway (CPython, Wisp on 127.0.0.1)
serve three clients in turn, each running redis-py asyncio, one SET and one
GET per round, ``ROUNDS`` rounds:

* **direct**: CPython to redis-server over the kernel's loopback (baseline);
* **cpython-wisp**: CPython with ``netshim.install(WispStack, mode="loop")``;
* **pyodide-wisp**: the same code inside Pyodide under Node (pinned npm
  package), its WebSocket JavaScript's.

    python benchmarks/pyodide_redis.py [--rounds N]

Prints round trips per second and ratios against the direct baseline.
Needs redis-server, Node and ``npm ci`` in tests/peers/pyodide.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "pyodide"))

import pyodide_support  # noqa: E402 - found through the path set just above

ROUNDS = 2000


async def redis_rounds(port: int, rounds: int) -> float:
    """Round trips per second of SET+GET pairs with redis-py asyncio."""
    import redis.asyncio

    client = redis.asyncio.Redis(host="127.0.0.1", port=port)
    await client.ping()
    start = time.perf_counter()
    for number in range(rounds):
        await client.set("netshim:counter", number)
        await client.get("netshim:counter")
    elapsed = time.perf_counter() - start
    await client.aclose()
    return 2 * rounds / elapsed


async def through_wisp(url: str, port: int, rounds: int) -> float:
    import netshim
    from netshim.stacks import WispStack

    stack = WispStack(url)
    netshim.install(stack, mode="loop")
    try:
        return await redis_rounds(port, rounds)
    finally:
        netshim.uninstall()
        await stack.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    rounds = parser.parse_args().rounds
    wheels = [
        pyodide_support.build_netshim_wheel(Path(tempfile.mkdtemp())),
        *pyodide_support.dependency_wheels(),
        *pyodide_support.dependency_wheels(pyodide_support.CLIENT_LIBRARIES),
    ]
    with (
        pyodide_support.redis_server() as port,
        pyodide_support.http_server(b"unused") as http_url,
        pyodide_support.wisp_gateway() as url,
    ):
        direct = asyncio.run(redis_rounds(port, rounds))
        cpython = asyncio.run(through_wisp(url, port, rounds))
        completed = pyodide_support.run_in_pyodide(
            "wisp_clients.py",
            wheels,
            env={
                "NETSHIM_WISP_URL": url,
                "NETSHIM_REDIS_PORT": str(port),
                "NETSHIM_HTTP_URL": http_url,
                "NETSHIM_ROUNDS": str(rounds),
            },
            timeout=600,
        )
        if completed.returncode != 0:
            sys.exit(f"Pyodide run failed:\n{completed.stdout}\n{completed.stderr}")
        pyodide = pyodide_support.json.loads(completed.stdout.splitlines()[-1])[
            "round_trips_per_second"
        ]
    print(f"{rounds} SET+GET rounds, redis-py asyncio")
    print(f"direct (kernel loopback)   {direct:10.0f} round trips/s")
    print(
        f"CPython via gateway (Wisp) {cpython:10.0f} round trips/s  {cpython / direct:.2f}x direct"
    )
    print(
        f"Pyodide via gateway (Wisp) {pyodide:10.0f} round trips/s  {pyodide / direct:.2f}x direct,"
        f" {pyodide / cpython:.2f}x CPython via gateway"
    )


if __name__ == "__main__":
    main()
