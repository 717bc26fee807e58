"""``netshim run --isolate``: whole programs (curl, another Python) confined, carried by netshim.

Each test starts a real program in a network namespace through
:func:`netshim.isolate.run`; its only way out is the TUN device that the
test's :class:`~netshim.isolate._terminate.Terminator` terminates onto a
stack (the host network, or a VirtualNetwork) through a policy.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator

import anyio
import pytest
from isolate_support import confined, isolation_available  # noqa: F401

from netshim import VirtualNetwork
from netshim.policy import Policy
from netshim.testing import require_peer

pytestmark = [
    pytest.mark.peer("netns"),
    pytest.mark.anyio,
    pytest.mark.usefixtures("isolation_available"),
]


class HostServer:
    """A TCP server on the machine's loopback that counts its connections."""

    def __init__(self, handler: str, payload: bytes = b"") -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.handler = handler
        self.payload = payload
        self.connections = 0
        self.received = hashlib.sha256()
        self.received_bytes = 0
        self.kept = b""
        self.error: int | None = None
        self.finished = threading.Event()
        # Released once per connection handled.
        self.handled = threading.Semaphore(0)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            if self.handler == "once":
                # Nobody listens after the first connection.
                self.listener.close()
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            if self.handler == "http":
                conn.recv(65536)
                body = self.payload
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                    % len(body)
                    + body
                )
            elif self.handler in ("send", "once"):
                conn.sendall(self.payload)
            elif self.handler == "sink":
                while data := conn.recv(1 << 20):
                    self.received.update(data)
                    self.received_bytes += len(data)
                conn.sendall(self.received.hexdigest().encode())
            elif self.handler == "reset":
                # Once the program speaks (its connect is done: a reset before
                # would fail the connect), the payload, then a reset, no FIN.
                conn.recv(1)
                conn.sendall(self.payload)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif self.handler == "half-close":
                # The payload and a FIN; what the program sends after is kept.
                conn.sendall(self.payload)
                conn.shutdown(socket.SHUT_WR)
                self._keep(conn)
            elif self.handler == "keep":
                self._keep(conn)
        self.finished.set()
        self.handled.release()

    def _keep(self, conn: socket.socket) -> None:
        try:
            while data := conn.recv(1 << 20):
                self.kept += data
        except OSError as exc:
            self.error = exc.errno

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def http_server() -> Iterator[HostServer]:
    server = HostServer("http", b"hello from the machine\n")
    yield server
    server.close()


async def test_curl_reaches_the_machines_loopback_as_the_gateway_when_allowed(
    http_server: HostServer,
) -> None:
    curl = require_peer("curl")
    url = f"http://10.0.2.2:{http_server.port}/"
    with anyio.fail_after(60):
        status, output = await confined(
            [curl, "-sS", "--max-time", "20", url], policy=Policy(allow=["127.0.0.1"])
        )
    assert status == 0
    assert output == "hello from the machine\n"
    assert http_server.connections == 1


async def test_refused_destinations_never_see_a_connection(http_server: HostServer) -> None:
    curl = require_peer("curl")
    urls = [
        f"http://10.0.2.2:{http_server.port}/",  # the machine's loopback: refused by default
        "http://169.254.169.254/",  # cloud metadata
    ]
    for url in urls:
        with anyio.fail_after(60):
            status, _ = await confined([curl, "-sS", "--max-time", "20", url])
        assert status == 7, f"curl could connect to {url}"  # CURLE_COULDNT_CONNECT
    assert http_server.connections == 0


async def test_repeated_connections_allowed_each_time_and_refused_each_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The policy allows one port of the machine's loopback: the other port's
    # server (a canary) must never see a connection, however often the
    # program tries, and each refusal is logged.
    allowed, canary = HostServer("send", b"x"), HostServer("send", b"x")
    probe = (
        "import socket\n"
        f"for port in [{allowed.port}, {canary.port}] * 3:\n"
        "    try:\n"
        "        with socket.create_connection(('10.0.2.2', port), timeout=20) as s:\n"
        "            print('ok', s.recv(1))\n"
        "    except OSError as exc:\n"
        "        print('refused', exc.errno)\n"
    )
    try:
        with caplog.at_level("WARNING", logger="netshim.isolate"), anyio.fail_after(60):
            status, output = await confined(
                [sys.executable, "-c", probe], policy=Policy(allow=[f"127.0.0.1:{allowed.port}"])
            )
    finally:
        allowed.close()
        canary.close()
    assert status == 0
    assert output.split("\n")[:-1] == ["ok b'x'", "refused 111"] * 3
    assert allowed.connections == 3
    assert canary.connections == 0
    refusals = [r for r in caplog.records if f"10.0.2.2:{canary.port}" in r.getMessage()]
    assert len(refusals) == 3


