"""FetchStack: HTTP(S) from Pyodide through the host's ``fetch``, with no gateway.

A program connected through :class:`FetchStack` gets a stream that behaves
as an HTTP/1.1 server: each request it writes is parsed
(:mod:`netshim.stacks._fetch_http`, sans-I/O: the common request by hand,
the rest with h11), made with the JavaScript ``fetch`` of the browser or of
Node, and the response is written back as HTTP/1.1 with the framing the
request calls for.  Keep-alive and
pipelining hold, so connection pools (httpx, aiohttp, urllib3) reuse the
stream as they would a socket.  So any HTTP client that speaks over a socket
works unmodified, within what fetch allows:

* **Same origin, or CORS.**  A browser sends a cross-origin request only
  where the server's CORS headers allow it, and shows the program only the
  response headers CORS exposes.  A refusal (CORS, DNS, a refused or broken
  connection: browsers tell JavaScript no more than "Failed to fetch") is
  ``ConnectionRefusedError`` from the stream's next ``receive``, as a socket
  reports a failed non-blocking connect.  A body cut off midway is
  ``ConnectionResetError`` after the bytes that came.
* **Headers.**  fetch frames the request itself, so ``Host``,
  ``Connection``, ``Content-Length``, ``Transfer-Encoding`` and ``Expect``
  are ours (answered on the program's side); browsers also refuse
  ``Cookie``, ``Origin``, ``Referer``, ``Accept-Encoding``, ``Sec-*`` and
  ``Proxy-*`` (the browser sends its own cookies): those are left out, with
  one warning per header name on the ``netshim.fetch`` logger.  Responses
  arrive decoded, so ``Content-Encoding`` goes and the body is re-framed.
  ``Set-Cookie`` never reaches a browser program (the browser keeps the
  cookies); trailers are neither sent nor received.
* **Methods.**  ``CONNECT`` (no tunnels), ``TRACE`` and ``TRACK`` are
  answered 501 by the stream with a body that says why.
* **Redirects** are followed by fetch (a browser hides the 3xx from
  JavaScript), so the program sees the final response.
* **TLS** is the browser's: a program that wraps the stream with ``ssl``
  gets a stream marked secure with no handshake (:mod:`netshim.stacks._fetch_tls`),
  and its requests go out as ``https://``.  Certificates are checked by the
  browser against its own trust store.
* **WebSocket**: an upgrade request opens the host's ``WebSocket`` to the
  same URL and is answered 101 once it is open; frames are relayed as
  whole messages (text stays text), pings answered here, closes passed on.
  A failed open is ``ConnectionRefusedError``.
* **Request bodies** are buffered and sent whole (browsers stream a request
  body only over HTTP/2 and later); under Node they stream.  Response
  bodies stream: JavaScript stops reading ahead of the program once
  :data:`READ_AHEAD` (1 MiB) waits, one chunk past it at most (Chromium's
  are up to 2 MiB), which holds the rest back.
* **httpx** (httpcore's default backend under asyncio) is handed the stream
  itself, not a transport over it (:mod:`netshim.stacks._fetch_httpcore`):
  body pieces that JavaScript already read reach it with no loop turn and
  no timer; ``FetchStack(direct_httpcore=False)`` keeps the usual way.
* **Blocking sockets** without JSPI cannot wait for fetch.  In a browser's
  Web Worker they need not: a blocking call stepped by hand
  (:func:`netshim.aio._sync.blocking_call_timeout`) sends its request through
  :attr:`FetchStack.blocking_backend`, a synchronous ``XMLHttpRequest``
  (:class:`XhrFetchBackend`) whose whole response is then handed out; a
  WebSocket upgrade there is answered 501.  Elsewhere such a call raises
  ``CannotBlockError``.

Only TCP through HTTP: :meth:`FetchStack.listen_tcp` and
:meth:`FetchStack.open_udp` raise ``OSError(EOPNOTSUPP)``.  Names are the
browser's to resolve (:attr:`~netshim.Stack.resolves_remotely`).  Route other
destinations elsewhere with :class:`~netshim.stacks.RouterStack` (see
:meth:`FetchStack.for_origins`).
"""

from __future__ import annotations

import errno
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import anyio
import anyio.lowlevel

from .._addresses import Address
from .._errors import os_error
from ..aio._sync import CannotBlockError, blocking_call_timeout
from ..stack import Stack, TcpStream, UdpSocket
from . import _fetch_http as core
from . import _fetch_tls
from ._tunnel import UNKNOWN_LOCAL, ByteBuffer, TunnelStack

__all__ = [
    "BlockingFetchBackend",
    "FetchBackend",
    "FetchResponse",
    "FetchStack",
    "JsFetchBackend",
    "XhrFetchBackend",
]

logger = logging.getLogger("netshim.fetch")

# A buffered request body larger than this fails the send with EMSGSIZE:
# it is held in memory twice (Python's copy and JavaScript's).
DEFAULT_MAX_REQUEST_BODY = 256 * 1024 * 1024
# How long an upgraded connection waits for the host's WebSocket to open.
WEBSOCKET_OPEN_TIMEOUT = 30.0
# How much of a streamed request body may wait for fetch to take it.
STREAMED_BODY_CHUNKS = 8
# The pieces a whole response body (synchronous XHR) is handed out in: the
# program's reads take bytes off the front of one piece at a time.
BUFFERED_PIECE = 64 * 1024


