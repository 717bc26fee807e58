"""Implementations of the Stack contract: the host network and the virtual network."""

from .host import HostStack as HostStack
from .virtual import LinkConditions as LinkConditions
from .virtual import VirtualHost as VirtualHost
from .virtual import VirtualNetwork as VirtualNetwork

__all__ = ["HostStack", "LinkConditions", "VirtualHost", "VirtualNetwork"]
