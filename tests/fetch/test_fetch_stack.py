"""FetchStack on CPython with a fake fetch: streams, real clients over them, TLS, errors."""

from __future__ import annotations

import asyncio
import errno
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
from anyio.streams.tls import TLSStream

import netshim
from netshim.stacks import RouterStack
from netshim.stacks._fetch_http import BROWSER_FORBIDDEN_HEADERS, FetchRequest
from netshim.stacks.fetch import FetchStack, FetchStream


@pytest.fixture
def anyio_backend() -> str:
    # FetchStack runs in Pyodide, whose loop is asyncio's.
    return "asyncio"


@dataclass
class FakeResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    chunks: list[bytes | Exception]
    cancelled: bool = False

    async def read(self) -> bytes | None:
        await asyncio.sleep(0)
        if not self.chunks:
            return None
        chunk = self.chunks.pop(0)
        if isinstance(chunk, Exception):
            raise chunk
        return chunk

    def cancel(self) -> None:
        self.cancelled = True


Handler = Callable[[FetchRequest, bytes | None], Awaitable[FakeResponse]]


async def echo(request: FetchRequest, body: bytes | None) -> FakeResponse:
    text = f"{request.method} {request.url} {dict(request.headers)!r} {body!r}".encode()
    return FakeResponse(200, "OK", [("content-type", "text/plain")], [text])


@dataclass
class FakeFetch:
    handler: Handler = echo
    streams_uploads: bool = False
    forbidden_headers: frozenset[str] = BROWSER_FORBIDDEN_HEADERS
    requests: list[tuple[FetchRequest, bytes | None]] = field(default_factory=list)
    responses: list[FakeResponse] = field(default_factory=list)

    async def fetch(
        self, request: FetchRequest, body: bytes | AsyncIterator[bytes] | None
    ) -> FakeResponse:
        if body is not None and not isinstance(body, bytes):
            body = b"".join([chunk async for chunk in body])
        self.requests.append((request, body))
        response = await self.handler(request, body)
        self.responses.append(response)
        return response


async def read_response(stream: FetchStream) -> bytes:
    data = b""
    # The fake's responses are chunked: read to the last chunk.
    with anyio.fail_after(5):
        while b"\r\n0\r\n\r\n" not in data:
            data += await stream.receive()
    return data


@pytest.mark.anyio
async def test_raw_stream_keep_alive() -> None:
    fake = FakeFetch()
    stack = FetchStack(fake)
    stream = await stack.connect_tcp("example.org", 80)
    assert isinstance(stream, FetchStream)
    assert stream.remote_address == ("example.org", 80)
    await stream.send(b"GET /one HTTP/1.1\r\nHost: example.org\r\n\r\n")
    first = await read_response(stream)
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"GET http://example.org/one" in first
    await stream.send(
        b"POST /two HTTP/1.1\r\nHost: example.org\r\nContent-Length: 3\r\nCookie: c=1\r\n\r\nabc"
    )
    second = await read_response(stream)
    assert b"POST http://example.org/two {} b'abc'" in second
    assert [r.url for r, _ in fake.requests] == [
        "http://example.org/one",
        "http://example.org/two",
    ]
    await stream.send_eof()
    with pytest.raises(anyio.EndOfStream):
        await stream.receive()
    await stream.aclose()