class FetchResponse(Protocol):
    """A response as fetch gave it: status line and headers now, the body by reads.

    It may also have ``ready() -> bool``: whether ``read()`` answers now (a
    piece, the end or the error) without waiting.  One without it is taken
    to wait, which costs a reader with a timeout one timer per read.
    """

    status: int
    reason: str
    headers: list[tuple[str, str]]

    async def read(self) -> bytes | None:
        """The next piece of the (decoded) body; ``None`` at its end.

        Raises ``ConnectionResetError`` when the body was cut off.
        """

    def cancel(self) -> None:
        """Stop the body's download (the program closed before reading it all)."""


class WebSocketChannel(Protocol):
    """A WebSocket the host opened (the browser's), carrying whole messages."""

    #: The subprotocol the server chose, or ``None``.
    protocol: str | None
    #: The close code once closed (1006 when the connection broke).
    close_code: int | None

    def send(self, data: str | bytes) -> None:
        """Send one message (text for ``str``); ``ConnectionResetError`` once closed."""

    async def receive(self) -> str | bytes | None:
        """The next message, or ``None`` once the WebSocket closed."""

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (idempotent)."""


class FetchBackend(Protocol):
    """How requests are made: the JavaScript ``fetch`` (:class:`JsFetchBackend`), or a fake."""

    #: Request headers fetch will not send besides the framing ones.
    forbidden_headers: frozenset[str]
    #: Whether request bodies can be streamed (else they are sent whole).
    streams_uploads: bool

    async def fetch(
        self, request: core.FetchRequest, body: bytes | AsyncIterator[bytes] | None
    ) -> FetchResponse:
        """Make ``request``; ``ConnectionRefusedError`` when fetch fails."""

    async def open_websocket(self, url: str, protocols: tuple[str, ...]) -> WebSocketChannel:
        """Open a WebSocket to ``url``; ``ConnectionRefusedError`` when it fails to open."""


class BlockingFetchBackend(Protocol):
    """Requests made without the event loop: :class:`XhrFetchBackend`, or a fake.

    Used for blocking sockets where Pyodide cannot suspend (no JSPI): the
    call waits for the whole response and returns one whose reads never wait.
    """

    def fetch_blocking(
        self, request: core.FetchRequest, body: bytes | None, timeout: float
    ) -> FetchResponse:
        """Make ``request`` (``timeout`` in seconds, inf for none).

        ``ConnectionRefusedError`` when it fails, ``TimeoutError`` when it
        takes longer than ``timeout``.
        """


class _Exchange:
    """One request on a stream, from its head to the end of its response."""

    __slots__ = ("body", "complete", "remaining", "request", "response", "started", "upload")

    def __init__(self, request: core.FetchRequest | core.WebSocketRequest) -> None:
        self.request = request
        self.body = bytearray()
        self.complete = False
        self.response: FetchResponse | None = None
        self.started: Any = None
        self.upload: Any = None
        # Body bytes still due when the response said (Content-Length, not decoded).
        self.remaining: int | None = None


class FetchStream(TcpStream):
    """A program's connection: HTTP/1.1 in, fetch calls made, HTTP/1.1 out."""

    def __init__(self, stack: FetchStack, host: str, port: int) -> None:
        self.stack = stack
        self.host = host
        self.port = port
        self.http = core.FetchHttp(host, port, forbidden=stack.backend.forbidden_headers)
        self.output = ByteBuffer()
        self.exchange: _Exchange | None = None
        # After a WebSocket upgrade: the host's WebSocket the frames go to.
        self.channel: WebSocketChannel | None = None
        self.closed = False
        self.eof_sent = False
        # Set whenever the program sent something: a receive with nothing
        # to do waits for the next request.  Made only when a receive waits
        # (a client that writes its request before reading needs none).
        self._sent: anyio.Event | None = None
        # Whether the program sent its first bytes (no TLS wrap can start then).
        self._settled = False
        _fetch_tls.expect_tls(host, self)

    def __repr__(self) -> str:
        return f"<FetchStream {self.http!r}>"

    @property
    def secure(self) -> bool:
        """Whether the program wrapped the stream with TLS (its URLs are https)."""
        return self.http.secure

    def assume_tls(self) -> None:
        """Mark the stream secure without the TLS hello (a wrapped synchronous socket)."""
        self.http.secure = True

    @property
    def local_address(self) -> Address:
        return UNKNOWN_LOCAL

    @property
    def remote_address(self) -> Address:
        return (self.host, self.port)

    # -- from the program --------------------------------------------------

    async def send(self, item: bytes) -> None:
        if self.closed:
            raise anyio.ClosedResourceError
        if self.eof_sent:
            raise os_error(errno.EPIPE, "send() after send_eof()")
        if self.output.error is not None:
            # The failure is the receiving side's to report; a socket whose
            # connection failed answers later sends with EPIPE.
            raise os_error(errno.EPIPE, f"the connection failed: {self.output.error.strerror}")
        if not self._settled:
            self._settled = True
            _fetch_tls.settled(self.host, self)
        self.http.receive_data(bytes(item))
        await self._take_events()
        self._wake()

    async def send_eof(self) -> None:
        if self.closed:
            raise anyio.ClosedResourceError
        if not self.eof_sent:
            self.eof_sent = True
            self.http.receive_data(b"")
            await self._take_events()
            self._wake()

    def _wake(self) -> None:
        self._collect()
        sent, self._sent = self._sent, None
        if sent is not None:
            sent.set()

    def _collect(self) -> None:
        """Move what the core wrote for the program into the output."""
        data = self.http.data_to_send()
        if data:
            self.output.push(data)
        if self.http.closed and self.exchange is None:
            self.output.eof = True

    async def _take_events(self) -> None:
        while True:
            event = self.http.next_event()
            if event is core.NEED_DATA:
                return
            if isinstance(event, core.WebSocketRequest):
                self.exchange = _Exchange(event)
            elif isinstance(event, core.WebSocketMessage):
                if self.channel is not None:
                    self.channel.send(event.data)
            elif isinstance(event, core.WebSocketClose):
                if self.channel is not None:
                    self.channel.close(1000 if event.code in (1005, 1006) else event.code)
            elif isinstance(event, core.FetchRequest):
                self.exchange = _Exchange(event)
                for name in event.dropped:
                    self.stack._warn_dropped(name)
                if (
                    event.has_body
                    and self.stack.backend.streams_uploads
                    and not self._blocks_alone()
                ):
                    await self._start_streaming(self.exchange, event)
            elif isinstance(event, core.RequestBody):
                exchange = self.exchange
                assert exchange is not None
                if exchange.upload is not None:
                    await exchange.upload[0].send(event.data)
                else:
                    exchange.body += event.data
                    if len(exchange.body) > self.stack.max_request_body:
                        raise os_error(
                            errno.EMSGSIZE,
                            f"a request body above {self.stack.max_request_body} bytes "
                            "(FetchStack.max_request_body) cannot be buffered for fetch",
                        )
            elif isinstance(event, core.RequestEnd):
                exchange = self.exchange
                assert exchange is not None
                exchange.complete = True
                if exchange.upload is not None:
                    await exchange.upload[0].aclose()
                if event.trailers:
                    self.stack._warn_dropped("trailer fields")
            elif isinstance(event, core.ProgramClosed):
                exchange = self.exchange
                if exchange is not None and not exchange.complete:
                    # Closed (or broken off) before its request was whole:
                    # that request is never made, and the stream ends after
                    # what the core answered.
                    self.exchange = None
                    if exchange.started is not None:
                        exchange.started.cancel()
                if self.exchange is None:
                    if self.channel is not None:
                        self.channel.close()
                    self._collect()

    def _blocks_alone(self) -> bool:
        """Whether a blocking call without JSPI is served by the blocking backend now."""
        return blocking_call_timeout() is not None and self.stack.blocking_backend is not None

    async def _start_streaming(self, exchange: _Exchange, request: core.FetchRequest) -> None:
        sender, receiver = anyio.create_memory_object_stream[bytes](STREAMED_BODY_CHUNKS)
        exchange.upload = (sender, receiver)

        async def chunks() -> AsyncIterator[bytes]:
            async with receiver:
                async for chunk in receiver:
                    yield chunk

        import asyncio

        # The fetch runs while the program writes the body: a task of its own.
        exchange.started = asyncio.ensure_future(self.stack.backend.fetch(request, chunks()))
        await anyio.lowlevel.checkpoint()

    def send_ready(self) -> bool:
        """Whether :meth:`send` returns without waiting (no request body is being streamed).

        A streamed body waits for fetch to take its chunks; anything else the
        program writes is parsed on the spot.
        """
        return self.exchange is None or self.exchange.upload is None

    # -- to the program ------------------------------------------------------

    def receive_ready(self) -> bool:
        """Whether :meth:`receive` answers without waiting for fetch or the program.

        True when bytes (or the end, or an error) wait for the program, or
        when the response body has its next piece already read by JavaScript.
        A caller with a timeout needs no timer then (see
        :mod:`netshim.stacks._fetch_httpcore`).
        """
        if self.closed or self.output.ready:
            return True
        exchange = self.exchange
        if exchange is None or self.channel is not None or exchange.response is None:
            return False
        return _ready(exchange.response)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while True:
            if self.closed:
                raise anyio.ClosedResourceError
            if self.output.ready:
                return self.output.take(max_bytes)
            channel = self.channel
            if channel is not None:
                await self._relay(channel)
                self._collect()
                continue
            exchange = self.exchange
            if exchange is None or not (exchange.complete or exchange.started is not None):
                # Waiting for the program's (next) request, as a server would.
                if self._sent is None:
                    self._sent = anyio.Event()
                await self._sent.wait()
                continue
            try:
                await self._advance(exchange)
                # Body pieces JavaScript already holds join the head (up to
                # max_bytes): a small response is then one read.
                while (
                    self.exchange is exchange
                    and exchange.response is not None
                    and self.output.size < max_bytes
                    and _ready(exchange.response)
                ):
                    await self._advance(exchange)
            except CannotBlockError:
                raise
            except OSError as exc:
                self.output.error = exc
                if exchange.response is not None:
                    exchange.response.cancel()
                self.exchange = None
            self._collect()

    async def _relay(self, channel: WebSocketChannel) -> None:
        """One message from the host's WebSocket to the program (or its close)."""
        message = await channel.receive()
        if message is None:
            code = channel.close_code or 1006
            # 1005 and 1006 are never sent in a close frame (RFC 6455 7.4.1).
            self.http.send_websocket_close(1000 if code in (1005, 1006) else code)
            self.channel = None
        else:
            self.http.send_websocket_message(message)

    async def _advance(self, exchange: _Exchange) -> None:
        """One step of the response: its head, one piece of body, or its end."""
        request = exchange.request
        # Set when a blocking socket call is stepped without JSPI: nothing
        # here may then wait for the event loop.
        blocking_timeout = blocking_call_timeout()
        blocking = self.stack.blocking_backend if blocking_timeout is not None else None
        if blocking_timeout is not None and blocking is None:
            raise CannotBlockError("recv", _FETCH_BLOCKING_HINT)
        if isinstance(request, core.WebSocketRequest):
            if blocking is not None:
                # The host's WebSocket opens only while the event loop runs.
                self.http.error_response(
                    501,
                    "a WebSocket cannot be opened from a blocking socket without JSPI "
                    "(the browser opens it only while the event loop runs): use an "
                    "asyncio client (websockets, aiohttp) or run under JSPI",
                )
                self.exchange = None
                await self._take_events()
                return
            self.channel = await self.stack.backend.open_websocket(request.url, request.protocols)
            self.http.accept_websocket(request.key, self.channel.protocol)
            self.exchange = None
            # Frames the program sent right behind its request.
            await self._take_events()
            return
        if exchange.response is None:
            if exchange.started is not None:
                response = await exchange.started
            else:
                body = bytes(exchange.body) if request.has_body else None
                exchange.body = bytearray()
                if blocking is not None:
                    assert blocking_timeout is not None
                    response = blocking.fetch_blocking(request, body, blocking_timeout)
                else:
                    response = await self.stack.backend.fetch(request, body)
            exchange.response = response
            self.http.start_response(response.status, list(response.headers), response.reason)
            exchange.remaining = _declared_length(request.method, response)
            if exchange.remaining == 0:
                await self._end_response()
            return
        chunk = await exchange.response.read()
        if chunk is None:
            await self._end_response()
        else:
            self.http.send_data(chunk)
            if exchange.remaining is not None:
                exchange.remaining -= len(chunk)
                if exchange.remaining <= 0:
                    # The whole declared body came: the program need not wait
                    # for fetch's own end of stream (one more JavaScript read).
                    await self._end_response()

    async def _end_response(self) -> None:
        self.http.end_response()
        self.exchange = None
        # A pipelined request may have waited behind this one.
        await self._take_events()

    # -- closing ---------------------------------------------------------------

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        _fetch_tls.settled(self.host, self)
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            if exchange.response is not None:
                exchange.response.cancel()
            if exchange.upload is not None:
                await exchange.upload[0].aclose()
            if exchange.started is not None and not exchange.started.done():
                exchange.started.cancel()
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self._sent is not None:
            self._sent.set()
        await anyio.lowlevel.checkpoint()

    async def abort(self) -> None:
        await self.aclose()


