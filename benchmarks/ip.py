"""IpStack against the Linux kernel's TCP over TAP and TUN devices, beside a kernel floor and pytcp.

    python benchmarks/ip.py [--quick] [--size MIB] [--pytcp-size MIB] [--repeats N]
                            [--connects N] [--pings N] [--idle N] [--loss FRACTION]
                            [--loss-only] [--trace] [--kernel-cc NAME]

Run as root (it makes network namespaces).  Every measurement is a pair of
processes (benchmarks/ip_peer.py), each in a network namespace made for that
measurement alone and removed after it:

* bulk TCP, each direction: IpStack (a process of its own, in the root
  namespace, holding a TAP or a TUN device's descriptor with offloads:
  IFF_VNET_HDR, checksum offload, TSO/GRO, so one read or write moves up to
  64 KiB) connects to a kernel socket in the device's namespace that either
  receives ``--size`` MiB to the end (IpStack sends) or sends them (the
  kernel sends); the floor is the same transfer between two kernel
  namespaces over a veth pair (Python blocking sockets, ``sendall`` of 1 MiB
  slices of a prebuilt buffer and ``recv_into`` a preallocated one: C speed,
  about 0.1-0.3 CPU s/GiB); the peer is pytcp (PyPI ``pytcp``, pure Python,
  on a TAP device it opens itself, ``--pytcp-size`` MiB: it is slow, and the
  rate of a smaller transfer is the same rate);
* bulk TCP with ``--loss`` (1 %) dropped each way on IpStack's side
  (:class:`netshim.ip.links.FaultyLink`), against the loss-free TAP figure,
  under two loss models.  "loss": 1 % of the device's packets, and with
  offloads a dropped packet is a whole TSO/GRO packet of up to 64 KiB (up
  to 45 wire segments lost at once, one loss event per ~4500 segments).
  "wire loss" (``wire_mtu`` 1500): 1 % of 1500-byte wire segments, each
  drawn alone; a TSO or coalesced packet that loses some is passed on as
  the runs of segments that survive, as a lossy wire behind the device
  would leave it.  The second is what "1 % loss" means on a wire.  The
  reference for both is the kernel pair over veth under the same loss
  (nftables drops ``--loss`` of the TCP packets each namespace sends; with
  offloads on a drop is a whole GSO packet, and for "wire loss" TSO and GSO
  are turned off so a drop is one wire segment): what Linux's own CUBIC
  makes of the same loss; it needs ``nft`` and ``ethtool``.  Every kernel
  socket here runs ``--kernel-cc`` (CUBIC by default: ``TCP_CONGESTION``
  on each socket), whatever the machine's default is: a machine whose
  default is BBR (not loss-based) would otherwise be the reference for a
  loss-based CUBIC, and would be the sender in the "from kernel" rows.  ``--trace``
  prints each lossy IpStack connection's recovery counters
  (retransmissions, timeouts, fast recoveries, loss probes, cwnd
  percentiles) to stderr; ``--loss-only`` measures just the loss-free TAP
  and veth rows and the four loss rows;
* connection setup: ``--connects`` connect + close one after another,
  IpStack (TAP) to a kernel listener that accepts and closes, against kernel
  to kernel over veth;
* round trip: ``--pings`` 1-byte ping-pongs on one connection with
  TCP_NODELAY (median), IpStack (TAP) to a kernel echo server, against
  kernel to kernel;
* memory per idle established IpStack connection: ``--idle`` connections to
  a kernel listener that holds them, measured with tracemalloc (every
  Python allocation the connections keep) and as the RSS delta.  IpStack's
  send and receive queues hold chunks only while data waits, so an idle
  connection's figure is what it costs beyond its buffers.

Rates are wall time from the "go" to the receiving side's report, best of
``--repeats``.  CPU seconds per GiB: utime + stime of each process of the
pair from /proc/PID/stat just before the go and just after the report (the
kernel's own TCP work on the other side partly lands in softirq time that no
process is charged for).  Integrity: every receiver counts its bytes and
compares every piece it reads with the pattern (benchmarks/bench_pattern.py,
one memcmp per piece); a short, long or wrong transfer is printed and the
benchmark exits with status 1 after its tables.  Timings are not asserted.
The machine's load averages are printed at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT / "benchmarks" / "ip_peer.py"
sys.path.insert(0, str(ROOT / "tests" / "ip"))

from namespaces import namespace, open_device  # noqa: E402

MIB = 1 << 20
GIB = 1 << 30
TICKS = os.sysconf("SC_CLK_TCK")
KERNEL = "10.77.0.1"
OURS = "10.77.0.2"
PORT = 5001
IFF_TUN, IFF_TAP = 0x0001, 0x0002
# pytcp names its TAP device itself.
PYTCP_DEVICE = "ptb0"
DEVICE = "nstest0"  # the name tests/ip/namespaces.py gives its devices


def cpu_seconds(pid: int, *, children: bool = True) -> float:
    """utime + stime (+ cutime + cstime) of ``pid`` (all its threads), 0 if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # After the command name (which may hold spaces): utime..cstime are [11:15].
    fields = stat.rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11 : 15 if children else 13]) / TICKS


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def drop_outgoing_tcp(ns: str, fraction: float) -> None:
    """Drop ``fraction`` of the TCP packets leaving namespace ``ns``, each drawn alone.

    This kernel has no netem; nftables' random number generator on the output
    hook draws the same loss.  It sees the packets the kernel's TCP hands down,
    so with offloads on a dropped packet is a whole GSO packet, as in
    IpStack's "loss" rows, and with them off it is one wire segment.
    """
    parts_per_million = round(fraction * 1_000_000)
    script = (
        "table inet benchloss {\n"
        " chain out {\n"
        "  type filter hook output priority 0; policy accept;\n"
        f"  meta l4proto tcp numgen random mod 1000000 < {parts_per_million} drop\n"
        " }\n"
        "}\n"
    )
    subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"],
        input=script.encode(),
        check=True,
        capture_output=True,
    )


