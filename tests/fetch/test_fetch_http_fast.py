"""FetchStack's fast request parser and response writer against h11's, byte for byte.

FetchHttp parses the common request by hand and hands anything else to h11
(see netshim/stacks/_fetch_http.py).  These tests drive two cores with the
same bytes and the same responses, one taking the fast way where it can and
one that gave every byte to h11 from the start, and require the same events,
the same bytes back, the same errors and the same closes: requests of every
kind (malformed ones, upgrades, chunked, HTTP/1.0, pipelined, cut short)
split anywhere.
"""

from __future__ import annotations

import asyncio
import errno
from dataclasses import dataclass
from typing import Any

import anyio
import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netshim.stacks._fetch_http import (
    BROWSER_FORBIDDEN_HEADERS,
    NEED_DATA,
    FetchHttp,
    FetchRequest,
    ProgramClosed,
    RequestBody,
    RequestEnd,
    WebSocketRequest,
)
from netshim.stacks.fetch import FetchStack

METHODS = ["GET", "POST", "PUT", "HEAD", "DELETE", "get", "CONNECT", "TRACE", "OPTIONS", "G@T"]
TARGETS = ["/", "/a/b?c=1", "*", "http://other.test/x", "/sp ace", "", "/\x7f"]
VERSIONS = ["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 ", "http/1.1"]
FIELDS = [
    "Host: h",
    "Host: h",
    "Host: h",
    "Host: other",
    "Accept: */*",
    "User-Agent: python-httpx/0.28",
    "Content-Length: 3",
    "Content-Length: 0",
    "Content-Length: 12",
    "Content-Length: x",
    "Content-Length: 3, 3",
    "Content-Length: 3,4",
    "Content-Length: 99999999999999999999",
    "Content-Length: 123456789012345678901",
    "Transfer-Encoding: chunked",
    "Transfer-Encoding: gzip",
    "Connection: close",
    "Connection: keep-alive",
    "Connection: Keep-Alive, Close",
    "Expect: 100-continue",
    "Upgrade: websocket",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    " folded continuation",
    "Bad Header: 1",
    "X-Empty:",
    "X-Spaces:   v   w  ",
    "Cookie: a=1",
    "Sec-Fetch-Mode: cors",
    "X-Control: \x01",
    "X-Latin: caf\xe9",
    "NoColon",
    ":no-name",
]
BODIES = [b"", b"abc", b"hello world!", b"3\r\nabc\r\n0\r\n\r\n", b"zz"]
RESPONSES = [
    (200, [("Content-Type", "text/plain"), ("Content-Length", "5")], [b"hel", b"lo"]),
    (200, [("content-type", "text/plain")], [b"abc", b"defg"]),
    (200, [], []),
    (404, [("Content-Length", "0")], []),
    (204, [], []),
    (304, [("ETag", '"1"')], []),
    (200, [("Content-Encoding", "gzip"), ("Content-Length", "3")], [b"decoded"]),
    (200, [("Content-Length", "3")], [b"toolong"]),
    (200, [("Content-Length", "9")], [b"short"]),
    (200, [("Content-Length", "2, 2")], [b"ok"]),
    (200, [("Content-Length", "2"), ("content-length", "2")], [b"ok"]),
    (200, [("Content-Length", "1, 2")], [b"x"]),
    (200, [("X-Bad", " padded ")], [b"x"]),
    (200, [("X-Latin", "caf\xe9"), ("Host", "h"), ("Content-Length", "1")], [b"x"]),
    (999, [], [b"x"]),
    (99, [], []),
]


@dataclass
class Script:
    pieces: list[bytes]
    eof: bool
    responses: list[int]
    error_statuses: list[bool]
    # Whether each response waits for the program's next bytes (or its close).
    late: bool


def fast_core() -> FetchHttp:
    return FetchHttp("h", 80)


def h11_core() -> FetchHttp:
    core = FetchHttp("h", 80)
    core._hand_to_h11()
    return core


