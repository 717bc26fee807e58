"""LAN benchmark: member to member through the gateway, against client to outside.

    python benchmarks/lan.py [--quick] [--size MIB] [--repeats N] [--connects N] [--loop LOOP]

One gateway process (``python -m netshim gateway --lan bench``, on ``--loop``) and one
client, benchmarks/wisp_bench_client.py (our WispStack, a process of its own, joined
to the LAN as the member ``client``), which moves benchmarks/bench_pattern.py's
streams to one of two targets:

* ``outside``: benchmarks/bulk_target.py ``--pattern`` on 127.0.0.1, a plain TCP
  server (a thread per stream, blocking sockets, downloads from a prebuilt
  buffer) that the gateway dials as it dials any destination: client to outside,
  the issue's baseline;
* ``member``: benchmarks/lan_target.py, the same protocol served by another LAN
  member (``target.bench``, through its own WispStack, a process of its own) on
  a listener of its LAN address: client to member.

Measured per row, as benchmarks/gateway.py measures (it supplies the machinery):
one stream downloading and one uploading ``--size`` MiB (best of ``--repeats``,
rows alternating within each repeat), connect latency (connect, send 16 bytes, get
the first byte of the 16 sent back; median of ``--connects`` one after another),
and CPU seconds per GiB of the gateway, the client and the target.  Integrity is
checked as there (no hashing while the clock runs); a wrong or short stream is
printed and makes the benchmark exit 1.  Timings are never asserted.

The issue's targets: member to member at least 0.8x of client to outside, and
(two gateways with Redis, not measured here) added latency under 1 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
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


def start_gateway(stack: ExitStack, loop: str, token_file: Path) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "netshim", "gateway", "--port", str(port)]
    command += ["--allow", "127.0.0.1", "--log-level", "WARNING", "--event-loop", loop]
    command += ["--lan", LAN, "--lan-token-file", str(token_file)]
    process = stack.enter_context(started(command))
    wait_for_port(port, process)
    return Server("gateway", loop, port, f"wisp://127.0.0.1:{port}/", process)


def print_table(outside: Row, member: Row) -> None:
    print(
        "\n                     down MiB/s   up MiB/s  connect ms"
        "   CPU s/GiB down (gateway/client/target)   up (gateway/client/target)"
    )
    for row in (outside, member):
        cpu = [
            "/".join(fixed(per_gib(row, kind, who), 5, 2) for who in ("server", "client", "target"))
            for kind in ("down", "up")
        ]
        print(
            f"  {row.server.name:<18} {fixed(best_rate(row, 'down'), 10, 0)} "
            f"{fixed(best_rate(row, 'up'), 10, 0)} {fixed(latency_ms(row), 11, 2)}"
            f"   {cpu[0]:>38}   {cpu[1]:>26}"
        )
    down = ratio(best_rate(member, "down"), best_rate(outside, "down"))
    up = ratio(best_rate(member, "up"), best_rate(outside, "up"))
    added = latency_ms(member), latency_ms(outside)
    extra = f"{added[0] - added[1]:+.2f} ms" if added[0] and added[1] else "-"
    print(f"\n  member / outside: down {down}, up {up}; connect latency {extra}")


def main(args: argparse.Namespace) -> int:
    size = args.size * MIB
    load_start = load()
    began = time.monotonic()
    print(f"load average at start: {load_start}  ({os.cpu_count()} CPUs)")
    token = secrets.token_urlsafe(16)
    with ExitStack() as stack, tempfile.TemporaryDirectory() as directory:
        token_file = Path(directory) / "lan-tokens.txt"
        token_file.write_text(f"{LAN} {token}\n")
        gateway = start_gateway(stack, args.loop, token_file)
        bulk = [sys.executable, str(BENCHMARKS / "bulk_target.py"), "--pattern"]
        outside_target = Target(stack.enter_context(started(bulk, stdout=subprocess.PIPE)))
        plan = {"url": gateway.url, "lan": LAN, "member": "target", "token": token}
        plan |= {"port": TARGET_PORT, "loop": args.loop}
        lan_command = [sys.executable, str(BENCHMARKS / "lan_target.py"), json.dumps(plan)]
        member_target = Target(stack.enter_context(started(lan_command, stdout=subprocess.PIPE)))
        joined = {"lan": {"lan": LAN, "member": "client", "token": token}, "loop": args.loop}
        benches = {
            "outside": Bench(outside_target, args.stall, plan=joined),
            "member": Bench(member_target, args.stall, host=f"target.{LAN}", plan=joined),
        }
        server = gateway.process
        rows = {
            name: Row(Server(name, args.loop, gateway.port, gateway.url, server), "WispStack")
            for name in benches
        }
        print(f"1 stream {args.size} MiB x {args.repeats} each way; {args.connects} connects")
        for kind, spec in (("down", (0, size)), ("up", (size, 0))):
            print(f"  1 stream {kind} ...", flush=True)
            for _ in range(args.repeats):
                for name, bench in benches.items():
                    bench.run(rows[name], kind, [spec])
        print("  connect latency ...", flush=True)
        for name, bench in benches.items():
            bench.run(rows[name], "latency", [(PING, PING)] * args.connects, sequential=True)
    print_table(rows["outside"], rows["member"])
    print(
        f"\nload average at start: {load_start}, at end: {load()};"
        f" {time.monotonic() - began:.0f} s in all"
    )
    failures = {name: bench.failures for name, bench in benches.items() if bench.failures}
    if failures:
        print("\nINTEGRITY FAILURES (streams stalled, cut short or corrupt):", file=sys.stderr)
        for name, seen in failures.items():
            for label, messages in seen.items():
                for message in messages[:3]:
                    print(f"  {name} {label}: {message}", file=sys.stderr)
        return 1
    return 0


def arguments() -> argparse.Namespace:
    return lan_arguments(__doc__, size=256, quick_size=32)


if __name__ == "__main__":
    sys.exit(main(arguments()))
