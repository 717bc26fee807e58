"""FetchStack's blocking path on CPython: what a Web Worker without JSPI runs.

There a blocking socket call is stepped by hand (``netshim.aio.run_blocking``
without JSPI, as on CPython) and FetchStack sends each request through its
blocking backend (synchronous XHR in the browser; a fake here) instead of
awaiting fetch.  http.client runs unmodified over netshim's descriptor-less
socket (``StackSocket``).
"""

from __future__ import annotations

import errno
import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from test_fetch_stack import FakeFetch, read_response

import netshim
from netshim.aio import CannotBlockError, StackSocket
from netshim.aio._sync import run_blocking
from netshim.stacks._fetch_http import FetchRequest
from netshim.stacks.fetch import (
    BUFFERED_PIECE,
    FetchStack,
    FetchStream,
    _BufferedResponse,
    _parse_header_block,
)


@dataclass
class FakeBlocking:
    """A blocking backend answering at once: an echo as JSON, or what ``answer`` says."""

    calls: list[tuple[FetchRequest, bytes | None, float]] = field(default_factory=list)
    failure: OSError | None = None
    body: bytes | None = None

    def fetch_blocking(
        self, request: FetchRequest, body: bytes | None, timeout: float
    ) -> _BufferedResponse:
        self.calls.append((request, body, timeout))
        if self.failure is not None:
            raise self.failure
        if self.body is not None:
            data = self.body
        else:
            data = json.dumps(
                {"method": request.method, "url": request.url, "size": len(body or b"")}
            ).encode()
        headers = [("content-type", "application/json"), ("content-length", str(len(data)))]
        return _BufferedResponse(200, "OK", headers, data)


@pytest.fixture
def blocking() -> Iterator[tuple[FakeFetch, FakeBlocking]]:
    fetch, fake = FakeFetch(), FakeBlocking()
    netshim.install(FetchStack(fetch, blocking_backend=fake), mode="loop")
    try:
        yield fetch, fake
    finally:
        netshim.uninstall()


def connection(timeout: float | None = None) -> http.client.HTTPConnection:
    """http.client on netshim's descriptor-less socket, as in Pyodide."""
    sock = StackSocket()
    sock.settimeout(timeout)
    sock.connect(("example.org", 80))
    client = http.client.HTTPConnection("example.org", 80)
    client.sock = sock  # type: ignore[assignment]
    return client


def test_http_client_requests_go_through_the_blocking_backend(
    blocking: tuple[FakeFetch, FakeBlocking],
) -> None:
    fetch, fake = blocking
    client = connection(timeout=7.0)
    client.request("GET", "/one")
    first = client.getresponse()
    assert first.status == 200
    assert json.loads(first.read()) == {"method": "GET", "url": "http://example.org/one", "size": 0}
    client.request("POST", "/two", body=b"x" * 100000)
    assert json.loads(client.getresponse().read())["size"] == 100000
    client.close()
    assert [(r.method, len(body or b""), timeout) for r, body, timeout in fake.calls] == [
        ("GET", 0, 7.0),
        ("POST", 100000, 7.0),
    ]
    assert fetch.requests == []


def test_no_timeout_is_infinite(blocking: tuple[FakeFetch, FakeBlocking]) -> None:
    _, fake = blocking
    client = connection()
    client.request("GET", "/")
    client.getresponse().read()
    assert fake.calls[0][2] == float("inf")


def test_a_whole_body_is_read_in_pieces(blocking: tuple[FakeFetch, FakeBlocking]) -> None:
    _, fake = blocking
    fake.body = bytes(range(256)) * (BUFFERED_PIECE // 64)  # 4 pieces
    client = connection()
    client.request("GET", "/big")
    response = client.getresponse()
    assert response.getheader("content-length") == str(len(fake.body))
    assert response.read() == fake.body


def test_chunked_upload_is_sent_whole_even_where_uploads_stream(
    blocking: tuple[FakeFetch, FakeBlocking],
) -> None:
    fetch, fake = blocking
    fetch.streams_uploads = True
    client = connection()
    client.request("POST", "/up", body=iter([b"ab", b"cd"]), encode_chunked=True)
    assert json.loads(client.getresponse().read())["size"] == 4
    assert fake.calls[0][1] == b"abcd"
    assert fetch.requests == []


def test_refusal_and_timeout_reach_the_program(blocking: tuple[FakeFetch, FakeBlocking]) -> None:
    _, fake = blocking
    fake.failure = ConnectionRefusedError(errno.ECONNREFUSED, "XMLHttpRequest GET failed")
    client = connection()
    client.request("GET", "/")
    with pytest.raises(ConnectionRefusedError, match="XMLHttpRequest"):
        client.getresponse()
    client.close()
    fake.failure = TimeoutError(errno.ETIMEDOUT, "timed out")
    client = connection(timeout=0.5)
    client.request("GET", "/")
    with pytest.raises(TimeoutError):
        client.getresponse()


def test_websocket_upgrade_from_a_blocking_socket_is_answered_501(
    blocking: tuple[FakeFetch, FakeBlocking],
) -> None:
    _, fake = blocking
    client = connection()
    client.request(
        "GET",
        "/socket",
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        },
    )
    response = client.getresponse()
    assert response.status == 501
    why = response.getheader("x-netshim-fetch-error") or ""
    assert "WebSocket" in why
    assert "JSPI" in why
    response.read()
    # The connection stays usable for plain requests.
    client.request("GET", "/after")
    assert client.getresponse().status == 200
    assert [r.url for r, _, _ in fake.calls] == ["http://example.org/after"]


