"""The socket module's name functions, answered by the acting stack.

``getaddrinfo``, ``gethostbyname(_ex)``, ``gethostbyaddr``, ``getnameinfo``
and ``gethostname`` ask the stack through the engine; ``getfqdn``,
``create_connection`` and ``create_server`` need no patch of their own since
they call these through the module's globals.

For stacks that resolve names at the far end (tunnels), a name must reach
the stack as a name, yet unmodified code calls ``getaddrinfo`` first and
then connects to an IP.  So ``getaddrinfo`` hands out a *synthetic* address
from a range no real network uses (198.18.0.0/15, reserved for benchmarking,
and the IPv6 discard prefix 100::/64), remembers which name it stands for,
and ``connect``/``sendto`` turn it back into the name, as emscripten's
SOCKFS and fake-IP proxies do.  The same name always gets the same address
for the life of the process.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import operator
import os
import socket
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

from .. import _system
from .._addresses import IPAddress, check_host, parse_ip, parse_service, service_socket_types
from .._addrinfo import AddrInfo, has_interface_scope, ip_text, resolve_addrinfo, zone_scope_id
from ._engine import get_engine

__all__ = [
    "gethostbyaddr",
    "gethostbyname",
    "gethostbyname_ex",
    "gethostname",
    "getaddrinfo",
    "getnameinfo",
    "synthetic_name",
]

T = TypeVar("T")


SYNTHETIC_IPV4 = ipaddress.IPv4Network("198.18.0.0/15")
SYNTHETIC_IPV6 = ipaddress.IPv6Network("100::/64")


class SyntheticNames:
    """A two-way map between names and the synthetic addresses standing for them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[str, tuple[IPAddress, IPAddress]] = {}
        self._by_address: dict[IPAddress, str] = {}
        self._next = 1

    def addresses_for(self, name: str) -> tuple[IPAddress, IPAddress]:
        with self._lock:
            known = self._by_name.get(name)
            if known is not None:
                return known
            number = self._next
            if number >= SYNTHETIC_IPV4.num_addresses - 1:
                raise OSError(errno.ENOSPC, "the synthetic address range is exhausted")
            self._next += 1
            pair = (SYNTHETIC_IPV4[number], SYNTHETIC_IPV6[number])
            self._by_name[name] = pair
            for address in pair:
                self._by_address[address] = name
            return pair

    def name_for(self, host: str | IPAddress) -> str | None:
        """The name ``host`` (an address, or its text) stands for, or ``None``."""
        if not self._by_address:
            return None
        ip = parse_ip(host) if isinstance(host, str) else host
        if ip is None:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return self._by_address.get(ip)


synthetic = SyntheticNames()


def _new_synthetic_lock() -> None:
    # Another thread may have held the lock when fork() copied it, held.
    synthetic._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_synthetic_lock)


def in_synthetic_range(ip: IPAddress) -> bool:
    """Whether ``ip`` may stand for a name, now or later."""
    return ip in SYNTHETIC_IPV4 if ip.version == 4 else ip in SYNTHETIC_IPV6


def synthetic_name(host: str) -> str | None:
    """The name a synthetic address stands for, or ``None``."""
    return synthetic.name_for(host)


def _stack() -> Any:
    # Looked up once: an import statement costs more than the rest of a call.
    global _acting_stack
    if _acting_stack is None:
        from ._patch import current_acting_stack

        _acting_stack = current_acting_stack
    return _acting_stack()


_acting_stack: Any = None


def getaddrinfo(
    host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
) -> list[AddrInfo]:
    """:func:`socket.getaddrinfo` on the acting stack."""
    return getaddrinfo_on((_acting_stack or _stack)(), host, port, family, type, proto, flags)


