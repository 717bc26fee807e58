"""Abusive clients against a real ``netshim gateway`` process: memory stays bounded, others served.

The "Gateway hardening" issue: a client that never reads, reads slowly,
floods the gateway before (or without) its handshake, holds a thousand idle
connections, or fills its upload budget and vanishes, must neither grow the
gateway's memory without bound nor keep anybody else from being served.
(Before the fix, one Wisp client that never read from 16 talking
destinations grew the gateway from 35 MB to 2.2 GB in 3 s.)

Each test starts ``python -m netshim gateway`` (``gateway_process``) on one
event loop (asyncio, uvloop, trio), abuses it for a few seconds from one set
of loopback source addresses (127.0.0.2 and up) while a background thread
samples its resident memory every 50 ms, and meanwhile checks that a fresh
client from another address (127.0.0.200) gets an echo through Wisp v2,
wsproxy and SOCKS5.  Afterwards the abusers go away, ``/metrics`` must show no
stream or connection left, and the log must hold no ``internal-error`` line.
Peak resident memory per scenario and event loop is printed (``pytest -s``),
in a table at the end, and in every memory assertion's message.

How the memory bounds were chosen.  The idle RSS is measured right after the
gateway started (33-37 MiB).  docs/gateway.md bounds what one client can make
the gateway hold: its upload budget (``--upload-buffer``, 32 MiB by default)
plus one message past it (``--max-message-size``, 1 MiB) and one 256 KiB
upstream write per stream, the WebSocket output high-water mark (1 MiB) per
connection, and one 64 KiB upstream read per stream.  For each scenario:

* talking destinations, client never reads (Wisp, SOCKS5, wsproxy), and the
  slow reader: nothing is uploaded, so the budget plays no part; a Wisp
  connection holds at most 1 MiB of output plus 16 x 64 KiB reads (2 MiB),
  16 wsproxy connections 16 x (1 MiB + 64 KiB) (17 MiB), 16 SOCKS5
  connections 16 x (64 KiB read + 64 KiB transport buffer) (2 MiB);
* early Wisp floods: ``--upload-buffer 4194304`` (4 MiB) so that the bound
  is meaningful for the two flooding clients (each by its own address):
  4 MiB + 1 MiB message + 1 MiB partial message in the frame reader +
  16 x 256 KiB writes + 256 KiB read, about 10.5 MiB each, 21 MiB for both
  (the third, closed at its handshake, queues nothing);
* early SOCKS5 and wsproxy floods (no budget applies): a SOCKS5 connection
  parks one 64 KiB read, a wsproxy connection the 1 MiB message being written
  upstream and the next one being assembled: 16 x 2 MiB, 32 MiB in all;
* a departed client's budget: ``--upload-buffer 2097152`` (2 MiB) plus 1 MiB
  plus 4 x 256 KiB: about 4 MiB.

So every one of these stays below the asserted idle + 64 MiB, which leaves
room for the allocator's slack (freed memory not returned at once) but not
for growth with the amount of abuse: a gateway that stops pausing reads, or
reads ahead of what it can pass on, passes 64 MiB within a second on
loopback.  A thousand idle Wisp v2 connections (handshake done, then silent)
are spread over source addresses with one connection less than the
per-address limit each (``--max-connections-per-client``, whose default is
read from ``netshim.policy.Limits``); they are bounded by idle + 96 MiB: what
they cost is printed, about 31 KiB each (31 MiB) when this was written.

Every socket has a timeout, every abusing thread is joined, and every test
ends its destinations and gateway on the way out.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest
from gateway_process import (
    GatewayProcess,
    ThreadedServer,
    gateway_process,
    recv_exactly,
    sink_server,
    talking_server,
    wisp_echo,
)
from websockets.frames import Frame, Opcode

from netshim.policy import Limits
from netshim.protocols import socks5, wisp

KiB = 1 << 10
MiB = 1 << 20
EVENT_LOOPS = ["asyncio", "uvloop", "trio"]

# How long each scenario abuses the gateway before the checks.
ABUSE_SECONDS = 3.0
# Resident memory is sampled this often (seconds).
SAMPLE_INTERVAL = 0.05
# Peak RSS over the idle RSS measured right after start (see the module docs).
MEMORY_BOUND = 64 * MiB
IDLE_CONNECTIONS_MEMORY_BOUND = 96 * MiB
# A fresh client is "served" when its three echoes (Wisp v2, wsproxy, SOCKS5)
# came back within this many seconds.
SERVE_LATENCY_BOUND = 3.0
# Every blocking socket operation of a client gives up after this long.
SOCKET_TIMEOUT = 10.0
# After the abusers left, streams and connections must be gone within this.
DRAIN_SECONDS = 10.0

STREAMS = 16
FRESH = "127.0.0.200"
ABUSER = "127.0.0.2"

# (scenario, event loop) -> (idle RSS, peak RSS), for the table at the end.
PEAKS: dict[tuple[str, str], tuple[int, int]] = {}


# -- bookkeeping


@pytest.fixture(scope="module", autouse=True)
def _peak_table() -> Iterator[None]:
    yield
    if not PEAKS:
        return
    scenarios = list(dict.fromkeys(scenario for scenario, _ in PEAKS))
    loops = [loop for loop in EVENT_LOOPS if any(key[1] == loop for key in PEAKS)]
    lines = ["", "peak RSS in MiB (idle RSS after start / peak, growth in brackets):"]
    lines.append(f"{'scenario':<36}" + "".join(f"{loop:>24}" for loop in loops))
    for scenario in scenarios:
        cells = []
        for loop in loops:
            found = PEAKS.get((scenario, loop))
            if found is None:
                cells.append(f"{'-':>24}")
                continue
            idle, peak = found
            cells.append(
                f"{f'{idle / MiB:.1f} / {peak / MiB:.1f} (+{(peak - idle) / MiB:.1f})':>24}"
            )
        lines.append(f"{scenario:<36}" + "".join(cells))
    print("\n".join(lines))


@pytest.fixture(autouse=True)
def _threads_end() -> Iterator[None]:
    """Every thread a test started (ours and the destinations') has ended after it."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    left: list[threading.Thread] = []
    while time.monotonic() < deadline:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not left:
            return
        time.sleep(0.05)
    pytest.fail(f"threads still running after the test: {left}")


class RssWatch:
    """Samples the gateway's resident memory in a thread; ``idle`` is taken when created."""

    def __init__(self, gateway: GatewayProcess) -> None:
        self.gateway = gateway
        self.idle = gateway.rss()
        self.peak = self.idle
        self.samples = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="abuse-rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self.gateway.rss()
            except (OSError, AssertionError) as exc:
                self.error = f"could not read the gateway's RSS: {exc!r}"
                return
            self.peak = max(self.peak, rss)
            self.samples += 1
            self._stop.wait(SAMPLE_INTERVAL)

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def check_memory(
    scenario: str, loop: str, gateway: GatewayProcess, watch: RssWatch, bound: int
) -> None:
    """Record and print the peak; assert it stayed under idle + ``bound``."""
    PEAKS[(scenario, loop)] = (watch.idle, watch.peak)
    summary = (
        f"{scenario} on {loop}: idle {watch.idle / MiB:.1f} MiB, "
        f"peak {watch.peak / MiB:.1f} MiB (+{(watch.peak - watch.idle) / MiB:.1f} MiB; "
        f"bound +{bound / MiB:.0f} MiB; {watch.samples} samples)"
    )
    print(f"\n[abuse] {summary}")
    assert gateway.alive(), f"the gateway died ({summary}):\n{gateway.log()[-4000:]}"
    assert watch.error is None, f"{watch.error} ({summary})"
    assert watch.samples >= 10, summary
    assert watch.peak - watch.idle < bound, f"memory over the bound: {summary}"


def check_fresh_clients_served(
    gateway: GatewayProcess, seconds: float, source: str = FRESH
) -> float:
    """Wait ``seconds``, checking about twice a second that a fresh client is served.

    Returns the slowest check's duration (asserted under SERVE_LATENCY_BOUND).
    """
    end = time.monotonic() + seconds
    slowest = 0.0
    checks = 0
    time.sleep(min(0.5, seconds / 4))
    while True:
        started = time.monotonic()
        gateway.assert_serves(source=source)
        slowest = max(slowest, time.monotonic() - started)
        checks += 1
        remaining = end - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(0.5, remaining))
    print(f"\n[abuse] {checks} fresh clients served meanwhile, slowest in {slowest:.3f} s")
    assert slowest < SERVE_LATENCY_BOUND, f"a fresh client waited {slowest:.2f} s"
    return slowest


