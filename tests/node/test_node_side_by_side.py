"""Side by side with Node: each scenario runs in Node and on netshim, and the event logs match.

Every scenario is written twice: once as a Node script using Node's real
``net`` and ``dgram`` on loopback (``tests/node/scenarios/<name>.mjs``, with
``scenarios/_log.mjs``), once here in Python against netshim's API.  Both
print the same log: ``[actor, event, *details]`` entries, where "data" has
its text, "error" ``[code, syscall]`` (``None`` where Node has none), "close"
its ``hadError`` when the event carries one, "message" ``[text, family,
size]``, and scenario-specific markers record what a call returned.

The Python half runs on the host network (``HostStack``, loopback, as Node)
and on a virtual host (``VirtualNetwork``, its own 127.0.0.1), on asyncio and
trio.  Logs are compared actor by actor: the order of events within one
socket (or server) is what Node guarantees; the interleaving of two sockets
is up to the network and the scheduler.  Consecutive "data" entries of an
actor are joined, since TCP does not keep chunk boundaries.

Deliberate differences, also listed in ``docs/node-api.md``, are kept out of
the comparison by giving them an actor of their own (``<actor>.calls``):

* An awaited call *is* Node's callback: ``await sock.end()`` returns after
  "finish" was emitted, where Node calls ``end``'s callback just before; a
  failed ``await sock.write()`` raises after its "error" and "close" were
  emitted, where Node calls the write callback first (all on the next tick).
* ``await server.close()`` on a server that is not running raises at once;
  Node calls that callback with ``ERR_SERVER_NOT_RUNNING`` only when the
  first ``close()`` completes.  And ``server.close()`` is a coroutine run in a
  task: ``listening`` is false once it started (the scenario waits for that),
  where Node's ``close()`` stops listening before it returns.

What the scenarios cover, besides the main flows (``net_connect_data_end_close``,
``net_allow_half_open``, ``net_destroy_with_error``, ``net_reset_and_destroy``,
``net_write_callbacks``, ``net_pause_resume``, ``dgram_send_message_close``,
``dgram_connect``, ``net_connection_refused``, ``net_address_in_use``): a
socket nobody reads still ends and closes, ``getConnections()`` drops and
``server.close()`` completes (``net_unread_socket_ends``,
``net_paused_socket_ends``, ``net_server_close_with_connection``), unread
data holds that back (``net_unread_data_holds_end``, ``net_pause_on_connect``)
and reading stops at the high-water mark (``net_unread_backpressure``);
"timeout" once per idle period (``net_set_timeout``); "finish"; writes after
``end()``, after the peer's end and after ``destroy()``
(``net_write_after_*``); ``setEncoding`` on buffered data
(``net_set_encoding_late``); ``dgram`` bind ``EADDRINUSE`` emitted
(``dgram_bind_address_in_use``), options before bind (``dgram_before_bind``),
everything after close (``dgram_after_close``), lists of strings
(``dgram_send_message_close``) and ``setMulticastInterface``
(``dgram_multicast_interface``).
"""

from __future__ import annotations

import functools
import inspect
import json
import subprocess
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
import pytest

from netshim import HostStack, VirtualNetwork, dgram, net
from netshim._node import EventEmitter
from netshim.stack import Stack
from netshim.testing import require_peer

pytestmark = pytest.mark.anyio

SCENARIO_DIRECTORY = Path(__file__).resolve().parent / "scenarios"
# How long one scenario may take, in Node or in Python (the slowest takes ~1 s).
SCENARIO_TIMEOUT = 20.0


# --- the log -------------------------------------------------------------


def error_of(error: BaseException | None) -> list[Any] | None:
    """``[code, syscall]`` of an error, as ``errorOf`` in ``_log.mjs``."""
    if error is None:
        return None
    return [getattr(error, "code", None), getattr(error, "syscall", None)]


def _text(data: bytes | str) -> str:
    return data.decode() if isinstance(data, bytes) else data


