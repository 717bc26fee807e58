"""The benchmarks' bulk targets, each in a process of its own.

    python benchmarks/bulk_target.py            # the tests' hashing target (benchmarks/tunnels.py)
    python benchmarks/bulk_target.py --pattern  # the fast target (benchmarks/gateway.py)

Both listen on 127.0.0.1 (port chosen by the kernel), print one JSON line with
the port, then one line per finished transfer.

Without ``--pattern`` it is tests/transfer_targets.py's target on anyio: a
16-byte header, ``os.urandom`` for every 64 KiB it sends and SHA-256 of every
byte both ways, which caps it at about 340 MiB/s on a 2-core machine; its
lines carry the digests and sizes.

With ``--pattern`` it speaks benchmarks/bench_pattern.py's protocol, built
not to be the bottleneck: blocking sockets, a thread per connection (the
kernel copies run without the GIL), downloads sent as ``sendall`` of slices
of a prebuilt buffer (4 MiB per call, no copy in user space), uploads read
with ``recv_into`` and checked by one ``memcmp`` per read.  Its lines are
``{"tag", "up" (bytes received), "up_ok" (the pattern matched), "down"
(bytes sent), "error"}``.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
from pathlib import Path

import anyio

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS.parent / "tests"))
sys.path.insert(0, str(BENCHMARKS))

from bench_pattern import HEADER, WINDOW, Checker, payload  # noqa: E402

# Reports from the connection threads, one line each.
_print_lock = threading.Lock()


async def hashing_target() -> None:
    """The tests' target (tests/transfer_targets.py), reporting each transfer's digests."""
    from transfer_targets import bulk_target

    async with bulk_target() as target:
        print(json.dumps({"port": target.address[1]}), flush=True)
        reported = 0
        while True:
            # Polled rather than signalled: the target only appends to a list,
            # and a millisecond of delay is outside every timed interval.
            await anyio.sleep(0.001)
            while reported < len(target.transfers):
                print(json.dumps(vars(target.transfers[reported])), flush=True)
                reported += 1


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = sock.recv(size - len(data))
        if not more:
            raise EOFError
        data += more
    return data


def serve_pattern(sock: socket.socket) -> None:
    """One stream: read and check the upload, send the download, close, report."""
    report: dict[str, object] = {"tag": None, "up": 0, "up_ok": True, "down": 0, "error": None}
    try:
        with sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            upload, download, tag = HEADER.unpack(_receive_exactly(sock, HEADER.size))
            report["tag"] = tag
            checker = Checker(tag)
            buffer = memoryview(bytearray(1 << 20))
            while checker.offset < upload:
                count = sock.recv_into(buffer, min(len(buffer), upload - checker.offset))
                if not count:
                    raise EOFError
                checker.check(buffer[:count])
                report["up"] = checker.offset
                report["up_ok"] = checker.bad is None
            sent = 0
            while sent < download:
                size = min(WINDOW, download - sent)
                sock.sendall(payload(tag, sent, size))
                sent += size
                report["down"] = sent
    except (OSError, EOFError) as exc:
        report["error"] = repr(exc)
    with _print_lock:
        print(json.dumps(report), flush=True)


def pattern_target() -> None:
    """Accept forever, a daemon thread per connection."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=256)
    print(json.dumps({"port": listener.getsockname()[1]}), flush=True)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=serve_pattern, args=(sock,), daemon=True).start()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pattern", action="store_true", help="the fast pattern target")
    if parser.parse_args().pattern:
        pattern_target()
    else:
        anyio.run(hashing_target)
