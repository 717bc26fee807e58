"""FetchStack's sans-I/O HTTP/1.1 core: a program's requests in, fetch calls out, responses back."""

from __future__ import annotations

import h11
import pytest

from netshim.stacks._fetch_http import (
    NEED_DATA,
    TLS_HELLO,
    TLS_READY,
    Event,
    FetchHttp,
    FetchRequest,
    ProgramClosed,
    RequestBody,
    RequestEnd,
)


def events_of(core: FetchHttp) -> list[Event]:
    found: list[Event] = []
    while True:
        event = core.next_event()
        if event is NEED_DATA:
            return found
        assert isinstance(event, Event)
        found.append(event)


def feed(data: bytes, how: str, core: FetchHttp | None = None) -> tuple[FetchHttp, list[Event]]:
    """Feed ``data`` whole or byte by byte; the events, with bodies joined into one."""
    core = core or FetchHttp("example.org", 80)
    found: list[Event] = []
    pieces = [data] if how == "whole" else [data[i : i + 1] for i in range(len(data))]
    for piece in pieces:
        core.receive_data(piece)
        found += events_of(core)
    merged: list[Event] = []
    for event in found:
        if isinstance(event, RequestBody) and merged and isinstance(merged[-1], RequestBody):
            merged[-1] = RequestBody(merged[-1].data + event.data)
        else:
            merged.append(event)
    return core, merged


def client() -> h11.Connection:
    return h11.Connection(h11.CLIENT)


def responses(data: bytes, method: bytes = b"GET", count: int = 1) -> list[list[h11.Event]]:
    """The program's view of ``data``: parsed by an h11 client, one list per response."""
    reader = client()
    out: list[list[h11.Event]] = []
    for _ in range(count):
        reader.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        reader.send(h11.EndOfMessage())
        reader.receive_data(data)
        data = b""
        current: list[h11.Event] = []
        while True:
            event = reader.next_event()
            if event is h11.NEED_DATA:
                break
            current.append(event)
            if isinstance(event, h11.EndOfMessage):
                break
        out.append(current)
        if reader.our_state is h11.DONE and reader.their_state is h11.DONE:
            reader.start_next_cycle()
    return out


@pytest.mark.parametrize("how", ["whole", "bytewise"])
def test_get_becomes_a_fetch_request(how: str) -> None:
    core, found = feed(
        b"GET /a/b?c=1 HTTP/1.1\r\nHost: example.org\r\nAccept: text/html\r\n"
        b"Connection: keep-alive\r\nX-Custom: yes\r\n\r\n",
        how,
    )
    assert found == [
        FetchRequest(
            "GET",
            "http://example.org/a/b?c=1",
            (("accept", "text/html"), ("x-custom", "yes")),
            False,
            None,
        ),
        RequestEnd(),
    ]
    core.start_response(200, [("Content-Type", "text/plain"), ("Content-Length", "5")], "OK")
    core.send_data(b"hello")
    core.end_response()
    data = core.data_to_send()
    assert data == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello"
    )
    assert not core.closed


