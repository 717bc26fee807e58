"""Fixtures for the compatibility suite: a virtual network installed for one test."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import pytest
from compat_helpers import Installed, Tls, make_tls

import netshim
from netshim import VirtualNetwork


@pytest.fixture
def installed() -> Iterator[Installed]:
    """``web.internal`` (10.0.0.2, fd00::2) and ``client`` (10.0.0.3, fd00::3), as client."""
    net = VirtualNetwork(seed=0, connect_timeout=2)
    web = net.add_host("web.internal", ["10.0.0.2", "fd00::2"])
    client = net.add_host("client", ["10.0.0.3", "fd00::3"])
    original = (socket.socket, ssl.SSLContext.sslsocket_class)
    netshim.install(client)
    try:
        yield Installed(net, web, client)
    finally:
        netshim.uninstall()
        assert (socket.socket, ssl.SSLContext.sslsocket_class) == original


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return make_tls(tmp_path_factory.mktemp("tls"))
