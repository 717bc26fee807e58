"""Implementations of the Stack contract: the host network, the virtual network, tunnels, packets.

:class:`IpStack` is imported on first use: the ip engine's modules take a
tenth of a second to import, which programs that never use it should not pay.
:class:`FetchStack` too: it needs h11, which only its users should import.
"""

from typing import TYPE_CHECKING, Any

from ._tunnel import TunnelEvent as TunnelEvent
from ._tunnel import TunnelEventKind as TunnelEventKind
from .host import HostStack as HostStack
from .policed import PolicyStack as PolicyStack
from .policed import RouterStack as RouterStack
from .socks5 import Socks5Stack as Socks5Stack
from .virtual import LinkConditions as LinkConditions
from .virtual import VirtualHost as VirtualHost
from .virtual import VirtualNetwork as VirtualNetwork
from .websockify import WebsockifyStack as WebsockifyStack
from .wisp import WispStack as WispStack

if TYPE_CHECKING:
    from .fetch import FetchStack as FetchStack
    from .ip import IpStack as IpStack

__all__ = [
    "FetchStack",
    "HostStack",
    "IpStack",
    "LinkConditions",
    "PolicyStack",
    "RouterStack",
    "VirtualHost",
    "Socks5Stack",
    "TunnelEvent",
    "TunnelEventKind",
    "VirtualNetwork",
    "WebsockifyStack",
    "WispStack",
]


def __getattr__(name: str) -> Any:
    if name == "IpStack":
        from .ip import IpStack

        return IpStack
    if name == "FetchStack":
        from .fetch import FetchStack

        return FetchStack
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
