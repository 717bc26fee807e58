"""The command line of the LAN benchmarks (benchmarks/lan.py, benchmarks/lan_cluster.py).

Both take the same options; ``--quick`` shrinks the defaults of the sizes and
counts not given, so that a quick run checks the machinery in a minute.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

# Runs per row and direction, and sequential connects per row: (full, quick).
REPEATS = (3, 1)
CONNECTS = (200, 50)


def fill_defaults(
    args: argparse.Namespace, full: Mapping[str, int], quick: Mapping[str, int]
) -> argparse.Namespace:
    """Give every option in ``full`` left unset its default, from ``quick`` under ``--quick``."""
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def lan_arguments(doc: str, size: int, quick_size: int) -> argparse.Namespace:
    """Parse a LAN benchmark's command line; ``doc`` is its docstring, ``size`` MiB per stream."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"{quick_size} MiB streams, fewer runs"
    )
    parser.add_argument("--size", type=int, help=f"MiB per stream ({size})")
    parser.add_argument("--repeats", type=int, help=f"runs per row and direction ({REPEATS[0]})")
    parser.add_argument("--connects", type=int, help=f"sequential connects per row ({CONNECTS[0]})")
    parser.add_argument("--loop", default="uvloop", choices=("asyncio", "uvloop"))
    parser.add_argument("--stall", type=float, default=10.0, help="seconds without progress")
    return fill_defaults(
        parser.parse_args(),
        full={"size": size, "repeats": REPEATS[0], "connects": CONNECTS[0]},
        quick={"size": quick_size, "repeats": REPEATS[1], "connects": CONNECTS[1]},
    )