class Log:
    """The Python half of ``scenarios/_log.mjs``."""

    def __init__(self) -> None:
        self.entries: list[list[Any]] = []

    def record(self, actor: str, event: str, *details: Any) -> None:
        self.entries.append([actor, event, *details])

    def watch(self, emitter: EventEmitter, actor: str, events: Iterable[str]) -> None:
        for event in events:
            emitter.on(event, functools.partial(self._seen, actor, event))

    def _seen(self, actor: str, event: str, *args: Any) -> None:
        details: list[Any] = []
        if event == "data":
            details = [_text(args[0])]
        elif event == "error":
            details = [error_of(args[0])]
        elif event == "close":
            details = [args[0]] if args and isinstance(args[0], bool) else []
        elif event == "message":
            data, rinfo = args
            details = [_text(data), rinfo.family, rinfo.size]
        self.record(actor, event, *details)

    async def attempt(self, actor: str, name: str, call: Callable[[], Any]) -> None:
        """Record ``None``, or the error ``call()`` (awaited if need be) raised."""
        try:
            result = call()
            if inspect.isawaitable(result):
                await result
        except OSError as error:
            self.record(actor, name, error_of(error))
        else:
            self.record(actor, name, None)


def by_actor(entries: list[list[Any]]) -> dict[str, list[list[Any]]]:
    """Each actor's events in order, consecutive "data" joined."""
    actors: dict[str, list[list[Any]]] = {}
    for actor, *entry in json.loads(json.dumps(entries)):
        events = actors.setdefault(actor, [])
        if entry[0] == "data" and events and events[-1][0] == "data":
            events[-1] = ["data", events[-1][1] + entry[1]]
        else:
            events.append(entry)
    return actors


def next_event(emitter: EventEmitter, event: str) -> anyio.Event:
    """An event set the next time ``emitter`` emits ``event`` (Node's ``once()`` promise)."""
    seen = anyio.Event()
    emitter.once(event, lambda *args: seen.set())
    return seen


async def wait_until(check: Callable[[], bool]) -> None:
    """Poll ``check`` (every millisecond, for a few seconds at most)."""
    for _ in range(5000):
        if check():
            return
        await anyio.sleep(0.001)
    raise AssertionError("the condition never held")


# --- the Python half of each scenario -------------------------------------------

Scenario = Callable[[Stack, Log], Awaitable[None]]
SCENARIOS: dict[str, Scenario] = {}

SOCKET_EVENTS = ["data", "end", "finish", "close", "error"]
CLIENT_EVENTS = ["connect", "end", "finish", "close", "error"]


def scenario(function: Scenario) -> Scenario:
    SCENARIOS[function.__name__] = function
    return function


def port_of(server: net.Server) -> int:
    address = server.address()
    assert address is not None
    return address.port


@scenario
async def net_connect_data_end_close(stack: Stack, log: Log) -> None:
    def on_connection(sock: net.Socket) -> None:
        log.watch(sock, "server-socket", SOCKET_EVENTS)

        async def echo(chunk: bytes) -> None:
            await sock.write(chunk.decode().upper())

        sock.on("data", echo)

    async with net.create_server(on_connection, stack=stack) as server:
        log.watch(server, "server", ["listening", "connection", "close", "error"])
        await server.listen(0, "127.0.0.1")
        async with net.Socket(stack=stack) as client:
            log.watch(client, "client", ["connect", "ready", "data", *CLIENT_EVENTS[1:]])
            await client.connect(port_of(server), "127.0.0.1")
            await client.write("hello ")
            await client.end("world")
            await client.wait_closed()
            log.record("client", "bytes", client.bytes_read, client.bytes_written)
        await server.close()


@scenario
async def net_unread_socket_ends(stack: Stack, log: Log) -> None:
    server_socket_closed = anyio.Event()

    def on_connection(sock: net.Socket) -> None:
        log.watch(sock, "server-socket", ["end", "finish", "close", "error"])
        sock.once("close", lambda had_error: server_socket_closed.set())

    async with net.create_server(on_connection, stack=stack) as server:
        log.watch(server, "server", ["connection", "close"])
        await server.listen(0, "127.0.0.1")
        async with net.Socket(stack=stack) as client:
            log.watch(client, "client", CLIENT_EVENTS)
            await client.connect(port_of(server), "127.0.0.1")
            await client.end()
            await client.wait_closed()
        await server_socket_closed.wait()
        log.record("server", "connections", server.get_connections())
        await server.close()


