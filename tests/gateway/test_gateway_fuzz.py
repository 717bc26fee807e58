"""Fuzzing a real gateway process: one bad request must never take the gateway down.

Part of the issue "Gateway hardening".  Every test here throws seeded,
generated input (hypothesis, derandomized, no example database) at a real
``netshim gateway`` process (:mod:`gateway_process`) from plain blocking
sockets, each with a deadline, so no case can hang:

* malformed HTTP on the HTTP port (garbage, odd request lines, huge and
  repeated headers, pipelined requests, hostile paths);
* WebSocket frames after a valid upgrade, on the Wisp and wsproxy paths
  (reserved bits, bad opcodes, unmasked and oversized frames, fragmented
  control frames, invalid UTF-8, bad close frames);
* Wisp v1 and v2 packets inside valid frames, and malformed v2 handshakes;
* SOCKS5 greetings, logins, requests and UDP datagrams;
* hostile spellings of host names through every path, each of which must be
  refused on the wire (a Wisp ``CLOSE`` with a reason, a SOCKS5 reply with a
  non-zero code, an HTTP error or a WebSocket close frame).

After every case the process must be alive and its wall must have caught
nothing (``internal-error`` log lines are bugs); after every batch a good
Wisp v2, wsproxy and SOCKS5 client must be served; at the end the process
holds no connection or stream and its memory stayed within
:data:`RSS_SLACK` of what it used after a warm-up batch.  Each event loop
the gateway supports gets its own process; the last test of each prints
"N cases, 0 crashes".  ``NETSHIM_FUZZ_SCALE=10`` runs ten times as many
generated cases (the same seed, so the default run's cases come first).

No input may make the gateway leave loopback: a host name that would need a
DNS lookup, or an address off 127.0.0.0/8, is spoilt (a ``/`` appended)
before it is sent (:func:`needs_network`), which is why valid-looking names
only ever appear here in spoilt form.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import os
import re
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Self

import pytest
from gateway_process import GatewayProcess, gateway_process
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from netshim._addresses import normalize_host_name, parse_ip
from netshim.policy import parse_numeric_ipv4
from netshim.protocols import socks5
from netshim.protocols.wisp import CloseReason, PacketType

# The gateway logs each internal error's traceback at DEBUG level; failures
# below print it.
LOG_LEVEL = "DEBUG"
EVENT_LOOPS = ("asyncio", "trio", "uvloop")
# The longest any case waits for the gateway to answer or to close.
TIMEOUT = 5.0
# The gateway's limit for an HTTP request head (netshim.gateway._server).
MAX_REQUEST_SIZE = 32 * 1024
# How much the gateway's resident memory may grow over the fuzzing.
RSS_SLACK = 20 << 20
# The Wisp stream the probe uses; generated packets never name it.
PROBE_STREAM = 0x7EED_0001
# Loopback bind for "X-Forwarded-For" cases: the gateway trusts this proxy.
TRUSTED_PROXY = "127.0.0.2"
USER, PASSWORD = "alice", "s3cret"

# How a Wisp stream to a hostile name may end: refused, never opened.
REFUSAL_REASONS = frozenset(
    {CloseReason.INVALID_INFO, CloseReason.UNREACHABLE, CloseReason.BLOCKED}
)
# A wsproxy upgrade whose destination is refused: no path (400), the policy
# (403), or an invalid name or failed connect (502); or a 101 and close 1011.
WSPROXY_REFUSALS = frozenset({400, 403, 502})
# Statuses the HTTP front may answer a request with (500 would mean websockets'
# handshake caught an exception of ours, 429 a leaked connection slot); 505 is
# an upgrade asked in HTTP/1.0 (RFC 6455 4.1 asks for 1.1; websockets refuses it).
HTTP_STATUSES = frozenset({101, 200, 404, 405, 426, 431, 505, *WSPROXY_REFUSALS})
# Close codes the gateway may send (RFC 6455 7.4.1), besides echoing a client's.
GATEWAY_CLOSE_CODES = frozenset({1000, 1001, 1002, 1007, 1009, 1011, 1013})
VALID_CLOSE_CODES = frozenset(
    {None, 1003, 1005, 1008, 1010, *GATEWAY_CLOSE_CODES, *range(3000, 5000)}
)

# NETSHIM_FUZZ_SCALE=10 runs ten times as many generated cases (a longer soak).
SCALE = max(1, int(os.environ.get("NETSHIM_FUZZ_SCALE", "1")))

# Cases run per event loop, for the summary the last test prints.
CASES: dict[str, int] = {}

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def fuzz(examples: int) -> settings:
    """Seeded, bounded hypothesis settings; no shrinking (the gateway is one process)."""
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        print_blob=False,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )


# -- host names: hostile spellings, and keeping every lookup off the network


def _spaced(count: int, label: int) -> bytes:
    return b".".join([b"a" * label] * count)


HOSTILE_NAMES: tuple[bytes, ...] = (
    b"",
    b" ",
    b"a..b",
    b".a",
    b"a" * 64 + b".example",  # a 64-character label
    _spaced(4, 62) + b".ab",  # 254 characters
    b"a" * 300,
    b"\x00",
    b"a\x00b",
    b"127.0.0.1\x00.example",
    b"a\x01b",
    b"a\x1fb",
    b"a\x7fb",
    b"a\tb",
    b"a\r\nb",
    b"a b",
    b"a/b",
    b"127.0.0.1/8",
    b"user@127.0.0.1",
    b"a@b",
    b"a%b",
    b"127.0.0.1%eth0",
    b"%31%32%37.0.0.1",
    "\uff11\uff12\uff17.\uff10.\uff10.\uff11".encode(),  # 127.0.0.1 in fullwidth digits
    "\uff11\uff12\uff17\u3002\uff10\u3002\uff10\u3002\uff11".encode(),  # ideographic dots
    b"0x7f.1",
    b"0x7f000001",
    b"0177.0.0.1",
    b"127.1",
    b"2130706433",
    b"::ffff:127.0.0.1",
    b"::1",
    b"[::1]",
    b"[::1",
    b"::1]",
    b"[127.0.0.1]",
    b"127.0.0.1:80",
    "a\u0378b".encode(),  # unassigned code point
    "\U000e0001x".encode(),  # disallowed tag character
    "a\u2028b".encode(),  # line separator
    "\ufffd".encode(),
    "\u2488".encode(),  # DIGIT ONE FULL STOP, a compatibility spelling of "1."
    b"\xff\xfe",  # not UTF-8
    b"a\xc0\xafb",  # overlong UTF-8 for "/"
    b"\xed\xa0\x80",  # an encoded surrogate
)


def _is_loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def needs_network(host: str) -> bool:
    """Whether the gateway, asked for ``host``, would ask a resolver or leave loopback.

    The gateway normalises every host name before anything else (and
    refuses it if that fails); then an IP literal or inet_aton spelling is
    checked as that address and anything else goes to ``getaddrinfo``.
    """
    if not host:
        return False  # every front refuses an empty name before the policy sees it
    try:
        name = normalize_host_name(host)
    except Exception:  # refused (or failing) before any lookup, in the gateway too
        return False
    ip = parse_ip(name) or parse_numeric_ipv4(name)
    return ip is None or not _is_loopback(ip)


def spoil(host: bytes, decode: Callable[[bytes], str]) -> bytes:
    """``host`` unchanged if the gateway would keep it on loopback, else made invalid."""
    try:
        text = decode(host)
    except UnicodeDecodeError:
        return host
    if not needs_network(text):
        return host
    spoilt = host + b"/"
    return spoilt if not needs_network(decode(spoilt)) else b"/"


def wisp_host(raw: bytes) -> str:
    """The host the gateway's Wisp core makes of a CONNECT's bytes."""
    return raw.decode("utf-8").strip()


def socks_host(raw: bytes) -> str:
    return raw.decode("ascii")


def wsproxy_host(path: bytes) -> str | None:
    """The destination host a WebSocket upgrade on ``path`` names, as the gateway reads it."""
    try:
        parsed = urllib.parse.urlsplit(path.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if parsed.path.endswith("/"):
        return None
    last = urllib.parse.unquote(parsed.path.rsplit("/", 1)[-1])
    host, sep, port = last.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not host:
        return None
    return host.strip("[]")


def spoil_path(path: bytes) -> bytes:
    host = wsproxy_host(path)
    return path + b"/" if host is not None and needs_network(host) else path


def spoil_request(data: bytes) -> bytes:
    """``data`` with its request line's path spoilt if an upgrade on it would leave loopback."""
    line, sep, rest = data.partition(b"\r\n")
    parts = line.split(b" ", 2)
    if not sep or len(parts) != 3 or spoil_path(parts[1]) == parts[1]:
        return data
    return b" ".join([parts[0], spoil_path(parts[1]), parts[2]]) + sep + rest


def spoil_wisp_packet(message: bytes) -> bytes:
    """A Wisp packet that CONNECTs nowhere off loopback (other packets pass unchanged)."""
    if len(message) < 8 or message[0] != PacketType.CONNECT:
        return message
    host = spoil(message[8:], wisp_host)
    return message[:8] + host


