"""The in-memory virtual network: hosts, links, TCP, UDP and DNS, with no I/O at all."""

from .host import VirtualHost as VirtualHost
from .link import LinkConditions as LinkConditions
from .network import VirtualNetwork as VirtualNetwork

__all__ = ["LinkConditions", "VirtualHost", "VirtualNetwork"]
