"""Gateway benchmarks: one Wisp client, three ways to the same targets, in one run.

    python benchmarks/gateway.py [--quick]

The same Node client (tests/peers/node/wisp_client.mjs, after ``npm ci`` there)
moves the same transfers over plain kernel TCP to the target (the baseline),
as Wisp v2 streams through our gateway (``python -m netshim gateway``, on the
host network), and as Wisp v2 streams through the wisp-js server
(tests/peers/node/wisp_server.mjs).  Each server runs in a process of its
own, the targets in this one.  The client makes and hashes its upload before
the clock starts, in every mode.

It prints MiB/s and the ratio to direct loopback for one download stream, one
upload stream and 16 parallel download streams (repeated; every run's streams
are checked by length and SHA-256, and a run that does not finish in time
counts as stalled), and the median time to open a stream and get its first
(only) byte back.  Then the peak resident memory of both servers.  Targets from the issue: >= 0.5x
of direct loopback, no stalled or truncated stream, gateway memory under 64 MiB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "gateway"))

from gateway_helpers import NODE_PEERS, BulkTarget, _free_port, bulk_target  # noqa: E402

MIB = 1 << 20
NODE = shutil.which("node") or "node"


class StalledError(Exception):
    """The client did not finish in time."""


async def node(plan: dict[str, object], limit: float) -> dict[str, object]:
    command = [NODE, str(NODE_PEERS / "wisp_client.mjs"), json.dumps(plan)]
    try:
        with anyio.fail_after(limit):
            result = await anyio.run_process(command)
    except TimeoutError:
        raise StalledError from None
    output: dict[str, object] = json.loads(result.stdout)
    return output


@asynccontextmanager
async def wisp_js_server() -> AsyncIterator[tuple[str, int, int]]:
    """The wisp-js server in Node: (host, port, pid)."""
    command = [NODE, str(NODE_PEERS / "wisp_server.mjs"), json.dumps({"version": 2})]
    async with await anyio.open_process(command) as process:
        assert process.stdout is not None
        line = b""
        while b"\n" not in line:
            line += await process.stdout.receive()
        port = int(json.loads(line)["port"])
        try:
            yield "127.0.0.1", port, process.pid
        finally:
            process.kill()


@asynccontextmanager
async def netshim_gateway() -> AsyncIterator[tuple[str, int, int]]:
    """Our gateway from the command line: (host, port, pid)."""
    port = _free_port("127.0.0.1")
    command = [
        *(sys.executable, "-m", "netshim", "gateway", "--port", str(port)),
        *("--allow", "127.0.0.1", "--log-level", "WARNING"),
    ]
    async with await anyio.open_process(command, cwd=ROOT) as process:
        with anyio.fail_after(20):
            while True:
                try:
                    probe = await anyio.connect_tcp("127.0.0.1", port)
                except OSError:
                    await anyio.sleep(0.05)
                    continue
                await probe.aclose()
                break
        try:
            yield "127.0.0.1", port, process.pid
        finally:
            process.kill()


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Bench:
    def __init__(self, target: BulkTarget, urls: dict[str, str]) -> None:
        self.target = target
        self.urls = urls

    def plan(
        self, mode: str, streams: list[dict[str, int]], sequential: bool = False
    ) -> dict[str, object]:
        host, port = self.target.address
        specs = [{"type": "tcp", "host": host, "port": port, **s} for s in streams]
        plan: dict[str, object] = {"mode": "tcp" if mode == "direct" else "wisp", "version": 2}
        plan["streams"] = specs
        plan["sequential"] = sequential
        if mode != "direct":
            plan["url"] = self.urls[mode]
        return plan

    def bad_streams(self, streams: list[dict[str, int]], result: dict[str, object]) -> int:
        """Streams that lost bytes or whose bytes differ from what the target sent."""
        bad = 0
        for spec, got in zip(streams, result["streams"], strict=True):  # type: ignore[call-overload]
            if got["received"] != spec["download"]:
                bad += 1
                continue
            try:
                sent = self.target.find(got["up"])
            except AssertionError:
                bad += 1
                continue
            bad += got["down"] != sent.down_sha
        return bad

    async def throughput(self, name: str, streams: list[dict[str, int]], repeats: int) -> None:
        total = sum(s["upload"] + s["download"] for s in streams) / MIB
        best = dict.fromkeys(self.modes(), 0.0)
        bad = dict.fromkeys(self.modes(), 0)
        stalled = dict.fromkeys(self.modes(), 0)
        for _ in range(repeats):
            for mode in best:
                # Distinct uploads per stream let the target's records tell them apart.
                self.target.transfers.clear()
                try:
                    result = await node(self.plan(mode, streams), limit=120)
                except StalledError:
                    stalled[mode] += 1
                    continue
                elapsed = float(result["elapsed_ms"]) / 1000  # type: ignore[arg-type]
                best[mode] = max(best[mode], total / elapsed)
                bad[mode] += self.bad_streams(streams, result)
        direct = best["direct"]
        print(f"{name} ({repeats} runs)")
        for mode, rate in best.items():
            ratio = f"{rate / direct:5.2f}x" if direct else "  -  "
            print(
                f"    {mode:<10} {rate:8.1f} MiB/s   {ratio}   "
                f"truncated or corrupt streams {bad[mode]}   stalled runs {stalled[mode]}"
            )

    async def latency(self, count: int) -> None:
        streams = [{"upload": 1, "download": 1}] * count
        print(f"connect latency: open a stream, send 17 bytes, get 1 byte and CLOSE ({count}x)")
        for mode in self.modes():
            result = await node(self.plan(mode, streams, sequential=True), limit=60)
            times = [float(s["ms"]) for s in result["streams"]]  # type: ignore[attr-defined]
            print(
                f"    {mode:<10} median {statistics.median(times):6.2f} ms"
                f"   p90 {statistics.quantiles(times, n=10)[-1]:6.2f} ms"
            )

    def modes(self) -> list[str]:
        return ["direct", *self.urls]


async def main(quick: bool) -> None:
    size = 32 * MIB if quick else 256 * MIB
    repeats = 1 if quick else 3
    parallel_runs = 3 if quick else 20
    async with (
        bulk_target() as target,
        netshim_gateway() as (host, port, pid),
        wisp_js_server() as (js_host, js_port, js_pid),
    ):
        urls = {"gateway": f"ws://{host}:{port}/", "wisp-js": f"ws://{js_host}:{js_port}/"}
        bench = Bench(target, urls)
        print(f"wisp-js client, Wisp v2; {size // MIB} MiB per single stream, best of {repeats}")
        await bench.throughput("download, 1 stream", [{"upload": 0, "download": size}], repeats)
        await bench.throughput("upload, 1 stream", [{"upload": size, "download": 0}], repeats)
        parallel = [{"upload": 8 + i, "download": size // 16} for i in range(16)]
        await bench.throughput("download, 16 parallel streams", parallel, parallel_runs)
        await bench.latency(50 if quick else 200)
        ours, theirs = peak_rss_mib(pid), peak_rss_mib(js_pid)
    print(f"peak resident memory: gateway {ours:.0f} MiB, wisp-js server {theirs:.0f} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 MiB, fewer repeats")
    anyio.run(main, parser.parse_args().quick)