def socks_request_in(data: bytes) -> socks5.Request | None:
    """The SOCKS5 request the gateway (no login required) would read from ``data``."""
    conn = socks5.Socks5Connection(socks5.Role.SERVER)
    conn.receive_data(data)
    try:
        greeting = conn.next_event()
        if not isinstance(greeting, socks5.Greeting) or 0 not in greeting.methods:
            return None
        conn.send(socks5.MethodChoice(socks5.AuthMethod.NO_AUTHENTICATION))
        request = conn.next_event()
    except Exception:
        return None
    return request if isinstance(request, socks5.Request) else None


def socks_data_stays_local(data: bytes) -> bool:
    request = socks_request_in(data)
    if request is None or request.command is not socks5.Command.CONNECT:
        return True
    return not needs_network(request.host)


# -- the gateway under test


@dataclass
class Target:
    """A gateway process and what the cases need to know about it."""

    loop: str
    process: GatewayProcess
    udp_echo: tuple[str, int]
    baseline_rss: int = 0
    log_offset: int = 0
    cases: int = 0
    recent: list[str] = field(default_factory=list)
    # Failures already reported, by case: hypothesis replays a failing case
    # and must see the same failure again.
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def http(self) -> tuple[str, int]:
        return self.process.http

    @property
    def socks(self) -> tuple[str, int]:
        return self.process.socks

    @property
    def echo(self) -> tuple[str, int]:
        return self.process.echo

    def case(self, description: str) -> str:
        self.cases += 1
        CASES[self.loop] = CASES.get(self.loop, 0) + 1
        self.recent = [*self.recent[-1:], description]
        return description

    def check(self, case: str = "") -> None:
        """The process lives, and its wall caught nothing since the last check."""
        if case and case in self.failures:
            raise AssertionError(self.failures[case])
        if not self.process.alive():
            raise AssertionError(
                f"the gateway died after {self.recent!r}:\n{self.process.log()[-6000:]}"
            )
        with self.process.log_path.open("rb") as log:
            log.seek(self.log_offset)
            new = log.read()
        complete = new.rfind(b"\n") + 1
        self.log_offset += complete
        text = new[:complete].decode(errors="replace")
        if "internal-error" in text:
            message = (
                "the gateway's wall caught an exception during or right after one of "
                f"{self.recent!r}:\n{internal_error_report(text)}"
            )
            if case:
                self.failures[case] = message
            raise AssertionError(message)

    def checkpoint(self) -> None:
        """After a batch: alive, nothing caught, and a good client of each kind is served."""
        self.check()
        self.process.assert_serves()


_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


def internal_error_report(log: str) -> str:
    """Every internal-error line of ``log`` with the traceback logged right behind it."""
    lines = log.splitlines()
    report: list[str] = []
    for index, line in enumerate(lines):
        if "internal-error" not in line:
            continue
        report.append(line)
        for follow in lines[index + 1 : index + 80]:
            if _LOG_LINE.match(follow) and "traceback of the internal error" not in follow:
                break
            report.append("    " + follow)
    return "\n".join(report)


@contextlib.contextmanager
def udp_echo_server() -> Iterator[tuple[str, int]]:
    """Echoes every datagram to its sender, from a thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, source = sock.recvfrom(65536)
                sock.sendto(data, source)
            except TimeoutError:
                continue
            except OSError:
                if stop.is_set():
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[:2]
    finally:
        stop.set()
        thread.join(5)
        sock.close()


PER_ADDRESS_ROOM = ("--max-connections-per-client", "1024")


@pytest.fixture(scope="module", params=EVENT_LOOPS)
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    loop = str(request.param)
    with (
        udp_echo_server() as udp,
        gateway_process(
            "--allow",
            f"{udp[0]}:{udp[1]}",
            "--trusted-proxy",
            f"{TRUSTED_PROXY}/32",
            "--log-level",
            LOG_LEVEL,
            # Thousands of cases connect from one address one after another; on
            # a loaded machine the gateway closes earlier cases' connections
            # later than new ones arrive, and the per-address limit (tested by
            # the limits and abuse suites) would answer 429 to a valid case.
            *PER_ADDRESS_ROOM,
            event_loop=loop,
        ) as process,
    ):
        gateway = Target(loop, process, udp)
        warm_up(gateway)
        gateway.baseline_rss = process.rss()
        yield gateway


# -- a client connection whose every wait has one deadline


class Peer:
    """One TCP connection to the gateway; reads fail the test past :data:`TIMEOUT`."""

    def __init__(self, address: tuple[str, int], source: str = "127.0.0.1") -> None:
        self.deadline = time.monotonic() + TIMEOUT
        self.sock = socket.create_connection(address, timeout=TIMEOUT, source_address=(source, 0))
        # Small writes in a row would otherwise wait for delayed ACKs (Nagle).
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()
        self.eof = False
        self.reset = False
        self.close_code: int | None = None
        self.frames_after_close: list[Frame] = []
        self.frames: list[Frame] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        """Send ``data``; the gateway may already have answered and closed."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self.reset = True

    def half_close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def fill(self) -> bool:
        """Read what the gateway sent next; ``False`` once it closed."""
        if self.eof:
            return False
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"the gateway kept the connection open past {TIMEOUT}s")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(1 << 16)
        except TimeoutError:
            raise AssertionError(
                f"the gateway neither answered nor closed within {TIMEOUT}s; "
                f"it sent {bytes(self.buffer[:200])!r}"
            ) from None
        except ConnectionResetError:
            self.reset = True
            data = b""
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    def read_all(self) -> bytes:
        while self.fill():
            pass
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def read_exactly(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            if not self.fill():
                return None
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def still_open(self) -> bool:
        """Whether the gateway has neither closed nor sent anything (no waiting)."""
        self.sock.setblocking(False)
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            self.sock.settimeout(TIMEOUT)
        return False

    # -- HTTP

    def read_response(self) -> HttpResponse | None:
        """The HTTP response head, or ``None`` if the gateway closed without one."""
        while b"\r\n\r\n" not in self.buffer:
            if not self.fill():
                break
        if not self.buffer:
            return None
        end = self.buffer.find(b"\r\n\r\n")
        assert end >= 0, f"a truncated HTTP response: {bytes(self.buffer[:300])!r}"
        head = bytes(self.buffer[: end + 4])
        del self.buffer[: end + 4]
        match = _STATUS_LINE.match(head)
        assert match, f"not an HTTP/1.1 response: {head[:300]!r}"
        length = re.search(rb"\r\ncontent-length: *(\d+)\r\n", head, re.IGNORECASE)
        return HttpResponse(int(match[1]), head, int(length[1]) if length else None)

    # -- WebSocket

    def upgrade(self, path: bytes, subprotocol: str | None = None) -> None:
        self.send(upgrade_request(self.sock.getpeername()[1], path, subprotocol))
        response = self.read_response()
        assert response is not None, f"no answer to a valid upgrade on {path!r}"
        assert response.status == 101, f"upgrade on {path!r} answered {response.head[:300]!r}"

    def send_binary(self, payload: bytes) -> None:
        self.send(client_frame(OP_BINARY, payload))

    def next_frame(self) -> Frame | None:
        """The gateway's next frame (checked to be valid), or ``None`` once it closed."""
        while True:
            frame = take_server_frame(self.buffer)
            if frame is not None:
                self.frames.append(frame)
                if self.close_code is not None:
                    self.frames_after_close.append(frame)
                elif frame.opcode == OP_CLOSE:
                    self.close_code = close_code(frame.payload)
                return frame
            if not self.fill():
                assert not self.buffer, f"the connection ended inside a frame: {self.buffer[:40]!r}"
                return None

    def next_message(self) -> bytes | None:
        """The next binary message, or ``None`` once the gateway sent its close frame or closed."""
        parts: list[bytes] = []
        while True:
            if self.close_code is not None:
                return None
            frame = self.next_frame()
            if frame is None or frame.opcode == OP_CLOSE:
                return None
            if frame.opcode in (OP_PING, OP_PONG):
                continue
            assert frame.opcode != OP_TEXT, "the gateway sent a text message"
            assert (frame.opcode == OP_CONT) == bool(parts), f"bad fragmentation: {frame}"
            parts.append(frame.payload)
            if frame.fin:
                return b"".join(parts)

    def finish(self) -> list[Frame]:
        """Half-close, then every frame until the gateway closes; nothing may follow its close."""
        self.half_close()
        frames: list[Frame] = []
        while (frame := self.next_frame()) is not None:
            frames.append(frame)
        assert not self.frames_after_close, f"frames after the close: {self.frames_after_close}"
        return frames


@dataclass
class HttpResponse:
    status: int
    head: bytes
    content_length: int | None


_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")


@dataclass
class Frame:
    fin: bool
    opcode: int
    payload: bytes

    def __repr__(self) -> str:
        fin = "" if self.fin else " (not final)"
        return f"<frame opcode={self.opcode}{fin} {self.payload[:40]!r}>"


def take_server_frame(buffer: bytearray) -> Frame | None:
    """Take one whole frame off ``buffer`` (``None`` if incomplete), asserting RFC 6455."""
    if len(buffer) < 2:
        return None
    first, second = buffer[0], buffer[1]
    start = bytes(buffer[:16])
    assert not first & 0x70, f"the gateway set reserved bits: {start!r}"
    assert not second & 0x80, f"the gateway masked a frame: {start!r}"
    opcode = first & 0x0F
    assert opcode in (OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG), start
    length, offset = second & 0x7F, 2
    if length == 126:
        if len(buffer) < 4:
            return None
        (length,), offset = struct.unpack_from("!H", buffer, 2), 4
    elif length == 127:
        if len(buffer) < 10:
            return None
        (length,), offset = struct.unpack_from("!Q", buffer, 2), 10
    if opcode >= OP_CLOSE:
        assert first & 0x80, f"a fragmented control frame from the gateway: {start!r}"
        assert length <= 125, f"a long control frame from the gateway: {start!r}"
    if len(buffer) < offset + length:
        return None
    frame = Frame(bool(first & 0x80), opcode, bytes(buffer[offset : offset + length]))
    del buffer[: offset + length]
    return frame


def close_code(payload: bytes) -> int:
    """The code of a close frame from the gateway (1005: none), checked to be well-formed."""
    if not payload:
        return 1005
    assert len(payload) >= 2, f"a close frame of one byte: {payload!r}"
    payload[2:].decode("utf-8")  # the reason must be UTF-8
    code: int = struct.unpack_from("!H", payload)[0]
    return code


def _mask(data: bytes, key: bytes) -> bytes:
    if not data:
        return b""
    stream = (key * (len(data) // 4 + 1))[: len(data)]
    masked = int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")
    return masked.to_bytes(len(data), "big")


def client_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
) -> bytes:
    """One frame as a client sends it; ``length`` claims another payload length than sent."""
    size = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0x0F)
    bit = 0x80 if masked else 0
    if size < 126:
        header = bytes([first, bit | size])
    elif size < 1 << 16:
        header = bytes([first, bit | 126]) + struct.pack("!H", size)
    else:
        header = bytes([first, bit | 127]) + struct.pack("!Q", size)
    if not masked:
        return header + payload
    key = os.urandom(4)
    return header + key + _mask(payload, key)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def upgrade_request(
    port: int, path: bytes, subprotocol: str | None = None, extra: Sequence[bytes] = ()
) -> bytes:
    lines = [
        b"GET " + path + b" HTTP/1.1",
        b"Host: 127.0.0.1:%d" % port,
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)),
        b"Sec-WebSocket-Version: 13",
    ]
    if subprotocol is not None:
        lines.append(b"Sec-WebSocket-Protocol: " + subprotocol.encode())
    return b"\r\n".join([*lines, *extra, b"", b""])


