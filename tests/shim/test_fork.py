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
