"""Gateway benchmarks: our gateway vs the wisp-js and wisp-server-python servers, one client.

    python benchmarks/gateway.py [--quick] [--size MIB] [--parallel-size MIB] [--runs N]

The common client is our WispStack (benchmarks/wisp_bench_client.py), in a
process of its own for every measurement; the baseline is the same client
over plain kernel TCP (HostStack), measured in the same run.  The servers are
our gateway (``python -m netshim gateway``), the wisp-js server
(tests/peers/node/wisp_server.mjs, after ``npm ci`` there) and
wisp-server-python 0.9.0 (its own venv with websockets 12.0, built as the
tunnel tests build it), and the bulk target (benchmarks/bulk_target.py) runs
in a process of its own too.  Every stream is checked against the target's
record: length and SHA-256 of both directions.

Printed, each with its ratio to direct loopback:

1. one stream downloading, one uploading (best of ``--repeats``), MiB/s;
2. 16 parallel download streams, ``--runs`` times (median and best MiB/s),
   counting stalled streams (no progress for ``--stall`` seconds, then
   aborted) and truncated or corrupt ones, with each server's peak resident
   memory sampled during those runs;
3. the same parallel runs with the client pinned to one CPU that a busy-loop
   process is pinned to as well;
4. connect latency: open a stream, send 16 bytes, get 1 byte and the close
   (median of ``--connects``), through our gateway with the client waiting
   for its stream confirmation (as a socket's connect waits) and without;
5. the wisp-js Node client (tests/peers/node/wisp_client.mjs) through our
   gateway and the wisp-js server, single stream both ways.

Targets from the issue: single stream and 16 parallel streams >= 0.5x of
direct loopback, no stalled or truncated stream, gateway memory < 64 MiB.
This is a measurement, not a test: it asserts nothing about timings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "tunnels"))

from test_wisp_python_peer import _build as build_wisp_python  # noqa: E402
from test_wisp_python_peer import wisp_python_server  # noqa: E402
from tunnel_helpers import NODE_PEERS, BulkTarget, Transfer, free_port, wait_for_port  # noqa: E402
from tunnels import node, target_process, wisp_js_server  # noqa: E402

MIB = 1 << 20
CLIENT = ROOT / "benchmarks" / "wisp_bench_client.py"
# A download stream's upload: random, so that each stream has an up_sha of its
# own by which its record at the target is found among parallel streams.
TAG = 16


@dataclass
class Server:
    """A Wisp server under test: its URL (None: direct TCP) and process id."""

    name: str
    url: str | None
    pid: int | None
    peak_rss: float = 0.0
    # The client accepts v2 stream confirmation (only our gateway offers it).
    confirm: bool = True


@dataclass
class Tally:
    """What happened to the streams of one mode over several runs."""

    rates: list[float] = field(default_factory=list)
    stalled: int = 0
    truncated: int = 0
    streams: int = 0


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` now, MiB (0 if it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def listening_pid(port: int) -> int | None:
    """The process with a socket listening on 127.0.0.1:``port``, found through /proc.

    The peer helpers yield URLs only; the socket's inode leads to the
    server's process without guessing from command lines.
    """
    wanted = f"0100007F:{port:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":  # 0A: LISTEN
            inodes.add(f"socket:[{fields[9]}]")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(entry.name)
        except OSError:
            continue
    return None


@contextmanager
def busy_cpu(cpu: int) -> Iterator[None]:
    """A process spinning on ``cpu`` for the duration."""
    code = f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"
    spinner = subprocess.Popen([sys.executable, "-c", code])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


class Bench:
    """Runs plans through the client process and checks them against the target."""

    def __init__(self, target: BulkTarget, stall: float) -> None:
        self.target = target
        self.stall = stall

    async def run(
        self,
        server: Server,
        streams: list[dict[str, int]],
        *,
        sequential: bool = False,
        cpu: int | None = None,
    ) -> tuple[float, list[dict[str, Any]]]:
        """Seconds for all ``streams`` and their results, each with ``verdict`` set."""
        host, port = self.target.address
        plan = {
            "url": server.url,
            "host": host,
            "port": port,
            "streams": streams,
            "sequential": sequential,
            "stall": self.stall,
            "cpu": cpu,
            "confirm": server.confirm,
        }
        result = json.loads(
            (await anyio.run_process([sys.executable, str(CLIENT), json.dumps(plan)])).stdout
        )
        results: list[dict[str, Any]] = result["streams"]
        for spec, got in zip(streams, results, strict=True):
            got["verdict"] = await self.verdict(spec, got)
        return float(result["elapsed"]), results

    async def verdict(self, spec: dict[str, int], got: dict[str, Any]) -> str:
        """``ok``, ``stalled`` or ``truncated`` (short, corrupt or failed) for one stream."""
        if got["status"] == "stalled":
            return "stalled"
        if got["status"] != "ok":
            return "truncated"
        record = await self.record(got["up"])
        if record is None or record.up_bytes != spec["upload"]:
            return "truncated"
        return "ok" if record.down_sha == got["down"] else "truncated"

    async def record(self, up_sha: str) -> Transfer | None:
        """The target's record of the transfer whose upload hashed to ``up_sha``."""
        # The target reports a transfer after sending its last byte; the
        # report can trail the client's end of stream by a little.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for record in self.target.transfers:
                if record.up_sha == up_sha:
                    return record
            await anyio.sleep(0.005)
        return None

    async def single(
        self, servers: list[Server], size: int, repeats: int
    ) -> dict[str, dict[str, float]]:
        """Best MiB/s of one download and one upload stream per server."""
        best: dict[str, dict[str, float]] = {s.name: {"down": 0.0, "up": 0.0} for s in servers}
        for direction, spec in (
            ("down", {"upload": TAG, "download": size}),
            ("up", {"upload": size, "download": 0}),
        ):
            # Servers alternate within each repeat, so a burst of load on the
            # machine hits all of them rather than one.
            for _ in range(repeats):
                for server in servers:
                    self.target.transfers.clear()
                    elapsed, (got,) = await self.run(server, [spec])
                    if got["verdict"] != "ok":
                        print(f"    {server.name} {direction}: stream {got['verdict']}")
                        continue
                    rate = size / MIB / elapsed
                    best[server.name][direction] = max(best[server.name][direction], rate)
        return best

    async def parallel(
        self, servers: list[Server], size: int, runs: int, cpu: int | None
    ) -> dict[str, Tally]:
        """``runs`` rounds of 16 parallel downloads per server, memory sampled meanwhile."""
        streams = [{"upload": TAG, "download": size // 16} for _ in range(16)]
        tallies = {s.name: Tally() for s in servers}
        for _ in range(runs):
            for server in servers:
                self.target.transfers.clear()
                tally = tallies[server.name]
                async with anyio.create_task_group() as group:
                    if server.pid is not None:
                        group.start_soon(self.sample_memory, server)
                    elapsed, results = await self.run(server, streams, cpu=cpu)
                    group.cancel_scope.cancel()
                verdicts = [r["verdict"] for r in results]
                tally.streams += len(verdicts)
                tally.stalled += verdicts.count("stalled")
                tally.truncated += verdicts.count("truncated")
                if verdicts.count("ok") == len(verdicts):
                    tally.rates.append(size / MIB / elapsed)
        return tallies

    @staticmethod
    async def sample_memory(server: Server) -> None:
        """Keep ``server.peak_rss`` at the highest resident memory seen."""
        assert server.pid is not None
        while True:
            server.peak_rss = max(server.peak_rss, rss_mib(server.pid))
            await anyio.sleep(0.02)

    async def latency(self, servers: list[Server], count: int) -> dict[str, float]:
        """Median milliseconds from connect to the reply's close, per server."""
        medians = {}
        for server in servers:
            self.target.transfers.clear()
            _, results = await self.run(
                server, [{"upload": TAG, "download": 1}] * count, sequential=True
            )
            bad = sum(r["verdict"] != "ok" for r in results)
            if bad:
                print(f"    {server.name}: {bad} of {count} latency streams failed")
            medians[server.name] = statistics.median(r["seconds"] for r in results) * 1000
        return medians


async def node_rates(
    target: BulkTarget, servers: list[Server], size: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Best MiB/s of the wisp-js Node client, one stream each way, checked by SHA-256."""
    best: dict[str, dict[str, float]] = {s.name: {"down": 0.0, "up": 0.0} for s in servers}
    host, port = target.address
    for direction, upload, download in (("down", 0, size), ("up", size, 0)):
        for _ in range(repeats):
            for server in servers:
                plan: dict[str, object] = {
                    "mode": "tcp" if server.url is None else "wisp",
                    "version": 2,
                    "streams": [
                        {"type": "tcp", "host": host, "port": port}
                        | {"upload": upload, "download": download}
                    ],
                }
                if server.url is not None:
                    # wisp-js takes ws:// URLs only.
                    plan["url"] = server.url.replace("wisp://", "ws://", 1)
                target.transfers.clear()
                command = [node(), str(NODE_PEERS / "wisp_client.mjs"), json.dumps(plan)]
                with anyio.move_on_after(120):
                    result = json.loads((await anyio.run_process(command)).stdout)
                    got = result["streams"][0]
                    bench = Bench(target, 0)
                    record = await bench.record(got["up"])
                    if (
                        record is not None
                        and got["received"] == download
                        and record.down_sha == got["down"]
                    ):
                        rate = size / MIB / (float(result["elapsed_ms"]) / 1000)
                        best[server.name][direction] = max(best[server.name][direction], rate)
                        continue
                print(f"    wisp-js client via {server.name} {direction}: stalled or truncated")
    return best


@asynccontextmanager
async def gateway() -> AsyncIterator[Server]:
    """Our gateway from the command line, allowed to reach the loopback target."""
    port = free_port()
    command = [sys.executable, "-m", "netshim", "gateway", "--port", str(port)]
    command += ["--allow", "127.0.0.1", "--log-level", "WARNING"]
    async with await anyio.open_process(command, cwd=ROOT, stdout=None, stderr=None) as process:
        try:
            await wait_for_port("127.0.0.1", port)
            yield Server("gateway", f"wisp://127.0.0.1:{port}/", process.pid)
        finally:
            process.kill()


def ratio(value: float, base: float) -> str:
    """``value / base`` as ``0.00x``, or a dash without a baseline."""
    return f"{value / base:5.2f}x" if base else "   - "


def print_parallel(tallies: dict[str, Tally], servers: list[Server], memory: bool) -> None:
    """One line per server: median and best rate, ratios, bad streams, peak memory."""
    base = statistics.median(tallies["direct"].rates) if tallies["direct"].rates else 0.0
    for server in servers:
        t = tallies[server.name]
        median = statistics.median(t.rates) if t.rates else 0.0
        best = max(t.rates, default=0.0)
        line = (
            f"    {server.name:<12} median {median:7.1f} MiB/s {ratio(median, base)}"
            f"  best {best:7.1f}  stalled {t.stalled}/{t.streams}"
            f"  truncated {t.truncated}/{t.streams}"
        )
        if memory and server.pid is not None:
            line += f"  peak RSS {server.peak_rss:.0f} MiB"
        print(line)


async def main(args: argparse.Namespace) -> None:
    """Start the target and the three servers, then measure everything in one run."""
    size, parallel_size = args.size * MIB, args.parallel_size * MIB
    venv = build_wisp_python()
    cpu = max(os.sched_getaffinity(0))
    async with (
        target_process() as target,
        gateway() as ours,
        wisp_js_server() as js_url,
        wisp_python_server(str(venv / "bin" / "python")) as py_url,
    ):
        servers = [
            Server("direct", None, None),
            ours,
            Server("wisp-js", js_url, listening_pid(int(js_url.rsplit(":", 1)[1].strip("/")))),
            Server("wisp-python", py_url, listening_pid(int(py_url.rsplit(":", 1)[1].strip("/")))),
        ]
        bench = Bench(target, args.stall)
        print(
            f"WispStack client in its own process; direct = the same client over kernel TCP."
            f"\nsingle stream: {args.size} MiB, best of {args.repeats}"
        )
        single = await bench.single(servers, size, args.repeats)
        for direction in ("down", "up"):
            print(f"  {direction}load, 1 stream")
            for server in servers:
                rate = single[server.name][direction]
                base = single["direct"][direction]
                print(f"    {server.name:<12} {rate:7.1f} MiB/s {ratio(rate, base)}")
        print(
            f"16 parallel download streams, {args.parallel_size} MiB in all, {args.runs} runs"
            f" (stall: {args.stall:g} s without progress)"
        )
        tallies = await bench.parallel(servers, parallel_size, args.runs, None)
        print_parallel(tallies, servers, memory=True)
        print(f"  the same, client pinned to CPU {cpu} with a busy loop pinned there too")
        for server in servers:
            server.peak_rss = 0.0
        with busy_cpu(cpu):
            pinned = await bench.parallel(servers, parallel_size, args.runs, cpu)
        print_parallel(pinned, servers, memory=True)
        print(f"connect latency: 16 bytes up, 1 byte back, then close (median of {args.connects})")
        # With stream confirmation (Wisp v2, offered by our gateway only)
        # connect returns once the destination accepted, as a socket's does:
        # one more round trip to the server than the peers make the client
        # wait.  "gateway-noconf" is the same gateway with the client declining it.
        unconfirmed = Server("gateway-noconf", ours.url, ours.pid, confirm=False)
        latency_servers = [*servers[:2], unconfirmed, *servers[2:]]
        latency = await bench.latency(latency_servers, args.connects)
        for server in latency_servers:
            value = latency[server.name]
            print(f"    {server.name:<12} {value:6.2f} ms {ratio(value, latency['direct'])}")
        print(f"wisp-js Node client, {args.size} MiB single stream, best of {args.repeats}")
        node_servers = servers[:3]
        rates = await node_rates(target, node_servers, size, args.repeats)
        for direction in ("down", "up"):
            print(f"  {direction}load, 1 stream")
            for server in node_servers:
                rate = rates[server.name][direction]
                base = rates["direct"][direction]
                print(f"    {server.name:<12} {rate:7.1f} MiB/s {ratio(rate, base)}")


def arguments() -> argparse.Namespace:
    """The command line, with ``--quick`` shrinking the defaults."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 MiB streams, 3 parallel runs")
    parser.add_argument("--size", type=int, help="MiB per single stream (256)")
    parser.add_argument("--parallel-size", type=int, help="MiB over 16 streams (256)")
    parser.add_argument("--runs", type=int, help="parallel runs per server (20)")
    parser.add_argument("--repeats", type=int, help="single-stream repeats (3)")
    parser.add_argument("--connects", type=int, help="latency samples (200)")
    parser.add_argument("--stall", type=float, default=10.0, help="seconds without progress")
    args = parser.parse_args()
    defaults = (32, 32, 3, 1, 50) if args.quick else (256, 256, 20, 3, 200)
    for name, default in zip(
        ("size", "parallel_size", "runs", "repeats", "connects"), defaults, strict=True
    ):
        if getattr(args, name) is None:
            setattr(args, name, default)
    return args


if __name__ == "__main__":
    anyio.run(main, arguments())