@scenario
async def net_unread_data_holds_end(stack: Stack, log: Log) -> None:
    accepted: list[net.Socket] = []

    def on_connection(sock: net.Socket) -> None:
        accepted.append(sock)
        log.watch(sock, "server-socket", ["end", "finish", "close", "error"])

    async with (
        anyio.create_task_group() as group,
        net.create_server(on_connection, stack=stack) as server,
    ):
        log.watch(server, "server", ["connection", "close"])
        await server.listen(0, "127.0.0.1")
        async with net.Socket(stack=stack) as client:
            log.watch(client, "client", ["connect", "data", *CLIENT_EVENTS[1:]])
            await client.connect(port_of(server), "127.0.0.1")
            await client.end("hello")
            await anyio.sleep(0.2)
            log.record("server", "connections", server.get_connections())
            server_closed = next_event(server, "close")
            group.start_soon(server.close)
            await anyio.sleep(0.1)
            log.record("server", "closed yet", server_closed.is_set())
            log.record("server-socket", "adds a data listener")
            log.watch(accepted[0], "server-socket", ["data"])
            await server_closed.wait()
            await accepted[0].wait_closed()
            await client.wait_closed()


@scenario
async def net_unread_backpressure(stack: Stack, log: Log) -> None:
    size = 32 * 1024 * 1024
    accepted: list[net.Socket] = []

    def on_connection(sock: net.Socket) -> None:
        accepted.append(sock)
        log.watch(sock, "server-socket", ["end", "finish", "close", "error"])

    async with (
        anyio.create_task_group() as group,
        net.create_server(on_connection, stack=stack) as server,
        net.Socket(stack=stack) as client,
    ):
        await server.listen(0, "127.0.0.1")
        log.watch(client, "client", CLIENT_EVENTS)
        await client.connect(port_of(server), "127.0.0.1")
        written = anyio.Event()

        async def write_all() -> None:
            await client.end(bytes(size))
            written.set()

        group.start_soon(write_all)
        await anyio.sleep(0.3)
        read = accepted[0].bytes_read
        limit = net.HIGH_WATER_MARK + net.READ_SIZE
        log.record(
            "server-socket", "read some, less than the high-water mark and a read", 0 < read < limit
        )
        log.record("client", "all written", written.is_set())
        total = 0

        def count(chunk: bytes) -> None:
            nonlocal total
            total += len(chunk)

        accepted[0].on("data", count)
        await accepted[0].wait_closed()
        log.record("server-socket", "received everything", total == size)
        await client.wait_closed()
        await server.close()


@scenario
async def net_paused_socket_ends(stack: Stack, log: Log) -> None:
    accepted: list[net.Socket] = []

    def on_connection(sock: net.Socket) -> None:
        accepted.append(sock)
        log.watch(sock, "server-socket", SOCKET_EVENTS)
        sock.pause()
        log.record("server-socket", "paused", sock.is_paused)

    async with net.create_server(on_connection, stack=stack) as server:
        await server.listen(0, "127.0.0.1")
        async with net.Socket(stack=stack) as client:
            log.watch(client, "client", CLIENT_EVENTS)
            await client.connect(port_of(server), "127.0.0.1")
            await client.end()
            await client.wait_closed()
        await wait_until(lambda: bool(accepted))
        await accepted[0].wait_closed()
        await server.close()


@scenario
async def net_pause_on_connect(stack: Stack, log: Log) -> None:
    accepted: list[net.Socket] = []

    def on_connection(sock: net.Socket) -> None:
        accepted.append(sock)
        log.record("server-socket", "paused", sock.is_paused)
        log.watch(sock, "server-socket", SOCKET_EVENTS)

    async with net.create_server(on_connection, pause_on_connect=True, stack=stack) as server:
        await server.listen(0, "127.0.0.1")
        async with net.Socket(stack=stack) as client:
            log.watch(client, "client", CLIENT_EVENTS)
            await client.connect(port_of(server), "127.0.0.1")
            await client.end("hi")
            await anyio.sleep(0.2)
            log.record("server-socket", "resume")
            accepted[0].resume()
            await accepted[0].wait_closed()
            await client.wait_closed()
        await server.close()