def getaddrinfo_on(
    stack: Any, host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
) -> list[AddrInfo]:
    """getaddrinfo on a given stack (a socket's own, after uninstall() too)."""
    if stack.uses_host_sockets:
        return _system.getaddrinfo(host, port, family, type, proto, flags)  # type: ignore[return-value]
    # As the C function's argument parsing: integers (bools and IntEnums too).
    family = operator.index(family)
    type = operator.index(type)
    proto = operator.index(proto)
    flags = operator.index(flags)
    key = (host, port.__class__, port, family, type, proto, flags)
    try:
        known = _numeric_answers.get(key)
    except TypeError:  # unhashable: the checks below say what is wrong
        known = None
    if known is not None:
        return list(known)
    raw = _as_cpython_encodes(host)
    name = None if host is None else check_host(raw, "getaddrinfo")
    ip = parse_ip(name) if name is not None else None
    if name is None or ip is not None:
        # No name to look up: the answer is glibc's rules alone, the same on
        # every stack (the contract says so), so it costs no trip to the engine.
        # (Names, "localhost" included, are the stack's: a policy may track them.)
        number = parse_service(port, type, flags)
        infos = _finish_now(
            resolve_addrinfo(
                _no_lookup, name, number, family, type, proto, flags, service_socket_types(port)
            )
        )
        # The zone of an IPv6 literal (checked here: the name lost it) is
        # the scope id of every answer.
        text = raw.decode("ascii", "replace") if isinstance(raw, bytes | bytearray) else str(raw)
        scope_id = zone_scope_id(text, ip) if ip is not None else 0
        if scope_id:
            infos = [
                (*info[:4], (*info[4][:3], scope_id)) if len(info[4]) == 4 else info
                for info in infos
            ]
        if isinstance(host, str) and len(host) <= _MAX_NUMERIC_TEXT:
            if len(_numeric_answers) >= _MAX_NUMERIC_ANSWERS:
                _numeric_answers.clear()
            _numeric_answers[key] = tuple(infos)
        return infos
    if (
        stack.resolves_remotely
        and name
        and name != "localhost"
        and not flags & socket.AI_NUMERICHOST
    ):
        number = parse_service(port, type, flags)
        pair = synthetic.addresses_for(name)

        async def lookup(name: str, family: int) -> tuple[list[IPAddress], str]:
            return [pair[0], pair[1]], name

        return _finish_now(
            resolve_addrinfo(
                lookup, name, number, family, type, proto, flags, service_socket_types(port)
            )
        )
    answered: list[AddrInfo] | None = stack.getaddrinfo_now(name, port, family, type, proto, flags)
    if answered is not None:
        return answered  # no trip to the engine
    result: list[AddrInfo] = get_engine().call(
        stack.getaddrinfo, name, port, family, type, proto, flags
    )
    return result


# Answers for addresses given as text (``create_connection`` asks for the
# same few each time): they depend on the arguments alone.  Bounded, as
# programs may pass any text: the table starts over when full.
_numeric_answers: dict[tuple[Any, ...], tuple[AddrInfo, ...]] = {}
_MAX_NUMERIC_ANSWERS = 256
# The longest IP literal with a zone worth keeping (an IPv6 address is 45).
_MAX_NUMERIC_TEXT = 64