def configure(ns: str, device: str, address: str) -> None:
    run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", device)
    run("ip", "-n", ns, "link", "set", device, "up")


class Peer:
    """A benchmarks/ip_peer.py process and the JSON lines it prints."""

    def __init__(
        self,
        role: str,
        params: dict[str, Any],
        ns: str | None = None,
        *,
        optimize: bool = False,
        prefix: list[str] | None = None,
        own_cpu: bool = False,
        stderr: Any = None,
    ) -> None:
        """``role`` with ``params`` in namespace ``ns``, or behind ``prefix`` (a confiner).

        ``own_cpu``: :attr:`cpu` counts this process alone, not the children
        it reaped (a confiner's program is its child).
        """
        command = [sys.executable] + (["-O"] if optimize else [])
        command += [str(PEER), role, json.dumps(params)]
        if ns is not None:
            command = ["ip", "netns", "exec", ns, *command]
        command = [*(prefix or []), *command]
        fds = [params["fd"]] if "fd" in params else []
        self.role = role
        self.own_cpu = own_cpu
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            pass_fds=fds, stderr=stderr,
        )  # fmt: skip
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def _read(self, stream: TextIO) -> None:
        for line in stream:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                print(f"  {self.role}: {line.rstrip()}", file=sys.stderr)
        self.lines.put(None)

    def expect(self, limit: float) -> dict[str, Any]:
        """The next JSON line (RuntimeError if the process ends or stays silent)."""
        try:
            message = self.lines.get(timeout=limit)
        except queue.Empty:
            raise RuntimeError(f"{self.role}: nothing after {limit:g} s") from None
        if message is None:
            raise RuntimeError(f"{self.role}: exited with {self.process.wait()}")
        return message

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    @property
    def cpu(self) -> float:
        return cpu_seconds(self.process.pid, children=not self.own_cpu)

    def stop(self) -> None:
        if self.process.stdin is not None:
            with suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Result:
    """One measurement: a rate with CPU by process, or a value, or why there is none."""

    seconds: float = 0.0
    moved: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    value: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None

    @property
    def mib_s(self) -> float:
        return self.moved / MIB / self.seconds

    def per_gib(self, who: str) -> float:
        return self.cpu[who] / (self.moved / GIB)


