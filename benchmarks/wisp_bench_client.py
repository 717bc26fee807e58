"""The benchmarks' Python client: bulk transfers through WispStack (or direct TCP), as JSON.

    python benchmarks/wisp_bench_client.py '<plan as JSON>'

A plan is ``{"url": "wisp://..." or null for direct kernel TCP, "host", "port",
"streams": [{"upload": N, "download": N}], "sequential": bool, "stall": seconds,
"cpu": CPU number or null, "confirm": bool (WispStack's confirm_streams, default
true)}``.  Each stream sends the bulk target's 16-byte
header and its upload, then reads until the target closes the stream; it is
stalled when neither direction moved for ``stall`` seconds (it is then
aborted).  Uploads are made and hashed before the clock starts.  Prints one
JSON object: ``elapsed`` (seconds for all streams) and per stream ``up`` and
``down`` (SHA-256), ``received``, ``seconds`` and ``status`` (``ok``,
``short``, ``stalled`` or ``error``).

It runs in a process of its own so that the target's and the servers' work
never shares its interpreter, and so that ``cpu`` can pin it alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netshim import HostStack, Stack, WispStack

# The size of each write, as the wisp-js benchmark client writes.
CHUNK = 64 * 1024


class Stream:
    """One planned transfer: its prepared upload and what happened to it."""

    def __init__(self, upload: int, download: int) -> None:
        self.upload = upload
        self.download = download
        self.chunks = [os.urandom(min(CHUNK, upload - at)) for at in range(0, upload, CHUNK)]
        digest = hashlib.sha256()
        for chunk in self.chunks:
            digest.update(chunk)
        self.up = digest.hexdigest()
        self.received = 0
        self.down = ""
        self.status = "ok"
        self.seconds = 0.0
        self.progress = 0.0

    def report(self) -> dict[str, Any]:
        """The stream's JSON result."""
        return {
            "up": self.up,
            "down": self.down,
            "received": self.received,
            "seconds": self.seconds,
            "status": self.status,
        }


async def run_stream(stack: Stack, host: str, port: int, spec: Stream, stall: float) -> None:
    """Move one stream; a watchdog aborts it after ``stall`` seconds without progress."""
    started = spec.progress = time.perf_counter()
    down = hashlib.sha256()

    async def transfer(stream: anyio.abc.ByteStream) -> None:
        async def send() -> None:
            await stream.send(struct.pack("!QQ", spec.upload, spec.download))
            for chunk in spec.chunks:
                await stream.send(chunk)
                spec.progress = time.perf_counter()

        async with anyio.create_task_group() as group:
            group.start_soon(send)
            # Read to the end rather than to ``download`` bytes: the stream is
            # closed only after the target has swallowed the whole upload, so a
            # server that drops data still held when the client closes is not
            # given the chance, and a truncated download shows as short.
            while True:
                try:
                    data = await stream.receive(1 << 20)
                except anyio.EndOfStream:
                    break
                down.update(data)
                spec.received += len(data)
                spec.progress = time.perf_counter()

    async def watchdog(scope: anyio.CancelScope) -> None:
        while True:
            await anyio.sleep(min(1.0, stall / 4))
            if time.perf_counter() - spec.progress > stall:
                spec.status = "stalled"
                scope.cancel()
                return

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(watchdog, group.cancel_scope)
            stream = await stack.connect_tcp(host, port)
            try:
                await transfer(stream)
            finally:
                with anyio.CancelScope(shield=True):
                    await stream.aclose()
            group.cancel_scope.cancel()
    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
        spec.status = f"error: {exc!r}"
    spec.seconds = time.perf_counter() - started
    spec.down = down.hexdigest()
    if spec.status == "ok" and spec.received != spec.download:
        spec.status = "short"


async def main(plan: dict[str, Any]) -> None:
    """Run ``plan`` and print its JSON result."""
    if plan.get("cpu") is not None:
        os.sched_setaffinity(0, {int(plan["cpu"])})
    streams = [Stream(s["upload"], s["download"]) for s in plan["streams"]]
    stall = float(plan.get("stall", 10))
    host, port = plan["host"], int(plan["port"])
    stack: Stack
    if plan["url"] is None:
        stack = HostStack()
    else:
        # The stack's own stall timeout is left out of the way of the watchdog's count.
        wisp_stack = WispStack(
            plan["url"], stall_timeout=math.inf, confirm_streams=plan.get("confirm", True)
        )
        # The WebSocket and the Wisp handshake are outside the timed interval,
        # as in the wisp-js client, which waits for its connection to open.
        await wisp_stack.connect()
        stack = wisp_stack
    started = time.perf_counter()
    if plan.get("sequential"):
        for spec in streams:
            await run_stream(stack, host, port, spec, stall)
    else:
        async with anyio.create_task_group() as group:
            for spec in streams:
                group.start_soon(run_stream, stack, host, port, spec, stall)
    elapsed = time.perf_counter() - started
    await stack.aclose()
    print(json.dumps({"elapsed": elapsed, "streams": [s.report() for s in streams]}))


if __name__ == "__main__":
    anyio.run(main, json.loads(sys.argv[1]))
