"""The ciphers under WireGuard: X25519 and ChaCha20-Poly1305, from one of two backends.

:class:`CryptoBackend` is the seam between the protocol core
(:mod:`netshim.protocols.wireguard`) and whoever computes its curve and AEAD:

* ``"cryptography"`` (OpenSSL through the ``cryptography`` package) wherever it
  imports: CPython, with ``pip install 'netshim[wireguard]'``.  Its
  ``ChaCha20Poly1305`` class *is* the backend's AEAD, so the transport path
  calls it directly, one object per key, with nothing in between;
* ``"tlslite-ng"``, pure Python (``tlslite.utils.chacha20_poly1305`` and
  ``tlslite.utils.x25519``), where ``cryptography`` is absent: Pyodide with
  no CDN in reach (its ``cryptography`` wheel lives only there; PyPI has no
  emscripten build), where netshim's TLS already brings tlslite-ng
  (``netshim[pyodide]``).  Slow: a few tenths of a MiB/s, a few milliseconds
  per X25519 on CPython; enough for handshakes and small transfers.

BLAKE2s, HMAC and HKDF come from ``hashlib`` and ``hmac`` in both; HChaCha20
(for XChaCha20-Poly1305 cookie replies) is pure Python in the core, over
either backend's ChaCha20-Poly1305.  Both backends give the same bytes for
the same keys and ephemerals (tests/wireguard/test_wireguard_crypto.py).
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

__all__ = [
    "Aead",
    "CryptoBackend",
    "PurePythonTagError",
    "X25519Key",
    "crypto_backend",
    "default_backend",
]


class Aead(Protocol):
    """ChaCha20-Poly1305 under one key, as ``cryptography``'s class has it."""

    def encrypt(
        self, nonce: bytes, data: bytes | memoryview, associated_data: bytes | None, /
    ) -> bytes:
        """The ciphertext with its 16-byte tag appended."""

    def decrypt(
        self, nonce: bytes, data: bytes | memoryview, associated_data: bytes | None, /
    ) -> bytes:
        """The plaintext; raises the backend's ``invalid_tag`` when the tag does not verify."""


class X25519Key(Protocol):
    """An X25519 private key."""

    def public_bytes(self) -> bytes:
        """The 32-byte public key."""

    def exchange(self, public: bytes) -> bytes | None:
        """The shared secret, or ``None`` for a public key of small order (all-zero result)."""


@dataclass(frozen=True, slots=True)
class CryptoBackend:
    """Where X25519 and ChaCha20-Poly1305 come from (see the module documentation)."""

    name: str
    #: ChaCha20-Poly1305 under a 32-byte key.
    aead: Callable[[bytes], Aead]
    #: What :meth:`Aead.decrypt` raises when a tag does not verify.
    invalid_tag: type[Exception]
    #: An X25519 private key from 32 bytes (clamped as RFC 7748 says).
    x25519: Callable[[bytes], X25519Key]

    def __repr__(self) -> str:
        return f"<CryptoBackend {self.name}>"


# -- cryptography (OpenSSL) ---------------------------------------------------------


def _cryptography() -> CryptoBackend:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    class OpenSslX25519:
        __slots__ = ("_key",)

        def __init__(self, private: bytes) -> None:
            self._key = X25519PrivateKey.from_private_bytes(private)

        def public_bytes(self) -> bytes:
            return self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

        def exchange(self, public: bytes) -> bytes | None:
            try:
                return self._key.exchange(X25519PublicKey.from_public_bytes(public))
            except ValueError:  # small order: OpenSSL refuses the all-zero result
                return None

    return CryptoBackend("cryptography", ChaCha20Poly1305, InvalidTag, OpenSslX25519)


# -- tlslite-ng (pure Python) ---------------------------------------------------------


class PurePythonTagError(Exception):
    """The pure-Python backend's ``invalid_tag``: a ChaCha20-Poly1305 tag did not verify."""


