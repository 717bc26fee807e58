"""A real ``netshim gateway`` process for the hardening, fuzz and abuse tests.

These tests judge the gateway as an operator would: as a process with its own
memory and event loop, whose only outputs are its sockets, its log and its
``/metrics``.  :class:`GatewayProcess` starts ``python -m netshim gateway``
on free loopback ports (HTTP and SOCKS5), reads the listening addresses from
its log, and offers what every such test needs afterwards:

* :meth:`GatewayProcess.alive` and :meth:`GatewayProcess.assert_serves`: the
  process is still running and a good client (a Wisp v2 client, a wsproxy
  client and a SOCKS5 client, each echoing through a loopback destination the
  process is allowed to reach) is served;
* :meth:`GatewayProcess.rss` : resident memory from ``/proc`` (Linux);
* the log (stderr) kept in a file, so a failure shows what the gateway said,
  and :meth:`GatewayProcess.internal_errors`, the lines the wall logged.

Destinations live in the test process: :func:`echo_server` (echoes),
:func:`talking_server` (sends as fast as it can and never reads) and
:func:`sink_server` (accepts and never reads); they run in a thread so that
the test's own event loop stays free to play the client.

The command line is tested without a process where it can be:
:func:`config_from_flags` parses flags as ``netshim gateway`` does, and
:func:`refused_flags` runs the process on flags it must refuse in one line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import connect as ws_connect

from netshim._gateway_cli import add_arguments, config_from
from netshim.protocols import socks5, wisp
from netshim.protocols.wisp import Role, WispConnection

__all__ = [
    "GatewayProcess",
    "ThreadedServer",
    "config_from_flags",
    "echo_server",
    "gateway_process",
    "recv_exactly",
    "refused_flags",
    "sink_server",
    "talking_server",
    "wisp_echo",
]

_LISTENING = re.compile(r"listening protocol=(\w+) address=(\S+):(\d+)")


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    http: tuple[str, int] = ("127.0.0.1", 0)
    socks: tuple[str, int] = ("127.0.0.1", 0)
    echo: tuple[str, int] = ("127.0.0.1", 0)
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def internal_errors(self) -> list[str]:
        return [line for line in self.log().splitlines() if "internal-error" in line]

    def rss(self) -> int:
        """Resident memory of the gateway process, in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc status")

    def assert_serves(self, source: str = "127.0.0.1") -> None:
        """A good client, from ``source``, gets an echo through Wisp v2, wsproxy and SOCKS5."""
        assert self.alive(), f"the gateway died:\n{self.log()[-4000:]}"
        payload = os.urandom(1000)
        assert wisp_echo(self.http, self.echo, payload, source=source) == payload
        assert wsproxy_echo(self.http, self.echo, payload, source=source) == payload
        assert socks5_echo(self.socks, self.echo, payload, source=source) == payload


@contextlib.contextmanager
def gateway_process(
    *flags: str, event_loop: str = "asyncio", echo: tuple[str, int] | None = None
) -> Iterator[GatewayProcess]:
    """Run ``netshim gateway`` with ``flags``; it may reach ``echo`` (started here if not given)."""
    with contextlib.ExitStack() as stack:
        if echo is None:
            echo = stack.enter_context(echo_server()).address
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        log_path = directory / "gateway.log"
        log = stack.enter_context(log_path.open("wb"))
        command = [
            sys.executable,
            "-m",
            "netshim",
            "gateway",
            "--port",
            "0",
            "--socks-port",
            "0",
            "--event-loop",
            event_loop,
            "--allow",
            f"{echo[0]}:{echo[1]}",
            *flags,
        ]
        process = subprocess.Popen(command, stderr=log, stdout=subprocess.DEVNULL)
        gateway = GatewayProcess(process, log_path, echo=echo)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (gateway.http[1] == 0 or gateway.socks[1] == 0):
                assert gateway.alive(), f"the gateway did not start:\n{gateway.log()}"
                for name, host, port in _LISTENING.findall(gateway.log()):
                    if name == "http":
                        gateway.http = (host, int(port))
                    elif name == "socks5":
                        gateway.socks = (host, int(port))
                time.sleep(0.05)
            assert gateway.http[1], f"no HTTP port in the log:\n{gateway.log()}"
            assert gateway.socks[1], f"no SOCKS5 port in the log:\n{gateway.log()}"
            yield gateway
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


# -- the command line


def config_from_flags(*flags: str) -> tuple[Any, dict[str, Any]]:
    """The gateway config and run options that ``netshim gateway FLAGS`` would use."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from(parser.parse_args(flags))


def refused_flags(*flags: str) -> str:
    """Run ``netshim gateway FLAGS``, which must refuse them without a traceback; its stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "netshim", "gateway", "--port", "0", *flags],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


# -- destinations


@dataclass
class ThreadedServer:
    """A TCP server on loopback whose connections are handled in threads."""

    address: tuple[str, int]
    connections: int = 0
    sent: int = 0
    stop: threading.Event = field(default_factory=threading.Event)


