"""A stand-in ``ssl`` module for Pythons built without one (Pyodide).

Pyodide ships ``ssl`` as a separate package that comes from its CDN; where
that is out of reach, ``import ssl`` fails, and with it anyio, httpx, redis-py
and everything else that imports ``ssl`` at the top (most network libraries,
even for plain-text connections).  :func:`ensure_ssl_module` then registers
this module as ``ssl``: it has the names those imports and type annotations
need (``SSLContext``, ``SSLObject``, ``MemoryBIO``, the exceptions, ``Purpose``,
the constants) and a real pure-Python :class:`MemoryBIO`.  An actual TLS
session needs a TLS implementation: until one is plugged in (see
:mod:`netshim.tls`), making one raises :class:`SSLError` saying so.

It is only ever registered where importing the real module failed.
"""

from __future__ import annotations

import enum
import importlib.util
import sys
import types
from typing import Any

__all__ = ["ensure_ssl_module", "is_standin"]

_MISSING_TLS = (
    "this Python has no ssl module and no TLS implementation was plugged in; "
    "in Pyodide, load Pyodide's ssl package, or install tlslite-ng and call netshim.tls.enable()"
)


class SSLError(OSError):
    """As ``ssl.SSLError``."""

    library: str | None = None
    reason: str | None = None


class SSLZeroReturnError(SSLError):
    pass


class SSLWantReadError(SSLError):
    pass


class SSLWantWriteError(SSLError):
    pass


class SSLSyscallError(SSLError):
    pass


class SSLEOFError(SSLError):
    pass


class SSLCertVerificationError(SSLError, ValueError):
    verify_code: int = 0
    verify_message: str = ""


CertificateError = SSLCertVerificationError


class Purpose(enum.Enum):
    SERVER_AUTH = ("1.3.6.1.5.5.7.3.1", 129, "serverAuth", "TLS Web Server Authentication")
    CLIENT_AUTH = ("1.3.6.1.5.5.7.3.2", 130, "clientAuth", "TLS Web Client Authentication")


class TLSVersion(enum.IntEnum):
    MINIMUM_SUPPORTED = -2
    SSLv3 = 768
    TLSv1 = 769
    TLSv1_1 = 770
    TLSv1_2 = 771
    TLSv1_3 = 772
    MAXIMUM_SUPPORTED = -1


class VerifyMode(enum.IntEnum):
    CERT_NONE = 0
    CERT_OPTIONAL = 1
    CERT_REQUIRED = 2


class _SSLMethod(enum.IntEnum):
    PROTOCOL_TLS = 2
    PROTOCOL_TLS_CLIENT = 16
    PROTOCOL_TLS_SERVER = 17


CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED = VerifyMode
PROTOCOL_TLS = PROTOCOL_SSLv23 = _SSLMethod.PROTOCOL_TLS
PROTOCOL_TLS_CLIENT = _SSLMethod.PROTOCOL_TLS_CLIENT
PROTOCOL_TLS_SERVER = _SSLMethod.PROTOCOL_TLS_SERVER
# OpenSSL's option bits, so code that ORs them into context.options works.
OP_ALL = 0x80000850
OP_NO_SSLv2 = 0
OP_NO_SSLv3 = 0x02000000
OP_NO_TLSv1 = 0x04000000
OP_NO_TLSv1_1 = 0x10000000
OP_NO_TLSv1_2 = 0x08000000
OP_NO_TLSv1_3 = 0x20000000
OP_NO_COMPRESSION = 0x00020000
OP_NO_TICKET = 0x00004000
OP_NO_RENEGOTIATION = 0x40000000
OP_CIPHER_SERVER_PREFERENCE = 0x00400000
OP_SINGLE_DH_USE = 0
OP_SINGLE_ECDH_USE = 0
OP_IGNORE_UNEXPECTED_EOF = 0x00000080
OP_ENABLE_MIDDLEBOX_COMPAT = 0x00100000


class VerifyFlags(enum.IntFlag):
    VERIFY_DEFAULT = 0
    VERIFY_CRL_CHECK_LEAF = 0x4
    VERIFY_CRL_CHECK_CHAIN = 0xC
    VERIFY_X509_STRICT = 0x20
    VERIFY_X509_TRUSTED_FIRST = 0x8000
    VERIFY_X509_PARTIAL_CHAIN = 0x80000
    VERIFY_ALLOW_PROXY_CERTS = 0x40


