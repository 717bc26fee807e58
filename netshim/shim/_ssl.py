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
import weakref
from typing import Any

from .._errors import os_error
from ._socket import _ShimCommon
from ._state import Phase, SocketState

__all__ = ["ShimSSLSocket", "shim_wrap_socket"]

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
        state = _handover.state = getattr(sock, "_netshim", None)
        try:
            made = super()._create(sock, *args, **kwargs)  # type: ignore[misc]
        finally:
            _handover.state = None
        if state is not None:
            # _create detached the wrapped socket, which then let go of the
            # state: this socket is now the one whose close() ends the
            # connection (held open for a joined peer, reset with SO_LINGER 0).
            state.user_socket = weakref.ref(made)
        return made

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
        if state is not None and self.fileno() >= 0 and state.user_socket() is self:
            from ._socket import _closing

            _closing(state, self)
        super()._real_close()  # type: ignore[misc]


# A program's own SSLSocket subclass -> that class with ShimSSLSocket's behaviour.
_shim_subclasses: weakref.WeakKeyDictionary[type, type] = weakref.WeakKeyDictionary()


def _with_shim_behaviour(cls: type) -> type:
    """``cls`` (a program's ``ssl.SSLSocket`` subclass) made to keep a shim socket's state.

    A program that sets ``context.sslsocket_class`` to its own subclass of the
    original ``SSLSocket`` would otherwise get a TLS socket that knows only the
    pair under the shim socket: its ``getpeername`` finds the pair connected,
    so wrapping an unconnected socket starts a handshake that waits forever.
    The subclass made here puts ShimSSLSocket first, so ``isinstance`` and the
    program's overrides still hold.
    """
    made = _shim_subclasses.get(cls)
    if made is None:
        made = type(cls.__name__, (ShimSSLSocket, cls), {"__module__": cls.__module__})
        _shim_subclasses[cls] = made
    return made


def shim_wrap_socket(
    self: ssl.SSLContext,
    sock: Any,
    server_side: bool = False,
    do_handshake_on_connect: bool = True,
    suppress_ragged_eofs: bool = True,
    server_hostname: str | bytes | None = None,
    session: ssl.SSLSession | None = None,
) -> ssl.SSLSocket:
    """``SSLContext.wrap_socket`` while installed: a shim socket keeps its state in any class."""
    cls = self.sslsocket_class
    if getattr(sock, "_netshim", None) is not None and not issubclass(cls, ShimSSLSocket):
        cls = _with_shim_behaviour(cls)
    return cls._create(  # type: ignore[attr-defined,no-any-return]
        sock=sock,
        server_side=server_side,
        do_handshake_on_connect=do_handshake_on_connect,
        suppress_ragged_eofs=suppress_ragged_eofs,
        server_hostname=server_hostname,
        context=self,
        session=session,
    )
