"""The gateway benchmark's WispStack client (or the same code over kernel TCP), as JSON.

    python benchmarks/wisp_bench_client.py '<plan as JSON>'

Speaks benchmarks/bench_pattern.py's protocol through ``WispStack`` (``"url":
"wisp://..."``) or, for the baseline, through ``HostStack`` (``"url": null``,
to ``host:port`` directly or through a TCP relay).  Each stream sends its
header and its upload in 64 KiB ``bytes`` writes (made before the clock
starts; the WispStack's packet size), while reading with ``receive(1 MiB)``
until the target closes the stream, checking every piece read against the
pattern (one ``memcmp``, no hashing).  A stream is stalled when neither
direction moved for ``stall`` seconds (it is then aborted).

A plan is ``{"url", "host", "port", "streams": [{"tag", "upload",
"download"}], "sequential": bool, "stall": seconds, "confirm": bool
(WispStack's confirm_streams, default true), "loop": "asyncio" or
"uvloop", "lan": {"lan", "member", "token"} to join a gateway's LAN}``;
the result is as benchmarks/socket_bench_client.py's.  The
WebSocket and the Wisp handshake happen before the orchestrator's go, so
outside the timed interval, as in the wisp-js client.

It runs in a process of its own so that the target's and the servers' work
never shares its interpreter, and so that its CPU time is its own.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS.parent))
sys.path.insert(0, str(BENCHMARKS))

from bench_pattern import SMALL, Checker, finish, ready, request, upload_chunks  # noqa: E402

from netshim import HostStack, Stack, WispStack  # noqa: E402


class Stream:
    """One planned transfer: its prepared upload and what happened to it."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.tag, self.upload, self.download = (int(spec[k]) for k in ("tag", "upload", "download"))
        self.head = request(self.upload, self.download, self.tag)
        self.chunks = upload_chunks(self.tag, self.upload) if self.upload > SMALL else []
        self.checker = Checker(self.tag)
        self.status = "ok"
        self.first: float | None = None
        self.seconds = 0.0
        self.progress = 0.0

    def report(self) -> dict[str, Any]:
        """The stream's JSON result."""
        return {
            "tag": self.tag,
            "status": self.status,
            "received": self.checker.offset,
            "bad": self.checker.bad,
            "seconds": self.seconds,
            "first": self.first,
        }


async def run_stream(stack: Stack, host: str, port: int, spec: Stream, stall: float) -> None:
    """Move one stream; a watchdog aborts it after ``stall`` seconds without progress."""
    started = spec.progress = time.perf_counter()

    async def transfer(stream: anyio.abc.ByteStream) -> None:
        async def send() -> None:
            await stream.send(spec.head)
            for chunk in spec.chunks:
                await stream.send(chunk)
                spec.progress = time.perf_counter()

        async with anyio.create_task_group() as group:
            group.start_soon(send)
            # Read to the end: the target closes the stream once it has the
            # whole upload and sent the whole download, so a stream cut short
            # anywhere shows as short.
            while True:
                try:
                    data = await stream.receive(1 << 20)
                except anyio.EndOfStream:
                    break
                if spec.first is None:
                    spec.first = time.perf_counter() - started
                spec.checker.check(data)
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
    if spec.status == "ok" and spec.checker.offset != spec.download:
        spec.status = "short"


async def main(plan: dict[str, Any]) -> None:
    """Run ``plan`` between the orchestrator's go and the printed result."""
    streams = [Stream(s) for s in plan["streams"]]
    stall = float(plan.get("stall", 10))
    host, port = plan["host"], int(plan["port"])
    stack: Stack
    if plan["url"] is None:
        stack = HostStack()
    else:
        # The stack's own stall timeout is left out of the way of the watchdog's count.
        wisp_stack = WispStack(
            plan["url"],
            stall_timeout=math.inf,
            confirm_streams=plan.get("confirm", True),
            # A LAN member (benchmarks/lan.py): {"lan", "member", "token"}.
            **plan.get("lan", {}),
        )
        await wisp_stack.connect()
        stack = wisp_stack
    await anyio.to_thread.run_sync(ready)
    started = time.perf_counter()
    if plan.get("sequential"):
        for spec in streams:
            await run_stream(stack, host, port, spec, stall)
    else:
        async with anyio.create_task_group() as group:
            for spec in streams:
                group.start_soon(run_stream, stack, host, port, spec, stall)
    elapsed = time.perf_counter() - started
    await anyio.to_thread.run_sync(
        finish, {"elapsed": elapsed, "streams": [s.report() for s in streams]}
    )
    await stack.aclose()


if __name__ == "__main__":
    loop = json.loads(sys.argv[1]).get("loop", "asyncio")
    anyio.run(main, json.loads(sys.argv[1]), backend_options={"use_uvloop": loop == "uvloop"})
