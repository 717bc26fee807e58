"""A client WebSocket on JavaScript's ``WebSocket``, for Pyodide (browsers and Node).

In Pyodide there is no socket to carry a WebSocket of our own making; the
host's ``WebSocket`` (every browser; Node 22 and later, or the ``ws``
package installed as ``globalThis.WebSocket`` on older Node) is the way out.
:class:`JsWebSocket` offers what the tunnel stacks use of
:class:`~netshim.transports.websocket.ClientWebSocket`: ``send(bytes)``,
``receive()`` (``None`` once closed), ``aclose()``, ``subprotocol`` and
``closed``.  Messages arrive through JavaScript callbacks into a queue; sends
wait while the browser's own buffer (``bufferedAmount``) is above a bound,
which is the only backpressure a JavaScript WebSocket exposes.

Every hop through Pyodide's event loop is a JavaScript task and a call from
JavaScript into Python, tens of microseconds each; a redis-py round trip
used to take six of them besides its own.  So the socket also works without
any: :meth:`JsWebSocket.set_message_handler` has each message handed to a
function inside JavaScript's message event (WispStack dispatches it there
and then), and :meth:`JsWebSocket.send_nowait` sends from plain code.  The
futures that ``receive`` waits on are made directly rather than by
``loop.create_future()``, which in Pyodide's loop costs one more hop per
wake-up for its bookkeeping.  A JavaScript WebSocket reads whatever Python
does, so nothing is given up: received messages always had to be held here.

The browser does the TLS of ``wss://`` itself (with its own trust store), so
``wisps://`` works there with no ``ssl`` module in Python.
"""

from __future__ import annotations

import asyncio
import errno
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from .._errors import connection_reset, os_error
from ._url import WebSocketEndpoint

__all__ = ["DEFAULT_SEND_BUFFER", "JsWebSocket", "open_js_websocket"]

# How much may wait in the JavaScript WebSocket's send buffer before send()
# waits: a few Wisp packets, as a kernel socket buffer would hold.
DEFAULT_SEND_BUFFER = 1 << 20
# How often send() looks at bufferedAmount while it waits: JavaScript offers
# no event for "the buffer drained".
DRAIN_POLL_INTERVAL = 0.002
_CONNECTING, _OPEN, _CLOSING, _CLOSED = range(4)

# JavaScript: (handler) => (event) => handler(event.data), made once.
_pass_message_data: Any = None
# JavaScript: a socket's sender that sends only while it is open and answers
# what is buffered then (-1: not open), made once.
_make_sender: Any = None


def _message_data_to(proxy: Any) -> Any:
    """A JavaScript message listener that hands ``proxy`` the message's data alone.

    Given the MessageEvent itself, Python gets a proxy of the event on every
    message only to read ``.data`` through it: about 5 µs a message in
    Chromium, against a property read in JavaScript.
    """
    global _pass_message_data
    if _pass_message_data is None:
        from pyodide.code import run_js  # type: ignore[import-not-found]

        _pass_message_data = run_js("(handler) => (event) => handler(event.data)")
    return _pass_message_data(proxy)


def _sender_for(socket: Any) -> Any:
    """``send(message)`` for ``socket``: -1 if it is not open, else its ``bufferedAmount``.

    One call into JavaScript instead of a ``readyState`` read, a method
    lookup and a call, each of them a crossing.
    """
    global _make_sender
    if _make_sender is None:
        from pyodide.code import run_js

        _make_sender = run_js(
            "(socket) => (message) => {"
            " if (socket.readyState !== 1) return -1;"
            " socket.send(message); return socket.bufferedAmount; }"
        )
    return _make_sender(socket)


