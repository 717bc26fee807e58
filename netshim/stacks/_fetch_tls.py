"""TLS over a FetchStack stream: the browser's, so Python's layer only marks it secure.

fetch does TLS itself (with the browser's trust store and certificate
checks) and takes ``https://`` URLs, not bytes.  So when a program wraps a
FetchStack stream with ``ssl``, no handshake may happen in Python: the
stream must only learn that its URLs are now ``https``.

The TLS layer does not know which stream it sits on (``SSLContext.wrap_bio``
gets two memory buffers and a host name), so the two meet in the byte
stream.  :func:`install` wraps ``SSLContext.wrap_bio`` of whichever ``ssl``
module is in place (netshim's stand-in in Pyodide, or the real one): for a
host that a FetchStack stream was just opened to and that has sent nothing
yet, it returns a :class:`BrowserTlsObject`.  Its handshake sends
:data:`~netshim.stacks._fetch_http.TLS_HELLO` instead of a ClientHello; the
stream answers :data:`~netshim.stacks._fetch_http.TLS_READY`; after that
the object passes bytes through unchanged.  Any other host gets the
original ``wrap_bio``.

A blocking socket is simpler: ``SSLContext.wrap_socket`` is given the
socket, so for a :class:`~netshim.aio.StackSocket` on a FetchStack stream
it marks the stream secure and returns a :class:`BrowserTlsSocket` around
it.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

from ._fetch_http import TLS_HELLO, TLS_READY

__all__ = ["BrowserTlsObject", "BrowserTlsSocket", "expect_tls", "install", "settled"]

# Host -> FetchStack streams to it that have not sent a byte yet.
_fresh: dict[str, weakref.WeakSet[Any]] = {}
_installed: dict[int, tuple[Any, Any]] = {}


def expect_tls(host: str, stream: Any) -> None:
    """``stream`` was opened to ``host``: a TLS wrap for that name may be its."""
    _fresh.setdefault(host.lower(), weakref.WeakSet()).add(stream)


def settled(host: str, stream: Any) -> None:
    """``stream`` sent its first bytes (or closed): no TLS wrap can start on it now."""
    streams = _fresh.get(host.lower())
    if streams is not None:
        streams.discard(stream)
        if not streams:
            del _fresh[host.lower()]


def _host_text(server_hostname: str | bytes | None) -> str | None:
    # httpcore passes the name as bytes.
    if isinstance(server_hostname, bytes):
        return server_hostname.decode("ascii", "replace")
    return server_hostname


def _is_fetch_host(server_hostname: str | bytes | None) -> bool:
    name = _host_text(server_hostname)
    return name is not None and bool(_fresh.get(name.lower()))


def _ssl() -> Any:
    return sys.modules.get("ssl")


class BrowserTlsObject:
    """An ``ssl.SSLObject`` whose "TLS" is the browser's: a hello, then bytes as they are."""

    def __init__(
        self, context: Any, incoming: Any, outgoing: Any, server_hostname: str | None
    ) -> None:
        self.context = context
        self._incoming = incoming
        self._outgoing = outgoing
        self.server_hostname = server_hostname
        self.server_side = False
        self.session = None
        self.session_reused = False
        self._state = "start"

    @classmethod
    def opened(cls, context: Any, server_hostname: str | None) -> BrowserTlsObject:
        """One past its hello, with no buffers: what a stream that skipped it reports."""
        tls = cls(context, None, None, server_hostname)
        tls._state = "open"
        return tls

    def __repr__(self) -> str:
        return f"<BrowserTlsObject {self.server_hostname} {self._state}>"

    def do_handshake(self) -> None:
        ssl = _ssl()
        if self._state == "start":
            self._outgoing.write(TLS_HELLO)
            self._state = "hello sent"
        if self._state == "hello sent":
            if self._incoming.pending < len(TLS_READY):
                if self._incoming.eof:
                    raise ssl.SSLEOFError(8, "EOF during the browser-TLS hello")
                raise ssl.SSLWantReadError(2, "The operation did not complete (read)")
            answer = self._incoming.read(len(TLS_READY))
            if answer != TLS_READY:
                self._state = "failed"
                raise ssl.SSLError(
                    1, f"the peer of {self.server_hostname} is not a FetchStack stream"
                )
            self._state = "open"

    def read(self, size: int = 1024, buffer: Any = None) -> Any:
        ssl = _ssl()
        if self._state != "open":
            self.do_handshake()
        if not self._incoming.pending:
            if self._incoming.eof:
                # The stream ended: as a close_notify would (clean, not ragged).
                return 0 if buffer is not None else b""
            raise ssl.SSLWantReadError(2, "The operation did not complete (read)")
        if buffer is not None:
            view = memoryview(buffer).cast("B")
            data = self._incoming.read(min(size, view.nbytes))
            view[: len(data)] = data
            return len(data)
        return self._incoming.read(size)

    def write(self, data: Any) -> int:
        if self._state != "open":
            self.do_handshake()
        return int(self._outgoing.write(data))

    def pending(self) -> int:
        return 0

    def unwrap(self) -> None:
        self._state = "closed"

    def getpeercert(self, binary_form: bool = False) -> Any:
        # The browser checked the certificate and shows it to nobody.
        return None if binary_form else {}

    def selected_alpn_protocol(self) -> str | None:
        protocols = getattr(self.context, "_netshim_alpn", None)
        return "http/1.1" if protocols is None or "http/1.1" in protocols else None

    def selected_npn_protocol(self) -> None:
        return None

    def cipher(self) -> None:
        return None

    def shared_ciphers(self) -> None:
        return None

    def compression(self) -> None:
        return None

    def version(self) -> None:
        # Not known here: the browser negotiated it.
        return None

    def get_channel_binding(self, cb_type: str = "tls-unique") -> None:
        return None

    def verify_client_post_handshake(self) -> None:
        return None