@scenario
async def net_pause_resume(stack: Stack, log: Log) -> None:
    accepted: list[net.Socket] = []

    async with anyio.create_task_group() as group:

        def on_connection(sock: net.Socket) -> None:
            accepted.append(sock)
            log.watch(sock, "server-socket", SOCKET_EVENTS)

            async def resume_later() -> None:
                await anyio.sleep(0.3)
                log.record("server-socket", "resume")
                sock.resume()

            def on_first_data(chunk: bytes) -> None:
                sock.pause()
                log.record("server-socket", "paused", sock.is_paused)
                group.start_soon(resume_later)

            sock.once("data", on_first_data)

        async with net.create_server(on_connection, stack=stack) as server:
            await server.listen(0, "127.0.0.1")
            async with net.Socket(stack=stack) as client:
                log.watch(client, "client", CLIENT_EVENTS)
                await client.connect(port_of(server), "127.0.0.1")
                await client.write("one")
                await anyio.sleep(0.1)
                await client.end("two")
                await client.wait_closed()
            await accepted[0].wait_closed()
            await server.close()


@scenario
async def net_set_timeout(stack: Stack, log: Log) -> None:
    accepted: list[net.Socket] = []

    async with anyio.create_task_group() as group:

        def on_connection(sock: net.Socket) -> None:
            accepted.append(sock)
            log.watch(sock, "server-socket", SOCKET_EVENTS)

            async def write_later() -> None:
                await anyio.sleep(0.3)
                await sock.write("x")

            group.start_soon(write_later)

        async with net.create_server(on_connection, stack=stack) as server:
            await server.listen(0, "127.0.0.1")
            async with net.Socket(stack=stack) as client:
                log.watch(client, "client", ["connect", "data", "timeout", *CLIENT_EVENTS[1:]])
                client.set_timeout(0.1)
                await client.connect(port_of(server), "127.0.0.1")
                await anyio.sleep(0.6)
                log.record("client", "writes")
                await client.write("a")
                await anyio.sleep(0.25)
                await client.destroy()
            await accepted[0].wait_closed()
            await server.close()


@scenario
async def net_set_encoding_late(stack: Stack, log: Log) -> None:
    async def on_connection(sock: net.Socket) -> None:
        encoded = "héllo €".encode()
        for index in range(len(encoded)):
            await sock.write(encoded[index : index + 1])
            await anyio.sleep(0.002)
        await sock.end()

    async with (
        net.create_server(on_connection, stack=stack) as server,
        net.Socket(stack=stack) as client,
    ):
        await server.listen(0, "127.0.0.1")
        log.watch(client, "client", CLIENT_EVENTS)
        await client.connect(port_of(server), "127.0.0.1")
        await anyio.sleep(0.1)
        client.set_encoding("utf-8")
        chunks: list[bytes | str] = []
        client.on("data", chunks.append)
        log.watch(client, "client", ["data"])
        await client.wait_closed()
        log.record("client", "all strings", all(isinstance(chunk, str) for chunk in chunks))
        await server.close()


async def _connected_pair(log: Log, server: net.Server, client: net.Socket) -> None:
    await server.listen(0, "127.0.0.1")
    log.watch(client, "client", CLIENT_EVENTS)
    await client.connect(port_of(server), "127.0.0.1")


def _watched_server(stack: Stack, log: Log, accepted: list[net.Socket]) -> net.Server:
    def on_connection(sock: net.Socket) -> None:
        accepted.append(sock)
        log.watch(sock, "server-socket", SOCKET_EVENTS)

    return net.create_server(on_connection, stack=stack)


async def _wait_all_closed(
    server: net.Server, client: net.Socket, accepted: list[net.Socket]
) -> None:
    await client.wait_closed()
    await wait_until(lambda: bool(accepted))
    await accepted[0].wait_closed()
    await server.close()


@scenario
async def net_write_after_end(stack: Stack, log: Log) -> None:
    accepted: list[net.Socket] = []
    async with _watched_server(stack, log, accepted) as server, net.Socket(stack=stack) as client:
        await _connected_pair(log, server, client)
        await client.end()
        log.record("client.calls", "end", None)
        await log.attempt("client.calls", "write", lambda: client.write("late"))
        await _wait_all_closed(server, client, accepted)


@scenario
async def net_write_after_peer_end(stack: Stack, log: Log) -> None:
    done = anyio.Event()

    def on_connection(sock: net.Socket) -> None:
        log.watch(sock, "server-socket", SOCKET_EVENTS)

        async def write_late(had_error: bool) -> None:
            await log.attempt("server-socket.calls", "write", lambda: sock.write("late"))
            done.set()

        sock.on("close", write_late)

    async with (
        net.create_server(on_connection, stack=stack) as server,
        net.Socket(stack=stack) as client,
    ):
        await _connected_pair(log, server, client)
        await client.end()
        await client.wait_closed()
        await done.wait()
        await server.close()


