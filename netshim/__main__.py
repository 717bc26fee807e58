"""The ``netshim`` command line (also ``python -m netshim``).

``netshim demo`` tours a virtual network on built-in defaults;
``netshim gateway`` serves the host network to Wisp, websockify and SOCKS5
clients behind an egress policy (see ``docs/gateway.md``);
``netshim run`` runs an unmodified Python program with netshim installed
(see ``docs/tunnels.md``); ``netshim pyodide run`` runs a script inside
Pyodide under Node with netshim, ``netshim pyodide serve`` a Python console in
the browser whose sockets go through a gateway (see ``docs/pyodide.md``).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["run"]:
        # Everything after the options belongs to the program, which
        # argparse cannot express (it would take the program's own -x flags).
        from ._run import main as run_main

        return run_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="netshim", description="Run networking code on virtual, tunnelled or policed networks."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="tour a virtual network: DNS, HTTP, faults, capture")
    demo.add_argument("--pcap", help="where to write the capture (default: a new temporary folder)")
    gateway = commands.add_parser(
        "gateway", help="serve the network to Wisp, websockify and SOCKS5 clients"
    )
    from ._gateway_cli import add_arguments

    add_arguments(gateway)
    commands.add_parser(
        "run",
        help="run a Python program with netshim installed: run [--via URL] -- PROGRAM [ARGS]",
        add_help=False,
    )
    pyodide = commands.add_parser(
        "pyodide",
        help="Python in Pyodide with netshim: run a script under Node, or serve a console page",
    )
    from ._pyodide_cli import add_arguments as add_pyodide_arguments

    add_pyodide_arguments(pyodide)
    arguments = parser.parse_args(argv)
    if arguments.command == "pyodide":
        from ._pyodide_cli import run as pyodide_run

        return pyodide_run(arguments)
    if arguments.command == "gateway":
        from ._gateway_cli import run

        return run(arguments)
    if arguments.command in (None, "demo"):
        from ._demo import main as demo_main

        demo_main(getattr(arguments, "pcap", None))
        return 0
    parser.error(f"unknown command {arguments.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
