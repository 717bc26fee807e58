"""A confined program's network: ``netshim run --isolate`` against slirp4netns and pasta.

    python benchmarks/isolate.py [--quick] [--size MIB] [--repeats N] [--connects N]
                                 [--pings N] [--only NAMES] [--kinds KINDS]

Run as root.  The same program (benchmarks/ip_peer.py's ``kernel-client``:
blocking Python sockets, ``sendall`` of 1 MiB slices of a prebuilt buffer,
``recv_into`` a preallocated one, a pattern check of every piece read and no
hashing) talks to a server on the machine's loopback (ip_peer.py's
``kernel-server`` bound to 127.0.0.1, a process of its own), confined by:

* ``direct``: not confined at all, to 127.0.0.1 (the ceiling, for scale);
* ``netshim``: ``python -m netshim run --isolate --allow 127.0.0.1 --
  PROGRAM``; the program reaches the machine's loopback as 10.0.2.2 (the
  policy must allow 127.0.0.1), netshim's parent process terminates its
  TCP on a TUN device with offloads and dials each flow on the host stack;
* ``slirp4netns`` 1.2 (Debian package) at its best MTU, ``--mtu=65520``:
  the program in a new user + network namespace (``unshare --user
  --map-root-user --net``), waiting until ``slirp4netns --configure
  --ready-fd`` reports the tap device configured; it reaches the machine's
  loopback as 10.0.2.2 (host loopback access is on unless
  ``--disable-host-loopback``);
* ``pasta`` (Debian's passt package) with its default MTU, 65520:
  ``pasta --config-net -f -q -- PROGRAM`` (with ``--runas 0`` as root:
  pasta otherwise drops to "nobody" and fails to map its user namespace);
  this version (2023-03) maps the
  namespace's default gateway address to the machine's loopback (unless
  ``--no-map-gw``; later versions call it ``--map-host-loopback``), so the
  program connects to the host's default gateway address.

Measured per confiner: a download (the server sends ``--size`` MiB, the
program receives) and an upload (the other way), best of ``--repeats``, as
MiB/s, Gbit/s and the ratio to slirp4netns; ``--connects`` connect + close
one after another (connects per second, and the confining process's CPU
milliseconds per connect); ``--pings`` 1-byte round trips on
one TCP_NODELAY connection (median, microseconds); CPU seconds per GiB of the
confining process (netshim's parent, slirp4netns, pasta: utime + stime of
that process alone, from /proc/PID/stat right before the go and right after
the receiver's report) and of the loopback server.  The confined program's
own CPU is not counted (it is the same program in every row).

Integrity: the receiver counts its bytes and compares every piece with the
pattern (benchmarks/bench_pattern.py); a short or wrong transfer, or a
confiner that fails, is printed and the benchmark exits with status 1 after
its table.  The machine's load averages are printed at the start and end.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ip import MIB, Peer, Result, best, checked, cpu_seconds, finish, fixed, load

CONFINERS = ("direct", "netshim", "slirp4netns", "pasta")
SLIRP_MTU = 65520
NETSHIM = [sys.executable, "-m", "netshim", "run", "--isolate", "--allow", "127.0.0.1", "--"]
# Holds the program until slirp4netns has configured its namespace: sh's
# ``read`` takes one line from the pipe and leaves the rest to the program.
GATED = ["sh", "-c", 'read line && exec "$@"', "sh"]
PASTA_LOG = Path(tempfile.gettempdir()) / "netshim-bench-pasta.log"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def host_gateway() -> str | None:
    """The machine's default IPv4 gateway: where pasta maps the host's loopback."""
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == "00000000" and int(fields[3], 16) & 2:
            return socket.inet_ntoa(int(fields[2], 16).to_bytes(4, "little"))
    return None


@dataclass
class Confined:
    """The confined program's process and the confining process's id (None: direct)."""

    program: Peer
    confiner: int | None


@contextmanager
def confine(name: str, params: dict[str, Any]) -> Iterator[Confined]:
    """ip_peer.py's ``kernel-client`` with ``params`` run under confiner ``name``."""
    if name == "direct":
        program = Peer("kernel-client", {**params, "host": "127.0.0.1"})
        yield Confined(program, None)
    elif name == "netshim":
        program = Peer("kernel-client", {**params, "host": "10.0.2.2"}, prefix=NETSHIM)
        yield Confined(program, program.process.pid)
    elif name == "pasta":
        gateway = host_gateway()
        if gateway is None:
            raise RuntimeError("no default IPv4 route: pasta has no gateway to map")
        # As root pasta drops to "nobody" unless told otherwise, and then
        # cannot map the user namespace it makes.
        runas = ["--runas", "0"] if os.geteuid() == 0 else []
        prefix = ["pasta", *runas, "--config-net", "-f", "-q", "--"]
        # Its warnings (as root it cannot write uid_map, which does not
        # matter) go to a file, with the program's, not into the table.
        with PASTA_LOG.open("a") as log:
            program = Peer("kernel-client", {**params, "host": gateway}, prefix=prefix, stderr=log)
        yield Confined(program, program.process.pid)
    else:
        prefix = ["unshare", "--user", "--map-root-user", "--net", "--", *GATED]
        program = Peer("kernel-client", {**params, "host": "10.0.2.2"}, prefix=prefix)
        ready_r, ready_w = os.pipe()
        command = ["slirp4netns", "--configure", f"--mtu={SLIRP_MTU}", f"--ready-fd={ready_w}"]
        slirp = subprocess.Popen(
            [*command, str(program.process.pid), "tap0"],
            pass_fds=[ready_w],
            # It reports each step on stdout and stderr; ready-fd is what counts.
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(ready_w)
        try:
            readable, _, _ = select.select([ready_r], [], [], 30)
            if not readable or not os.read(ready_r, 1):
                raise RuntimeError("slirp4netns did not report ready")
            assert program.process.stdin is not None
            program.process.stdin.write("configured\n")
            program.process.stdin.flush()
            yield Confined(program, slirp.pid)
        finally:
            os.close(ready_r)
            slirp.terminate()
            slirp.wait()


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.failures: list[str] = []

    def measure(
        self, name: str, client: dict[str, Any], server: dict[str, Any], size: int, label: str
    ) -> Result:
        """One run: server up, program up under ``name``, go, the receiver's report."""
        port = free_port()
        host = Peer("kernel-server", {**server, "port": port, "bind": "127.0.0.1"})
        # Downloads and the connect/ping modes report from the program.
        receiver_is_server = server.get("mode") == "sink"
        try:
            host.expect(30)
            with confine(name, {**client, "port": port}) as confined:
                program = confined.program
                try:
                    program.expect(60)
                    pids = {"server": host.process.pid}
                    if confined.confiner is not None:
                        pids["confiner"] = confined.confiner
                    before = {who: cpu_seconds(pid, children=False) for who, pid in pids.items()}
                    began = time.perf_counter()
                    host.go()
                    program.go()
                    report = (host if receiver_is_server else program).expect(self.args.limit)
                    seconds = time.perf_counter() - began
                    cpu = {
                        who: cpu_seconds(pid, children=False) - before[who]
                        for who, pid in pids.items()
                    }
                finally:
                    program.stop()
        except RuntimeError as error:
            if name == "pasta":
                error = RuntimeError(f"{error} (pasta's and the program's stderr: {PASTA_LOG})")
            self.failures.append(f"{label}: {error}")
            return Result(failure=str(error))
        finally:
            host.stop()
        return checked(self.failures, label, report, size, seconds, cpu)


def missing(name: str) -> str | None:
    """Why confiner ``name`` cannot run here, or None."""
    program = {"slirp4netns": "slirp4netns", "pasta": "pasta"}.get(name)
    if program and shutil.which(program) is None:
        return f"{program} is not installed (apt-get install slirp4netns passt)"
    return None


def main(args: argparse.Namespace) -> int:
    size = args.size * MIB
    load_start = load()
    began = time.monotonic()
    print(f"load average at start: {load_start}  ({os.cpu_count()} CPUs)")
    print(
        f"{args.size} MiB each way, best of {args.repeats}; {args.connects} connects;"
        f" {args.pings} pings; slirp4netns --mtu={SLIRP_MTU}, pasta's default MTU"
    )
    bench = Bench(args)
    names = [n for n in CONFINERS if n in args.only]
    absent = {n: why for n in names if (why := missing(n))}
    runnable = [n for n in names if n not in absent]
    results: dict[tuple[str, str], Result] = {}
    kinds = {
        "down": ({"mode": "recv"}, {"mode": "source", "size": size}, size),
        "up": ({"mode": "send", "size": size}, {"mode": "sink"}, size),
        "connects": ({"mode": "connects", "count": args.connects}, {"mode": "accept"}, 0),
        "ping": ({"mode": "ping", "count": args.pings}, {"mode": "echo"}, 0),
    }
    for kind, (client, server, moved) in kinds.items():
        if kind not in args.kinds:
            continue
        print(f"  {kind} ...", flush=True)
        runs = args.repeats if moved else 1
        collected: dict[str, list[Result]] = {}
        # Rows alternate within each repeat: a burst of load hits all of them.
        for _ in range(runs):
            for name in runnable:
                label = f"{name} {kind}"
                collected.setdefault(name, []).append(
                    bench.measure(name, client, server, moved, label)
                )
        for name, got in collected.items():
            results[name, kind] = best(got) if moved else got[0]
    print_table(names, absent, results)
    return finish(load_start, began, bench.failures)


def print_table(
    names: list[str], absent: dict[str, str], results: dict[tuple[str, str], Result]
) -> None:
    print(
        "\nThroughput (best of the repeats) with the ratio to slirp4netns; CPU s/GiB of the"
        " confining process\n(conf: netshim's parent, slirp4netns, pasta) and of the loopback"
        " server (srv); connect + close per second and the confining process's CPU ms for each;"
        " 1-byte RTT (median)."
    )
    head = (
        f"{'confiner':<12} {'down MiB/s':>10} {'Gbit/s':>6} {'x slirp':>7}"
        f" {'up MiB/s':>9} {'Gbit/s':>6} {'x slirp':>7}"
        f" {'conf s/GiB d/u':>15} {'srv s/GiB d/u':>14} {'conn/s':>7} {'x slirp':>7}"
        f" {'conf ms/conn':>12}"
        f" {'RTT us':>7} {'x slirp':>7}"
    )
    print(head)
    print("-" * len(head))

    def rate(name: str, kind: str) -> float | None:
        r = results.get((name, kind))
        if r is None or r.failure:
            return None
        if kind == "connects":
            return float(r.value["count"] / r.value["seconds"])
        if kind == "ping":
            return float(r.value["rtt"] * 1e6)
        return r.mib_s

    def per_gib(name: str, kind: str, who: str) -> float | None:
        r = results.get((name, kind))
        if r is None or r.failure or who not in r.cpu:
            return None
        return r.per_gib(who)

    def per_connect(name: str) -> float | None:
        """The confining process's CPU milliseconds per connect + close."""
        r = results.get((name, "connects"))
        if r is None or r.failure or "confiner" not in r.cpu:
            return None
        return float(r.cpu["confiner"] / r.value["count"] * 1000)

    def x(value: float | None, base: float | None, width: int = 7) -> str:
        return f"{value / base:{width - 1}.2f}x" if value and base else f"{'-':>{width}}"

    for name in names:
        if name in absent:
            print(f"{name:<12} {absent[name]}")
            continue
        down, up = rate(name, "down"), rate(name, "up")
        conn, rtt = rate(name, "connects"), rate(name, "ping")
        gbit = [None if v is None else v * MIB * 8 / 1e9 for v in (down, up)]
        conf = (
            f"{fixed(per_gib(name, 'down', 'confiner'), 7, 2)}"
            f"/{fixed(per_gib(name, 'up', 'confiner'), 7, 2).strip():<7}"
        )
        srv = (
            f"{fixed(per_gib(name, 'down', 'server'), 6, 2)}"
            f"/{fixed(per_gib(name, 'up', 'server'), 6, 2).strip():<7}"
        )
        print(
            f"{name:<12} {fixed(down, 10, 1)} {fixed(gbit[0], 6, 2)}"
            f" {x(down, rate('slirp4netns', 'down'))}"
            f" {fixed(up, 9, 1)} {fixed(gbit[1], 6, 2)} {x(up, rate('slirp4netns', 'up'))}"
            f" {conf:>15} {srv:>14} {fixed(conn, 7, 0)} {x(conn, rate('slirp4netns', 'connects'))}"
            f" {fixed(per_connect(name), 12, 3)}"
            f" {fixed(rtt, 7, 1)} {x(rtt, rate('slirp4netns', 'ping'))}"
        )
        for kind in ("down", "up", "connects", "ping"):
            r = results.get((name, kind))
            if r is not None and r.failure:
                print(f"{'':<12} {kind}: {r.failure}")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 MiB, one repeat, fewer samples")
    parser.add_argument("--size", type=int, help="MiB each way (256)")
    parser.add_argument("--repeats", type=int, help="transfers each way, best kept (2)")
    parser.add_argument("--connects", type=int, help="connects measured (500)")
    parser.add_argument("--pings", type=int, help="round trips measured (2000)")
    parser.add_argument("--limit", type=float, default=300, help="seconds a transfer may take")
    parser.add_argument(
        "--only", default=",".join(CONFINERS), help="confiners: direct,netshim,slirp4netns,pasta"
    )
    parser.add_argument(
        "--kinds", default="down,up,connects,ping", help="what to measure: down,up,connects,ping"
    )
    args = parser.parse_args()
    args.only = args.only.split(",")
    args.kinds = args.kinds.split(",")
    defaults = (32, 1, 200, 500) if args.quick else (256, 2, 500, 2000)
    for name, default in zip(("size", "repeats", "connects", "pings"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    return args


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("needs root: it makes namespaces for slirp4netns and netshim")
    sys.exit(main(arguments()))
