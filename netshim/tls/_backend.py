"""An ``ssl.SSLObject`` made of tlslite-ng, driven over two memory BIOs.

asyncio's SSL protocol and anyio's TLS stream feed received bytes into one
BIO, call ``do_handshake`` / ``read`` / ``write`` / ``unwrap`` and send
whatever lands in the other BIO, retrying on ``SSLWantReadError``.
tlslite-ng runs over a socket; its asynchronous API (generators yielding 0
when they need to read) lets a socket-like object that reads the BIO and
raises ``EWOULDBLOCK`` when it is empty stand in for one.  A generator left
waiting keeps its partial state, so each operation keeps its generator until
it finishes rather than starting over.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator
from typing import Any

from tlslite.api import (
    HandshakeSettings,
    TLSAbruptCloseError,
    TLSAuthenticationError,
    TLSConnection,
    TLSError,
    TLSLocalAlert,
    TLSRemoteAlert,
)
from tlslite.constants import CipherSuite

from netshim import _ssl_standin
from netshim.tls._x509 import Certificate, CertificateError, match_hostname, pem_to_der_list

__all__ = ["TLSLiteObject"]

_VERSIONS = {(3, 1): "TLSv1", (3, 2): "TLSv1.1", (3, 3): "TLSv1.2", (3, 4): "TLSv1.3"}


def _ssl() -> Any:
    """The ``ssl`` module callers catch exceptions from: the real one on CPython."""
    module = sys.modules.get("ssl")
    return module if module is not None else _ssl_standin


class _BIOSocket:
    """The socket tlslite-ng reads and writes: the two BIOs."""

    def __init__(self, incoming: Any, outgoing: Any) -> None:
        self._incoming = incoming
        self._outgoing = outgoing

    def recv(self, size: int) -> bytes:
        if self._incoming.pending:
            return bytes(self._incoming.read(size))
        if self._incoming.eof:
            return b""
        # tlslite-ng's generators turn this errno into "yield 0": want read.
        raise BlockingIOError(errno.EWOULDBLOCK, "no TLS data received yet")

    def send(self, data: bytes) -> int:
        return int(self._outgoing.write(bytes(data)))

    def sendall(self, data: bytes) -> None:
        self._outgoing.write(bytes(data))

    def close(self) -> None:
        # The transport beneath belongs to the caller; closing TLS leaves it open.
        pass

    def shutdown(self, how: int) -> None:
        pass

    def settimeout(self, timeout: float | None) -> None:
        pass

    def gettimeout(self) -> float | None:
        return None


class _VerificationError(TLSAuthenticationError):
    """Raised from tlslite-ng's checker so that it alerts the server and stops."""

    def __init__(self, error: CertificateError) -> None:
        super().__init__(str(error))
        self.error = error