def _ready(response: FetchResponse) -> bool:
    """Whether ``response.read()`` answers at once (see :class:`FetchResponse`)."""
    ready = getattr(response, "ready", None)
    return ready is not None and bool(ready())


def _declared_length(method: str, response: FetchResponse) -> int | None:
    """The body length the response declares, when its bytes will match it."""
    if method == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200:
        return 0
    length: int | None = None
    for name, value in response.headers:
        lower = name.lower()
        if lower == "content-encoding":
            return None  # fetch decodes: the length is the encoded one
        if lower == "content-length" and value.strip().isdigit():
            length = int(value)
    return length


_FETCH_BLOCKING_HINT = (
    "; in a browser, FetchStack also blocks without JSPI in a dedicated Web Worker "
    "(synchronous XMLHttpRequest): run Pyodide there"
)


def _install_httpcore_path() -> None:
    """httpcore's short way to FetchStack streams, where httpcore is installed."""
    import importlib.util

    if importlib.util.find_spec("httpcore") is None:
        return
    try:
        from . import _fetch_httpcore
    except Exception:  # a broken or unexpected httpcore: the usual way stays
        logger.debug("httpcore's short way to FetchStack is not installed", exc_info=True)
        return
    _fetch_httpcore.install()


def _in_node() -> bool:
    import js  # type: ignore[import-not-found]

    process = getattr(js, "process", None)
    return process is not None and bool(getattr(getattr(process, "versions", None), "node", None))


