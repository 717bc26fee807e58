"""Just enough rtnetlink to configure a fresh network namespace, without iproute2.

``netshim run --isolate`` sets up the namespace it creates: loopback up, the
TUN device up with its MTU, one IPv4 and one IPv6 address, and a default
route of each family.  Those are four message types of rtnetlink (RFC 3549;
``rtnetlink(7)``): ``RTM_NEWLINK`` to change a link's flags and MTU,
``RTM_NEWADDR``, ``RTM_NEWROUTE``.  Each request asks for an acknowledgement,
and a kernel error comes back as the ``OSError`` for its errno, naming the
request, so that a failure says which step failed.  Many containers have no
``ip`` binary; this module needs nothing but the ``socket`` module.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

__all__ = ["Netlink"]

_NETLINK_ROUTE = 0
_NLMSG_ERROR = 2
_RTM_NEWLINK = 16
_RTM_NEWADDR = 20
_RTM_NEWROUTE = 24
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLM_F_EXCL = 0x200
_NLM_F_CREATE = 0x400

_IFF_UP = 0x1
_IFLA_MTU = 4
_IFA_ADDRESS = 1
_IFA_LOCAL = 2
_IFA_FLAGS = 8
# No duplicate address detection: the namespace holds no other host, and an
# address under DAD stays "tentative" (unusable) for about a second.
_IFA_F_NODAD = 0x02
_RTA_GATEWAY = 5
_RTA_OIF = 4
_RT_TABLE_MAIN = 254
_RTPROT_STATIC = 4
_RT_SCOPE_UNIVERSE = 0
_RTN_UNICAST = 1

_HEADER = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")


def _attribute(kind: int, value: bytes) -> bytes:
    length = 4 + len(value)
    padding = (-length) % 4
    return struct.pack("=HH", length, kind) + value + b"\0" * padding


class Netlink:
    """A route netlink socket in the calling process's network namespace."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_ROUTE)
        self._socket.bind((0, 0))
        self._sequence = 0

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _request(self, kind: int, flags: int, body: bytes, what: str) -> None:
        self._sequence += 1
        sequence = self._sequence
        header = _HEADER.pack(
            _HEADER.size + len(body), kind, flags | _NLM_F_REQUEST | _NLM_F_ACK, sequence, 0
        )
        self._socket.send(header + body)
        while True:
            reply = self._socket.recv(65536)
            position = 0
            while position + _HEADER.size <= len(reply):
                length, reply_kind, _, reply_sequence, _ = _HEADER.unpack_from(reply, position)
                if length < _HEADER.size:
                    raise OSError(errno.EPROTO, f"malformed netlink reply to {what}")
                if reply_kind == _NLMSG_ERROR and reply_sequence == sequence:
                    (code,) = struct.unpack_from("=i", reply, position + _HEADER.size)
                    if code:
                        raise OSError(-code, f"{what}: {os.strerror(-code)}")
                    return
                position += (length + 3) & ~3

    def set_link(self, index: int, *, up: bool = True, mtu: int | None = None) -> None:
        """Bring link ``index`` up (or down) and set its MTU."""
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, index, _IFF_UP if up else 0, _IFF_UP)
        if mtu is not None:
            body += _attribute(_IFLA_MTU, struct.pack("=I", mtu))
        self._request(_RTM_NEWLINK, 0, body, f"setting link {index} up (mtu {mtu})")

    def add_address(
        self, index: int, interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    ) -> None:
        """Give link ``index`` the address ``interface`` (with its prefix), without DAD."""
        family = socket.AF_INET if interface.version == 4 else socket.AF_INET6
        body = _IFADDR.pack(
            family, interface.network.prefixlen, _IFA_F_NODAD, _RT_SCOPE_UNIVERSE, index
        )
        packed = interface.ip.packed
        body += _attribute(_IFA_LOCAL, packed) + _attribute(_IFA_ADDRESS, packed)
        body += _attribute(_IFA_FLAGS, struct.pack("=I", _IFA_F_NODAD))
        self._request(
            _RTM_NEWADDR, _NLM_F_CREATE | _NLM_F_EXCL, body, f"adding address {interface}"
        )

    def add_default_route(
        self, index: int, gateway: ipaddress.IPv4Address | ipaddress.IPv6Address
    ) -> None:
        """Route everything of ``gateway``'s family through it, out of link ``index``."""
        family = socket.AF_INET if gateway.version == 4 else socket.AF_INET6
        body = _RTMSG.pack(
            family,
            0,
            0,
            0,
            _RT_TABLE_MAIN,
            _RTPROT_STATIC,
            _RT_SCOPE_UNIVERSE,
            _RTN_UNICAST,
            0,
        )
        body += _attribute(_RTA_GATEWAY, gateway.packed)
        body += _attribute(_RTA_OIF, struct.pack("=i", index))
        self._request(
            _RTM_NEWROUTE,
            _NLM_F_CREATE | _NLM_F_EXCL,
            body,
            f"adding a default route via {gateway}",
        )
