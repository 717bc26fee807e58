"""Tunnel stack benchmarks: throughput and connect latency through each stack vs kernel loopback.

    python benchmarks/tunnels.py [--quick]

One run measures, against the same target on loopback: a single-stream
download and upload (MiB/s) and the median time to connect and get a first
byte back, directly on the host network (the baseline) and through
WispStack, Socks5Stack (socks5h) and WebsockifyStack to our gateway.  Then
the wisp-js Node client (tests/peers/node/wisp_client.mjs, after ``npm ci``
there) and our WispStack move the same bytes through the same server, once
through our gateway and once through the wisp-js server.  Every transfer's
SHA-256 is checked; ratios are printed against the baseline.  Target from
issue 6: our Wisp client >= 1.0x the wisp-js client.

Fairness: the gateway, the wisp-js server and the target (which generates
and hashes every byte, benchmarks/bulk_target.py) each run in a process of
their own, so only the client's work shares the benchmark's process.  Both
clients prepare and hash their upload before the clock starts and hash the
download as it arrives.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import anyio.streams.text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "tunnels"))

from tunnel_helpers import (  # noqa: E402
    NODE_PEERS,
    BulkTarget,
    Transfer,
    free_port,
    wait_for_port,
)

from netshim import HostStack, Socks5Stack, Stack, WebsockifyStack, WispStack  # noqa: E402

MIB = 1 << 20
# The size of each write, as the wisp-js benchmark client writes.
CHUNK = 64 * 1024


def node() -> str:
    """The ``node`` program, after checking that the Node peers are installed."""
    program = shutil.which("node")
    if program is None or not (NODE_PEERS / "node_modules" / "@mercuryworkshop").is_dir():
        sys.exit(f"needs node and 'npm ci' in {NODE_PEERS}")
    return program


@asynccontextmanager
async def target_process() -> AsyncIterator[BulkTarget]:
    """The bulk target in its own process; its transfers appear in ``transfers``."""
    command = [sys.executable, str(ROOT / "benchmarks" / "bulk_target.py")]
    async with await anyio.open_process(command, stderr=None) as process:
        assert process.stdout is not None
        lines = anyio.streams.text.TextReceiveStream(process.stdout)
        target = BulkTarget()
        buffered = ""

        async def read_lines() -> None:
            nonlocal buffered
            async for text in lines:
                buffered += text
                while "\n" in buffered:
                    line, buffered = buffered.split("\n", 1)
                    record = json.loads(line)
                    if "port" in record:
                        target.address = ("127.0.0.1", record["port"])
                    else:
                        target.transfers.append(Transfer(**record))

        async with anyio.create_task_group() as group:
            group.start_soon(read_lines)
            with anyio.fail_after(20):
                while target.address[1] == 0:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            try:
                yield target
            finally:
                process.terminate()
                group.cancel_scope.cancel()


@asynccontextmanager
async def wisp_js_server() -> AsyncIterator[str]:
    """The wisp-js server (tests/peers/node/wisp_server.mjs); yields its URL."""
    command = [node(), str(NODE_PEERS / "wisp_server.mjs"), "{}"]
    async with await anyio.open_process(command, stderr=None) as process:
        assert process.stdout is not None
        line = b""
        with anyio.fail_after(20):
            while not line.endswith(b"\n"):
                line += await process.stdout.receive(1)
        try:
            yield f"wisp://127.0.0.1:{json.loads(line)['port']}/"
        finally:
            process.terminate()


def prepare_upload(size: int) -> tuple[list[bytes], str]:
    """An upload's chunks and SHA-256, made before the clock starts."""
    chunks = [os.urandom(min(CHUNK, size - offset)) for offset in range(0, size, CHUNK)]
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return chunks, digest.hexdigest()


async def exchange(
    stream: anyio.abc.ByteStream, chunks: list[bytes], download: int, *, to_end: bool = True
) -> tuple[str, int]:
    """Send the header and ``chunks`` while reading the reply: (SHA-256 down, bytes down).

    With ``to_end`` it reads until the target closes, which it does once it
    swallowed the whole upload: a stream closed right behind its last DATA
    loses its tail through the wisp-js server (see docs/tunnels.md), and an
    upload is only done when the target has it.
    """
    down = hashlib.sha256()
    received = 0
    upload = sum(len(chunk) for chunk in chunks)

    async def send() -> None:
        await stream.send(struct.pack("!QQ", upload, download))
        for chunk in chunks:
            await stream.send(chunk)

    async with anyio.create_task_group() as group:
        group.start_soon(send)
        while to_end or received < download:
            try:
                data = await stream.receive(1 << 20)
            except anyio.EndOfStream:
                break
            down.update(data)
            received += len(data)
    return down.hexdigest(), received