# -- Wisp


def packet(kind: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack("<BI", kind, stream_id) + payload


def connect_packet(stream_id: int, host: bytes, port: int, stream_type: int = 1) -> bytes:
    return packet(PacketType.CONNECT, stream_id, struct.pack("<BH", stream_type, port) + host)


def extension(ext_id: int, payload: bytes = b"") -> bytes:
    return struct.pack("<BI", ext_id, len(payload)) + payload


# Version 2.0 with the UDP extension.
CLIENT_INFO = packet(PacketType.INFO, 0, bytes([2, 0]) + extension(1))


def server_packet(message: bytes) -> tuple[int, int, bytes]:
    """``(type, stream id, payload)`` of a Wisp packet from the gateway, checked to be valid."""
    assert len(message) >= 5, f"a Wisp packet of {len(message)} bytes from the gateway"
    kind, stream_id = struct.unpack_from("<BI", message)
    payload = message[5:]
    if kind == PacketType.CLOSE:
        assert len(payload) == 1, f"a CLOSE with payload {payload!r}"
    elif kind == PacketType.CONTINUE:
        assert len(payload) == 4, f"a CONTINUE with payload {payload!r}"
    elif kind == PacketType.DATA:
        assert stream_id != 0, "DATA on stream 0 from the gateway"
    else:
        raise AssertionError(f"the gateway sent a Wisp packet of type {kind}: {message[:40]!r}")
    return kind, stream_id, payload


def expect_server_info(peer: Peer) -> None:
    """The gateway's first Wisp v2 message is its INFO on stream 0."""
    first = peer.next_message()
    assert first is not None, f"no INFO; close code {peer.close_code}"
    assert first[:5] == packet(PacketType.INFO, 0), first


@contextlib.contextmanager
def wisp_session(
    gateway: Target, version: int, info: bytes = CLIENT_INFO, source: str = "127.0.0.1"
) -> Iterator[Peer]:
    """An open Wisp session: upgraded, handshake done (the server's ``CONTINUE`` on stream 0)."""
    with Peer(gateway.http, source) as peer:
        peer.upgrade(b"/", "wisp-v2" if version == 2 else None)
        if version == 2:
            expect_server_info(peer)
            peer.send_binary(info)
        message = peer.next_message()
        assert message is not None, f"no CONTINUE; close code {peer.close_code}"
        assert message[:5] == packet(PacketType.CONTINUE, 0), message
        yield peer


def probe(peer: Peer, gateway: Target, *, ended: bool = False) -> None:
    """A new stream to the echo destination still echoes (unless the client ``ended`` it all)."""
    token = os.urandom(16)
    peer.send_binary(connect_packet(PROBE_STREAM, b"127.0.0.1", gateway.echo[1]))
    peer.send_binary(packet(PacketType.DATA, PROBE_STREAM, token))
    received = b""
    while token not in received:
        message = peer.next_message()
        if message is None:
            assert ended, f"the gateway ended the Wisp session (close code {peer.close_code})"
            return
        kind, stream_id, payload = server_packet(message)
        if stream_id == PROBE_STREAM:
            assert kind != PacketType.CLOSE, f"the probe stream was closed: {payload!r}"
            if kind == PacketType.DATA:
                received += payload
        elif stream_id == 0 and kind == PacketType.CLOSE:
            assert ended, f"the gateway closed the Wisp session: {payload!r}"
            return
    assert received == token, received


# -- SOCKS5


def socks_reply(peer: Peer) -> tuple[int, bytes] | None:
    """The reply code and bound address of a SOCKS5 reply, or ``None`` if the gateway closed."""
    head = peer.read_exactly(4)
    if head is None:
        assert not peer.buffer, f"a truncated SOCKS5 reply: {bytes(peer.buffer)!r}"
        return None
    assert head[0] == 5, f"a malformed SOCKS5 reply: {head!r}"
    assert head[2] == 0, f"a malformed SOCKS5 reply: {head!r}"
    size = {1: 4, 4: 16}.get(head[3])
    assert size is not None, f"a SOCKS5 reply with address type {head[3]}"
    rest = peer.read_exactly(size + 2)
    assert rest is not None, f"a truncated SOCKS5 reply: {head!r}"
    return head[1], rest


def socks_address(atyp: int, address: bytes, port: int) -> bytes:
    if atyp == 3:
        return bytes([3, len(address) & 0xFF]) + address + struct.pack("!H", port)
    return bytes([atyp]) + address + struct.pack("!H", port)


def udp_header(atyp: int, address: bytes, port: int, fragment: int = 0) -> bytes:
    return b"\x00\x00" + bytes([fragment]) + socks_address(atyp, address, port)


def spoil_ip(atyp: int, address: bytes) -> bytes:
    """An IPv4 or IPv6 address moved onto loopback unless it is there already."""
    if atyp == 1 and len(address) == 4:
        return address if address[0] == 127 else b"\x7f" + address[1:]
    if atyp == 4 and len(address) == 16:
        ip = ipaddress.IPv6Address(address)
        return address if _is_loopback(ip) else bytes(15) + b"\x01"
    return address


# -- the cases (each opens its own connection; warm_up calls them directly too)


def http_case(gateway: Target, data: bytes, source: str = "127.0.0.1") -> None:
    """Any bytes on the HTTP port: at most one well-formed answer, then the connection ends."""
    case = gateway.case(f"http {source} {data[:2000]!r}")
    assert spoil_request(data) == data, f"test bug: {data[:200]!r} would leave loopback"
    with Peer(gateway.http, source) as peer:
        peer.send(data)
        peer.half_close()
        response = peer.read_response()
        end = data.find(b"\r\n\r\n")
        complete = 0 <= end <= MAX_REQUEST_SIZE - 4
        if response is None:
            assert not complete or peer.reset, "a complete request head got no answer"
            assert not (len(data) > MAX_REQUEST_SIZE and not peer.reset), "no 431"
        else:
            assert response.status in HTTP_STATUSES, response.head[:500]
            if response.status == 101:
                peer.finish()
            else:
                rest = peer.read_all()
                assert response.content_length is not None, response.head
                assert len(rest) == response.content_length, (
                    f"more than one answer, or a wrong length: {response.head!r} + {rest[:300]!r}"
                )
    gateway.check(case)


def frames_case(gateway: Target, path: str, frames: Sequence[bytes]) -> Peer:
    """Frames after a valid upgrade: the gateway answers in valid frames and then closes."""
    case = gateway.case(f"frames {path} {frames!r}")
    subprotocol = {"wisp-v2": "wisp-v2", "wsproxy": "binary"}.get(path)
    where = f"/{gateway.echo[0]}:{gateway.echo[1]}" if path == "wsproxy" else "/"
    with Peer(gateway.http) as peer:
        peer.upgrade(where.encode(), subprotocol)
        for frame in frames:
            peer.send(frame)
        peer.finish()
        # The gateway's own codes, or the echo of a client's close (1005: it had no code).
        assert peer.close_code in VALID_CLOSE_CODES, f"close code {peer.close_code}"
    gateway.check(case)
    return peer


def wisp_case(gateway: Target, version: int, packets: Sequence[bytes]) -> None:
    """Wisp packets in valid frames: only their streams suffer; a new stream still echoes."""
    case = gateway.case(f"wisp v{version} {packets!r}")
    ended = any(p[:5] == packet(PacketType.CLOSE, 0) for p in packets)
    with wisp_session(gateway, version) as peer:
        for message in packets:
            peer.send_binary(message)
        probe(peer, gateway, ended=ended)
    gateway.check(case)


def socks_case(gateway: Target, data: bytes, expected: SocksExpectation | None = None) -> None:
    """Bytes on the SOCKS5 port: a method choice and a reply as RFC 1928 says, then the end."""
    case = gateway.case(f"socks5 {data!r}")
    assert socks_data_stays_local(data), f"test bug: {data!r} would leave loopback"
    with Peer(gateway.socks) as peer:
        peer.send(data)
        peer.half_close()
        choice = peer.read_exactly(2)
        if expected is not None:
            assert choice == expected.choice, f"method choice {choice!r}, not {expected.choice!r}"
        if choice is None:
            assert not peer.buffer or peer.reset, f"a truncated answer: {bytes(peer.buffer)!r}"
        else:
            assert choice[0] == 5, f"not a SOCKS5 method choice: {choice!r}"
            reply = socks_reply(peer) if choice[1] == 0 else None
            if expected is not None and expected.codes is not None:
                code = None if reply is None else reply[0]
                assert code in expected.codes or (code is None and not expected.codes), (
                    f"reply {code}, expected one of {sorted(expected.codes)}"
                )
            if reply is None or reply[0] != 0:
                rest = peer.read_all()
                assert not rest, f"bytes after a refusal: {rest!r}"
            else:
                peer.read_all()  # a relay to the echo or an association; both end with ours
    gateway.check(case)


def socks_udp_case(gateway: Target, datagrams: Sequence[bytes]) -> None:
    """Datagrams to a UDP association's relay: bad ones are dropped, a good one is relayed."""
    case = gateway.case(f"socks5-udp {datagrams!r}")
    with (
        Peer(gateway.socks) as control,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
    ):
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(TIMEOUT)
        control.send(b"\x05\x01\x00")
        assert control.read_exactly(2) == b"\x05\x00"
        host, port = udp.getsockname()[:2]
        control.send(b"\x05\x03\x00" + socks5.encode_address(host, port))
        reply = socks_reply(control)
        assert reply is not None, "no reply to UDP ASSOCIATE"
        assert reply[0] == 0, reply
        relay = (str(ipaddress.IPv4Address(reply[1][:4])), struct.unpack("!H", reply[1][4:])[0])
        for datagram in datagrams:
            udp.sendto(datagram, relay)
        token = os.urandom(16)
        echo_ip, echo_port = gateway.udp_echo
        udp.sendto(udp_header(1, socket.inet_aton(echo_ip), echo_port) + token, relay)
        while True:
            try:
                data, source = udp.recvfrom(65536)
            except TimeoutError:
                raise AssertionError(
                    "a good datagram behind the bad ones was not relayed"
                ) from None
            assert source[:2] == relay, source
            answer = socks5.UdpDatagram.parse(data)
            # Only the echo destination answers (also to generated datagrams sent there).
            assert (answer.host, answer.port) == gateway.udp_echo, answer
            if answer.data == token:
                break
        assert control.still_open(), "the association's control connection was closed"
    gateway.check(case)


def warm_up(gateway: Target) -> None:
    """One batch of each kind, so that the memory baseline includes every code path's first use."""
    for _ in range(3):
        gateway.process.assert_serves()
    http_case(gateway, b"GET /healthz HTTP/1.1\r\n\r\n" * 2)
    http_case(gateway, b"\x16\x03\x01\x00\xa5garbage\r\n\r\n")
    http_case(gateway, b"GET /metrics HTTP/1.1\r\nX-Real-IP: 10.1.1.1\r\n\r\n", TRUSTED_PROXY)
    for path in ("wisp-v1", "wisp-v2", "wsproxy"):
        frames_case(gateway, path, [client_frame(OP_PING, b"x"), client_frame(5, b"bad")])
    for version in (1, 2):
        wisp_case(
            gateway,
            version,
            [connect_packet(1, b"a..b", 80), packet(PacketType.DATA, 1, b"x"), b"\x09"],
        )
    socks_case(gateway, b"\x05\x01\x00\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50")
    socks_udp_case(gateway, [b"\x00\x00\x00\x03\x00\x00\x50"])
    gateway.checkpoint()


# -- 1. malformed HTTP


REQUEST_PATHS: tuple[bytes, ...] = (
    b"/",
    b"/healthz",
    b"/metrics",
    b"/" + urllib.parse.quote("\uff11\uff12\uff17.\uff10.\uff10.\uff11").encode() + b":7777",
    b"/a..b:7004",
    b"/%ff%fe%00:7004",
    b"/" + b"a" * 64 + b".example:7004",
    b"/" + b"a" * 300 + b":7004",
    b"/" + b"a." * 140 + b"a:7004",
    b"/[::1",
    b"/[::1]:7004",
    b"/[::1]:7004/",
    b"/host:%C2%B2",
    b"/host:\xc2\xb2",
    b"/\xef\xbc\x91:80",
    b"/127.0.0.1:0",
    b"/127.0.0.1:65536",
    b"/127.0.0.1:99999999999999999999999",
    b"/127.0.0.1:-1",
    b"/127.0.0.1:+80",
    b"/127.0.0.1:0x50",
    b"/127.0.0.1:",
    b"/:7004",
    b"/%3A7004",
    b"/%00:7004",
    b"/%2e%2e%2f%2e%2e:7004",
    b"/a/b/127.0.0.1:7004/",
    b"/127.0.0.1%3A7004",
    b"/?token=%ff%fe",
    b"/127.0.0.1:7004?token=&token=%00",
    b"/127.0.0.1:7004#frag",
    b"/%",
    b"/%zz:80",
    b"//",
    b"*",
    b"",
    b"http://[::1/",
    b"http://127.0.0.1:7004/x:1",
    b"/\x00",
    b"/a\x7fb:80",
    b"/" + b"x" * 4000,
)
METHODS = (b"GET", b"GET", b"GET", b"POST", b"get", b"HEAD", b"CONNECT", b"G\x00T", b"", b"\xff")
VERSIONS = (b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 x", b"", b"http/1.1")
HEADER_LINES: tuple[bytes, ...] = (
    b"Upgrade: websocket",
    b"Upgrade: websocket",
    b"Upgrade: h2c",
    b"Upgrade: WebSocket, foo",
    b"Connection: Upgrade",
    b"Connection: keep-alive, Upgrade",
    b"Connection: close",
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    b"Sec-WebSocket-Key: !!!",
    b"Sec-WebSocket-Version: 13",
    b"Sec-WebSocket-Version: 13",
    b"Sec-WebSocket-Version: 8",
    b"Sec-WebSocket-Protocol: wisp-v2",
    b"Sec-WebSocket-Protocol: binary",
    b"Sec-WebSocket-Protocol: , ,,",
    b"Sec-WebSocket-Protocol: \xff\xfe",
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=99",
    b"Host: 127.0.0.1",
    b"Host: \xef\xbc\x91",
    b"X-Real-IP: 127.0.0.9",
    b"X-Real-IP: 10.0.0.1",
    b"X-Real-IP: ::ffff:127.0.0.1",
    b"X-Real-IP: garbage",
    b"X-Real-IP: fe80::1%eth0",
    b"X-Forwarded-For: 127.0.0.2, 10.1.2.3",
    b"X-Forwarded-For: , ,",
    b"X-Forwarded-For: 999.1.1.1",
    b"X-Forwarded-For: " + b"1.1.1.1, " * 200,
    b"Authorization: Basic !!!",
    b"Authorization: Basic " + base64.b64encode(b"\xff:\xfe"),
    b"Content-Length: 5",
    b"Content-Length: 0",
    b"Transfer-Encoding: chunked",
    b"no colon here",
    b": empty name",
    b"Bad Name: x",
    b" folded: continuation",
    b"X-Nul: a\x00b",
    b"X-Big: " + b"b" * 9000,
)


@st.composite
def http_requests(draw: st.DrawFn, paths: Sequence[bytes]) -> bytes:
    """A request built from odd parts, with whatever follows its head."""
    method = draw(st.sampled_from(METHODS))
    path = draw(st.sampled_from([*REQUEST_PATHS, *paths]) | st.binary(min_size=1, max_size=40))
    path = spoil_path(path)
    version = draw(st.sampled_from(VERSIONS))
    headers = draw(st.lists(st.sampled_from(HEADER_LINES), max_size=8))
    eol = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r"]))
    head = eol.join([method + b" " + path + b" " + version, *headers, b"", b""])
    if draw(st.integers(0, 9)) == 0:
        head = head.replace(eol, b"\r\nX-Pad: " + b"p" * 4000 + eol, 10)
    tail = draw(
        st.sampled_from(
            [
                b"",
                b"GET /healthz HTTP/1.1\r\n\r\n",
                client_frame(OP_PING, b"early"),
                client_frame(OP_BINARY, b"\x09garbage"),
            ]
        )
        | st.binary(max_size=40)
    )
    return head + tail


def test_malformed_http(target: Target) -> None:
    """Odd requests, random bytes and mutated good requests on the HTTP port."""
    good = upgrade_request(target.http[1], b"/", "wisp-v2")
    # The allowed destinations: the wsproxy path connects before it upgrades.
    echo = b"/%s:%d" % (target.echo[0].encode(), target.echo[1])
    paths = [echo, echo + b"?token=x", b"/%5B" + echo[1:] + b"%5D", echo.replace(b".", b"%2E")]

    @fuzz(500)
    @given(
        data=(
            http_requests(paths)
            | st.binary(max_size=200)
            | st.builds(
                lambda cut, junk: good[:cut] + junk + good[cut:],
                st.integers(0, len(good)),
                st.binary(max_size=8),
            )
        ).map(spoil_request),
        source=st.sampled_from(["127.0.0.1", "127.0.0.1", TRUSTED_PROXY]),
    )
    def run(data: bytes, source: str) -> None:
        http_case(target, data, source)

    run()
    target.checkpoint()


def test_huge_and_pipelined_http(target: Target) -> None:
    """A head over the limit gets 431; pipelined requests get one answer, then the end."""
    healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    cases = [
        healthz * 2,
        healthz + b"GET /metrics HTTP/1.1\r\n\r\n",
        healthz + upgrade_request(target.http[1], b"/"),
        b"GARBAGE\r\n\r\n" + healthz,
        healthz * 50,
    ]
    for data in cases:
        case = target.case(f"pipelined {data[:100]!r}")
        with Peer(target.http) as peer:
            peer.send(data)
            response = peer.read_response()
            assert response is not None, data
            assert response.status in (200, 400), response.head
            rest = peer.read_all()
            assert len(rest) == response.content_length, f"a second answer: {rest[:300]!r}"
            assert b"HTTP/1.1" not in rest
        target.check(case)
    for data in (
        b"GET / HTTP/1.1\r\nX-Big: " + b"b" * (MAX_REQUEST_SIZE + 10) + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"X-Many: header\r\n" * 3000 + b"\r\n",
        b"GET /" + b"p" * (MAX_REQUEST_SIZE + 10) + b" HTTP/1.1\r\n\r\n",
    ):
        case = target.case(f"huge {len(data)} bytes")
        with Peer(target.http) as peer:
            peer.send(data)
            response = peer.read_response()
            assert response is not None or peer.reset, "no answer to a huge head"
            if response is not None:
                assert response.status == 431, response.head
        target.check(case)
    target.checkpoint()


def test_hostile_paths(target: Target) -> None:
    """Odd paths as plain GETs (404) and as upgrades (400, or a WebSocket closed with an error)."""
    for raw in REQUEST_PATHS:
        path = spoil_path(raw)
        for upgrade in (False, True):
            case = target.case(f"path {path!r} upgrade={upgrade}")
            with Peer(target.http) as peer:
                if upgrade:
                    peer.send(upgrade_request(target.http[1], path, "binary"))
                else:
                    peer.send(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                peer.half_close()
                response = peer.read_response()
                assert response is not None, f"no answer for {path!r}"
                try:
                    parsed = urllib.parse.urlsplit(path.decode("ascii"))
                except (UnicodeDecodeError, ValueError):
                    # Not ASCII (RFC 3986), or no URL at all.
                    assert response.status == 400, (path, response.head)
                else:
                    if not upgrade:
                        known = parsed.path in ("/healthz", "/metrics")
                        assert response.status == (200 if known else 404), (path, response.head)
                    elif response.status != 101:
                        assert response.status in WSPROXY_REFUSALS, (path, response.head)
                        assert not parsed.path.endswith("/"), "a Wisp upgrade was refused"
                    else:
                        frames = peer.finish()
                        if not parsed.path.endswith("/"):
                            # wsproxy: refused by the policy, never connected.
                            assert [f.opcode for f in frames] == [OP_CLOSE], (path, frames)
                            assert peer.close_code == 1011, (path, peer.close_code)
            target.check(case)
    target.checkpoint()


# -- 2. WebSocket frames


@dataclass(frozen=True)
class Violation:
    name: str
    frames: tuple[bytes, ...]
    codes: frozenset[int]


def violation(name: str, frames: Sequence[bytes], *codes: int) -> Violation:
    return Violation(name, tuple(frames), frozenset(codes))


def violations() -> list[Violation]:
    """One broken rule of RFC 6455 each, with the close codes the rule calls for."""
    frame = client_frame
    found = [
        violation("rsv1 on binary", [frame(OP_BINARY, b"\x02x", rsv=4)], 1002),
        violation("rsv3 on ping", [frame(OP_PING, b"x", rsv=1)], 1002),
        violation("unmasked binary", [frame(OP_BINARY, b"\x02x", masked=False)], 1002),
        violation("unmasked close", [frame(OP_CLOSE, masked=False)], 1002),
        violation("fragmented ping", [frame(OP_PING, b"x", fin=False)], 1002),
        violation("fragmented close", [frame(OP_CLOSE, fin=False)], 1002),
        violation("long ping", [frame(OP_PING, b"p" * 126)], 1002),
        violation("long close", [frame(OP_CLOSE, close_payload(1000, b"r" * 124))], 1002),
        violation("1 MiB + 1", [frame(OP_BINARY, length=(1 << 20) + 1)], 1009),
        violation("2**32", [frame(OP_BINARY, length=1 << 32)], 1009),
        violation("2**63-1", [frame(OP_BINARY, length=(1 << 63) - 1)], 1009),
        violation("2**64-1", [frame(OP_BINARY, length=(1 << 64) - 1)], 1002, 1009),
        violation("bad UTF-8 text", [frame(OP_TEXT, b"ok \xff\xfe")], 1007),
        violation("surrogate text", [frame(OP_TEXT, b"\xed\xa0\x80")], 1007),
        violation(
            "bad UTF-8 across fragments",
            [frame(OP_TEXT, b"ab\xc3", fin=False), frame(OP_CONT, b"\x28")],
            1007,
        ),
        violation("lone continuation", [frame(OP_CONT, b"\x02x")], 1002),
        violation(
            "new message inside a fragmented one",
            [frame(OP_BINARY, b"\x02a", fin=False), frame(OP_BINARY, b"\x02b")],
            1002,
        ),
        violation("1-byte close", [frame(OP_CLOSE, b"\x03")], 1002),
        violation("close with bad UTF-8", [frame(OP_CLOSE, close_payload(1000, b"\xff"))], 1007),
    ]
    found += [
        violation(f"opcode {op}", [frame(op, b"\x02x")], 1002)
        for op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15)
    ]
    found += [
        violation(f"close code {code}", [frame(OP_CLOSE, close_payload(code))], 1002)
        for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535)
    ]
    found += [
        violation(
            f"good close {code}",
            [frame(OP_CLOSE, close_payload(code, "bye \u00e9".encode()))],
            code,
        )
        for code in (1000, 1001, 3000, 4999)
    ]
    return found


VIOLATIONS = violations()


def test_websocket_protocol_violations(target: Target) -> None:
    """Each RFC 6455 violation, behind valid frames and before junk, closes with its code."""

    @fuzz(200)
    @given(
        path=st.sampled_from(["wisp-v1", "wsproxy"]),
        violation=st.sampled_from(VIOLATIONS),
        pings=st.lists(st.binary(max_size=125), max_size=3),
        junk=st.binary(max_size=64),
    )
    def run(path: str, violation: Violation, pings: list[bytes], junk: bytes) -> None:
        frames = [client_frame(OP_PING, p) for p in pings]
        if path == "wsproxy":
            frames.append(client_frame(OP_BINARY, b"before"))
        peer = frames_case(target, path, [*frames, *violation.frames, junk])
        assert peer.close_code in violation.codes, (
            f"{violation.name}: close code {peer.close_code}, expected {sorted(violation.codes)}; "
            f"the gateway sent {peer.frames} and {'reset' if peer.reset else 'closed'}"
        )

    run()
    target.checkpoint()


@st.composite
def random_frames(draw: st.DrawFn, wisp: bool) -> list[bytes]:
    """Frames with random opcodes, flags, masks and lengths.

    On a Wisp path every data frame carries at least one byte and none starts
    with CONNECT's type, and only the last frame may claim a wrong length:
    the messages the gateway assembles then never open a stream.
    """
    count = draw(st.integers(1, 8))
    frames: list[bytes] = []
    for index in range(count):
        opcode = draw(st.sampled_from([0, 1, 2, 2, 2, 8, 9, 10]) | st.integers(0, 15))
        payload = draw(st.binary(max_size=140))
        if opcode == OP_TEXT and draw(st.booleans()):
            payload = draw(st.text(max_size=40)).encode()
        if opcode == OP_CLOSE and draw(st.booleans()):
            code = draw(st.sampled_from([1000, 1002, 1005, 1006, 3000, 5000]))
            payload = close_payload(code, draw(st.binary(max_size=20)))
        if wisp and opcode in (OP_CONT, OP_BINARY):
            payload = b"\x02" + payload[1:] if payload[:1] in (b"", b"\x01") else payload
        lengths = [None] * 8 + [0, 1, 125, 126, 65536, (1 << 20) + 1, (1 << 63) - 1]
        length = draw(st.sampled_from(lengths))
        if wisp and length is not None and (index < count - 1 or length < len(payload)):
            length = None
        frames.append(
            client_frame(
                opcode,
                payload,
                fin=draw(st.sampled_from([True, True, True, False])),
                rsv=draw(st.sampled_from([0] * 12 + [1, 2, 4, 7])),
                masked=draw(st.sampled_from([True] * 12 + [False])),
                length=length,
            )
        )
    return frames


def test_random_websocket_frames(target: Target) -> None:
    """Random frame sequences on Wisp v1, Wisp v2 and wsproxy: valid answers, then the end."""

    @fuzz(350)
    @given(data=st.data(), path=st.sampled_from(["wisp-v1", "wisp-v2", "wsproxy"]))
    def run(data: st.DataObject, path: str) -> None:
        frames = data.draw(random_frames(path != "wsproxy"), label="frames")
        frames_case(target, path, frames)

    run()
    target.checkpoint()


# -- 3. Wisp packets


def host_bytes(gateway: Target) -> st.SearchStrategy[bytes]:
    label = st.text(alphabet="ab-_.0\u00e9\uff11\u3002", min_size=0, max_size=70)
    return st.one_of(
        st.sampled_from(HOSTILE_NAMES),
        st.binary(max_size=40),
        st.text(max_size=30).map(lambda text: text.encode("utf-8", "surrogatepass")),
        label.map(str.encode),
        st.just(b"127.0.0.1"),
        st.just(gateway.echo[0].encode()),
        st.just(b"x" * 300),
    )


def wisp_packets(gateway: Target) -> st.SearchStrategy[bytes]:
    ids = st.sampled_from([0, 1, 2, 3, 0xFFFF_FFFF]) | st.integers(0, 0xFFFF_FFFF)
    ids = ids.filter(lambda i: i != PROBE_STREAM)
    live = ids.filter(lambda i: i != 0)
    ports = st.sampled_from(
        [0, 1, 65535, gateway.echo[1], gateway.http[1], gateway.udp_echo[1]]
    ) | st.integers(0, 65535)
    connects = st.builds(
        lambda stream_id, kind, port, host: connect_packet(stream_id, host, port, kind),
        ids,
        st.sampled_from([1, 1, 2, 0, 3, 255]),
        ports,
        host_bytes(gateway),
    )
    small = st.sampled_from([1, 2, 3])
    # Streams that really open (to the TCP or the UDP echo), so that later
    # packets on the same ids meet live streams.
    live_connects = st.builds(
        lambda stream_id, kind, port: connect_packet(stream_id, b"127.0.0.1", port, kind),
        small,
        st.sampled_from([1, 2]),
        st.sampled_from([gateway.echo[1], gateway.udp_echo[1]]),
    )
    return st.one_of(
        connects,
        live_connects,
        live_connects,
        st.builds(packet, st.just(PacketType.DATA), small | ids, st.binary(max_size=64)),
        st.builds(packet, st.just(PacketType.CLOSE), small, st.binary(max_size=2)),
        st.builds(packet, st.just(PacketType.CONTINUE), ids, st.binary(max_size=8)),
        st.builds(packet, st.just(PacketType.CLOSE), live, st.binary(max_size=3)),
        st.builds(packet, st.just(PacketType.INFO), ids, st.binary(max_size=16)),
        st.builds(packet, st.integers(0, 255), ids, st.binary(max_size=32)),
        st.binary(max_size=6),
        st.just(packet(PacketType.CLOSE, 0, b"\x02")),
        st.just(connect_packet(1, b"127.0.0.1", gateway.echo[1])),
    ).map(spoil_wisp_packet)


def test_wisp_packets(target: Target) -> None:
    """Random Wisp v1 and v2 packets in valid frames; a new stream must still work after them."""

    @fuzz(450)
    @given(version=st.sampled_from([1, 2]), packets=st.lists(wisp_packets(target), max_size=12))
    def run(version: int, packets: list[bytes]) -> None:
        wisp_case(target, version, packets)

    run()
    target.checkpoint()


def info_outcome(message: bytes) -> str:
    """What a v2 server answers a client's first message with, by the v2 drafts.

    ``nothing`` (no packet, the session just ends), ``close`` (CLOSE on
    stream 0 with INCOMPATIBLE_EXTENSIONS), ``continue`` (accepted), or
    ``either`` (password credentials, which may not parse: no login is
    required here, so a good one is accepted).
    """
    if len(message) < 5:
        return "nothing"  # no header: not even attributable to stream 0
    kind, stream_id = struct.unpack_from("<BI", message)
    if (kind, stream_id) == (PacketType.CLOSE, 0):
        return "nothing"  # the client left
    if (kind, stream_id) != (PacketType.INFO, 0) or len(message) < 7:
        return "close"
    offset, credentials = 7, False
    while offset < len(message):
        if len(message) - offset < 5:
            return "close"
        ext_id, length = struct.unpack_from("<BI", message, offset)
        offset += 5 + length
        if offset > len(message):
            return "close"
        credentials = credentials or ext_id == 2
    if message[5] < 2:
        return "close"
    return "either" if credentials else "continue"


@st.composite
def client_infos(draw: st.DrawFn) -> bytes:
    """A client's v2 INFO, perhaps broken."""
    major = draw(st.sampled_from([2, 2, 2, 2, 0, 1, 3, 255]))
    minor = draw(st.integers(0, 255))
    entries = draw(
        st.lists(
            st.tuples(st.sampled_from([1, 1, 2, 3, 4, 5, 0, 0x80, 0xFF]), st.binary(max_size=24)),
            max_size=4,
        )
    )
    body = b"".join(extension(ext_id, payload) for ext_id, payload in entries)
    message = packet(PacketType.INFO, 0, bytes([major, minor]) + body)
    how = draw(st.sampled_from(["keep"] * 6 + ["cut", "overlong", "stream", "type", "raw"]))
    if how == "cut":
        message = message[: draw(st.integers(0, len(message)))]
    elif how == "overlong" and entries:
        message = message[:8] + struct.pack("<I", draw(st.integers(25, 0xFFFF_FFFF))) + message[12:]
    elif how == "stream":
        message = message[:1] + struct.pack("<I", draw(st.integers(1, 0xFFFF_FFFF))) + message[5:]
    elif how == "type":
        message = bytes([draw(st.sampled_from([0, 1, 2, 3, 6, 0xFF]))]) + message[1:]
    elif how == "raw":
        message = draw(st.binary(max_size=20))
    return message


def info_case(gateway: Target, info: bytes) -> None:
    case = gateway.case(f"wisp-info {info!r}")
    outcome = info_outcome(info)
    with Peer(gateway.http) as peer:
        peer.upgrade(b"/", "wisp-v2")
        expect_server_info(peer)
        peer.send_binary(info)
        peer.half_close()
        answer = peer.next_message()
        peer.finish()
    if answer is None:
        assert outcome == "nothing", (
            f"no answer to the INFO {info!r} ({outcome} expected); "
            f"the gateway sent {peer.frames} and {'reset' if peer.reset else 'closed'}"
        )
    else:
        kind, stream_id, payload = server_packet(answer)
        assert stream_id == 0, answer
        got = "continue" if kind == PacketType.CONTINUE else "close"
        if got == "close":
            assert payload[0] == CloseReason.INCOMPATIBLE_EXTENSIONS, answer
        assert outcome in (got, "either"), f"{got} where {outcome} was expected"
    gateway.check(case)


def test_wisp_v2_handshakes(target: Target) -> None:
    """Malformed client INFO packets: CLOSE(INCOMPATIBLE_EXTENSIONS) on stream 0, no crash."""

    @fuzz(200)
    @given(info=client_infos())
    def run(info: bytes) -> None:
        info_case(target, info)

    run()
    target.checkpoint()


# -- 4. SOCKS5


@dataclass(frozen=True)
class SocksExpectation:
    """What the gateway must answer: the method choice (``None``: nothing) and the reply
    codes (``None``: not predicted; empty: no reply)."""

    choice: bytes | None
    codes: frozenset[int] | None


FAILURE = frozenset(range(1, 256))


def expected_reply(request: bytes, gateway: Target) -> frozenset[int] | None:
    """The reply codes RFC 1928 gives for ``request`` (all of it arrived, then EOF)."""
    if len(request) < 4:
        return frozenset()
    if request[0] != 5 or request[2] != 0:
        return frozenset({socks5.ReplyCode.GENERAL_FAILURE})
    atyp = request[3]
    if atyp == 3:
        if len(request) < 5:
            return frozenset()
        size = request[4]
        end = 5 + size
        if len(request) < end + 2:
            return frozenset()
        if size == 0 or not request[5:end].isascii():
            return frozenset({socks5.ReplyCode.GENERAL_FAILURE})
    elif atyp in (1, 4):
        end = 4 + (4 if atyp == 1 else 16)
        if len(request) < end + 2:
            return frozenset()
    else:
        return frozenset({socks5.ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED})
    command = request[1]
    if command not in (socks5.Command.CONNECT, socks5.Command.UDP_ASSOCIATE):
        return frozenset({socks5.ReplyCode.COMMAND_NOT_SUPPORTED})
    if command == socks5.Command.UDP_ASSOCIATE:
        return frozenset({socks5.ReplyCode.SUCCEEDED})
    (port,) = struct.unpack_from("!H", request, end)
    if port == gateway.echo[1]:
        return None  # some spellings of the echo's address may reach it
    return FAILURE


@st.composite
def socks_streams(draw: st.DrawFn, gateway: Target) -> tuple[bytes, SocksExpectation | None]:
    """A greeting, a request and trailing bytes, each perhaps broken, and the answer due."""
    version = draw(st.sampled_from([5] * 8 + [4, 0, 0xFF]))
    methods = draw(st.lists(st.sampled_from([0, 0, 1, 2, 3, 0x80, 0xFF]), max_size=4))
    count = draw(st.sampled_from([len(methods)] * 6 + [0, len(methods) + 1, 255]))
    greeting = bytes([version, count & 0xFF, *methods])
    atyp = draw(st.sampled_from([1, 3, 3, 4] * 3 + [0, 2, 5, 0xFF]))
    if atyp == 3:
        name = spoil(draw(host_bytes(gateway))[:254], socks_host)
        address = bytes([draw(st.sampled_from([len(name)] * 8 + [0, 255]))]) + name
    elif atyp in (1, 4):
        raw = draw(st.binary(min_size=16, max_size=16))
        address = spoil_ip(atyp, raw[: 4 if atyp == 1 else 16])
    else:
        address = draw(st.binary(max_size=8))
    port = draw(
        st.sampled_from([0, 1, gateway.echo[1], gateway.http[1], 65535]) | st.integers(0, 65535)
    )
    header = [
        draw(st.sampled_from([5] * 10 + [4, 0])),
        draw(st.sampled_from([1, 1, 1, 2, 3, 0, 4, 0xFF])),
        draw(st.sampled_from([0] * 10 + [1, 0xFF])),
        atyp,
    ]
    request = bytes(header) + address + struct.pack("!H", port)
    if draw(st.integers(0, 5)) == 0:
        request = request[: draw(st.integers(0, len(request)))]
    data = greeting + request + draw(st.binary(max_size=16))
    # Trailing bytes may complete a cut request, a swallowing greeting shift it.
    assume(socks_data_stays_local(data))
    if version != 5 or count == 0:
        return data, SocksExpectation(None, frozenset())
    if count != len(methods):
        return data, None
    if 0 not in methods:
        return data, SocksExpectation(b"\x05\xff", frozenset())
    return data, SocksExpectation(b"\x05\x00", expected_reply(data[len(greeting) :], gateway))


def test_socks5_messages(target: Target) -> None:
    """Random greetings, requests (BIND, unknown commands and address types, odd names) and
    raw bytes on the SOCKS5 port."""

    @fuzz(500)
    @given(
        case=socks_streams(target)
        | st.binary(max_size=64).filter(socks_data_stays_local).map(lambda d: (d, None))
    )
    def run(case: tuple[bytes, SocksExpectation | None]) -> None:
        socks_case(target, *case)

    run()
    target.checkpoint()


@st.composite
def udp_datagrams(draw: st.DrawFn, gateway: Target) -> bytes:
    """A datagram for a UDP association's relay: a perhaps broken header, then data."""
    if draw(st.integers(0, 4)) == 0:
        raw = draw(st.binary(max_size=40))
        try:
            parsed = socks5.UdpDatagram.parse(raw)
        except Exception:
            return raw
        return raw if parsed.fragment or not needs_network(parsed.host) else raw[:3] + b"\x00"
    atyp = draw(st.sampled_from([1, 1, 3, 3, 4, 0, 2, 0xFF]))
    if atyp == 3:
        address = spoil(draw(host_bytes(gateway))[:254], socks_host)
    else:
        raw = draw(st.binary(min_size=16, max_size=16))
        address = spoil_ip(atyp, raw[: 4 if atyp == 1 else 16])
    port = draw(st.sampled_from([0, gateway.udp_echo[1], gateway.http[1]]) | st.integers(0, 65535))
    header = udp_header(atyp, address, port, draw(st.sampled_from([0, 0, 0, 1, 0x80])))
    if draw(st.booleans()):
        header = draw(st.sampled_from([b"\x01\x00", b"\x00\x01", b""])) + header[2:]
    datagram = header + draw(st.binary(max_size=32))
    if draw(st.integers(0, 5)) == 0:
        datagram = datagram[: draw(st.integers(0, len(datagram)))]
    return datagram


def test_socks5_udp_datagrams(target: Target) -> None:
    """Malformed datagrams to a UDP association's relay: dropped, the association lives on."""

    @fuzz(150)
    @given(datagrams=st.lists(udp_datagrams(target), min_size=1, max_size=10))
    def run(datagrams: list[bytes]) -> None:
        socks_udp_case(target, datagrams)

    run()
    target.checkpoint()


def socks_login(process: GatewayProcess, sub: bytes, methods: Sequence[int]) -> bytes | None:
    """The method choice and what follows sub-negotiation ``sub`` (``None``: no method choice)."""
    with Peer(process.socks) as peer:
        peer.send(bytes([5, len(methods), *methods]) + sub)
        peer.half_close()
        choice = peer.read_exactly(2)
        return None if choice is None else choice + peer.read_all()


def names_the_user(authorization: bytes) -> bool:
    """Whether an Authorization value might carry the right login (in any base64 spelling)."""
    scheme, _, encoded = authorization.strip().partition(b" ")
    try:
        decoded = base64.b64decode(encoded.strip())
    except ValueError:
        return False
    return scheme.lower() == b"basic" and f"{USER}:{PASSWORD}".encode() in decoded


def test_logins(target: Target) -> None:
    """A gateway that requires a login: random SOCKS5 credentials and Wisp password
    extensions are refused (never accepted), and the right login still works."""
    with gateway_process(
        "--user",
        f"{USER}:{PASSWORD}",
        "--log-level",
        LOG_LEVEL,
        *PER_ADDRESS_ROOM,
        event_loop=target.loop,
    ) as process:
        gateway = Target(target.loop, process, target.udp_echo)

        @fuzz(150)
        @given(
            methods=st.lists(st.sampled_from([0, 2, 2, 1]), min_size=1, max_size=3),
            version=st.sampled_from([1] * 8 + [0, 5]),
            user=st.binary(max_size=12) | st.text(max_size=8).map(str.encode),
            password=st.binary(max_size=12) | st.just(PASSWORD.encode()),
            lengths=st.sampled_from(["right"] * 4 + ["long", "short"]),
        )
        def socks(
            methods: list[int], version: int, user: bytes, password: bytes, lengths: str
        ) -> None:
            assume((user, password) != (USER.encode(), PASSWORD.encode()))
            ulen = min(255, len(user) + 3) if lengths == "long" else len(user)
            plen = max(0, len(password) - 1) if lengths == "short" else len(password)
            sub = bytes([version, ulen]) + user + bytes([plen]) + password
            case = gateway.case(f"socks5-login {methods!r} {sub!r}")
            answer = socks_login(process, sub, methods)
            if 2 not in methods:
                assert answer == b"\x05\xff", answer
            else:
                assert answer is not None, "no method choice"
                assert answer[:2] == b"\x05\x02", answer
                assert answer[2:] != b"\x01\x00", f"a wrong login was accepted: {sub!r}"
                try:
                    well_formed = version == 1 and bool(user.decode()) and bool(password.decode())
                except UnicodeDecodeError:
                    well_formed = False
                if lengths == "right":
                    # RFC 1929: a failure status, then the end; nothing for a malformed one.
                    assert answer[2:] == (b"\x01\x01" if well_formed else b""), answer
            gateway.check(case)

        @fuzz(150)
        @given(
            payload=st.binary(max_size=24)
            | st.builds(
                lambda user, password: (
                    struct.pack("<BH", len(user), len(password)) + user + password
                ),
                st.binary(max_size=8) | st.just(USER.encode()),
                st.binary(max_size=8),
            ),
            others=st.lists(st.sampled_from([1, 4, 5, 0x80]), max_size=2),
        )
        def wisp_login(payload: bytes, others: list[int]) -> None:
            body = b"".join(extension(e) for e in others) + extension(2, payload)
            info = packet(PacketType.INFO, 0, bytes([2, 0]) + body)
            case = gateway.case(f"wisp-login {info!r}")
            with Peer(process.http) as peer:
                peer.upgrade(b"/", "wisp-v2")
                expect_server_info(peer)
                peer.send_binary(info)
                peer.half_close()
                answer = peer.next_message()
                peer.finish()
            assert answer is not None, (
                f"no answer to the INFO {info!r}; the gateway sent {peer.frames} "
                f"and {'reset' if peer.reset else 'closed'}"
            )
            kind, stream_id, reason = server_packet(answer)
            assert (kind, stream_id) == (PacketType.CLOSE, 0), f"a wrong login was let in: {info!r}"
            assert reason[0] in (
                CloseReason.AUTH_BAD_PASSWORD,
                CloseReason.AUTH_MISSING_CREDENTIALS,
                CloseReason.INCOMPATIBLE_EXTENSIONS,
            ), reason
            gateway.check(case)

        right = b"Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode())

        @fuzz(80)
        @given(
            value=st.one_of(
                st.binary(max_size=30).map(lambda raw: b"Basic " + base64.b64encode(raw)),
                st.binary(max_size=30).map(lambda raw: b"Basic " + raw),
                st.text(max_size=12).map(
                    lambda user: b"Basic " + base64.b64encode(f"{user}:{PASSWORD}".encode())
                ),
                st.sampled_from(
                    [b"", b"Basic", b"basic ", b"Bearer x", right[:-1], right + b"!", right[6:]]
                ),
            ).filter(lambda value: b"\r" not in value and b"\n" not in value),
            path=st.sampled_from([b"/", b"/%s:%d" % (process.echo[0].encode(), process.echo[1])]),
            twice=st.booleans(),
        )
        def basic(value: bytes, path: bytes, twice: bool) -> None:
            assume(not names_the_user(value))
            header = b"Authorization: " + value
            case = gateway.case(f"basic {path!r} {value!r}")
            with Peer(process.http) as peer:
                extra = [header, b"Authorization: " + right] if twice else [header]
                peer.send(upgrade_request(process.http[1], path, None, extra))
                peer.half_close()
                response = peer.read_response()
                assert response is not None, "no answer to an upgrade with a wrong login"
                # 401, or 400 for a header websockets refuses; never an upgrade.
                assert response.status in (400, 401), response.head
            gateway.check(case)

        socks()
        wisp_login()
        basic()
        # The right logins still work, and the wall caught nothing.
        credentials = bytes([1, len(USER)]) + USER.encode() + bytes([len(PASSWORD)])
        with Peer(process.socks) as peer:
            peer.send(b"\x05\x01\x02" + credentials + PASSWORD.encode())
            assert peer.read_exactly(4) == b"\x05\x02\x01\x00"
            peer.send(b"\x05\x01\x00" + socks5.encode_address(*process.echo))
            reply = socks_reply(peer)
            assert reply is not None, "no reply to a logged-in CONNECT"
            assert reply[0] == 0, reply
            peer.send(b"ping")
            assert peer.read_exactly(4) == b"ping"
        with Peer(process.http) as peer:
            peer.send(upgrade_request(process.http[1], b"/", None, [b"Authorization: " + right]))
            response = peer.read_response()
            assert response is not None, "no answer to an upgrade with the right login"
            assert response.status == 101, response.head
        login = struct.pack("<BH", len(USER), len(PASSWORD)) + (USER + PASSWORD).encode()
        good = packet(PacketType.INFO, 0, bytes([2, 0]) + extension(2, login))
        with wisp_session(gateway, 2, info=good) as peer:
            probe(peer, gateway)
        gateway.check()
        assert process.internal_errors() == [], internal_error_report(process.log())


# -- 5. hostile host names through every path


def test_hostile_host_names_are_refused(target: Target) -> None:
    """Every hostile spelling is refused on the wire by every path, and nothing breaks."""
    names = list(HOSTILE_NAMES)
    # A loopback port with a listener the policy does not allow: reaching it is a failure.
    port = target.http[1]
    for name in names:
        for decode in (wisp_host, socks_host):
            assert spoil(name, decode) == name, f"test bug: {name!r} would leave loopback"
        path = b"/" + urllib.parse.quote(name, safe="").encode() + b":%d" % port
        assert spoil_path(path) == path, f"test bug: {path!r} would leave loopback"

    # Wisp v2, a TCP and a UDP stream per name on one session.
    case = target.case("hostile names over Wisp")
    with wisp_session(target, 2) as peer:
        streams: dict[int, tuple[bytes, int]] = {}
        for index, name in enumerate(names):
            for kind in (1, 2):
                stream_id = 2 * index + kind
                streams[stream_id] = (name, kind)
                peer.send_binary(connect_packet(stream_id, name, port, kind))
                target.case(f"wisp {name!r} {kind}")
        reasons: dict[tuple[bytes, int], int] = {}
        while len(reasons) < len(streams):
            message = peer.next_message()
            missing = [streams[s] for s in streams if streams[s] not in reasons]
            assert message is not None, f"the session ended; no refusal yet for {missing}"
            kind, stream_id, payload = server_packet(message)
            assert kind == PacketType.CLOSE, (
                f"{streams.get(stream_id)} was not refused: {message!r}"
            )
            reasons[streams[stream_id]] = payload[0]
        wrong = {k: v for k, v in reasons.items() if v not in REFUSAL_REASONS}
        assert not wrong, f"refused with unexpected reasons: {wrong}"
        probe(peer, target)
    target.check(case)

    for name in names:
        # wsproxy: the name in the path.
        path = b"/" + urllib.parse.quote(name, safe="").encode() + b":%d" % port
        case = target.case(f"wsproxy {path!r}")
        with Peer(target.http) as peer:
            peer.send(upgrade_request(port, path, "binary"))
            response = peer.read_response()
            assert response is not None, f"no answer for {path!r}"
            if response.status == 101:
                frames = peer.finish()
                assert [f.opcode for f in frames] == [OP_CLOSE], (name, frames)
                assert peer.close_code == 1011, (name, peer.close_code)
            else:
                assert response.status in WSPROXY_REFUSALS, (name, response.head)
        target.check(case)

        # SOCKS5 CONNECT to the name as a domain.
        if len(name) > 255:
            continue
        case = target.case(f"socks5 {name!r}")
        with Peer(target.socks) as peer:
            peer.send(b"\x05\x01\x00\x05\x01\x00" + socks_address(3, name, port))
            assert peer.read_exactly(2) == b"\x05\x00"
            reply = socks_reply(peer)
            assert reply is not None, f"no SOCKS5 reply for {name!r}"
            assert reply[0] != 0, f"{name!r} was connected"
            assert peer.read_all() == b""
        target.check(case)

    # SOCKS5 UDP: no error exists for a datagram (RFC 1928); each is dropped
    # and a good datagram behind them is still relayed.
    datagrams = [udp_header(3, name, port) + b"x" for name in names if len(name) <= 255]
    for name in names:
        target.case(f"socks5-udp {name!r}")
    socks_udp_case(target, datagrams)
    target.checkpoint()


# -- the verdict, per event loop (this test runs last for each)


def metrics(gateway: Target) -> str:
    with Peer(gateway.http) as peer:
        peer.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        response = peer.read_response()
        assert response is not None, "no answer from /metrics"
        assert response.status == 200, response.head
        return peer.read_all().decode()


_OPEN = re.compile(r"^netshim_gateway_(connections|streams)\{([^}]*)\} (\S+)$", re.MULTILINE)
_ERRORS = re.compile(r"^netshim_gateway_internal_errors_total\{([^}]*)\} (\S+)$", re.MULTILINE)


def test_gateway_survived(target: Target, capsys: pytest.CaptureFixture[str]) -> None:
    """Alive, serving, nothing caught by the wall, nothing left open, memory flat."""
    process = target.process
    alive = process.alive()
    errors = process.internal_errors()
    rss = process.rss() if alive else 0
    with capsys.disabled():
        print(
            f"\nfuzz[{target.loop}]: {CASES.get(target.loop, 0)} cases, "
            f"{0 if alive else 1} crashes, {len(errors)} internal errors, "
            f"RSS {target.baseline_rss / 2**20:.1f} -> {rss / 2**20:.1f} MiB"
        )
    assert alive, f"the gateway died:\n{process.log()[-6000:]}"
    assert errors == [], internal_error_report(process.log())
    assert rss - target.baseline_rss <= RSS_SLACK, (
        f"RSS grew from {target.baseline_rss} to {rss} bytes over the fuzzing"
    )
    process.assert_serves()
    counted = [m.group(0) for m in _ERRORS.finditer(metrics(target)) if float(m[2])]
    assert counted == [], counted
    # Connections and streams close a moment after their clients left.
    deadline = time.monotonic() + TIMEOUT
    while True:
        still_open = [m.group(0) for m in _OPEN.finditer(metrics(target)) if float(m[3])]
        if not still_open or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert still_open == [], f"left open after every client left: {still_open}"
