"""What the shim tests share: the installed network they run on."""

from __future__ import annotations

from dataclasses import dataclass

from netshim import VirtualHost, VirtualNetwork


@dataclass
class Installed:
    net: VirtualNetwork
    web: VirtualHost
    client: VirtualHost