def test_without_a_blocking_backend_the_error_says_how_to_block() -> None:
    netshim.install(FetchStack(FakeFetch()), mode="loop")
    try:
        stream = run_blocking(FetchStack(FakeFetch()).connect_tcp("h", 80), "connect")
        run_blocking(stream.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"), "send")
        with pytest.raises(CannotBlockError, match="JSPI") as caught:
            run_blocking(stream.receive(), "recv")
        assert "Web Worker" in str(caught.value)
        assert caught.value.errno == errno.EWOULDBLOCK
    finally:
        netshim.uninstall()


@pytest.mark.anyio
async def test_async_callers_still_use_fetch() -> None:
    fetch, fake = FakeFetch(), FakeBlocking()
    stream = await FetchStack(fetch, blocking_backend=fake).connect_tcp("h", 80)
    assert isinstance(stream, FetchStream)
    await stream.send(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
    assert b"GET http://h/a" in await read_response(stream)
    assert len(fetch.requests) == 1
    assert fake.calls == []
    await stream.aclose()


def test_response_header_block() -> None:
    block = "content-type: text/plain\r\nX-Served-By: a: b\r\n\r\nbroken line\r\n"
    assert _parse_header_block(block) == [
        ("content-type", "text/plain"),
        ("x-served-by", "a: b"),
    ]


@pytest.mark.anyio
async def test_buffered_response_pieces_and_cancel() -> None:
    response = _BufferedResponse(200, "OK", [], b"a" * (BUFFERED_PIECE + 1))
    assert len(await response.read() or b"") == BUFFERED_PIECE
    response.cancel()
    assert await response.read() is None


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Answer:
    """What the JavaScript side returns, as a JsProxy would hand it over."""

    def __init__(self, *items: object) -> None:
        self.items = list(items)

    def to_py(self, depth: int = -1) -> list[object]:
        return self.items


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def to_bytes(self) -> bytes:
        return self.data


@dataclass
class FakeXhr:
    """Stands in for XhrFetchBackend's JavaScript: records calls, returns ``answers`` in turn."""

    answers: list[_Answer] = field(default_factory=list)
    calls: list[tuple[object, ...]] = field(default_factory=list)

    def __call__(self, *args: object) -> _Answer:
        self.calls.append(args)
        return self.answers.pop(0)


@pytest.fixture
def fake_xhr(monkeypatch: pytest.MonkeyPatch) -> FakeXhr:
    import sys
    import types

    from netshim.stacks import fetch

    ffi = types.ModuleType("pyodide.ffi")
    ffi.to_js = lambda value: value  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pyodide", types.ModuleType("pyodide"))
    monkeypatch.setitem(sys.modules, "pyodide.ffi", ffi)
    fake = FakeXhr()
    monkeypatch.setattr(fetch, "_js_xhr", fake)
    return fake


def _request(method: str = "GET") -> FetchRequest:
    return FetchRequest(method, "http://h/x", (("x-a", "1"),), method == "POST", None)


def test_xhr_backend_answers_and_failures(fake_xhr: FakeXhr) -> None:
    from netshim.stacks.fetch import XhrFetchBackend

    backend = XhrFetchBackend(credentials="include")
    answers = fake_xhr.answers
    answers.append(_Answer(201, "Created", "content-length: 2\r\nx-b: 3\r\n", _Bytes(b"ok")))
    response = backend.fetch_blocking(_request("POST"), b"body", 2.5)
    assert (response.status, response.reason) == (201, "Created")
    assert response.headers == [("content-length", "2"), ("x-b", "3")]
    url, method, headers, body, with_credentials, milliseconds = fake_xhr.calls[0]
    assert (url, method, body, with_credentials, milliseconds) == (
        "http://h/x",
        "POST",
        b"body",
        True,
        2500,
    )
    assert headers == [["x-a", "1"]]
    answers.append(_Answer("NetworkError", "Failed to load 'http://h/x'."))
    with pytest.raises(ConnectionRefusedError, match="XMLHttpRequest GET http://h/x failed"):
        backend.fetch_blocking(_request(), None, float("inf"))
    assert fake_xhr.calls[1][5] == 0  # no timeout
    answers.append(_Answer("TimeoutError", "timed out"))
    with pytest.raises(TimeoutError):
        backend.fetch_blocking(_request(), None, 1.0)
    answers.append(_Answer(0, "", "", _Bytes(b"")))
    with pytest.raises(ConnectionRefusedError, match="no HTTP status"):
        backend.fetch_blocking(_request(), None, 1.0)
