"""The gateway benchmark's wire protocol and data pattern, shared by its target and Python clients.

A stream starts with a 24-byte header from the client: upload size, download
size and a tag (big-endian uint64 each).  The client then sends ``upload``
bytes; once the target has them all it sends ``download`` bytes and closes.

Both directions carry one pattern: byte ``i`` of a stream tagged ``t`` is
``BLOCK[(t + i) % PERIOD]``, BLOCK being PERIOD bytes of SHA-256 in counter
mode (the Node client, tests/peers/node/bench_client.mjs, builds the same).
Nothing is generated or hashed while the clock runs: senders write slices of
a prebuilt buffer, and a receiver checks each piece it reads with one
``memcmp`` against the slice where it belongs (``bytes.startswith`` with a
start offset, tens of GB/s).  A piece lost, repeated or taken from another
stream (another tag) shifts the pattern and fails that comparison; a shift
by a whole multiple of PERIOD, which it cannot see, changes the byte count.

The clients also share a start protocol with the orchestrator
(benchmarks/gateway.py): a client prints ``{"ready": true}`` once it is
connected and its uploads are prepared, waits for a line on stdin, moves its
streams, prints its JSON result and then waits for stdin to close, so that
the orchestrator reads every process's CPU time right before and right after
the timed interval.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from typing import Any

PERIOD = 1 << 20
# The clients' write size, as the wisp-js client's own benchmark writes; the
# WispStack's packet size.
CHUNK = 64 * 1024
# The largest piece compared or sent at once.
WINDOW = 4 << 20
HEADER = struct.Struct("!QQQ")
# A request this small goes out in the header's write (no Nagle delay).
SMALL = 4096

BLOCK = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(PERIOD // 32))
# BLOCK repeated: any piece of up to WINDOW bytes starting in the first
# PERIOD bytes is one contiguous slice of it.
BIG = BLOCK * (1 + WINDOW // PERIOD)
BIG_VIEW = memoryview(BIG)


def start(tag: int, offset: int) -> int:
    """Where byte ``offset`` of the stream tagged ``tag`` lies in BIG."""
    return (tag + offset) % PERIOD


def payload(tag: int, offset: int, size: int) -> memoryview:
    """``size`` (<= WINDOW) pattern bytes of stream ``tag`` from ``offset``, without a copy."""
    at = start(tag, offset)
    return BIG_VIEW[at : at + size]


def upload_chunks(tag: int, size: int) -> list[bytes]:
    """An upload of ``size`` bytes as CHUNK-byte ``bytes`` writes, made before the clock starts.

    PERIOD is a multiple of CHUNK, so an upload has only PERIOD // CHUNK
    distinct chunks: they are made once and repeated by reference.
    """
    distinct = [bytes(payload(tag, k * CHUNK, CHUNK)) for k in range(PERIOD // CHUNK)]
    full, rest = divmod(size, CHUNK)
    chunks = [distinct[k % len(distinct)] for k in range(full)]
    if rest:
        chunks.append(distinct[full % len(distinct)][:rest])
    return chunks


def request(upload: int, download: int, tag: int) -> bytes:
    """The header, with the whole upload behind it when the upload is small."""
    head = HEADER.pack(upload, download, tag)
    return head + bytes(payload(tag, 0, upload)) if upload <= SMALL else head


class Checker:
    """Checks the pattern of the bytes received on one stream, piece by piece."""

    def __init__(self, tag: int) -> None:
        self.tag = tag
        self.offset = 0
        # Offset of the first wrong byte, if any.
        self.bad: int | None = None

    def check(self, data: bytes | memoryview) -> None:
        """Account for ``data``, the next bytes of the stream."""
        size = len(data)
        if size <= WINDOW:
            at = start(self.tag, self.offset)
            if self.bad is None and not BIG.startswith(data, at):
                self.bad = self.offset + _matching(memoryview(data), at)
            self.offset += size
            return
        view = memoryview(data)
        for at in range(0, size, WINDOW):
            self.check(view[at : at + WINDOW])


def _matching(data: memoryview, at: int) -> int:
    """How many leading bytes of ``data`` match BIG from ``at`` (a binary search of memcmps)."""
    low, high = 0, len(data)
    while low < high:
        middle = (low + high + 1) // 2
        if BIG.startswith(data[:middle], at):
            low = middle
        else:
            high = middle - 1
    return low


def ready() -> None:
    """Tell the orchestrator this client is set, and wait for its go (blocking)."""
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()


def finish(result: dict[str, Any]) -> None:
    """Print the result, then wait until the orchestrator has read this process's CPU time."""
    print(json.dumps(result), flush=True)
    sys.stdin.read()
