"""Node.js's ``dns`` module in Python: name resolution and a DNS server on any stack.

* :func:`lookup` resolves as the stack's ``getaddrinfo`` does (hosts file,
  the stack's own resolver), like Node's ``dns.lookup``.
* :func:`resolve` and ``resolve4`` ... ``resolve_txt``, :func:`reverse` send
  real DNS queries over the stack (UDP, TCP after truncation, or
  DNS-over-HTTPS) with :class:`Resolver`; see :mod:`netshim.dns._resolver`.
* :func:`serve` answers DNS on a stack from a zone, a handler or an upstream.

Every function is a coroutine, so this module and :mod:`netshim.dns.promises`
(Node's promise flavour) are the same.  The module-level functions use one
default :class:`Resolver` per stack (the current stack unless ``stack=`` is
given to :class:`Resolver`); :func:`set_servers` changes the servers of all
of them.  Errors are :class:`DnsError` with Node's ``code`` (``NOTFOUND`` is
``"ENOTFOUND"``...), ``syscall`` and ``hostname``.
"""

from __future__ import annotations

import socket
import weakref
from collections.abc import Sequence
from typing import Any

from ..protocols.dns import Zone as Zone
from ..stack import Stack, current_stack
from ._errors import BADFAMILY as BADFAMILY
from ._errors import BADNAME as BADNAME
from ._errors import BADQUERY as BADQUERY
from ._errors import BADRESP as BADRESP
from ._errors import CANCELLED as CANCELLED
from ._errors import CONNREFUSED as CONNREFUSED
from ._errors import DESTRUCTION as DESTRUCTION
from ._errors import FORMERR as FORMERR
from ._errors import NODATA as NODATA
from ._errors import NOTFOUND as NOTFOUND
from ._errors import NOTIMP as NOTIMP
from ._errors import REFUSED as REFUSED
from ._errors import SERVFAIL as SERVFAIL
from ._errors import TIMEOUT as TIMEOUT
from ._errors import DnsError as DnsError
from ._errors import DnsNameError as DnsNameError
from ._resolver import AddressRecord as AddressRecord
from ._resolver import CaaRecord as CaaRecord
from ._resolver import LookupAddress as LookupAddress
from ._resolver import MxRecord as MxRecord
from ._resolver import NaptrRecord as NaptrRecord
from ._resolver import Resolver as Resolver
from ._resolver import SoaRecord as SoaRecord
from ._resolver import SrvRecord as SrvRecord
from ._resolver import lookup as lookup
from ._resolver import parse_server
from ._server import DnsServer as DnsServer
from ._server import Record as Record
from ._server import Request as Request
from ._server import serve as serve

__all__ = [
    "BADFAMILY",
    "BADNAME",
    "BADQUERY",
    "BADRESP",
    "CANCELLED",
    "CONNREFUSED",
    "DESTRUCTION",
    "FORMERR",
    "NODATA",
    "NOTFOUND",
    "NOTIMP",
    "REFUSED",
    "SERVFAIL",
    "TIMEOUT",
    "AddressRecord",
    "CaaRecord",
    "DnsError",
    "DnsNameError",
    "DnsServer",
    "LookupAddress",
    "MxRecord",
    "NaptrRecord",
    "Record",
    "Request",
    "Resolver",
    "SoaRecord",
    "SrvRecord",
    "Zone",
    "get_servers",
    "lookup",
    "lookup_service",
    "resolve",
    "resolve4",
    "resolve6",
    "resolve_any",
    "resolve_caa",
    "resolve_cname",
    "resolve_mx",
    "resolve_naptr",
    "resolve_ns",
    "resolve_ptr",
    "resolve_soa",
    "resolve_srv",
    "resolve_txt",
    "reverse",
    "serve",
    "set_servers",
]

# One default resolver per stack, so that caches never mix two networks'
# answers; weak so that a finished VirtualNetwork is not kept alive.
_defaults: weakref.WeakKeyDictionary[Stack, Resolver] = weakref.WeakKeyDictionary()
_servers: list[str] | None = None


def _default() -> Resolver:
    stack = current_stack()
    resolver = _defaults.get(stack)
    if resolver is None:
        resolver = _defaults[stack] = Resolver(stack=stack)
    if _servers is not None and resolver.get_servers() != _servers:
        resolver.set_servers(_servers)
    return resolver


def set_servers(servers: Sequence[str] | None) -> None:
    """Servers for the module-level functions on every stack; ``None`` restores each stack's own.

    Each entry is ``"ip"``, ``"ip:port"`` or ``"[ipv6]:port"``; ``ValueError``
    for any other, and then nothing changes.
    """
    global _servers
    if servers is None:
        _servers = None
        for resolver in list(_defaults.values()):
            resolver._servers = None
            resolver.clear_cache()
        return
    for text in servers:
        parse_server(text)
    _servers = list(servers)


def get_servers() -> list[str]:
    """The servers the module-level functions use on the current stack."""
    return _default().get_servers()


async def resolve(hostname: str, rrtype: str = "A") -> list[Any]:
    """:meth:`Resolver.resolve` on the default resolver."""
    return await _default().resolve(hostname, rrtype)


async def resolve4(hostname: str, *, ttl: bool = False) -> list[Any]:
    return await _default().resolve4(hostname, ttl=ttl)


async def resolve6(hostname: str, *, ttl: bool = False) -> list[Any]:
    return await _default().resolve6(hostname, ttl=ttl)


async def resolve_any(hostname: str) -> list[dict[str, Any]]:
    return await _default().resolve_any(hostname)


async def resolve_caa(hostname: str) -> list[CaaRecord]:
    return await _default().resolve_caa(hostname)


async def resolve_cname(hostname: str) -> list[str]:
    return await _default().resolve_cname(hostname)


async def resolve_mx(hostname: str) -> list[MxRecord]:
    return await _default().resolve_mx(hostname)


async def resolve_naptr(hostname: str) -> list[NaptrRecord]:
    return await _default().resolve_naptr(hostname)


async def resolve_ns(hostname: str) -> list[str]:
    return await _default().resolve_ns(hostname)


async def resolve_ptr(hostname: str) -> list[str]:
    return await _default().resolve_ptr(hostname)


async def resolve_soa(hostname: str) -> SoaRecord:
    return await _default().resolve_soa(hostname)


async def resolve_srv(hostname: str) -> list[SrvRecord]:
    return await _default().resolve_srv(hostname)


async def resolve_txt(hostname: str) -> list[list[str]]:
    return await _default().resolve_txt(hostname)


async def reverse(ip: str) -> list[str]:
    return await _default().reverse(ip)


async def lookup_service(address: str, port: int) -> tuple[str, str]:
    """``(hostname, service)`` for ``address`` and ``port`` (``dns.lookupService``).

    The name comes from a PTR query over the current stack (Node asks the
    system's ``getnameinfo``), the service from the services database, or
    the port number as text when it has none.  Raises :class:`DnsError`
    (``ENOTFOUND``, syscall ``"getnameinfo"``) when the address has no name.
    """
    from ._resolver import is_address

    if not is_address(address):
        raise ValueError(f"lookup_service() needs an IP address, got {address!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be 0-65535, got {port!r}")
    try:
        names = await _default().reverse(address)
    except DnsError as exc:
        code = NOTFOUND if exc.code in (NOTFOUND, NODATA) else exc.code
        raise DnsError(code, "getnameinfo", address) from exc
    try:
        service = socket.getservbyport(port, "tcp")
    except (OSError, OverflowError):
        service = str(port)
    return names[0], service
