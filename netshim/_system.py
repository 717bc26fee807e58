"""The operating system's own socket functions, kept before anything patches them.

``netshim.install()`` replaces names in the ``socket`` module; code that must
reach the real network (the host stack, the engine) uses these instead, so it
keeps working while the patch is in place, whichever stack is installed.
"""

from __future__ import annotations

import socket

__all__ = [
    "getaddrinfo",
    "gethostbyaddr",
    "gethostname",
    "getnameinfo",
    "has_dualstack_ipv6",
    "socket_class",
]

socket_class = socket.socket
getaddrinfo = socket.getaddrinfo
gethostbyaddr = socket.gethostbyaddr
gethostname = socket.gethostname
getnameinfo = socket.getnameinfo


def has_dualstack_ipv6() -> bool:
    """``socket.has_dualstack_ipv6()`` answered with a real socket."""
    if not socket.has_ipv6:
        return False
    try:
        with socket_class(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            return True
    except OSError:
        return False
