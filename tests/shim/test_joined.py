"""Two shim sockets of one process joined in connect(): no trip to the engine, same semantics.

A connection from a shim client to a shim listener of the same process, on a
perfect link of a VirtualNetwork nobody observes, is made in the caller's
thread and its two sockets share one kernel socketpair.  These tests count
what reaches the engine and check that such connections still behave as TCP
does: readiness, SO_ERROR, addresses, a full backlog, the FIN and the reset
after a close.
"""

from __future__ import annotations

import asyncio
import errno
import io
import os
import select
import socket
import threading
from collections import Counter
from typing import Any

import pytest
from shim_support import Installed

from netshim.shim import _engine, acting_as


def listening(installed: Installed, port: int, backlog: int = 128) -> socket.socket:
    with acting_as(installed.web):
        server = socket.create_server(("0.0.0.0", port), backlog=backlog)
    server.settimeout(5)
    return server


@pytest.fixture
def engine_work(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """What the program's threads hand to the engine: tasks (calls and spawns) and callbacks."""
    seen: Counter[str] = Counter()
    submit = _engine.Engine._submit
    call_soon = _engine.Engine.call_soon

    def counted_submit(self: _engine.Engine, run: Any) -> None:
        seen["task"] += 1
        submit(self, run)

    def counted_call_soon(self: _engine.Engine, callback: Any, *args: Any) -> None:
        seen[getattr(callback, "__name__", repr(callback))] += 1
        call_soon(self, callback, *args)

    monkeypatch.setattr(_engine.Engine, "_submit", counted_submit)
    monkeypatch.setattr(_engine.Engine, "call_soon", counted_call_soon)
    return seen


def test_blocking_connect_accept_close_never_wait_for_the_engine(
    installed: Installed, engine_work: Counter[str]
) -> None:
    server = listening(installed, 7700)
    socket.create_connection(("10.0.0.2", 7700), timeout=5).close()
    server.accept()[0].close()  # the listener's serving task runs from here on
    engine_work.clear()
    for _ in range(50):
        client = socket.create_connection(("10.0.0.2", 7700), timeout=5)
        # Readable when connect() returns, as a kernel's listener after the handshake.
        assert select.select([server], [], [], 0)[0] == [server]
        conn, address = server.accept()
        assert conn._netshim.splice_partner is client._netshim  # type: ignore[attr-defined]
        assert address == client.getsockname()
        assert conn.getpeername() == client.getsockname()
        assert client.getpeername() == conn.getsockname() == ("10.0.0.2", 7700)
        client.sendall(b"ping")
        assert conn.recv(10) == b"ping"
        client.close()
        assert conn.recv(10) == b""  # the FIN
        conn.close()
    server.close()
    # Where epoll exists nothing is handed over: the kernel watches the ends
    # closed sockets hold (each was released by its peer's close).  Without
    # it, now and then, the engine is asked to watch them.
    assert set(engine_work) <= ({"task"} if _engine._EPOLL else {"_watch_held_later", "task"})
    assert engine_work["task"] <= 1  # the listener's close
    assert not _engine.get_engine()._held


def test_non_blocking_connect_is_in_progress_then_writable_and_connected(
    installed: Installed, engine_work: Counter[str]
) -> None:
    server = listening(installed, 7701)
    socket.create_connection(("10.0.0.2", 7701), timeout=5).close()
    server.accept()[0].close()
    engine_work.clear()
    client = socket.socket()
    client.setblocking(False)
    # As a kernel's non-blocking connect, even on loopback.
    assert client.connect_ex(("10.0.0.2", 7701)) == errno.EINPROGRESS
    assert select.select([], [client], [], 5)[1] == [client]
    assert client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    # Linux answers the first connect() after completion with success, then EISCONN.
    assert client.connect_ex(("10.0.0.2", 7701)) == 0
    assert client.connect_ex(("10.0.0.2", 7701)) == errno.EISCONN
    conn, _ = server.accept()
    assert conn.getpeername() == client.getsockname()
    client.send(b"x")
    assert conn.recv(10) == b"x"
    conn.close()
    client.close()
    server.close()
    assert engine_work["task"] <= 1


def test_asyncio_streams_on_joined_sockets_skip_the_engine(
    installed: Installed, engine_work: Counter[str]
) -> None:
    async def run() -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        with acting_as(installed.web):
            server = await asyncio.start_server(echo, "10.0.0.2", 7702)
        async with server:
            # The first connection may come before the listener's serving task
            # runs; its echo is awaited to the end, so that the server's close
            # of it (through the engine) comes before the count starts.
            reader, writer = await asyncio.open_connection("10.0.0.2", 7702)
            writer.write(b"first\n")
            assert await reader.readline() == b"first\n"
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()
            engine_work.clear()
            for _ in range(5):
                reader, writer = await asyncio.open_connection("10.0.0.2", 7702)
                writer.write(b"hello\n")
                assert await reader.readline() == b"hello\n"
                assert await reader.read() == b""
                writer.close()
                await writer.wait_closed()
            assert engine_work["task"] == 0

    asyncio.run(run())


@pytest.mark.parametrize("bound_first", [False, True], ids=["listen", "bind-listen"])
def test_a_connect_beyond_a_full_backlog_waits_for_room(
    installed: Installed, bound_first: bool
) -> None:
    # Linux keeps backlog + 1 connections waiting for accept(); a connect
    # beyond that waits (the SYN is dropped and retried) until accept() makes
    # room, or times out.  Joined connections count as any other.  (The
    # shim's listener queue and the stack's each hold backlog + 1, and one
    # more waits between them.)  bind() makes the stack's listener before
    # listen() gives the backlog, which must then reach it.
    with acting_as(installed.web):
        server = socket.socket()
        if bound_first:
            server.bind(("0.0.0.0", 0))
        server.listen(0)
    server.settimeout(5)
    address = ("10.0.0.2", server.getsockname()[1])
    socket.create_connection(address, timeout=5).close()
    server.accept()[0].close()
    clients: list[socket.socket] = []
    while len(clients) < 10:
        try:
            clients.append(socket.create_connection(address, timeout=0.5))
        except TimeoutError:
            break
    assert 1 <= len(clients) <= 3
    for _ in clients:
        conn, _ = server.accept()
        conn.close()
    late = socket.create_connection(address, timeout=5)
    conn, _ = server.accept()
    assert conn.getpeername() == late.getsockname()
    for sock in [*clients, late, conn, server]:
        sock.close()


def test_the_peer_of_a_closed_joined_socket_sends_once_then_is_reset(
    installed: Installed,
) -> None:
    # TCP: the closed side's FIN arrives, the peer's next send still succeeds
    # and is answered with a reset, which later calls report.
    server = listening(installed, 7704)
    client = socket.create_connection(("10.0.0.2", 7704), timeout=5)
    conn, _ = server.accept()
    conn.settimeout(5)
    client.close()
    assert conn.recv(10) == b""
    assert conn.send(b"after the close") == len(b"after the close")
    failed = threading.Event()
    for _ in range(500):
        try:
            conn.send(b"more")
        except (BrokenPipeError, ConnectionResetError):
            failed.set()
            break
        failed.wait(0.01)
    assert failed.is_set()
    conn.close()
    server.close()


def test_closing_with_unread_data_resets_the_joined_peer_at_once(installed: Installed) -> None:
    server = listening(installed, 7705)
    client = socket.create_connection(("10.0.0.2", 7705), timeout=5)
    conn, _ = server.accept()
    client.sendall(b"never read")
    conn.close()
    with pytest.raises(ConnectionResetError):
        client.recv(10)
    client.close()
    server.close()


def test_observed_or_delayed_connections_still_go_through_the_engine(
    installed: Installed, engine_work: Counter[str]
) -> None:
    server = listening(installed, 7706)
    installed.net.set_link(installed.client, installed.web, latency=0.001)
    client = socket.create_connection(("10.0.0.2", 7706), timeout=5)
    conn, _ = server.accept()
    assert conn._netshim.splice_partner is None  # type: ignore[attr-defined]
    assert engine_work["task"] >= 1
    client.sendall(b"pumped")
    conn.settimeout(5)
    assert conn.recv(10) == b"pumped"
    client.close()
    conn.close()
    server.close()


def test_connect_refused_and_unreachable_still_raise(installed: Installed) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("10.0.0.2", 7707), timeout=5)
    with pytest.raises(OSError) as caught:
        socket.create_connection(("10.0.0.99", 7707), timeout=5)
    assert caught.value.errno == errno.EHOSTUNREACH
    installed.net.refuse(installed.web, 7708)
    server = listening(installed, 7708)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("10.0.0.2", 7708), timeout=5)
    server.close()


