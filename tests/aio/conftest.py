"""The network the loop-hook tests run on: ``web.internal``, and ``laptop`` installed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import netshim
from netshim import VirtualHost, VirtualNetwork


@pytest.fixture
def hosts() -> Iterator[tuple[VirtualHost, VirtualHost]]:
    """``web.internal`` (10.0.0.2, fd00::2) and ``laptop``, whose stack the loop's hooks use."""
    net = VirtualNetwork(seed=1)
    web = net.add_host("web.internal", ["10.0.0.2", "fd00::2"])
    laptop = net.add_host("laptop")
    netshim.install(laptop, mode="loop")
    try:
        yield web, laptop
    finally:
        netshim.uninstall()
