"""The HTTP/1.1 side of FetchStack, without I/O: a program's requests in, fetch calls out.

A program connected through :class:`~netshim.stacks.fetch.FetchStack` thinks
it speaks HTTP/1.1 to a server.  :class:`FetchHttp` is that server, as a
sans-I/O core on h11 (``receive_data`` / ``next_event`` / ``data_to_send``):
it parses the program's requests (keep-alive, pipelining, chunked uploads,
``Expect: 100-continue``) into :class:`FetchRequest`, :class:`RequestBody`
and :class:`RequestEnd` events, and writes the responses the I/O layer got
from ``fetch`` back as HTTP/1.1 with the framing the program's request calls
for (``Content-Length`` when known, else chunked; none for ``HEAD``, 204 and
304).

What fetch cannot do is answered here, in the program's own protocol, so
that the client reports it as an HTTP failure rather than hanging:
``CONNECT`` (no tunnels through fetch), ``TRACE``/``TRACK`` (forbidden
methods), ``OPTIONS *`` and a body on ``GET``/``HEAD`` get a 501 whose body
says why; a malformed request gets 400 and the connection closes, as a
server's would.  Headers fetch refuses to send (``Host``, ``Connection``,
``Cookie`` ... in browsers) are left out and named in
:attr:`FetchRequest.dropped`, so the I/O layer can say so once.

An upgrade to WebSocket becomes a :class:`WebSocketRequest`; once the I/O
layer has the host's WebSocket open, :meth:`FetchHttp.accept_websocket`
answers 101 and the core switches to RFC 6455 frames: the program's (masked)
frames become :class:`WebSocketMessage` and :class:`WebSocketClose` events,
pings are answered here, and messages from the host go back as frames.

Bodies from fetch are already decoded (fetch undoes ``Content-Encoding``),
so a response that had one loses it and its ``Content-Length`` and goes
chunked.  Hop-by-hop headers are ours to write, never fetch's.

The common request is parsed without h11: a request line and header fields
with nothing unusual (HTTP/1.1, one ``Host``, no body or a single
``Content-Length`` body, no ``Transfer-Encoding``, ``Expect`` or
``Upgrade``), and its response is written by hand with the framing h11
would choose.  Anything else (chunked uploads, upgrades, ``100-continue``,
HTTP/1.0, what fetch cannot send, malformed or oversized heads, a close in
mid-request) hands the connection's unparsed bytes to h11, which serves it
from then on, so every such case gets h11's handling and errors.  Under
Pyodide h11's event machinery was most of FetchStack's own cost per
request.

TLS: the browser does it.  A program that wraps its connection with TLS
(see :mod:`netshim.stacks._fetch_tls`) first sends :data:`TLS_HELLO`; the
core answers :data:`TLS_READY` and builds ``https://`` URLs from then on.
A real TLS ClientHello gets a TLS ``handshake_failure`` alert and the
connection closes.
"""

from __future__ import annotations

import http
import re
from dataclasses import dataclass, field
from typing import Final

import h11

__all__ = [
    "BROWSER_FORBIDDEN_HEADERS",
    "WEBSOCKET_MAX_MESSAGE",
    "WebSocketClose",
    "WebSocketMessage",
    "WebSocketRequest",
    "DEFAULT_MAX_INCOMPLETE_EVENT_SIZE",
    "FRAMING_HEADERS",
    "NEED_DATA",
    "TLS_HELLO",
    "TLS_READY",
    "Event",
    "FetchHttp",
    "FetchRequest",
    "ProgramClosed",
    "RequestBody",
    "RequestEnd",
]

# h11's default for a request line and headers (16 KiB, as node and
# tomcat): a program's request head larger than this gets 431.
DEFAULT_MAX_INCOMPLETE_EVENT_SIZE = 16 * 1024