def _finish_now(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends, without an event loop."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("a synthetic lookup tried to wait")


def _as_cpython_encodes(host: Any) -> Any:
    """A ``str`` host as CPython hands it to the C library: IDNA-encoded.

    CPython encodes every ``str`` host with the ``idna`` codec (IDNA 2003),
    raising ``UnicodeError`` where that fails: the stack then sees the name
    the C library would have seen.
    """
    if isinstance(host, str):
        return host.encode("idna").decode("ascii")
    return host


async def _no_lookup(name: str, family: int) -> tuple[list[IPAddress], str]:
    raise AssertionError(f"a numeric lookup tried to look up {name!r}")


def gethostbyname(hostname: str) -> str:
    """:func:`socket.gethostbyname`: the first IPv4 address of ``hostname``."""
    infos = getaddrinfo(hostname, None, socket.AF_INET)
    return str(infos[0][4][0])


def gethostbyname_ex(hostname: str) -> tuple[str, list[str], list[str]]:
    """:func:`socket.gethostbyname_ex`: canonical name, aliases and IPv4 addresses."""
    infos = getaddrinfo(hostname, None, socket.AF_INET, socket.SOCK_STREAM, 0, socket.AI_CANONNAME)
    canonical = infos[0][3] or hostname
    addresses: list[str] = []
    for info in infos:
        if info[4][0] not in addresses:
            addresses.append(str(info[4][0]))
    aliases = [hostname] if canonical != hostname else []
    return canonical, aliases, addresses


def gethostbyaddr(ip_address: str) -> tuple[str, list[str], list[str]]:
    """:func:`socket.gethostbyaddr`: the name of an address (a name is resolved first)."""
    if parse_ip(ip_address) is None:
        ip_address = str(getaddrinfo(ip_address, None)[0][4][0])
    stack = _stack()
    name = synthetic_name(ip_address)
    if name is None:
        name = get_engine().call(stack.reverse_lookup, ip_address)
    return name, [], [ip_address]


def getnameinfo(sockaddr: tuple[Any, ...], flags: int) -> tuple[str, str]:
    """:func:`socket.getnameinfo` on the acting stack.

    The host network answers with the C library's own function (scope ids,
    flow info checks and all).  Elsewhere the address must be numeric, as the
    C library requires: a name is ``gaierror(EAI_NONAME)``.
    """
    if not isinstance(sockaddr, tuple):
        # Let go of the argument: the traceback keeps this frame, and the C
        # function holds no reference to it (CPython's tests count them).
        sockaddr = None
        raise TypeError("getnameinfo() argument 1 must be a tuple")
    stack = _stack()
    if stack.uses_host_sockets:
        return _system.getnameinfo(sockaddr, flags)
    if len(sockaddr) < 2:
        raise TypeError("getnameinfo() argument 1 must be a tuple")
    flags = operator.index(flags)
    host, port = sockaddr[0], sockaddr[1]
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"'{type(port).__name__}' object cannot be interpreted as an integer")
    if len(sockaddr) > 2 and not 0 <= operator.index(sockaddr[2]) <= 0xFFFFF:
        raise OverflowError("getnameinfo(): flowinfo must be 0-1048575.")
    if not isinstance(host, str):
        raise TypeError(f"getnameinfo(): illegal sockaddr argument ({type(host).__name__})")
    ip = parse_ip(host)
    if ip is None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    # Written as glibc writes it (lower case, compressed), with the scope id
    # of an IPv6 address as its interface's name or its number.
    name = ip_text(ip)
    scope_id = operator.index(sockaddr[3]) if len(sockaddr) > 3 else 0
    if scope_id and ip.version == 6:
        zone = str(scope_id)
        if has_interface_scope(ip):
            with contextlib.suppress(OSError):
                zone = socket.if_indextoname(scope_id)
        name = f"{name}%{zone}"
    if not flags & socket.NI_NUMERICHOST:
        try:
            name = gethostbyaddr(str(host))[0]
        except OSError:
            if flags & socket.NI_NAMEREQD:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
        else:
            if flags & socket.NI_NOFQDN:
                name = name.split(".", 1)[0]
    service = str(port)
    if not flags & socket.NI_NUMERICSERV:
        try:
            service = socket.getservbyport(port, "udp" if flags & socket.NI_DGRAM else "tcp")
        except OSError:
            service = str(port)
    return name, service


# Names given with sethostname(), per stack: the stack's UTS name, as Linux
# keeps it apart from DNS (the network's records do not change).
_host_names: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_original_sethostname = getattr(socket, "sethostname", None)


def gethostname() -> str:
    """:func:`socket.gethostname`: the acting host's name (or what sethostname() set)."""
    stack = _stack()
    if stack.uses_host_sockets:
        return _system.gethostname()
    return _host_names.get(stack) or str(stack.hostname)


def sethostname(name: Any) -> None:
    """:func:`socket.sethostname`: on a stack of netshim's, the name ``gethostname()`` answers.

    The host network's is the machine's (which needs the privilege Linux
    asks for).  Elsewhere the name is the acting stack's alone: the machine's
    stays as it was, and no lookup answers the new name, as on Linux, where
    the host name and DNS are apart.
    """
    stack = _stack()
    if stack.uses_host_sockets:
        if _original_sethostname is None:
            raise AttributeError("module 'socket' has no attribute 'sethostname'")
        _original_sethostname(name)
        return
    if isinstance(name, str):
        text = name
    else:
        try:
            text = os.fsdecode(bytes(memoryview(name)))
        except TypeError:
            raise TypeError(
                f"sethostname() argument 1 must be str or bytes-like, not {type(name).__name__}"
            ) from None
    if "\0" in text:
        raise ValueError("embedded null character")
    if len(os.fsencode(text)) > 64:  # Linux's HOST_NAME_MAX
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    _host_names[stack] = text