@contextlib.contextmanager
def _threaded_server(handle: object, host: str = "127.0.0.1") -> Iterator[ThreadedServer]:
    listener = socket.create_server((host, 0))
    listener.settimeout(0.2)
    server = ThreadedServer(listener.getsockname()[:2])
    sockets: list[socket.socket] = []

    def accept_loop() -> None:
        while not server.stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server.connections += 1
            sockets.append(conn)
            threading.Thread(target=handle, args=(conn, server), daemon=True).start()  # type: ignore[arg-type]

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        listener.close()
        for conn in sockets:
            with contextlib.suppress(OSError):
                conn.close()
        thread.join(5)


def _echo(conn: socket.socket, server: ThreadedServer) -> None:
    with contextlib.suppress(OSError):
        while data := conn.recv(65536):
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)


def _talk(conn: socket.socket, server: ThreadedServer) -> None:
    block = b"x" * (1 << 16)
    conn.settimeout(0.5)
    while not server.stop.is_set():
        try:
            server.sent += conn.send(block)
        except TimeoutError:
            continue
        except OSError:
            return


def _sink(conn: socket.socket, server: ThreadedServer) -> None:
    server.stop.wait()


def echo_server(host: str = "127.0.0.1") -> contextlib.AbstractContextManager[ThreadedServer]:
    """Echoes every byte; half-closes after the client's FIN."""
    return _threaded_server(_echo, host)


def talking_server(host: str = "127.0.0.1") -> contextlib.AbstractContextManager[ThreadedServer]:
    """Sends as fast as its peer takes, never reads; counts what it sent."""
    return _threaded_server(_talk, host)


def sink_server(host: str = "127.0.0.1") -> contextlib.AbstractContextManager[ThreadedServer]:
    """Accepts and never reads."""
    return _threaded_server(_sink, host)


# -- good clients (synchronous: they run in the test's thread, bounded by timeouts)


def _ws(http: tuple[str, int], path: str, subprotocols: list[str] | None, source: str) -> object:
    sock = socket.create_connection(http, timeout=10, source_address=(source, 0))
    return ws_connect(
        f"ws://{http[0]}:{http[1]}{path}",
        sock=sock,
        subprotocols=subprotocols,  # type: ignore[arg-type]
        open_timeout=10,
        close_timeout=2,
        max_size=None,
    )


def wisp_echo(
    http: tuple[str, int],
    echo: tuple[str, int],
    payload: bytes,
    *,
    source: str = "127.0.0.1",
) -> bytes:
    """Open one Wisp v2 stream to ``echo``, send ``payload``, return what came back."""
    websocket = _ws(http, "/", ["wisp-v2"], source)
    with websocket:  # type: ignore[attr-defined]
        conn = WispConnection(Role.CLIENT, extensions=[wisp.UdpExtension()])
        while conn.state is not wisp.ConnectionState.OPEN:
            conn.receive_data(websocket.recv(timeout=10))  # type: ignore[attr-defined]
            for event in conn.events():
                if isinstance(event, wisp.Info):
                    websocket.send(conn.send(conn.local_info()))  # type: ignore[attr-defined]
                elif isinstance(event, wisp.Close):
                    raise ConnectionRefusedError(f"Wisp close {event.reason}")
        websocket.send(conn.send(wisp.Connect(1, echo[0], echo[1])))  # type: ignore[attr-defined]
        websocket.send(conn.send(wisp.Data(1, payload)))  # type: ignore[attr-defined]
        received = b""
        while len(received) < len(payload):
            conn.receive_data(websocket.recv(timeout=10))  # type: ignore[attr-defined]
            for event in conn.events():
                if isinstance(event, wisp.Data):
                    received += event.data
                elif isinstance(event, wisp.Close) and event.stream_id == 1:
                    raise ConnectionResetError(f"Wisp stream closed: {event.reason}")
        return received


def wsproxy_echo(
    http: tuple[str, int], echo: tuple[str, int], payload: bytes, *, source: str = "127.0.0.1"
) -> bytes:
    websocket = _ws(http, f"/{echo[0]}:{echo[1]}", ["binary"], source)
    with websocket:  # type: ignore[attr-defined]
        websocket.send(payload)  # type: ignore[attr-defined]
        received = b""
        while len(received) < len(payload):
            message = websocket.recv(timeout=10)  # type: ignore[attr-defined]
            received += message if isinstance(message, bytes) else message.encode()
        return received


def socks5_echo(
    socks: tuple[str, int], echo: tuple[str, int], payload: bytes, *, source: str = "127.0.0.1"
) -> bytes:
    with socket.create_connection(socks, timeout=10, source_address=(source, 0)) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert sock.recv(2) == b"\x05\x00"
        sock.sendall(b"\x05\x01\x00" + socks5.encode_address(*echo))
        reply = sock.recv(4)
        assert reply[:2] == b"\x05\x00", reply
        rest = {1: 4, 4: 16}.get(reply[3], 0) + 2
        recv_exactly(sock, rest)
        sock.sendall(payload)
        return recv_exactly(sock, len(payload))


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    parts = []
    while size:
        data = sock.recv(size)
        if not data:
            raise ConnectionResetError("closed early")
        parts.append(data)
        size -= len(data)
    return b"".join(parts)


def pack_u32(value: int) -> bytes:
    return struct.pack("<I", value)