async def test_icmp_refusal_is_host_unreachable_for_the_program(http_server: HostServer) -> None:
    probe = (
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(('10.0.2.2', {http_server.port}), timeout=20)\n"
        "except OSError as exc:\n"
        "    print(exc.errno)\n"
    )
    with anyio.fail_after(60):
        status, output = await confined([sys.executable, "-c", probe], refusal="icmp")
    assert status == 0
    assert output.strip() == "113"  # EHOSTUNREACH
    assert http_server.connections == 0


async def test_bulk_transfers_both_ways_arrive_intact() -> None:
    size = 64 << 20
    payload = os.urandom(1 << 20) * (size >> 20)
    sender = HostServer("send", payload)
    sink = HostServer("sink")
    program = f"""
import hashlib, socket, sys
got = hashlib.sha256(); n = 0
with socket.create_connection(("10.0.2.2", {sender.port})) as s:
    while data := s.recv(1 << 20):
        got.update(data); n += len(data)
print(n, got.hexdigest())
chunk = bytes(range(256)) * 4096
with socket.create_connection(("10.0.2.2", {sink.port})) as s:
    for _ in range({size} // len(chunk)):
        s.sendall(chunk)
    s.shutdown(socket.SHUT_WR)
    print(s.recv(100).decode())
"""
    try:
        with anyio.fail_after(120):
            status, output = await confined(
                [sys.executable, "-c", program], policy=Policy(allow=["127.0.0.1"])
            )
    finally:
        sender.close()
        sink.close()
    assert status == 0, output
    down, up = output.splitlines()
    assert down == f"{size} {hashlib.sha256(payload).hexdigest()}"
    chunk = bytes(range(256)) * 4096
    assert up == hashlib.sha256(chunk * (size // len(chunk))).hexdigest()
    assert sink.received_bytes == size


@pytest.mark.parametrize("connected_at_once", [True, False], ids=["loopback", "connect-waited"])
async def test_connections_after_the_first_are_carried_by_callbacks_intact(
    monkeypatch: pytest.MonkeyPatch, connected_at_once: bool, anyio_backend_name: str
) -> None:
    # The first connection to an address and port asks the policy (a task);
    # the next ones are relayed by callbacks (Terminator._direct_tcp).  Each
    # case runs three times, so that both ways are exercised: data from the
    # host before the program's handshake completes, half-closes and resets
    # each way, transfers each way, and a destination that stopped listening.
    # "connect-waited" makes the host socket's connect report itself
    # unfinished, as off loopback, so that the relay waits for writability.
    from netshim.isolate._terminate import Terminator
    from netshim.stacks.host import HostStack

    carried: list[bool] = []
    direct_tcp = Terminator._direct_tcp

    def counted(self: Terminator, interception: object, syn: object) -> bool:
        taken = direct_tcp(self, interception, syn)  # type: ignore[arg-type]
        carried.append(taken)
        return taken

    monkeypatch.setattr(Terminator, "_direct_tcp", counted)
    if not connected_at_once:
        connect_nowait = HostStack.connect_nowait

        def unfinished(self: HostStack, ip: str, port: int) -> tuple[socket.socket, bool]:
            return connect_nowait(self, ip, port)[0], False

        monkeypatch.setattr(HostStack, "connect_nowait", unfinished)
    size = 8 << 20
    payload = os.urandom(size)
    half, reset, keep = (
        HostServer("half-close", b"greeting"),
        HostServer("reset", b"doomed"),
        HostServer("keep"),
    )
    sender, sink, once = HostServer("send", payload), HostServer("sink"), HostServer("once", b"x")
    servers = (half, reset, keep, sender, sink, once)
    program = f"""
import hashlib, socket, struct
uploaded = hashlib.sha256()
for round in range(3):
    with socket.create_connection(("10.0.2.2", {half.port})) as s:
        got = b""
        while data := s.recv(100):
            got += data
        s.sendall(b"after the host's FIN %d;" % round)
        s.shutdown(socket.SHUT_WR)
        print(got.decode(), s.recv(100))
    with socket.create_connection(("10.0.2.2", {reset.port})) as s:
        s.sendall(b"!")
        got = b""
        try:
            while data := s.recv(100):
                got += data
            print("eof", got)
        except OSError as exc:
            print("error", exc.errno, got)
    s = socket.create_connection(("10.0.2.2", {keep.port}))
    s.sendall(b"last words;")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    with socket.create_connection(("10.0.2.2", {sender.port})) as s:
        got = hashlib.sha256()
        while data := s.recv(1 << 20):
            got.update(data)
        print("down", got.hexdigest())
    chunk = bytes(range(256)) * 1024
    with socket.create_connection(("10.0.2.2", {sink.port})) as s:
        for _ in range({size} // len(chunk)):
            s.sendall(chunk)
            uploaded.update(chunk)
        s.shutdown(socket.SHUT_WR)
        print("up", s.recv(100).decode() == uploaded.hexdigest())
    try:
        with socket.create_connection(("10.0.2.2", {once.port}), timeout=20) as s:
            print("ok", s.recv(1))
    except OSError as exc:
        print("refused", exc.errno)
"""
    try:
        with anyio.fail_after(120):
            status, output = await confined(
                [sys.executable, "-c", program], policy=Policy(allow=["127.0.0.1"])
            )
            for _ in range(3):
                await anyio.to_thread.run_sync(keep.handled.acquire, True, 30)
    finally:
        for server in servers:
            server.close()
    assert status == 0, output
    down = f"down {hashlib.sha256(payload).hexdigest()}"
    expected = []
    for round in range(3):
        expected += [
            "greeting b''",
            f"error {errno.ECONNRESET} b'doomed'",
            down,
            "up True",
            "ok b'x'" if round == 0 else f"refused {errno.ECONNREFUSED}",
        ]
    assert output.splitlines() == expected
    assert half.kept == b"after the host's FIN 0;after the host's FIN 1;after the host's FIN 2;"
    assert keep.kept == b"last words;" * 3
    assert keep.error == errno.ECONNRESET
    assert sink.received_bytes == 3 * size
    assert once.connections == 1
    if anyio_backend_name == "asyncio":
        # Six destinations: each one's first connection took a task, the
        # other two (refused ones included) the callbacks.
        assert carried.count(False) == 6
        assert carried.count(True) == 12
    else:
        # The callbacks are asyncio's: under trio every connection is a task.
        assert True not in carried


async def test_a_destination_that_stops_answering_times_out_on_either_path(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, anyio_backend_name: str
) -> None:
    # A listener with a backlog of 0 that never accepts holds one finished
    # handshake in its queue; Linux drops every later SYN to it (the
    # queue is full), so the second connection's host connect() never
    # ends: a blackholed destination.  The first connection asks the
    # policy (a task); the second, under asyncio, is carried by callbacks
    # (Terminator._direct_tcp), whose connect waits for writability and
    # its own timer.  Both paths end in the configured timeout, an ICMP
    # host unreachable for the program, and a log line.
    from netshim.isolate._terminate import Terminator

    carried: list[bool] = []
    direct_tcp = Terminator._direct_tcp

    def counted(self: Terminator, interception: object, syn: object) -> bool:
        taken = direct_tcp(self, interception, syn)  # type: ignore[arg-type]
        carried.append(taken)
        return taken

    monkeypatch.setattr(Terminator, "_direct_tcp", counted)
    full = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = full.getsockname()[1]
    program = f"""
import socket
first = socket.create_connection(("10.0.2.2", {port}), timeout=20)
print("first connected")
for attempt in range(2):
    try:
        socket.create_connection(("10.0.2.2", {port}), timeout=20)
        print("connected")
    except OSError as exc:
        print("failed", exc.errno)
first.close()
"""
    try:
        with caplog.at_level("INFO", logger="netshim.isolate"), anyio.fail_after(25):
            status, output = await confined(
                [sys.executable, "-c", program],
                policy=Policy(allow=["127.0.0.1"]),
                connect_timeout=0.5,
            )
    finally:
        full.close()
    assert status == 0, output
    assert output.splitlines() == ["first connected"] + [f"failed {errno.EHOSTUNREACH}"] * 2
    timeouts = [r for r in caplog.records if "timed out" in r.getMessage()]
    assert [f"10.0.2.2:{port}" in r.getMessage() for r in timeouts] == [True, True]
    if anyio_backend_name == "asyncio":
        # The first connection took the task; the timed-out one did not
        # teach the terminator anything, and the later two took callbacks.
        assert carried == [False, True, True]
    else:
        assert True not in carried


async def test_udp_and_dns_through_the_stack() -> None:
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    port = echo.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                data, address = echo.recvfrom(65536)
            except OSError:
                return
            echo.sendto(data[::-1], address)

    threading.Thread(target=serve, daemon=True).start()
    program = f"""
import socket
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(10)
u.sendto(b"abc", ("10.0.2.2", {port}))
print(u.recvfrom(100)[0].decode())
print(socket.gethostbyname("localhost"))
"""
    try:
        with anyio.fail_after(60):
            status, output = await confined(
                [sys.executable, "-c", program], policy=Policy(allow=["127.0.0.1"])
            )
    finally:
        echo.close()
    assert status == 0
    assert output.splitlines() == ["cba", "127.0.0.1"]


async def test_a_subprocess_reaches_a_server_on_the_tests_virtual_network() -> None:
    curl = require_peer("curl")
    net = VirtualNetwork(seed=3)
    web = net.add_host("web.test", ["10.9.0.5"])
    client = net.add_host("client", ["10.9.0.9"])
    listener = await web.listen_tcp("10.9.0.5", 8080)

    async def serve() -> None:
        stream = await listener.accept()
        async with stream:
            await stream.receive()
            body = b"served on the virtual network\n"
            await stream.send(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                + body
            )

    async with anyio.create_task_group() as group:
        group.start_soon(serve)
        with anyio.fail_after(60):
            status, output = await confined(
                [curl, "-sS", "--max-time", "20", "http://web.test:8080/"],
                stack=client,
                policy=Policy(allow_private=True),
            )
        group.cancel_scope.cancel()
    await listener.aclose()
    assert status == 0
    assert output == "served on the virtual network\n"


def test_the_command_line_runs_a_confined_program_and_passes_its_status(
    http_server: HostServer,
) -> None:
    curl = shutil.which("curl") or require_peer("curl")
    url = f"http://10.0.2.2:{http_server.port}/"
    command = [sys.executable, "-m", "netshim", "run", "--isolate"]
    allowed = subprocess.run(
        [*command, "--allow", "127.0.0.1", "--", curl, "-sS", "--max-time", "20", url],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout == b"hello from the machine\n"
    refused = subprocess.run(
        [sys.executable, "-m", "netshim", "run", "--isolate", "--", curl, "-sS", url],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 7
    assert b"refused protocol=tcp destination=10.0.2.2" in refused.stderr
    assert b"--allow" in refused.stderr, "the log line says how to allow it"


def test_the_command_line_sets_the_connect_timeout() -> None:
    # A blackholed destination (see the test of both paths above): the
    # program's connect fails with EHOSTUNREACH after --connect-timeout, not
    # after the default 30 s (which its own 20 s timeout would cut short).
    full = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = full.getsockname()[1]
    program = f"""
import socket, time
first = socket.create_connection(("10.0.2.2", {port}), timeout=20)
began = time.monotonic()
try:
    socket.create_connection(("10.0.2.2", {port}), timeout=20)
    print("connected")
except OSError as exc:
    print("failed", exc.errno, round(time.monotonic() - began))
"""
    command = [sys.executable, "-m", "netshim", "run", "--isolate", "--allow", "127.0.0.1"]
    try:
        finished = subprocess.run(
            [*command, "--connect-timeout", "1.5", "--", sys.executable, "-c", program],
            capture_output=True,
            timeout=60,
            check=False,
        )
    finally:
        full.close()
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.decode().split() == ["failed", str(errno.EHOSTUNREACH), "2"]


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (["--isolate", "--connect-timeout", "soon"], "--connect-timeout takes seconds"),
        (["--isolate", "--connect-timeout=0"], "must be a positive number"),
        (["--isolate", "--connect-timeout", "inf"], "must be a positive number"),
        (["--isolate", "--connect-timeout"], "--connect-timeout takes seconds, got '--'"),
        (["--connect-timeout", "5"], "--connect-timeout needs --isolate"),
    ],
)
def test_bad_connect_timeouts_are_usage_errors(arguments: list[str], complaint: str) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "netshim", "run", *arguments, "--", "true"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode == 2
    assert complaint in finished.stderr.decode()