def _no_dbm(*args: Any, **kwargs: Any) -> NoReturn:
    raise OSError("this Python has no dbm module")


def _tlslite() -> CryptoBackend:
    # tlslite-ng's package imports its SRP verifier database, which imports
    # dbm at the top; Pyodide has no dbm (netshim.tls does the same).
    if importlib.util.find_spec("dbm") is None:  # pragma: no cover - Pyodide
        placeholder = types.ModuleType("dbm", "Placeholder: this Python has no dbm module.")
        placeholder.open = _no_dbm  # type: ignore[attr-defined]
        placeholder.error = (OSError,)  # type: ignore[attr-defined]
        sys.modules.setdefault("dbm", placeholder)
    # Its package also imports asyncore (for an integration WireGuard never
    # uses), which Python 3.11 warns is deprecated; 3.12 has none and
    # tlslite-ng goes on without it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from tlslite.utils.chacha20_poly1305 import CHACHA20_POLY1305
        from tlslite.utils.x25519 import X25519_G, x25519

    class PurePythonChaCha20Poly1305:
        __slots__ = ("_cipher",)

        def __init__(self, key: bytes) -> None:
            self._cipher = CHACHA20_POLY1305(bytearray(key), "python")

        def encrypt(
            self, nonce: bytes, data: bytes | memoryview, associated_data: bytes | None, /
        ) -> bytes:
            return bytes(
                self._cipher.seal(
                    bytearray(nonce), bytearray(data), bytearray(associated_data or b"")
                )
            )

        def decrypt(
            self, nonce: bytes, data: bytes | memoryview, associated_data: bytes | None, /
        ) -> bytes:
            opened = self._cipher.open(
                bytearray(nonce), bytearray(data), bytearray(associated_data or b"")
            )
            if opened is None:
                raise PurePythonTagError
            return bytes(opened)

    base_point = bytes(X25519_G)
    zero = bytes(32)

    class PurePythonX25519:
        __slots__ = ("_private", "_public")

        def __init__(self, private: bytes) -> None:
            if len(private) != 32:
                raise ValueError("an X25519 private key is 32 bytes")
            self._private = bytes(private)
            self._public: bytes | None = None

        def public_bytes(self) -> bytes:
            if self._public is None:
                self._public = self._multiply(base_point)
            return self._public

        def exchange(self, public: bytes) -> bytes | None:
            if len(public) != 32:
                return None
            shared = self._multiply(public)
            return None if shared == zero else shared

        def _multiply(self, point: bytes) -> bytes:
            # tlslite-ng clamps the scalar and masks the point in place: copies.
            return bytes(x25519(bytearray(self._private), bytearray(point)))

    return CryptoBackend(
        "tlslite-ng", PurePythonChaCha20Poly1305, PurePythonTagError, PurePythonX25519
    )


_LOADERS: dict[str, Callable[[], CryptoBackend]] = {
    "cryptography": _cryptography,
    "tlslite-ng": _tlslite,
}


@functools.cache
def crypto_backend(name: str) -> CryptoBackend:
    """The backend called ``name`` (``"cryptography"`` or ``"tlslite-ng"``).

    Raises ``ValueError`` for another name and ``ImportError`` when its
    package is not installed.
    """
    loader = _LOADERS.get(name)
    if loader is None:
        raise ValueError(f"no WireGuard crypto backend {name!r}: one of {', '.join(_LOADERS)}")
    return loader()


@functools.cache
def default_backend() -> CryptoBackend:
    """``cryptography`` when it imports, else tlslite-ng's pure Python; ImportError if neither."""
    try:
        return crypto_backend("cryptography")
    except ImportError:
        pass
    try:
        return crypto_backend("tlslite-ng")
    except ImportError as exc:
        raise ImportError(
            "WireGuard needs the cryptography package (pip install 'netshim[wireguard]'), "
            "or tlslite-ng, pure Python, where cryptography does not install "
            "(pip install 'netshim[pyodide]')"
        ) from exc
