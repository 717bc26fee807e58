"""DNS errors with Node's codes (``dns.NOTFOUND`` is ``"ENOTFOUND"`` and so on)."""

from __future__ import annotations

from typing import Final

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
    "DnsError",
    "DnsNameError",
]

NODATA: Final = "ENODATA"
FORMERR: Final = "EFORMERR"
SERVFAIL: Final = "ESERVFAIL"
NOTFOUND: Final = "ENOTFOUND"
NOTIMP: Final = "ENOTIMP"
REFUSED: Final = "EREFUSED"
BADQUERY: Final = "EBADQUERY"
BADNAME: Final = "EBADNAME"
BADFAMILY: Final = "EBADFAMILY"
BADRESP: Final = "EBADRESP"
CONNREFUSED: Final = "ECONNREFUSED"
TIMEOUT: Final = "ETIMEOUT"
CANCELLED: Final = "ECANCELLED"
DESTRUCTION: Final = "EDESTRUCTION"

# What a response code means to a stub resolver, as Node's error codes.
RCODE_ERRORS: Final = {1: FORMERR, 2: SERVFAIL, 3: NOTFOUND, 4: NOTIMP, 5: REFUSED}


class DnsError(OSError):
    """A failed DNS operation: ``code`` (Node's, e.g. ``"ENOTFOUND"``), ``syscall``, ``hostname``.

    ``syscall`` names the operation as Node does: ``"queryA"``,
    ``"queryMx"``, ``"getHostByAddr"`` for :func:`reverse`, ``"getaddrinfo"``
    for :func:`lookup`, ``"getnameinfo"`` for :func:`lookup_service`.  It is
    an ``OSError`` (with ``errno`` ``None``) so that code catching network
    errors broadly catches it too.
    """

    def __init__(self, code: str, syscall: str, hostname: str | None, detail: str = "") -> None:
        where = f" {hostname}" if hostname is not None else ""
        super().__init__(f"{syscall} {code}{where}" + (f" ({detail})" if detail else ""))
        self.code = code
        self.syscall = syscall
        self.hostname = hostname

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.code, self.syscall, self.hostname))


class DnsNameError(DnsError, ValueError):
    """A name DNS cannot carry (``EBADNAME``): an empty or over-long label or name.

    Also a ``ValueError``, as the name is bad input rather than a network failure.
    """
