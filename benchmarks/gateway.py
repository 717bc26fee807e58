"""Gateway benchmark: our gateway, the peer Wisp servers and a C relay against direct loopback.

    python benchmarks/gateway.py [--quick] [--size MIB] [--parallel-size MIB] [--runs N]
                                 [--repeats N] [--connects N] [--only NAMES] [--loops LOOPS]
                                 [--compare LABEL=PATH ...]

What is measured, each row a (server, event loop, client):

* servers: ``direct`` (no server: the client connects to the target), ``socat``
  (a plain C TCP relay, ``socat -b 262144 TCP-LISTEN:...,reuseaddr,fork
  TCP:...``, for scale; skipped when socat is not installed), our gateway
  (``python -m netshim gateway``) on each ``--event-loop`` (asyncio, uvloop,
  trio), the wisp-js server (tests/peers/node/wisp_server.mjs) and
  wisp-server-python 0.9.0 (its own venv with websockets 12.0, built as
  tests/tunnels/test_wisp_python_peer.py builds it, in one process);
* clients, each in a process of its own: ``socket`` (benchmarks/
  socket_bench_client.py: blocking sockets, 4 MiB ``sendall``, ``recv_into``;
  TCP only, the fastest client, for the baseline's ceiling), ``WispStack``
  (benchmarks/wisp_bench_client.py: our WispStack, or HostStack over plain
  TCP, on asyncio) and ``wisp-js`` (tests/peers/node/bench_client.mjs: the
  wisp-js 0.5.0 client library, or node:net over plain TCP), a client that is
  not ours.  Every ratio is to the same client's ``direct`` row.
* ``--compare before=/path/to/checkout`` adds rows named ``before``: our
  gateway run from that source tree (another commit, e.g. from ``git
  worktree add``) on the same loops, so that a change is measured against
  the code before it in one run, the rows alternating within each repeat.

The target (``benchmarks/bulk_target.py --pattern``, a process of its own) is
built not to be the bottleneck: a thread per stream, blocking sockets,
downloads sent from a prebuilt buffer.  Integrity is checked without hashing
(benchmarks/bench_pattern.py): every byte of a stream is a function of its
offset and the stream's tag, and whoever receives it (the client for
downloads, the target for uploads) compares each piece read with one
``memcmp``; the target also reports every stream's byte counts.  A wrong
byte, a short stream or a missing report is counted, printed, and makes the
benchmark exit with status 1 after its tables; timings are not asserted.

Measured per row:

1. one stream downloading ``--size`` MiB, one uploading (best of
   ``--repeats``, rows alternating within each repeat), MiB/s;
2. 16 parallel download streams, ``--parallel-size`` MiB in all, ``--runs``
   times (median MiB/s), counting stalled streams (no progress for
   ``--stall`` seconds, then aborted) and truncated or corrupt ones;
3. connect latency: connect, send 16 bytes, get the first byte of the 16
   sent back (median of ``--connects``, one after another); WispStack waits
   for the v2 stream confirmation our gateway sends (as a socket's connect
   waits), which the peers do not offer, and is measured again declining it
   (``--repeats 0 --runs 0`` measures connects alone, in seconds);
4. CPU seconds per GiB moved of the server (with its children: socat forks
   one per connection), the client and the target: utime + stime (+ cutime +
   cstime) from /proc/PID/stat right before and right after the timed
   interval (each client connects, prints ready, waits for the go, moves its
   streams, prints its result and waits again; medians over the runs); and,
   per connect, the server's CPU milliseconds;
5. the server's peak resident memory (VmHWM: every row has a server process
   of its own, started for it; for socat the listening process only).

The machine's load averages are printed at the start and the end: other work
on the machine moves the rates.  CPU per GiB moves much less, and it says
which process bounds a row: the gateway, the peer servers and the Wisp
clients each move their bytes on one thread, so a row cannot go faster than
1 / (the largest of their figures) GiB/s, nor, on 2 cores, than 2 / (the sum
of the server's, the client's and the target's).

The baseline's own ceiling (2-core VM, loopback, 256 MiB streams, best of 3,
16 streams median of 10; two full runs, the machine shared, load averages
1-2 from other work): target to client directly with the fastest client
(``socket``), 2,487-4,558 MiB/s down, 3,411-3,995 up, 2,417-3,072 with 16
streams, the target spending 0.12-0.16 CPU s/GiB sending and 0.2-0.3
receiving; through socat with 256 KiB blocks, 1,679-2,526 down, 2,219-2,468
up, 1,152-1,915 with 16 streams, socat spending 0.2-0.4 CPU s/GiB.  Our
WispStack client reaches about 2,100 MiB/s directly (0.5 CPU s/GiB) and the
wisp-js client 1,150 down and 3,270 up.  The old baseline, the tests' hashing
target (``bulk_target.py`` without ``--pattern``), capped "direct" at about
340 MiB/s.

Known failures this target exposes: the wisp-js 0.5.0 server loses or
reorders the tail of a download when the destination sends fast and closes
(its TCP socket's ``close`` empties the queue of up to 128 reads not yet
forwarded, src/server/net.mjs, and reads still waiting for room land after
the gap), so its rows report corrupt and stalled streams, with both clients,
and the benchmark exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
NODE_PEERS = ROOT / "tests" / "peers" / "node"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "tunnels"))

MIB = 1 << 20
GIB = 1 << 30
TICKS = os.sysconf("SC_CLK_TCK")
LOOPS = ("asyncio", "uvloop", "trio")
CLIENTS = ("socket", "WispStack", "wisp-js")
# The clients that speak Wisp (``socket`` speaks TCP only).
WISP_CLIENTS = ("WispStack", "wisp-js")
PARALLEL = 16
# Connect latency: bytes each way.
PING = 16


# -- processes


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return found


def cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid``, its reaped children and its live descendants.

    utime + stime + cutime + cstime of /proc/PID/stat (all its threads), and
    the same for every live child: a child's time moves into cutime only
    when it is reaped.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Fields after the command name, which may hold spaces: state is [0],
    # utime, stime, cutime and cstime are [11:15].
    fields = stat.rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / TICKS + sum(cpu_seconds(c) for c in children(pid))


def peak_rss_mib(pid: int) -> float:
    """The peak resident memory (VmHWM) of ``pid``, MiB; 0 if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[Any], limit: float = 30) -> None:
    """Wait until something accepts on 127.0.0.1:``port``; fail if ``process`` died."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {limit:g} s: {process.args!r}")


def node() -> str:
    """The ``node`` program, after checking that the Node peers are installed."""
    program = shutil.which("node")
    if program is None or not (NODE_PEERS / "node_modules" / "@mercuryworkshop").is_dir():
        sys.exit(f"needs node and 'npm ci' in {NODE_PEERS}")
    return program


@contextmanager
def started(command: list[str], **options: Any) -> Iterator[subprocess.Popen[str]]:
    """``command`` running for the duration, then terminated (killed after 5 s)."""
    options.setdefault("cwd", ROOT)
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, text=True, **options)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Target:
    """The pattern target's process and the reports it prints, by stream tag."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self.process = process
        self.port = int(json.loads(process.stdout.readline())["port"])
        self.reports: dict[int, dict[str, Any]] = {}
        self.arrived = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            report = json.loads(line)
            with self.arrived:
                self.reports[report["tag"]] = report
                self.arrived.notify_all()

    def report(self, tag: int, limit: float) -> dict[str, Any] | None:
        """The target's report of stream ``tag`` (it trails the client's end a little)."""
        with self.arrived:
            self.arrived.wait_for(lambda: tag in self.reports, timeout=limit)
            return self.reports.pop(tag, None)


