"""Gateway benchmarks: wisp-js's client through our gateway against direct kernel loopback.

    python benchmarks/gateway.py [--quick]

The same Node client (tests/peers/node/wisp_client.mjs, after ``npm ci`` there)
moves the same bulk transfers two ways in one run: over plain TCP to the
target (the baseline) and as Wisp v2 streams through the gateway on the host
network (the client makes and hashes its upload before the clock starts, in
both modes).  It prints MiB/s for each and the ratio, for one download stream, one
upload stream and 16 parallel download streams, checks every stream's SHA-256
and counts truncated streams, and reports the gateway process's peak resident
memory.  Targets from the issue: >= 0.5x of direct loopback, no truncated
stream, memory under 64 MiB.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "gateway"))

from gateway_helpers import NODE_PEERS, bulk_target, running_gateway  # noqa: E402

from netshim.gateway import GatewayConfig  # noqa: E402
from netshim.policy import Policy  # noqa: E402

MIB = 1 << 20


async def node(plan: dict[str, object]) -> dict[str, object]:
    command = [
        shutil.which("node") or "node",
        str(NODE_PEERS / "wisp_client.mjs"),
        json.dumps(plan),
    ]
    result = await anyio.run_process(command)
    output: dict[str, object] = json.loads(result.stdout)
    return output


async def measure(name: str, streams: list[dict[str, int]], repeats: int) -> None:
    config = GatewayConfig(policy=Policy(allow=["127.0.0.1"]))
    async with bulk_target() as target, running_gateway(config) as gateway:
        host, port = target.address
        specs = [{"type": "tcp", "host": host, "port": port, **s} for s in streams]
        total = sum(s["upload"] + s["download"] for s in streams) / MIB
        best = {"tcp": 0.0, "wisp": 0.0}
        truncated = 0
        for _ in range(repeats):
            for mode in ("tcp", "wisp"):
                plan = {
                    "mode": mode,
                    "url": f"ws://{gateway.addresses['http'][0]}:{gateway.addresses['http'][1]}/",
                    "version": 2,
                    "streams": specs,
                }
                result = await node(plan)
                elapsed = float(result["elapsed_ms"]) / 1000  # type: ignore[arg-type]
                best[mode] = max(best[mode], total / elapsed)
                for spec, stream in zip(specs, result["streams"], strict=True):  # type: ignore[call-overload]
                    if stream["received"] != spec["download"]:
                        truncated += 1
    ratio = best["wisp"] / best["tcp"]
    print(
        f"{name:<28} direct {best['tcp']:8.1f} MiB/s   gateway {best['wisp']:8.1f} MiB/s"
        f"   ratio {ratio:5.2f}x   truncated {truncated}"
    )


async def main(quick: bool) -> None:
    size = 32 * MIB if quick else 256 * MIB
    repeats = 1 if quick else 3
    print(f"wisp-js client, Wisp v2, {size // MIB} MiB per single stream, best of {repeats}")
    await measure("download, 1 stream", [{"upload": 0, "download": size}], repeats)
    await measure("upload, 1 stream", [{"upload": size, "download": 0}], repeats)
    parallel = [{"upload": 0, "download": size // 16}] * 16
    await measure("download, 16 streams", parallel, repeats)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"benchmark process (gateway + targets) peak resident memory: {peak:.0f} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 MiB, one repeat")
    anyio.run(main, parser.parse_args().quick)
