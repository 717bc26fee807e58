"""Node.js's ``dgram`` module in Python: UDP sockets on any netshim stack.

``sock = dgram.create_socket("udp4")`` then ``await sock.bind(41234)``;
``await sock.send(b"hi", 41234, "10.0.0.2")``; receive with
``async for message, rinfo in sock`` or, inside ``async with sock:``, with
``sock.on("message", listener)``.  Names are Node's in snake case, times and
sizes as in :mod:`netshim.net`; operations that wait are coroutines.

Multicast (``add_membership``), TTLs and buffer sizes go through the stack's
UDP socket (:meth:`netshim.stack.UdpSocket.join_multicast`,
:meth:`~netshim.stack.UdpSocket.set_option`): real ``setsockopt`` calls on the
host network, simulated membership on a virtual network.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import anyio.abc

from ._node import EventEmitter, NodeError, TaskGroupUser, system_error
from .stack import Stack, UdpSocket, current_stack

__all__ = ["NodeError", "RemoteInfo", "Socket", "create_socket"]

SocketType = Literal["udp4", "udp6"]


@dataclass(frozen=True, slots=True)
class RemoteInfo:
    """Where a datagram came from, as Node's ``rinfo``."""

    address: str
    family: Literal["IPv4", "IPv6"]
    port: int
    size: int


def _error(code: int, message: str, syscall: str) -> NodeError:
    return system_error(OSError(code, message), syscall)


