"""The LAN benchmark's target: bench_pattern's target as a LAN member behind a Wisp gateway.

    python benchmarks/lan_target.py '{"url": "wisp://...", "lan": "bench", "member": "target",
                                      "token": "...", "port": 9000, "loop": "uvloop"}'

Joins the LAN through ``WispStack`` and listens on ``port`` of its LAN address; each
connection (from another member, through the gateway) is served as
benchmarks/bulk_target.py ``--pattern`` serves one: read the 24-byte header, check the
upload against the pattern piece by piece (one ``memcmp`` each), send the download from
the prebuilt pattern buffer, close, and print one JSON report line.  The first line
printed is ``{"port": PORT}`` once the listener is bound, as bulk_target.py prints its
port, so benchmarks/gateway.py's ``Target`` reads both alike.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS.parent))
sys.path.insert(0, str(BENCHMARKS))

from bench_pattern import HEADER, Checker, upload_chunks  # noqa: E402

from netshim import WispStack  # noqa: E402
from netshim.stack import TcpStream  # noqa: E402


async def receive_exactly(stream: TcpStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        data += await stream.receive(size - len(data))
    return data


async def serve(stream: TcpStream) -> None:
    report: dict[str, object] = {"tag": None, "up": 0, "up_ok": True, "down": 0, "error": None}
    try:
        async with stream:
            upload, download, tag = HEADER.unpack(await receive_exactly(stream, HEADER.size))
            report["tag"] = tag
            checker = Checker(tag)
            while checker.offset < upload:
                data = await stream.receive(min(1 << 20, upload - checker.offset))
                checker.check(data)
                report["up"] = checker.offset
                report["up_ok"] = checker.bad is None
            # Made before sending, as the clients make their uploads: CHUNK-byte
            # writes, the stack's packet size, repeated by reference.
            for chunk in upload_chunks(tag, download):
                await stream.send(chunk)
                report["down"] = int(str(report["down"])) + len(chunk)
    except (OSError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
        report["error"] = repr(exc)
    print(json.dumps(report), flush=True)


async def main(plan: dict[str, object]) -> None:
    stack = WispStack(
        str(plan["url"]), lan=str(plan["lan"]), member=str(plan["member"]), token=str(plan["token"])
    )
    await stack.connect()
    listener = await stack.listen_tcp(None, int(str(plan["port"])), backlog=256)
    print(json.dumps({"port": listener.local_address[1]}), flush=True)
    async with anyio.create_task_group() as group:
        while True:
            stream = await listener.accept()
            group.start_soon(serve, stream)


if __name__ == "__main__":
    plan = json.loads(sys.argv[1])
    anyio.run(main, plan, backend_options={"use_uvloop": plan.get("loop") == "uvloop"})