#: The largest WebSocket message taken from the program (the websockets
#: library's default, and the gateway's): a larger one closes with 1009.
WEBSOCKET_MAX_MESSAGE = 1 << 20
# RFC 6455 section 1.3: what the key is hashed with for Sec-WebSocket-Accept.
_WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: What a program's TLS layer sends instead of a ClientHello: the byte that
#: starts a TLS handshake record, so it is never taken for an HTTP method.
TLS_HELLO: Final = b"\x16netshim-browser-tls/1\r\n"
#: The core's answer: the connection is now "secure" (the browser does TLS).
TLS_READY: Final = b"\x16netshim-browser-tls/1 ready\r\n"
# A TLS record header's first two bytes (handshake, version 3.x).
_TLS_RECORD_START = b"\x16\x03"
# A fatal handshake_failure alert (TLS 1.2 record): what a server without a
# common cipher answers, so the client's TLS layer fails at once.
_TLS_HANDSHAKE_FAILURE = b"\x15\x03\x03\x00\x02\x02\x28"

#: Headers that frame the HTTP/1.1 connection between the program and us;
#: fetch frames its own request, so they are never passed on.
FRAMING_HEADERS: Final = frozenset(
    {
        "connection",
        "content-length",
        "expect",
        "host",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

#: The forbidden request headers of the Fetch standard besides the framing
#: ones: browsers drop them silently (Node's fetch sends them).
BROWSER_FORBIDDEN_HEADERS: Final = frozenset(
    {
        "accept-charset",
        "accept-encoding",
        "access-control-request-headers",
        "access-control-request-method",
        "access-control-request-private-network",
        "cookie",
        "cookie2",
        "date",
        "dnt",
        "origin",
        "referer",
        "set-cookie",
        "via",
    }
)
_FORBIDDEN_PREFIXES = ("proxy-", "sec-")
_FORBIDDEN_METHODS = frozenset({"CONNECT", "TRACE", "TRACK"})
# Response headers that describe the fetch connection, not ours.
_HOP_BY_HOP_RESPONSE = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "trailer", "upgrade"}
)


# The grammar h11 parses with (RFC 9110/9112): a request line with HTTP/1.1,
# and a header field line.  The fast way takes only what these match whole.
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_FIELD_VALUE = rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/1\.1")
_HEADER_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(" + _FIELD_VALUE + rb")[ \t]*")
_FIELD_NAME_ONLY = re.compile(_TOKEN)
_BLANK_LINE = re.compile(rb"\n\r?\n")
_FIELD_VALUE_ONLY = re.compile(_FIELD_VALUE)
# Request fields that need h11: framing and protocol switches it handles.
_FIELDS_FOR_H11 = frozenset({b"transfer-encoding", b"expect", b"upgrade"})
# A Content-Length with more digits goes to h11 (which has its own limit).
_MAX_LENGTH_DIGITS = 18
# Where a request stands on the fast way.
_IDLE, _BODY, _DONE = "IDLE", "SEND_BODY", "DONE"
# The fast writer's body framing: a count of bytes still due, or chunked.
_CHUNKED = -1


class Event:
    """Base of what :meth:`FetchHttp.next_event` returns."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class FetchRequest(Event):
    """A request to make with fetch: its body follows as :class:`RequestBody` events."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    #: Whether a body follows (a ``Content-Length`` above 0, or chunked).
    has_body: bool
    #: The body's length when the program said (``Content-Length``), else ``None``.
    content_length: int | None
    #: Headers the program sent that fetch will not (lower-case names).
    dropped: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class RequestBody(Event):
    data: bytes


