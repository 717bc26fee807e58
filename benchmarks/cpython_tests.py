"""Compatibility: CPython's own networking tests without netshim, on HostStack, on a VirtualNetwork.

    python benchmarks/cpython_tests.py [--modules test_socket ...] [--modes baseline host virtual]
                                       [--timeout 300] [--test-timeout 60] [-j 1]
                                       [--diff] [--json PATH]

Runs the standard library's test modules of the running interpreter (``test.test_socket``,
``test.test_socketserver``, ``test.test_selectors``, ``test.test_httplib``, ``test.test_ssl``
and ``test.test_asyncio.test_streams``, ``test_sock_lowlevel``, ``test_server``) in three
modes and counts, per test id, pass / fail / error / skip:

* ``baseline``: without netshim, the reference;
* ``host``: under ``netshim.install(netshim.HostStack())``;
* ``virtual``: under ``netshim.install(host)``, ``host`` being a host of a
  ``netshim.VirtualNetwork(seed=0)`` named ``socket.gethostname()``.  The network refuses
  loopback addresses in ``add_host`` ("cannot be a host address"), and needs none: every
  virtual host owns its own ``127.0.0.0/8`` and ``::1``, so binding and connecting to them
  stays on that host, and its resolver answers ``localhost`` locally (``::1``, then
  ``127.0.0.1``) and ``gethostbyaddr`` of a loopback address with ``localhost``.  Naming
  the host after the machine makes the shim's ``gethostname()`` answer what the tests
  expect; that name resolves to the host's network addresses (``10.0.0.2`` and
  ``fd00::2``, which it owns) where the real machine's ``/etc/hosts`` usually says
  ``127.0.0.1``.

Prints, per module, the passes in each mode and their share of the baseline's passes;
with ``--diff``, the tests that pass in the baseline but not in a mode, grouped by the
first line of their exception (or skip reason, or why they did not run).  Every test's
result, with its traceback, goes to ``--json`` (default: a file in a new temporary
directory, which also keeps each run's log).

Each (module, mode) runs in its own process, in its own temporary working directory as
regrtest does, so a hang or a crash costs only that run: after ``--timeout`` seconds it
gets SIGUSR1 (faulthandler writes every thread's stack to its log) and is killed with its
process group, and it is reported as TIMEOUT with the tests finished by then and the test
that was running.  A single test that gives no result for ``--test-timeout`` seconds is
killed the same way and recorded as an error ("HUNG", its stacks in the JSON), and the
module goes on in a new process without it and without the tests already finished; a test
that takes its process down is recorded ("CRASH") and passed over likewise.  So one hang
(the sandbox's AF_VSOCK test, a fork under the shim) does not hide the tests after it.

Tests run through ``unittest`` with ``test.support`` set as a local ``python -m test``
run sets it: no resources enabled (so the ``network`` tests, which go to the internet, are
skipped), not verbose.  One exception: test_socketserver asks for the ``network``
resource at import although its tests only use ``localhost`` and AF_UNIX sockets, so that
one check is let through (``--strict-resources`` reports the module as SKIPPED instead).

Traffic stays on this machine in every mode: an audit hook in each run refuses name
lookups other than address literals, ``localhost`` and the machine's loopback names
(``gaierror``, as without DNS) and connects or datagrams of real IP sockets to anything
but loopback (``ENETUNREACH``).  A few tests look names up without asking for the
resource (test_socket's bad-address and getnameinfo tests); refusals are listed per run.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import unittest
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeAlias

ROOT = Path(__file__).resolve().parent.parent

MODULES = [
    "test.test_socket",
    "test.test_socketserver",
    "test.test_selectors",
    "test.test_httplib",
    "test.test_ssl",
    "test.test_asyncio.test_streams",
    "test.test_asyncio.test_sock_lowlevel",
    "test.test_asyncio.test_server",
]
MODES = ["baseline", "host", "virtual"]
TIMEOUT = 300.0
# Modules that ask for the "network" resource at import although every test in them stays on
# localhost and AF_UNIX sockets (read them before adding one): the runner lets that one
# check pass, then runs the tests with no resource, as for every other module.
NETWORK_AT_IMPORT = {"test.test_socketserver"}
BLOCKED_NAME = "blocked by cpython_tests.py: only loopback names are looked up"
BLOCKED_ADDRESS = "blocked by cpython_tests.py: only loopback is reached"
# Processes per (module, mode): the first, then one after each hung or crashing test.
MAX_ATTEMPTS = 10
TEST_TIMEOUT = 60.0
# Seconds between SIGUSR1 (stacks to the log) and SIGKILL for a run that timed out.
DUMP_GRACE = 2.0

ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None]
Outcome: TypeAlias = str  # "pass", "fail", "error" or "skip"


# -- the child: one module in one mode ----------------------------------------------------


def first_line(text: str) -> str:
    """The first non-empty line of ``text``, at most 200 characters."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:200]
    return ""