# -- servers


@dataclass
class Server:
    """Where a row's client connects: Wisp at ``url``, or TCP at ``port`` (target or relay)."""

    name: str
    loop: str
    port: int
    url: str | None = None
    process: subprocess.Popen[str] | None = None


def start_gateway(
    stack: ExitStack, loop: str, name: str = "gateway", tree: Path | None = None
) -> Server:
    """Our gateway on ``loop``; from the source tree ``tree`` (a checkout) when given."""
    port = free_port()
    command = [sys.executable, "-m", "netshim", "gateway", "--port", str(port)]
    command += ["--allow", "127.0.0.1", "--log-level", "WARNING", "--event-loop", loop]
    options: dict[str, Any] = {}
    if tree is not None:
        options = {"cwd": tree, "env": {**os.environ, "PYTHONPATH": str(tree)}}
    process = stack.enter_context(started(command, **options))
    wait_for_port(port, process)
    return Server(name, loop, port, f"wisp://127.0.0.1:{port}/", process)


def start_wisp_js(stack: ExitStack) -> Server:
    command = [node(), str(NODE_PEERS / "wisp_server.mjs"), "{}"]
    process = stack.enter_context(started(command, stdout=subprocess.PIPE))
    assert process.stdout is not None
    port = int(json.loads(process.stdout.readline())["port"])
    wait_for_port(port, process)
    return Server("wisp-js", "node", port, f"wisp://127.0.0.1:{port}/", process)


