"""What one connect + close and one 1-byte round trip cost netshim's ``--isolate`` parent, counted.

    python benchmarks/isolate_counts.py [--tool cpu|strace|cprofile|callgrind]
                                        [--base N] [--extra N]

Run as root.  The confined program (``python -c``) connects to a server on the
machine's loopback (reached as 10.0.2.2) that closes each connection at once,
``--base`` times, then makes ``--base`` 1-byte round trips on one
``TCP_NODELAY`` connection to an echo server; a second run adds ``--extra``
connects, a third ``--extra`` round trips.  What the parent process (``python -m
netshim run --isolate``) spent in the second and third runs beyond the first,
divided by ``--extra``, is the cost of one connect + close and of one round
trip, without the start-up and the first connection to each server (which ask
the policy):

* ``cpu``: the parent's user + system CPU (``/proc/PID/stat``, read by the
  program around its loops) per connect and per round trip, with the
  program's connects per second and median round trip; wall-clock figures,
  which the machine's load moves (run under the benchmark lock);
* ``strace``: system calls of the parent's main thread (``strace -c``), by name;
* ``cprofile``: Python function calls in the parent (``-m cProfile``);
* ``callgrind``: user-space instructions of the parent (``valgrind
  --tool=callgrind``; slow: minutes), which no load moves.
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

PROGRAM = """
import os, socket, statistics, sys, time
closer, echo, connects, pings = (int(word) for word in sys.argv[1:5])
def cpu():
    fields = open("/proc/%d/stat" % os.getppid()).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
socket.create_connection(("10.0.2.2", closer)).close()
started, cpu0 = time.perf_counter(), cpu()
for _ in range(connects):
    socket.create_connection(("10.0.2.2", closer)).close()
ended, cpu1 = time.perf_counter(), cpu()
s = socket.create_connection(("10.0.2.2", echo))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
times = []
for _ in range(pings):
    t = time.perf_counter()
    s.send(b"x")
    s.recv(1)
    times.append(time.perf_counter() - t)
cpu2 = cpu()
print(connects / (ended - started), (cpu1 - cpu0) / connects, statistics.median(times),
      (cpu2 - cpu1) / pings)
"""


def _closer(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.close()


def _echo(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return

        def serve(conn: socket.socket = conn) -> None:
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

        threading.Thread(target=serve, daemon=True).start()


def confined(connects: int, pings: int, tool: str, out: Path) -> list[float]:
    """One confined run; the program's four figures (see PROGRAM)."""
    closer = socket.create_server(("127.0.0.1", 0), backlog=1024)
    echo = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=_closer, args=(closer,), daemon=True).start()
    threading.Thread(target=_echo, args=(echo,), daemon=True).start()
    wrapper: list[str] = []
    python = [sys.executable]
    if tool == "strace":
        wrapper = ["strace", "-c", "-o", str(out)]
    elif tool == "callgrind":
        wrapper = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    elif tool == "cprofile":
        python += ["-m", "cProfile", "-o", str(out)]
    command = [*wrapper, *python, "-m", "netshim", "run", "--isolate", "--allow", "127.0.0.1"]
    ports = [str(closer.getsockname()[1]), str(echo.getsockname()[1])]
    try:
        result = subprocess.run(
            [*command, "--", sys.executable, "-c", PROGRAM, *ports, str(connects), str(pings)],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
    finally:
        closer.close()
        echo.close()
    if result.returncode:
        sys.exit(f"the confined run failed ({result.returncode}): {result.stderr[-2000:]}")
    return [float(word) for word in result.stdout.split()]


def counted(tool: str, path: Path) -> dict[str, float]:
    """What one run's output file holds, by name (system calls, or the total)."""
    if tool == "strace":
        calls: dict[str, float] = {}
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
                calls[fields[-1]] = float(fields[3])
        return calls
    if tool == "cprofile":
        stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
        return {"python calls": float(sum(entry[1] for entry in stats.values()))}
    match = re.search(r"^summary: (\d+)", path.read_text(), re.MULTILINE)
    assert match is not None, f"no summary in {path}"
    return {"instructions": float(match.group(1))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tool", choices=["cpu", "strace", "cprofile", "callgrind"], default="cpu")
    parser.add_argument(
        "--base", type=int, default=200, help="connects and round trips in every run"
    )
    parser.add_argument(
        "--extra", type=int, default=1000, help="added in the second and third runs"
    )
    args = parser.parse_args()
    base, extra = args.base, args.extra
    runs = {
        "first": (base, base),
        "connect": (base + extra, base),
        "round trip": (base, base + extra),
    }
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as directory:
        results: dict[str, list[float]] = {}
        counts: dict[str, dict[str, float]] = {}
        for name, (connects, pings) in runs.items():
            out = Path(directory) / name.replace(" ", "-")
            results[name] = confined(connects, pings, args.tool, out)
            if args.tool != "cpu":
                counts[name] = counted(args.tool, out)
    print(
        f"load average {load_at_start:.2f} at start, {os.getloadavg()[0]:.2f} at end;"
        " per connect + close and per 1-byte round trip:"
    )
    if args.tool == "cpu":
        for name in ("connect", "round trip"):
            rate, per_connect, rtt, per_rtt = results[name]
            print(
                f"  {name} run: {rate:.0f} connects/s, {per_connect * 1e6:.0f} us parent CPU"
                f" each; round trip {rtt * 1e6:.0f} us median, {per_rtt * 1e6:.0f} us parent CPU"
            )
        return
    for name in ("connect", "round trip"):
        first, this = counts["first"], counts[name]
        per = {key: (this.get(key, 0) - first.get(key, 0)) / extra for key in {*first, *this}}
        total = sum(per.values())
        shown = ", ".join(
            f"{key} {value:.2f}" for key, value in sorted(per.items()) if abs(value) >= 0.05
        )
        print(f"  {name}: {total:,.1f}" + (f" ({shown})" if args.tool == "strace" else ""))


if __name__ == "__main__":
    main()