class Socket(TaskGroupUser, EventEmitter):
    """A UDP socket (``dgram.Socket``).

    Events: ``"listening"``, ``"message"`` (``data, rinfo``), ``"connect"``,
    ``"error"``, ``"close"``.  ``"message"`` listeners are fed by a
    background task of the socket's task group (``async with sock:``);
    ``async for data, rinfo in sock`` reads in the caller's task instead.
    """

    def __init__(
        self,
        type: SocketType = "udp4",
        *,
        ipv6_only: bool = False,
        recv_buffer_size: int | None = None,
        send_buffer_size: int | None = None,
        stack: Stack | None = None,
        task_group: anyio.abc.TaskGroup | None = None,
    ) -> None:
        super().__init__()
        if type not in ("udp4", "udp6"):
            raise ValueError(f"type must be 'udp4' or 'udp6', got {type!r}")
        self.type: SocketType = type
        self.ipv6_only = ipv6_only
        self._stack = stack
        self._sock: UdpSocket | None = None
        self._task_group = task_group
        self._own_group = None
        self._reading = False
        self._closed = False
        self._broadcast = False
        self._options: dict[str, int] = {}
        if recv_buffer_size is not None:
            self._options["receive_buffer"] = recv_buffer_size
        if send_buffer_size is not None:
            self._options["send_buffer"] = send_buffer_size
        self._groups: list[tuple[str, str | None]] = []

    def __repr__(self) -> str:
        where = "unbound"
        if self._sock is not None:
            host, port = self._sock.local_address
            where = f"{host}:{port}"
        return f"<dgram.Socket {self.type} {where}>"

    async def _end(self) -> None:
        await self.close()

    # -- binding and connecting -------------------------------------------------

    def _any(self) -> str:
        return "::" if self.type == "udp6" else "0.0.0.0"

    async def _open(
        self, address: str | None, port: int, remote: tuple[str, int] | None, syscall: str
    ) -> None:
        stack = self._stack or current_stack()
        # Reopening (connect, disconnect) keeps the port: free it first.
        old, self._sock = self._sock, None
        if old is not None:
            await old.aclose()
        try:
            sock = await stack.open_udp(address or self._any(), port, remote=remote)
        except OSError as exc:
            raise system_error(exc, syscall, address or self._any(), port) from exc
        self._sock = sock
        sock.broadcast = self._broadcast
        for name, value in self._options.items():
            sock.set_option(name, value)
        for group, interface in self._groups:
            await sock.join_multicast(group, interface)

    async def bind(self, port: int = 0, address: str | None = None) -> Socket:
        """Bind to ``address:port`` (all addresses, port 0: a free port); emits ``"listening"``."""
        self._check_open()
        if self._sock is not None:
            raise _error(errno.EINVAL, "the socket is already bound", "bind")
        await self._open(address, port, None, "bind")
        await self.emit("listening")
        self._maybe_read()
        return self

    async def connect(self, port: int, address: str | None = None) -> None:
        """Send to and receive from ``address:port`` only; emits ``"connect"``.

        Node's ``ERR_SOCKET_DGRAM_IS_CONNECTED`` is ``OSError(EISCONN)`` here.
        """
        self._check_open()
        if self._sock is not None and self._sock.remote_address is not None:
            raise _error(errno.EISCONN, "the socket is already connected", "connect")
        host = address or ("::1" if self.type == "udp6" else "127.0.0.1")
        local = self._sock.local_address if self._sock is not None else (None, 0)
        # The contract connects at open time: reopen on the same port, connected.
        await self._open(local[0], local[1], (host, port), "connect")
        await self.emit("connect")
        self._maybe_read()

    async def disconnect(self) -> None:
        """Undo :meth:`connect`; ``OSError(ENOTCONN)`` when not connected."""
        self._check_open()
        if self._sock is None or self._sock.remote_address is None:
            raise _error(errno.ENOTCONN, "the socket is not connected", "disconnect")
        host, port = self._sock.local_address
        await self._open(host, port, None, "disconnect")

    def _check_open(self) -> None:
        if self._closed:
            raise _error(errno.EBADF, "the socket is closed", "send")

    # -- sending --------------------------------------------------------------------

    async def send(
        self,
        message: bytes | bytearray | memoryview | str | list[bytes],
        port: int | None = None,
        address: str | None = None,
    ) -> int:
        """Send one datagram; returns its size.  Binds to a free port first if needed.

        A list of buffers is sent as one datagram, as Node concatenates them.
        ``address`` defaults to the loopback address of the socket's family.
        """
        self._check_open()
        if isinstance(message, list):
            data = b"".join(bytes(part) for part in message)
        elif isinstance(message, str):
            data = message.encode("utf-8")
        else:
            data = bytes(message)
        if self._sock is None:
            await self.bind()
        assert self._sock is not None
        target: tuple[str, int] | None = None
        if port is not None:
            if self._sock.remote_address is not None:
                raise _error(errno.EISCONN, "send to an address on a connected socket", "send")
            target = (address or ("::1" if self.type == "udp6" else "127.0.0.1"), port)
        elif self._sock.remote_address is None:
            raise _error(errno.EDESTADDRREQ, "send() needs a port on an unconnected socket", "send")
        try:
            await self._sock.send(data, target)
        except OSError as exc:
            where = target or self._sock.remote_address or ("", 0)
            raise system_error(exc, "send", where[0], where[1]) from exc
        return len(data)

    # -- receiving --------------------------------------------------------------------

    def _listeners_changed(self, event: str) -> None:
        if event == "message":
            self._maybe_read()

    def _maybe_read(self) -> None:
        if self._reading or self._sock is None or not self.listener_count("message"):
            return
        if self._task_group is None:
            raise RuntimeError(
                "'message' listeners need a task group: use 'async with sock:' "
                "or 'async for data, rinfo in sock'"
            )
        self._reading = True
        self._task_group.start_soon(self._read_loop)

    async def _read_loop(self) -> None:
        try:
            while self.listener_count("message"):
                item = await self._receive()
                if item is None:
                    return
                await self.emit("message", *item)
        finally:
            self._reading = False

    async def _receive(self) -> tuple[bytes, RemoteInfo] | None:
        while True:
            sock = self._sock
            if sock is None or self._closed:
                return None
            try:
                data, (host, port) = await sock.receive()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                if sock is not self._sock:
                    continue  # Reopened by connect() or disconnect(): read the new one.
                return None
            except OSError as exc:
                error = system_error(exc, "recvmsg")
                if self.listener_count("error"):
                    await self.emit("error", error)
                    continue
                raise error from exc
            family: Literal["IPv4", "IPv6"] = "IPv6" if ":" in host else "IPv4"
            return data, RemoteInfo(host, family, port, len(data))

    def __aiter__(self) -> Socket:
        return self

    async def __anext__(self) -> tuple[bytes, RemoteInfo]:
        if self._reading:
            raise RuntimeError("'message' listeners read this socket; no async for")
        item = await self._receive()
        if item is None:
            raise StopAsyncIteration
        return item

    # -- options ----------------------------------------------------------------------

    def address(self) -> dict[str, Any]:
        """``{"address", "family", "port"}`` of the bound socket; ``OSError(EBADF)`` if unbound."""
        if self._sock is None:
            raise _error(errno.EBADF, "the socket is not bound", "getsockname")
        host, port = self._sock.local_address
        return {"address": host, "family": "IPv6" if ":" in host else "IPv4", "port": port}

    def remote_address(self) -> dict[str, Any]:
        """The connected peer; ``OSError(ENOTCONN)`` when not connected."""
        if self._sock is None or self._sock.remote_address is None:
            raise _error(errno.ENOTCONN, "the socket is not connected", "getpeername")
        host, port = self._sock.remote_address
        return {"address": host, "family": "IPv6" if ":" in host else "IPv4", "port": port}

    def set_broadcast(self, flag: bool) -> None:
        """Allow sending to broadcast addresses (``SO_BROADCAST``)."""
        self._broadcast = bool(flag)
        if self._sock is not None:
            self._sock.broadcast = self._broadcast

    def _set(self, name: str, value: int) -> None:
        if self._sock is not None:
            self._sock.set_option(name, value)
        self._options[name] = value

    def _get(self, name: str) -> int:
        if self._sock is None:
            raise _error(errno.EBADF, "the socket is not bound", "getsockopt")
        return self._sock.get_option(name)

    def set_ttl(self, ttl: int) -> int:
        """``IP_TTL`` (1..255); returns ``ttl``."""
        self._set("ttl", ttl)
        return ttl

    def set_multicast_ttl(self, ttl: int) -> int:
        """``IP_MULTICAST_TTL`` (0..255; 0 keeps multicast on this host); returns ``ttl``."""
        self._set("multicast_ttl", ttl)
        return ttl

    def set_multicast_loopback(self, flag: bool) -> bool:
        """Whether this host's own members hear what it sends (``IP_MULTICAST_LOOP``)."""
        self._set("multicast_loop", int(flag))
        return flag

    def set_recv_buffer_size(self, size: int) -> None:
        self._set("receive_buffer", size)

    def set_send_buffer_size(self, size: int) -> None:
        self._set("send_buffer", size)

    def get_recv_buffer_size(self) -> int:
        """``SO_RCVBUF`` as the stack reports it (Linux reports twice the size set)."""
        return self._get("receive_buffer")

    def get_send_buffer_size(self) -> int:
        return self._get("send_buffer")

    async def add_membership(self, multicast_address: str, interface: str | None = None) -> None:
        """Join a multicast group (``IP_ADD_MEMBERSHIP``); binds first if needed."""
        self._check_open()
        if self._sock is None:
            await self.bind()
        assert self._sock is not None
        try:
            await self._sock.join_multicast(multicast_address, interface)
        except OSError as exc:
            raise system_error(exc, "addMembership", multicast_address) from exc
        self._groups.append((multicast_address, interface))

    async def drop_membership(self, multicast_address: str, interface: str | None = None) -> None:
        """Leave a group; ``OSError(EADDRNOTAVAIL)`` when not a member."""
        self._check_open()
        if self._sock is None:
            raise _error(errno.EADDRNOTAVAIL, "not a member", "dropMembership")
        try:
            await self._sock.leave_multicast(multicast_address, interface)
        except OSError as exc:
            raise system_error(exc, "dropMembership", multicast_address) from exc
        if (multicast_address, interface) in self._groups:
            self._groups.remove((multicast_address, interface))

    # -- closing --------------------------------------------------------------------

    async def close(self) -> None:
        """Close the socket and emit ``"close"``; idempotent."""
        if self._closed:
            return
        self._closed = True
        sock, self._sock = self._sock, None
        if sock is not None:
            with anyio.CancelScope(shield=True):
                await sock.aclose()
        await self.emit("close")


def create_socket(
    type: SocketType = "udp4",
    listener: Any = None,
    *,
    ipv6_only: bool = False,
    recv_buffer_size: int | None = None,
    send_buffer_size: int | None = None,
    stack: Stack | None = None,
) -> Socket:
    """A new UDP :class:`Socket` (``dgram.createSocket``).

    ``listener`` is added as a ``"message"`` listener; it starts reading once
    the socket is bound inside ``async with sock:``.
    """
    sock = Socket(
        type,
        ipv6_only=ipv6_only,
        recv_buffer_size=recv_buffer_size,
        send_buffer_size=send_buffer_size,
        stack=stack,
    )
    if listener is not None:
        # Added without the hook, which would need a task group before binding.
        sock._listeners.setdefault("message", []).append((listener, False))
    return sock
