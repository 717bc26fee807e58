"""Fixtures for the compatibility suite: a virtual network installed for one test."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import pytest
from compat_helpers import Installed, Tls, Traffic, make_tls

import netshim
from netshim import VirtualNetwork


@pytest.fixture(params=["joined", "pumped"])
def installed(request: pytest.FixtureRequest) -> Iterator[Installed]:
    """``web.internal`` (10.0.0.2, fd00::2) and ``client`` (10.0.0.3, fd00::3), as client.

    ``pumped``: an observer watches the network, so every byte goes through
    the engine and the virtual TCP; ``joined``: in-process connections share
    one socketpair.
    """
    net = VirtualNetwork(seed=0, connect_timeout=2)
    web = net.add_host("web.internal", ["10.0.0.2", "fd00::2"])
    client = net.add_host("client", ["10.0.0.3", "fd00::3"])
    traffic = None
    if request.param == "pumped":
        traffic = Traffic()
        net.add_observer(traffic)
    original = (socket.socket, ssl.SSLContext.sslsocket_class)
    netshim.install(client)
    try:
        yield Installed(net, web, client, traffic)
    finally:
        netshim.uninstall()
        assert (socket.socket, ssl.SSLContext.sslsocket_class) == original
    if traffic is not None:
        assert traffic.tcp_bytes or traffic.datagrams, "the test's traffic crossed the network"


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return make_tls(tmp_path_factory.mktemp("tls"))
