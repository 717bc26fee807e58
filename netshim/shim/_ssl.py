"""ShimSSLSocket: ``ssl.SSLSocket`` over a shim socket, with the virtual view kept.

``SSLContext.wrap_socket`` detaches the socket it wraps and builds an
``SSLSocket`` on the same descriptor, which would lose what netshim knows
about it.  While installed, ``SSLContext.sslsocket_class`` is this subclass:
it carries the wrapped socket's state over, so ``getpeername``,
``getsockname`` and ``family`` keep reporting virtual values, and a socket
wrapped *before* it connects connects through the stack.  The TLS itself is
the real ``ssl`` module talking over the pair, end to end.
"""

from __future__ import annotations

import errno
import ssl
import threading
from typing import Any

from .._errors import os_error
from ._socket import _ShimCommon
from ._state import Phase, SocketState

__all__ = ["ShimSSLSocket"]

_ORIGINAL_SSL_SOCKET = ssl.SSLSocket
_handover = threading.local()


class ShimSSLSocket(_ShimCommon, _ORIGINAL_SSL_SOCKET):
    """``ssl.SSLSocket`` that keeps a shim socket's virtual addresses."""

    _netshim: SocketState | None
    # Set by SSLSocket._create; declared for the type checker.
    _session: Any
    do_handshake_on_connect: bool
    suppress_ragged_eofs: bool

    def __new__(cls, *args: Any, **kwargs: Any) -> ShimSSLSocket:
        self = super().__new__(cls, *args, **kwargs)
        self._netshim = getattr(_handover, "state", None)
        return self

    @classmethod
    def _create(cls, sock: Any, *args: Any, **kwargs: Any) -> Any:
        _handover.state = getattr(sock, "_netshim", None)
        try:
            return super()._create(sock, *args, **kwargs)  # type: ignore[misc]
        finally:
            _handover.state = None

    def _refuse_unconnected_io(self) -> None:
        # (Not named _check_connected: SSLSocket has a method of that name,
        # which do_handshake() and getpeercert() rely on.)
        state = self._netshim
        if state is not None and self._sslobj is None and state.phase is not Phase.CONNECTED:
            # An unconnected socket (what SSLSocket._create probes for): the
            # pair under it is connected, so without this a read would wait
            # forever (and a send would vanish) where CPython raises ENOTCONN.
            raise os_error(errno.ENOTCONN)

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        self._refuse_unconnected_io()
        return super().recv(buflen, flags)

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        self._refuse_unconnected_io()
        return super().recv_into(buffer, nbytes, flags)

    def send(self, data: Any, flags: int = 0) -> int:
        self._refuse_unconnected_io()
        return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._refuse_unconnected_io()
        return super().sendall(data, flags)

    def recvfrom(self, buflen: int = 1024, flags: int = 0) -> tuple[bytes, Any]:
        self._refuse_unconnected_io()
        return super().recvfrom(buflen, flags)

    def recvfrom_into(
        self, buffer: Any, nbytes: int | None = None, flags: int = 0
    ) -> tuple[int, Any]:
        self._refuse_unconnected_io()
        return super().recvfrom_into(buffer, nbytes, flags)

    def _real_connect(self, addr: Any, connect_ex: bool) -> int | None:
        state = self._netshim
        if state is None:
            return super()._real_connect(addr, connect_ex)  # type: ignore[misc,no-any-return]
        if self.server_side:
            raise ValueError("can't connect in server-side mode")
        if self._connected:  # type: ignore[has-type]
            raise ValueError("attempt to connect already-connected SSLSocket!")
        self._sslobj = self.context._wrap_socket(  # type: ignore[attr-defined]
            self, False, self.server_hostname, owner=self, session=self._session
        )
        try:
            code = self._connect(addr, "connect_ex" if connect_ex else "connect")
            if code:
                if connect_ex:
                    return code
                raise os_error(code)
            self._connected = True
            if self.do_handshake_on_connect:
                self.do_handshake()
            return 0
        except (OSError, ValueError):
            self._sslobj = None
            raise

    def _real_close(self) -> None:
        state = self._netshim
        if state is not None and state.user_socket() is not None:
            from ._socket import _closing

            _closing(state)
        super()._real_close()  # type: ignore[misc]
