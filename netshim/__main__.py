"""The ``netshim`` command line (also ``python -m netshim``).

``netshim demo`` tours a virtual network on built-in defaults.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="netshim", description="Run networking code on virtual, tunnelled or policed networks."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="tour a virtual network: DNS, HTTP, faults, capture")
    demo.add_argument("--pcap", help="where to write the capture (default: a new temporary folder)")
    arguments = parser.parse_args(argv)
    if arguments.command in (None, "demo"):
        from ._demo import main as demo_main

        demo_main(getattr(arguments, "pcap", None))
        return 0
    parser.error(f"unknown command {arguments.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
