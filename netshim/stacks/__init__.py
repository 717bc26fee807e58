"""Implementations of the Stack contract: the host network, the virtual network, tunnels."""

from .host import HostStack as HostStack
from .policed import PolicyStack as PolicyStack
from .policed import RouterStack as RouterStack
from .socks5 import Socks5Stack as Socks5Stack
from .virtual import LinkConditions as LinkConditions
from .virtual import VirtualHost as VirtualHost
from .virtual import VirtualNetwork as VirtualNetwork
from .websockify import WebsockifyStack as WebsockifyStack
from .wisp import WispStack as WispStack

__all__ = [
    "HostStack",
    "LinkConditions",
    "PolicyStack",
    "RouterStack",
    "VirtualHost",
    "Socks5Stack",
    "VirtualNetwork",
    "WebsockifyStack",
    "WispStack",
]
