"""WireGuardStack against wireguard-go, beside wireguard-go against itself.

    python benchmarks/wireguard.py [--size MIB] [--handshakes N] [--no-tso]
                                   [--direction upload|download] [--no-baseline]
    python benchmarks/wireguard.py --loopback [--size MIB] [--rounds N]

Run as root (it makes network namespaces, removed at the end).  Three figures:

* handshake: ``WireGuardStack.handshake()`` with a wireguard-go peer in a
  namespace over a veth pair, a fresh stack each time (median of N);
* bulk TCP through the tunnel, each direction: our WireGuardStack (this
  process, root namespace) to a kernel socket behind wireguard-go's ``wg0``
  that receives ``--size`` MiB to the end (upload) or sends them (download);
  CPU seconds per GiB are this process's user + system time, which is where
  the whole of netshim's TCP/IP and WireGuard work happens (the system part,
  printed apart, is the kernel's: UDP sends and receives, the veth crossing
  and the delivery to wireguard-go's socket, which runs in the sender's call);
* the baseline: the same transfer between two namespaces each with its own
  wireguard-go, kernel sockets at both ends (C speed everywhere but the
  tunnel, which is wireguard-go's Go), with both wireguard-go processes'
  CPU from /proc.

With ``--loopback`` (no root, no peer) two WireGuardStacks in this one
process exchange ``--size`` MiB over the host's loopback UDP, ``--rounds``
times: netshim's whole data path at both ends and nothing else, so its CPU
seconds per GiB move less with the machine's load than the figures above
(which include how promptly wireguard-go gets a core); for comparing two
versions of netshim, not for the issue's ratio.

Ratios are netshim over the baseline in the same run.  ``--no-tso`` makes the
TCP engine cut its own segments instead of handing the link 64 KiB packets
that :func:`netshim.stacks.wireguard.segment_tcp` cuts (the default);
``--direction`` and ``--no-baseline`` are for profiling one direction.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import subprocess
import sys
import time

import anyio

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from netshim.protocols import wireguard as wg
from netshim.stacks.wireguard import PeerConfig, WireGuardLink, WireGuardStack

MIB = 1 << 20

_SINK = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
conn, _ = server.accept()
buffer = bytearray(1 << 20)
count = 0
while n := conn.recv_into(buffer):
    count += n
conn.sendall(str(count).encode())
conn.close()
"""

_SOURCE = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
conn, _ = server.accept()
block = bytes(1 << 20)
for _ in range(int(sys.argv[3])):
    conn.sendall(block)
conn.close()
"""

_SENDER = """
import socket, sys, time
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])))
block = bytes(1 << 20)
started = time.perf_counter()
for _ in range(int(sys.argv[3])):
    conn.sendall(block)
conn.shutdown(socket.SHUT_WR)
conn.recv(100)
print(time.perf_counter() - started)
"""


def sh(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Namespace:
    """A namespace with wireguard-go's wg0 and a veth to ``peer_ns`` (None: the root namespace)."""

    def __init__(self, name: str, inner_ip: str, tunnel_ip: str) -> None:
        self.name = name
        self.inner_ip = inner_ip
        self.tunnel_ip = tunnel_ip
        # A name of its own: wireguard-go's control socket
        # (/var/run/wireguard/NAME.sock) is shared by every namespace.
        self.device = f"wg{name}"[:15]
        self.private = wg.generate_private_key()
        self.public = wg.public_key(self.private)
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", name, "wireguard-go", "-f", self.device],
            env={**os.environ, "WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            if (
                subprocess.run(
                    ["ip", "-n", name, "link", "show", self.device], capture_output=True
                ).returncode
                == 0
            ):
                break
            time.sleep(0.05)
        key = f"/tmp/{name}.key"
        with open(key, "w") as file:
            file.write(wg.key_to_text(self.private))
        sh(
            "ip",
            "netns",
            "exec",
            name,
            "wg",
            "set",
            self.device,
            "private-key",
            key,
            "listen-port",
            "51820",
        )
        os.unlink(key)
        sh("ip", "-n", name, "addr", "add", f"{tunnel_ip}/24", "dev", self.device)
        sh("ip", "-n", name, "link", "set", self.device, "mtu", "1420", "up")

    def go_pid(self) -> int:
        # wireguard-go runs as the child of "ip netns exec" (which execs it).
        return self.process.pid

    def exec(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *command]

    def add_peer(self, public: bytes, allowed: str, endpoint: str | None = None) -> None:
        arguments = ["set", self.device, "peer", wg.key_to_text(public), "allowed-ips", allowed]
        if endpoint:
            arguments += ["endpoint", endpoint]
        sh(*self.exec("wg", *arguments))

    def close(self) -> None:
        self.process.terminate()
        self.process.wait()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def veth(a: str, a_ns: str | None, a_ip: str, b: str, b_ns: str, b_ip: str) -> None:
    sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
    if a_ns:
        sh("ip", "link", "set", a, "netns", a_ns)
    sh("ip", "link", "set", b, "netns", b_ns)
    prefix = ["ip", "-n", a_ns] if a_ns else ["ip"]
    sh(*prefix, "addr", "add", f"{a_ip}/30", "dev", a)
    sh(*prefix, "link", "set", a, "up")
    sh("ip", "-n", b_ns, "addr", "add", f"{b_ip}/30", "dev", b)
    sh("ip", "-n", b_ns, "link", "set", b, "up")


