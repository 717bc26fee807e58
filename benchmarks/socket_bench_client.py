"""The gateway benchmark's plain-socket client: the fastest client, for the baseline's ceiling.

    python benchmarks/socket_bench_client.py '<plan as JSON>'

Speaks benchmarks/bench_pattern.py's protocol over kernel TCP with blocking
sockets, a thread per stream: the upload is ``sendall`` of 4 MiB slices of the
prebuilt pattern, the download is read with ``recv_into`` into a 1 MiB buffer
and checked by one ``memcmp`` per read.  It reaches a destination only
directly or through a plain TCP relay (``socat``).

A plan is ``{"host", "port", "streams": [{"tag", "upload", "download"}],
"sequential": bool, "stall": seconds}``; the result is ``{"elapsed",
"streams": [{"tag", "status" ("ok", "short", "stalled", "error: ..."),
"received", "bad" (offset of the first wrong byte or null), "seconds",
"first" (seconds from connect to the first byte received)}]}``.  A stream is
stalled when one ``send`` or ``recv`` waits ``stall`` seconds.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pattern import SMALL, WINDOW, Checker, finish, payload, ready, request


def run_stream(host: str, port: int, spec: dict[str, Any], stall: float) -> dict[str, Any]:
    """Move one stream; its result."""
    tag, upload, download = int(spec["tag"]), int(spec["upload"]), int(spec["download"])
    checker = Checker(tag)
    result: dict[str, Any] = {"tag": tag, "status": "ok", "first": None}
    started = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=stall) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(request(upload, download, tag))
            if upload > SMALL:
                for offset in range(0, upload, WINDOW):
                    sock.sendall(payload(tag, offset, min(WINDOW, upload - offset)))
            # Read to the end: the target closes once it sent the download.
            buffer = memoryview(bytearray(1 << 20))
            while count := sock.recv_into(buffer):
                if result["first"] is None:
                    result["first"] = time.perf_counter() - started
                checker.check(buffer[:count])
    except TimeoutError:
        result["status"] = "stalled"
    except OSError as exc:
        result["status"] = f"error: {exc!r}"
    result["seconds"] = time.perf_counter() - started
    result["received"] = checker.offset
    result["bad"] = checker.bad
    if result["status"] == "ok" and checker.offset != download:
        result["status"] = "short"
    return result


def main(plan: dict[str, Any]) -> None:
    """Run ``plan`` between the orchestrator's go and the printed result."""
    host, port, stall = plan["host"], int(plan["port"]), float(plan.get("stall", 10))
    streams = plan["streams"]
    results: list[dict[str, Any]] = [{} for _ in streams]

    def one(index: int) -> None:
        results[index] = run_stream(host, port, streams[index], stall)

    ready()
    started = time.perf_counter()
    if plan.get("sequential"):
        for index in range(len(streams)):
            one(index)
    else:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(streams))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finish({"elapsed": time.perf_counter() - started, "streams": results})


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
