"""The tunnel tests' bulk target in a process of its own, for the benchmarks.

    python benchmarks/bulk_target.py

Listens on 127.0.0.1 (port chosen by the kernel) and prints one JSON line
with the port, then one line per finished transfer with its SHA-256 digests
and sizes.  The target generates and hashes every byte it serves or
swallows; running it here keeps that work off the client being measured.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from transfer_targets import bulk_target


async def main() -> None:
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


if __name__ == "__main__":
    anyio.run(main)