def test_close_frees_the_descriptor_number_while_the_end_is_held(installed: Installed) -> None:
    # The closed socket's end stays open for its peer (TCP's FIN, then a
    # reset), but through a duplicate: the number the program knew is free at
    # once, as on Linux, and an os.read() on it fails with EBADF.
    server = listening(installed, 7707)
    client = socket.create_connection(("10.0.0.2", 7707), timeout=5)
    conn, _ = server.accept()
    number = client.fileno()
    client.close()
    with pytest.raises(OSError) as caught:
        os.read(number, 0)
    assert caught.value.errno == errno.EBADF
    conn.settimeout(5)
    assert conn.recv(10) == b"", "the peer still sees the FIN of the held end"
    conn.close()
    server.close()


def test_a_joined_connection_to_a_dual_stack_listener_holds_its_port_until_closed(
    installed: Installed, engine_work: Counter[str]
) -> None:
    # The server's end names both sides as IPv4-mapped addresses, as Linux's
    # dual-stack listener does; the client's port is bound while it is open.
    with acting_as(installed.web):
        server = socket.create_server(
            ("", 7709), family=socket.AF_INET6, dualstack_ipv6=True, backlog=8
        )
    server.settimeout(5)
    warm = socket.create_connection(("10.0.0.2", 7709), timeout=5)
    server.accept()[0].close()
    warm.close()
    engine_work.clear()
    client = socket.create_connection(("10.0.0.2", 7709), timeout=5)
    conn, address = server.accept()
    assert engine_work["task"] == 0, "joined in connect(), without the engine"
    port = client.getsockname()[1]
    assert client.getsockname() == ("10.0.0.3", port)
    assert client.getpeername() == ("10.0.0.2", 7709)
    assert address == conn.getpeername() == ("::ffff:10.0.0.3", port, 0, 0)
    assert conn.getsockname() == ("::ffff:10.0.0.2", 7709, 0, 0)
    squatter = socket.socket()
    with pytest.raises(OSError) as caught:
        squatter.bind(("10.0.0.3", port))
    assert caught.value.errno == errno.EADDRINUSE
    client.close()
    conn.close()
    squatter.bind(("10.0.0.3", port))  # free again once the client closed
    squatter.close()
    server.close()