# JavaScript helpers, made once: each saves several crossings per request.
_js_helpers: Any = None

# How much of a response body JavaScript reads ahead of the program.  fetch
# reads the network only while its body is being read: reading ahead lets
# the next chunks arrive while Python handles the last ones (under Node a
# 10 MiB download spent half its time waiting for reads that asked for one
# chunk at a time).  Once this much waits (one chunk past it at most:
# Chromium hands chunks of up to 2 MiB) the body waits for the program,
# which is its backpressure.
READ_AHEAD = 1024 * 1024
# The most one read hands Python, cut from a chunk without a copy in
# JavaScript: the size httpcore and anyio's streams read, so each piece is
# taken whole (anyio copies both halves of a larger one to split it; with
# 256 KiB pieces a 10 MiB httpx download under Node cost 30% more CPU).
READ_PIECE = 64 * 1024
# How many microtasks the head waits for a body chunk that came with it
# (reading a chunk already queued settles within one or two): a response's
# head is never held for the network.
FIRST_CHUNK_MICROTASKS = 4
# What the helpers' take() answers instead of bytes.
_BODY_WAIT = 0
_BODY_END = 1
# No piece taken ahead (see _JsResponse.ready).
_NOTHING = object()


def _helpers() -> Any:
    global _js_helpers
    if _js_helpers is None:
        from pyodide.code import run_js  # type: ignore[import-not-found]

        _js_helpers = run_js(
            """(function (WAIT, END, READ_AHEAD, FIRST_CHUNK_MICROTASKS) {
  // One response body, read ahead of the program into chunks.
  function pump(body) {
    if (body.reading || body.done || body.error !== undefined || body.size >= READ_AHEAD) return;
    body.reading = true;
    body.reader.read().then(({done, value}) => {
      body.reading = false;
      if (done) body.done = true;
      else if (value.byteLength) { body.chunks.push(value); body.size += value.byteLength; }
      wake(body);
      pump(body);
    }, (error) => {
      body.reading = false;
      body.error = error;
      wake(body);
    });
  }
  function wake(body) {
    const waiter = body.waiter;
    body.waiter = undefined;
    if (waiter !== undefined) waiter();
  }
  return {
    // One call per request: fetch, then the head as [status, statusText,
    // header fields, body, controller].  Header fields cross as one string
    // each way (fetch allows no NUL in them), and the body's first chunk is
    // given the few microtasks it needs when it came with the head, so that
    // a small response reaches Python whole, with no wait for its body.
    async start(url, method, fields, body, redirect, credentials, duplex) {
      const controller = new AbortController();
      const headers = [];
      if (fields) {
        const parts = fields.split("\\0");
        for (let i = 0; i < parts.length; i += 2) headers.push([parts[i], parts[i + 1]]);
      }
      const init = {method, headers, redirect, credentials, signal: controller.signal};
      if (body !== undefined && body !== null) init.body = body;
      if (duplex) init.duplex = "half";
      const response = await fetch(url, init);
      let state;
      if (response.body) {
        state = {reader: response.body.getReader(), chunks: [], size: 0, done: false,
                 error: undefined, reading: false, waiter: undefined};
        pump(state);
        for (let turn = 0; turn < FIRST_CHUNK_MICROTASKS; turn++) {
          if (state.size > 0 || state.done || state.error !== undefined) break;
          await null;
        }
      }
      const out = [];
      for (const [name, value] of response.headers) out.push(name, value);
      return [response.status, response.statusText, out.join("\\0"), state, controller];
    },
    // The next chunk already read (up to max bytes of it); else WAIT (call
    // wait()) or END; throws the body's error once its bytes are taken.
    take(body, max) {
      if (body.size === 0) {
        if (body.error !== undefined) throw body.error;
        return body.done ? END : WAIT;
      }
      let piece = body.chunks[0];
      if (piece.byteLength > max) {
        body.chunks[0] = piece.subarray(max);
        piece = piece.subarray(0, max);
      } else {
        body.chunks.shift();
      }
      body.size -= piece.byteLength;
      pump(body);
      return piece;
    },
    wait(body) {
      if (body.size > 0 || body.done || body.error !== undefined) return Promise.resolve();
      return new Promise((resolve) => { body.waiter = resolve; });
    },
    cancel(body, controller) {
      body.chunks = [];
      body.size = 0;
      body.done = true;
      controller.abort();
    },
    stream(pull) {
      return new ReadableStream({
        async pull(controller) {
          const chunk = await pull();
          if (chunk === undefined || chunk === null) controller.close();
          else controller.enqueue(chunk);
        },
      });
    },
  };
})"""
        )(_BODY_WAIT, _BODY_END, READ_AHEAD, FIRST_CHUNK_MICROTASKS)
    return _js_helpers