def start_wisp_python(stack: ExitStack) -> Server:
    from test_wisp_python_peer import SERVE
    from test_wisp_python_peer import _build as build_wisp_python

    python = build_wisp_python() / "bin" / "python"
    port = free_port()
    command = [str(python), "-c", SERVE, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--allow-loopback", "--log-level", "warning"]
    process = stack.enter_context(started(command))
    wait_for_port(port, process)
    return Server("wisp-python", "asyncio", port, f"wisp://127.0.0.1:{port}/", process)


def start_socat(stack: ExitStack, target: Target) -> Server:
    port = free_port()
    # fork: a process per connection; backlog: 16 connects at once (default 5).
    listen = f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,backlog=256"
    command = ["socat", "-b", "262144", listen, f"TCP:127.0.0.1:{target.port}"]
    process = stack.enter_context(started(command))
    wait_for_port(port, process)
    return Server("socat", "-", port, None, process)


# -- measurements


@dataclass
class Sample:
    """One client run: seconds for all its streams, bytes planned, CPU seconds by process."""

    seconds: float
    moved: int
    cpu: dict[str, float]
    ok: bool
    firsts: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.moved / MIB / self.seconds

    def per_gib(self, who: str) -> float:
        return self.cpu[who] / (self.moved / GIB)


@dataclass
class Row:
    """A (server, client) pair and what was measured of it."""

    server: Server
    client: str
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    stalled: int = 0
    truncated: int = 0
    corrupt: int = 0
    streams: int = 0
    rss: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.server.name}/{self.server.loop}/{self.client}"

    def ok(self, kind: str) -> list[Sample]:
        return [s for s in self.samples.get(kind, []) if s.ok]