def baseline(size: int, tag: str) -> tuple[float, float]:
    """MiB/s and wireguard-go CPU s/GiB of a kernel-to-kernel transfer through two wireguard-gos."""
    a = Namespace(f"nsbwa{tag}", "100.127.1.1", "10.98.0.1")
    b = Namespace(f"nsbwb{tag}", "100.127.1.2", "10.98.0.2")
    try:
        veth(f"nsbwa{tag}v"[:15], a.name, "100.127.1.1", f"nsbwb{tag}v"[:15], b.name, "100.127.1.2")
        a.add_peer(b.public, "10.98.0.2/32", "100.127.1.2:51820")
        b.add_peer(a.public, "10.98.0.1/32", "100.127.1.1:51820")
        sink = subprocess.Popen(
            b.exec(sys.executable, "-c", _SINK, "10.98.0.2", "5001"), stdout=subprocess.PIPE
        )
        assert sink.stdout is not None
        sink.stdout.readline()
        cpu = cpu_of(a.go_pid()) + cpu_of(b.go_pid())
        elapsed = float(sh(*a.exec(sys.executable, "-c", _SENDER, "10.98.0.2", "5001", str(size))))
        cpu = cpu_of(a.go_pid()) + cpu_of(b.go_pid()) - cpu
        sink.wait()
        return size / elapsed, cpu / (size / 1024)
    finally:
        a.close()
        b.close()


async def ours(
    size: int, handshakes: int, tso: bool, tag: str, directions: tuple[str, ...]
) -> dict[str, float]:
    peer = Namespace(f"nsbwc{tag}", "100.127.2.2", "10.99.0.1")
    outer = f"nsbwo{tag}"[:15]
    try:
        veth(outer, None, "100.127.2.1", f"nsbwi{tag}"[:15], peer.name, "100.127.2.2")
        WireGuardLink.tso = tso
        results: dict[str, float] = {}

        def stack() -> WireGuardStack:
            private = wg.generate_private_key()
            peer.add_peer(wg.public_key(private), "10.99.0.2/32")
            return WireGuardStack(
                private,
                addresses=["10.99.0.2/32"],
                peers=[PeerConfig(peer.public, ("10.99.0.0/24",), ("100.127.2.2", 51820))],
            )

        times = []
        for _ in range(handshakes):
            async with stack() as one:
                started = time.perf_counter()
                await one.handshake()
                times.append(time.perf_counter() - started)
        results["handshake ms"] = statistics.median(times) * 1000

        async with stack() as client:
            await client.handshake()
            for direction in directions:
                script = _SINK if direction == "upload" else _SOURCE
                port = str(random.randrange(20000, 30000))
                arguments = [sys.executable, "-c", script, "10.99.0.1", port, str(size)]
                async with await anyio.open_process(peer.exec(*arguments)) as server:
                    assert server.stdout is not None
                    await server.stdout.receive()
                    before = os.times()
                    started = time.perf_counter()
                    stream = await client.connect_tcp("10.99.0.1", int(port))
                    if direction == "upload":
                        block = bytes(MIB)
                        for _ in range(size):
                            await stream.send(block)
                        await stream.send_eof()
                        await stream.receive()
                    else:
                        got = 0
                        try:
                            while True:
                                got += len(await stream.receive(1 << 20))
                        except anyio.EndOfStream:
                            pass
                        assert got == size * MIB
                    elapsed = time.perf_counter() - started
                    after = os.times()
                    await stream.aclose()
                    await server.wait()
                results[f"{direction} MiB/s"] = size / elapsed
                user, system = after.user - before.user, after.system - before.system
                results[f"{direction} CPU s/GiB"] = (user + system) / (size / 1024)
                results[f"{direction} system s/GiB"] = system / (size / 1024)
            drops = {**client.wireguard_dropped, **client.dropped}
            if drops:
                print("dropped by netshim:", drops)
        return results
    finally:
        peer.close()
        await anyio.run_process(["ip", "link", "del", outer], check=False)


