"""Links of the ip engine: where an interface's frames and packets come from and go to.

smoltcp's ``phy`` layer.  Every link implements :class:`Link` (``send``,
``receive``, ``aclose``, under anyio):

* :class:`TunLink` and :class:`TapLink`: Linux TUN/TAP devices, opened by name
  or adopted from a descriptor, with the virtio-net header and offloads that
  let one system call move 64 KiB;
* :class:`Cable` (two :class:`CableEnd` values) and :class:`Bridge` (a learning
  switch with any number of ports; :meth:`Bridge.run_port` joins any Ethernet
  link, a TAP device say): in memory, with :class:`Faults`;
* :class:`PcapLink` and :class:`FaultyLink` wrap any link to record it for
  Wireshark or to make it lose, duplicate and reorder packets.

A link only moves bytes; :class:`netshim.ip.iface.Interface` makes sense of them.
"""

from ._base import DEFAULT_MAX_QUEUED_PACKETS as DEFAULT_MAX_QUEUED_PACKETS
from ._base import IncomingPacket as IncomingPacket
from ._base import Link as Link
from ._memory import Bridge as Bridge
from ._memory import Cable as Cable
from ._memory import CableEnd as CableEnd
from ._memory import FaultInjector as FaultInjector
from ._memory import Faults as Faults
from ._tun import TapLink as TapLink
from ._tun import TunLink as TunLink
from ._wrappers import FaultyLink as FaultyLink
from ._wrappers import PcapLink as PcapLink

__all__ = [
    "DEFAULT_MAX_QUEUED_PACKETS",
    "Bridge",
    "Cable",
    "CableEnd",
    "FaultInjector",
    "Faults",
    "FaultyLink",
    "IncomingPacket",
    "Link",
    "PcapLink",
    "TapLink",
    "TunLink",
]
