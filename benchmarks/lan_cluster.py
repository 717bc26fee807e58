"""LAN cluster benchmark: member to member through two gateways and Redis, against one gateway.

    python benchmarks/lan_cluster.py [--quick] [--size MIB] [--repeats N] [--connects N]
                                     [--loop LOOP]

One ``redis-server`` (loopback, no persistence) and two gateway processes, A and B
(``python -m netshim gateway --lan bench --cluster-redis ...`` on ``--loop``), sharing
the LAN ``bench``.  The target is benchmarks/lan_target.py, a LAN member joined at
gateway B (a WispStack process of its own) serving benchmarks/bench_pattern.py's
streams on a listener of its LAN address.  The client, benchmarks/wisp_bench_client.py
(our WispStack, a process of its own, joined to the LAN with a name the gateway picks),
connects to ``target.bench`` from one of two places:

* ``one gateway``: joined at gateway B, the target's own: member to member inside one
  gateway, the baseline;
* ``two gateways``: joined at gateway A, so that each stream is looked up in Redis and
  relayed from A to B over A's Wisp connection to B's cluster URL.

Measured per row, as benchmarks/gateway.py measures (its machinery): connect latency
(connect, send 16 bytes, get the first byte of the 16 sent back; median of
``--connects`` one after another, in four rounds that alternate between the rows; the
connect waits for the gateway's stream confirmation, which through two gateways comes
once B's member accepted), one stream downloading and one uploading ``--size`` MiB
(best of ``--repeats``; ``--repeats 0``: connect latency alone), and CPU seconds
per GiB of the client's gateway, the client and the target (gateway B's share of a
relayed row is not in it; it is printed beside, per GiB as well), and each gateway's
CPU milliseconds per connect: on a machine with few cores, latency follows them.  Integrity is
checked as there; a wrong or short stream makes the benchmark exit 1.  Timings are
never asserted.

The issue's target: added connect latency through two gateways under 1 ms on loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))

from bench_args import lan_arguments  # noqa: E402
from gateway import (  # noqa: E402
    MIB,
    PING,
    Bench,
    Row,
    Server,
    Target,
    best_rate,
    connect_cpu_ms,
    cpu_seconds,
    fixed,
    free_port,
    latency_ms,
    load,
    per_gib,
    ratio,
    started,
    wait_for_port,
)

LAN = "bench"
TARGET_PORT = 9000
# The connect latency rows take turns this many times.
CONNECT_ROUNDS = 4
# A short renewal period: nothing in a run waits for it.
REFRESH = "1"


def start_redis(stack: ExitStack, directory: Path) -> str:
    program = shutil.which("redis-server")
    if program is None:
        raise SystemExit("redis-server is not installed (Debian: apt install redis-server)")
    port = free_port()
    command = [program, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(directory)]
    process = stack.enter_context(started(command, stdout=subprocess.DEVNULL))
    wait_for_port(port, process)
    return f"redis://127.0.0.1:{port}/0"


def start_gateway(stack: ExitStack, name: str, loop: str, redis: str, directory: Path) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "netshim", "gateway", "--port", str(port)]
    command += ["--allow", "127.0.0.1", "--log-level", "WARNING", "--event-loop", loop]
    command += ["--lan", LAN, "--lan-token-file", str(directory / "lan-tokens.txt")]
    command += ["--cluster-redis", redis, "--cluster-url", f"ws://127.0.0.1:{port}/"]
    command += ["--cluster-secret-file", str(directory / "secret.txt")]
    command += ["--cluster-refresh", REFRESH]
    process = stack.enter_context(started(command))
    wait_for_port(port, process)
    return Server(name, loop, port, f"wisp://127.0.0.1:{port}/", process)


def print_table(one: Row, two: Row, relay_cpu: dict[str, float]) -> None:
    print(
        "\n                  connect ms   down MiB/s   up MiB/s"
        "   CPU s/GiB down (gateway/client/target)   up (gateway/client/target)"
    )
    for row in (one, two):
        cpu = [
            "/".join(fixed(per_gib(row, kind, who), 5, 2) for who in ("server", "client", "target"))
            for kind in ("down", "up")
        ]
        print(
            f"  {row.server.name:<14} {fixed(latency_ms(row), 11, 2)} "
            f"{fixed(best_rate(row, 'down'), 12, 0)} {fixed(best_rate(row, 'up'), 10, 0)}"
            f"   {cpu[0]:>38}   {cpu[1]:>26}"
        )
    single, double = latency_ms(one), latency_ms(two)
    added = f"{double - single:+.2f} ms" if single and double else "-"
    print(
        f"\n  two / one gateway: connect latency {ratio(double, single)} ({added}), "
        f"down {ratio(best_rate(two, 'down'), best_rate(one, 'down'))}, "
        f"up {ratio(best_rate(two, 'up'), best_rate(one, 'up'))}"
    )
    print(
        "  gateway CPU ms per connect: one gateway "
        f"{fixed(connect_cpu_ms(one, 'server'), 4, 2)}, two gateways "
        f"{fixed(connect_cpu_ms(two, 'server'), 4, 2)} (A) + "
        f"{relay_cpu.get('connect', 0.0) * 1000:.2f} (B)"
    )
    moved = relay_cpu.get("bytes", 0.0)
    if moved:
        print(
            f"  gateway B while relaying: {relay_cpu['seconds'] / (moved / (1 << 30)):.2f} "
            "CPU s/GiB (its part of the two-gateway row)"
        )


def main(args: argparse.Namespace) -> int:
    size = args.size * MIB
    load_start = load()
    began = time.monotonic()
    print(f"load average at start: {load_start}  ({os.cpu_count()} CPUs)")
    token = secrets.token_urlsafe(16)
    with ExitStack() as stack, tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        (directory / "lan-tokens.txt").write_text(f"{LAN} {token}\n")
        (directory / "secret.txt").write_text(secrets.token_urlsafe(32) + "\n")
        redis = start_redis(stack, directory)
        gateway_a = start_gateway(stack, "two gateways", args.loop, redis, directory)
        gateway_b = start_gateway(stack, "one gateway", args.loop, redis, directory)
        plan = {"url": gateway_b.url, "lan": LAN, "member": "target", "token": token}
        plan |= {"port": TARGET_PORT, "loop": args.loop}
        lan_command = [sys.executable, str(BENCHMARKS / "lan_target.py"), json.dumps(plan)]
        target = Target(stack.enter_context(started(lan_command, stdout=subprocess.PIPE)))
        # Names picked by the gateways: one client process after another, and a
        # name given back on one gateway may not be free yet for the next.
        joined = {"lan": {"lan": LAN, "member": "", "token": token}, "loop": args.loop}
        bench = Bench(target, args.stall, host=f"target.{LAN}", plan=joined)
        rows = {server.name: Row(server, "WispStack") for server in (gateway_b, gateway_a)}
        relay_cpu = {"seconds": 0.0, "bytes": 0.0, "connect": 0.0}
        print(f"connect latency x {args.connects}; 1 stream {args.size} MiB x {args.repeats}")
        print("  connect latency ...", flush=True)
        # In rounds, the rows alternating, so that a burst of other work on
        # the machine hits both rows rather than one.
        rounds = min(CONNECT_ROUNDS, args.connects)
        counts = [args.connects // rounds + (i < args.connects % rounds) for i in range(rounds)]
        for count in counts:
            for row in rows.values():
                assert gateway_b.process is not None
                before = cpu_seconds(gateway_b.process.pid)
                bench.run(row, "latency", [(PING, PING)] * count, sequential=True)
                if row.server is gateway_a:
                    spent = cpu_seconds(gateway_b.process.pid) - before
                    relay_cpu["connect"] += spent / args.connects
        for kind, spec in (("down", (0, size)), ("up", (size, 0))):
            print(f"  1 stream {kind} ...", flush=True)
            for _ in range(args.repeats):
                for row in rows.values():
                    assert gateway_b.process is not None
                    before = cpu_seconds(gateway_b.process.pid)
                    bench.run(row, kind, [spec])
                    if row.server is gateway_a:
                        relay_cpu["seconds"] += cpu_seconds(gateway_b.process.pid) - before
                        relay_cpu["bytes"] += size
    print_table(rows["one gateway"], rows["two gateways"], relay_cpu)
    print(
        f"\nload average at start: {load_start}, at end: {load()};"
        f" {time.monotonic() - began:.0f} s in all"
    )
    if bench.failures:
        print("\nINTEGRITY FAILURES (streams stalled, cut short or corrupt):", file=sys.stderr)
        for label, messages in bench.failures.items():
            for message in messages[:3]:
                print(f"  {label}: {message}", file=sys.stderr)
        return 1
    return 0


def arguments() -> argparse.Namespace:
    return lan_arguments(__doc__, size=128, quick_size=16)


if __name__ == "__main__":
    sys.exit(main(arguments()))
