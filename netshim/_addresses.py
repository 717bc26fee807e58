"""Checking and normalising ports, IP addresses and host names.

Every stack takes user input through these functions so that bad input fails
the same way everywhere, with the exception the standard library raises for the
same mistake (``TypeError`` for a port that is not an integer, ``OverflowError``
for one out of range, ``socket.gaierror`` for an unknown service name) and a
message naming the value.  Nothing is clamped or wrapped silently, not even
where glibc would wrap a port of 70000 to 4464.

Host names are checked here and nowhere else (:func:`normalize_host_name`):
whatever a program or a remote client spells, a stack sees either an IP
literal in canonical form or a lower-case ASCII name that a DNS resolver can
carry; anything else is :class:`InvalidHostNameError`, a ``socket.gaierror``
(``EAI_NONAME``), the error every caller already handles for a name that does
not resolve.  Names that are not ASCII are mapped as browsers map them (UTS 46,
non-transitional, through the ``idna`` package that anyio already needs), so
``Straße.de`` is ``xn--strae-oqa.de`` and 127.0.0.1 spelt in fullwidth digits
(U+FF11...) is the IP ``127.0.0.1``, exactly what a browser would connect to.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from typing import TypeAlias

import idna

__all__ = [
    "Address",
    "IPAddress",
    "InvalidHostNameError",
    "check_host",
    "check_port",
    "format_address",
    "is_ip",
    "normalize_host_name",
    "parse_ip",
    "parse_service",
    "service_socket_types",
]

Address: TypeAlias = tuple[str, int]
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

# RFC 1035 section 2.3.4: 63 octets a label, 255 octets a name on the wire,
# which leaves 253 characters in dotted text without the trailing dot.
MAX_LABEL_LENGTH = 63
MAX_NAME_LENGTH = 253
# What one label of an ASCII name may hold: letters, digits and hyphens (RFC 952
# and 1123) and the underscore, which service names (``_dmarc``, SRV's
# ``_http._tcp``) and many internal hosts use and which getaddrinfo passes on.
_LABEL = re.compile(r"[a-z0-9_-]+")

# What ``socket.getservbyname`` answers on a usual /etc/services; used where the
# platform has no services database (Pyodide) so that names still resolve.
_WELL_KNOWN_SERVICES = {
    "domain": 53,
    "ftp": 21,
    "http": 80,
    "https": 443,
    "imap": 143,
    "imaps": 993,
    "mysql": 3306,
    "ntp": 123,
    "pop3": 110,
    "postgresql": 5432,
    "redis": 6379,
    "smtp": 25,
    "ssh": 22,
    "submission": 587,
    "telnet": 23,
}


def check_port(port: object, function: str) -> int:
    """Return ``port`` as an ``int`` in 0..65535 or raise as ``socket`` does.

    ``function`` names the call in the message, e.g. ``connect_tcp``.
    """
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(
            f"{function}(): port must be an integer, not {type(port).__name__} ({port!r})"
        )
    if not 0 <= port <= 65535:
        raise OverflowError(f"{function}(): port must be 0-65535, got {port}")
    return port


def parse_ip(text: str) -> IPAddress | None:
    """The address ``text`` spells, or ``None`` when it is a host name.

    An IPv6 zone (``fe80::1%eth0``) is accepted and dropped: virtual networks
    have one link per host pair, so the zone cannot change the answer.
    """
    # Text longer than any valid host name (a client's, unchecked yet) is
    # parsed without the cache, so that the cache holds at most 4096 short
    # strings whatever clients send.
    if len(text) > MAX_NAME_LENGTH:
        return _parse_ip(text)
    return _parse_ip_cached(text)


def _parse_ip(text: str) -> IPAddress | None:
    candidate = text.split("%", 1)[0] if ":" in text else text
    try:
        return ipaddress.ip_address(candidate)
    except ValueError:
        return None


# One connection's host is parsed in several layers (the Wisp core, the policy,
# the stack); ipaddress takes microseconds for a literal and raises twice for a
# name, while a cache hit costs a fraction of that.  The addresses are immutable.
_parse_ip_cached = functools.lru_cache(maxsize=4096)(_parse_ip)


def is_ip(text: str) -> bool:
    return parse_ip(text) is not None


class InvalidHostNameError(socket.gaierror):
    """A host name no resolver could look up; ``errno`` is ``EAI_NONAME``.

    ``host`` is the name as given; the message says what is wrong with it.
    """

    def __init__(self, host: str, why: str) -> None:
        shown = host if len(host) <= 60 else host[:60] + "..."
        super().__init__(socket.EAI_NONAME, f"invalid host name {shown!r}: {why}")
        self.host = host
        self.why = why


def normalize_host_name(host: str) -> str:
    """The form of ``host`` every stack sees, or :class:`InvalidHostNameError`.

    IP literals come back canonical (``fd00:0::2`` is ``fd00::2``); names come
    back lower-case ASCII (A-labels for internationalised names), without
    the trailing dot; ``""`` and ``"."`` come back as ``""`` (no name).  A
    name is refused when it is longer than 253 characters, has an empty label
    (``a..b``) or one over 63 characters, holds anything but letters, digits,
    ``-`` and ``_`` once mapped (spaces, NUL and other control characters,
    ``/``, ``@``, ``%``...), or when UTS 46 disallows one of its characters.
    """
    address = parse_ip(host)
    if address is not None:
        return str(address)
    if host in ("", "."):
        return ""
    name = host
    if not name.isascii():
        try:
            mapped = idna.uts46_remap(name, std3_rules=False, transitional=False)
            name = ".".join(
                label if label.isascii() else "xn--" + label.encode("punycode").decode("ascii")
                for label in mapped.split(".")
            )
        except (UnicodeError, ValueError) as exc:
            why = f"not a valid internationalised name ({exc})"
            raise InvalidHostNameError(host, why) from None
        address = parse_ip(name)
        if address is not None:
            return str(address)
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidHostNameError(
            host, f"{len(name)} characters long, at most {MAX_NAME_LENGTH} are allowed"
        )
    for label in name.split("."):
        if not label:
            raise InvalidHostNameError(host, "empty label")
        if len(label) > MAX_LABEL_LENGTH:
            raise InvalidHostNameError(
                host, f"a label of {len(label)} characters, at most {MAX_LABEL_LENGTH} are allowed"
            )
        if not _LABEL.fullmatch(label):
            bad = next(c for c in label if not _LABEL.fullmatch(c))
            raise InvalidHostNameError(
                host, f"character {bad!r} is not allowed (letters, digits, '-' and '_' are)"
            )
    return name


def check_host(host: object, function: str) -> str:
    """Return a host given as ``str`` or ``bytes`` in the form :func:`normalize_host_name` gives.

    ``TypeError`` for anything but ``str`` or ``bytes`` (a programming
    error, as in the standard library); :class:`InvalidHostNameError` for a
    name no resolver could look up.
    """
    if isinstance(host, bytes | bytearray):
        raw = bytes(host)
        if not raw.isascii():
            raise InvalidHostNameError(repr(raw), "bytes must be ASCII")
        host = raw.decode("ascii")
    if not isinstance(host, str):
        raise TypeError(
            f"{function}(): host must be str or bytes, not {type(host).__name__} ({host!r})"
        )
    return normalize_host_name(host)


def parse_service(port: object, socktype: int = 0, flags: int = 0) -> int:
    """Turn getaddrinfo's ``port`` argument (int, digits or a service name) into a port.

    Raises ``socket.gaierror(EAI_SERVICE)`` for an unknown name or a number out
    of range, as glibc does for names (it would wrap numbers; we refuse them);
    with ``AI_NUMERICSERV`` in ``flags`` a name is ``EAI_NONAME``, as glibc says.
    """
    if port is None:
        return 0
    if isinstance(port, bytes | bytearray):
        port = bytes(port).decode("ascii")
    if isinstance(port, str):
        if port.isascii() and port.isdigit():
            port = int(port)
        elif flags & socket.AI_NUMERICSERV:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        else:
            protocol = "udp" if socktype == socket.SOCK_DGRAM else "tcp"
            try:
                return socket.getservbyname(port, protocol)
            except (OSError, AttributeError):
                if port in _WELL_KNOWN_SERVICES:
                    return _WELL_KNOWN_SERVICES[port]
                raise socket.gaierror(
                    socket.EAI_SERVICE, f"Servname not supported for ai_socktype ({port!r})"
                ) from None
    if isinstance(port, bool) or not isinstance(port, int):
        raise OSError(f"Int or String expected, not {type(port).__name__} ({port!r})")
    if not 0 <= port <= 65535:
        raise socket.gaierror(
            socket.EAI_SERVICE, f"Servname not supported for ai_socktype (port {port})"
        )
    return port


def service_socket_types(port: object) -> tuple[int, ...] | None:
    """For a service *name*, the socket types it is defined for (glibc lists only those).

    ``None`` for numbers, which apply to every socket type.
    """
    if isinstance(port, bytes | bytearray):
        port = bytes(port).decode("ascii")
    if not isinstance(port, str) or port.isdigit():
        return None
    kinds = []
    for kind, protocol in ((socket.SOCK_STREAM, "tcp"), (socket.SOCK_DGRAM, "udp")):
        try:
            socket.getservbyname(port, protocol)
        except (OSError, AttributeError):
            if port in _WELL_KNOWN_SERVICES and protocol == "tcp":
                kinds.append(kind)
            continue
        kinds.append(kind)
    return tuple(kinds)


def format_address(address: tuple[str, int]) -> str:
    """``host:port``, with brackets around IPv6 hosts."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