class ProgressResult(unittest.TestResult):
    """A TestResult that appends one JSON line per event to a file, flushed at once.

    ``start`` when a test starts and ``end`` with its outcome when it stops, so the parent
    can count finished tests and name the running one even if this process is killed.
    Errors of class and module fixtures (``setUpClass (module.Class)``) are ``end`` events
    of their own.  An expected failure counts as a pass and an unexpected success as a
    failure, as regrtest judges them; a test whose subtests failed fails with the first.
    """

    def __init__(self, stream: IO[str]) -> None:
        super().__init__()
        self.stream = stream
        self.pid = os.getpid()
        self.current: dict[str, Any] | None = None
        self.started = 0.0
        self.counts: collections.Counter[Outcome] = collections.Counter()
        self.lock = threading.RLock()  # LoopbackGuard reports from any thread

    def emit(self, event: dict[str, Any]) -> None:
        if os.getpid() != self.pid:  # a forked child of a test: not ours to report
            return
        with self.lock:
            self.stream.write(json.dumps(event) + "\n")
            self.stream.flush()

    def startTest(self, test: unittest.TestCase) -> None:  # noqa: N802 - unittest's name
        super().startTest(test)
        self.current = {"event": "end", "id": test.id(), "outcome": None}
        self.started = time.perf_counter()
        self.emit({"event": "start", "id": test.id()})

    def stopTest(self, test: unittest.TestCase) -> None:  # noqa: N802 - unittest's name
        super().stopTest(test)
        current, self.current = self.current, None
        if current is None:
            return
        skipped = current.pop("subtest_skip", None)
        if current["outcome"] is None and skipped is not None:  # every subtest skipped
            current.update(outcome="skip", detail=skipped)
        elif current["outcome"] is None:  # neither success nor failure reported
            current.update(outcome="error", detail="no outcome reported")
        current["seconds"] = round(time.perf_counter() - self.started, 3)
        self.counts[current["outcome"]] += 1
        self.emit(current)

    def record(self, test: Any, outcome: Outcome, detail: str = "", text: str = "") -> None:
        if self.current is None or self.current["id"] != test.id():
            # A fixture (setUpClass, setUpModule) outside any test.
            self.counts[outcome] += 1
            self.emit(
                {"event": "end", "id": test.id(), "outcome": outcome, "detail": detail}
                | ({"traceback": text} if text else {})
            )
            return
        if self.current["outcome"] in (None, "pass"):
            self.current.update(outcome=outcome, detail=detail)
            if text:
                self.current["traceback"] = text
        elif outcome in ("fail", "error") and "more" not in self.current:
            self.current["more"] = detail  # a second failure, e.g. in tearDown

    def failure(self, test: Any, outcome: Outcome, err: ExcInfo) -> None:
        text = "".join(traceback.format_exception(*err))
        summary = "".join(traceback.format_exception_only(err[0], err[1]))
        self.record(test, outcome, first_line(summary), text)

    def addSuccess(self, test: unittest.TestCase) -> None:  # noqa: N802 - unittest's name
        super().addSuccess(test)
        self.record(test, "pass")

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:  # noqa: N802 - unittest's name
        super().addFailure(test, err)
        self.failure(test, "fail", err)

    def addError(self, test: unittest.TestCase, err: Any) -> None:  # noqa: N802 - unittest's name
        super().addError(test, err)
        self.failure(test, "error", err)

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:  # noqa: N802 - unittest's name
        super().addSkip(test, reason)
        parent = getattr(test, "test_case", None)  # a skipped subtest: its test still runs
        if parent is not None and self.current is not None and self.current["id"] == parent.id():
            self.current.setdefault("subtest_skip", first_line(str(reason)))
            return
        self.record(test, "skip", first_line(str(reason)))

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:  # noqa: N802 - unittest's name
        super().addExpectedFailure(test, err)
        self.record(test, "pass", "expected failure")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:  # noqa: N802 - unittest's name
        super().addUnexpectedSuccess(test)
        self.record(test, "fail", "unexpected success")

    def addSubTest(self, test: unittest.TestCase, subtest: unittest.TestCase, err: Any) -> None:  # noqa: N802 - unittest's name
        super().addSubTest(test, subtest, err)
        if err is not None:
            outcome = "fail" if issubclass(err[0], test.failureException) else "error"
            self.failure(test, outcome, err)


