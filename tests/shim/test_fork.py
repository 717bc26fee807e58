"""Shim sockets across fork(): forking servers and pre-fork workers."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import pytest
from shim_support import Installed

from netshim.shim import acting_as

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")


def in_child(work: Callable[[], None]) -> int:
    """Run ``work`` in a forked child; its exit code (0 when ``work`` returned)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_forked_child_sends_on_an_inherited_udp_socket(installed: Installed) -> None:
    # socketserver.ForkingUDPServer: the child answers on the server's socket.
    # Sends went to the engine, which the child does not have (EOPNOTSUPP).
    with acting_as(installed.web):
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind(("0.0.0.0", 5360))
    server.settimeout(5)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(5)
    client.sendto(b"ask", ("10.0.0.2", 5360))
    data, address = server.recvfrom(100)
    assert in_child(lambda: server.sendto(data.upper(), address) and None) == 0
    assert client.recvfrom(100) == (b"ASK", ("10.0.0.2", 5360))
    # The parent's own sends still go straight to the stack.
    server.sendto(b"again", address)
    assert client.recvfrom(100) == (b"again", ("10.0.0.2", 5360))
    server.close()
    client.close()


def test_pre_fork_workers_accept_on_an_inherited_listener(installed: Installed) -> None:
    # gunicorn's sync workers: children accept on the listener their parent
    # made.  Accepting asked the parent's engine, which the child does not
    # have: the child took the announcement and the parent the connection.
    with acting_as(installed.web):
        listener = socket.create_server(("0.0.0.0", 8100))
    listener.settimeout(5)

    def worker() -> None:
        conn, address = listener.accept()
        with conn:
            assert conn.getpeername() == address
            assert conn.getsockname() == ("10.0.0.2", 8100)
            conn.sendall(b"from worker %d " % os.getpid() + address[0].encode())

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            worker()
            code = 0
        finally:
            os._exit(code)
    client = socket.create_connection(("10.0.0.2", 8100), timeout=5)
    received = b""
    while chunk := client.recv(100):
        received += chunk
    assert received == b"from worker %d 10.0.0.3" % pid
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    client.close()
    # The parent accepts as before.
    client = socket.create_connection(("10.0.0.2", 8100), timeout=5)
    conn, _ = listener.accept()
    conn.sendall(b"from the parent")
    assert client.recv(100) == b"from the parent"
    for sock in (conn, client, listener):
        sock.close()


def test_a_child_accepts_a_connection_joined_before_the_fork(installed: Installed) -> None:
    # A connection joined in connect() waits in the listener's queue, in
    # memory, announced with no descriptor.  A child forked meanwhile takes
    # it from its copy of the queue and tells the parent's engine, which
    # drops the parent's copy: the client sees the child's data, then the end.
    with acting_as(installed.web):
        listener = socket.create_server(("0.0.0.0", 8101))
    listener.settimeout(5)
    socket.create_connection(("10.0.0.2", 8101), timeout=5).close()
    listener.accept()[0].close()  # the listener's serving task runs from here on
    client = socket.create_connection(("10.0.0.2", 8101), timeout=5)
    queue = listener._netshim.accept_queue  # type: ignore[attr-defined]
    assert [passed for _, _, passed in queue] == [False]

    def worker() -> None:
        conn, address = listener.accept()
        with conn:
            assert address == client.getsockname()
            conn.sendall(b"from the child")

    assert in_child(worker) == 0
    received = b""
    while chunk := client.recv(100):
        received += chunk
    assert received == b"from the child"
    assert not queue
    # The parent's queue is in step: its own next connection comes next.
    second = socket.create_connection(("10.0.0.2", 8101), timeout=5)
    conn, address = listener.accept()
    assert address == second.getsockname()
    conn.sendall(b"from the parent")
    assert second.recv(100) == b"from the parent"
    for sock in (conn, second, client, listener):
        sock.close()