class _JsResponse:
    def __init__(self, url: str, head: Any) -> None:
        status, reason, fields, body, controller = head
        self.url = url
        self.status = int(status)
        self.reason = str(reason)
        names_and_values = str(fields).split("\0") if fields else []
        self.headers = list(zip(names_and_values[::2], names_and_values[1::2], strict=True))
        self._body = body
        self._controller = controller
        # What ready() took from JavaScript for the next read(): bytes, the
        # end (None) or the error; _NOTHING when it took nothing.
        self._next: bytes | OSError | object | None = _NOTHING

    def _take(self) -> bytes | OSError | object | None:
        """The next piece, None at the end, the error, or _NOTHING (not there yet)."""
        if self._body is None:
            return None
        try:
            piece = _helpers().take(self._body, READ_PIECE)
        except Exception as exc:
            self._body = None
            return os_error(
                errno.ECONNRESET, f"the body of {self.url} was cut off ({_js_reason(exc)})"
            )
        if isinstance(piece, int):
            if piece == _BODY_END:
                self._body = None
                return None
            return _NOTHING
        data: bytes = piece.to_bytes()
        return data

    def ready(self) -> bool:
        if self._next is _NOTHING:
            self._next = self._take()
        return self._next is not _NOTHING

    async def read(self) -> bytes | None:
        while True:
            piece, self._next = self._next, _NOTHING
            if piece is _NOTHING:
                piece = self._take()
            if piece is _NOTHING:
                await _helpers().wait(self._body)
                continue
            if isinstance(piece, OSError):
                raise piece
            assert piece is None or isinstance(piece, bytes)
            return piece

    def cancel(self) -> None:
        self._next = _NOTHING
        if self._body is not None:
            _helpers().cancel(self._body, self._controller)
            self._body = None