class Bench:
    """Runs clients against rows and checks every stream against the target's report."""

    def __init__(
        self,
        target: Target,
        stall: float,
        *,
        host: str = "127.0.0.1",
        plan: dict[str, Any] | None = None,
    ) -> None:
        self.target = target
        self.stall = stall
        # Where the Wisp clients connect (the target's host), and what else
        # their plans carry (benchmarks/lan.py: a LAN to join).
        self.host = host
        self.plan = dict(plan or {})
        # Failed streams' descriptions, by row label.
        self.failures: dict[str, list[str]] = {}
        self.tags: set[int] = set()

    def tag(self) -> int:
        """A stream tag not used before in this run (below 2**48: a JavaScript number)."""
        while (tag := random.getrandbits(48)) in self.tags:
            pass
        self.tags.add(tag)
        return tag

    def command(self, row: Row, plan: dict[str, Any], confirm: bool) -> list[str]:
        """The client's command line for ``plan``."""
        server = row.server
        plan["port"] = self.target.port if server.url else server.port
        if row.client == "socket":
            return [sys.executable, str(BENCHMARKS / "socket_bench_client.py"), json.dumps(plan)]
        if row.client == "WispStack":
            plan |= {"url": server.url, "confirm": confirm}
            return [sys.executable, str(BENCHMARKS / "wisp_bench_client.py"), json.dumps(plan)]
        plan["mode"] = "wisp" if server.url else "tcp"
        if server.url:
            # wisp-js takes ws:// URLs only.
            plan |= {"url": server.url.replace("wisp://", "ws://", 1), "version": 2}
        return [node(), str(NODE_PEERS / "bench_client.mjs"), json.dumps(plan)]

    def snapshot(self, row: Row, client: int) -> dict[str, float]:
        """CPU seconds so far of the row's server, the client and the target."""
        server = row.server.process
        return {
            "server": cpu_seconds(server.pid) if server else 0.0,
            "client": cpu_seconds(client),
            "target": cpu_seconds(self.target.process.pid),
        }

    def run(
        self,
        row: Row,
        kind: str,
        specs: list[tuple[int, int]],
        *,
        sequential: bool = False,
        confirm: bool = True,
    ) -> None:
        """One client process moving ``specs`` ((upload, download) per stream) for ``row``."""
        streams = [{"tag": self.tag(), "upload": u, "download": d} for u, d in specs]
        plan = {"host": self.host, "streams": streams, "sequential": sequential, **self.plan}
        plan["stall"] = self.stall
        moved = sum(u + d for u, d in specs)
        process = subprocess.Popen(
            self.command(row, plan, confirm),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdin is not None
        assert process.stdout is not None
        # A backstop only: the clients' own watchdogs abort stalled streams.
        killer = threading.Timer(120 + moved / (5 * MIB) + 2 * len(specs), process.kill)
        killer.start()
        result: dict[str, Any] | None = None
        cpu: dict[str, float] = {}
        try:
            if json.loads(process.stdout.readline() or "{}").get("ready"):
                before = self.snapshot(row, process.pid)
                process.stdin.write("go\n")
                process.stdin.flush()
                line = process.stdout.readline()
                after = self.snapshot(row, process.pid)
                cpu = {who: after[who] - before[who] for who in after}
                result = json.loads(line) if line else None
            process.stdin.close()
            process.wait(30)
        except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
            print(f"    {row.label}: client failed: {exc!r}", file=sys.stderr)
        finally:
            killer.cancel()
            if process.poll() is None:
                process.kill()
                process.wait()
        got: list[dict[str, Any]] = [{"status": "no result"}] * len(streams)
        if result:
            got = result["streams"]
        verdicts = [self.verdict(row, spec, one) for spec, one in zip(streams, got, strict=True)]
        row.streams += len(verdicts)
        row.stalled += verdicts.count("stalled")
        row.truncated += verdicts.count("truncated")
        row.corrupt += verdicts.count("corrupt")
        if result is None:
            return
        firsts = [float(one["first"]) for one in got if one.get("first") is not None]
        ok = verdicts.count("ok") == len(verdicts)
        sample = Sample(float(result["elapsed"]), moved, cpu, ok, firsts)
        row.samples.setdefault(kind, []).append(sample)

    def verdict(self, row: Row, spec: dict[str, int], got: dict[str, Any]) -> str:
        """``ok``, ``stalled``, ``truncated`` or ``corrupt`` for one stream; failures noted."""
        tag = spec["tag"]
        report = self.target.report(tag, 5.0 if got.get("status") == "ok" else 0.5)
        problem = verdict = None
        if got.get("bad") is not None:
            verdict, problem = "corrupt", f"download wrong from byte {got['bad']}"
        elif report is not None and not report["up_ok"]:
            verdict, problem = "corrupt", "upload wrong at the target"
        elif got.get("status") == "stalled":
            verdict, problem = "stalled", "stalled"
        elif got.get("status") != "ok":
            verdict, problem = "truncated", f"client: {got.get('status')}"
        elif report is None:
            verdict, problem = "truncated", "the target never reported the stream"
        elif (report["up"], report["down"]) != (spec["upload"], spec["download"]):
            verdict = "truncated"
            problem = f"target got {report['up']} of {spec['upload']}, sent {report['down']}"
        elif report["error"]:
            verdict, problem = "truncated", f"target: {report['error']}"
        if problem is None:
            return "ok"
        message = f"stream {tag} ({spec['upload']} up, {spec['download']} down): {problem}"
        seen = self.failures.setdefault(row.label, [])
        seen.append(message)
        # Loud at once, but a few per row only: the summary at the end counts them all.
        if len(seen) <= 3:
            print(f"    INTEGRITY: {row.label}: {message}", file=sys.stderr, flush=True)
        return verdict or "truncated"


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def best_rate(row: Row | None, kind: str) -> float | None:
    return max((s.rate for s in row.ok(kind)), default=None) if row else None


def median_rate(row: Row | None, kind: str) -> float | None:
    return median([s.rate for s in row.ok(kind)]) if row else None


def per_gib(row: Row, kind: str, who: str) -> float | None:
    if who == "server" and row.server.process is None:
        return None
    return median([s.per_gib(who) for s in row.ok(kind)])


def cores(row: Row, kind: str) -> float | None:
    """How many CPUs the server, client and target kept busy together (median)."""
    return median([sum(s.cpu.values()) / s.seconds for s in row.ok(kind)])


def latency_ms(row: Row | None, kind: str = "latency") -> float | None:
    value = median([f for s in row.ok(kind) for f in s.firsts]) if row else None
    return None if value is None else value * 1000


def connect_cpu_ms(row: Row, who: str) -> float | None:
    if who == "server" and row.server.process is None:
        return None
    value = median([s.cpu[who] / len(s.firsts) for s in row.ok("latency") if s.firsts])
    return None if value is None else value * 1000


# -- output


def ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:5.2f}x" if value and base else "    - "


