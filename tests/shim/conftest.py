"""Fixtures for the socket shim: a virtual network installed for one test."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from shim_support import Installed

import netshim
from netshim import VirtualNetwork


@pytest.fixture
def installed() -> Iterator[Installed]:
    """A network with ``web.internal`` (10.0.0.2) and ``client`` (10.0.0.3), installed as client."""
    net = VirtualNetwork(seed=0, connect_timeout=2)
    web = net.add_host("web.internal", ["10.0.0.2", "fd00::2"])
    client = net.add_host("client", ["10.0.0.3", "fd00::3"])
    original = socket.socket
    netshim.install(client)
    try:
        yield Installed(net, web, client)
    finally:
        netshim.uninstall()
        assert socket.socket is original
