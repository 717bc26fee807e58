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
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from ._node import EventEmitter, NodeError, TaskGroupUser, node_error, system_error
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


Message = bytes | bytearray | memoryview | str


def _payload(message: Message | Sequence[Message]) -> bytes:
    """One datagram from a buffer, a string, or a list of them (Node concatenates)."""
    parts = message if isinstance(message, list | tuple) else [message]
    data = bytearray()
    for part in parts:
        if isinstance(part, str):
            data += part.encode("utf-8")
        elif isinstance(part, bytes | bytearray | memoryview):
            data += part
        else:
            raise TypeError(
                "a message must be str, bytes, bytearray or memoryview, or a list of them, "
                f"not {type(part).__name__}"
            )
    return bytes(data)


def _raw_socket(sock: UdpSocket) -> socket.socket | None:
    """The OS socket under ``sock`` on the host network, else ``None``."""
    raw = sock.extra(SocketAttribute.raw_socket, None)
    if isinstance(raw, socket.socket):
        return raw
    inner = getattr(sock, "inner", None)  # ForwardingUdpSocket
    if isinstance(inner, UdpSocket):
        return _raw_socket(inner)
    return None


class Socket(TaskGroupUser, EventEmitter):
    """A UDP socket (``dgram.Socket``).

    Events: ``"listening"``, ``"message"`` (``data, rinfo``), ``"connect"``,
    ``"error"``, ``"close"``.  ``"message"`` listeners are fed by a
    background task of the socket's task group (``async with sock:``);
    ``async for data, rinfo in sock`` reads in the caller's task instead.

    Once closed, every operation raises ``OSError(EBADF)`` with Node's code
    ``ERR_SOCKET_DGRAM_NOT_RUNNING``, a second :meth:`close` too.
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
        self._multicast_interface: str | None = None

    def __repr__(self) -> str:
        where = "unbound"
        if self._sock is not None:
            host, port = self._sock.local_address
            where = f"{host}:{port}"
        return f"<dgram.Socket {self.type} {where}>"

    async def _end(self) -> None:
        if not self._closed:
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
        if self._multicast_interface is not None:
            self._apply_multicast_interface(sock, self._multicast_interface)
        for group, interface in self._groups:
            await sock.join_multicast(group, interface)

    async def bind(self, port: int = 0, address: str | None = None) -> Socket:
        """Bind to ``address:port`` (all addresses, port 0: a free port); emits ``"listening"``.

        A failure (``EADDRINUSE``...) is emitted as ``"error"`` when listened,
        as Node does, and raised; the socket stays open and may bind again.
        Bound already: ``OSError(EINVAL)``, code ``ERR_SOCKET_ALREADY_BOUND``.
        """
        self._check_open()
        if self._sock is not None:
            raise node_error(errno.EINVAL, "ERR_SOCKET_ALREADY_BOUND", "Socket is already bound")
        try:
            await self._open(address, port, None, "bind")
        except NodeError as error:
            if self.listener_count("error"):
                await self.emit("error", error)
            raise
        await self.emit("listening")
        self._maybe_read()
        return self

    async def connect(self, port: int, address: str | None = None) -> None:
        """Send to and receive from ``address:port`` only; emits ``"connect"``.

        An unbound socket binds to a free port first and emits ``"listening"``,
        as in Node.

        Already connected: ``OSError(EISCONN)`` with Node's code
        ``ERR_SOCKET_DGRAM_IS_CONNECTED``.
        """
        self._check_open()
        if self._sock is not None and self._sock.remote_address is not None:
            raise node_error(errno.EISCONN, "ERR_SOCKET_DGRAM_IS_CONNECTED", "Already connected")
        host = address or ("::1" if self.type == "udp6" else "127.0.0.1")
        bound = self._sock is not None
        local = self._sock.local_address if self._sock is not None else (None, 0)
        # The contract connects at open time: reopen on the same port, connected.
        await self._open(local[0], local[1], (host, port), "connect")
        if not bound:
            # Node binds first, and says so.
            await self.emit("listening")
        await self.emit("connect")
        self._maybe_read()

    async def disconnect(self) -> None:
        """Undo :meth:`connect`; ``ERR_SOCKET_DGRAM_NOT_CONNECTED`` (``ENOTCONN``) if not."""
        self._check_open()
        if self._sock is None or self._sock.remote_address is None:
            raise _not_connected()
        host, port = self._sock.local_address
        await self._open(host, port, None, "disconnect")

    def _check_open(self) -> None:
        if self._closed:
            raise node_error(errno.EBADF, "ERR_SOCKET_DGRAM_NOT_RUNNING", "Not running")

    # -- sending --------------------------------------------------------------------

    async def send(
        self,
        message: Message | Sequence[Message],
        port: int | None = None,
        address: str | None = None,
    ) -> int:
        """Send one datagram; returns its size.  Binds to a free port first if needed.

        ``message`` is bytes-like or a str (UTF-8), or a list of them sent as
        one datagram, as Node concatenates them.  ``address`` defaults to the
        loopback address of the socket's family.  Returning is Node's send
        callback; raising is its error (which Node then does not emit).
        """
        self._check_open()
        data = _payload(message)
        if self._sock is None:
            await self.bind()
        assert self._sock is not None
        target: tuple[str, int] | None = None
        if port is not None:
            if self._sock.remote_address is not None:
                raise node_error(
                    errno.EISCONN, "ERR_SOCKET_DGRAM_IS_CONNECTED", "Already connected"
                )
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
        self._check_open()
        if self._sock is None:
            raise _error(errno.EBADF, "the socket is not bound", "getsockname")
        host, port = self._sock.local_address
        return {"address": host, "family": "IPv6" if ":" in host else "IPv4", "port": port}

    def remote_address(self) -> dict[str, Any]:
        """The connected peer; ``ERR_SOCKET_DGRAM_NOT_CONNECTED`` (``ENOTCONN``) if none."""
        self._check_open()
        if self._sock is None or self._sock.remote_address is None:
            raise _not_connected()
        host, port = self._sock.remote_address
        return {"address": host, "family": "IPv6" if ":" in host else "IPv4", "port": port}

    def _bound(self, syscall: str) -> UdpSocket:
        """The stack's socket; ``OSError(EBADF)`` before bind, as Node's setters raise."""
        if self._sock is None:
            raise _error(errno.EBADF, "the socket is not bound", syscall)
        return self._sock

    def set_broadcast(self, flag: bool) -> None:
        """Allow sending to broadcast addresses (``SO_BROADCAST``); ``EBADF`` before bind."""
        sock = self._bound("setBroadcast")
        self._broadcast = bool(flag)
        sock.broadcast = self._broadcast

    def _set(self, name: str, value: int, syscall: str) -> None:
        self._bound(syscall).set_option(name, value)
        self._options[name] = value

    def _set_buffer(self, name: str, size: int, syscall: str) -> None:
        if self._sock is None:
            raise _buffer_size_error(syscall)
        self._set(name, size, syscall)

    def _get(self, name: str, syscall: str) -> int:
        if self._sock is None:
            raise _buffer_size_error(syscall)
        return self._sock.get_option(name)

    def set_ttl(self, ttl: int) -> int:
        """``IP_TTL`` (1..255); returns ``ttl``; ``EBADF`` before bind."""
        self._set("ttl", ttl, "setTTL")
        return ttl

    def set_multicast_ttl(self, ttl: int) -> int:
        """``IP_MULTICAST_TTL`` (0..255; 0 keeps multicast on this host); returns ``ttl``."""
        self._set("multicast_ttl", ttl, "setMulticastTTL")
        return ttl

    def set_multicast_loopback(self, flag: bool) -> bool:
        """Whether this host's own members hear what it sends (``IP_MULTICAST_LOOP``)."""
        self._set("multicast_loop", int(flag), "setMulticastLoopback")
        return flag

    def set_multicast_interface(self, interface: str) -> None:
        """The interface multicast datagrams leave by (``IP_MULTICAST_IF``).

        For ``udp4`` an IPv4 address of this host (``"0.0.0.0"``: the
        default); for ``udp6`` ``"::%name"`` (or ``"::%index"``) names the
        interface by its scope, as in Node.  Before bind: ``EBADF``; not an
        address: ``EINVAL``; not this host's: ``EADDRNOTAVAIL``.  On the host
        network this is ``setsockopt``; a virtual host has one interface per
        family, so there the address is checked and kept but changes nothing.
        """
        if not isinstance(interface, str):
            raise TypeError(f"interface must be a str, not {type(interface).__name__}")
        sock = self._bound("setMulticastInterface")
        self._apply_multicast_interface(sock, interface)
        self._multicast_interface = interface

    def _apply_multicast_interface(self, sock: UdpSocket, interface: str) -> None:
        syscall = "setMulticastInterface"
        raw = _raw_socket(sock)
        if self.type == "udp6":
            index = _scope_index(interface, syscall)
            if raw is not None:
                try:
                    raw.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
                except OSError as exc:
                    raise system_error(exc, syscall) from exc
            return
        try:
            ip = ipaddress.ip_address(interface)
        except ValueError:
            raise _error(errno.EINVAL, f"{interface!r} is not an address", syscall) from None
        if ip.version == 6:
            # What Linux says to an IPv6 option on an IPv4 socket.
            raise _error(errno.ENOPROTOOPT, "an IPv6 interface on a udp4 socket", syscall)
        if raw is not None:
            try:
                raw.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, ip.packed)
            except OSError as exc:
                raise system_error(exc, syscall) from exc
            return
        stack = self._stack or current_stack()
        known = getattr(stack, "addresses", None)  # a VirtualHost's addresses
        if isinstance(known, list) and not (
            ip.is_unspecified or ip.is_loopback or str(ip) in known
        ):
            message = f"{interface} is not an address of this host"
            raise _error(errno.EADDRNOTAVAIL, message, syscall)

    def set_recv_buffer_size(self, size: int) -> None:
        """``SO_RCVBUF``; before bind ``ERR_SOCKET_BUFFER_SIZE`` (``EBADF``), as in Node."""
        self._set_buffer("receive_buffer", size, "uv_recv_buffer_size")

    def set_send_buffer_size(self, size: int) -> None:
        self._set_buffer("send_buffer", size, "uv_send_buffer_size")

    def get_recv_buffer_size(self) -> int:
        """``SO_RCVBUF`` as the stack reports it (Linux reports twice the size set)."""
        return self._get("receive_buffer", "uv_recv_buffer_size")

    def get_send_buffer_size(self) -> int:
        return self._get("send_buffer", "uv_send_buffer_size")

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
        """Close the socket and emit ``"close"``.

        Closing it again raises ``OSError(EBADF)`` with Node's code
        ``ERR_SOCKET_DGRAM_NOT_RUNNING``; leaving ``async with`` does not.
        """
        self._check_open()
        self._closed = True
        sock, self._sock = self._sock, None
        if sock is not None:
            with anyio.CancelScope(shield=True):
                await sock.aclose()
        await self.emit("close")


def _not_connected() -> NodeError:
    return node_error(errno.ENOTCONN, "ERR_SOCKET_DGRAM_NOT_CONNECTED", "Not connected")


def _buffer_size_error(syscall: str) -> NodeError:
    message = f"Could not get or set buffer size: {syscall} returned EBADF (bad file descriptor)"
    return node_error(errno.EBADF, "ERR_SOCKET_BUFFER_SIZE", message, syscall)


def _scope_index(interface: str, syscall: str) -> int:
    """The interface index of ``"::%eth0"`` / ``"::%2"`` (0 without, or unknown), as libuv."""
    address, _, scope = interface.partition("%")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise _error(errno.EINVAL, f"{interface!r} is not an address", syscall) from None
    if not scope:
        return 0
    if scope.isdigit():
        return int(scope)
    try:
        return socket.if_nametoindex(scope)
    except OSError:
        return 0


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