VERIFY_DEFAULT = VerifyFlags.VERIFY_DEFAULT
VERIFY_X509_STRICT = VerifyFlags.VERIFY_X509_STRICT
VERIFY_X509_PARTIAL_CHAIN = VerifyFlags.VERIFY_X509_PARTIAL_CHAIN
VERIFY_X509_TRUSTED_FIRST = VerifyFlags.VERIFY_X509_TRUSTED_FIRST
VERIFY_CRL_CHECK_LEAF = VerifyFlags.VERIFY_CRL_CHECK_LEAF
VERIFY_CRL_CHECK_CHAIN = VerifyFlags.VERIFY_CRL_CHECK_CHAIN
VERIFY_ALLOW_PROXY_CERTS = VerifyFlags.VERIFY_ALLOW_PROXY_CERTS
# The error codes of SSLError.errno, as OpenSSL numbers them.
SSL_ERROR_SSL = 1
SSL_ERROR_WANT_READ = 2
SSL_ERROR_WANT_WRITE = 3
SSL_ERROR_WANT_X509_LOOKUP = 4
SSL_ERROR_SYSCALL = 5
SSL_ERROR_ZERO_RETURN = 6
SSL_ERROR_WANT_CONNECT = 7
SSL_ERROR_EOF = 8
SSL_ERROR_INVALID_ERROR_CODE = 10
HAS_SNI = HAS_ALPN = HAS_ECDH = HAS_TLSv1_2 = HAS_TLSv1_3 = True
HAS_NPN = HAS_NEVER_CHECK_COMMON_NAME = False
OPENSSL_VERSION = "none (netshim ssl stand-in)"
OPENSSL_VERSION_INFO = (0, 0, 0, 0, 0)
OPENSSL_VERSION_NUMBER = 0
CHANNEL_BINDING_TYPES: list[str] = []
SOCK_STREAM = 1


class MemoryBIO:
    """As ``ssl.MemoryBIO``: a byte buffer that TLS reads from or writes to."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.eof = False

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > len(self._buffer):
            size = len(self._buffer)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        if not self._buffer and self._eof_written:
            self.eof = True
        return data

    _eof_written = False

    def write(self, data: Any) -> int:
        if self._eof_written:
            raise SSLError("cannot write() after write_eof()")
        view = memoryview(data).cast("B")
        self._buffer.extend(view)
        return len(view)

    def write_eof(self) -> None:
        self._eof_written = True
        if not self._buffer:
            self.eof = True


#: The TLS implementation behind SSLContext.wrap_bio, once one is plugged in:
#: ``factory(context, incoming, outgoing, server_side, server_hostname, session)``.
tls_backend: Any = None


class SSLObject:
    """As ``ssl.SSLObject``; made by :meth:`SSLContext.wrap_bio` through the backend."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            f"{self.__class__.__name__} does not have a public constructor. "
            "Instances are returned by SSLContext.wrap_bio()."
        )