@pytest.mark.anyio
async def test_pipelined_requests_answered_in_order() -> None:
    stream = await FetchStack(FakeFetch()).connect_tcp("h", 8080)
    await stream.send(
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    data = b""
    with anyio.fail_after(5):
        while True:
            try:
                data += await stream.receive()
            except anyio.EndOfStream:
                break
    assert data.index(b"http://h:8080/a") < data.index(b"http://h:8080/b")
    assert data.count(b"HTTP/1.1 200 OK") == 2


@pytest.mark.anyio
async def test_refusal_is_connection_refused_error() -> None:
    async def refuse(request: FetchRequest, body: bytes | None) -> FakeResponse:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "fetch failed: Failed to fetch")

    stream = await FetchStack(FakeFetch(refuse)).connect_tcp("other.test", 80)
    await stream.send(b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
    with pytest.raises(ConnectionRefusedError, match="Failed to fetch"):
        await stream.receive()
    with pytest.raises(BrokenPipeError):
        await stream.send(b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")


@pytest.mark.anyio
async def test_cut_off_body_is_a_reset_after_the_data() -> None:
    async def cut(request: FetchRequest, body: bytes | None) -> FakeResponse:
        reset = ConnectionResetError(errno.ECONNRESET, "the body was cut off")
        return FakeResponse(200, "OK", [("content-length", "100")], [b"partial", reset])

    fake = FakeFetch(cut)
    stream = await FetchStack(fake).connect_tcp("h", 80)
    await stream.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    data = b""

    async def read_all() -> None:
        nonlocal data
        while True:
            data += await stream.receive()

    with pytest.raises(ConnectionResetError, match="cut off"):
        await read_all()
    assert data.endswith(b"\r\n\r\npartial")
    assert fake.responses[0].cancelled


@pytest.mark.anyio
async def test_streamed_upload() -> None:
    fake = FakeFetch(streams_uploads=True)
    stream = await FetchStack(fake).connect_tcp("h", 80)
    await stream.send(b"PUT /f HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    for piece in (b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"):
        await stream.send(piece)
    response = await read_response(stream)
    assert b"b'hello world'" in response
    assert fake.requests[0][0].has_body


@pytest.mark.anyio
async def test_closing_cancels_the_download() -> None:
    async def slow(request: FetchRequest, body: bytes | None) -> FakeResponse:
        return FakeResponse(200, "OK", [], [b"x" * 10] * 100)

    fake = FakeFetch(slow)
    stream = await FetchStack(fake).connect_tcp("h", 80)
    await stream.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    await stream.receive()
    await stream.receive()
    await stream.aclose()
    assert fake.responses[0].cancelled
    with pytest.raises(anyio.ClosedResourceError):
        await stream.receive()


@pytest.fixture
def installed() -> AsyncIterator[FakeFetch]:
    fake = FakeFetch()
    netshim.install(FetchStack(fake), mode="loop")
    try:
        yield fake  # type: ignore[misc]
    finally:
        netshim.uninstall()


@pytest.mark.anyio
async def test_httpx_through_the_loop_hooks(installed: FakeFetch) -> None:
    async with httpx.AsyncClient() as client:
        first = await client.get("http://example.org/get?x=1", headers={"X-A": "1"})
        await client.post("http://example.org/post", content=b"body" * 1000)
    assert first.status_code == 200
    assert "GET http://example.org/get?x=1" in first.text
    assert "'x-a': '1'" in first.text
    assert installed.requests[1][1] == b"body" * 1000
    assert installed.requests[1][0].method == "POST"


@pytest.mark.anyio
async def test_httpx_keeps_its_connection() -> None:
    """httpcore asks whether an idle connection was closed; the socket view answers."""
    fake = FakeFetch()
    stack = FetchStack(fake)
    opened: list[str] = []
    native = stack.connect_tcp

    async def counting(host: str, port: int, **kwargs: Any) -> Any:
        opened.append(host)
        return await native(host, port, **kwargs)

    stack.connect_tcp = counting  # type: ignore[method-assign]
    with netshim.installed(stack, mode="loop"):
        async with httpx.AsyncClient() as client:
            for _ in range(3):
                assert (await client.get("http://example.org/again")).status_code == 200
    assert opened == ["example.org"]
    assert len(fake.requests) == 3


@pytest.mark.anyio
async def test_socket_view_tells_when_its_stream_ended(installed: FakeFetch) -> None:
    reader, writer = await asyncio.open_connection("example.org", 80)
    view = writer.get_extra_info("socket")
    assert view.fileno() == -1
    assert view.ended is False
    writer.write(b"GET / HTTP/1.1\r\nHost: example.org\r\nConnection: close\r\n\r\n")
    assert b"GET http://example.org/" in await reader.read()
    assert view.ended is True
    writer.close()


@pytest.mark.anyio
async def test_https_through_the_loop_hooks_marks_the_stream_secure(
    installed: FakeFetch,
) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get("https://example.org/secure")
    assert response.status_code == 200
    assert installed.requests[0][0].url == "https://example.org/secure"
    reader, writer = await asyncio.open_connection(
        "example.org", 8443, ssl=ssl.create_default_context()
    )
    writer.write(b"GET /x HTTP/1.1\r\nHost: example.org:8443\r\nConnection: close\r\n\r\n")
    body = await reader.read()
    writer.close()
    assert b"GET https://example.org:8443/x" in body


@pytest.mark.anyio
async def test_anyio_tls_stream_over_a_fetch_stream() -> None:
    fake = FakeFetch()
    stream = await FetchStack(fake).connect_tcp("secure.test", 443)
    tls = await TLSStream.wrap(
        stream, hostname="secure.test", ssl_context=ssl.create_default_context()
    )
    assert tls.extra(anyio.streams.tls.TLSAttribute.alpn_protocol) == "http/1.1"
    await tls.send(b"GET /p HTTP/1.1\r\nHost: secure.test\r\nConnection: close\r\n\r\n")
    data = b""
    with anyio.fail_after(5):
        while True:
            try:
                data += await tls.receive()
            except anyio.EndOfStream:
                break
    assert b"GET https://secure.test/p" in data
    await tls.aclose()


@pytest.mark.anyio
async def test_other_hosts_keep_real_tls() -> None:
    FetchStack(FakeFetch())
    context = ssl.create_default_context()
    tls = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="never.test")
    assert isinstance(tls, ssl.SSLObject)


def test_wrap_socket_on_a_fetch_stream_marks_it_secure() -> None:
    stack = FetchStack(FakeFetch())

    class FakeSocket:
        def __init__(self, stream: FetchStream) -> None:
            self._stream = stream

        def close(self) -> None:
            pass

    stream = FetchStream(stack, "h", 443)
    wrapped = ssl.create_default_context().wrap_socket(FakeSocket(stream), server_hostname="h")  # type: ignore[arg-type]
    assert stream.secure
    # The browser checked the certificate for the name: that is all it says.
    assert wrapped.getpeercert() == {"subjectAltName": (("DNS", "h"),)}
    assert wrapped.getpeercert(binary_form=True) is None
    stream.http.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    request = stream.http.next_event()
    assert isinstance(request, FetchRequest)
    assert request.url == "https://h/"


@pytest.mark.anyio
async def test_router_sends_listed_origins_to_fetch() -> None:
    fake = FakeFetch()
    other = FetchStack(FakeFetch())
    stack = FetchStack.for_origins(["example.org:80", "*.cdn.test"], default=other, backend=fake)
    assert isinstance(stack, RouterStack)
    assert stack.route("example.org", 80) is not other
    assert stack.route("img.cdn.test", 443) is not other
    assert stack.route("example.org", 8080) is other
    stream = await stack.connect_tcp("example.org", 80)
    assert isinstance(stream, FetchStream)
    await stream.aclose()


def test_stack_from_url_fetch_needs_pyodide() -> None:
    with pytest.raises(RuntimeError, match="JavaScript's fetch"):
        netshim.stack_from_url("fetch:")


@pytest.mark.anyio
async def test_no_udp_no_listening() -> None:
    stack = FetchStack(FakeFetch())
    with pytest.raises(OSError, match="no UDP") as info:
        await stack.open_udp()
    assert info.value.errno == errno.EOPNOTSUPP
    with pytest.raises(OSError, match="cannot listen"):
        await stack.listen_tcp()


@pytest.mark.anyio
async def test_declared_length_ends_the_response_without_the_final_read() -> None:
    class NoFinalRead(FakeResponse):
        async def read(self) -> bytes | None:
            if not self.chunks:
                raise AssertionError("the end of a complete Content-Length body was awaited")
            return await super().read()

    async def sized(request: FetchRequest, body: bytes | None) -> FakeResponse:
        return NoFinalRead(200, "OK", [("content-length", "6")], [b"abc", b"def"])

    stream = await FetchStack(FakeFetch(sized)).connect_tcp("h", 80)
    for _ in range(2):
        await stream.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        data = b""
        with anyio.fail_after(5):
            while not data.endswith(b"abcdef"):
                data += await stream.receive()
        assert data.startswith(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n")


@pytest.mark.anyio
async def test_head_and_204_end_with_their_head() -> None:
    async def no_body(request: FetchRequest, body: bytes | None) -> FakeResponse:
        status = 204 if request.url.endswith("/empty") else 200
        return FakeResponse(status, "", [("content-length", "99")], [])

    stream = await FetchStack(FakeFetch(no_body)).connect_tcp("h", 80)
    await stream.send(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert await stream.receive() == b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n"
    await stream.send(b"GET /empty HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert (await stream.receive()).startswith(b"HTTP/1.1 204 No Content\r\n")
    with pytest.raises(anyio.EndOfStream):
        await stream.receive()


@pytest.mark.anyio
async def test_expect_100_continue_through_the_stream() -> None:
    fake = FakeFetch()
    stream = await FetchStack(fake).connect_tcp("h", 80)
    await stream.send(
        b"PUT /f HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    assert await stream.receive() == b"HTTP/1.1 100 \r\n\r\n"
    await stream.send(b"data")
    assert b"b'data'" in await read_response(stream)


@pytest.mark.anyio
async def test_dropped_headers_are_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    stream = await FetchStack(FakeFetch()).connect_tcp("h", 80)
    for _ in range(2):
        await stream.send(b"GET / HTTP/1.1\r\nHost: h\r\nCookie: a=1\r\nReferer: x\r\n\r\n")
        await read_response(stream)
    warnings = [r.getMessage() for r in caplog.records if r.name == "netshim.fetch"]
    later = "here; left out of this and later requests"
    assert warnings == [
        f"FetchStack: fetch cannot send the 'cookie' header {later}",
        f"FetchStack: fetch cannot send the 'referer' header {later}",
    ]


@pytest.mark.anyio
async def test_browser_tls_to_a_stream_that_is_not_fetchstack_fails() -> None:
    """A browser-TLS object on a stream that is not FetchStack's fails its handshake."""
    from netshim.stacks._fetch_tls import BrowserTlsObject

    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = BrowserTlsObject(ssl.create_default_context(), incoming, outgoing, "h")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    assert outgoing.read().startswith(b"\x16netshim-browser-tls/1")
    incoming.write(b"\x15\x03\x03\x00\x02\x02\x28" + b"\x00" * 30)
    with pytest.raises(ssl.SSLError, match="not a FetchStack stream"):
        tls.do_handshake()


class EchoChannel:
    """A fake host WebSocket that echoes, upper-casing text, and closes on "bye"."""

    def __init__(self, url: str, protocols: tuple[str, ...]) -> None:
        self.url = url
        self.protocol = protocols[0] if protocols else None
        self.close_code: int | None = None
        self.queue: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self.sent: list[str | bytes] = []

    def send(self, data: str | bytes) -> None:
        self.sent.append(data)
        if data == "bye":
            self.close(4000)
            return
        self.queue.put_nowait(data.upper() if isinstance(data, str) else data)

    async def receive(self) -> str | bytes | None:
        message = await self.queue.get()
        if message is None:
            self.queue.put_nowait(None)
        return message

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self.close_code is None:
            self.close_code = code
            self.queue.put_nowait(None)


@dataclass
class WebSocketFetch(FakeFetch):
    channels: list[EchoChannel] = field(default_factory=list)
    refuse_websockets: bool = False

    async def open_websocket(self, url: str, protocols: tuple[str, ...]) -> EchoChannel:
        if self.refuse_websockets:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"WebSocket to {url} failed")
        channel = EchoChannel(url, protocols)
        self.channels.append(channel)
        return channel


async def websocket_client(
    stream: FetchStream, uri: str, protocols: list[str] | None = None
) -> tuple[Any, Callable[[], Awaitable[list[Any]]]]:
    """The websockets library's sans-I/O client as the program, over ``stream``."""
    from websockets.client import ClientProtocol
    from websockets.typing import Subprotocol
    from websockets.uri import parse_uri

    client = ClientProtocol(parse_uri(uri), subprotocols=[Subprotocol(p) for p in protocols or []])
    client.send_request(client.connect())

    async def flush() -> None:
        for data in client.data_to_send():
            if data:
                await stream.send(data)

    async def events() -> list[Any]:
        await flush()
        with anyio.fail_after(5):
            while True:
                found = client.events_received()
                if found:
                    await flush()
                    return found
                try:
                    client.receive_data(await stream.receive())
                except anyio.EndOfStream:
                    client.receive_eof()

    await flush()
    return client, events


@pytest.mark.anyio
async def test_websocket_upgrade_relays_frames() -> None:
    from websockets.frames import Frame, Opcode
    from websockets.http11 import Response

    fake = WebSocketFetch()
    stream = await FetchStack(fake).connect_tcp("chat.test", 80)
    client, events = await websocket_client(stream, "ws://chat.test/socket?x=1", ["chat"])
    (response,) = await events()
    assert isinstance(response, Response)
    assert response.status_code == 101
    assert client.subprotocol == "chat"
    assert fake.channels[0].url == "ws://chat.test/socket?x=1"
    client.send_text(b"hello")
    (frame,) = await events()
    assert frame == Frame(Opcode.TEXT, b"HELLO")
    big = bytes(range(256)) * 1000
    client.send_binary(big)
    (frame,) = await events()
    assert frame.opcode is Opcode.BINARY
    assert frame.data == big
    # A fragmented message is reassembled before it goes to the host.
    client.send_text(b"frag", fin=False)
    client.send_continuation(b"mented", fin=True)
    (frame,) = await events()
    assert frame.data == b"FRAGMENTED"
    client.send_ping(b"p")
    (pong,) = await events()
    assert pong == Frame(Opcode.PONG, b"p")
    # The host closes: the program gets a close frame, then the end of the stream.
    client.send_text(b"bye")
    found = await events()
    assert found[0].opcode is Opcode.CLOSE
    assert client.close_rcvd is not None
    assert client.close_rcvd.code == 4000


@pytest.mark.anyio
async def test_websocket_closed_by_the_program() -> None:
    fake = WebSocketFetch()
    stream = await FetchStack(fake).connect_tcp("chat.test", 8080)
    client, events = await websocket_client(stream, "ws://chat.test:8080/")
    await events()
    client.send_close(1000, "done")
    found = await events()
    assert found[0].opcode.name == "CLOSE"
    assert fake.channels[0].close_code == 1000
    with pytest.raises(anyio.EndOfStream):
        await stream.receive()


@pytest.mark.anyio
async def test_websocket_refused_is_connection_refused() -> None:
    stream = await FetchStack(WebSocketFetch(refuse_websockets=True)).connect_tcp("h", 80)
    await websocket_client(stream, "ws://h/")
    with pytest.raises(ConnectionRefusedError):
        await stream.receive()


@pytest.mark.anyio
async def test_websocket_over_tls_is_wss() -> None:
    fake = WebSocketFetch()
    stream = await FetchStack(fake).connect_tcp("secure.test", 443)
    tls = await TLSStream.wrap(
        stream, hostname="secure.test", ssl_context=ssl.create_default_context()
    )
    await tls.send(
        b"GET /ws HTTP/1.1\r\nHost: secure.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = await tls.receive()
    assert head.startswith(b"HTTP/1.1 101 ")
    # RFC 6455's own example key and answer.
    assert b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    assert fake.channels[0].url == "wss://secure.test/ws"


def test_malformed_frames_close_with_1002() -> None:
    from netshim.stacks._fetch_http import FetchHttp, WebSocketClose, WebSocketRequest

    core = FetchHttp("h", 80)
    core.receive_data(
        b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        b"\x81\x02hi"  # an unmasked frame from a client
    )
    request = core.next_event()
    assert isinstance(request, WebSocketRequest)
    core.next_event()  # the request's end
    core.accept_websocket(request.key)
    assert core.next_event() == WebSocketClose(1002, "an unmasked frame or reserved bits")
    assert core.data_to_send().endswith(b"\x88\x24\x03\xea" + b"an unmasked frame or reserved bits")
    assert core.closed
