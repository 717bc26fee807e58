"""getaddrinfo() as glibc answers it, around any way of looking names up.

Every stack that resolves names itself (the virtual network asking its DNS
server, the socket shim handing out synthetic addresses for tunnels) answers
``getaddrinfo`` through :func:`resolve_addrinfo`, so the shape of the answer
(families, socket types, order, canonical name, errors) is the same
everywhere and the same as the C library's: numeric hosts are answered
without a lookup, ``localhost`` is the loopback, ``AI_PASSIVE`` without a host
gives the wildcard addresses, and a service name limits the socket types to
those it is defined for.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable

from ._addresses import IPAddress, parse_ip
from ._errors import name_not_known, no_address_for_name

__all__ = ["Lookup", "has_interface_scope", "ip_text", "resolve_addrinfo", "zone_scope_id"]

SockAddr = tuple[str, int] | tuple[str, int, int, int]
AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, SockAddr]
Lookup = Callable[[str, int], Awaitable[tuple[list[IPAddress], str]]]

_IPV4_ANY: IPAddress = ipaddress.IPv4Address("0.0.0.0")
_IPV6_ANY: IPAddress = ipaddress.IPv6Address("::")
_IPV4_LOOPBACK: IPAddress = ipaddress.IPv4Address("127.0.0.1")
_IPV6_LOOPBACK: IPAddress = ipaddress.IPv6Address("::1")

_SOCKET_TYPES = (
    (socket.SOCK_STREAM, socket.IPPROTO_TCP),
    (socket.SOCK_DGRAM, socket.IPPROTO_UDP),
    (socket.SOCK_RAW, 0),
)


async def resolve_addrinfo(
    lookup: Lookup,
    name: str | None,
    port: int,
    family: int,
    type: int,
    proto: int,
    flags: int,
    service_kinds: tuple[int, ...] | None = None,
) -> list[AddrInfo]:
    """Answer getaddrinfo; ``lookup(name, family)`` resolves real names.

    Arguments are already checked (``name`` normalised, ``port`` a number);
    ``service_kinds`` limits the socket types when the port was a service name.
    ``lookup`` returns the addresses and the canonical name, or raises
    ``socket.gaierror``.
    """
    if family not in (0, socket.AF_INET, socket.AF_INET6):
        raise socket.gaierror(socket.EAI_FAMILY, "ai_family not supported")
    canonical = name or ""
    ips: list[IPAddress]
    loopback: list[IPAddress] = [_IPV6_LOOPBACK, _IPV4_LOOPBACK]
    if name is None:
        # glibc lists the IPv4 wildcard first but the IPv6 loopback first.
        ips = [_IPV4_ANY, _IPV6_ANY] if flags & socket.AI_PASSIVE else loopback
    else:
        ip = parse_ip(name)
        if ip is not None:
            wanted = {int(socket.AF_INET): 4, int(socket.AF_INET6): 6}.get(family)
            mapped = family == socket.AF_INET6 and flags & socket.AI_V4MAPPED
            if wanted is not None and ip.version != wanted and not (mapped and ip.version == 4):
                raise socket.gaierror(
                    socket.EAI_ADDRFAMILY, f"Address family for hostname not supported ({name!r})"
                )
            ips = [ip]
        elif flags & socket.AI_NUMERICHOST or name == "":
            raise name_not_known(name)
        elif name == "localhost" or name.endswith(".localhost"):
            ips = loopback
        else:
            v4mapped = family == socket.AF_INET6 and flags & socket.AI_V4MAPPED
            # With AI_V4MAPPED, IPv4 answers count too (mapped below).
            ips, canonical = await lookup(name, 0 if v4mapped else family)
    if family == socket.AF_INET:
        ips = [ip for ip in ips if ip.version == 4]
    elif family == socket.AF_INET6:
        v6: list[IPAddress] = [ip for ip in ips if ip.version == 6]
        if flags & socket.AI_V4MAPPED and (flags & socket.AI_ALL or not v6):
            # glibc: IPv4 answers as IPv4-mapped IPv6 addresses, when there
            # is no IPv6 answer (or, with AI_ALL, behind the IPv6 ones).
            v6.extend(ipaddress.IPv6Address(f"::ffff:{ip}") for ip in ips if ip.version == 4)
        ips = v6
    if not ips:
        raise no_address_for_name(name or "")
    kinds = [
        (k, p)
        for k, p in _SOCKET_TYPES
        if (not type or k == type)
        and (not proto or p == proto)
        and (service_kinds is None or k in service_kinds)
    ]
    if not kinds:
        if type and proto:
            raise socket.gaierror(socket.EAI_SOCKTYPE, "ai_socktype not supported")
        kinds = [(socket.SocketKind(type) if type else socket.SOCK_STREAM, proto)]
    results: list[AddrInfo] = []
    for ip in ips:
        for kind, protocol in kinds:
            address: tuple[str, int] | tuple[str, int, int, int]
            if ip.version == 6:
                ip_family = socket.AF_INET6
                address = (ip_text(ip), port, 0, 0)
            else:
                ip_family = socket.AF_INET
                address = (str(ip), port)
            label = canonical if (flags & socket.AI_CANONNAME and not results) else ""
            results.append((ip_family, socket.SocketKind(kind), protocol, label, address))
    return results


def has_interface_scope(ip: IPAddress) -> bool:
    """Whether glibc names ``ip``'s zone by interface: link-local unicast and multicast."""
    return ip.version == 6 and (ip.is_link_local or (ip.is_multicast and int(ip) >> 112 & 0xF == 2))


def zone_scope_id(name: str, ip: IPAddress) -> int:
    """The scope id an IPv6 literal's zone gives (``fe80::1%lo``, ``fe80::1%1``), as in glibc.

    An interface name counts for link-local addresses only, and is looked up
    among the machine's interfaces (``socket.if_nametoindex``, which netshim
    leaves as it is, so scope ids agree with ``if_nameindex()``); otherwise the
    zone must be a number.  Anything else is ``gaierror(EAI_NONAME)``.
    """
    if ip.version != 6 or "%" not in name:
        return 0
    zone = name.split("%", 1)[1]
    if has_interface_scope(ip):
        try:
            return socket.if_nametoindex(zone)
        except OSError:
            pass
    if zone.isdigit() and int(zone) < 2**32:
        return int(zone)
    raise name_not_known(name)


def ip_text(ip: IPAddress) -> str:
    """An address as glibc writes it: IPv4-mapped ones end in dotted IPv4."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return f"::ffff:{ip.ipv4_mapped}"
    return str(ip)