def run(core: FetchHttp, script: Script) -> list[object]:
    """What the program sees of ``script``: events, bytes back, errors and the close."""
    transcript: list[object] = []
    answered = 0
    awaiting = False
    due = 0

    def drain() -> None:
        nonlocal answered, awaiting, due
        while True:
            event = core.next_event()
            if event is NEED_DATA:
                break
            transcript.append(event)
            if isinstance(event, FetchRequest):
                awaiting = True
            if isinstance(event, RequestEnd) and awaiting and not core.closed:
                awaiting = False
                if script.late:
                    due += 1
                else:
                    respond(answered)
                    answered += 1
            if isinstance(event, (WebSocketRequest, ProgramClosed)):
                break
        transcript.append(("out", core.data_to_send(), core.closed, core.responding))

    def answer_due() -> None:
        nonlocal answered, due
        while due:
            due -= 1
            respond(answered)
            answered += 1
            drain()

    def respond(number: int) -> None:
        try:
            if script.error_statuses[number % len(script.error_statuses)]:
                core.error_response(502, "fetch failed\nsecond line")
                return
            status, headers, body = RESPONSES[script.responses[number % len(script.responses)]]
            core.start_response(status, list(headers))
            for piece in body:
                core.send_data(piece)
            core.end_response()
        except h11.LocalProtocolError as exc:
            transcript.append(("LocalProtocolError", str(exc)))
            core._closed_reason = "the response broke the protocol"

    for piece in script.pieces:
        core.receive_data(piece)
        drain()
        answer_due()
        if core.closed or core.websocket:
            return transcript
    if script.eof:
        core.receive_data(b"")
        drain()
        answer_due()
    return transcript


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    pieces = []
    start = 0
    for point in [*points, len(data)]:
        if point > start:
            pieces.append(data[start:point])
            start = point
    return pieces


COMMON_FIELDS = [
    "Accept: */*",
    "User-Agent: python-httpx/0.28",
    "Connection: close",
    "Connection: keep-alive",
    "Connection: Keep-Alive, Close",
    "X-Empty:",
    "X-Spaces:   v   w  ",
    "Cookie: a=1",
    "Sec-Fetch-Mode: cors",
    "X-Latin: caf\xe9",
]


@st.composite
def common_requests(draw: st.DrawFn) -> bytes:
    """The kind clients send, which the fast way takes: sometimes with a twist that it must not."""
    method = draw(st.sampled_from(["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS"]))
    target = draw(st.sampled_from(["/", "/a/b?c=1", "http://other.test/x"]))
    fields = draw(st.lists(st.sampled_from(COMMON_FIELDS), max_size=4))
    body = draw(st.sampled_from(BODIES))
    if body and draw(st.booleans()):
        fields.append(f"Content-Length: {len(body)}")
    fields.insert(draw(st.integers(0, len(fields))), "Host: h")
    if draw(st.integers(0, 4)) == 0:
        fields.append(draw(st.sampled_from(FIELDS)))
    head = "\r\n".join([f"{method} {target} HTTP/1.1", *fields, "", ""])
    return head.encode("latin-1") + body


@st.composite
def odd_requests(draw: st.DrawFn) -> bytes:
    line_end = draw(st.sampled_from(["\r\n"] * 6 + ["\n"]))
    line = (
        f"{draw(st.sampled_from(METHODS))} {draw(st.sampled_from(TARGETS))} "
        f"{draw(st.sampled_from(VERSIONS))}"
    )
    fields = draw(st.lists(st.sampled_from(FIELDS), max_size=5))
    head = line_end.join([line, *fields, "", ""])
    return head.encode("latin-1") + draw(st.sampled_from(BODIES))


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    data = b"".join(draw(st.lists(common_requests() | odd_requests(), min_size=1, max_size=3)))
    if draw(st.booleans()):
        data += draw(st.binary(max_size=8))
    cuts = draw(st.lists(st.integers(min_value=0, max_value=4096), max_size=6))
    return Script(
        split(data, cuts),
        draw(st.booleans()),
        draw(st.lists(st.integers(0, len(RESPONSES) - 1), min_size=1, max_size=3)),
        draw(st.lists(st.booleans(), min_size=1, max_size=2).map(lambda b: [*b, False])),
        draw(st.booleans()),
    )


@settings(max_examples=600, deadline=None)
@given(scripts())
def test_fast_way_matches_h11(script: Script) -> None:
    reference = run(h11_core(), script)
    assert run(fast_core(), script) == reference


def test_common_requests_take_the_fast_way() -> None:
    # What httpx, urllib3 and aiohttp send: parsed and answered with no h11.
    core = fast_core()
    core.receive_data(
        b"GET /x HTTP/1.1\r\nHost: h\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\n"
        b"Connection: keep-alive\r\nUser-Agent: python-httpx/0.28.1\r\n\r\n"
        b"POST /y HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok"
    )
    assert [type(event) for event in iter(core.next_event, NEED_DATA)] == [FetchRequest, RequestEnd]
    core.start_response(200, [("Content-Length", "2")])
    core.send_data(b"hi")
    core.end_response()
    assert [type(event) for event in iter(core.next_event, NEED_DATA)] == [
        FetchRequest,
        RequestBody,
        RequestEnd,
    ]
    assert core._h11 is None


