"""One bad request must never take the gateway down: the wall, names, the HTTP front, auth, limits.

The three requests that used to kill the whole process are regression tests
against a real ``netshim gateway`` process on each event loop; the rest runs
an in-process gateway (same code, faster), mostly with raw bytes so that each
test controls exactly what the gateway sees.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import struct
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest
from gateway_helpers import running_gateway
from gateway_process import echo_server, gateway_process
from test_gateway_security import next_event, raw_websocket, wisp_client

from netshim import HostStack, InvalidHostNameError, TcpStream
from netshim.gateway import Gateway, GatewayConfig
from netshim.policy import Limits, Policy
from netshim.protocols import socks5, wisp
from netshim.protocols.wisp import CloseReason
from netshim.stack import ForwardingStack
from netshim.transports._frames import MAX_CLOSE_REASON, close_reason

pytestmark = pytest.mark.anyio

LOOPBACK = Policy(allow=["127.0.0.1"])
# ASCII letters and digits to their fullwidth forms (U+FF10..., U+FF21..., U+FF41...).
FULLWIDTH = str.maketrans(
    {
        c: chr(ord(c) - 0x21 + 0xFF01)
        for c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    }
)


def fullwidth(text: str) -> str:
    return text.translate(FULLWIDTH)


KEY_HEADERS = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"


def upgrade_request(path: str, extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\n{KEY_HEADERS}{extra}\r\n"
    ).encode()


def exchange(address: tuple[str, int], data: bytes, *, limit: float = 5.0) -> bytes:
    """Send ``data``, read until the gateway closes or sent a whole close frame (blocking).

    The client never answers the close frame, so the gateway would wait a
    while for that answer before closing: the test stops reading instead.
    """
    with socket.create_connection(address, timeout=limit) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
            frames = received.partition(b"\r\n\r\n")[2]
            whole_frame = len(frames) >= 2 and len(frames) >= 2 + frames[1]
            if received.startswith(b"HTTP/1.1 101") and whole_frame:
                break
        return received


async def aexchange(address: tuple[str, int], data: bytes, *, limit: float = 5.0) -> bytes:
    """Send ``data``, read until the gateway closes the connection."""
    received = b""
    with anyio.fail_after(limit):
        async with await anyio.connect_tcp(*address) as stream:
            await stream.send(data)
            try:
                while True:
                    received += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    return received


async def aread(address: tuple[str, int], data: bytes, size: int, *, limit: float = 5.0) -> bytes:
    """Send ``data``, return the first ``size`` bytes of the answer (the connection stays open)."""
    received = b""
    with anyio.fail_after(limit):
        async with await anyio.connect_tcp(*address) as stream:
            await stream.send(data)
            while len(received) < size:
                received += await stream.receive()
    return received


def close_frame(response: bytes) -> tuple[int, str]:
    """The code and reason of the close frame behind a 101 response."""
    head, _, frames = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    assert frames[0] == 0x88, frames[:2]
    length = frames[1]
    assert length <= 125, "a close frame's payload is at most 125 bytes"
    payload = frames[2 : 2 + length]
    return struct.unpack("!H", payload[:2])[0], payload[2:].decode("utf-8")


# -- the three requests that killed the process


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop", "trio"])
def test_the_requests_that_killed_the_gateway_close_only_their_connection(
    event_loop: str,
) -> None:
    with gateway_process(event_loop=event_loop) as gateway:
        # 1. A refused host spelt in multi-byte characters (its refusal text
        #    once overflowed a close frame): the upgrade is refused with the
        #    policy's line, before any WebSocket exists.
        loopback = urllib.parse.quote(fullwidth("127.0.0.1"))
        answer = exchange(gateway.http, upgrade_request(f"/{loopback}:7777"))
        assert answer.startswith(b"HTTP/1.1 403")
        assert b"[Errno 13] netshim policy refused 127.0.0.1:7777" in answer
        # 2. Host names that are no host names: a gaierror, not a UnicodeError.
        long_and_wide = urllib.parse.quote(fullwidth("a" * 60) + "..b")
        for path in (
            "/a..b:7004",
            "/%ff%fe%00:7004",
            "/" + "a" * 64 + ".example:80",
            f"/{long_and_wide}:80",
        ):
            answer = exchange(gateway.http, upgrade_request(path))
            assert answer.startswith(b"HTTP/1.1 502"), answer
            assert b"[Errno -2] invalid host name" in answer
        # 3. Two pipelined requests in one segment: one answer, then the close.
        pipelined = b"GET /healthz HTTP/1.1\r\nHost: g\r\n\r\n" * 2
        answer = exchange(gateway.http, pipelined)
        assert answer.count(b"HTTP/1.1 200 OK") == 1
        assert answer.endswith(b"ok\n")
        gateway.assert_serves()
        assert gateway.internal_errors() == []


# -- the wall


class FaultyStack(ForwardingStack):
    """The host network, but connecting to port ``fault_port`` raises an unforeseen error."""

    def __init__(self, fault_port: int) -> None:
        super().__init__(HostStack())
        self.fault_port = fault_port

    async def connect_tcp(
        self, host: str, port: int, *, local_address: tuple[str, int] | None = None
    ) -> TcpStream:
        if port == self.fault_port:
            raise RuntimeError("a bug nobody foresaw")
        return await super().connect_tcp(host, port, local_address=local_address)


@asynccontextmanager
async def echo_target() -> AsyncIterator[tuple[str, int]]:
    with echo_server() as server:
        yield server.address


async def test_an_unexpected_exception_ends_only_its_stream_or_connection() -> None:
    fault_port = 9  # never connected to: the stack raises first
    async with (
        echo_target() as echo,
        running_gateway(
            GatewayConfig(policy=LOOPBACK), FaultyStack(fault_port), socks=True
        ) as gateway,
    ):
        # Wisp: the faulty stream closes with NETWORK_ERROR, its neighbour works.
        async with wisp_client(gateway.addresses["http"]) as (websocket, conn):
            await websocket.send(conn.send(wisp.Connect(1, "127.0.0.1", fault_port)))
            await websocket.send(conn.send(wisp.Connect(3, *echo)))
            await websocket.send(conn.send(wisp.Data(3, b"still here")))
            closed, echoed = None, b""
            while closed is None or not echoed:
                event = await next_event(websocket, conn)
                if isinstance(event, wisp.Close):
                    assert event.stream_id == 1
                    closed = event.reason
                elif isinstance(event, wisp.Data):
                    echoed += event.data
            assert closed == CloseReason.NETWORK_ERROR
            assert echoed == b"still here"
        # wsproxy and SOCKS5: the connection ends, the gateway goes on.
        answer = await aexchange(
            gateway.addresses["http"], upgrade_request(f"/127.0.0.1:{fault_port}")
        )
        assert answer == b"", "the connection is closed, unanswered"
        socks = await aexchange(
            gateway.addresses["socks5"],
            b"\x05\x01\x00" + b"\x05\x01\x00" + socks5.encode_address("127.0.0.1", fault_port),
        )
        assert socks.startswith(b"\x05\x00")
        assert await aexchange(gateway.addresses["http"], b"GET /healthz HTTP/1.1\r\n\r\n")
        metrics = gateway.metrics.render().decode()
        for front in ("wisp-stream", "http", "socks5"):
            assert f'netshim_gateway_internal_errors_total{{front="{front}"}} 1.0' in metrics
        async with wisp_client(gateway.addresses["http"]) as (websocket, conn):
            await websocket.send(conn.send(wisp.Connect(1, *echo)))
            await websocket.send(conn.send(wisp.Data(1, b"again")))
            event = await next_event(websocket, conn)
            while not isinstance(event, wisp.Data):
                event = await next_event(websocket, conn)
            assert event.data == b"again"


# -- host names


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("a..b", "empty label"),
        ("x" * 64 + ".example", "a label of 64 characters"),
        (".".join(["abcdefghi"] * 30), "at most 253"),
        ("exa mple.com", "character ' '"),
        ("evil.com\x00.good.com", "character '\\x00'"),
        ("line\nbreak.com", "character '\\n'"),
        ("user@host", "character '@'"),
        ("host/path", "character '/'"),
        ("%ff%fe", "character '%'"),
        ("\ufffd\ufffd", "not a valid internationalised name"),
    ],
)
async def test_bad_names_are_gaierrors_on_every_stack(name: str, why: str) -> None:
    stacks = [HostStack(), FaultyStack(0)]
    for stack in stacks:
        with pytest.raises(socket.gaierror, match=re.escape(why)) as caught:
            await stack.getaddrinfo(name, 80)
        assert isinstance(caught.value, InvalidHostNameError)
        assert caught.value.errno == socket.EAI_NONAME
        with pytest.raises(InvalidHostNameError):
            await stack.connect_tcp(name, 80)
    with pytest.raises(InvalidHostNameError, match=re.escape(why)):
        await Policy().resolve(HostStack(), name, 80)


@pytest.mark.parametrize(
    ("name", "normal"),
    [
        ("Example.COM.", "example.com"),
        ("_dmarc.example.com", "_dmarc.example.com"),
        ("Straße.de", "xn--strae-oqa.de"),
        (fullwidth("EXAMPLE") + ".com", "example.com"),
        (fullwidth("127.0.0.1"), "127.0.0.1"),
        ("fd00:0::2", "fd00::2"),
    ],
)
def test_names_are_normalised_once_as_browsers_do(name: str, normal: str) -> None:
    from netshim._addresses import normalize_host_name

    assert normalize_host_name(name) == normal


async def test_a_fullwidth_spelling_of_loopback_is_checked_as_loopback() -> None:
    with pytest.raises(PermissionError, match="loopback"):
        await Policy().resolve(HostStack(), fullwidth("127.0.0.1"), 80)


async def test_bad_names_are_clean_refusals_on_every_protocol() -> None:
    async with running_gateway(GatewayConfig(policy=LOOPBACK), socks=True) as gateway:
        async with wisp_client(gateway.addresses["http"]) as (websocket, conn):
            await websocket.send(conn.send(wisp.Connect(1, "a..b", 80)))
            await websocket.send(
                conn.send(wisp.Connect(3, "x" * 64 + ".com", 53, wisp.StreamType.UDP))
            )
            reasons = {}
            while len(reasons) < 2:
                event = await next_event(websocket, conn)
                assert isinstance(event, wisp.Close)
                reasons[event.stream_id] = event.reason
            assert reasons == {1: CloseReason.INVALID_INFO, 3: CloseReason.INVALID_INFO}
        request = b"\x05\x01\x00\x05\x01\x00\x03\x04a..b\x00\x50"
        reply = await aexchange(gateway.addresses["socks5"], request)
        assert reply[:2] == b"\x05\x00"
        assert reply[2:4] == bytes([0x05, socks5.ReplyCode.HOST_UNREACHABLE])


# -- WebSocket close reasons and text frames


@pytest.mark.parametrize("text", ["x" * 300, "é" * 100, fullwidth("1" * 50) + "a", "€" * 41 + "é"])
def test_close_reasons_are_cut_by_utf8_bytes(text: str) -> None:
    cut = close_reason(text)
    assert len(cut.encode()) <= MAX_CLOSE_REASON
    assert text.startswith(cut)
    assert len(cut.encode()) > MAX_CLOSE_REASON - 4


def test_short_close_reasons_are_kept() -> None:
    assert close_reason("refused") == "refused"


def masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


async def test_a_text_frame_that_is_not_utf8_fails_the_connection_with_1007() -> None:
    async with echo_target() as echo, running_gateway(GatewayConfig(policy=LOOPBACK)) as gateway:
        data = upgrade_request(f"/{echo[0]}:{echo[1]}") + masked(0x1, b"\xff\xfe bad")
        code, _ = close_frame(await aexchange(gateway.addresses["http"], data))
        assert code == 1007


# -- the HTTP front


async def test_malformed_slow_and_huge_requests_get_an_answer() -> None:
    async with running_gateway(GatewayConfig(policy=LOOPBACK)) as gateway:
        http = gateway.addresses["http"]
        assert (await aexchange(http, b"\x16\x03\x01 not http\r\n\r\n")).startswith(b"HTTP/1.1 400")
        assert (await aexchange(http, b"GET /" + b"a" * 40_000 + b" HTTP/1.1\r\n")).startswith(
            b"HTTP/1.1 431"
        )
        bad_path = upgrade_request("//[oops:80")
        assert (await aexchange(http, bad_path)).startswith(b"HTTP/1.1 400")
        repeated = b"GET /healthz HTTP/1.1\r\nUpgrade: a\r\nUpgrade: b\r\n\r\n"
        assert (await aexchange(http, repeated)).startswith(b"HTTP/1.1 200")
        superscript = await aexchange(http, upgrade_request("/127.0.0.1:\u00b2".encode().decode()))
        assert superscript.startswith(b"HTTP/1.1 400")


async def test_frames_right_behind_the_upgrade_reach_the_destination() -> None:
    async with echo_target() as echo, running_gateway(GatewayConfig(policy=LOOPBACK)) as gateway:
        data = upgrade_request(f"/{echo[0]}:{echo[1]}") + masked(0x2, b"early bytes")
        async with await anyio.connect_tcp(*gateway.addresses["http"]) as stream:
            await stream.send(data)
            received = b""
            with anyio.fail_after(5):
                while b"early bytes" not in received:
                    received += await stream.receive()


# -- authentication on every path


def basic(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Authorization: Basic {token}\r\n"


async def test_a_login_is_required_on_every_path() -> None:
    config = GatewayConfig(policy=LOOPBACK, users={"ana": "s3cret", "bo": "pässwörd"})
    async with echo_target() as echo, running_gateway(config, socks=True) as gateway:
        http = gateway.addresses["http"]
        wsproxy = f"/{echo[0]}:{echo[1]}"
        for path in ("/", wsproxy):  # Wisp v1 (no subprotocol) and wsproxy
            refused = await aexchange(http, upgrade_request(path))
            assert refused.startswith(b"HTTP/1.1 401")
            assert b"WWW-Authenticate: Basic" in refused
            wrong = await aexchange(http, upgrade_request(path, basic("ana", "nope")))
            assert wrong.startswith(b"HTTP/1.1 401")
        for user, password in (("ana", "s3cret"), ("bo", "pässwörd")):
            async with await anyio.connect_tcp(*http) as stream:
                await stream.send(upgrade_request(f"/{echo[0]}:{echo[1]}", basic(user, password)))
                with anyio.fail_after(5):
                    assert (await stream.receive()).startswith(b"HTTP/1.1 101")
        # Wisp v2 still logs in in band; without credentials it is refused there.
        with pytest.raises(ConnectionRefusedError):
            async with wisp_client(http):
                pass
        # SOCKS5 wants the login too, and a non-ASCII password is compared, not crashed on.
        greeting = b"\x05\x01\x00"
        assert (await aexchange(gateway.addresses["socks5"], greeting)) == b"\x05\xff"
        password = "pässwörd".encode()
        login = b"\x05\x01\x02" + b"\x01\x02bo" + bytes([len(password)]) + password
        assert await aread(gateway.addresses["socks5"], login, 4) == b"\x05\x02\x01\x00"
        assert gateway.metrics.render().count(b"internal_errors_total{") == 0


async def test_url_tokens_are_required_everywhere_and_target_tokens_are_no_credential() -> None:
    async with echo_target() as echo:
        config = GatewayConfig(
            policy=LOOPBACK, url_tokens=frozenset({"SECRET"}), targets={"vnc1": echo}
        )
        async with running_gateway(config, socks=True) as gateway:
            http = gateway.addresses["http"]
            only_target = await aexchange(http, upgrade_request("/websockify?token=vnc1"))
            assert only_target.startswith(b"HTTP/1.1 401")
            both = upgrade_request("/websockify?token=vnc1&token=SECRET")
            async with await anyio.connect_tcp(*http) as stream:
                await stream.send(both + masked(0x2, b"vnc"))
                received = b""
                with anyio.fail_after(5):
                    while b"vnc" not in received.partition(b"\r\n\r\n")[2]:
                        received += await stream.receive()
                assert received.startswith(b"HTTP/1.1 101")
            # SOCKS5 has no URL: a token is the password (any user name).
            socks = gateway.addresses["socks5"]
            assert (await aexchange(socks, b"\x05\x01\x00")) == b"\x05\xff"
            bad = b"\x05\x01\x02\x01\x01u\x05WRONG"
            assert (await aexchange(socks, bad)).endswith(b"\x01\x01")
            good = (
                b"\x05\x01\x02\x01\x01u\x06SECRET" + b"\x05\x01\x00" + socks5.encode_address(*echo)
            )
            async with await anyio.connect_tcp(*socks) as stream:
                await stream.send(good)
                with anyio.fail_after(5):
                    reply = b""
                    while len(reply) < 4 + 4 + 4 + 2:
                        reply += await stream.receive()
                assert reply[:4] == b"\x05\x02\x01\x00"
                assert reply[4:6] == b"\x05\x00"


# -- limits


async def test_connections_per_client_are_limited() -> None:
    policy = Policy(allow=["127.0.0.1"], limits=Limits(max_connections_per_client=3))
    async with running_gateway(GatewayConfig(policy=policy)) as gateway:
        http = gateway.addresses["http"]
        async with raw_websocket(http), raw_websocket(http):
            async with raw_websocket(http):
                answer = await aexchange(http, upgrade_request("/"))
                assert answer.startswith(b"HTTP/1.1 429")
                assert b"3 connections open from 127.0.0.1" in answer
            # One closed: room again.
            with anyio.fail_after(5):
                while True:
                    answer = await aexchange(http, b"GET /healthz HTTP/1.1\r\n\r\n")
                    if answer.startswith(b"HTTP/1.1 200"):
                        break
                    await anyio.sleep(0.05)
        refused = re.search(
            r'netshim_gateway_refused_connections_total\{front="http"\} (\d+)',
            gateway.metrics.render().decode(),
        )
        assert refused is not None
        assert int(refused.group(1)) >= 1


async def test_a_slow_lookup_holds_only_its_clients_lookup_slots() -> None:
    release = anyio.Event()
    two_started = anyio.Event()
    started = 0

    class SlowResolver(ForwardingStack):
        async def getaddrinfo(self, host: object, port: object, *args: int) -> list:  # type: ignore[override]
            nonlocal started
            if host == "slow.test":
                started += 1
                if started == 2:
                    two_started.set()
                await release.wait()
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return await super().getaddrinfo(host, port, *args)  # type: ignore[arg-type]

    policy = Policy(allow=["127.0.0.1", "localhost"], limits=Limits(lookups_per_client=2))
    async with (
        echo_target() as echo,
        running_gateway(GatewayConfig(policy=policy), SlowResolver(HostStack())) as gateway,
    ):
        gateway_address = gateway.addresses["http"]
        async with wisp_client(gateway_address) as (websocket, conn):
            for stream_id in range(1, 11, 2):
                await websocket.send(conn.send(wisp.Connect(stream_id, "slow.test", 80)))
            with anyio.fail_after(5):
                await two_started.wait()
            await anyio.sleep(0.1)
            assert started == 2, "only two of the client's lookups may run at once"
            # The same client's literal destinations need no lookup slot.
            await websocket.send(conn.send(wisp.Connect(21, *echo)))
            await websocket.send(conn.send(wisp.Data(21, b"literal")))
            event = await next_event(websocket, conn)
            while not isinstance(event, wisp.Data):
                event = await next_event(websocket, conn)
            assert event.data == b"literal"
            release.set()


async def test_the_gateway_config_checks_the_new_numbers() -> None:
    with pytest.raises(ValueError, match="upload_stall_timeout"):
        GatewayConfig(upload_stall_timeout=0)
    with pytest.raises(ValueError, match="total_upload_buffer"):
        GatewayConfig(total_upload_buffer=0)
    with pytest.raises(ValueError, match="lookups_per_client"):
        Limits(lookups_per_client=0)
    with pytest.raises(ValueError, match="max_connections_per_client"):
        Limits(max_connections_per_client=0)
    assert isinstance(Gateway(config=GatewayConfig()), Gateway)


async def test_idle_connections_and_wsproxy_streams_end_after_the_idle_timeout() -> None:
    policy = Policy(allow=["127.0.0.1"], limits=Limits(idle_timeout=0.3))
    async with echo_target() as echo, running_gateway(GatewayConfig(policy=policy)) as gateway:
        http = gateway.addresses["http"]
        async with wisp_client(http) as (websocket, _):
            with anyio.fail_after(5):
                assert await websocket.receive() is None, "an idle Wisp connection is closed"
        async with await anyio.connect_tcp(*http) as stream:
            await stream.send(upgrade_request(f"/{echo[0]}:{echo[1]}"))
            received = b""
            with anyio.fail_after(5):
                try:
                    while True:
                        received += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    pass
            assert received.startswith(b"HTTP/1.1 101")
        metrics = gateway.metrics.render().decode()
        assert 'streams_closed_total{protocol="wsproxy",reason="idle-timeout"} 1.0' in metrics


def test_the_address_cache_keeps_no_long_text_a_client_sent() -> None:
    """Host text longer than any valid name is parsed without the cache (a bounded memory)."""
    import ipaddress

    from netshim._addresses import _parse_ip_cached, parse_ip

    before = _parse_ip_cached.cache_info().currsize
    for number in range(50):
        assert parse_ip("a" * 300 + str(number)) is None
    assert parse_ip("fe80::1%" + "x" * 300) == ipaddress.ip_address("fe80::1")
    assert _parse_ip_cached.cache_info().currsize == before
    assert parse_ip("fe80::1%eth0") == ipaddress.ip_address("fe80::1")