@scenario
async def net_write_after_destroy(stack: Stack, log: Log) -> None:
    accepted: list[net.Socket] = []
    async with _watched_server(stack, log, accepted) as server, net.Socket(stack=stack) as client:
        await _connected_pair(log, server, client)
        await client.destroy()
        await log.attempt("client.calls", "write", lambda: client.write("late"))
        await _wait_all_closed(server, client, accepted)


@scenario
async def net_write_callbacks(stack: Stack, log: Log) -> None:
    accepted: list[net.Socket] = []
    async with _watched_server(stack, log, accepted) as server, net.Socket(stack=stack) as client:
        await _connected_pair(log, server, client)
        await log.attempt("client.calls", "write 1", lambda: client.write("1"))
        await log.attempt("client.calls", "write 2", lambda: client.write("2"))
        await log.attempt("client.calls", "end", lambda: client.end("3"))
        await _wait_all_closed(server, client, accepted)


@scenario
async def net_allow_half_open(stack: Stack, log: Log) -> None:
    accepted: list[net.Socket] = []

    def on_connection(sock: net.Socket) -> None:
        accepted.append(sock)
        log.watch(sock, "server-socket", SOCKET_EVENTS)
        received: list[str] = []
        sock.on("data", lambda chunk: received.append(_text(chunk)))

        async def reply() -> None:
            log.record("server-socket", "readyState", sock.ready_state)
            await sock.write("got " + "".join(received))
            await sock.end()

        sock.on("end", reply)

    async with (
        net.create_server(on_connection, allow_half_open=True, stack=stack) as server,
        net.Socket(stack=stack) as client,
    ):
        await server.listen(0, "127.0.0.1")
        log.watch(client, "client", ["connect", "data", *CLIENT_EVENTS[1:]])
        await client.connect(port_of(server), "127.0.0.1")
        await client.end("question")
        log.record("client.calls", "readyState", client.ready_state)
        await _wait_all_closed(server, client, accepted)


@scenario
async def net_destroy_with_error(stack: Stack, log: Log) -> None:
    accepted: list[net.Socket] = []

    def on_connection(sock: net.Socket) -> None:
        accepted.append(sock)
        log.watch(sock, "server-socket", SOCKET_EVENTS)

        async def fail(chunk: bytes) -> None:
            await sock.destroy(RuntimeError("boom"))

        sock.on("data", fail)

    async with (
        net.create_server(on_connection, stack=stack) as server,
        net.Socket(stack=stack) as client,
    ):
        await _connected_pair(log, server, client)
        await client.write("x")
        await _wait_all_closed(server, client, accepted)


@scenario
async def net_reset_and_destroy(stack: Stack, log: Log) -> None:
    accepted: list[net.Socket] = []
    async with _watched_server(stack, log, accepted) as server, net.Socket(stack=stack) as client:
        await _connected_pair(log, server, client)
        await anyio.sleep(0.05)
        await client.reset_and_destroy()
        await _wait_all_closed(server, client, accepted)


@scenario
async def net_connection_refused(stack: Stack, log: Log) -> None:
    async with net.create_server(stack=stack) as probe:
        await probe.listen(0, "127.0.0.1")
        port = port_of(probe)
        await probe.close()
    async with net.Socket(stack=stack) as client:
        log.watch(client, "client", ["connect", "ready", *CLIENT_EVENTS[1:]])
        client.on(
            "error",
            lambda error: log.record(
                "client", "error target", (error.address, error.port) == ("127.0.0.1", port)
            ),
        )
        with pytest.raises(ConnectionRefusedError):
            await client.connect(port, "127.0.0.1")
        await client.wait_closed()


@scenario
async def net_address_in_use(stack: Stack, log: Log) -> None:
    async with net.create_server(stack=stack) as first, net.create_server(stack=stack) as second:
        await first.listen(0, "127.0.0.1")
        port = port_of(first)
        log.watch(second, "second", ["listening", "error", "close"])
        second.on(
            "error",
            lambda error: log.record(
                "second", "error target", (error.address, error.port) == ("127.0.0.1", port)
            ),
        )
        with pytest.raises(OSError):
            await second.listen(port, "127.0.0.1")
        log.record("second", "listening?", second.listening)
        await first.close()


