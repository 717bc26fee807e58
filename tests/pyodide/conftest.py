"""Fixtures the Pyodide tests share: netshim's cache for its commands, an echo destination."""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyodide_support import dependency_wheels, require_pyodide


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``--cache-dir`` for ``netshim pyodide`` holding netshim's dependencies' wheels."""
    require_pyodide()
    directory = tmp_path_factory.mktemp("netshim-cache")
    (directory / "wheels").mkdir()
    for wheel in dependency_wheels():
        shutil.copy(wheel, directory / "wheels")
    return directory


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
