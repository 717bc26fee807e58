"""A small ASGI server for tests: HTTP/1.1 through h11 on asyncio streams.

Enough of the ASGI 3 HTTP and lifespan specifications for an application
under test to answer real HTTP clients over the virtual network: one request
at a time per connection with keep-alive, the request body in one
``http.request`` message, streamed response bodies, ``http.disconnect``
after the response, and lifespan startup/shutdown when the application
supports it (an application that raises on the lifespan scope is served
without, as uvicorn's ``lifespan="auto"`` does).  No WebSockets, no HTTP/2.
h11 is imported here only, so netshim does not depend on it (httpx brings it).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import h11

__all__ = ["Lifespan", "asgi_connection"]

# Bytes read from the connection at a time.
READ_SIZE = 65536


class Lifespan:
    """The lifespan protocol of one application: startup before serving, shutdown after."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._started = asyncio.Event()
        self._stopped = asyncio.Event()
        self._supported = True
        self._task: asyncio.Task[None] | None = None
        self._failure: str | None = None

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}

        async def send(message: dict[str, Any]) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.failed":
                self._failure = str(message.get("message", ""))
            if kind.startswith("lifespan.startup."):
                self._started.set()
            elif kind.startswith("lifespan.shutdown."):
                self._stopped.set()

        try:
            await self._app(scope, self._messages.get, send)
        except Exception:
            self._supported = False
        finally:
            self._started.set()
            self._stopped.set()

    async def startup(self) -> None:
        """Run the application's startup; ``RuntimeError`` if it reports failure."""
        self._task = asyncio.ensure_future(self._run())
        await self._messages.put({"type": "lifespan.startup"})
        await self._started.wait()
        if self._failure is not None:
            raise RuntimeError(f"the ASGI application failed to start: {self._failure}")

    async def shutdown(self) -> None:
        if self._task is None:
            return
        if self._supported and not self._task.done():
            await self._messages.put({"type": "lifespan.shutdown"})
            await self._stopped.wait()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def _next_event(connection: h11.Connection, reader: asyncio.StreamReader) -> Any:
    while True:
        event = connection.next_event()
        if event is not h11.NEED_DATA:
            return event
        connection.receive_data(await reader.read(READ_SIZE))


async def asgi_connection(
    app: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secure: bool
) -> None:
    """Serve one HTTP/1.1 connection with ``app`` until either side closes it."""
    connection = h11.Connection(h11.SERVER)
    peer = writer.get_extra_info("peername")
    local = writer.get_extra_info("sockname")
    try:
        while True:
            event = await _next_event(connection, reader)
            if not isinstance(event, h11.Request):
                break
            body = b""
            while True:
                part = await _next_event(connection, reader)
                if isinstance(part, h11.Data):
                    body += part.data
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:
                    return
            await _respond(app, connection, writer, event, body, peer, local, secure)
            if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                break
            connection.start_next_cycle()
    except (h11.ProtocolError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _respond(
    app: Any,
    connection: h11.Connection,
    writer: asyncio.StreamWriter,
    request: h11.Request,
    body: bytes,
    peer: Any,
    local: Any,
    secure: bool,
) -> None:
    target = request.target.decode("latin-1")
    path, _, query = target.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": request.http_version.decode(),
        "method": request.method.decode(),
        "scheme": "https" if secure else "http",
        "path": path,
        "raw_path": path.encode("latin-1"),
        "query_string": query.encode("latin-1"),
        "root_path": "",
        "headers": [(name.lower(), value) for name, value in request.headers],
        "client": (peer[0], peer[1]) if peer else None,
        "server": (local[0], local[1]) if local else None,
    }
    delivered = False
    status: list[int] = []
    headers: list[tuple[bytes, bytes]] = []
    finished = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        # Nothing more will come: the request was read whole.  Wait until
        # the response is done, then report the disconnect the spec asks for.
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            status.append(int(message["status"]))
            headers.extend((bytes(k), bytes(v)) for k, v in message.get("headers", []))
        elif kind == "http.response.body":
            if not status:
                raise RuntimeError("http.response.body before http.response.start")
            if connection.our_state is h11.SEND_RESPONSE:
                writer.write(connection.send(h11.Response(status_code=status[0], headers=headers)))
            data = bytes(message.get("body", b""))
            if data:
                writer.write(connection.send(h11.Data(data=data)))
            if not message.get("more_body", False):
                writer.write(connection.send(h11.EndOfMessage()))
                finished.set()
            await writer.drain()

    try:
        await app(scope, receive, send)
    except Exception:
        if connection.our_state is h11.SEND_RESPONSE:
            response = h11.Response(
                status_code=500, headers=[(b"content-length", b"0"), (b"connection", b"close")]
            )
            writer.write(connection.send(response))
            writer.write(connection.send(h11.EndOfMessage()))
            await writer.drain()
        raise
    finally:
        finished.set()
