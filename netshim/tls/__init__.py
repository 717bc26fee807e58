"""TLS from pure Python, for Pythons without ``ssl`` (Pyodide offline): tlslite-ng.

Where the ``ssl`` module is netshim's stand-in, :func:`enable` plugs
tlslite-ng in behind ``SSLContext.wrap_bio``, so that ``ssl=`` on asyncio's
``open_connection`` and httpx / anyio TLS streams run TLS inside the Python
process: a gateway in between only ever carries ciphertext.

What it does: a TLS 1.2 / 1.3 client with SNI and ALPN; the server's chain is
checked against the CA certificates loaded into the context
(``load_verify_locations(cafile=... / cadata=...)``: signatures with
tlslite-ng's own RSA and ECDSA code, validity periods, CA flags) and its name
against ``subjectAltName``.  Not: server side, client certificates,
revocation, RSA-PSS-signed certificates, name constraints.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any, NoReturn

from netshim import _ssl_standin

__all__ = ["disable", "enable", "is_enabled", "new_object"]


def _no_dbm(*args: Any, **kwargs: Any) -> NoReturn:
    raise OSError("this Python has no dbm module")


# tlslite-ng's package imports its SRP verifier database, which imports dbm at
# the top; Pyodide has no dbm.  A TLS client never opens that database, so an
# empty dbm whose open() fails saying why lets tlslite-ng import.
if importlib.util.find_spec("dbm") is None:  # pragma: no cover - Pyodide
    _dbm = types.ModuleType("dbm", "Placeholder: this Python has no dbm module.")
    _dbm.open = _no_dbm  # type: ignore[attr-defined]
    _dbm.error = (OSError,)  # type: ignore[attr-defined]
    sys.modules.setdefault("dbm", _dbm)


def new_object(
    context: Any,
    incoming: Any,
    outgoing: Any,
    server_side: bool,
    server_hostname: str | None,
    session: Any = None,
) -> Any:
    """An ``SSLObject`` for ``context.wrap_bio(...)``: the backend's factory."""
    from netshim.tls._backend import TLSLiteObject

    return TLSLiteObject(context, incoming, outgoing, server_side, server_hostname, session)


def enable() -> None:
    """Make the ssl stand-in's ``SSLContext.wrap_bio`` run TLS with tlslite-ng.

    Raises ImportError (saying what to install) when tlslite-ng is missing.
    On a Python with a real ``ssl`` module this changes nothing that module
    does; only the stand-in's contexts use the backend.
    """
    try:
        import tlslite.api  # noqa: F401 - checked here, used by the backend
    except ImportError as error:
        raise ImportError(
            f"netshim.tls needs tlslite-ng (pure Python): pip install 'netshim[pyodide]', "
            f"or install the tlslite-ng, ecdsa and six wheels ({error})"
        ) from error
    _ssl_standin.tls_backend = new_object


def disable() -> None:
    """Undo :func:`enable`: TLS through the stand-in fails again, saying why."""
    _ssl_standin.tls_backend = None


def is_enabled() -> bool:
    return _ssl_standin.tls_backend is new_object
