"""The wire layer: Ethernet, ARP, IPv4, IPv6, ICMP(v6), TCP and UDP packets as bytes and values.

Laid out as smoltcp's ``wire`` module.  Each protocol has a frozen ``…Repr``
dataclass holding a packet's fields, with ``parse(buf)`` to read one from
bytes, ``buffer_len()`` and ``emit()`` to write it back.  ``parse`` checks
every length before reading and verifies checksums, so untrusted bytes fail
only with :class:`WireError`; constructors check every field, so no ``Repr``
exists that cannot be emitted; and ``emit(parse(b)) == b`` for any valid
packet.  The exceptions are details a parser accepts but does not keep:
padding after an IP packet's length, UDP over IPv4 sent without a checksum,
and a TCP or IPv4 checksum written as 0xFFFF where 0 was computed; ``emit``
writes those in the usual form.  Each layer's payload is plain bytes, handed
to the next layer's ``parse`` by the caller.  Nothing here does I/O or keeps
state.
"""

from ._base import IPAddress as IPAddress
from ._base import IpProtocol as IpProtocol
from ._base import WireError as WireError
from .arp import ArpOperation as ArpOperation
from .arp import ArpRepr as ArpRepr
from .checksum import internet_checksum as internet_checksum
from .checksum import ones_complement_sum as ones_complement_sum
from .checksum import pseudo_header_sum as pseudo_header_sum
from .ethernet import BROADCAST as BROADCAST
from .ethernet import EthernetAddress as EthernetAddress
from .ethernet import EthernetRepr as EthernetRepr
from .ethernet import EtherType as EtherType
from .icmpv4 import Icmpv4Repr as Icmpv4Repr
from .icmpv4 import Icmpv4Type as Icmpv4Type
from .icmpv4 import Icmpv4Unreachable as Icmpv4Unreachable
from .icmpv6 import Icmpv6Repr as Icmpv6Repr
from .icmpv6 import Icmpv6Type as Icmpv6Type
from .icmpv6 import Icmpv6Unreachable as Icmpv6Unreachable
from .icmpv6 import NeighborAdvert as NeighborAdvert
from .icmpv6 import NeighborSolicit as NeighborSolicit
from .icmpv6 import PrefixInformation as PrefixInformation
from .icmpv6 import RouterAdvert as RouterAdvert
from .icmpv6 import RouterSolicit as RouterSolicit
from .ipv4 import Ipv4Repr as Ipv4Repr
from .ipv6 import Ipv6Repr as Ipv6Repr
from .tcp import EndOfOptionList as EndOfOptionList
from .tcp import MaxSegmentSize as MaxSegmentSize
from .tcp import NoOperation as NoOperation
from .tcp import SackBlocks as SackBlocks
from .tcp import SackPermitted as SackPermitted
from .tcp import TcpFlags as TcpFlags
from .tcp import TcpOption as TcpOption
from .tcp import TcpRepr as TcpRepr
from .tcp import Timestamps as Timestamps
from .tcp import UnknownOption as UnknownOption
from .tcp import WindowScale as WindowScale
from .udp import UdpRepr as UdpRepr

__all__ = [
    "ArpOperation",
    "ArpRepr",
    "BROADCAST",
    "EndOfOptionList",
    "EtherType",
    "EthernetAddress",
    "EthernetRepr",
    "IPAddress",
    "Icmpv4Repr",
    "Icmpv4Type",
    "Icmpv4Unreachable",
    "Icmpv6Repr",
    "Icmpv6Type",
    "Icmpv6Unreachable",
    "IpProtocol",
    "Ipv4Repr",
    "Ipv6Repr",
    "MaxSegmentSize",
    "NeighborAdvert",
    "NeighborSolicit",
    "NoOperation",
    "PrefixInformation",
    "RouterAdvert",
    "RouterSolicit",
    "SackBlocks",
    "SackPermitted",
    "TcpFlags",
    "TcpOption",
    "TcpRepr",
    "Timestamps",
    "UdpRepr",
    "UnknownOption",
    "WindowScale",
    "WireError",
    "internet_checksum",
    "ones_complement_sum",
    "pseudo_header_sum",
]
