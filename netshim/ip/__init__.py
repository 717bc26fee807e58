"""The ip engine: TCP/IP state kept in user space over packet links.

Laid out as smoltcp is, above the wire layer (:mod:`netshim.protocols.ip`, which
parses and emits packets and keeps no state):

* :mod:`netshim.ip.tcp` - one TCP connection's state machine, sans-I/O: segments
  and a clock value in, segments, readiness and errors out; timers are deadlines
  the caller asks for.
* :mod:`netshim.ip.iface` - an interface: addresses, routes, neighbour caches
  (ARP, IPv6 neighbour discovery), ICMP, UDP and the demultiplexing of TCP
  segments to connections and listeners.
* :mod:`netshim.ip.links` - where packets and frames come from and go to: TUN and
  TAP devices, in-memory cables and bridges, with faults and pcap capture.

Nothing here starts tasks, opens sockets or reads a clock; :class:`netshim.stacks.ip.IpStack`
drives it under anyio, and the same code runs in Pyodide.
"""