def test_anything_else_is_h11s_from_then_on() -> None:
    core = fast_core()
    core.receive_data(b"PUT /f HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert isinstance(core.next_event(), FetchRequest)
    assert core._h11 is not None


def test_response_ending_before_the_request_body_waits_for_the_body() -> None:
    # A streamed upload that fetch answered early: the next request follows its body.
    core = fast_core()
    core.receive_data(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nab")
    assert [type(event) for event in iter(core.next_event, NEED_DATA)] == [
        FetchRequest,
        RequestBody,
    ]
    core.start_response(200, [("Content-Length", "0")])
    core.end_response()
    core.receive_data(b"cdGET /next HTTP/1.1\r\nHost: h\r\n\r\n")
    found = list(iter(core.next_event, NEED_DATA))
    assert found[:2] == [RequestBody(b"cd"), RequestEnd()]
    assert isinstance(found[2], FetchRequest)
    assert found[2].url == "http://h/next"


@pytest.mark.parametrize(
    "data",
    [
        # Line ends h11 also takes: a bare LF before the blank line, or throughout.
        b"GET / HTTP/1.1\r\nHost: h\r\nX-A: yes\n\r\n",
        b"GET / HTTP/1.1\nHost: h\nX-A: yes\n\n",
        # Garbage after a request that h11 refuses before any line ends.
        b"GET / HTTP/1.1\r\nHost: h\r\n\r\n\x00GET",
        b"GET / HTTP/1.1\r\nHost: h\r\n\r\n GET / HTTP/1.1",
        # A Content-Length of more digits than h11 takes.
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 123456789012345678901\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n",
    ],
)
@pytest.mark.parametrize("late", [False, True])
def test_fast_way_matches_h11_on_edge_cases(data: bytes, late: bool) -> None:
    script = Script([data], False, [0], [False], late)
    assert run(fast_core(), script) == run(h11_core(), script)


class RefusingFetch:
    """fetch that answers every request with its method and URL, and opens no WebSocket."""

    forbidden_headers = BROWSER_FORBIDDEN_HEADERS
    streams_uploads = False

    async def fetch(self, request: FetchRequest, body: bytes | None) -> Any:
        return BufferedBody(200, "OK", [("content-length", "2")], b"ok")

    async def open_websocket(self, url: str, protocols: tuple[str, ...]) -> Any:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "no WebSocket here")


class BufferedBody:
    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes):
        self.status, self.reason, self.headers, self._body = status, reason, headers, body

    async def read(self) -> bytes | None:
        body, self._body = self._body, b""
        return body or None

    def cancel(self) -> None:
        self._body = b""


@settings(max_examples=150, deadline=None)
@given(scripts())
def test_a_stream_ends_cleanly_whatever_the_program_sends(script: Script) -> None:
    # Through a whole FetchStream: every response, then the end of the
    # stream, or a refusal as ConnectionRefusedError; never anything else.
    async def exchange() -> bytes:
        stream = await FetchStack(RefusingFetch()).connect_tcp("h", 80)  # type: ignore[arg-type]
        for piece in script.pieces:
            await stream.send(piece)
        await stream.send_eof()
        received = b""
        with anyio.fail_after(5):
            while True:
                try:
                    received += await stream.receive()
                except (anyio.EndOfStream, ConnectionRefusedError):
                    break
        await stream.aclose()
        return received

    received = asyncio.run(exchange())
    if b"400 Bad Request" in received:
        # Field names are case-insensitive (RFC 9110 5.1): h11, and the fast
        # way that writes what it writes, title-case the field it adds when
        # the request itself asked to close.
        assert b"\r\nconnection: close\r\n" in received.lower()


@pytest.mark.parametrize(
    "data",
    [
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\na",
        b"PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    ],
)
def test_a_program_closing_mid_request_gets_400_and_the_end(data: bytes) -> None:
    # The request is never made: the stream answers 400 and ends, never hangs.
    fetch = RefusingFetch()

    async def exchange() -> bytes:
        stream = await FetchStack(fetch).connect_tcp("h", 80)  # type: ignore[arg-type]
        await stream.send(data)
        await stream.send_eof()
        received = b""
        with anyio.fail_after(5):
            while True:
                try:
                    received += await stream.receive()
                except anyio.EndOfStream:
                    break
        await stream.aclose()
        return received

    received = asyncio.run(exchange())
    assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"peer closed connection without sending complete message body" in received