class SSLSocket:
    """As ``ssl.SSLSocket``; there are no TLS sockets without a file descriptor."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise SSLError(_MISSING_TLS)


class SSLSession:
    pass


class SSLContext:
    """As ``ssl.SSLContext``: settings for TLS sessions made with :meth:`wrap_bio`."""

    sslobject_class = SSLObject
    sslsocket_class = SSLSocket

    def __init__(self, protocol: int = PROTOCOL_TLS, *args: Any, **kwargs: Any) -> None:
        self.protocol = _SSLMethod(protocol)
        server = protocol == PROTOCOL_TLS_SERVER
        self.verify_mode = CERT_NONE if server or protocol == PROTOCOL_TLS else CERT_REQUIRED
        self.check_hostname = protocol == PROTOCOL_TLS_CLIENT
        self.options = OP_ALL | OP_NO_SSLv3
        self.verify_flags = VERIFY_DEFAULT
        self.minimum_version = TLSVersion.TLSv1_2
        self.maximum_version = TLSVersion.MAXIMUM_SUPPORTED
        self.post_handshake_auth = False
        self.keylog_filename: str | None = None
        self.security_level = 2
        self.alpn_protocols: list[str] = []
        self.ca_pem: list[str] = []
        self.cert_chain: tuple[Any, ...] | None = None
        self.ciphers: str | None = None
        self.sni_callback: Any = None

    def load_verify_locations(
        self, cafile: Any = None, capath: Any = None, cadata: Any = None
    ) -> None:
        if cafile is not None:
            with open(cafile) as file:
                self.ca_pem.append(file.read())
        if cadata is not None:
            self.ca_pem.append(cadata if isinstance(cadata, str) else bytes(cadata).decode())

    def load_default_certs(self, purpose: Purpose = Purpose.SERVER_AUTH) -> None:
        pass

    def set_default_verify_paths(self) -> None:
        pass

    def load_cert_chain(self, certfile: Any, keyfile: Any = None, password: Any = None) -> None:
        self.cert_chain = (certfile, keyfile, password)

    def set_alpn_protocols(self, protocols: list[str]) -> None:
        self.alpn_protocols = list(protocols)

    def set_ciphers(self, ciphers: str) -> None:
        self.ciphers = ciphers

    def set_ecdh_curve(self, name: str) -> None:
        pass

    def get_ca_certs(self, binary_form: bool = False) -> list[Any]:
        return []

    def cert_store_stats(self) -> dict[str, int]:
        return {"x509": len(self.ca_pem), "crl": 0, "x509_ca": len(self.ca_pem)}

    def wrap_bio(
        self,
        incoming: MemoryBIO,
        outgoing: MemoryBIO,
        server_side: bool = False,
        server_hostname: str | None = None,
        session: Any = None,
    ) -> Any:
        if tls_backend is None:
            raise SSLError(_MISSING_TLS)
        return tls_backend(self, incoming, outgoing, server_side, server_hostname, session)

    def wrap_socket(self, *args: Any, **kwargs: Any) -> Any:
        raise SSLError(
            "this Python has no ssl module: TLS runs over asyncio transports "
            "(ssl= on open_connection), not over sockets"
        )


def create_default_context(
    purpose: Purpose = Purpose.SERVER_AUTH,
    *,
    cafile: Any = None,
    capath: Any = None,
    cadata: Any = None,
) -> SSLContext:
    server = purpose == Purpose.CLIENT_AUTH
    context = SSLContext(PROTOCOL_TLS_SERVER if server else PROTOCOL_TLS_CLIENT)
    if cafile or capath or cadata:
        context.load_verify_locations(cafile, capath, cadata)
    return context


_create_default_https_context = create_default_context


def DER_cert_to_PEM_cert(der_cert_bytes: bytes) -> str:  # noqa: N802 - the ssl module's name
    import base64
    import textwrap

    body = textwrap.fill(base64.standard_b64encode(der_cert_bytes).decode("ascii"), 64)
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"


def PEM_cert_to_DER_cert(pem_cert_string: str) -> bytes:  # noqa: N802 - the ssl module's name
    import base64

    lines = pem_cert_string.strip().splitlines()
    return base64.decodebytes("".join(lines[1:-1]).encode("ascii"))


def get_server_certificate(*args: Any, **kwargs: Any) -> str:
    raise SSLError(_MISSING_TLS)


def match_hostname(cert: Any, hostname: str) -> None:
    raise SSLError(_MISSING_TLS)


def get_default_verify_paths() -> Any:
    return types.SimpleNamespace(
        cafile=None, capath=None, openssl_cafile_env="SSL_CERT_FILE", openssl_cafile="",
        openssl_capath_env="SSL_CERT_DIR", openssl_capath="",
    )  # fmt: skip


def is_standin(module: Any) -> bool:
    """Whether ``module`` is this stand-in rather than the real ``ssl``."""
    return getattr(module, "__netshim_standin__", False) is True


__netshim_standin__ = True


def ensure_ssl_module() -> bool:
    """Register this module as ``ssl`` if this Python has none; True if it did.

    asyncio imported ``ssl`` before (and found none), so its SSL protocol
    module is pointed at the stand-in too.
    """
    if "ssl" in sys.modules and sys.modules["ssl"] is not None:
        return is_standin(sys.modules["ssl"])
    if importlib.util.find_spec("ssl") is not None:
        return False
    module = sys.modules[__name__]
    sys.modules["ssl"] = module
    sslproto = sys.modules.get("asyncio.sslproto")
    if sslproto is not None and getattr(sslproto, "ssl", None) is None:
        sslproto.ssl = module  # type: ignore[attr-defined]
        sslproto.SSLAgainErrors = (SSLWantReadError, SSLSyscallError)  # type: ignore[attr-defined]
    return True


# netshim imports this module before anything that imports ssl (anyio does).
ensure_ssl_module()
