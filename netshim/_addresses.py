"""Checking and normalising ports, IP addresses and host names.

Every stack takes user input through these functions so that bad input fails
the same way everywhere, with the exception the standard library raises for the
same mistake (``TypeError`` for a port that is not an integer, ``OverflowError``
for one out of range, ``UnicodeError`` for an over-long label,
``socket.gaierror`` for an unknown service name) and a message naming the value.
Nothing is clamped or wrapped silently, not even where glibc would wrap a port
of 70000 to 4464.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import TypeAlias

__all__ = [
    "Address",
    "IPAddress",
    "check_host",
    "check_port",
    "format_address",
    "is_ip",
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
    candidate = text.split("%", 1)[0] if ":" in text else text
    try:
        return ipaddress.ip_address(candidate)
    except ValueError:
        return None


def is_ip(text: str) -> bool:
    return parse_ip(text) is not None


def check_host(host: object, function: str) -> str:
    """Return a host given as ``str`` or ``bytes`` as normalised text.

    IP literals come back in their canonical form (``fd00:0::2`` becomes
    ``fd00::2``); names come back lower-case and IDNA-encoded, raising
    ``UnicodeError`` for an empty or over-long label exactly as the standard
    library's ``idna`` codec does, and ``ValueError`` for a name longer than
    RFC 1035 allows.
    """
    if isinstance(host, bytes | bytearray):
        host = bytes(host).decode("ascii")
    if not isinstance(host, str):
        raise TypeError(
            f"{function}(): host must be str or bytes, not {type(host).__name__} ({host!r})"
        )
    address = parse_ip(host)
    if address is not None:
        return str(address)
    if host == "":
        return host
    # The codec checks label lengths and rejects empty labels ("a..b").
    ascii_name = host.rstrip(".").encode("idna").decode("ascii").lower() if host != "." else ""
    if len(ascii_name) > MAX_NAME_LENGTH:
        raise ValueError(
            f"{function}(): host name is {len(ascii_name)} characters long, "
            f"at most {MAX_NAME_LENGTH} are allowed: {host[:40]!r}..."
        )
    return ascii_name


def parse_service(port: object, socktype: int = 0) -> int:
    """Turn getaddrinfo's ``port`` argument (int, digits or a service name) into a port.

    Raises ``socket.gaierror(EAI_SERVICE)`` for an unknown name or a number out
    of range, as glibc does for names (it would wrap numbers; we refuse them).
    """
    if port is None:
        return 0
    if isinstance(port, bytes | bytearray):
        port = bytes(port).decode("ascii")
    if isinstance(port, str):
        if port.isdigit():
            port = int(port)
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