@dataclass(frozen=True, slots=True)
class RequestEnd(Event):
    """The request's body is complete; ``trailers`` were sent but fetch cannot pass them on."""

    trailers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ProgramClosed(Event):
    """The program closed its side (or broke the protocol and was answered 400)."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class WebSocketRequest(Event):
    """An upgrade to WebSocket: open ``url`` (``ws://`` or ``wss://``) and accept or refuse."""

    url: str
    protocols: tuple[str, ...]
    key: str


@dataclass(frozen=True, slots=True)
class WebSocketMessage(Event):
    """A whole message from the program: ``str`` for text, ``bytes`` for binary."""

    data: str | bytes


@dataclass(frozen=True, slots=True)
class WebSocketClose(Event):
    """The program's close frame (already answered), with its code and reason."""

    code: int = 1005
    reason: str = ""


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


#: :meth:`FetchHttp.next_event`'s answer when more bytes from the program are needed.
NEED_DATA: Final = _NeedData()


def _frame(opcode: int, payload: bytes) -> bytes:
    """A final, unmasked frame (a server's) carrying ``payload``."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, length))
    elif length < 1 << 16:
        header = bytes((0x80 | opcode, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 127)) + length.to_bytes(8, "big")
    return header + payload


def _unmask(payload: bytes, mask: bytes) -> bytes:
    # One big-integer XOR instead of a Python loop over the bytes.
    if not payload:
        return payload
    repeated = (mask * (len(payload) // 4 + 1))[: len(payload)]
    value = int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")
    return value.to_bytes(len(payload), "big")


def _message(opcode: int, payload: bytes) -> WebSocketMessage:
    return WebSocketMessage(payload.decode("utf-8", "replace") if opcode == 0x1 else payload)


def _header_text(message: str) -> str:
    """``message``'s first line, short and ASCII, fit for a header value."""
    return message.splitlines()[0][:200].encode("ascii", "replace").decode("ascii")


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


class FetchHttp:
    """One program connection's HTTP/1.1, server role (see the module documentation).

    ``host`` and ``port`` are where the program connected: every request's
    URL names them (origin-form targets; an absolute-form target is used as
    given).  ``forbidden`` are the request headers fetch will not send
    besides :data:`FRAMING_HEADERS` (:data:`BROWSER_FORBIDDEN_HEADERS` in
    browsers, none under Node).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        forbidden: frozenset[str] = BROWSER_FORBIDDEN_HEADERS,
        max_incomplete_event_size: int = DEFAULT_MAX_INCOMPLETE_EVENT_SIZE,
    ) -> None:
        self.host = host
        self.port = port
        self.forbidden = forbidden
        self.secure = False
        self._max_head = max_incomplete_event_size
        # h11, once a request needed it: it serves the connection from then on.
        self._h11: h11.Connection | None = None
        # The fast way's state: the program's unparsed bytes, where the
        # search for the head's end resumes, whether the program closed its
        # side (and whether that was reported), where its request stands,
        # the body bytes still due, and whether the connection stays open.
        self._buffer = bytearray()
        self._scanned = 0
        self._eof = False
        self._eof_reported = False
        self._phase = _IDLE
        self._body_left = self._body_length = 0
        self._keep_alive = True
        # Whether the response to the request being read has ended.
        self._answered = False
        # The fast writer's framing of the response under way: bytes due, or _CHUNKED.
        self._writing = 0
        # Pieces for the program, joined only when taken: a body's bytes pass
        # through without a copy when nothing else is waiting.
        self._out: list[bytes] = []
        # Bytes before we know whether a TLS hello starts the stream.
        self._prelude: bytearray | None = bytearray()
        # The request being read: refused ones are read to their end and
        # answered locally instead of becoming events.
        self._refusal: tuple[int, str] | None = None
        self._head_method = ""
        self._closed_reason: str | None = None
        self._responding = False
        # After a WebSocket upgrade: the program's unparsed frame bytes, and
        # the fragments of a message in progress (opcode, pieces).
        self._frames: bytearray | None = None
        self._fragments: tuple[int, list[bytes]] | None = None

    # -- state ------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "https" if self.secure else "http"

    @property
    def closed(self) -> bool:
        """Whether the connection is over: send what is left, then end the stream."""
        return self._closed_reason is not None

    @property
    def responding(self) -> bool:
        """Whether a response was started and not yet ended."""
        return self._responding

    def __repr__(self) -> str:
        if self.closed:
            state = "closed"
        elif self._h11 is not None:
            state = f"{self._h11.their_state}/{self._h11.our_state}"
        else:
            state = f"{self._phase}/{'SEND_BODY' if self._responding else 'IDLE'}"
        return f"<FetchHttp {self.scheme}://{self._authority()} {state}>"

    def _authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.secure else 80
        return host if self.port == default else f"{host}:{self.port}"

    # -- input --------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes the program sent; ``b""`` when it closed its sending side."""
        if self._closed_reason is not None:
            return
        if self._frames is not None:
            if data:
                self._frames += data
            else:
                self._closed_reason = "the program closed the connection"
            return
        if self._prelude is not None:
            if data:
                self._prelude += data
                if not self._sort_prelude() or self._closed_reason is not None:
                    return
                data, self._prelude = bytes(self._prelude), None
                if not data:
                    return
            else:
                # The program closed before its first bytes told anything.
                pending, self._prelude = bytes(self._prelude), None
                self._buffer += pending
        if self._h11 is not None:
            self._h11.receive_data(data)
        elif data:
            self._buffer += data
        else:
            self._eof = True

    def _sort_prelude(self) -> bool:
        """Whether the stream's start is known: a TLS hello (answered), a ClientHello, or HTTP."""
        prelude = self._prelude
        assert prelude is not None
        for marker in (TLS_HELLO, _TLS_RECORD_START):
            if len(prelude) < len(marker) and marker.startswith(bytes(prelude)):
                return False
        if prelude.startswith(TLS_HELLO):
            del prelude[: len(TLS_HELLO)]
            self.secure = True
            self._out.append(TLS_READY)
            return True
        if prelude.startswith(_TLS_RECORD_START):
            self._out.append(_TLS_HANDSHAKE_FAILURE)
            self._closed_reason = (
                "a TLS handshake reached FetchStack, which does not run TLS (the browser "
                "does): wrap the connection with netshim's ssl, which FetchStack recognises"
            )
            prelude.clear()
        return True

    def next_event(self) -> Event | _NeedData:
        """The next thing to do for the program, or :data:`NEED_DATA`."""
        if self._h11 is None:
            if self._closed_reason is not None or self._prelude is not None:
                return NEED_DATA
            fast = self._fast_event()
            if fast is not None:
                return fast
        connection = self._h11
        assert connection is not None
        while True:
            if self._closed_reason is not None:
                return NEED_DATA
            if self._prelude is not None:
                return NEED_DATA
            if self._frames is not None:
                return self._next_frame()
            if connection.their_state is h11.MUST_CLOSE:
                # Bytes after a request that asked to close are never read
                # (RFC 9112 9.6); h11 would take them for a malformed request.
                pending, closed = connection.trailing_data
                if pending and not closed:
                    return NEED_DATA
                if pending:
                    self._closed_reason = "the program closed the connection"
                    return ProgramClosed(self._closed_reason)
            try:
                event = connection.next_event()
            except h11.RemoteProtocolError as exc:
                self._bad_request(exc.error_status_hint, str(exc))
                return ProgramClosed(f"malformed request: {exc}")
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return NEED_DATA
            if isinstance(event, h11.Request):
                translated = self._request(event)
                if translated is not None:
                    return translated
            elif isinstance(event, h11.Data):
                if self._refusal is None:
                    return RequestBody(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                if self._refusal is not None:
                    status, why = self._refusal
                    self._refusal = None
                    self._local_response(status, why)
                    continue
                trailers = tuple(
                    (n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers
                )
                return RequestEnd(trailers)
            elif isinstance(event, h11.ConnectionClosed):
                self._closed_reason = "the program closed the connection"
                return ProgramClosed(self._closed_reason)

    def _fast_event(self) -> Event | _NeedData | None:
        """The next event on the fast way, or ``None`` once h11 took the connection over."""
        buffer = self._buffer
        phase = self._phase
        if phase is _BODY:
            left = self._body_left
            if left == 0:
                self._phase = _DONE
                if self._answered:
                    # The response ended before the request's body did.
                    self._next_cycle()
                return RequestEnd()
            if buffer:
                piece = bytes(buffer[:left])
                del buffer[:left]
                self._body_left = left - len(piece)
                return RequestBody(piece)
            if self._eof:
                message = (
                    "peer closed connection without sending complete message body "
                    f"(received {self._body_length - left} bytes, expected {self._body_length})"
                )
                self._bad_request(400, message)
                return ProgramClosed(f"malformed request: {message}")
            return NEED_DATA
        if phase is _DONE:
            # After a request that asked to close, what follows is never read.
            if self._eof and not self._eof_reported and (not buffer or not self._keep_alive):
                self._eof_reported = True
                self._closed_reason = "the program closed the connection"
                return ProgramClosed(self._closed_reason)
            return NEED_DATA
        if not buffer:
            if self._eof:
                self._eof_reported = True
                self._closed_reason = "the program closed the connection"
                return ProgramClosed(self._closed_reason)
            return NEED_DATA
        # The head ends at a blank line; h11 also takes bare LFs, which it is left to.
        blank = _BLANK_LINE.search(buffer, max(0, self._scanned - 2))
        if blank is None:
            self._scanned = len(buffer)
            if len(buffer) > self._max_head or self._eof or buffer[0] < 0x21:
                self._hand_to_h11()
                return None
            return NEED_DATA
        end = blank.start() - 1
        request = None
        if blank.end() - blank.start() == 3 and end >= 0 and buffer[end] == 0x0D:
            request = self._fast_request(bytes(buffer[:end]))
        if request is None:
            self._hand_to_h11()
            return None
        del buffer[: blank.end()]
        self._scanned = 0
        return request

    def _fast_request(self, head: bytes) -> FetchRequest | None:
        """``head`` as a request when it is of the common kind, else ``None`` (h11's then)."""
        lines = head.split(b"\r\n")
        matched = _REQUEST_LINE.fullmatch(lines[0])
        if matched is None:
            return None
        fields: list[tuple[bytes, bytes]] = []
        hosts = 0
        length: int | None = None
        keep_alive = True
        for line in lines[1:]:
            field_line = _HEADER_LINE.fullmatch(line)
            if field_line is None:
                return None
            name = field_line[1].lower()
            value = field_line[2]
            if name == b"host":
                hosts += 1
            elif name == b"content-length":
                if length is not None or not value.isdigit() or len(value) > _MAX_LENGTH_DIGITS:
                    return None
                length = int(value)
            elif name == b"connection":
                if b"close" in {token.strip().lower() for token in value.split(b",")}:
                    keep_alive = False
            elif name in _FIELDS_FOR_H11:
                return None
            fields.append((name, value))
        if hosts != 1:
            return None
        method = matched[1].decode("ascii")
        translated = self._translate(method, matched[2].decode("ascii"), fields)
        if not isinstance(translated, FetchRequest):
            return None
        self._head_method = method
        self._keep_alive = keep_alive
        self._phase = _BODY
        self._body_left = self._body_length = length or 0
        return translated

    def _hand_to_h11(self) -> None:
        """From now on h11 serves the connection, starting with the bytes not yet parsed."""
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_head)
        self._h11 = connection
        pending = bytes(self._buffer)
        self._buffer = bytearray()
        if pending:
            connection.receive_data(pending)
        if self._eof:
            connection.receive_data(b"")

    def _request(self, event: h11.Request) -> FetchRequest | WebSocketRequest | None:
        connection = self._h11
        assert connection is not None
        self._head_method = event.method.decode("ascii")
        if connection.they_are_waiting_for_100_continue:
            # fetch cannot pass Expect on, and would want the whole body
            # anyway: invite it at once, as a server that accepts would.
            self._out.append(
                connection.send(h11.InformationalResponse(status_code=100, headers=[]))
            )
        translated = self._translate(
            self._head_method, event.target.decode("ascii"), list(event.headers)
        )
        if isinstance(translated, tuple):
            self._refusal = translated
            return None
        return translated

    def _translate(
        self, method: str, target: str, fields: list[tuple[bytes, bytes]]
    ) -> FetchRequest | WebSocketRequest | tuple[int, str]:
        """The request to make for these parts, or the status and reason to refuse it with."""
        headers: list[tuple[str, str]] = []
        dropped: list[str] = []
        content_length: int | None = None
        chunked = False
        forbidden = self.forbidden
        for raw_name, raw_value in fields:
            name = raw_name.decode("ascii")
            value = raw_value.decode("latin-1")
            if name in FRAMING_HEADERS:
                if name == "content-length":
                    content_length = int(value)
                elif name == "transfer-encoding":
                    chunked = True
                continue
            if forbidden and (name in forbidden or name.startswith(_FORBIDDEN_PREFIXES)):
                if name not in dropped:
                    dropped.append(name)
                continue
            headers.append((name, value))
        has_body = chunked or bool(content_length)
        upgrade = next((v for n, v in fields if n == b"upgrade"), b"").lower()
        key = next((v for n, v in fields if n == b"sec-websocket-key"), None)
        if method == "GET" and b"websocket" in upgrade and key is not None:
            protocols = tuple(
                part.strip()
                for n, v in fields
                if n == b"sec-websocket-protocol"
                for part in v.decode("latin-1").split(",")
                if part.strip()
            )
            scheme = "wss" if self.secure else "ws"
            return WebSocketRequest(
                f"{scheme}://{self._authority()}{target}", protocols, key.decode("ascii")
            )
        if method in _FORBIDDEN_METHODS:
            return 501, f"fetch cannot send {method} requests" + (
                " (no tunnels through FetchStack: use a WispStack route for this destination)"
                if method == "CONNECT"
                else " (a forbidden method)"
            )
        if target == "*":
            return 501, "fetch cannot send a request for '*' (asterisk-form)"
        if has_body and method in ("GET", "HEAD"):
            return 501, f"fetch cannot send a body with {method}"
        # An absolute-form target (a program that takes us for a proxy) names its URL.
        url = f"{self.scheme}://{self._authority()}{target}" if target.startswith("/") else target
        return FetchRequest(
            method,
            url,
            tuple(headers),
            has_body,
            None if chunked else content_length,
            tuple(dropped),
        )

    # -- output -------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """The bytes for the program so far (responses, ``100 Continue``, TLS answers)."""
        pieces, self._out = self._out, []
        if len(pieces) == 1:
            return bytes(pieces[0])
        return b"".join(pieces)

    def start_response(self, status: int, headers: list[tuple[str, str]], reason: str = "") -> None:
        """Begin the response to the oldest request: fetch's status and headers.

        Decoded bodies lose ``Content-Encoding`` and ``Content-Length``;
        hop-by-hop headers are dropped: the framing is ours.  Header values
        are written as Latin-1 (fetch's are byte strings).
        """
        decoded = any(name.lower() == "content-encoding" for name, _ in headers)
        kept: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            lower = name.lower()
            if lower in _HOP_BY_HOP_RESPONSE:
                continue
            if decoded and lower in ("content-encoding", "content-length"):
                continue
            kept.append((lower.encode("latin-1"), value.encode("latin-1")))
        phrase = reason.encode("latin-1", "replace") if reason else _reason(status)
        self._start(status, kept, phrase)

    def _start(self, status: int, headers: list[tuple[bytes, bytes]], phrase: bytes) -> None:
        connection = self._h11
        if connection is not None:
            self._out.append(
                connection.send(h11.Response(status_code=status, headers=headers, reason=phrase))
            )
        else:
            self._out.append(self._fast_head(status, headers, phrase))
        self._responding = True

    def _fast_head(self, status: int, headers: list[tuple[bytes, bytes]], phrase: bytes) -> bytes:
        """The response head as h11 would write it, and the framing of the body to follow."""
        if not 200 <= status < 1000:
            raise h11.LocalProtocolError(
                f"Response status_code should be in range [200, 1000), not {status}"
            )
        length: bytes | None = None
        fields: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            if _FIELD_NAME_ONLY.fullmatch(name) is None:
                raise h11.LocalProtocolError(f"Illegal header name {name!r}")
            if _FIELD_VALUE_ONLY.fullmatch(value) is None:
                raise h11.LocalProtocolError(f"Illegal header value {value!r}")
            if name.lower() == b"content-length":
                # As h11 takes it: one value, however often repeated.
                values = {part.strip() for part in value.split(b",")}
                if len(values) != 1:
                    raise h11.LocalProtocolError("conflicting Content-Length headers")
                value = values.pop()
                if not value.isdigit() or len(value) > 20:
                    raise h11.LocalProtocolError("bad Content-Length")
                if length is not None:
                    if value != length:
                        raise h11.LocalProtocolError("conflicting Content-Length headers")
                    continue
                length = value
            fields.append((name, value))
        if status in (204, 304):
            self._writing = 0
        elif length is not None:
            self._writing = int(length)
        else:
            fields.append((b"Transfer-Encoding", b"chunked"))
            self._writing = _CHUNKED
        if self._head_method == "HEAD":
            self._writing = 0
        if not self._keep_alive:
            fields.append((b"Connection", b"close"))
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, phrase)]
        # h11 writes Host first (RFC 9110 asks it of requests; it does it always).
        lines += [b"%s: %s\r\n" % field for field in fields if field[0].lower() == b"host"]
        lines += [b"%s: %s\r\n" % field for field in fields if field[0].lower() != b"host"]
        lines.append(b"\r\n")
        return b"".join(lines)

    def send_data(self, data: bytes) -> None:
        """Part of the response's body (nothing is written for HEAD, 204 and 304)."""
        if not data:
            return
        connection = self._h11
        if connection is not None:
            self._out.extend(connection.send_with_data_passthrough(h11.Data(data=data)) or ())
        elif self._writing == _CHUNKED:
            self._out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self._writing -= len(data)
            if self._writing < 0:
                raise h11.LocalProtocolError("Too much data for declared Content-Length")
            self._out.append(data)

    def end_response(self) -> None:
        """The response is complete: the connection is ready for the next request, or closes."""
        connection = self._h11
        if connection is not None:
            self._out.append(connection.send(h11.EndOfMessage()))
        elif self._writing == _CHUNKED:
            self._out.append(b"0\r\n\r\n")
        elif self._writing != 0:
            raise h11.LocalProtocolError("Too little data for declared Content-Length")
        self._responding = False
        self._next_cycle()

    # -- WebSocket -------------------------------------------------------------

    @property
    def websocket(self) -> bool:
        """Whether the connection was upgraded: frames now, not HTTP."""
        return self._frames is not None

    def accept_websocket(self, key: str, protocol: str | None = None) -> None:
        """Answer the upgrade with 101 (the browser's WebSocket opened); frames from now on."""
        import base64
        import hashlib

        accept = base64.b64encode(hashlib.sha1(key.encode() + _WEBSOCKET_GUID).digest())
        headers = [
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", accept.decode("ascii")),
        ]
        if protocol:
            headers.append(("sec-websocket-protocol", protocol))
        connection = self._h11
        assert connection is not None  # upgrades are h11's
        self._out.append(
            connection.send(h11.InformationalResponse(status_code=101, headers=headers))
        )
        self._frames = bytearray(connection.trailing_data[0])

    def send_websocket_message(self, data: str | bytes) -> None:
        """One message to the program: text for ``str``, binary for ``bytes``."""
        if isinstance(data, str):
            self._out.append(_frame(0x1, data.encode("utf-8")))
        else:
            self._out.append(_frame(0x2, bytes(data)))

    def send_websocket_close(self, code: int = 1000, reason: str = "") -> None:
        """Close the WebSocket towards the program (the browser's closed)."""
        if self._closed_reason is None:
            payload = b"" if code == 1005 else code.to_bytes(2, "big") + reason.encode()[:123]
            self._out.append(_frame(0x8, payload))
            self._closed_reason = f"the WebSocket closed ({code})"

    def _next_frame(self) -> Event | _NeedData:
        buffer = self._frames
        assert buffer is not None
        while True:
            if len(buffer) < 2:
                return NEED_DATA
            first, second = buffer[0], buffer[1]
            opcode, length, offset = first & 0x0F, second & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return NEED_DATA
                length, offset = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                if len(buffer) < 10:
                    return NEED_DATA
                length, offset = int.from_bytes(buffer[2:10], "big"), 10
            if not second & 0x80 or first & 0x70:
                # RFC 6455 5.1 and 5.2: a client masks every frame; no extensions.
                return self._fail_websocket(1002, "an unmasked frame or reserved bits")
            if length > WEBSOCKET_MAX_MESSAGE:
                return self._fail_websocket(1009, "message too big")
            end = offset + 4 + length
            if len(buffer) < end:
                return NEED_DATA
            payload = _unmask(bytes(buffer[offset + 4 : end]), bytes(buffer[offset : offset + 4]))
            del buffer[:end]
            final = bool(first & 0x80)
            if opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                reason = payload[2:].decode("utf-8", "replace")
                self.send_websocket_close(code)
                return WebSocketClose(code, reason)
            if opcode == 0x9:
                self._out.append(_frame(0xA, payload))
                continue
            if opcode == 0xA:
                continue
            if opcode in (0x1, 0x2) and self._fragments is None:
                if final:
                    return _message(opcode, payload)
                self._fragments = (opcode, [payload])
                continue
            if opcode == 0x0 and self._fragments is not None:
                kind, pieces = self._fragments
                pieces.append(payload)
                if sum(map(len, pieces)) > WEBSOCKET_MAX_MESSAGE:
                    return self._fail_websocket(1009, "message too big")
                if final:
                    self._fragments = None
                    return _message(kind, b"".join(pieces))
                continue
            return self._fail_websocket(1002, f"unexpected opcode {opcode:#x}")

    def _fail_websocket(self, code: int, why: str) -> WebSocketClose:
        self.send_websocket_close(code, why)
        return WebSocketClose(code, why)

    def error_response(self, status: int, message: str) -> None:
        """Answer the oldest request locally (before any of its response was sent)."""
        self._local_response(status, message)

    def _local_response(self, status: int, message: str) -> None:
        body = (message.rstrip("\n") + "\n").encode("utf-8")
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
            (b"x-netshim-fetch-error", message.splitlines()[0][:200].encode("ascii", "replace")),
        ]
        self._start(status, headers, _reason(status))
        if self._head_method != "HEAD":
            self.send_data(body)
        self.end_response()

    def _bad_request(self, status: int, message: str) -> None:
        body = f"netshim FetchStack: malformed HTTP request: {message}\n".encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
            (b"connection", b"close"),
        ]
        connection = self._h11
        if connection is None:
            if not self._responding:
                self._out += (self._fast_head(status, headers, _reason(status)), body)
        elif connection.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                self._out.append(
                    connection.send(
                        h11.Response(status_code=status, headers=headers, reason=_reason(status))
                    )
                )
                self._out.append(connection.send(h11.Data(data=body)))
                self._out.append(connection.send(h11.EndOfMessage()))
            except h11.LocalProtocolError:
                pass
        self._closed_reason = f"malformed request: {message}"

    def _next_cycle(self) -> None:
        state = self._h11
        if state is None:
            if self._phase is _BODY:
                # Answered before its body was read: the cycle ends with the body.
                self._answered = True
                return
            self._answered = False
            if not self._keep_alive or self._eof_reported:
                self._closed_reason = "the program's request asked for the connection to close"
            else:
                self._phase = _IDLE
        elif state.our_state is h11.DONE and state.their_state is h11.DONE:
            state.start_next_cycle()
        elif state.our_state in (h11.MUST_CLOSE, h11.CLOSED):
            self._closed_reason = "the program's request asked for the connection to close"