def metrics(gateway: GatewayProcess) -> dict[str, float]:
    """``/metrics`` as ``{'name{labels}': value}``."""
    with socket.create_connection(gateway.http, timeout=SOCKET_TIMEOUT) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"200", head
    values: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def metric_sum(values: dict[str, float], name: str) -> float:
    return sum(v for key, v in values.items() if key == name or key.startswith(name + "{"))


def wait_drained(gateway: GatewayProcess, seconds: float = DRAIN_SECONDS) -> float:
    """Wait until ``/metrics`` shows no stream and no connection; return how long it took."""
    started = time.monotonic()
    values: dict[str, float] = {}
    while time.monotonic() - started < seconds:
        values = metrics(gateway)
        streams = metric_sum(values, "netshim_gateway_streams")
        connections = metric_sum(values, "netshim_gateway_connections")
        if streams == 0 and connections == 0:
            return time.monotonic() - started
        time.sleep(0.1)
    shown = {k: v for k, v in values.items() if k.startswith("netshim_gateway_") and v}
    raise AssertionError(
        f"streams or connections still open {seconds:.0f} s after the abusers left: {shown}"
    )


def wrap_up(
    scenario: str,
    loop: str,
    gateway: GatewayProcess,
    watch: RssWatch,
    bound: int,
    drain_seconds: float = DRAIN_SECONDS,
) -> None:
    """After the abusers left: nothing stays open, memory stayed bounded, fresh clients served.

    Every check runs (and the peak is recorded) even when an earlier one
    failed; the assertion lists every problem.
    """
    problems: list[str] = []
    try:
        drained_in = wait_drained(gateway, drain_seconds)
        print(f"\n[abuse] streams and connections gone {drained_in:.1f} s after the abusers")
    except AssertionError as exc:
        problems.append(str(exc))
    try:
        check_memory(scenario, loop, gateway, watch, bound)
    except AssertionError as exc:
        problems.append(str(exc))
    if gateway.alive():
        try:
            gateway.assert_serves(source=FRESH)
        except (AssertionError, OSError) as exc:
            problems.append(f"a fresh client was not served afterwards: {exc!r}")
    errors = gateway.internal_errors()
    if errors:
        problems.append("internal errors in the gateway's log:\n" + "\n".join(errors))
    assert not problems, "\n".join(problems)


