"""``netshim run``: run an unmodified Python program with netshim installed.

Three forms::

    netshim run [--via URL] -- PROGRAM [ARGS]   # any command; Python in it gets netshim
    netshim run [--via URL] -m MODULE [ARGS]    # in this interpreter, like python -m
    netshim run [--via URL] SCRIPT.py [ARGS]    # in this interpreter, like python SCRIPT.py

and with ``--isolate`` (plus the gateway's policy options ``--allow``,
``--deny``, ``--allow-private`` and ``--refuse reset|icmp``, and
``--connect-timeout SECONDS``) the program and
everything it starts run in a network namespace whose only way out is
netshim (:mod:`netshim.isolate`): C extensions and child processes included.
``-m`` and a script then run in a new interpreter inside the namespace.

``--via`` sets ``NETSHIM_STACK`` (any URL :func:`netshim.stack_from_url`
takes); without it the stack comes from the environment as
:func:`netshim.install` reads it (``NETSHIM_STACK``, ``ALL_PROXY``,
``NO_PROXY``).  The exit status is the program's: its ``sys.exit`` code, 1
for an uncaught exception, or the child's status (``128 + N`` for a child
killed by signal N, as shells report it).

``-- PROGRAM`` runs the program in this process's place (``exec``; a child
process where there is no ``exec``) with netshim's ``sitecustomize``
directory first on ``PYTHONPATH``, so the interpreter installs netshim before
it runs anything of the program's; Python processes the program starts in
turn inherit the environment and are patched too.  ``-m`` and a script run
in this process through :mod:`runpy`, after :func:`netshim.install`.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SITE_DIRECTORY", "main"]

#: The directory ``netshim run -- PROGRAM`` puts first on ``PYTHONPATH``.
SITE_DIRECTORY = Path(__file__).resolve().parent / "_site"

USAGE = """\
usage: netshim run [--via URL] -- PROGRAM [ARGS ...]
       netshim run [--via URL] -m MODULE [ARGS ...]
       netshim run [--via URL] SCRIPT.py [ARGS ...]
       netshim run --isolate [--via URL] [POLICY ...] -- PROGRAM [ARGS ...]

Run an unmodified Python program with netshim installed, or (--isolate) any
program confined to a network namespace whose only way out is netshim.

options:
  --via URL   the stack to use (sets NETSHIM_STACK): wisp://, wisps://, ws://,
              wss://, socks5://, socks5h://, websockify://, host:
              (default: NETSHIM_STACK, else ALL_PROXY / NO_PROXY, else host:)
  -m MODULE   run a module as python -m does, in this process
  --          run PROGRAM (for example python3 app.py) as a child process
  --isolate   confine the program and its children (C extensions, curl, ...):
              a network namespace with a TUN device that netshim terminates
              onto the stack; the machine's loopback is 10.0.2.2, DNS 10.0.2.3