def set_up_like_regrtest() -> None:
    """Set ``test.support`` as ``python -m test`` does for a local run without options."""
    import faulthandler

    from test import support  # type: ignore[import-not-found]  # no stubs

    faulthandler.enable(all_threads=True)
    faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)
    support.record_original_stdout(sys.stdout)
    support.use_resources = []  # None would enable every resource, "network" included
    support.verbose = 0
    support.failfast = False
    support.junit_xml_list = None


def loopback_names() -> set[str]:
    """Names this machine answers itself: localhost, its own name, /etc/hosts' loopback names."""
    import _socket

    names = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
    names.add(_socket.gethostname().lower())
    with contextlib.suppress(OSError), open("/etc/hosts") as hosts:
        for line in hosts:
            fields = line.split("#", 1)[0].split()
            if len(fields) > 1 and (ip := parse_ip(fields[0])) is not None and ip.is_loopback:
                names.update(name.lower() for name in fields[1:])
    return names


def parse_ip(host: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as an address if the C library would read it as one (``127.1`` included)."""
    import _socket

    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return None
    text = host.split("%", 1)[0]
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(text)
    try:
        return ipaddress.IPv4Address(_socket.inet_aton(text))
    except (OSError, ValueError):
        return None


class LoopbackGuard:
    """An audit hook that keeps the tests' traffic on this machine.

    Name lookups (``getaddrinfo``, ``gethostbyname``, ``gethostbyaddr``, ``getnameinfo``)
    of anything but an address literal or a name from :func:`loopback_names` fail with
    ``gaierror(EAI_NONAME)``, as on a machine without DNS; a reverse lookup of a
    non-loopback address fails the same way.  ``connect``, ``sendto`` and ``sendmsg`` of
    IP sockets to anything but loopback, the unspecified address or those names fail with
    ``ENETUNREACH``.  Each refusal is reported through ``report``.  The tests rarely need
    it (resources stay off), but a few look names up without asking for the ``network``
    resource (test_socket's bad-address and getnameinfo tests).
    """

    def __init__(self, report: Callable[[str], None]) -> None:
        self.names = loopback_names()
        self.report = report

    def local_name(self, host: object) -> bool:
        if host is None or host in ("", b""):
            return True
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        return isinstance(host, str) and host.lower().rstrip(".") in self.names

    def local(self, host: object) -> bool:
        ip = parse_ip(host)
        if ip is None:
            return self.local_name(host)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback or ip.is_unspecified

    def refuse(self, event: str, what: object, error: OSError) -> None:
        self.report(f"{event} {what!r}")
        raise error

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        import _socket

        if not event.startswith("socket."):
            return
        if event in ("socket.getaddrinfo", "socket.gethostbyname"):
            host = args[0]
            if parse_ip(host) is None and not self.local_name(host):
                self.refuse(event, host, _socket.gaierror(_socket.EAI_NONAME, BLOCKED_NAME))
        elif event == "socket.gethostbyaddr":
            if not self.local(args[0]):
                self.refuse(event, args[0], _socket.gaierror(_socket.EAI_NONAME, BLOCKED_NAME))
        elif event == "socket.getnameinfo":  # names are read as literals only (AI_NUMERICHOST)
            address = args[0]
            if (
                isinstance(address, tuple)
                and address
                and parse_ip(address[0]) is not None
                and not self.local(address[0])
            ):
                self.refuse(event, address, _socket.gaierror(_socket.EAI_NONAME, BLOCKED_NAME))
        elif event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
            sock, address = args[0], args[1]
            family = getattr(sock, "family", None)
            if (
                family in (_socket.AF_INET, _socket.AF_INET6)
                and isinstance(address, tuple)
                and address
                and not self.local(address[0])
            ):
                self.refuse(event, address, OSError(errno.ENETUNREACH, BLOCKED_ADDRESS))


def install_mode(mode: str) -> object:
    """Install netshim as ``mode`` says; returns what must stay alive (the network)."""
    if mode == "baseline":
        return None
    sys.path.insert(0, str(ROOT))
    import socket

    import netshim

    if mode == "host":
        netshim.install(netshim.HostStack())
        return None
    net = netshim.VirtualNetwork(seed=0)
    host = net.add_host(socket.gethostname())
    netshim.install(host)
    return net


def filtered(suite: unittest.TestSuite, exclude: set[str]) -> unittest.TestSuite:
    """``suite`` without the tests whose ids are in ``exclude``, structure kept."""
    kept = unittest.TestSuite()
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            kept.addTest(filtered(item, exclude))
        elif item.id() not in exclude:
            kept.addTest(item)
    return kept


def run_child(
    module_name: str, mode: str, progress: Path, exclude: set[str], import_gate: bool
) -> None:
    """Run one module in this process, writing events to ``progress``; never returns."""
    import importlib

    from test import support

    with progress.open("a", buffering=1) as stream:
        result = ProgressResult(stream)
        sys.addaudithook(
            LoopbackGuard(lambda what: result.emit({"event": "blocked", "what": what}))
        )
        try:
            set_up_like_regrtest()
            keep = install_mode(mode)
            if import_gate and module_name in NETWORK_AT_IMPORT:
                support.use_resources = ["network"]
            try:
                module = importlib.import_module(module_name)
            finally:
                support.use_resources = []
            suite = filtered(unittest.defaultTestLoader.loadTestsFromModule(module), exclude)
        except BaseException as exc:
            text = "".join(traceback.format_exception(exc))
            kind = "skipped" if isinstance(exc, unittest.SkipTest) else "fatal"
            result.emit({"event": kind, "detail": first_line(text.splitlines()[-1]), "text": text})
            sys.stderr.write(text)
            os._exit(3)
        result.emit({"event": "loaded", "tests": suite.countTestCases()})
        started = time.perf_counter()
        result.startTestRun()
        suite.run(result)
        result.stopTestRun()
        elapsed = time.perf_counter() - started
        result.emit({"event": "done", "seconds": round(elapsed, 1)})
        counts = ", ".join(f"{n} {name}" for name, n in sorted(result.counts.items()))
        print(f"{module_name} in {mode}: {counts} in {elapsed:.1f} s", flush=True)
        del keep
    sys.stdout.flush()
    sys.stderr.flush()
    # Threads or sockets a test left behind must not hold the exit up.
    os._exit(0)


# -- the parent: run every (module, mode), compare ----------------------------------------


@dataclass
class Settings:
    """How every run is bounded."""

    timeout: float  # seconds per (module, mode), resumes included
    test_timeout: float  # seconds without any event before a test counts as hung; 0: never
    strict_resources: bool


@dataclass
class Run:
    """One module in one mode: its processes (one, unless a test hangs or crashes), its results.

    A test that gives no result within ``test_timeout``, or takes its process down, is
    recorded as an error and the module starts again in a new process without it and
    without the tests already finished, at most ``MAX_ATTEMPTS`` times in all.
    """

    module: str
    mode: str
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    last_event: float = 0.0
    seconds: float = 0.0
    status: str = "pending"  # ok, TIMEOUT, HUNG, CRASH, SKIPPED, IMPORT ERROR
    returncode: int | None = None
    attempts: int = 0
    loaded: int | None = None
    running: str | None = None  # the test started and not ended
    last_finished: str | None = None
    fatal: str | None = None
    done: bool = False
    stopped: list[str] = field(default_factory=list)  # tests that hung or crashed a process
    blocked: list[str] = field(default_factory=list)  # what LoopbackGuard refused
    tests: dict[str, dict[str, Any]] = field(default_factory=dict)
    offset: int = 0  # how much of the progress file has been read

    @property
    def progress(self) -> Path:
        return self.directory / "progress.jsonl"

    @property
    def log(self) -> Path:
        return self.directory / "log.txt"

    def count(self, outcome: Outcome) -> int:
        return sum(1 for test in self.tests.values() if test["outcome"] == outcome)

    @property
    def finished(self) -> int:
        """Tests (and failed fixtures) that reported a result."""
        return len(self.tests) - len(self.stopped)

    def start(self, settings: Settings) -> None:
        self.directory.mkdir(parents=True)
        (self.directory / "cwd").mkdir()
        self.started = time.monotonic()
        self.launch(settings)

    def launch(self, settings: Settings) -> None:
        self.attempts += 1
        exclude = self.directory / f"exclude-{self.attempts}.txt"
        exclude.write_text("".join(f"{test_id}\n" for test_id in self.tests))
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            self.module,
            self.mode,
            str(self.progress),
            "--exclude",
            str(exclude),
            *(["--strict-resources"] if settings.strict_resources else []),
        ]
        env = dict(os.environ, PYTHONFAULTHANDLER="1", PYTHONUNBUFFERED="1")
        with self.log.open("ab") as log:
            log.write(f"--- attempt {self.attempts}: {' '.join(command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                command,
                cwd=self.directory / "cwd",
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: forked servers die with it
            )
        self.last_event = time.monotonic()
        self.running = None
        self.done = False

    def kill_group(self, signum: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def stop(self) -> str:
        """Kill the process after faulthandler wrote its stacks; returns what it wrote."""
        assert self.process is not None
        size = self.log.stat().st_size
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGUSR1)
        time.sleep(DUMP_GRACE)
        self.kill_group(signal.SIGKILL)
        self.process.wait()
        with self.log.open("rb") as log:
            log.seek(size)
            return log.read().decode("utf-8", "replace")

    def poll(self, settings: Settings) -> bool:
        """Follow the run; True once it has ended."""
        assert self.process is not None
        self.read_events()
        now = time.monotonic()
        if self.process.poll() is None:
            if now - self.started >= settings.timeout:
                self.stop()
                self.read_events()
                return self.finish("TIMEOUT")
            if settings.test_timeout and now - self.last_event >= settings.test_timeout:
                stacks = self.stop()
                self.read_events()
                if self.running is None:  # in a class or module fixture, or at exit
                    return self.finish("ok" if self.done else "HUNG")
                detail = f"HUNG: no result after {settings.test_timeout:.0f} s, killed"
                return self.resume(settings, detail, stacks)
            return False
        self.kill_group(signal.SIGKILL)  # whatever a test forked and left behind
        self.read_events()
        if self.done:
            return self.finish("ok")
        if self.fatal is not None:
            return self.finish(self.status)
        if self.running is not None:
            detail = f"CRASH: the process died in this test (exit status {self.process.returncode})"
            return self.resume(settings, detail, "")
        return self.finish("CRASH")

    def resume(self, settings: Settings, detail: str, stacks: str) -> bool:
        """Record the running test as stopped, then go on without it if there is time."""
        assert self.running is not None
        self.tests[self.running] = {"outcome": "error", "detail": detail, "traceback": stacks}
        self.stopped.append(self.running)
        print(f"    {short(self.module)} {self.mode}: {short(self.running)}: {detail}", flush=True)
        self.running = None
        if self.attempts >= MAX_ATTEMPTS:
            return self.finish("HUNG" if detail.startswith("HUNG") else "CRASH")
        if time.monotonic() - self.started >= settings.timeout:
            return self.finish("TIMEOUT")
        self.launch(settings)
        return False

    def finish(self, status: str) -> bool:
        assert self.process is not None
        self.status = status
        self.returncode = self.process.returncode
        self.seconds = time.monotonic() - self.started
        return True

    def read_events(self) -> None:
        """Take in the complete lines the child appended since the last call."""
        try:
            with self.progress.open("rb") as stream:
                stream.seek(self.offset)
                data = stream.read()
        except FileNotFoundError:
            return
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.decode("utf-8", "replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self.last_event = time.monotonic()
            kind = event.pop("event")
            if kind == "start":
                self.running = event["id"]
            elif kind == "end":
                test_id = event.pop("id")
                if test_id == self.running:
                    self.running = None
                    self.last_finished = test_id
                self.tests.setdefault(test_id, event)
            elif kind == "loaded":
                if self.loaded is None:
                    self.loaded = event["tests"]
            elif kind in ("fatal", "skipped"):
                self.fatal = event["detail"]
                self.status = "SKIPPED" if kind == "skipped" else "IMPORT ERROR"
            elif kind == "blocked":
                self.blocked.append(event["what"])
            elif kind == "done":
                self.done = True

    def describe(self) -> str:
        """A short account of how the run ended, for the tables."""
        if self.status in ("SKIPPED", "IMPORT ERROR"):
            return f"{self.status}: {self.fatal}"
        resumed = ""
        if self.stopped:
            hung = sum(1 for t in self.stopped if self.tests[t]["detail"].startswith("HUNG"))
            parts = [f"{hung} hung"] if hung else []
            if len(self.stopped) > hung:
                parts.append(f"{len(self.stopped) - hung} crashed")
            resumed = f" ({' and '.join(parts)}: resumed past them)"
        if self.status == "ok":
            return "ok" + resumed
        text = f"{self.status} after {self.finished} tests"
        if self.status == "TIMEOUT" and self.running:
            text += f", in {short(self.running)}"
        elif self.status == "HUNG":
            text += f", outside any test (after {self.last_finished})"
        elif self.status == "CRASH":
            text += f", exit status {self.returncode}"
        return text + resumed

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "description": self.describe(),
            "returncode": self.returncode,
            "attempts": self.attempts,
            "seconds": round(self.seconds, 1),
            "loaded": self.loaded,
            "running_when_stopped": self.running,
            "stopped": self.stopped,
            "blocked": self.blocked,
            "log": str(self.log),
            "counts": {o: self.count(o) for o in ("pass", "fail", "error", "skip")},
            "tests": self.tests,
        }


def run_all(runs: list[Run], parallel: int, settings: Settings) -> None:
    """Run every ``Run``, at most ``parallel`` at a time, printing each as it ends."""
    pending = collections.deque(runs)
    active: list[Run] = []
    ended = 0
    while pending or active:
        while pending and len(active) < parallel:
            run = pending.popleft()
            run.start(settings)
            active.append(run)
        time.sleep(0.2)
        for run in list(active):
            if run.poll(settings):
                active.remove(run)
                ended += 1
                print(
                    f"[{ended}/{len(runs)}] {short(run.module)} {run.mode}: "
                    f"{run.count('pass')} pass, {run.count('fail')} fail, "
                    f"{run.count('error')} error, {run.count('skip')} skip, "
                    f"{run.seconds:.0f} s, {run.describe()}",
                    flush=True,
                )
                if run.blocked:
                    print(
                        f"    kept on loopback: {len(run.blocked)} refused, e.g. {run.blocked[0]}"
                    )


def short(module: str) -> str:
    return module.removeprefix("test.")


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:5.1f}%" if whole else "    - "


def print_tables(modules: list[str], modes: list[str], runs: dict[tuple[str, str], Run]) -> None:
    width = max(len(short(m)) for m in [*modules, "total"]) + 2
    print()
    print("per run: tests finished, passes, failures, errors, skips, seconds")
    header = f"{'module':<{width}}{'mode':<10}{'ran':>6}{'pass':>6}{'fail':>6}{'error':>6}"
    print(f"{header}{'skip':>6}{'secs':>7}  status")
    for module in modules:
        for mode in modes:
            run = runs[module, mode]
            print(
                f"{short(module):<{width}}{mode:<10}{len(run.tests):>6}{run.count('pass'):>6}"
                f"{run.count('fail'):>6}{run.count('error'):>6}{run.count('skip'):>6}"
                f"{run.seconds:>7.0f}  {run.describe()}"
            )
    stopped = [(run, test_id) for run in runs.values() for test_id in run.stopped]
    if stopped:
        print()
        print("tests that hung or crashed their process (the module went on without them)")
        for run, test_id in stopped:
            detail = run.tests[test_id]["detail"]
            print(f"  {run.mode:<9} {short(test_id)}: {detail}")
    reference = "baseline" if "baseline" in modes else None
    print()
    print(
        "passes per module"
        + (" (and share of the baseline's passes)" if reference else "")
        + "; * marks a run that did not finish"
    )
    line = f"{'module':<{width}}"
    for mode in modes:
        line += f"{mode:>16}"
    print(line)
    totals = dict.fromkeys(modes, 0)
    for module in modules:
        line = f"{short(module):<{width}}"
        base = runs[module, reference].count("pass") if reference else 0
        for mode in modes:
            run = runs[module, mode]
            passes = run.count("pass")
            totals[mode] += passes
            mark = " " if run.status == "ok" else "*"
            cell = f"{passes}{mark}"
            if reference and mode != reference:
                cell += f" ({percent(passes, base).strip()})"
            line += f"{cell:>16}"
        print(line)
    line = f"{'total':<{width}}"
    for mode in modes:
        cell = f"{totals[mode]} "
        if reference and mode != reference:
            cell += f" ({percent(totals[mode], totals[reference]).strip()})"
        line += f"{cell:>16}"
    print(line)


def group_key(detail: str) -> str:
    """``detail`` with what varies between tests (ports, addresses, object ids) blanked."""
    detail = re.sub(r"0x[0-9a-fA-F]+", "0x…", detail)
    detail = re.sub(r"\bfd=\d+", "fd=N", detail)
    detail = re.sub(r"(?<![\w.])\d{4,}(?![\w.])", "N", detail)
    return detail[:160]


NETSHIM_FRAME = re.compile(r'File "([^"]*/netshim/[^"]+)", line (\d+), in (\S+)')


def netshim_frame(text: str) -> str | None:
    """The innermost netshim frame of a traceback, as ``netshim/x.py:12 in f``."""
    frames = NETSHIM_FRAME.findall(text)
    if not frames:
        return None
    path, line, function = frames[-1]
    with contextlib.suppress(ValueError):
        path = str(Path(path).relative_to(ROOT))
    return f"{path}:{line} in {function}"


def why_not_passed(test_id: str, run: Run) -> str:
    """Why a test that passes in the baseline did not pass in ``run``."""
    result = run.tests.get(test_id)
    if result is not None:
        detail = result.get("detail") or "(no message)"
        if result["outcome"] == "skip":
            return f"skipped: {group_key(detail)}"
        where = netshim_frame(result.get("traceback", ""))
        return group_key(detail) + (f"  [raised at {where}]" if where else "")
    if run.status == "TIMEOUT" and test_id == run.running:
        return "hung here: the run was killed at the timeout"
    # A fixture error of its class or module keeps a test from running.
    cls = test_id.rsplit(".", 1)[0]
    module = cls.rsplit(".", 1)[0]
    for fixture in (f"setUpClass ({cls})", f"setUpModule ({module})"):
        fixture_result = run.tests.get(fixture)
        if fixture_result is not None:
            outcome = "skipped" if fixture_result["outcome"] == "skip" else "failed"
            return f"not run, {fixture.split()[0]} {outcome}: {group_key(fixture_result['detail'])}"
    if run.status != "ok":
        return f"not run: {run.describe()}"
    return "not run"


def print_diff(
    modules: list[str], modes: list[str], runs: dict[tuple[str, str], Run], examples: int
) -> None:
    for mode in modes:
        if mode == "baseline":
            continue
        groups: dict[str, list[str]] = collections.defaultdict(list)
        for module in modules:
            base, run = runs[module, "baseline"], runs[module, mode]
            for test_id, result in base.tests.items():
                ours = run.tests.get(test_id)
                if result["outcome"] == "pass" and (ours is None or ours["outcome"] != "pass"):
                    groups[why_not_passed(test_id, run)].append(test_id)
        total = sum(len(ids) for ids in groups.values())
        print()
        print(f"{mode}: {total} tests pass in the baseline but not here, in {len(groups)} groups")
        for key, ids in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])):
            print(f"{len(ids):>5}  {key}")
            shown = spread(ids, examples)
            for test_id in shown:
                print(f"         {short(test_id)}")
            if len(ids) > len(shown):
                classes = len({test_id.rsplit(".", 1)[0] for test_id in ids})
                print(f"         ... and {len(ids) - len(shown)} more, {classes} classes in all")


def spread(ids: list[str], count: int) -> list[str]:
    """Up to ``count`` of ``ids``, from as many test classes as possible."""
    chosen: list[str] = []
    classes: set[str] = set()
    for test_id in ids:
        cls = test_id.rsplit(".", 1)[0]
        if cls not in classes and len(chosen) < count:
            chosen.append(test_id)
            classes.add(cls)
    chosen += [test_id for test_id in ids if test_id not in chosen][: count - len(chosen)]
    return chosen


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def normalize_modules(names: Iterable[str]) -> list[str]:
    """``test_socket`` and ``test_asyncio.test_streams`` name ``test.…`` modules."""
    return [name if name.startswith("test.") else f"test.{name}" for name in names]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--modules", nargs="+", metavar="MODULE", help="test modules (default: all eight)"
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=MODES, metavar="MODE")
    parser.add_argument(
        "--timeout", type=float, default=TIMEOUT, help="seconds per module and mode (300)"
    )
    parser.add_argument("-j", "--jobs", type=int, default=1, help="runs in parallel (1)")
    parser.add_argument(
        "--diff", action="store_true", help="list baseline passes that do not pass in a mode"
    )
    parser.add_argument("--examples", type=int, default=3, help="test ids shown per diff group")
    parser.add_argument("--json", type=Path, help="where to write every test's result")
    parser.add_argument(
        "--strict-resources",
        action="store_true",
        help="no exception for test_socketserver's import-time 'network' check (then SKIPPED)",
    )
    parser.add_argument(
        "--test-timeout",
        type=float,
        default=TEST_TIMEOUT,
        help="seconds one test may run before it counts as hung and the module goes on "
        "without it in a new process (60; 0: never)",
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--exclude", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        module_name, mode, progress = args.child
        exclude = set(args.exclude.read_text().splitlines()) if args.exclude else set()
        run_child(module_name, mode, Path(progress), exclude, import_gate=not args.strict_resources)
    modules = normalize_modules(args.modules or MODULES)
    modes: list[str] = list(dict.fromkeys(args.modes))
    if args.diff and "baseline" not in modes:
        parser.error("--diff compares with the baseline: include it in --modes")
    directory = Path(tempfile.mkdtemp(prefix="netshim-cpython-tests-"))
    json_path: Path = args.json or directory / "results.json"
    print(f"{sys.version.split()[0]} ({sys.executable}), logs in {directory}", flush=True)
    runs = {
        (module, mode): Run(module, mode, directory / f"{short(module)}-{mode}")
        for module in modules
        for mode in modes
    }
    started = time.monotonic()
    settings = Settings(args.timeout, args.test_timeout, args.strict_resources)
    run_all(list(runs.values()), max(1, args.jobs), settings)
    print(f"all runs took {time.monotonic() - started:.0f} s")
    print_tables(modules, modes, runs)
    if args.diff:
        print_diff(modules, modes, runs, args.examples)
    report = {
        "python": sys.version,
        "executable": sys.executable,
        "netshim_revision": git_revision(),
        "timeout": args.timeout,
        "test_timeout": args.test_timeout,
        "strict_resources": args.strict_resources,
        "modules": modules,
        "modes": modes,
        "runs": {
            module: {mode: runs[module, mode].to_json() for mode in modes} for module in modules
        },
    }
    json_path.write_text(json.dumps(report, indent=1))
    print()
    print(f"per-test results: {json_path}")


if __name__ == "__main__":
    main()