@scenario
async def net_server_close_with_connection(stack: Stack, log: Log) -> None:
    accepted: list[net.Socket] = []

    def on_connection(sock: net.Socket) -> None:
        accepted.append(sock)
        log.watch(sock, "server-socket", SOCKET_EVENTS)

    async with (
        anyio.create_task_group() as group,
        net.create_server(on_connection, stack=stack) as server,
    ):
        log.watch(server, "server", ["connection", "close", "error"])
        async with net.Socket(stack=stack) as client:
            accepted_event = next_event(server, "connection")
            await _connected_pair(log, server, client)
            port = port_of(server)
            await accepted_event.wait()
            log.record("server", "connections", server.get_connections())
            closed = anyio.Event()

            async def close() -> None:
                await log.attempt("server.calls", "close", server.close)
                closed.set()

            group.start_soon(close)
            await wait_until(lambda: not server.listening)
            log.record("server", "listening?", server.listening)
            await log.attempt("server.calls2", "close again", server.close)
            await anyio.sleep(0.05)  # close() has closed the listener by now

            async with net.Socket(stack=stack) as late:
                log.watch(late, "late-client", ["connect", "close", "error"])
                with pytest.raises(ConnectionRefusedError):
                    await late.connect(port, "127.0.0.1")
                await late.wait_closed()

            await client.end()
            await closed.wait()
            await accepted[0].wait_closed()
            await client.wait_closed()


@scenario
async def dgram_send_message_close(stack: Stack, log: Log) -> None:
    async with dgram.create_socket("udp4", stack=stack) as receiver:
        log.watch(receiver, "receiver", ["listening", "message", "close", "error"])
        await receiver.bind(0, "127.0.0.1")
        port = receiver.address()["port"]
        async with dgram.create_socket("udp4", stack=stack) as sender:
            log.watch(sender, "sender", ["listening", "close", "error"])
            messages: list[Any] = ["plain", ["ab", b"cd"], ["he", "llo"]]
            for message in messages:
                received = next_event(receiver, "message")
                size = await sender.send(message, port, "127.0.0.1")
                log.record("sender.calls", "send", None, size)
                await received.wait()
            await sender.close()
        await receiver.close()


@scenario
async def dgram_bind_address_in_use(stack: Stack, log: Log) -> None:
    first = dgram.create_socket("udp4", stack=stack)
    await first.bind(0, "127.0.0.1")
    port = first.address()["port"]
    second = dgram.create_socket("udp4", stack=stack)
    log.watch(second, "second", ["listening", "error", "close"])
    second.on(
        "error",
        lambda error: log.record(
            "second", "error target", (error.address, error.port) == ("127.0.0.1", port)
        ),
    )
    with pytest.raises(OSError):
        await second.bind(port, "127.0.0.1")
    await second.bind(0, "127.0.0.1")
    await second.close()
    await first.close()


@scenario
async def dgram_before_bind(stack: Stack, log: Log) -> None:
    sock = dgram.create_socket("udp4", stack=stack)
    calls: list[tuple[str, Callable[[], Any]]] = [
        ("setBroadcast", lambda: sock.set_broadcast(True)),
        ("setTTL", lambda: sock.set_ttl(5)),
        ("setMulticastTTL", lambda: sock.set_multicast_ttl(5)),
        ("setMulticastLoopback", lambda: sock.set_multicast_loopback(False)),
        ("setMulticastInterface", lambda: sock.set_multicast_interface("127.0.0.1")),
        ("setRecvBufferSize", lambda: sock.set_recv_buffer_size(4096)),
        ("getRecvBufferSize", sock.get_recv_buffer_size),
        ("setSendBufferSize", lambda: sock.set_send_buffer_size(4096)),
        ("getSendBufferSize", sock.get_send_buffer_size),
        ("address", sock.address),
        ("remoteAddress", sock.remote_address),
        ("disconnect", sock.disconnect),
    ]
    for name, call in calls:
        await log.attempt("calls", name, call)
    await sock.bind(0, "127.0.0.1")
    for name, call in [*calls[:4], calls[5], calls[9]]:
        await log.attempt("calls", name, call)
    await sock.close()


