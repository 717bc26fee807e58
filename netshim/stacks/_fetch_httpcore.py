"""httpcore (httpx) straight onto FetchStack streams, without asyncio's transport.

httpx's async client reaches the network through httpcore's default network
backend, which under asyncio is anyio's: ``anyio.connect_tcp`` over the
event loop's ``create_connection`` (netshim's loop hooks and their
transport), then one ``anyio.fail_after(timeout)`` around every read and
write.  Over a :class:`~netshim.stacks.fetch.FetchStream` in Pyodide each
64 KiB read of a response body then cost, beyond httpcore and h11 (Pyodide
0.29 under Node, a 10 MiB download):

* a timer: ``fail_after`` schedules the read's 5 s timeout (httpx's
  default) on the loop, and Pyodide's ``WebLoop`` makes each one a
  JavaScript ``setTimeout`` with a callable made for it, which still calls
  into Python when it fires, long after the read was done (163 timers per
  10 MiB);
* a trip round the event loop: anyio's stream takes a checkpoint when data
  is already queued, and the transport's reader task is woken to refill the
  queue (each turn a JavaScript task and a call into Python).

Yet the body is nearly always there already: JavaScript reads it ahead
(:data:`~netshim.stacks.fetch.READ_AHEAD`), and a FetchStream hands it over
without waiting.  So :func:`install` (called by the first
:class:`~netshim.stacks.fetch.FetchStack`) puts a short way in front of
httpcore's ``AutoBackend.connect_tcp``: a connection that the acting stack
sends to a FetchStack (directly, or through a ``RouterStack``'s routes) is
the FetchStream itself behind a :class:`FetchNetworkStream`, which reads and
writes it directly.  A read or write that will not wait needs no timeout; one
that waits (for fetch's answer, or for the network) is watched by one timer
per stream (:class:`_Watchdog`), not one per wait.  Its exceptions are the ones httpcore's
anyio backend raises, with the same causes (``httpx.ReadError`` caused by the
``ConnectionRefusedError`` of a CORS refusal or the ``ConnectionResetError``
of a body cut off).  Every other connection (another stack, trio, a local
address, netshim not installed, ``FetchStack(direct_httpcore=False)``) goes
the usual way.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import anyio
import httpcore
from httpcore._backends.auto import AutoBackend

from ._fetch_tls import BrowserTlsObject, settled

if TYPE_CHECKING:
    from .fetch import FetchStack, FetchStream

__all__ = ["FetchNetworkStream", "install"]

_installed: list[Any] = []
_T = TypeVar("_T")


class FetchNetworkStream(httpcore.AsyncNetworkStream):
    """httpcore's view of a :class:`~netshim.stacks.fetch.FetchStream`, with no transport."""

    def __init__(self, stream: FetchStream) -> None:
        self.stream = stream
        self._tls: BrowserTlsObject | None = None
        self._watchdog = _Watchdog()

    def __repr__(self) -> str:
        return f"<FetchNetworkStream {self.stream!r}>"

    async def read(
        self,
        max_bytes: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
    ) -> bytes:
        stream = self.stream
        try:
            if timeout is None or stream.receive_ready():
                # Answered without waiting: no timeout to watch.
                return await stream.receive(max_bytes)
            return await self._watchdog.run(stream.receive(max_bytes), timeout)
        except anyio.EndOfStream:
            return b""
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(exc) from exc
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise httpcore.ReadError(exc) from exc
        except OSError as exc:
            _raise_broken(exc, httpcore.ReadError)

    async def write(
        self,
        buffer: bytes,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
    ) -> None:
        if not buffer:
            return
        stream = self.stream
        try:
            if timeout is None or stream.send_ready():
                await stream.send(buffer)
            else:
                await self._watchdog.run(stream.send(buffer), timeout)
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(exc) from exc
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise httpcore.WriteError(exc) from exc
        except OSError as exc:
            _raise_broken(exc, httpcore.WriteError)

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
    ) -> httpcore.AsyncNetworkStream:
        """The browser does TLS: the stream's URLs become ``https``, no handshake here."""
        stream = self.stream
        stream.assume_tls()
        settled(stream.host, stream)
        name = server_hostname.decode() if isinstance(server_hostname, bytes) else server_hostname
        self._tls = BrowserTlsObject.opened(ssl_context, name or stream.host)
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._tls
        if info == "client_addr":
            return self.stream.local_address
        if info == "server_addr":
            return self.stream.remote_address
        if info == "is_readable":
            # Asked of an idle pooled connection: readable only if it ended
            # (or failed), which is what a server's close looks like.
            return self.stream.closed or self.stream.output.ready
        return None