def test_a_name_the_network_answers_at_once_is_connected_without_the_engine(
    installed: Installed, engine_work: Counter[str]
) -> None:
    # Dual-stack: the name's first address is IPv6 (the client has one).
    with acting_as(installed.web):
        server = socket.create_server(("", 7710), family=socket.AF_INET6, dualstack_ipv6=True)
    server.settimeout(5)
    socket.create_connection(("10.0.0.2", 7710), timeout=5).close()
    server.accept()[0].close()
    engine_work.clear()
    answer = socket.getaddrinfo("web.internal", 7710, type=socket.SOCK_STREAM)
    client = socket.create_connection(("web.internal", 7710), timeout=5)
    conn, _ = server.accept()
    assert engine_work["task"] == 0, "looked up, connected and accepted in this thread"
    assert client.getpeername()[:2] == answer[0][4][:2]
    with pytest.raises(socket.gaierror) as caught:
        socket.getaddrinfo("missing.internal", 80)
    assert caught.value.errno == socket.EAI_NONAME
    assert engine_work["task"] == 0
    # Captured, the queries cross the network through the engine: same answer.
    capture = installed.net.capture(io.BytesIO())
    assert socket.getaddrinfo("web.internal", 7710, type=socket.SOCK_STREAM) == answer
    assert engine_work["task"] >= 1
    capture.close()
    for sock in (client, conn, server):
        sock.close()