async def transfer(stack: Stack, target: BulkTarget, upload: int, download: int) -> float:
    """Seconds for one bulk transfer; checks both digests against the target's."""
    chunks, up = prepare_upload(upload)
    before = len(target.transfers)
    started = time.perf_counter()
    stream = await stack.connect_tcp(*target.address)
    async with stream:
        down, received = await exchange(stream, chunks, download)
    elapsed = time.perf_counter() - started
    await reported(target, before + 1)
    record = target.transfers[-1]
    assert received == download, f"got {received} of {download} bytes"
    assert (record.up_sha, record.down_sha) == (up, down), "a transfer was corrupted"
    return elapsed


async def reported(target: BulkTarget, count: int) -> None:
    """Wait until the target process reported ``count`` transfers in all."""
    with anyio.fail_after(10):
        while len(target.transfers) < count:  # noqa: ASYNC110
            await anyio.sleep(0.001)


async def connect_latency(stack: Stack, target: BulkTarget, count: int) -> float:
    """Median seconds to connect and read the first byte of a reply."""
    before = len(target.transfers)
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        stream = await stack.connect_tcp(*target.address)
        async with stream:
            await exchange(stream, [], 1, to_end=False)
        samples.append(time.perf_counter() - started)
    # The reports trail the transfers: let them all in before the next count.
    await reported(target, before + count)
    return statistics.median(samples)


async def node_transfer(url: str, target: BulkTarget, upload: int, download: int) -> float:
    """Seconds the wisp-js client takes for one bulk transfer (its own clock), checked."""
    host, port = target.address
    plan = {
        "mode": "wisp",
        "url": url.replace("wisp://", "ws://", 1),  # wisp-js takes ws:// URLs only
        "version": 2,
        "streams": [
            {"type": "tcp", "host": host, "port": port, "upload": upload, "download": download}
        ],
    }
    before = len(target.transfers)
    command = [node(), str(NODE_PEERS / "wisp_client.mjs"), json.dumps(plan)]
    result = json.loads((await anyio.run_process(command)).stdout)
    stream = result["streams"][0]
    await reported(target, before + 1)
    record = target.transfers[-1]
    assert stream["received"] == download, f"wisp-js got {stream['received']} of {download}"
    assert (stream["up"], stream["down"]) == (record.up_sha, record.down_sha), "wisp-js corrupted"
    return float(result["elapsed_ms"]) / 1000


async def compare_clients(url: str, target: BulkTarget, size: int, repeats: int) -> None:
    """Our WispStack and the wisp-js client through the server at ``url``, both ways."""
    ours = WispStack(url)
    rates: dict[str, list[float]] = {}
    for name, up, down in (("down", 0, size), ("up", size, 0)):
        # Alternated, so that a burst of load on the machine hits both clients.
        for _ in range(repeats):
            rates.setdefault(f"ours {name}", []).append(
                size / MIB / await transfer(ours, target, up, down)
            )
            rates.setdefault(f"wisp-js {name}", []).append(
                size / MIB / await node_transfer(url, target, up, down)
            )
    await ours.aclose()
    for name in ("down", "up"):
        mine, theirs = max(rates[f"ours {name}"]), max(rates[f"wisp-js {name}"])
        print(
            f"  {name + 'load':<9} netshim {mine:6.0f} MiB/s  wisp-js {theirs:6.0f} MiB/s"
            f"  ratio {mine / theirs:.2f}x"
        )


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
        async with target_process() as target:
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
            print(
                f"Wisp clients, {size // MIB} MiB single stream, best of {repeats}"
                " (target: netshim / wisp-js >= 1.0x)"
            )
            print("through our gateway:")
            await compare_clients(wisp_url, target, size, repeats)
            async with wisp_js_server() as url:
                print("through the wisp-js server:")
                await compare_clients(url, target, size, repeats)
    finally:
        gateway.terminate()
        await gateway.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller transfers, fewer samples")
    anyio.run(main, parser.parse_args().quick)
