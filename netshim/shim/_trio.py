"""trio on shim sockets.

trio's socket class calls a few ``socket.socket`` methods *unbound*, taken
from the class when trio was imported (``recv``, ``recvfrom``, ``send`` …),
which would skip ShimSocket's datagram framing.  While netshim is installed,
those methods of trio's socket class are replaced by ones that call the
socket's own method; for every other socket that is the very same C method,
so nothing changes for them.  ``accept``, ``connect``, ``sendto`` and name
lookups need nothing: trio reaches them through the patched module.

trio's official hooks (``set_custom_socket_factory`` and
``set_custom_hostname_resolver``) are per run; :func:`register_hooks`
installs them in the current run, and ``install()`` calls it when it runs
inside one.
"""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Callable
from typing import Any

__all__ = ["register_hooks", "trio_patches"]

_READ = ("recv", "recv_into", "recvfrom", "recvfrom_into", "recvmsg", "recvmsg_into")
_WRITE = ("send",)


def _through_instance(name: str, wait: Callable[..., Any]) -> Callable[..., Any]:
    def call(sock: socket.socket, *args: Any, **kwargs: Any) -> Any:
        return getattr(sock, name)(*args, **kwargs)

    async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return await self._nonblocking_helper(wait, call, *args, **kwargs)

    method.__name__ = name
    return method


def trio_patches() -> list[tuple[Any, str, Any]]:
    """``(owner, name, replacement)`` for trio's socket class; empty without trio."""
    if importlib.util.find_spec("trio") is None:
        return []
    import trio
    from trio import _socket as trio_socket

    owner = trio_socket._SocketType
    patches = []
    for name in _READ + _WRITE:
        if name in owner.__dict__:
            wait = trio.lowlevel.wait_readable if name in _READ else trio.lowlevel.wait_writable
            patches.append((owner, name, _through_instance(name, wait)))
    return patches


class _SocketFactory:
    def socket(self, family: int = -1, type: int = -1, proto: int = -1) -> Any:
        import trio

        return trio.socket.from_stdlib_socket(socket.socket(family, type, proto))


class _HostnameResolver:
    async def getaddrinfo(
        self, host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> Any:
        import trio

        return await trio.to_thread.run_sync(
            socket.getaddrinfo, host, port, family, type, proto, flags, abandon_on_cancel=True
        )

    async def getnameinfo(self, sockaddr: Any, flags: int) -> Any:
        import trio

        return await trio.to_thread.run_sync(socket.getnameinfo, sockaddr, flags)


def register_hooks() -> bool:
    """Install netshim's socket factory and resolver in the current trio run, if any."""
    if importlib.util.find_spec("trio") is None:
        return False
    import trio

    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    trio.socket.set_custom_socket_factory(_SocketFactory())  # type: ignore[arg-type]
    trio.socket.set_custom_hostname_resolver(_HostnameResolver())  # type: ignore[arg-type]
    return True