async def loopback(size: int, rounds: int) -> list[tuple[float, float, float]]:
    """MiB/s, CPU s/GiB and kernel s/GiB of ``size`` MiB between two stacks in this process."""
    client_key, server_key = wg.generate_private_key(), wg.generate_private_key()
    server = WireGuardStack(
        server_key,
        addresses=["10.66.0.1/24"],
        peers=[PeerConfig(wg.public_key(client_key), ("10.66.0.2/32",))],
        listen_host="127.0.0.1",
    )
    figures = []
    async with server:
        await server.link.open()
        local = server.link.local_address
        assert local is not None
        client = WireGuardStack(
            client_key,
            addresses=["10.66.0.2/24"],
            peers=[PeerConfig(wg.public_key(server_key), ("10.66.0.0/24",), local)],
            listen_host="127.0.0.1",
        )
        listener = await server.listen_tcp("10.66.0.1", 7000)
        async with client:
            await client.handshake()

            async def sink(got: list[int]) -> None:
                stream = await listener.accept()
                count = 0
                try:
                    while True:
                        count += len(await stream.receive(1 << 20))
                except anyio.EndOfStream:
                    pass
                got.append(count)
                await stream.aclose()

            for _ in range(rounds):
                got: list[int] = []
                async with anyio.create_task_group() as group:
                    group.start_soon(sink, got)
                    before = os.times()
                    started = time.perf_counter()
                    stream = await client.connect_tcp("10.66.0.1", 7000)
                    block = bytes(MIB)
                    for _ in range(size):
                        await stream.send(block)
                    await stream.send_eof()
                await stream.aclose()
                elapsed = time.perf_counter() - started
                after = os.times()
                assert got == [size * MIB]
                user, system = after.user - before.user, after.system - before.system
                gib = size / 1024
                figures.append((size / elapsed, (user + system) / gib, system / gib))
        await listener.aclose()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="MiB per transfer (default 64)")
    parser.add_argument("--handshakes", type=int, default=5)
    parser.add_argument("--no-tso", action="store_true", help="the TCP engine segments")
    parser.add_argument(
        "--direction", choices=("upload", "download"), help="only this one (default: both)"
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip wireguard-go <-> wireguard-go (profiling)"
    )
    parser.add_argument(
        "--loopback", action="store_true", help="only two stacks in this process (no root)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="transfers with --loopback")
    arguments = parser.parse_args()
    if arguments.loopback:
        for rate, cpu, kernel in anyio.run(loopback, arguments.size, arguments.rounds):
            print(
                f"netshim -> netshim over loopback: {rate:8.1f} MiB/s, {cpu:.1f} CPU s/GiB "
                f"for both ends (kernel {kernel:.1f})"
            )
        print("load average: " + ", ".join(f"{load:.2f}" for load in os.getloadavg()))
        return
    tag = str(os.getpid() % 10000)
    directions = (arguments.direction,) if arguments.direction else ("upload", "download")
    base_rate = math.nan
    if not arguments.no_baseline:
        base_rate, base_cpu = baseline(arguments.size, tag)
        print(
            f"wireguard-go <-> wireguard-go: {base_rate:8.1f} MiB/s, "
            f"{base_cpu:.2f} CPU s/GiB (both wireguard-go)"
        )
    figures = anyio.run(
        ours, arguments.size, arguments.handshakes, not arguments.no_tso, tag, directions
    )
    print(f"handshake, netshim -> wireguard-go: {figures['handshake ms']:.1f} ms (median)")
    for direction in directions:
        rate = figures[f"{direction} MiB/s"]
        print(
            f"netshim {direction:8s} via wireguard-go: {rate:8.1f} MiB/s "
            f"({rate * 8 * 1.048576:.0f} Mbit/s), {figures[f'{direction} CPU s/GiB']:.1f} "
            f"CPU s/GiB (kernel {figures[f'{direction} system s/GiB']:.1f})"
            + ("" if math.isnan(base_rate) else f", {rate / base_rate:.3f}x the baseline")
        )
    # The rates move with the machine's load (2 cores shared here): say it.
    print("load average: " + ", ".join(f"{load:.2f}" for load in os.getloadavg()))


if __name__ == "__main__":
    main()
