"""Tunnel stack benchmarks: throughput and connect latency through each stack vs kernel loopback.

    python benchmarks/tunnels.py [--quick]

One run measures, against the same target on loopback: a single-stream
download and upload (MiB/s) and the median time to connect and get a first
byte back, directly on the host network (the baseline) and through
WispStack, Socks5Stack (socks5h) and WebsockifyStack to our gateway, which
runs as its own process.  Then the wisp-js Node client
(tests/peers/node/wisp_client.mjs, after ``npm ci`` there) and our
WispStack download the same bytes from the same gateway.  Every transfer's
SHA-256 is checked; ratios are printed against the baseline.  Target from
issue 6: our Wisp client >= 1.0x the wisp-js client.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "tunnels"))

from tunnel_helpers import (  # noqa: E402
    NODE_PEERS,
    BulkTarget,
    bulk_exchange,
    bulk_target,
    free_port,
    wait_for_port,
)

from netshim import HostStack, Socks5Stack, Stack, WebsockifyStack, WispStack  # noqa: E402

MIB = 1 << 20


async def transfer(stack: Stack, target: BulkTarget, upload: int, download: int) -> float:
    """Seconds for one bulk transfer; checks both digests against the target's."""
    before = len(target.transfers)
    started = time.perf_counter()
    stream = await stack.connect_tcp(*target.address)
    async with stream:
        up, down, received = await bulk_exchange(stream, upload, download)
    elapsed = time.perf_counter() - started
    with anyio.fail_after(10):
        while len(target.transfers) == before:  # noqa: ASYNC110
            await anyio.sleep(0.001)
    record = target.transfers[-1]
    assert received == download, f"got {received} of {download} bytes"
    assert (record.up_sha, record.down_sha) == (up, down), "a transfer was corrupted"
    return elapsed


async def connect_latency(stack: Stack, target: BulkTarget, count: int) -> float:
    """Median seconds to connect and read the first byte of a reply."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        stream = await stack.connect_tcp(*target.address)
        async with stream:
            await bulk_exchange(stream, 0, 1)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


async def node_download(url: str, target: BulkTarget, size: int) -> float:
    host, port = target.address
    plan = {
        "mode": "wisp",
        "url": url.replace("wisp://", "ws://", 1),  # wisp-js takes ws:// URLs only
        "version": 2,
        "streams": [{"type": "tcp", "host": host, "port": port, "upload": 0, "download": size}],
    }
    command = [
        shutil.which("node") or "node",
        str(NODE_PEERS / "wisp_client.mjs"),
        json.dumps(plan),
    ]
    result = json.loads((await anyio.run_process(command)).stdout)
    stream = result["streams"][0]
    assert stream["received"] == size, f"wisp-js got {stream['received']} of {size} bytes"
    assert stream["down"] == target.transfers[-1].down_sha, "wisp-js download corrupted"
    return float(result["elapsed_ms"]) / 1000


async def main(quick: bool) -> None:
    size = (16 if quick else 64) * MIB
    repeats = 2 if quick else 3
    connects = 50 if quick else 200
    port, socks_port = free_port(), free_port()
    command = [sys.executable, "-m", "netshim", "gateway", "--port", str(port)]
    command += ["--socks-port", str(socks_port), "--allow", "127.0.0.1", "--log-level", "WARNING"]
    gateway = await anyio.open_process(command, stdout=None, stderr=None)
    try:
        await wait_for_port("127.0.0.1", port)
        await wait_for_port("127.0.0.1", socks_port)
        wisp_url = f"wisp://127.0.0.1:{port}/"
        stacks: dict[str, Callable[[], Stack]] = {
            "direct": HostStack,
            "wisp": lambda: WispStack(wisp_url),
            "socks5h": lambda: Socks5Stack(f"socks5h://127.0.0.1:{socks_port}"),
            "websockify": lambda: WebsockifyStack(f"ws://127.0.0.1:{port}/"),
        }
        async with bulk_target() as target:
            print(
                f"single stream, {size // MIB} MiB, best of {repeats};"
                f" connect and first byte: median of {connects}"
            )
            print(
                f"{'stack':<11} {'down MiB/s':>11} {'ratio':>6} {'up MiB/s':>9} {'ratio':>6}"
                f" {'connect ms':>11} {'ratio':>6}"
            )
            baseline: tuple[float, float, float] | None = None
            for name, make in stacks.items():
                stack = make()
                down = max(
                    [size / MIB / await transfer(stack, target, 0, size) for _ in range(repeats)]
                )
                up = max(
                    [size / MIB / await transfer(stack, target, size, 0) for _ in range(repeats)]
                )
                latency = await connect_latency(stack, target, connects) * 1000
                await stack.aclose()
                baseline = baseline or (down, up, latency)
                print(
                    f"{name:<11} {down:>11.0f} {down / baseline[0]:>5.2f}x {up:>9.0f}"
                    f" {up / baseline[1]:>5.2f}x {latency:>11.3f} {latency / baseline[2]:>5.2f}x"
                )
            ours = WispStack(wisp_url)
            mine = max([size / MIB / await transfer(ours, target, 0, size) for _ in range(repeats)])
            await ours.aclose()
            theirs = max(
                [size / MIB / await node_download(wisp_url, target, size) for _ in range(repeats)]
            )
            print(f"Wisp client download through our gateway, {size // MIB} MiB:")
            print(f"  netshim WispStack {mine:8.0f} MiB/s")
            print(f"  wisp-js (Node)    {theirs:8.0f} MiB/s")
            print(f"  ratio netshim / wisp-js: {mine / theirs:.2f}x (target >= 1.0x)")
    finally:
        gateway.terminate()
        await gateway.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller transfers, fewer samples")
    anyio.run(main, parser.parse_args().quick)