def test_url_names_port_scheme_and_ipv6() -> None:
    _, found = feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "whole", FetchHttp("::1", 8080))
    assert isinstance(found[0], FetchRequest)
    assert found[0].url == "http://[::1]:8080/"
    _core, found = feed(b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n", "whole", FetchHttp("h", 443))
    assert isinstance(found[0], FetchRequest)
    assert found[0].url == "http://h:443/p"
    tls = FetchHttp("h", 443)
    tls.receive_data(TLS_HELLO + b"GET /p HTTP/1.1\r\nHost: h\r\n\r\n")
    assert tls.data_to_send() == TLS_READY
    found = events_of(tls)
    assert isinstance(found[0], FetchRequest)
    assert found[0].url == "https://h/p"
    assert tls.secure


def test_absolute_form_target_is_used_as_given() -> None:
    _core, found = feed(b"GET http://other.test/x HTTP/1.1\r\nHost: other.test\r\n\r\n", "whole")
    assert isinstance(found[0], FetchRequest)
    assert found[0].url == "http://other.test/x"


@pytest.mark.parametrize("how", ["whole", "bytewise"])
def test_tls_hello_split_anywhere(how: str) -> None:
    core, found = feed(TLS_HELLO + b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", how, FetchHttp("h", 8443))
    assert core.data_to_send() == TLS_READY
    assert isinstance(found[0], FetchRequest)
    assert found[0].url == "https://h:8443/"


def test_real_client_hello_is_refused_with_an_alert() -> None:
    core = FetchHttp("h", 443)
    core.receive_data(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40)
    assert events_of(core) == []
    assert core.data_to_send() == b"\x15\x03\x03\x00\x02\x02\x28"
    assert core.closed


def test_framing_and_forbidden_headers_are_dropped() -> None:
    _core, found = feed(
        b"POST /u HTTP/1.1\r\nHost: example.org\r\nContent-Length: 3\r\nCookie: a=1\r\n"
        b"Accept-Encoding: gzip\r\nSec-Fetch-Mode: cors\r\nProxy-Authorization: x\r\n"
        b"Authorization: Bearer t\r\nTE: trailers\r\n\r\nabc",
        "whole",
    )
    request = found[0]
    assert isinstance(request, FetchRequest)
    assert request.headers == (("authorization", "Bearer t"),)
    assert request.dropped == ("cookie", "accept-encoding", "sec-fetch-mode", "proxy-authorization")
    assert request.has_body
    assert request.content_length == 3
    assert found[1:] == [RequestBody(b"abc"), RequestEnd()]


def test_node_forbids_only_framing_headers() -> None:
    core = FetchHttp("h", 80, forbidden=frozenset())
    core.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\nCookie: a=1\r\nSec-X: 1\r\n\r\n")
    request = events_of(core)[0]
    assert isinstance(request, FetchRequest)
    assert request.headers == (("cookie", "a=1"), ("sec-x", "1"))
    assert request.dropped == ()


@pytest.mark.parametrize("how", ["whole", "bytewise"])
def test_chunked_upload_with_trailers(how: str) -> None:
    _core, found = feed(
        b"PUT /f HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 1\r\n\r\n",
        how,
    )
    request = found[0]
    assert isinstance(request, FetchRequest)
    assert request.has_body
    assert request.content_length is None
    assert found[1:] == [RequestBody(b"hello world"), RequestEnd((("x-sum", "1"),))]


@pytest.mark.parametrize("how", ["whole", "bytewise"])
def test_keep_alive_and_pipelined_requests(how: str) -> None:
    core, found = feed(
        b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /3 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok",
        how,
    )
    # The second request waits until the first is answered.
    assert [type(e) for e in found] == [FetchRequest, RequestEnd]
    for path in ("/2", "/3"):
        core.start_response(200, [("content-length", "1")])
        core.send_data(b"x")
        core.end_response()
        following = events_of(core)
        assert isinstance(following[0], FetchRequest)
        assert following[0].url.endswith(path)
    assert following[1:] == [RequestBody(b"ok"), RequestEnd()]
    core.start_response(201, [])
    core.end_response()
    answers = responses(core.data_to_send(), count=3)
    assert [r[0].status_code for r in answers] == [200, 200, 201]  # type: ignore[attr-defined]
    assert not core.closed


def test_chunked_response_when_length_unknown() -> None:
    core, _ = feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", "whole")
    core.start_response(200, [("content-type", "text/plain")])
    core.send_data(b"abc")
    core.send_data(b"defg")
    core.end_response()
    data = core.data_to_send()
    assert b"Transfer-Encoding: chunked" in data
    assert data.endswith(b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")


def test_decoded_body_loses_content_encoding_and_length() -> None:
    core, _ = feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", "whole")
    core.start_response(
        200,
        [("Content-Encoding", "gzip"), ("Content-Length", "20"), ("Connection", "close"),
         ("Transfer-Encoding", "chunked"), ("ETag", '"1"')],
    )  # fmt: skip
    core.send_data(b"decoded text, longer than 20 bytes")
    core.end_response()
    (answer,) = responses(core.data_to_send())
    response = answer[0]
    assert isinstance(response, h11.Response)
    names = [n for n, _ in response.headers]
    assert b"content-encoding" not in names
    assert b"content-length" not in names
    assert (b"etag", b'"1"') in list(response.headers)
    assert b"".join(bytes(e.data) for e in answer if isinstance(e, h11.Data)) == (
        b"decoded text, longer than 20 bytes"
    )
    assert not core.closed


def test_head_keeps_length_and_sends_no_body() -> None:
    core, found = feed(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n", "whole")
    assert isinstance(found[0], FetchRequest)
    assert found[0].method == "HEAD"
    core.start_response(200, [("content-length", "1234")])
    core.end_response()
    data = core.data_to_send()
    assert data == b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n"
    (answer,) = responses(data, method=b"HEAD")
    assert isinstance(answer[-1], h11.EndOfMessage)


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int) -> None:
    core, _ = feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", "whole")
    core.start_response(status, [])
    core.end_response()
    data = core.data_to_send()
    assert b"chunked" not in data
    assert data.endswith(b"\r\n\r\n")
    core.receive_data(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
    assert isinstance(events_of(core)[0], FetchRequest)


def test_expect_100_continue_is_answered_at_once() -> None:
    core = FetchHttp("h", 80)
    core.receive_data(
        b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    found = events_of(core)
    assert isinstance(found[0], FetchRequest)
    assert ("expect", "100-continue") not in found[0].headers
    assert core.data_to_send() == b"HTTP/1.1 100 \r\n\r\n"
    core.receive_data(b"data")
    assert events_of(core) == [RequestBody(b"data"), RequestEnd()]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nBad Header: 1\r\n\r\n",
    ],
)
def test_malformed_request_gets_400_and_close(request_bytes: bytes) -> None:
    core = FetchHttp("h", 80)
    core.receive_data(request_bytes)
    found = events_of(core)
    assert len(found) == 1
    assert isinstance(found[0], ProgramClosed)
    assert core.closed
    data = core.data_to_send()
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"connection: close" in data
    # Nothing more is read from a closed connection.
    core.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert events_of(core) == []


def test_oversized_head_gets_431() -> None:
    core = FetchHttp("h", 80, max_incomplete_event_size=1024)
    # h11 measures a head that is still incomplete.
    core.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 2000)
    assert isinstance(events_of(core)[0], ProgramClosed)
    assert core.data_to_send().startswith(b"HTTP/1.1 431 ")


@pytest.mark.parametrize(
    ("request_bytes", "words"),
    [
        (b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n", b"CONNECT"),
        (b"TRACE / HTTP/1.1\r\nHost: h\r\n\r\n", b"TRACE"),
        (b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", b"'*'"),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc", b"body with GET"),
    ],
)
def test_what_fetch_cannot_do_gets_501_and_the_connection_lives(
    request_bytes: bytes, words: bytes
) -> None:
    core = FetchHttp("h", 80)
    core.receive_data(request_bytes + b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n")
    found = events_of(core)
    data = core.data_to_send()
    assert data.startswith(b"HTTP/1.1 501 Not Implemented\r\n")
    assert words in data
    assert b"x-netshim-fetch-error: " in data
    assert isinstance(found[0], FetchRequest)
    assert found[0].url == "http://h/after"


def test_error_response_for_a_request_fetch_failed() -> None:
    core, _ = feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n", "whole")
    core.error_response(502, "fetch failed")
    (answer,) = responses(core.data_to_send())
    assert answer[0].status_code == 502  # type: ignore[attr-defined]
    assert isinstance(events_of(core)[0], FetchRequest)


def test_connection_close_ends_after_the_response() -> None:
    core, _ = feed(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", "whole")
    core.start_response(200, [])
    core.send_data(b"bye")
    core.end_response()
    assert core.closed
    data = core.data_to_send()
    assert b"Connection: close\r\n" in data
    assert data.endswith(b"3\r\nbye\r\n0\r\n\r\n")


def test_http10_client_gets_a_close_delimited_body() -> None:
    core, _ = feed(b"GET / HTTP/1.0\r\n\r\n", "whole")
    core.start_response(200, [])
    core.send_data(b"old")
    core.end_response()
    assert core.closed
    assert b"chunked" not in core.data_to_send()


def test_program_closing_between_requests_and_half_close() -> None:
    core, _ = feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", "whole")
    # Half-close after the request: the response can still be sent.
    core.receive_data(b"")
    assert isinstance(events_of(core)[-1], ProgramClosed)
    core2 = FetchHttp("h", 80)
    core2.receive_data(b"")
    assert isinstance(events_of(core2)[0], ProgramClosed)


def test_closing_mid_request_is_reported() -> None:
    core = FetchHttp("h", 80)
    core.receive_data(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
    assert [type(e) for e in events_of(core)] == [FetchRequest, RequestBody]
    core.receive_data(b"")
    assert isinstance(events_of(core)[0], ProgramClosed)
    assert core.closed