class BrowserTlsSocket:
    """A blocking socket on a FetchStack stream, "wrapped" with the browser's TLS."""

    def __init__(self, sock: Any, context: Any, server_hostname: str | None) -> None:
        self._sock = sock
        self.context = context
        self.server_hostname = server_hostname
        self.server_side = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def __enter__(self) -> BrowserTlsSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._sock.close()

    def do_handshake(self) -> None:
        return None

    def getpeercert(self, binary_form: bool = False) -> Any:
        """No certificate reaches Python; the browser checked it for ``server_hostname``.

        So the parsed form names that host and nothing else: clients that
        match the name themselves (urllib3) find it, and that is all it says.
        """
        if binary_form or not self.server_hostname:
            return None if binary_form else {}
        from .._addresses import parse_ip

        kind = "DNS" if parse_ip(self.server_hostname) is None else "IP Address"
        return {"subjectAltName": ((kind, self.server_hostname),)}

    def selected_alpn_protocol(self) -> str:
        return "http/1.1"

    def cipher(self) -> None:
        return None

    def version(self) -> None:
        return None

    def unwrap(self) -> Any:
        return self._sock


def install() -> None:
    """Put the browser-TLS hooks on ``ssl.SSLContext`` (idempotent; no ``ssl``, nothing)."""
    try:
        import ssl
    except ImportError:
        return
    context_class = ssl.SSLContext
    if id(context_class) in _installed:
        return
    original_bio = context_class.wrap_bio
    original_socket = context_class.wrap_socket
    _installed[id(context_class)] = (original_bio, original_socket)

    def wrap_bio(
        self: Any,
        incoming: Any,
        outgoing: Any,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: Any = None,
    ) -> Any:
        if not server_side and _is_fetch_host(server_hostname):
            return BrowserTlsObject(self, incoming, outgoing, _host_text(server_hostname))
        return original_bio(self, incoming, outgoing, server_side, server_hostname, session)

    def wrap_socket(self: Any, sock: Any, *args: Any, **kwargs: Any) -> Any:
        from .fetch import FetchStream

        # ssl's order: server_side, do_handshake_on_connect, suppress_ragged_eofs,
        # server_hostname, session.
        server_side = kwargs.get("server_side", args[0] if args else False)
        hostname = kwargs.get("server_hostname", args[3] if len(args) > 3 else None)
        stream = getattr(sock, "_stream", None)
        if isinstance(stream, FetchStream) and not server_side:
            stream.assume_tls()
            settled(stream.host, stream)
            return BrowserTlsSocket(sock, self, _host_text(hostname))
        return original_socket(self, sock, *args, **kwargs)

    context_class.wrap_bio = wrap_bio  # type: ignore[method-assign]
    context_class.wrap_socket = wrap_socket  # type: ignore[method-assign]
