"""Fixtures the Pyodide tests share: a destination for the sockets of code running in Pyodide."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A TCP echo server on loopback (one connection at a time); its port."""
    server = socket.create_server(("127.0.0.1", 0))
    # A stall guard for a test whose client never came, not a timing.
    server.settimeout(60)

    def serve() -> None:
        try:
            while True:
                connection, _ = server.accept()
                with connection:
                    while data := connection.recv(65536):
                        connection.sendall(data)
        except OSError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        thread.join(5)