class _BufferedResponse:
    """A whole response (synchronous XHR): its body handed out in pieces, never waiting."""

    def __init__(
        self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self._body = memoryview(body)
        self._offset = 0

    async def read(self) -> bytes | None:
        if self._offset >= len(self._body):
            return None
        start = self._offset
        self._offset = min(start + BUFFERED_PIECE, len(self._body))
        return bytes(self._body[start : self._offset])

    def ready(self) -> bool:
        return True

    def cancel(self) -> None:
        self._offset = len(self._body)


def _parse_header_block(block: str) -> list[tuple[str, str]]:
    """``getAllResponseHeaders()``'s ``name: value`` lines as pairs."""
    headers: list[tuple[str, str]] = []
    for line in block.split("\r\n"):
        name, colon, value = line.partition(":")
        if colon and name.strip():
            headers.append((name.strip().lower(), value.strip()))
    return headers


def xhr_available() -> bool:
    """Whether synchronous ``XMLHttpRequest`` can be made here: Pyodide in a browser's Worker.

    A page's main thread refuses synchronous XHR with a binary response (and
    freezing it would freeze the page); Node and service workers have no XHR.
    """
    if sys.platform != "emscripten":
        return False
    from pyodide.code import run_js

    return bool(
        run_js(
            'typeof XMLHttpRequest === "function" && typeof WorkerGlobalScope !== "undefined"'
            " && self instanceof WorkerGlobalScope"
        )
    )


# The JavaScript side of one synchronous request, made once.
_js_xhr: Any = None


def _xhr() -> Any:
    global _js_xhr
    if _js_xhr is None:
        from pyodide.code import run_js

        _js_xhr = run_js(
            """(function (url, method, headers, body, withCredentials, timeout) {
  const request = new XMLHttpRequest();
  try {
    request.open(method, url, false);
    request.responseType = "arraybuffer";
    request.withCredentials = withCredentials;
    if (timeout > 0) request.timeout = timeout;
    for (const [name, value] of headers) request.setRequestHeader(name, value);
    request.send(body ?? null);
  } catch (error) {
    return [error.name ?? "Error", String(error.message ?? error)];
  }
  const data = request.response ? new Uint8Array(request.response) : new Uint8Array(0);
  return [request.status, request.statusText, request.getAllResponseHeaders(), data];
})"""
        )
    return _js_xhr


class XhrFetchBackend:
    """Blocking requests through synchronous ``XMLHttpRequest`` (a browser's Web Worker).

    Each request waits, with the worker's thread, for its whole response
    (``responseType = "arraybuffer"``): no streaming either way.  The rules
    are fetch's: same origin or CORS, the same forbidden headers, redirects
    always followed.  ``credentials="include"`` sets ``withCredentials``.
    A failure reads no better than fetch's (``NetworkError``): a CORS
    refusal, a refused connection and a body cut off midway all become
    ``ConnectionRefusedError``.
    """

    forbidden_headers = core.BROWSER_FORBIDDEN_HEADERS

    def __init__(self, *, credentials: str = "same-origin") -> None:
        self.credentials = credentials

    def fetch_blocking(
        self, request: core.FetchRequest, body: bytes | None, timeout: float
    ) -> FetchResponse:
        from pyodide.ffi import to_js  # type: ignore[import-not-found]

        milliseconds = 0 if timeout == float("inf") else max(1, round(timeout * 1000))
        answer = _xhr()(
            request.url,
            request.method,
            to_js([list(pair) for pair in request.headers]),
            None if body is None else to_js(body),
            self.credentials == "include",
            milliseconds,
        ).to_py(depth=1)
        if len(answer) == 4 and not 100 <= int(answer[0]) <= 999:
            # No HTTP status (a scheme XHR answers without one): no response to relay.
            answer = ["NetworkError", f"no HTTP status ({answer[0]})"]
        if len(answer) == 2:
            name, message = str(answer[0]), str(answer[1])
            if name == "TimeoutError":
                raise TimeoutError(errno.ETIMEDOUT, "timed out")
            raise os_error(
                errno.ECONNREFUSED,
                f"XMLHttpRequest {request.method} {request.url} failed: {name}: {message} "
                "(browsers say no more: a CORS refusal, a name that does not resolve, a "
                "server that refused or broke the connection, or a body cut off midway; "
                "the browser's console says which)",
            )
        status, reason, header_block, data = answer
        return _BufferedResponse(
            int(status), str(reason), _parse_header_block(str(header_block)), data.to_bytes()
        )


class _JsWebSocketChannel:
    """The host's ``WebSocket`` as a :class:`WebSocketChannel` (text stays text)."""

    def __init__(self, socket: Any, url: str) -> None:
        import asyncio
        from collections import deque

        from pyodide.ffi import create_proxy

        self._socket = socket
        self.url = url
        self.protocol: str | None = None
        self.close_code: int | None = None
        self._loop = asyncio.get_running_loop()
        self._messages: deque[str | bytes | None] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.opened: asyncio.Future[None] = self._loop.create_future()
        self._proxies = [
            create_proxy(self._on_open),
            create_proxy(self._on_message),
            create_proxy(self._on_close),
        ]
        socket.binaryType = "arraybuffer"
        socket.onopen, socket.onmessage, socket.onclose = self._proxies

    def _on_open(self, event: Any) -> None:
        self.protocol = str(self._socket.protocol) or None
        if not self.opened.done():
            self.opened.set_result(None)

    def _on_message(self, event: Any) -> None:
        data = event.data
        self._messages.append(data if isinstance(data, str) else bytes(data.to_bytes()))
        self._wake()

    def _on_close(self, event: Any) -> None:
        self.close_code = int(event.code)
        if not self.opened.done():
            self.opened.set_exception(
                os_error(
                    errno.ECONNREFUSED,
                    f"WebSocket to {self.url} failed (close code {event.code}; browsers "
                    "say no more)",
                )
            )
        self._messages.append(None)
        self._wake()
        self._socket.onopen = self._socket.onmessage = self._socket.onclose = None
        for proxy in self._proxies:
            proxy.destroy()
        self._proxies = []

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def send(self, data: str | bytes) -> None:
        if self.close_code is not None or int(self._socket.readyState) != 1:
            raise os_error(errno.ECONNRESET, f"the WebSocket to {self.url} is closed")
        if isinstance(data, str):
            self._socket.send(data)
        else:
            from pyodide.ffi import to_js

            self._socket.send(to_js(data))

    async def receive(self) -> str | bytes | None:
        import asyncio

        while not self._messages:
            self._waiter = asyncio.Future(loop=self._loop)
            await self._waiter
        message = self._messages[0]
        if message is not None:
            self._messages.popleft()
        return message

    def close(self, code: int = 1000, reason: str = "") -> None:
        # JavaScript's close() takes 1000 or 3000-4999 only.
        if code != 1000 and not 3000 <= code <= 4999:
            code = 1000
        if int(self._socket.readyState) in (0, 1):
            self._socket.close(code, reason[:123])


def _js_reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


class JsFetchBackend:
    """Requests through the JavaScript ``fetch`` of the browser or of Node.

    ``credentials`` and ``redirect`` are fetch's options of those names
    (``"same-origin"`` sends the browser's cookies to the page's origin
    only; ``"include"`` to CORS origins that allow it).  ``stream_uploads``
    streams request bodies (``duplex: "half"``); by default only under
    Node, since browsers stream them only over HTTP/2 and later.
    """

    def __init__(
        self,
        *,
        credentials: str = "same-origin",
        redirect: str = "follow",
        stream_uploads: bool | None = None,
    ) -> None:
        node = _in_node()
        self.credentials = credentials
        self.redirect = redirect
        self.streams_uploads = node if stream_uploads is None else stream_uploads
        # Node's fetch sends whatever it is given; browsers refuse these.
        self.forbidden_headers = frozenset() if node else core.BROWSER_FORBIDDEN_HEADERS

    async def fetch(
        self, request: core.FetchRequest, body: bytes | AsyncIterator[bytes] | None
    ) -> FetchResponse:
        from pyodide.ffi import create_proxy, to_js

        helpers = _helpers()
        pull = None
        js_body: Any = None
        if isinstance(body, bytes):
            js_body = to_js(body)
        elif body is not None:
            iterator = body.__aiter__()

            async def next_chunk() -> Any:
                try:
                    return to_js(await iterator.__anext__())
                except StopAsyncIteration:
                    return None

            pull = create_proxy(next_chunk)
            js_body = helpers.stream(pull)
        fields = "\0".join(part for pair in request.headers for part in pair)
        try:
            head = await helpers.start(
                request.url,
                request.method,
                fields,
                js_body,
                self.redirect,
                self.credentials,
                pull is not None,
            )
        except Exception as exc:
            raise os_error(
                errno.ECONNREFUSED,
                f"fetch {request.method} {request.url} failed: {_js_reason(exc)} (browsers say "
                "no more: a CORS refusal, a name that does not resolve, or a server that "
                "refused or broke the connection; the browser's console says which)",
            ) from None
        finally:
            if pull is not None and body is not None:
                # The body was taken whole once fetch answered.
                pull.destroy()
        return _JsResponse(request.url, head.to_py(depth=1))

    async def open_websocket(self, url: str, protocols: tuple[str, ...]) -> WebSocketChannel:
        """The host's ``WebSocket`` to ``url`` (no custom headers: browsers send none)."""
        return await _open_js_websocket(url, protocols)


async def _open_js_websocket(url: str, protocols: tuple[str, ...]) -> WebSocketChannel:
    import asyncio

    import js
    from pyodide.ffi import to_js

    channel = _JsWebSocketChannel(js.WebSocket.new(url, to_js(list(protocols))), url)
    try:
        async with asyncio.timeout(WEBSOCKET_OPEN_TIMEOUT):
            await channel.opened
    except TimeoutError:
        channel.close()
        raise os_error(errno.ETIMEDOUT, f"the WebSocket to {url} did not open") from None
    return channel


class FetchStack(TunnelStack):
    """TCP connections that speak HTTP/1.1, answered through ``fetch`` (see the module docs).

    ``backend`` makes the requests: :class:`JsFetchBackend` (the default, in
    Pyodide) or any object with its interface (tests use a fake).
    ``direct_httpcore=False`` sends httpx's connections the usual way, through
    the loop hooks' transport and anyio's stream, instead of handing httpcore
    the stream itself (:mod:`netshim.stacks._fetch_httpcore`).
    """

    kind = "fetch"

    def __init__(
        self,
        backend: FetchBackend | None = None,
        *,
        blocking_backend: BlockingFetchBackend | None = None,
        max_request_body: int = DEFAULT_MAX_REQUEST_BODY,
        direct_httpcore: bool = True,
    ) -> None:
        if backend is None:
            if sys.platform != "emscripten":
                raise RuntimeError(
                    "FetchStack needs JavaScript's fetch (Pyodide in a browser or Node); "
                    "elsewhere pass backend="
                )
            backend = JsFetchBackend()
        if blocking_backend is None and xhr_available():
            credentials = getattr(backend, "credentials", "same-origin")
            blocking_backend = XhrFetchBackend(credentials=credentials)
        self.backend = backend
        #: Serves blocking sockets where Pyodide cannot suspend (no JSPI):
        #: synchronous XHR in a Web Worker, else ``None`` (``CannotBlockError``).
        self.blocking_backend = blocking_backend
        self.max_request_body = max_request_body
        #: Whether httpx's async connections to this stack skip asyncio's
        #: transport and anyio's stream (:mod:`netshim.stacks._fetch_httpcore`).
        self.direct_httpcore = direct_httpcore
        self._warned: set[str] = set()
        _fetch_tls.install()
        if direct_httpcore:
            _install_httpcore_path()

    def __repr__(self) -> str:
        return f"FetchStack({type(self.backend).__name__})"

    def _warn_dropped(self, what: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            logger.warning(
                "FetchStack: fetch cannot send %s here; left out of this and later requests",
                what if what == "trailer fields" else f"the {what!r} header",
            )

    @classmethod
    def for_origins(
        cls,
        origins: Sequence[str],
        default: Stack,
        *,
        backend: FetchBackend | None = None,
    ) -> Stack:
        """A :class:`~netshim.stacks.RouterStack`: ``origins`` through fetch, the rest ``default``.

        ``origins`` are ``host`` or ``host:port`` rules (``"example.org"``,
        ``"api.example.org:443"``, ``"*.example.org"``): the page's own
        origin and the CORS origins the program talks to.  In a browser,
        ``"page"`` stands for the page's host and port.
        """
        from .policed import RouterStack

        fetch = cls(backend)
        rules: list[str] = []
        for origin in origins:
            if origin == "page":
                import js

                location = js.location
                port = str(location.port) or ("443" if location.protocol == "https:" else "80")
                host = str(location.hostname)
                rules.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
            else:
                rules.append(origin)
        return RouterStack([(rule, fetch) for rule in rules], default=default)

    async def connect_tcp(
        self, host: str, port: int, *, local_address: tuple[str, int] | None = None
    ) -> TcpStream:
        """A stream to ``host:port`` that answers HTTP/1.1 through fetch.

        Nothing is sent until the program writes a request, so this never
        fails for an unreachable server: its first request does.
        """
        host, port = self.destination(host, port, "connect_tcp")
        if local_address is not None:
            raise os_error(errno.EADDRNOTAVAIL, "a fetch stream cannot bind a local address")
        if port == 0:
            raise os_error(errno.ECONNREFUSED, f"{host}:0")
        await anyio.lowlevel.checkpoint()
        return FetchStream(self, host, port)

    async def open_udp(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        *,
        remote: tuple[str, int] | None = None,
        ipv6_only: bool = False,
    ) -> UdpSocket:
        """Always ``OSError(EOPNOTSUPP)``: fetch carries HTTP only."""
        raise os_error(errno.EOPNOTSUPP, "FetchStack carries HTTP over TCP only: no UDP")