@scenario
async def dgram_after_close(stack: Stack, log: Log) -> None:
    sock = dgram.create_socket("udp4", stack=stack)
    log.watch(sock, "socket", ["listening", "close", "error"])
    await sock.bind(0, "127.0.0.1")
    await sock.close()
    await log.attempt("calls", "close", sock.close)
    await log.attempt("calls", "send", lambda: sock.send("x", 9, "127.0.0.1"))
    await log.attempt("calls", "bind", lambda: sock.bind(0))
    await log.attempt("calls", "address", sock.address)


@scenario
async def dgram_connect(stack: Stack, log: Log) -> None:
    async with dgram.create_socket("udp4", stack=stack) as receiver:
        log.watch(receiver, "receiver", ["message", "close", "error"])
        await receiver.bind(0, "127.0.0.1")
        port = receiver.address()["port"]
        sock = dgram.create_socket("udp4", stack=stack)
        log.watch(sock, "socket", ["listening", "connect", "close", "error"])
        await log.attempt("calls", "remoteAddress", sock.remote_address)
        await sock.connect(port, "127.0.0.1")
        log.record("calls", "remote port", sock.remote_address()["port"] == port)
        await log.attempt("calls", "connect again", lambda: sock.connect(port, "127.0.0.1"))
        received = next_event(receiver, "message")
        await sock.send("x")
        await received.wait()
        await log.attempt("calls", "disconnect", sock.disconnect)
        await log.attempt("calls", "remoteAddress", sock.remote_address)
        await log.attempt("calls", "disconnect again", sock.disconnect)
        await sock.close()
        await receiver.close()


@scenario
async def dgram_multicast_interface(stack: Stack, log: Log) -> None:
    async with dgram.create_socket("udp4", stack=stack) as member:
        log.watch(member, "member", ["message", "close", "error"])
        await member.bind(0)
        port = member.address()["port"]
        await member.add_membership("239.1.2.3", "127.0.0.1")
        sender = dgram.create_socket("udp4", stack=stack)
        log.watch(sender, "sender", ["close", "error"])
        await sender.bind(0, "127.0.0.1")
        for name, interface in [
            ("not an address", "nonsense"),
            ("an IPv6 address", "::1"),
            ("not this host", "192.0.2.1"),
            ("any", "0.0.0.0"),
            ("loopback", "127.0.0.1"),
        ]:
            await log.attempt(
                "calls", name, functools.partial(sender.set_multicast_interface, interface)
            )
        received = next_event(member, "message")
        await sender.send("to the group", port, "239.1.2.3")
        await received.wait()
        await sender.close()
        await member.close()


# --- running both halves ---------------------------------------------------------


@functools.cache
def _run_node(program: str, name: str) -> str:
    script = SCENARIO_DIRECTORY / f"{name}.mjs"
    done = subprocess.run(
        [program, str(script)],
        capture_output=True,
        text=True,
        timeout=SCENARIO_TIMEOUT,
        check=False,
        cwd=SCENARIO_DIRECTORY,
    )
    assert done.returncode == 0, f"node {script.name} failed:\n{done.stderr}"
    return done.stdout


@pytest.fixture
def node_log(name: str) -> list[list[Any]]:
    """The scenario's log from Node (run once per test session)."""
    entries: list[list[Any]] = json.loads(_run_node(require_peer("node"), name))
    return entries


def make_stack(network: str) -> Stack:
    if network == "host":
        return HostStack()
    return VirtualNetwork(seed=1).add_host("a")


def test_every_scenario_has_both_halves() -> None:
    scripts = {path.stem for path in SCENARIO_DIRECTORY.glob("*.mjs")} - {"_log"}
    assert scripts == set(SCENARIOS)


@pytest.mark.peer("node")
@pytest.mark.parametrize("network", ["host", "virtual"])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_side_by_side(name: str, network: str, node_log: list[list[Any]]) -> None:
    log = Log()
    with anyio.fail_after(SCENARIO_TIMEOUT):
        await SCENARIOS[name](make_stack(network), log)
    expected = by_actor(node_log)
    seen = by_actor(log.entries)
    assert "harness" not in expected, f"the Node scenario timed out: {node_log}"
    for actor in sorted(expected.keys() | seen.keys()):
        assert seen.get(actor) == expected.get(actor), (
            f"{actor}: netshim (left) differs from Node (right)\n"
            f"netshim: {log.entries}\nnode:    {node_log}"
        )