policy (with --isolate; the gateway's rules and defaults):
  --allow RULE         allow a CIDR, IP or name[:ports] (repeatable)
  --deny RULE          deny a CIDR, IP or name[:ports] (repeatable)
  --allow-private      reach private and loopback ranges too
  --refuse reset|icmp  a refused connection is a reset (ECONNREFUSED, the
                       default) or ICMP prohibited (EHOSTUNREACH)
  --connect-timeout S  seconds a destination has to answer a connection
                       (default 30); then the program gets EHOSTUNREACH
"""


class UsageError(Exception):
    """The command line is not one of the three forms."""


@dataclass
class Plan:
    """What the command line asked for."""

    via: str | None = None
    module: str | None = None
    script: str | None = None
    program: list[str] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)
    help: bool = False
    isolate: bool = False
    allow: list[str] = field(default_factory=list)
    deny: list[str] = field(default_factory=list)
    allow_private: bool = False
    refuse: str = "reset"
    connect_timeout: float | None = None


def parse(argv: list[str]) -> Plan:
    """Read ``netshim run``'s arguments (those after ``run``).

    Options end at ``-m MODULE``, ``--`` or the first argument that is not an
    option: everything after belongs to the program, as with ``python``.
    """
    plan = Plan()
    index = 0
    while index < len(argv):
        word = argv[index]
        index += 1
        if word in ("-h", "--help"):
            plan.help = True
            return plan
        if word == "--isolate":
            plan.isolate = True
            continue
        if word == "--allow-private":
            plan.allow_private = True
            continue
        if word in ("--allow", "--deny", "--refuse", "--connect-timeout") or word.startswith(
            ("--allow=", "--deny=", "--refuse=", "--connect-timeout=")
        ):
            name, _, value = word.partition("=")
            if not value:
                if index >= len(argv):
                    raise UsageError(f"{name} needs a value")
                value = argv[index]
                index += 1
            if name == "--refuse":
                if value not in ("reset", "icmp"):
                    raise UsageError(f"--refuse is reset or icmp, got {value!r}")
                plan.refuse = value
            elif name == "--connect-timeout":
                plan.connect_timeout = _seconds(name, value)
            else:
                (plan.allow if name == "--allow" else plan.deny).append(value)
            continue
        if word == "--via" or word.startswith("--via="):
            if "=" in word:
                plan.via = word.partition("=")[2]
            elif index < len(argv):
                plan.via = argv[index]
                index += 1
            else:
                raise UsageError("--via needs a URL")
            if not plan.via.strip():
                raise UsageError("--via needs a URL, got an empty one")
            continue
        if word == "-m" or (word.startswith("-m") and len(word) > 2):
            if len(word) > 2:
                plan.module = word[2:]
            elif index < len(argv):
                plan.module = argv[index]
                index += 1
            else:
                raise UsageError("-m needs a module name")
            plan.arguments = argv[index:]
            return plan
        if word == "--":
            plan.program = argv[index:]
            if not plan.program:
                raise UsageError("nothing to run after --")
            return plan
        if word.startswith("-"):
            raise UsageError(f"unknown option {word!r} (put the program after --)")
        plan.script = word
        plan.arguments = argv[index:]
        return plan
    raise UsageError("nothing to run: give -- PROGRAM, -m MODULE or SCRIPT.py")


def _seconds(option: str, value: str) -> float:
    """``value`` as a positive, finite number of seconds, or a UsageError naming ``option``."""
    try:
        seconds = float(value)
    except ValueError:
        raise UsageError(f"{option} takes seconds, got {value!r}") from None
    if not 0 < seconds < float("inf"):
        raise UsageError(f"{option} must be a positive number of seconds, got {value!r}")
    return seconds


def _child_environment(via: str | None) -> dict[str, str]:
    environment = dict(os.environ)
    if via is not None:
        environment["NETSHIM_STACK"] = via
    paths = [str(SITE_DIRECTORY)]
    if environment.get("PYTHONPATH"):
        paths.append(environment["PYTHONPATH"])
    environment["PYTHONPATH"] = os.pathsep.join(paths)
    return environment


def _run_child(plan: Plan) -> int:
    program = plan.program
    environment = _child_environment(plan.via)
    try:
        if os.name == "posix":
            # The program takes this process's place: signals sent to
            # ``netshim run`` (a supervisor's SIGTERM, a kill) reach the program
            # itself, and nothing is left behind when it is killed.
            sys.stdout.flush()
            sys.stderr.flush()
            os.execvpe(program[0], program, environment)
        child = subprocess.Popen(program, env=environment)
    except OSError as exc:
        print(f"netshim run: cannot start {program[0]!r}: {exc.strerror or exc}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    return wait_for_child(child)


def wait_for_child(child: subprocess.Popen[bytes]) -> int:
    """The child's exit status, shell-style (128 + N for a signal N).

    The child shares our terminal, so Ctrl-C reaches it directly: waiting
    on, rather than dying of, SIGINT lets it decide and report its status.
    """
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        status = child.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    return 128 - status if status < 0 else status


def _run_isolated(plan: Plan) -> int:
    import anyio

    from .isolate import IsolationUnavailableError, run
    from .policy import Policy

    if plan.program:
        argv = plan.program
    elif plan.module is not None:
        argv = [sys.executable, "-m", plan.module, *plan.arguments]
    else:
        assert plan.script is not None
        argv = [sys.executable, plan.script, *plan.arguments]
    try:
        policy = Policy(allow=plan.allow, deny=plan.deny, allow_private=plan.allow_private)
    except ValueError as exc:
        print(f"netshim run: {exc}", file=sys.stderr)
        return 2
    stack = None
    if plan.via is not None:
        from ._config import stack_from_url

        stack = stack_from_url(plan.via)
    import logging

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="netshim: %(message)s")

    async def confined() -> int:
        if plan.connect_timeout is None:
            return await run(argv, stack=stack, policy=policy, refusal=plan.refuse)
        return await run(
            argv,
            stack=stack,
            policy=policy,
            refusal=plan.refuse,
            connect_timeout=plan.connect_timeout,
        )

    # The program shares our terminal: Ctrl-C reaches it, and it decides.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return anyio.run(confined)
    except IsolationUnavailableError as exc:
        print(f"netshim run --isolate: {exc}", file=sys.stderr)
        return 125
    finally:
        signal.signal(signal.SIGINT, previous)


def _exit_code(exc: SystemExit) -> int:
    """The status ``sys.exit(code)`` gives, as the interpreter computes it."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _run_here(plan: Plan) -> int:
    import netshim

    if plan.via is not None:
        os.environ["NETSHIM_STACK"] = plan.via
    try:
        netshim.install()
    except (ValueError, TypeError, OSError) as exc:
        print(f"netshim run: {exc}", file=sys.stderr)
        return 2
    saved_argv, saved_path0 = sys.argv[:], sys.path[0] if sys.path else None
    try:
        if plan.module is not None:
            # python -m puts the working directory first on sys.path.
            sys.argv = [plan.module, *plan.arguments]
            _set_path0(os.getcwd())
            runpy.run_module(plan.module, run_name="__main__", alter_sys=True)
        else:
            assert plan.script is not None
            sys.argv = [plan.script, *plan.arguments]
            _set_path0(os.path.dirname(os.path.abspath(plan.script)))
            runpy.run_path(plan.script, run_name="__main__")
    except SystemExit as exc:
        return _exit_code(exc)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except BaseException:
        sys.excepthook(*sys.exc_info())
        return 1
    finally:
        sys.argv = saved_argv
        if saved_path0 is not None:
            _set_path0(saved_path0)
        _flush()
    return 0


def _set_path0(entry: str) -> None:
    if sys.path:
        sys.path[0] = entry
    else:
        sys.path.append(entry)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


def main(argv: list[str]) -> int:
    """``netshim run ARGV``; returns the exit status."""
    try:
        plan = parse(argv)
        if plan.via is not None:
            from ._config import stack_from_url

            # A bad URL fails here, naming its bad part, before anything runs.
            stack_from_url(plan.via)
    except (UsageError, ValueError) as exc:
        print(f"{USAGE}\nnetshim run: {exc}", file=sys.stderr)
        return 2
    if plan.help:
        print(USAGE, end="")
        return 0
    if plan.isolate:
        return _run_isolated(plan)
    if plan.allow or plan.deny or plan.allow_private or plan.refuse != "reset":
        print(f"{USAGE}\nnetshim run: policy options need --isolate", file=sys.stderr)
        return 2
    if plan.connect_timeout is not None:
        print(f"{USAGE}\nnetshim run: --connect-timeout needs --isolate", file=sys.stderr)
        return 2
    if plan.program:
        return _run_child(plan)
    return _run_here(plan)