class _Watchdog:
    """The timeouts of one stream's waiting reads and writes, with one loop timer at most.

    ``anyio.fail_after`` schedules a timer per call, and Pyodide's ``WebLoop``
    makes each a JavaScript ``setTimeout`` with a callable of its own, which
    calls into Python when it fires, cancelled or not.  Here a wait notes its
    deadline; the one timer, when it fires, cancels the wait under way if
    its deadline passed, moves itself to that deadline if not, and stops if
    none is under way.  A download that waits for the network every other
    64 KiB read arms it about once per timeout (httpx's 5 s) instead of once
    per wait.  The cancellation is the task's own (``Task.cancel``), as
    anyio's cancel scopes do it, taken back (``uncancel``) and raised as
    ``TimeoutError`` where the wait began.
    """

    __slots__ = ("_deadline", "_expired", "_task", "_timer", "_timer_at")

    def __init__(self) -> None:
        self._timer: asyncio.Handle | None = None
        self._timer_at = math.inf
        self._task: asyncio.Task[Any] | None = None
        self._deadline = math.inf
        self._expired = False

    async def run(self, waiting: Coroutine[Any, Any, _T], seconds: float) -> _T:
        """Await ``waiting``; ``TimeoutError`` once ``seconds`` passed first."""
        task = asyncio.current_task()
        if task is None or self._task is not None:
            # Not in a task, or a second wait at once on this stream: the usual way.
            with anyio.fail_after(seconds):
                return await waiting
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        self._task, self._deadline, self._expired = task, deadline, False
        if self._timer_at > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._arm(loop, deadline)
        try:
            return await waiting
        except asyncio.CancelledError:
            if self._expired and task.uncancel() == 0:
                raise TimeoutError from None
            raise
        finally:
            self._task = None

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._timer_at = when
        self._timer = loop.call_at(when, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer, self._timer_at = None, math.inf
        task = self._task
        if task is None:
            return
        if loop.time() >= self._deadline:
            self._expired = True
            task.cancel()
        else:
            self._arm(loop, self._deadline)


def _raise_broken(exc: OSError, kind: type[Exception]) -> NoReturn:
    """Raise httpcore's ``kind`` for a stream that failed with ``exc``, as anyio's stream has it.

    Caused by (and raised while handling) anyio's ``BrokenResourceError``,
    itself caused by ``exc``: httpcore's pool re-raises its errors ``from
    None``, so a program finds the socket's error through ``__context__``.
    """
    try:
        raise anyio.BrokenResourceError from exc
    except anyio.BrokenResourceError as broken:
        raise kind(broken) from broken


def _fetch_stack_for(host: str, port: int) -> FetchStack | None:
    """The FetchStack that a connection to ``host:port`` from this task goes to, if any."""
    from ..aio._hooks import _acting_stack
    from .fetch import FetchStack

    stack: Any = _acting_stack()
    try:
        # A RouterStack (FetchStack.for_origins) names the stack per destination.
        while stack is not None and hasattr(stack, "route"):
            stack = stack.route(host, port)
    except Exception:
        return None  # a bad destination: the usual way reports it
    if isinstance(stack, FetchStack) and stack.direct_httpcore:
        return stack
    return None


def install() -> None:
    """Put the short way in front of httpcore's ``AutoBackend.connect_tcp`` (idempotent)."""
    if _installed:
        return
    original = AutoBackend.connect_tcp
    _installed.append(original)

    async def connect_tcp(
        self: AutoBackend,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        async def the_usual_way() -> httpcore.AsyncNetworkStream:
            return await original(
                self,
                host,
                port,
                timeout=timeout,
                local_address=local_address,
                socket_options=socket_options,
            )

        stack = _fetch_stack_for(host, port) if local_address is None else None
        if stack is None or _async_library() != "asyncio":
            return await the_usual_way()
        from .fetch import FetchStream

        try:
            with anyio.fail_after(timeout):
                stream = await stack.connect_tcp(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(exc) from exc
        except OSError as exc:
            raise httpcore.ConnectError(exc) from exc
        if not isinstance(stream, FetchStream):
            # A wrapped connect_tcp that answers with another kind of stream.
            await stream.aclose()
            return await the_usual_way()
        return FetchNetworkStream(stream)

    AutoBackend.connect_tcp = connect_tcp  # type: ignore[method-assign]


def _async_library() -> str:
    import sniffio

    try:
        return str(sniffio.current_async_library())
    except sniffio.AsyncLibraryNotFoundError:
        return ""
