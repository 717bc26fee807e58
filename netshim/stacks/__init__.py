"""Implementations of the Stack contract: the host network, the virtual network, tunnels."""

from .host import HostStack as HostStack
from .virtual import LinkConditions as LinkConditions
from .virtual import VirtualHost as VirtualHost
from .virtual import VirtualNetwork as VirtualNetwork
from .wisp import WispStack as WispStack

__all__ = ["HostStack", "LinkConditions", "VirtualHost", "VirtualNetwork", "WispStack"]