class TLSLiteObject:
    """As ``ssl.SSLObject`` (client side), over tlslite-ng."""

    def __init__(
        self,
        context: Any,
        incoming: Any,
        outgoing: Any,
        server_side: bool,
        server_hostname: str | None,
        session: Any = None,
    ) -> None:
        if server_side:
            raise _ssl().SSLError(
                "netshim.tls (tlslite-ng) is a TLS client only: server_side=True is not supported"
            )
        if isinstance(server_hostname, bytes | bytearray):
            # Some callers (httpcore) pass the name as bytes, which ssl accepts too.
            server_hostname = bytes(server_hostname).decode("ascii")
        if context.check_hostname and not server_hostname:
            raise ValueError("check_hostname requires server_hostname")
        self.context = context
        self.server_side = False
        self.server_hostname = server_hostname
        self.session = None
        self.session_reused = False
        self._incoming = incoming
        self._outgoing = outgoing
        self._connection = TLSConnection(_BIOSocket(incoming, outgoing))
        self._leaf: Certificate | None = None
        self._pending: Iterator[Any] | None = None
        self._pending_kind = ""
        self._done = False

    # -- driving tlslite-ng's generators -------------------------------------

    def _run(self, kind: str, start: Any) -> Any:
        """Advance the operation ``kind``; its result, or SSLWantReadError to come back."""
        if self._pending is None or self._pending_kind != kind:
            self._pending = start()
            self._pending_kind = kind
        ssl = _ssl()
        try:
            for step in self._pending:
                if step in (0, 1):
                    # Whatever tlslite-ng wrote is in the outgoing BIO already;
                    # writing never blocks, so 1 cannot really come.
                    raise ssl.SSLWantReadError(
                        ssl.SSL_ERROR_WANT_READ, "The operation did not complete (read)"
                    )
                self._pending = None
                return step
        except ssl.SSLWantReadError:
            raise
        except _VerificationError as failure:
            self._pending = None
            error = ssl.SSLCertVerificationError(
                1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {failure.error}"
            )
            error.verify_code = 62 if "mismatch" in str(failure.error) else 20
            error.verify_message = str(failure.error)
            error.reason = "CERTIFICATE_VERIFY_FAILED"
            raise error from None
        except TLSAbruptCloseError:
            self._pending = None
            raise ssl.SSLEOFError(
                ssl.SSL_ERROR_EOF, "EOF occurred in violation of protocol"
            ) from None
        except (TLSRemoteAlert, TLSLocalAlert) as alert:
            self._pending = None
            raise ssl.SSLError(ssl.SSL_ERROR_SSL, f"[SSL] {alert}") from None
        except TLSError as failure:
            self._pending = None
            raise ssl.SSLError(ssl.SSL_ERROR_SSL, f"[SSL] {failure!r}") from None
        self._pending = None
        return None

    def _settings(self) -> Any:
        settings = HandshakeSettings()
        versions = {769: (3, 1), 770: (3, 2), 771: (3, 3), 772: (3, 4)}
        minimum = int(self.context.minimum_version)
        maximum = int(self.context.maximum_version)
        # tlslite-ng speaks TLS 1.2 and 1.3 by default; the context may narrow that.
        settings.minVersion = versions.get(minimum, (3, 3))
        settings.maxVersion = versions.get(maximum, (3, 4))
        return settings

    def _check(self, connection: Any) -> None:
        """tlslite-ng's checker: the server's chain against the context's CAs and name."""
        chain = connection.session.serverCertChain
        ders = [bytes(x509.bytes) for x509 in chain.x509List] if chain else []
        try:
            if not ders:
                raise CertificateError("the server sent no certificate")
            self._leaf = Certificate.from_der(ders[0])
            if self.context.verify_mode == 0:  # CERT_NONE
                return
            from netshim.tls._x509 import verify_chain

            trusted = [der for pem in self.context.ca_pem for der in pem_to_der_list(pem)]
            trusted += list(getattr(self.context, "ca_der", []))
            if not trusted:
                raise CertificateError(
                    "no trusted CA certificates: load them with load_verify_locations()"
                )
            verify_chain(ders, trusted)
            if self.context.check_hostname and self.server_hostname:
                match_hostname(self._leaf, self.server_hostname)
        except CertificateError as error:
            raise _VerificationError(error) from None

    def do_handshake(self) -> None:
        alpn = [name.encode() for name in self.context.alpn_protocols] or None
        sni = self.server_hostname
        if sni is not None and _is_address(sni):
            sni = None  # SNI carries names only (RFC 6066)

        def start() -> Any:
            return self._connection.handshakeClientCert(
                settings=self._settings(),
                checker=self._check,
                serverName=sni,
                alpn=alpn,
                async_=True,
            )

        self._run("handshake", start)
        self._done = True

    # -- data ----------------------------------------------------------------

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        if not self._done:
            raise _ssl().SSLError("the TLS handshake has not been done")
        if self._connection.closed:
            return 0 if buffer is not None else b""
        data = self._run("read", lambda: self._connection.readAsync(len))
        data = bytes(data or b"")
        if buffer is not None:
            memoryview(buffer).cast("B")[: len_(data)] = data
            return len_(data)
        return data

    def write(self, data: Any) -> int:
        if not self._done:
            raise _ssl().SSLError("the TLS handshake has not been done")
        payload = bytes(memoryview(data).cast("B"))
        if self._connection.closed:
            ssl = _ssl()
            raise ssl.SSLZeroReturnError(
                ssl.SSL_ERROR_ZERO_RETURN, "TLS/SSL connection has been closed"
            )
        self._run("write", lambda: self._connection.writeAsync(payload))
        return len_(payload)

    def pending(self) -> int:
        return len_(self._connection._readBuffer)

    def unwrap(self) -> None:
        """Send close_notify; tlslite-ng does not wait for the peer's (closeSocket)."""
        if self._connection.closed:
            return
        self._run("unwrap", self._connection.closeAsync)

    # -- what was negotiated ---------------------------------------------------

    def version(self) -> str | None:
        if not self._done:
            return None
        return _VERSIONS.get((self._connection.version[0], self._connection.version[1]))

    def cipher(self) -> tuple[str, str, int] | None:
        if not self._done:
            return None
        suite = self._connection.session.cipherSuite
        name = CipherSuite.ietfNames.get(suite, str(suite))
        implementation = self._connection.getCipherName() or ""
        bits = 256 if "256" in implementation or "chacha" in implementation else 128
        return (name, self.version() or "", bits)

    def shared_ciphers(self) -> list[tuple[str, str, int]] | None:
        current = self.cipher()
        return [current] if current else None

    def compression(self) -> None:
        return None

    def selected_alpn_protocol(self) -> str | None:
        if not self._done:
            return None
        protocol = self._connection.session.appProto
        return bytes(protocol).decode() if protocol else None

    def selected_npn_protocol(self) -> None:
        return None

    def getpeercert(self, binary_form: bool = False) -> Any:
        if not self._done:
            raise ValueError("handshake not done yet")
        if self._leaf is None:
            return None
        if binary_form:
            return self._leaf.der
        # As CPython: the decoded form only for a certificate that was checked.
        if self.context.verify_mode == 0:
            return {}
        return self._leaf.as_dict()

    def get_channel_binding(self, cb_type: str = "tls-unique") -> None:
        return None

    def verify_client_post_handshake(self) -> None:
        raise _ssl().SSLError("post-handshake authentication is a server's call")


def len_(data: Any) -> int:
    """``len`` (``read`` has a parameter of that name, as in ``ssl``)."""
    return len(data)


def _is_address(name: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True
