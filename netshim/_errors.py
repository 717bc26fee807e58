"""Errors shared by every layer of netshim.

Two families, as in h11 and wsproto:

* Network failures are the ``OSError`` subclasses, with the ``errno`` values and
  messages that Linux gives for the same event, so code written against real
  sockets handles them unchanged.  The helpers below build them in one place so
  that every stack words them the same way.
* Protocol violations (a malformed Wisp frame, a SOCKS5 reply that makes no
  sense) are :class:`ProtocolError`: :class:`LocalProtocolError` when our own
  code broke the protocol, :class:`RemoteProtocolError` when the peer did.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from ._addresses import format_address

__all__ = [
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "address_in_use",
    "address_not_available",
    "broken_pipe",
    "connection_refused",
    "connection_reset",
    "connection_timed_out",
    "error_from_text",
    "host_unreachable",
    "map_exceptions",
    "message_too_long",
    "name_not_known",
    "name_temporarily_unresolvable",
    "network_unreachable",
    "no_address_for_name",
    "os_error",
    "permission_denied",
]


class ProtocolError(Exception):
    """A protocol was violated; ``hint`` is what the protocol says to send back."""

    def __init__(self, message: str, hint: int | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class LocalProtocolError(ProtocolError):
    """Our side tried to do something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


# Pyodide: errno values are Emscripten's, not Linux's (see os_error).
_EMSCRIPTEN = sys.platform == "emscripten"


def os_error(code: int, detail: str | None = None) -> OSError:
    """Build the ``OSError`` subclass Python itself raises for ``code``.

    ``OSError(code, msg)`` picks the subclass from the errno (for example
    ``ECONNREFUSED`` gives ``ConnectionRefusedError``), exactly as a failing
    system call does.  ``detail`` is appended to the operating system's message.
    """
    message = os.strerror(code)
    if _EMSCRIPTEN and code in errno.errorcode:
        # Emscripten numbers errors its own way (EACCES is 2, ECONNREFUSED 14):
        # the name keeps "[Errno 2] Permission denied" from reading as ENOENT.
        message = f"{message} ({errno.errorcode[code]})"
    if detail:
        message = f"{message} ({detail})"
    return OSError(code, message)


_ERRNO_TEXT = re.compile(r"\[Errno (-?\d+)\] (.*)", re.DOTALL)


def error_from_text(text: str) -> OSError | None:
    """The error a peer's ``str(exc)`` names (``[Errno 13] netshim policy refused ...``).

    Negative numbers are resolver errors (``socket.gaierror``); ``None``
    when ``text`` names no errno.  Lets a tunnel hand a remote error to the
    program as the same exception the gateway saw.
    """
    match = _ERRNO_TEXT.match(text.strip())
    if match is None:
        return None
    code, message = int(match.group(1)), match.group(2).strip()
    if code < 0:
        return socket.gaierror(code, message)
    return OSError(code, message)


def _where(address: tuple[str, int] | None) -> str | None:
    return None if address is None else format_address(address)


def connection_refused(address: tuple[str, int] | None = None) -> OSError:
    return os_error(errno.ECONNREFUSED, _where(address))


def connection_reset(address: tuple[str, int] | None = None) -> OSError:
    return os_error(errno.ECONNRESET, _where(address))


def broken_pipe(address: tuple[str, int] | None = None) -> OSError:
    return os_error(errno.EPIPE, _where(address))


def connection_timed_out(address: tuple[str, int] | None = None) -> OSError:
    return os_error(errno.ETIMEDOUT, _where(address))


def host_unreachable(address: tuple[str, int] | None = None) -> OSError:
    return os_error(errno.EHOSTUNREACH, _where(address))


def network_unreachable(address: tuple[str, int] | None = None) -> OSError:
    return os_error(errno.ENETUNREACH, _where(address))


def address_in_use(address: tuple[str, int] | None = None) -> OSError:
    return os_error(errno.EADDRINUSE, _where(address))


def address_not_available(address: tuple[str, int] | None = None) -> OSError:
    return os_error(errno.EADDRNOTAVAIL, _where(address))


def message_too_long(size: int, limit: int) -> OSError:
    return os_error(errno.EMSGSIZE, f"{size} bytes, at most {limit}")


def permission_denied(detail: str) -> OSError:
    return os_error(errno.EACCES, detail)


# glibc's wording for the getaddrinfo() failures a resolver can produce.
def name_not_known(name: str) -> socket.gaierror:
    return socket.gaierror(socket.EAI_NONAME, f"Name or service not known ({name!r})")


def no_address_for_name(name: str) -> socket.gaierror:
    return socket.gaierror(socket.EAI_NODATA, f"No address associated with hostname ({name!r})")


def name_temporarily_unresolvable(name: str) -> socket.gaierror:
    return socket.gaierror(socket.EAI_AGAIN, f"Temporary failure in name resolution ({name!r})")


@contextmanager
def map_exceptions(
    mapping: Mapping[type[BaseException], Callable[[BaseException], BaseException]],
) -> Iterator[None]:
    """Translate exceptions at a stack boundary, once, as httpcore does.

    ``mapping`` goes from an exception type to a function building the
    replacement from the caught exception; the original becomes ``__cause__``.
    Exceptions that match no entry pass through untouched.
    """
    try:
        yield
    except BaseException as exc:
        for kind, build in mapping.items():
            if isinstance(exc, kind):
                replacement = build(exc)
                if replacement is exc:
                    raise
                raise replacement from exc
        raise