def fixed(value: float | None, width: int, digits: int) -> str:
    """``value`` formatted, or a dash for None (not applicable, or nothing measured)."""
    return f"{'-':>{width}}" if value is None else f"{value:{width}.{digits}f}"


def print_tables(rows: list[Row]) -> None:
    """The main table, then CPU per GiB of every measurement and process."""
    direct = {row.client: row for row in rows if row.server.name == "direct"}
    print(
        "\nMiB/s: 1 stream best of the repeats, 16 parallel median of the runs; x: ratio to"
        " the same client direct.\nCPU s/GiB: median over the 1-stream downloads."
        " stall/trunc/bad: of all the row's streams.  RSS: server's peak."
    )
    head = (
        f"{'server':<11} {'loop':<7} {'client':<9}  {'down MiB/s':>13}  {'up MiB/s':>13}"
        f"  {'srv s/GiB':>9} {'cli s/GiB':>9}  {'16-par MiB/s':>13}  {'stall/trunc/bad':>15}"
        f"  {'RSS MiB':>7}  {'connect ms':>12}"
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        base = direct.get(row.client)
        down, up, par = best_rate(row, "down"), best_rate(row, "up"), median_rate(row, "par")
        lat = latency_ms(row)
        counts = f"{row.stalled}/{row.truncated}/{row.corrupt} of {row.streams}"
        print(
            f"{row.server.name:<11} {row.server.loop:<7} {row.client:<9}"
            f"  {fixed(down, 6, 0)} {ratio(down, best_rate(base, 'down'))}"
            f"  {fixed(up, 6, 0)} {ratio(up, best_rate(base, 'up'))}"
            f"  {fixed(per_gib(row, 'down', 'server'), 9, 2)}"
            f" {fixed(per_gib(row, 'down', 'client'), 9, 2)}"
            f"  {fixed(par, 6, 0)} {ratio(par, median_rate(base, 'par'))}"
            f"  {counts:>15}  {fixed(row.rss or None, 7, 0)}"
            f"  {fixed(lat, 5, 2)} {ratio(lat, latency_ms(base))}"
        )
    failed = [row.label for row in rows if row.stalled + row.truncated + row.corrupt]
    if failed:
        print(
            f"Streams failed through {', '.join(failed)}: a run with a failed stream gives"
            " no rate (-); details on stderr."
        )
    print(
        "\nCPU seconds per GiB moved (median), by process: srv = server, cli = client,"
        " tgt = target;\ncores = CPUs kept busy by the three together (of 2);"
        " connect: CPU ms per connect (16 bytes each way)."
    )
    groups = ("1 down", "1 up", "16 par")
    head = f"{'':<29}" + "".join(f" | {name:<23}" for name in groups) + f" | {'connect ms':<11}"
    print(head)
    head = f"{'server':<11} {'loop':<7} {'client':<9}"
    head += f" | {'srv':>5} {'cli':>5} {'tgt':>5} {'cores':>5}" * len(groups)
    head += f" | {'srv':>5} {'cli':>5}"
    print(head)
    print("-" * len(head))
    for row in rows:
        line = f"{row.server.name:<11} {row.server.loop:<7} {row.client:<9}"
        for kind in ("down", "up", "par"):
            line += f" | {fixed(per_gib(row, kind, 'server'), 5, 2)}"
            line += f" {fixed(per_gib(row, kind, 'client'), 5, 2)}"
            line += f" {fixed(per_gib(row, kind, 'target'), 5, 2)} {fixed(cores(row, kind), 5, 2)}"
        line += f" | {fixed(connect_cpu_ms(row, 'server'), 5, 2)}"
        line += f" {fixed(connect_cpu_ms(row, 'client'), 5, 2)}"
        print(line)
    declined = [row for row in rows if row.samples.get("latency-nc")]
    if declined:
        print("\nWispStack connect latency, ms, stream confirmation declined (with it):")
        for row in declined:
            declined_ms = fixed(latency_ms(row, "latency-nc"), 5, 2)
            confirmed_ms = fixed(latency_ms(row), 5, 2)
            print(f"  {row.server.name:<11} {row.server.loop:<7} {declined_ms} ({confirmed_ms})")


def print_ceiling(rows: list[Row]) -> None:
    """The baseline's own ceiling: the fastest client direct, and the same through socat."""
    direct = [r for r in rows if r.server.name == "direct"]
    if not direct:
        return
    fastest = max(direct, key=lambda r: best_rate(r, "down") or 0.0)
    line = (
        f"\nBaseline ceiling: target -> {fastest.client} direct"
        f" {fixed(best_rate(fastest, 'down'), 0, 0)} MiB/s down,"
        f" {fixed(best_rate(fastest, 'up'), 0, 0)} up,"
        f" {fixed(median_rate(fastest, 'par'), 0, 0)} with 16 streams"
    )
    relay = [r for r in rows if r.server.name == "socat" and r.client == fastest.client]
    if relay:
        line += (
            f"; through socat -b 262144: {fixed(best_rate(relay[0], 'down'), 0, 0)} down,"
            f" {fixed(best_rate(relay[0], 'up'), 0, 0)} up,"
            f" {fixed(median_rate(relay[0], 'par'), 0, 0)} parallel"
        )
    print(line + " MiB/s.")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# -- the run


def make_rows(stack: ExitStack, target: Target, args: argparse.Namespace) -> list[Row]:
    """Every (server, client) row, each server process started for its row alone."""
    wanted = set(args.only.split(",")) if args.only else None

    def want(name: str) -> bool:
        return name == "direct" or wanted is None or name in wanted

    rows = [Row(Server("direct", "-", target.port), client) for client in CLIENTS]
    if want("socat"):
        if shutil.which("socat"):
            rows += [Row(start_socat(stack, target), client) for client in CLIENTS]
        else:
            print("socat is not installed (apt-get install socat): no relay rows")
    starters: list[tuple[str, Callable[[], Server]]] = [
        ("gateway", partial(start_gateway, stack, loop)) for loop in args.loops
    ]
    for label, tree in args.compare:
        # Rows of another checkout's gateway, measured alternately with ours.
        starters += [
            (label, partial(start_gateway, stack, loop, label, tree)) for loop in args.loops
        ]
    starters += [("wisp-js", partial(start_wisp_js, stack))]
    starters += [("wisp-python", partial(start_wisp_python, stack))]
    compared = {label for label, _ in args.compare}
    for name, start in starters:
        if want(name) or name in compared:
            rows += [Row(start(), client) for client in WISP_CLIENTS]
    return rows


def main(args: argparse.Namespace) -> int:
    """Start the target and every row's server, measure, print; 1 on any integrity failure."""
    size, parallel_size = args.size * MIB, args.parallel_size * MIB
    load_start = load()
    began = time.monotonic()
    print(f"load average at start: {load_start}  ({os.cpu_count()} CPUs)")
    with ExitStack() as stack:
        command = [sys.executable, str(BENCHMARKS / "bulk_target.py"), "--pattern"]
        target = Target(stack.enter_context(started(command, stdout=subprocess.PIPE)))
        rows = make_rows(stack, target, args)
        bench = Bench(target, args.stall)
        print(
            f"{len(rows)} rows; 1 stream {args.size} MiB x {args.repeats} each way;"
            f" {PARALLEL} parallel streams {args.parallel_size} MiB in all x {args.runs};"
            f" {args.connects} connects"
        )
        for kind, spec in (("down", (0, size)), ("up", (size, 0))):
            print(f"  1 stream {kind} ...", flush=True)
            # Rows alternate within each repeat, so that a burst of load on
            # the machine hits all of them rather than one.
            for _ in range(args.repeats):
                for row in rows:
                    bench.run(row, kind, [spec])
        print(f"  {PARALLEL} parallel streams ...", flush=True)
        for _ in range(args.runs):
            for row in rows:
                bench.run(row, "par", [(0, parallel_size // PARALLEL)] * PARALLEL)
        print("  connect latency ...", flush=True)
        for row in rows:
            bench.run(row, "latency", [(PING, PING)] * args.connects, sequential=True)
            if row.client == "WispStack" and row.server.url:
                # Our gateway offers v2 stream confirmation, the peers do not.
                specs = [(PING, PING)] * args.connects
                bench.run(row, "latency-nc", specs, sequential=True, confirm=False)
        for row in rows:
            if row.server.process is not None:
                row.rss = peak_rss_mib(row.server.process.pid)
    print_tables(rows)
    print_ceiling(rows)
    print(
        f"\nload average at start: {load_start}, at end: {load()};"
        f" {time.monotonic() - began:.0f} s in all"
    )
    if bench.failures:
        print("\nINTEGRITY FAILURES (streams stalled, cut short or corrupt):", file=sys.stderr)
        for row in rows:
            failures = bench.failures.get(row.label)
            if failures:
                counts = f"{row.stalled} stalled, {row.truncated} truncated, {row.corrupt} corrupt"
                print(f"  {row.label}: {counts} of {row.streams}", file=sys.stderr)
                for failure in failures[:3]:
                    print(f"    {failure}", file=sys.stderr)
        return 1
    return 0


def arguments() -> argparse.Namespace:
    """The command line, with ``--quick`` shrinking the defaults."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 MiB streams, fewer runs")
    parser.add_argument("--size", type=int, help="MiB per single stream (256)")
    parser.add_argument("--parallel-size", type=int, help="MiB over 16 streams (256)")
    parser.add_argument("--runs", type=int, help="parallel runs per row (10)")
    parser.add_argument("--repeats", type=int, help="single-stream repeats each way (3)")
    parser.add_argument("--connects", type=int, help="latency samples (200)")
    parser.add_argument("--stall", type=float, default=10.0, help="seconds without progress")
    parser.add_argument(
        "--only", help="servers besides direct, comma-separated: socat,gateway,wisp-js,wisp-python"
    )
    parser.add_argument(
        "--loops", default=",".join(LOOPS), help="the gateway's event loops (asyncio,uvloop,trio)"
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="also our gateway from the checkout PATH (another commit), in rows named LABEL",
    )
    args = parser.parse_args()
    args.loops = [loop for loop in args.loops.split(",") if loop]
    compare = []
    for item in args.compare:
        label, _, path = item.partition("=")
        tree = Path(path).resolve()
        if not label or not (tree / "netshim" / "__main__.py").is_file():
            parser.error(f"--compare {item!r}: want LABEL=PATH of a checkout of this project")
        compare.append((label[:11], tree))
    args.compare = compare
    defaults = (32, 32, 2, 1, 30) if args.quick else (256, 256, 10, 3, 200)
    for name, default in zip(
        ("size", "parallel_size", "runs", "repeats", "connects"), defaults, strict=True
    ):
        if getattr(args, name) is None:
            setattr(args, name, default)
    return args


if __name__ == "__main__":
    sys.exit(main(arguments()))
