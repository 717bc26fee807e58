"""Queries per second of netshim's DNS server against dnsmasq, same client, same run.

Both servers run as their own processes on 127.0.0.1 and answer the same A
record from local data (our :func:`netshim.dns.serve` with a zone on the
host stack; dnsmasq with ``--address``).  One client, a plain blocking UDP
socket in this process, keeps ``WINDOW`` queries outstanding for
``DURATION`` seconds against each in turn and counts the answers; it does
the same against a Python UDP echo (not DNS) as a ceiling for the client.

    python benchmarks/dns.py [--duration SECONDS]

Prints queries per second and the ratio ours / dnsmasq.  Needs dnsmasq.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import dnslib

WINDOW = 16
DURATION = 3.0
NAME = "bench.test"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve_ours(port: int) -> None:
    """Run our server until killed (in a child process)."""
    import anyio

    from netshim import HostStack, dns

    async def main() -> None:
        zone = dns.Zone()
        zone.add(NAME, "A", "192.0.2.1")
        async with dns.serve(HostStack(), zone, host="127.0.0.1", port=port):
            print("ready", flush=True)
            await anyio.sleep_forever()

    anyio.run(main)


def serve_echo(port: int) -> None:
    """A bare Python UDP echo (sets QR): what one Python socket round costs, no DNS."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", port))
        print("ready", flush=True)
        while True:
            data, address = sock.recvfrom(2048)
            sock.sendto(data[:2] + b"\x81\x80" + data[4:], address)


def measure(port: int, duration: float) -> float:
    """Answers per second with WINDOW queries in flight."""
    queries = [bytes(dnslib.DNSRecord.question(NAME, "A").pack()) for _ in range(WINDOW)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        sock.settimeout(0.5)
        # Warm up, and make sure the server answers at all.
        for _ in range(50):
            sock.send(queries[0])
            sock.recv(2048)
        answered = 0
        for query in queries:
            sock.send(query)
        start = time.perf_counter()
        deadline = start + duration
        while time.perf_counter() < deadline:
            try:
                sock.recv(2048)
            except TimeoutError:
                # A lost answer: put a query back in flight.
                sock.send(queries[0])
                continue
            answered += 1
            sock.send(queries[answered % WINDOW])
        elapsed = time.perf_counter() - start
    return answered / elapsed


def start(command: list[str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert process.stdout is not None
    if process.stdout.readline().strip() != b"ready":
        process.kill()
        raise RuntimeError(f"{command[0]} did not start")
    return process


def start_dnsmasq(program: str, port: int, directory: str) -> subprocess.Popen[bytes]:
    config = os.path.join(directory, "dnsmasq.conf")
    with open(config, "w") as out:
        out.write(
            "no-resolv\nno-hosts\nbind-interfaces\nlisten-address=127.0.0.1\nuser=root\n"
            f"pid-file=\nport={port}\naddress=/{NAME}/192.0.2.1\nlocal=/test/\n"
        )
    process = subprocess.Popen(
        [program, "--no-daemon", f"--conf-file={config}"], stderr=subprocess.DEVNULL
    )
    probe = bytes(dnslib.DNSRecord.question(NAME, "A").pack())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.1)
        for _ in range(100):
            try:
                sock.sendto(probe, ("127.0.0.1", port))
                sock.recvfrom(2048)
                return process
            except OSError:
                continue
    process.kill()
    raise RuntimeError("dnsmasq did not start answering")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=DURATION)
    parser.add_argument("--serve-ours", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-echo", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_ours:
        serve_ours(args.serve_ours)
        return
    if args.serve_echo:
        serve_echo(args.serve_echo)
        return
    program = shutil.which("dnsmasq")
    if program is None:
        sys.exit("dnsmasq is not installed (Debian: apt-get install dnsmasq-base)")
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as directory:
        for label in ("Python UDP echo", "dnsmasq", "netshim dns.serve"):
            port = free_port()
            if label == "dnsmasq":
                process = start_dnsmasq(program, port, directory)
            elif label == "Python UDP echo":
                process = start([sys.executable, __file__, "--serve-echo", str(port)])
            else:
                process = start([sys.executable, __file__, "--serve-ours", str(port)])
            try:
                results[label] = measure(port, args.duration)
            finally:
                process.kill()
                process.wait()
    print(f"UDP A queries, {WINDOW} in flight, {args.duration:.0f} s each, one client:")
    for label, qps in results.items():
        print(f"  {label:20} {qps:10.0f} queries/s")
    ratio = results["netshim dns.serve"] / results["dnsmasq"]
    print(f"  netshim / dnsmasq    {ratio:10.2f}")
    echo = results["netshim dns.serve"] / results["Python UDP echo"]
    print(f"  netshim / echo       {echo:10.2f}")


if __name__ == "__main__":
    main()