class JsWebSocket:
    """An open JavaScript WebSocket carrying binary messages."""

    def __init__(self, socket: Any, url: str) -> None:
        self._socket = socket
        self.url = url
        self._messages: deque[bytes | None] = deque()
        self._handler: Callable[[bytes | None], None] | None = None
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._open: asyncio.Future[None] = self._loop.create_future()
        self._to_js: Any = None
        self._send: Any = None
        # bufferedAmount as the last send (or wait) saw it: JavaScript lowers
        # it as it sends, so this errs on the side of waiting.
        self._buffered = 0
        self._proxies: list[Any] = []
        self._closed = False
        self.close_code: int | None = None
        socket.binaryType = "arraybuffer"
        socket.onopen = self._proxy(self._on_open)
        socket.onmessage = _message_data_to(self._proxy(self._on_message))
        socket.onclose = self._proxy(self._on_close)
        socket.onerror = self._proxy(self._on_error)

    def _proxy(self, handler: Any) -> Any:
        from pyodide.ffi import create_proxy  # type: ignore[import-not-found]

        proxy = create_proxy(handler)
        self._proxies.append(proxy)
        return proxy

    # -- JavaScript callbacks --------------------------------------------------

    def _on_open(self, event: Any) -> None:
        if not self._open.done():
            self._open.set_result(None)

    def _on_message(self, data: Any) -> None:
        # binaryType is "arraybuffer": to_bytes() is one copy (to_py() made two).
        payload = data.encode() if isinstance(data, str) else data.to_bytes()
        if self._handler is not None:
            self._deliver(payload)
            return
        self._messages.append(payload)
        self._wake()

    def _deliver(self, message: bytes | None) -> None:
        assert self._handler is not None
        try:
            self._handler(message)
        except Exception as exc:
            # Raised into JavaScript's event dispatch it would be an uncaught
            # error there (Node ends the process on one).
            self._loop.call_exception_handler(
                {"message": "WebSocket message handler failed", "exception": exc}
            )

    def _on_close(self, event: Any) -> None:
        self.close_code = int(event.code)
        self._closed = True
        if not self._open.done():
            self._open.set_exception(
                os_error(
                    errno.ECONNREFUSED,
                    f"WebSocket to {self.url} failed (close code {event.code})",
                )
            )
        if self._handler is not None:
            self._deliver(None)
        else:
            self._messages.append(None)
            self._wake()
        self._release()

    def _on_error(self, event: Any) -> None:
        # An error is always followed by a close event, which says the rest.
        pass

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _release(self) -> None:
        for name in ("onopen", "onmessage", "onclose", "onerror"):
            setattr(self._socket, name, None)
        for proxy in self._proxies:
            proxy.destroy()
        self._proxies.clear()

    def set_message_handler(self, handler: Callable[[bytes | None], None]) -> None:
        """From now on hand each message to ``handler`` as it arrives, ``None`` at the close.

        Messages already queued go to it at once; :meth:`receive` is then not
        to be used.  ``handler`` runs inside JavaScript's message event: what
        it raises is reported to the loop's exception handler.
        """
        self._handler = handler
        while self._messages:
            self._deliver(self._messages.popleft())

    @property
    def writable(self) -> bool:
        """Whether :meth:`send_nowait` may be called: open, with room in the send buffer."""
        return not self._closed and self._buffered <= DEFAULT_SEND_BUFFER

    def send_nowait(self, data: bytes | memoryview, prefix: bytes = b"") -> None:
        """Hand the message ``prefix + data`` to JavaScript; ``ConnectionResetError`` if closed.

        JavaScript buffers whatever it is given: callers that care about
        memory look at :attr:`writable` first, and :meth:`drain` while
        :attr:`must_drain`, as :meth:`send` does.
        """
        if self._closed:
            raise connection_reset()
        if prefix:
            data = prefix + data
        elif not isinstance(data, bytes):
            data = bytes(data)
        if self._send is None:
            from pyodide.ffi import to_js

            self._to_js = to_js
            self._send = _sender_for(self._socket)
        # A Uint8Array copy of the bytes, and one call to send it.
        buffered = int(self._send(self._to_js(data)))
        if buffered < 0:
            raise connection_reset()
        self._buffered = buffered

    # -- the ClientWebSocket interface -----------------------------------------

    async def wait_open(self) -> None:
        await self._open

    @property
    def subprotocol(self) -> str | None:
        return str(self._socket.protocol) or None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def must_drain(self) -> bool:
        """Whether JavaScript's send buffer is over the bound: :meth:`drain` before sending more."""
        return self._buffered > DEFAULT_SEND_BUFFER and not self._closed

    async def drain(self) -> None:
        """Wait until JavaScript's send buffer is back under the bound (or the socket closed)."""
        # JavaScript has no "drained" event to wait for: polling it is.
        while self._buffered > DEFAULT_SEND_BUFFER and not self._closed:
            await asyncio.sleep(DRAIN_POLL_INTERVAL)
            self._buffered = int(self._socket.bufferedAmount)

    async def send(self, data: bytes, prefix: bytes = b"") -> None:
        """Send one binary message, ``prefix + data``; ``ConnectionResetError`` once closed."""
        self.send_nowait(data, prefix)
        await self.drain()

    async def receive(self) -> bytes | None:
        """The next message, or ``None`` once the WebSocket closed."""
        while not self._messages:
            # Not loop.create_future(): see the module's documentation.
            self._waiter = asyncio.Future(loop=self._loop)
            await self._waiter
        message = self._messages[0]
        if message is None:
            return None  # stays queued: every later call answers None too
        self._messages.popleft()
        return message

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close the WebSocket (idempotent)."""
        if not self._closed and int(self._socket.readyState) in (_CONNECTING, _OPEN):
            self._socket.close(code, reason)
        self._closed = True


async def open_js_websocket(
    endpoint: WebSocketEndpoint,
    *,
    subprotocols: Sequence[str] = (),
    open_timeout: float = 10.0,
) -> JsWebSocket:
    """Open ``endpoint`` with JavaScript's WebSocket and wait until it is open.

    Raises ``ConnectionRefusedError`` when it fails to open (browsers tell
    no more than that) and ``TimeoutError`` after ``open_timeout`` seconds.
    Browsers send no custom headers on a WebSocket, so credentials go in the
    Wisp handshake, not in HTTP.
    """
    import js  # type: ignore[import-not-found]
    from pyodide.ffi import to_js

    constructor = getattr(js, "WebSocket", None)
    if constructor is None:
        raise RuntimeError(
            "this JavaScript runtime has no WebSocket: on Node before 22, install the ws "
            "package and set globalThis.WebSocket to it before loading Pyodide"
        )
    url = endpoint.url
    socket = constructor.new(url, to_js(list(subprotocols)))
    websocket = JsWebSocket(socket, url)
    try:
        async with asyncio.timeout(open_timeout):
            await websocket.wait_open()
    except TimeoutError:
        await websocket.aclose()
        raise os_error(errno.ETIMEDOUT, f"WebSocket to {url} did not open") from None
    return websocket