def checked(
    failures: list[str],
    label: str,
    report: dict[str, Any],
    size: int,
    seconds: float,
    cpu: dict[str, float],
) -> Result:
    """A run's result, or its failure (added to ``failures``).

    A run fails when the receiver's report does not count ``size`` bytes (0:
    no transfer to check) or found the pattern broken.
    """
    if size and (report.get("received") != size or not report.get("ok")):
        problem = (
            f"received {report.get('received')} of {size} bytes, pattern ok: {report.get('ok')}"
        )
        failures.append(f"{label}: {problem}")
        return Result(failure=problem)
    return Result(seconds=seconds, moved=size, cpu=cpu, value=report)


def best(results: list[Result]) -> Result:
    """The fastest of the repeats, or the first failure if one failed."""
    failed = [r for r in results if r.failure]
    return failed[0] if failed else max(results, key=lambda r: r.mib_s)


def finish(load_start: str, began: float, failures: list[str]) -> int:
    """The closing lines (load averages, time taken, failures) and the exit status."""
    print(
        f"\nload average at start: {load_start}, at end: {load()};"
        f" {time.monotonic() - began:.0f} s in all"
    )
    if failures:
        print("\nINTEGRITY OR RUN FAILURES:", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    return 0


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.failures: list[str] = []

    # -- one pair

    def pair(
        self, label: str, server: Peer, client: Peer, receiver: str, size: int, limit: float
    ) -> Result:
        """Both ready, go, the receiver's report; its byte count and pattern checked."""
        peers = {"server": server, "client": client}
        try:
            for peer in peers.values():
                peer.expect(60)
            before = {name: peer.cpu for name, peer in peers.items()}
            began = time.perf_counter()
            for peer in peers.values():
                peer.go()
            report = peers[receiver].expect(limit)
            seconds = time.perf_counter() - began
            cpu = {name: peer.cpu - before[name] for name, peer in peers.items()}
        except RuntimeError as error:
            self.failures.append(f"{label}: {error}")
            return Result(failure=str(error))
        finally:
            for peer in (client, server):
                peer.stop()
        return checked(self.failures, label, report, size, seconds, cpu)

    # -- set-ups

    def veth(
        self,
        client: dict[str, Any],
        server: dict[str, Any],
        receiver: str,
        size: int,
        label: str,
        *,
        loss: float = 0.0,
        wire: bool = False,
    ) -> Result:
        with namespace("nsbench") as a, namespace("nsbench") as b:
            run("ip", "link", "add", "vb0", "netns", a, "type", "veth", "peer", "vb1", "netns", b)
            configure(a, "vb0", KERNEL)
            configure(b, "vb1", OURS)
            try:
                for ns, device in ((a, "vb0"), (b, "vb1")):
                    if wire:
                        # Without segmentation offloads every packet the kernel's TCP
                        # sends is one 1500-byte wire segment, so the drop below is
                        # drawn per wire segment, as IpStack's "wire loss" rows draw it.
                        run("ip", "netns", "exec", ns, "ethtool", "-K", device, "tso", "off")
                        run("ip", "netns", "exec", ns, "ethtool", "-K", device, "gso", "off")
                    if loss:
                        drop_outgoing_tcp(ns, loss)
            except (OSError, subprocess.CalledProcessError) as error:
                detail = getattr(error, "stderr", b"") or str(error).encode()
                failure = f"cannot set up the loss ({detail.decode().strip()});"
                failure += " it needs nftables and ethtool"
                return Result(failure=failure)
            cc = {"cc": self.args.kernel_cc}
            srv = Peer("kernel-server", {"port": PORT, **server, **cc}, a)
            cli = self._after_ready(
                srv,
                lambda: Peer("kernel-client", {"host": KERNEL, "port": PORT, **client, **cc}, b),
            )
            return self.pair(label, srv, cli, receiver, size, self.args.limit)

    def device(
        self,
        medium: str,
        client: dict[str, Any],
        server: dict[str, Any],
        receiver: str,
        size: int,
        label: str,
    ) -> Result:
        with namespace("nsbench") as ns:
            fd = open_device(ns, IFF_TAP if medium == "tap" else IFF_TUN)
            try:
                configure(ns, DEVICE, KERNEL)
                srv = Peer("kernel-server", {"port": PORT, **server, "cc": self.args.kernel_cc}, ns)
                params = {
                    "medium": medium,
                    "fd": fd,
                    "address": f"{OURS}/24",
                    "host": KERNEL,
                    "port": PORT,
                }
                cli = self._after_ready(srv, lambda: Peer("ipstack", {**params, **client}, None))
                return self.pair(label, srv, cli, receiver, size, self.args.limit)
            finally:
                os.close(fd)

    def pytcp(self, mode: str, size: int, label: str) -> Result:
        try:
            import pytcp  # noqa: F401
        except ImportError:
            return Result(failure="pytcp is not installed (pip install pytcp)")
        with namespace("nsbench") as ns:
            params = {"device": PYTCP_DEVICE, "address": f"{OURS}/24", "host": KERNEL, "port": PORT}
            cli = Peer("pytcp", {**params, "mode": mode, "size": size}, ns, optimize=True)
            srv = None
            try:
                cli.expect(30)  # the device exists
                configure(ns, PYTCP_DEVICE, KERNEL)
                srv = Peer(
                    "kernel-server",
                    {
                        "port": PORT,
                        "mode": "sink" if mode == "send" else "source",
                        "size": size,
                        "cc": self.args.kernel_cc,
                    },
                    ns,
                )
                srv.expect(30)
                srv.lines.put({"ready": True})  # pair() waits for it again
                cli.go()  # start the stack; it connects and says ready
            except RuntimeError as error:
                cli.stop()
                if srv is not None:
                    srv.stop()
                return Result(failure=f"pytcp did not start: {error}")
            receiver = "server" if mode == "send" else "client"
            return self.pair(label, srv, cli, receiver, size, self.args.pytcp_limit)

    @staticmethod
    def _after_ready(server: Peer, make: Any) -> Peer:
        """``make()`` once ``server`` listens (its ready line is put back for pair())."""
        server.lines.put(server.expect(30))
        return make()


def main(args: argparse.Namespace) -> int:
    size, pytcp_size = args.size * MIB, args.pytcp_size * MIB
    load_start = load()
    began = time.monotonic()
    print(f"load average at start: {load_start}  ({os.cpu_count()} CPUs)")
    print(
        f"bulk {args.size} MiB (pytcp {args.pytcp_size} MiB), best of {args.repeats};"
        f" {args.connects} connects; {args.pings} pings; {args.idle} idle connections;"
        f" loss {args.loss:.0%}"
    )
    default_cc = Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    print(f"kernel congestion control: {args.kernel_cc} (this machine's default: {default_cc})")
    bench = Bench(args)
    bulk: dict[tuple[str, str], Result] = {}
    directions = {
        "to kernel": ("send", "sink", "server"),
        "from kernel": ("recv", "source", "client"),
    }
    for direction, (mode, server_mode, receiver) in directions.items():
        print(f"  bulk {direction} ...", flush=True)
        client, server = {"mode": mode, "size": size}, {"mode": server_mode, "size": size}
        # Rows alternate within each repeat: a burst of load hits all of them.
        runs: dict[str, list[Result]] = {}
        measures = {
            "veth": partial(bench.veth, client, server, receiver, size, f"veth {direction}"),
            "tap": partial(
                bench.device, "tap", client, server, receiver, size, f"IpStack TAP {direction}"
            ),
            "tun": partial(
                bench.device, "tun", client, server, receiver, size, f"IpStack TUN {direction}"
            ),
        }
        traced = {"trace": True} if args.trace else {}
        for model, extra in (("loss", {}), ("wire loss", {"wire_mtu": 1500})):
            lossy = {"mode": mode, "size": size, "loss": args.loss, **extra, **traced}
            measures[model] = partial(
                bench.device,
                "tap",
                lossy,
                server,
                receiver,
                size,
                f"IpStack TAP {args.loss:.0%} {model} {direction}",
            )
        for model, wire in (("kernel loss", False), ("kernel wire loss", True)):
            measures[model] = partial(
                bench.veth,
                client,
                server,
                receiver,
                size,
                f"veth {args.loss:.0%} {model} {direction}",
                loss=args.loss,
                wire=wire,
            )
        if args.loss_only:
            kept = ("tap", "loss", "wire loss", "veth", "kernel loss", "kernel wire loss")
            measures = {k: v for k, v in measures.items() if k in kept}
        for _ in range(args.repeats):
            for name, measure in measures.items():
                runs.setdefault(name, []).append(measure())
        for name, results in runs.items():
            bulk[name, direction] = best(results)
        bulk["pytcp", direction] = (
            Result(failure="not measured (--loss-only)")
            if args.loss_only
            else bench.pytcp(mode, pytcp_size, f"pytcp TAP {direction}")
        )

    if args.loss_only:
        print_bulk(args, bulk)
        return finish(load_start, began, bench.failures)
    print("  connects, round trips, idle connections ...", flush=True)
    connects = {"mode": "connects", "count": args.connects}
    accept = {"mode": "accept"}
    setup = {
        "veth": bench.veth(connects, accept, "client", 0, "veth connects"),
        "tap": bench.device("tap", connects, accept, "client", 0, "IpStack connects"),
    }
    pings = {"mode": "ping", "count": args.pings}
    echo = {"mode": "echo"}
    rtt = {
        "veth": bench.veth(pings, echo, "client", 0, "veth ping"),
        "tap": bench.device("tap", pings, echo, "client", 0, "IpStack ping"),
    }
    idle = bench.device(
        "tap", {"mode": "idle", "count": args.idle}, {"mode": "hold"}, "client", 0, "IpStack idle"
    )

    print_tables(args, bulk, setup, rtt, idle)
    return finish(load_start, began, bench.failures)


NAMES = {
    "veth": "kernel <-> kernel, veth (floor)",
    "tap": "IpStack <-> kernel, TAP",
    "tun": "IpStack <-> kernel, TUN",
    "loss": "IpStack <-> kernel, TAP, loss",
    "wire loss": "  the same, wire-segment loss",
    "pytcp": "pytcp <-> kernel, TAP",
    "kernel loss": "kernel <-> kernel, veth, loss",
    "kernel wire loss": "  the same, wire-segment loss",
}


def print_tables(
    args: argparse.Namespace,
    bulk: dict[tuple[str, str], Result],
    setup: dict[str, Result],
    rtt: dict[str, Result],
    idle: Result,
) -> None:
    print_bulk(args, bulk)
    print_rest(setup, rtt, idle)


def print_bulk(args: argparse.Namespace, bulk: dict[tuple[str, str], Result]) -> None:
    print(
        "\nBulk TCP, one stream: MiB/s (best of the repeats), Gbit/s, ratio to the veth floor"
        " and to pytcp;\nCPU s/GiB of each process (snd = the sender's, rcv = the receiver's)."
    )
    head = (
        f"{'row':<32} {'direction':<12} {'MiB/s':>8} {'Gbit/s':>7} {'x floor':>8}"
        f" {'x pytcp':>8} {'snd s/GiB':>9} {'rcv s/GiB':>9}"
    )
    print(head)
    print("-" * len(head))
    for direction in ("to kernel", "from kernel"):
        floor = bulk.get(("veth", direction), Result(failure="not measured"))
        pytcp = bulk["pytcp", direction]
        # "to kernel": IpStack (the client) sends; "from kernel": it receives.
        sender, receiver = (
            ("client", "server") if direction == "to kernel" else ("server", "client")
        )
        rows = ("veth", "kernel loss", "kernel wire loss", "tap", "tun", "loss", "wire loss")
        for name in (*rows, "pytcp"):
            result = bulk.get((name, direction))
            if result is None:
                continue
            label = NAMES[name] + (f" {args.loss:.0%}" if "loss" in name else "")
            if result.failure:
                print(f"{label:<32} {direction:<12} {'-':>8}  {result.failure}")
                continue
            rate = result.mib_s
            print(
                f"{label:<32} {direction:<12} {rate:8.1f} {rate * MIB * 8 / 1e9:7.2f}"
                f" {ratio(rate, floor)} {ratio(rate, pytcp)}"
                f" {result.per_gib(sender):9.2f} {result.per_gib(receiver):9.2f}"
            )
    print(
        "\nThroughput under loss against the same pair's loss-free figure (loss drawn per"
        "\npacket the TCP hands down, which with offloads is up to 45 wire segments, and per"
        "\n1500-byte wire segment); the kernel pair over veth is the reference for what"
        f"\nstandard congestion control ({args.kernel_cc}) makes of the same loss:"
    )
    pairs = (
        ("IpStack", "loss", "tap"),
        ("IpStack", "wire loss", "tap"),
        ("kernel", "kernel loss", "veth"),
        ("kernel", "kernel wire loss", "veth"),
    )
    for who, model, clean_row in pairs:
        for direction in ("to kernel", "from kernel"):
            lossy = bulk.get((model, direction), Result(failure="not measured"))
            clean = bulk.get((clean_row, direction), Result(failure="not measured"))
            name = f"{who} {model.removeprefix('kernel ')}"
            if lossy.failure or clean.failure:
                print(f"  {name:<18} {direction:<12} -")
            else:
                print(
                    f"  {name:<18} {direction:<12} {lossy.mib_s:8.1f} of {clean.mib_s:8.1f}"
                    f" MiB/s = {lossy.mib_s / clean.mib_s:5.2f}x"
                )


def print_rest(setup: dict[str, Result], rtt: dict[str, Result], idle: Result) -> None:

    print(
        "\nConnection setup (connect + close, one after another) and 1-byte round trips (median):"
    )
    head = f"{'row':<32} {'connects/s':>10} {'x kernel':>8} {'CPU ms/conn':>11}"
    head += f" {'RTT us':>8} {'x kernel':>8}"
    print(head)
    print("-" * len(head))
    for name in ("veth", "tap"):
        conn, ping = setup[name], rtt[name]
        rate = conn.value["count"] / conn.value["seconds"] if not conn.failure else None
        base = setup["veth"].value
        base_rate = base["count"] / base["seconds"] if base else None
        cpu = conn.cpu["client"] / conn.value["count"] * 1000 if not conn.failure else None
        us = ping.value["rtt"] * 1e6 if not ping.failure else None
        base_us = rtt["veth"].value["rtt"] * 1e6 if rtt["veth"].value else None
        print(
            f"{NAMES[name]:<32} {fixed(rate, 10, 0)} {ratio(rate, base_rate)} {fixed(cpu, 11, 3)}"
            f" {fixed(us, 8, 1)} {ratio(us, base_us)}"
        )
    print(
        "\nMemory per idle established IpStack connection (no data queued, so beyond its buffers):"
    )
    if idle.failure:
        print(f"  - {idle.failure}")
    else:
        v = idle.value
        print(
            f"  {v['count']} connections: {v['traced'] / 1024:.2f} KiB each (tracemalloc),"
            f" {v['rss'] / 1024:.2f} KiB each (RSS delta)"
        )


def ratio(value: float | None, base: Any) -> str:
    if isinstance(base, Result):
        base = None if base.failure else base.mib_s
    return f"{value / base:7.2f}x" if value and base else f"{'-':>8}"


def fixed(value: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.{digits}f}"


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 MiB, one repeat, fewer samples")
    parser.add_argument("--size", type=int, help="MiB per bulk transfer (256)")
    parser.add_argument("--pytcp-size", type=int, help="MiB per pytcp transfer (16)")
    parser.add_argument("--repeats", type=int, help="bulk repeats, best kept (2)")
    parser.add_argument("--connects", type=int, help="connects measured (500)")
    parser.add_argument("--pings", type=int, help="round trips measured (2000)")
    parser.add_argument("--idle", type=int, help="idle connections measured (1000)")
    parser.add_argument("--loss", type=float, default=0.01, help="fraction of packets lost (0.01)")
    parser.add_argument(
        "--loss-only",
        action="store_true",
        help="only the loss-free TAP and veth rows and the loss rows (no TUN, pytcp, connects)",
    )
    parser.add_argument(
        "--trace", action="store_true", help="lossy IpStack runs print TCP counters to stderr"
    )
    parser.add_argument(
        "--kernel-cc",
        default="cubic",
        help="congestion control of every kernel socket here (cubic)",
    )
    parser.add_argument("--limit", type=float, default=300, help="seconds a transfer may take")
    parser.add_argument("--pytcp-limit", type=float, default=300, help="seconds pytcp may take")
    args = parser.parse_args()
    defaults = (32, 4, 1, 200, 500, 200) if args.quick else (256, 16, 2, 500, 2000, 1000)
    names = ("size", "pytcp_size", "repeats", "connects", "pings", "idle")
    for name, default in zip(names, defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    return args


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("needs root: it makes network namespaces, veth pairs and TAP/TUN devices")
    sys.exit(main(arguments()))