def allow(server: ThreadedServer) -> tuple[str, str]:
    return "--allow", f"{server.address[0]}:{server.address[1]}"


@contextlib.contextmanager
def abused_gateway(
    destination: Callable[[], contextlib.AbstractContextManager[ThreadedServer]],
    loop: str,
    scenario: str,
    *flags: str,
) -> Iterator[tuple[GatewayProcess, ThreadedServer]]:
    """A gateway process on ``loop`` allowed to reach a new ``destination``; both, for the abuse.

    A fresh client is served before the block; after it the destination
    stops (ending what the abusers left open) and :func:`wrap_up` judges
    ``scenario`` against :data:`MEMORY_BOUND`.
    """
    with contextlib.ExitStack() as destinations:
        server = destinations.enter_context(destination())
        with (
            gateway_process(*allow(server), *flags, event_loop=loop) as gateway,
            RssWatch(gateway) as watch,
        ):
            gateway.assert_serves(source=FRESH)
            yield gateway, server
            destinations.close()
            wrap_up(scenario, loop, gateway, watch, MEMORY_BOUND)


def wait_for(condition: Callable[[], bool], what: str, seconds: float = SOCKET_TIMEOUT) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# -- a raw client: WebSocket frames, Wisp packets and SOCKS5 by hand, so that
# each test decides exactly when it sends and whether it ever reads.


def open_socket(address: tuple[str, int], source: str) -> socket.socket:
    return socket.create_connection(address, timeout=SOCKET_TIMEOUT, source_address=(source, 0))


def upgrade_request(address: tuple[str, int], path: str, subprotocol: str | None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {address[0]}:{address[1]}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if subprotocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response_head(sock: socket.socket) -> tuple[int, bytes]:
    """The HTTP status of the response and the bytes behind its head."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(4096)
        if not data:
            raise ConnectionResetError(f"closed before the response head ended: {buffer!r}")
        buffer += data
        assert len(buffer) < 65536, "response head too long"
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


def ws_frame(payload: bytes) -> bytes:
    """A masked binary frame, as a client sends it."""
    return Frame(Opcode.BINARY, payload).serialize(mask=True)


class ServerFrames:
    """Parses the gateway's (unmasked) WebSocket frames out of received bytes."""

    def __init__(self, data: bytes = b"") -> None:
        self.buffer = bytearray(data)

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def frames(self) -> Iterator[tuple[int, bytes]]:
        buffer = self.buffer
        while len(buffer) >= 2:
            first, second = buffer[0], buffer[1]
            assert not second & 0x80, "a server frame is masked"
            length, start = second & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                (length,), start = struct.unpack_from("!H", buffer, 2), 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                (length,), start = struct.unpack_from("!Q", buffer, 2), 10
            if len(buffer) < start + length:
                return
            payload = bytes(buffer[start : start + length])
            del buffer[: start + length]
            yield first & 0x0F, payload


def next_wisp(sock: socket.socket, frames: ServerFrames) -> tuple[int, int, bytes]:
    """The next Wisp packet from the gateway: (type, stream id, payload)."""
    while True:
        for opcode, payload in frames.frames():
            if opcode == Opcode.CLOSE:
                raise ConnectionResetError(f"WebSocket closed: {payload!r}")
            if opcode == Opcode.BINARY:
                kind, stream_id = struct.unpack_from("<BI", payload)
                return kind, stream_id, payload[wisp.HEADER_SIZE :]
        data = sock.recv(65536)
        if not data:
            raise ConnectionResetError("the gateway closed the connection")
        frames.feed(data)


def packet(kind: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack("<BI", kind, stream_id) + payload


def client_info() -> bytes:
    return packet(wisp.PacketType.INFO, 0, bytes([2, 0]) + wisp.UdpExtension().emit())


def connect_packet(stream_id: int, address: tuple[str, int]) -> bytes:
    body = struct.pack("<BH", wisp.StreamType.TCP, address[1]) + address[0].encode()
    return packet(wisp.PacketType.CONNECT, stream_id, body)


def data_frame(stream_id: int, size: int) -> bytes:
    return ws_frame(packet(wisp.PacketType.DATA, stream_id, bytes(size)))


def wisp_v2_start(sock: socket.socket, http: tuple[str, int]) -> ServerFrames:
    """Upgrade to Wisp v2 and do the handshake in order (the server's INFO, ours, CONTINUE)."""
    sock.sendall(upgrade_request(http, "/", "wisp-v2"))
    status, rest = read_response_head(sock)
    assert status == 101, status
    frames = ServerFrames(rest)
    kind, _, _ = next_wisp(sock, frames)
    assert kind == wisp.PacketType.INFO, kind
    sock.sendall(ws_frame(client_info()))
    kind, stream_id, payload = next_wisp(sock, frames)
    if kind != wisp.PacketType.CONTINUE or stream_id != 0:
        raise ConnectionRefusedError(f"Wisp handshake refused: {kind} {stream_id} {payload!r}")
    return frames


def wisp_v2_client(http: tuple[str, int], source: str) -> tuple[socket.socket, ServerFrames]:
    sock = open_socket(http, source)
    try:
        return sock, wisp_v2_start(sock, http)
    except BaseException:
        sock.close()
        raise


def socks5_connect_request(target: tuple[str, int]) -> bytes:
    """Greeting (no authentication) and CONNECT, to send in one go."""
    return b"\x05\x01\x00" + b"\x05\x01\x00" + socks5.encode_address(*target)


def socks5_connected(sock: socket.socket, target: tuple[str, int]) -> None:
    sock.sendall(socks5_connect_request(target))
    assert recv_exactly(sock, 2) == b"\x05\x00"
    reply = recv_exactly(sock, 4)
    assert reply[:2] == b"\x05\x00", reply
    recv_exactly(sock, {1: 4, 4: 16}.get(reply[3], 0) + 2)


def reset_on_close(sock: socket.socket) -> None:
    """Make ``close()`` send RST: the client vanishes rather than saying goodbye."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@dataclass
class Flood:
    """A thread that connects with ``start`` and sends ``frames`` (cycled) as fast as it can.

    It never reads.  When the gateway ends the connection it connects again,
    until stopped.  ``sent`` counts bytes the kernel took.
    """

    name: str
    start: Callable[[], socket.socket]
    frames: Sequence[bytes]
    stop: threading.Event = field(default_factory=threading.Event)
    sent: int = 0
    connections: int = 0
    failures: list[str] = field(default_factory=list)
    thread: threading.Thread | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                sock = self.start()
            except OSError as exc:
                self.failures.append(repr(exc))
                self.stop.wait(0.1)
                continue
            self.connections += 1
            with sock:
                sock.settimeout(0.25)
                with contextlib.suppress(OSError):
                    self._send(sock)

    def _send(self, sock: socket.socket) -> None:
        index = 0
        while not self.stop.is_set():
            view = memoryview(self.frames[index % len(self.frames)])
            index += 1
            offset = 0
            while offset < len(view) and not self.stop.is_set():
                try:
                    sent = sock.send(view[offset:])
                except TimeoutError:
                    continue
                offset += sent
                self.sent += sent


@contextlib.contextmanager
def flooding(floods: Sequence[Flood]) -> Iterator[None]:
    """Run ``floods`` in threads for the block; stop them all at once, then join them."""
    for flood in floods:
        flood.thread = threading.Thread(target=flood.run, name=f"abuse-{flood.name}", daemon=True)
        flood.thread.start()
    try:
        yield
    finally:
        for flood in floods:
            flood.stop.set()
        for flood in floods:
            assert flood.thread is not None
            flood.thread.join(SOCKET_TIMEOUT)


# -- 1. talking destinations, a client that never reads


@pytest.mark.parametrize("loop", EVENT_LOOPS)
def test_wisp_client_never_reads_talking_destinations(loop: str) -> None:
    with (
        abused_gateway(talking_server, loop, "1 never reads: Wisp v2") as (gateway, talker),
        contextlib.ExitStack() as clients,
    ):
        sock, _ = wisp_v2_client(gateway.http, ABUSER)
        clients.enter_context(sock)
        sock.sendall(
            b"".join(ws_frame(connect_packet(i, talker.address)) for i in range(1, STREAMS + 1))
        )
        # From here on the client never reads: the kernel buffers fill up.
        wait_for(lambda: talker.connections >= STREAMS, "the 16 streams to connect")
        check_fresh_clients_served(gateway, ABUSE_SECONDS)
        assert talker.sent > MiB, f"the destinations sent only {talker.sent} bytes"
        print(f"\n[abuse] the talking destinations got rid of {talker.sent / MiB:.1f} MiB")


@pytest.mark.parametrize("loop", EVENT_LOOPS)
def test_socks5_clients_never_read_talking_destinations(loop: str) -> None:
    with (
        abused_gateway(talking_server, loop, "1 never reads: SOCKS5") as (gateway, talker),
        contextlib.ExitStack() as clients,
    ):
        for _ in range(STREAMS):
            sock = clients.enter_context(open_socket(gateway.socks, ABUSER))
            socks5_connected(sock, talker.address)
        wait_for(lambda: talker.connections >= STREAMS, "the 16 connections")
        check_fresh_clients_served(gateway, ABUSE_SECONDS)
        assert talker.sent > MiB, f"the destinations sent only {talker.sent} bytes"


@pytest.mark.parametrize("loop", EVENT_LOOPS)
def test_wsproxy_clients_never_read_talking_destinations(loop: str) -> None:
    with abused_gateway(talking_server, loop, "1 never reads: wsproxy") as (gateway, talker):
        path = f"/{talker.address[0]}:{talker.address[1]}"
        with contextlib.ExitStack() as clients:
            for _ in range(STREAMS):
                sock = clients.enter_context(open_socket(gateway.http, ABUSER))
                sock.sendall(upgrade_request(gateway.http, path, "binary"))
                status, _ = read_response_head(sock)
                assert status == 101, status
            wait_for(lambda: talker.connections >= STREAMS, "the 16 connections")
            check_fresh_clients_served(gateway, ABUSE_SECONDS)
            assert talker.sent > MiB, f"the destinations sent only {talker.sent} bytes"


# -- 2. a slow reader


SLOW_READ_RATE = 256 * KiB


@pytest.mark.parametrize("loop", EVENT_LOOPS)
def test_slow_wisp_reader(loop: str) -> None:
    with abused_gateway(talking_server, loop, "2 slow reader: Wisp v2") as (gateway, talker):
        sock, frames = wisp_v2_client(gateway.http, ABUSER)
        stop = threading.Event()
        received: dict[int, int] = {}
        problems: list[str] = []
        timing: dict[str, float] = {}

        def read_slowly() -> None:
            started = time.monotonic()
            total = 0
            try:
                while not stop.is_set():
                    allowed = SLOW_READ_RATE * (time.monotonic() - started) - total
                    if allowed < 4 * KiB:
                        stop.wait(0.01)
                        continue
                    data = sock.recv(min(int(allowed), 16 * KiB))
                    if not data:
                        problems.append("the gateway closed the connection")
                        return
                    total += len(data)
                    frames.feed(data)
                    for opcode, payload in frames.frames():
                        if opcode != Opcode.BINARY or payload[:1] != b"\x02":
                            problems.append(f"unexpected {opcode} {payload[:16]!r}")
                            continue
                        (stream_id,) = struct.unpack_from("<I", payload, 1)
                        size = len(payload) - wisp.HEADER_SIZE
                        received[stream_id] = received.get(stream_id, 0) + size
            except Exception as exc:
                problems.append(repr(exc))
            finally:
                timing["seconds"] = time.monotonic() - started
                timing["bytes"] = total

        with sock:
            sock.sendall(
                b"".join(ws_frame(connect_packet(i, talker.address)) for i in range(1, STREAMS + 1))
            )
            reader = threading.Thread(target=read_slowly, name="abuse-slow-reader", daemon=True)
            reader.start()
            try:
                wait_for(lambda: talker.connections >= STREAMS, "the 16 streams to connect")
                check_fresh_clients_served(gateway, ABUSE_SECONDS)
            finally:
                stop.set()
                reader.join(SOCKET_TIMEOUT)
        assert not problems, problems
        rate = timing["bytes"] / timing["seconds"]
        print(
            f"\n[abuse] slow reader: {timing['bytes'] / KiB:.0f} KiB in"
            f" {timing['seconds']:.1f} s ({rate / KiB:.0f} KiB/s), DATA from"
            f" {len(received)} streams"
        )
        # The gateway kept the slow reader fed (it is paced by the client only).
        assert rate > SLOW_READ_RATE / 2, f"the slow reader got only {rate / KiB:.0f} KiB/s"
        assert set(received) <= set(range(1, STREAMS + 1)), received


# -- 3. early floods

# The largest DATA that fits --max-message-size (1 MiB, the default).
BIG_DATA = wisp.DEFAULT_MAX_MESSAGE_SIZE - wisp.HEADER_SIZE
EARLY_FLOOD_BUDGET = 4 * MiB


def upgrade_then(
    http: tuple[str, int], source: str, path: str, subprotocol: str | None, preamble: bytes
) -> Callable[[], socket.socket]:
    """A Flood's start: connect from ``source``, send the upgrade and ``preamble`` at once."""

    def start() -> socket.socket:
        sock = open_socket(http, source)
        try:
            sock.sendall(upgrade_request(http, path, subprotocol) + preamble)
        except BaseException:
            sock.close()
            raise
        return sock

    return start


@pytest.mark.parametrize("loop", EVENT_LOOPS)
def test_early_wisp_floods(loop: str) -> None:
    """Three clients flood right after (or instead of) the handshake, never reading a byte.

    * 127.0.0.2, v2: the upgrade request, its INFO (without waiting for the
      server's), 16 CONNECTs to a sink and 1 MiB DATA packets round the
      streams, all written blind: the upload budget must pause it;
    * 127.0.0.3, v1 (no subprotocol): 16 CONNECTs, then 64 KiB DATA far past
      the 128 credits per stream: throttled streams, then ignored packets;
    * 127.0.0.4, v2 without its INFO: CONNECTs and DATA at once; the
      gateway ends the connection; the client connects again and again.
    """
    with abused_gateway(
        sink_server,
        loop,
        "3 early flood: Wisp (3 clients)",
        "--upload-buffer",
        str(EARLY_FLOOD_BUDGET),
    ) as (gateway, sink):
        http = gateway.http
        connects = b"".join(
            ws_frame(connect_packet(i, sink.address)) for i in range(1, STREAMS + 1)
        )
        small = [data_frame(i, 64 * KiB) for i in range(1, STREAMS + 1)]
        budget_flood = Flood(
            "v2-blind",
            upgrade_then(http, "127.0.0.2", "/", "wisp-v2", ws_frame(client_info()) + connects),
            [data_frame(i, BIG_DATA) for i in range(1, STREAMS + 1)],
        )
        credit_flood = Flood(
            "v1-credits", upgrade_then(http, "127.0.0.3", "/", None, connects), small
        )
        no_info_flood = Flood(
            "v2-no-info", upgrade_then(http, "127.0.0.4", "/", "wisp-v2", connects), small
        )
        floods = (budget_flood, credit_flood, no_info_flood)
        with flooding(floods):
            check_fresh_clients_served(gateway, ABUSE_SECONDS)
        print(
            "\n[abuse] sent "
            + ", ".join(
                f"{f.name} {f.sent / MiB:.0f} MiB on {f.connections} connection(s)"
                f" ({len(f.failures)} failed connects)"
                for f in floods
            )
        )
        # The floods did flood: past the budget, and past the credits of a stream.
        assert budget_flood.sent > EARLY_FLOOD_BUDGET, budget_flood.sent
        assert credit_flood.sent > 2 * 128 * 64 * KiB, credit_flood.sent
        assert no_info_flood.sent > 0


@pytest.mark.parametrize("loop", EVENT_LOOPS)
def test_early_socks5_and_wsproxy_floods(loop: str) -> None:
    """16 SOCKS5 clients send greeting, CONNECT and raw data at once, never reading.

    Beside them (from another address) 16 wsproxy clients send 1 MiB messages
    right behind their upgrade request.  The destinations are sinks that never read.
    """
    with abused_gateway(sink_server, loop, "3 early flood: SOCKS5 + wsproxy") as (gateway, sink):

        def socks_start() -> socket.socket:
            sock = open_socket(gateway.socks, "127.0.0.2")
            try:
                sock.sendall(socks5_connect_request(sink.address))
            except BaseException:
                sock.close()
                raise
            return sock

        path = f"/{sink.address[0]}:{sink.address[1]}"
        wsproxy_start = upgrade_then(gateway.http, "127.0.0.3", path, "binary", b"")
        raw = [bytes(256 * KiB)]
        messages = [ws_frame(bytes(wisp.DEFAULT_MAX_MESSAGE_SIZE))]
        socks_floods = [Flood(f"socks5-{i}", socks_start, raw) for i in range(STREAMS)]
        wsproxy_floods = [Flood(f"wsproxy-{i}", wsproxy_start, messages) for i in range(STREAMS)]
        with flooding([*socks_floods, *wsproxy_floods]):
            wait_for(lambda: sink.connections >= 2 * STREAMS, "32 connections to the sink")
            check_fresh_clients_served(gateway, ABUSE_SECONDS)
        socks_sent = sum(f.sent for f in socks_floods)
        wsproxy_sent = sum(f.sent for f in wsproxy_floods)
        print(
            f"\n[abuse] sent SOCKS5 {socks_sent / MiB:.0f} MiB,"
            f" wsproxy {wsproxy_sent / MiB:.0f} MiB"
        )
        assert socks_sent > MiB, socks_sent
        assert wsproxy_sent > MiB, wsproxy_sent


# -- 4. a thousand idle connections

IDLE_CONNECTIONS = 1000
# The gateway's default per-address limit (--max-connections-per-client).
PER_CLIENT_LIMIT = Limits().max_connections_per_client or 256
# Each source address holds one connection less than the limit, so that the
# limit is not what stops the thousand; 127.0.0.2 and on.
PER_SOURCE = PER_CLIENT_LIMIT - 1
IDLE_SOURCES = [f"127.0.0.{2 + i}" for i in range(-(-IDLE_CONNECTIONS // PER_SOURCE))]
# Connections opened before their responses are read: under the listen backlog (128).
BATCH = 50


def open_idle_wisp(
    http: tuple[str, int], sources: Sequence[str], stack: contextlib.ExitStack
) -> list[socket.socket]:
    """Wisp v2 connections, one from each of ``sources``, handshaken and left idle."""
    opened: list[socket.socket] = []
    for first in range(0, len(sources), BATCH):
        batch = [stack.enter_context(open_socket(http, s)) for s in sources[first : first + BATCH]]
        for sock in batch:
            sock.sendall(upgrade_request(http, "/", "wisp-v2"))
        states = []
        for sock in batch:
            status, rest = read_response_head(sock)
            assert status == 101, status
            frames = ServerFrames(rest)
            kind, _, _ = next_wisp(sock, frames)
            assert kind == wisp.PacketType.INFO, kind
            sock.sendall(ws_frame(client_info()))
            states.append(frames)
        for sock, frames in zip(batch, states, strict=True):
            kind, stream_id, _ = next_wisp(sock, frames)
            assert (kind, stream_id) == (wisp.PacketType.CONTINUE, 0), (kind, stream_id)
        opened += batch
    return opened


def upgrade_status(http: tuple[str, int], source: str, stack: contextlib.ExitStack) -> int:
    """The HTTP status a Wisp v2 upgrade from ``source`` gets; the socket stays in ``stack``."""
    sock = stack.enter_context(open_socket(http, source))
    # A refused connection may be reset before the request is written.
    with contextlib.suppress(OSError):
        sock.sendall(upgrade_request(http, "/", "wisp-v2"))
    status, _ = read_response_head(sock)
    return status


def connections(gateway: GatewayProcess) -> float:
    return metric_sum(metrics(gateway), "netshim_gateway_connections")


@pytest.mark.parametrize("loop", EVENT_LOOPS)
def test_a_thousand_idle_connections(loop: str) -> None:
    with (
        gateway_process(event_loop=loop) as gateway,
        RssWatch(gateway) as watch,
        contextlib.ExitStack() as clients,
    ):
        gateway.assert_serves(source=FRESH)
        started = time.monotonic()
        plan = [source for source in IDLE_SOURCES for _ in range(PER_SOURCE)][:IDLE_CONNECTIONS]
        idle = open_idle_wisp(gateway.http, plan, clients)
        opened_in = time.monotonic() - started
        assert connections(gateway) == len(idle)
        rss = gateway.rss()
        print(
            f"\n[abuse] {len(idle)} idle Wisp v2 connections opened in {opened_in:.1f} s;"
            f" RSS {rss / MiB:.1f} MiB, {(rss - watch.idle) / len(idle) / KiB:.1f} KiB each"
        )
        check_fresh_clients_served(gateway, ABUSE_SECONDS)
        # Held, not dropped, all that time (the fresh clients' own connections
        # may take a moment to be counted out).
        wait_for(lambda: connections(gateway) == len(idle), f"{len(idle)} connections", 3)

        # From one address: connections up to the limit, then HTTP 429 on the upgrade.
        one = IDLE_SOURCES[0]
        more = open_idle_wisp(gateway.http, [one], clients)
        status = upgrade_status(gateway.http, one, clients)
        assert status == 429, f"connection {PER_CLIENT_LIMIT + 1} from {one}: HTTP {status}"
        # The slot comes back once one of them left.
        more[0].close()
        deadline = time.monotonic() + 5
        while (status := upgrade_status(gateway.http, one, clients)) != 101:
            assert status == 429, status
            assert time.monotonic() < deadline, f"{one} still refused after one connection left"
            time.sleep(0.05)
        clients.close()
        wrap_up("4 1000 idle Wisp connections", loop, gateway, watch, IDLE_CONNECTIONS_MEMORY_BOUND)


# -- 5. a departed client's upload budget

DEPARTED_BUDGET = 2 * MiB
STALL_TIMEOUT = 1.0
# Upload-stall timeout (1 s), maybe twice, then the session's CLOSE_WAIT (2 s), and slack.
DEPARTED_DRAIN_SECONDS = 6.0


@pytest.mark.parametrize("loop", EVENT_LOOPS)
def test_departed_client_gives_its_upload_budget_back(loop: str) -> None:
    """A client fills its budget towards sinks that never read, then vanishes (RST).

    Its address is served again at once, and its streams end within a few
    seconds (upload-stall timeout, then the CLOSE_WAIT of its session), while
    the sinks still read nothing.
    """
    with (
        sink_server() as sink,
        gateway_process(
            *allow(sink),
            "--upload-buffer",
            str(DEPARTED_BUDGET),
            "--upload-stall-timeout",
            str(STALL_TIMEOUT),
            event_loop=loop,
        ) as gateway,
        RssWatch(gateway) as watch,
    ):
        gateway.assert_serves(source=ABUSER)
        streams = 4
        sock, _ = wisp_v2_client(gateway.http, ABUSER)
        with sock:
            sock.sendall(
                b"".join(ws_frame(connect_packet(i, sink.address)) for i in range(1, streams + 1))
            )
            wait_for(lambda: sink.connections >= streams, "the streams to connect")
            # 256 KiB packets round the streams, within the 128 credits each (it
            # never reads, so never sees a refill), until the gateway took
            # nothing for 0.3 s: it paused this client's reads.
            frames = [data_frame(i, 256 * KiB) for i in range(1, streams + 1)]
            sock.settimeout(0.05)
            sent, packets, last_progress = 0, 0, time.monotonic()
            view = memoryview(frames[0])
            while time.monotonic() - last_progress < 0.3:
                assert packets < streams * 128, "the gateway never paused this upload"
                try:
                    count = sock.send(view)
                except TimeoutError:
                    continue
                sent += count
                last_progress = time.monotonic()
                view = view[count:]
                if not view:
                    packets += 1
                    view = memoryview(frames[packets % streams])
            print(f"\n[abuse] uploaded {sent / MiB:.1f} MiB before the gateway paused")
            assert sent > DEPARTED_BUDGET, sent
            # While its budget is full, another connection from the same address
            # (it has nothing queued of its own) and a fresh client are served.
            payload = os.urandom(1000)
            assert wisp_echo(gateway.http, gateway.echo, payload, source=ABUSER) == payload
            gateway.assert_serves(source=FRESH)
            reset_on_close(sock)
        # Gone without a goodbye.  A new connection from its address is served at once:
        # sooner than the stall timeout that frees the departed client's budget.
        left = time.monotonic()
        payload = os.urandom(1000)
        assert wisp_echo(gateway.http, gateway.echo, payload, source=ABUSER) == payload
        echoed_in = time.monotonic() - left
        assert echoed_in < STALL_TIMEOUT, f"a new connection from {ABUSER} waited {echoed_in:.2f} s"
        gateway.assert_serves(source=ABUSER)
        # Its streams end within a few seconds, though the sink still reads nothing.
        try:
            wrap_up(
                "5 departed client's budget",
                loop,
                gateway,
                watch,
                MEMORY_BOUND,
                drain_seconds=DEPARTED_DRAIN_SECONDS - (time.monotonic() - left),
            )
        finally:
            stalled = [
                line for line in gateway.log().splitlines() if " upload-stalled protocol=" in line
            ]
            print(
                f"\n[abuse] echo from {ABUSER} {echoed_in * 1000:.0f} ms after it left;"
                f" {len(stalled)} upload-stalled lines in the log"
            )
