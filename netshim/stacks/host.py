"""HostStack: the Stack contract over the machine's own network.

This is the baseline every other stack is measured against and, later, the
gateway's default upstream.  It adds no policy.  TCP streams are anyio's own
socket streams behind the contract's error model (anyio wraps network errors
in ``BrokenResourceError``; the contract promises the ``OSError`` itself).
UDP sockets drive a non-blocking socket directly so that Linux reports
``ECONNREFUSED`` on connected sockets exactly as it does to C programs, and
map the contract's multicast and options to ``setsockopt``.
Name lookups run the C library's ``getaddrinfo`` in a worker thread.

Reads stop when nobody consumes (DESIGN 10).  On asyncio (and uvloop) anyio's
stream is a transport whose ``receive()`` resumes reading only while it
waits, but only ``anyio.connect_tcp`` starts it paused: streams made by
``SocketStream.from_socket`` and by a listener's ``accept()`` start reading
at once and, as long as every ``receive()`` finds data already queued, never
pause, so a peer sending faster than the stream is consumed filled memory
without bound (a gateway went from 35 MB to 11 GB that way).  Every TCP
stream here is paused as it is made: the kernel's buffers fill, the TCP
window closes and the peer slows down.  On trio reads happen only on demand.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
from anyio.abc import SocketAttribute

from .. import _system
from .._addresses import Address, check_host, check_port, is_ip, parse_ip, parse_service
from .._errors import connection_reset, message_too_long, os_error
from ..stack import DEFAULT_BACKLOG, AddrInfo, Stack, TcpListener, TcpStream, UdpSocket

__all__ = ["HostStack"]

# Largest UDP payload one IP packet carries: 65535 minus the 8-byte UDP header
# and the 20-byte IPv4 header (IPv6's 40-byte header is outside its length field).
MAX_UDP_PAYLOAD = {socket.AF_INET: 65507, socket.AF_INET6: 65527}


def _unwrap(exc: BaseException) -> BaseException:
    """The OSError behind anyio's BrokenResourceError, or a reset when there is none."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, OSError):
        return cause
    return connection_reset()


def _getaddrinfo(
    host: str | None, port: int, family: int, type: int, proto: int, flags: int
) -> list[AddrInfo]:
    # Only AF_INET and AF_INET6 are asked for, so the results have their shapes.
    return _system.getaddrinfo(host, port, family, type, proto, flags)  # type: ignore[return-value]


def _read_only_on_demand(stream: anyio.abc.SocketStream) -> None:
    """Pause an asyncio transport until ``receive()`` waits (see the module documentation).

    And pause it again as soon as a read arrived: between the read that wakes
    a waiting ``receive()`` and that task running, uvloop reads the socket up
    to 32 more times (8 MiB per wait on loopback, measured); asyncio once.
    So each wait takes in one read, never a burst.
    """
    transport = getattr(stream, "_transport", None)
    protocol = getattr(stream, "_protocol", None)
    if transport is None or protocol is None:
        return
    if transport.is_reading():
        transport.pause_reading()
    queue_read = protocol.data_received

    def data_received(data: bytes) -> None:
        queue_read(data)
        transport.pause_reading()

    protocol.data_received = data_received
    # uvloop keeps the protocol's bound methods from when it was set: set it
    # again so that the transport calls the wrapper.
    transport.set_protocol(protocol)


def _closed_transport(exc: RuntimeError) -> OSError:
    """uvloop raises ``RuntimeError`` for a write to a transport the peer's reset closed.

    asyncio ignores such a write; the contract promises the ``OSError`` a
    socket gives, which for a connection already torn down is ``EPIPE``.
    """
    return os_error(errno.EPIPE, f"the connection was closed ({exc})")


_SOCK_NONBLOCK: int = getattr(socket, "SOCK_NONBLOCK", 0)


def _connected(sock: socket.socket) -> bool:
    """Whether a non-blocking ``connect()`` that said "in progress" has completed already."""
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


def _start_connect(
    family: int, sockaddr: Any, local_address: Address | None
) -> tuple[socket.socket, bool]:
    """A non-blocking TCP socket connecting to ``sockaddr``, and whether it is connected yet.

    Raises (with the socket closed) the ``OSError`` of a connect that failed at once.
    """
    # Non-blocking from its creation where the platform can (Linux): one
    # ioctl less per connection than setblocking(False).
    sock = _system.socket_class(family, socket.SOCK_STREAM | _SOCK_NONBLOCK)
    try:
        if not _SOCK_NONBLOCK:
            sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if local_address is not None:
            sock.bind(local_address)
        try:
            sock.connect(sockaddr)
        except BlockingIOError:
            # On loopback the kernel completes the handshake inside
            # connect(): waiting for writability then only costs a
            # selector registration and a loop iteration per connection.
            return sock, _connected(sock)
    except BaseException:
        sock.close()
        raise
    return sock, True


def _short(sockaddr: Any) -> Address:
    return (str(sockaddr[0]), int(sockaddr[1]))


class _HostTcpStream(TcpStream):
    __slots__ = ("_eof_sent", "_local", "_remote", "_stream")

    def __init__(self, stream: anyio.abc.SocketStream, remote: Address | None = None) -> None:
        _read_only_on_demand(stream)
        self._stream = stream
        self._eof_sent = False
        raw = stream.extra(SocketAttribute.raw_socket)
        self._local = _short(raw.getsockname())
        # Kept now: once a connection is reset, getpeername() fails.
        self._remote = remote or _short(raw.getpeername())

    @property
    def local_address(self) -> Address:
        return self._local

    @property
    def remote_address(self) -> Address:
        return self._remote

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            return await self._stream.receive(max_bytes)
        except anyio.BrokenResourceError as exc:
            raise _unwrap(exc) from None

    async def send(self, item: bytes) -> None:
        if self._eof_sent:
            raise os_error(errno.EPIPE, "send() after send_eof()")
        try:
            await self._stream.send(item)
        except anyio.BrokenResourceError as exc:
            raise _unwrap(exc) from None
        except RuntimeError as exc:
            raise _closed_transport(exc) from None

    async def send_eof(self) -> None:
        self._eof_sent = True
        try:
            await self._stream.send_eof()
        except anyio.BrokenResourceError as exc:
            raise _unwrap(exc) from None
        except RuntimeError as exc:
            raise _closed_transport(exc) from None

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def abort(self) -> None:
        raw = self._stream.extra(SocketAttribute.raw_socket)
        if raw.fileno() >= 0:
            # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await self._stream.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {**self._stream.extra_attributes, **super().extra_attributes}


class _HostTcpListener(TcpListener):
    def __init__(self, listener: anyio.abc.SocketListener) -> None:
        self._listener = listener
        self._local = _short(listener.extra(SocketAttribute.raw_socket).getsockname())

    @property
    def local_address(self) -> Address:
        return self._local

    async def accept(self) -> TcpStream:
        while True:
            try:
                return _HostTcpStream(await self._listener.accept())
            except OSError as exc:
                # A connection reset while it waited in the queue; take the next.
                if exc.errno in (errno.ECONNABORTED, errno.ENOTCONN):
                    continue
                raise

    async def aclose(self) -> None:
        await self._listener.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {**self._listener.extra_attributes, **super().extra_attributes}


class _HostUdpSocket(UdpSocket):
    def __init__(self, sock: socket.socket, remote: Address | None) -> None:
        self._sock = sock
        self._local = _short(sock.getsockname())
        self._remote = remote
        self._closed = False

    @property
    def local_address(self) -> Address:
        return self._local

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {**super().extra_attributes, SocketAttribute.raw_socket: lambda: self._sock}

    @property
    def remote_address(self) -> Address | None:
        return self._remote

    @property
    def broadcast(self) -> bool:
        return bool(self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST))

    @broadcast.setter
    def broadcast(self, enabled: bool) -> None:
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, int(enabled))

    def _check_open(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError

    # setsockopt names of the contract's UDP options, per family.
    _OPTIONS: ClassVar[dict[str, tuple[tuple[int, int], ...]]] = {
        "ttl": (
            (socket.IPPROTO_IP, socket.IP_TTL),
            (socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS),
        ),
        "multicast_ttl": (
            (socket.IPPROTO_IP, socket.IP_MULTICAST_TTL),
            (socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS),
        ),
        "multicast_loop": (
            (socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP),
            (socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP),
        ),
        "receive_buffer": ((socket.SOL_SOCKET, socket.SO_RCVBUF),) * 2,
        "send_buffer": ((socket.SOL_SOCKET, socket.SO_SNDBUF),) * 2,
    }

    def _option_name(self, name: str) -> tuple[int, int]:
        return self._OPTIONS[name][self._sock.family == socket.AF_INET6]

    def set_option(self, name: str, value: int) -> None:
        super().set_option(name, value)
        self._sock.setsockopt(*self._option_name(name), int(value))

    def get_option(self, name: str) -> int:
        super().get_option(name)  # checks the name
        return int(self._sock.getsockopt(*self._option_name(name)))

    def _membership(self, group: str, interface: str | None) -> tuple[int, int, bytes]:
        ip = parse_ip(check_host(group, "join_multicast"))
        six = self._sock.family == socket.AF_INET6
        if ip is None or not ip.is_multicast or ip.version != (6 if six else 4):
            raise os_error(errno.EINVAL, f"{group!r} is not a multicast address of this family")
        if six:
            index = socket.if_nametoindex(interface) if interface else 0
            request = ip.packed + struct.pack("@I", index)
            return socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, request
        local = socket.inet_aton(interface or "0.0.0.0")
        return socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, ip.packed + local

    async def join_multicast(self, group: str, interface: str | None = None) -> None:
        """``IP_ADD_MEMBERSHIP`` (``IPV6_JOIN_GROUP``; ``interface`` is then a name)."""
        self._check_open()
        level, option, request = self._membership(group, interface)
        self._sock.setsockopt(level, option, request)
        await anyio.lowlevel.checkpoint()

    async def leave_multicast(self, group: str, interface: str | None = None) -> None:
        self._check_open()
        level, _, request = self._membership(group, interface)
        leave = socket.IP_DROP_MEMBERSHIP if level == socket.IPPROTO_IP else socket.IPV6_LEAVE_GROUP
        self._sock.setsockopt(level, leave, request)
        await anyio.lowlevel.checkpoint()

    async def send(self, data: bytes, address: tuple[str, int] | None = None) -> None:
        self._check_open()
        limit = MAX_UDP_PAYLOAD[self._sock.family]
        if len(data) > limit:
            raise message_too_long(len(data), limit)
        if address is not None:
            address = (check_host(address[0], "send"), check_port(address[1], "send"))
        elif self._remote is None:
            raise os_error(errno.EDESTADDRREQ, "send() needs an address on an unconnected socket")
        await anyio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                if address is None:
                    self._sock.send(data)
                else:
                    self._sock.sendto(data, address)
                break
            except BlockingIOError:
                await anyio.wait_writable(self._sock)
        await anyio.lowlevel.cancel_shielded_checkpoint()

    async def receive(self) -> tuple[bytes, Address]:
        self._check_open()
        await anyio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                data, sockaddr = self._sock.recvfrom(65536)
                break
            except BlockingIOError:
                await anyio.wait_readable(self._sock)
            except OSError:
                if self._closed:
                    raise anyio.ClosedResourceError from None
                raise
        await anyio.lowlevel.cancel_shielded_checkpoint()
        return data, _short(sockaddr)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            anyio.notify_closing(self._sock)
            self._sock.close()
        await anyio.lowlevel.checkpoint()


class HostStack(Stack):
    """The machine's real network, through the contract.

    Listening sockets set ``SO_REUSEADDR`` as asyncio's and anyio's servers do,
    so a restarted server can rebind while old connections linger in
    TIME-WAIT; a port another socket is *listening* on still gives
    ``EADDRINUSE``.
    """

    uses_host_sockets = True

    def __repr__(self) -> str:
        return "HostStack()"

    async def reverse_lookup(self, ip: str) -> str:
        name, _, _ = await anyio.to_thread.run_sync(
            _system.gethostbyaddr, ip, abandon_on_cancel=True
        )
        return name

    async def getaddrinfo(
        self,
        host: str | bytes | None,
        port: str | bytes | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[AddrInfo]:
        name = None if host is None else check_host(host, "getaddrinfo")
        number = parse_service(port, type, flags)
        if name is None or is_ip(name):
            # Numeric lookups never touch DNS, so they need no worker thread.
            await anyio.lowlevel.checkpoint()
            return _getaddrinfo(name, number, family, type, proto, flags)
        return await anyio.to_thread.run_sync(
            _getaddrinfo, name, number, family, type, proto, flags, abandon_on_cancel=True
        )

    async def connect_tcp(
        self, host: str, port: int, *, local_address: tuple[str, int] | None = None
    ) -> TcpStream:
        port = check_port(port, "connect_tcp")
        host = check_host(host, "connect_tcp")
        family = 0
        if local_address is not None:
            local_address = (
                check_host(local_address[0], "connect_tcp"),
                check_port(local_address[1], "connect_tcp"),
            )
            family = socket.AF_INET6 if ":" in local_address[0] else socket.AF_INET
        if is_ip(host):
            # An address needs no lookup and no extra trip through the event
            # loop: the connect below is the first await.
            infos = _getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, 0)
        else:
            infos = await self.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        errors: list[OSError] = []
        for info_family, _, _, _, sockaddr in infos:
            try:
                return await self._connect_one(info_family, sockaddr, local_address)
            except OSError as exc:
                errors.append(exc)
        raise errors[0]

    def connect_nowait(self, ip: str, port: int) -> tuple[socket.socket, bool]:
        """Start a TCP connect to the address ``ip``:``port`` without waiting for it.

        The non-blocking socket (``TCP_NODELAY`` set, as every stream here)
        and whether it is connected already (on loopback the kernel
        completes the handshake inside ``connect()``); if not, it becomes
        writable when the connect ends and ``SO_ERROR`` says how.  For a
        caller that drives the socket with event-loop callbacks instead of
        a stream (``netshim run --isolate``'s relay onto the host network).
        Raises the ``OSError`` of a connect that failed at once
        (``ECONNREFUSED`` on loopback), ``socket.gaierror`` for a name.
        """
        port = check_port(port, "connect_tcp")
        address = parse_ip(ip)
        if address is None:
            raise socket.gaierror(socket.EAI_NONAME, f"not an address: {ip!r}")
        if address.version == 4:
            return _start_connect(socket.AF_INET, (ip, port), None)
        # getaddrinfo turns an IPv6 zone into its scope id.
        family, _, _, _, sockaddr = _getaddrinfo(
            ip, port, socket.AF_INET6, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST
        )[0]
        return _start_connect(family, sockaddr, None)

    async def _connect_one(
        self, family: int, sockaddr: Any, local_address: Address | None
    ) -> TcpStream:
        sock, connected = _start_connect(family, sockaddr, local_address)
        try:
            if not connected:
                await anyio.wait_writable(sock)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise os_error(code, f"{sockaddr[0]}:{sockaddr[1]}") from None
            stream = await anyio.abc.SocketStream.from_socket(sock)
        except BaseException:
            sock.close()
            raise
        return _HostTcpStream(stream, _short(sockaddr))

    async def listen_tcp(
        self,
        host: str | None = None,
        port: int = 0,
        *,
        backlog: int = DEFAULT_BACKLOG,
        ipv6_only: bool = False,
    ) -> TcpListener:
        port = check_port(port, "listen_tcp")
        if host is None or host == "":
            sock = self._dual_stack_socket(socket.SOCK_STREAM, ipv6_only)
            address: Any = ("::", port) if sock.family == socket.AF_INET6 else ("0.0.0.0", port)
        else:
            host = check_host(host, "listen_tcp")
            infos = await self.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
            family, _, _, _, address = infos[0]
            sock = _system.socket_class(family, socket.SOCK_STREAM)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(ipv6_only))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
            listener = await anyio.abc.SocketListener.from_socket(sock)
        except BaseException:
            sock.close()
            raise
        return _HostTcpListener(listener)

    @staticmethod
    def _dual_stack_socket(kind: int, ipv6_only: bool) -> socket.socket:
        if _system.has_dualstack_ipv6() or ipv6_only:
            sock = _system.socket_class(socket.AF_INET6, kind)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(ipv6_only))
            return sock
        return _system.socket_class(socket.AF_INET, kind)

    async def open_udp(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        *,
        remote: tuple[str, int] | None = None,
        ipv6_only: bool = False,
    ) -> UdpSocket:
        port = check_port(port, "open_udp")
        host = check_host(host, "open_udp")
        infos = await self.getaddrinfo(host, port, 0, socket.SOCK_DGRAM, 0, socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        sock = _system.socket_class(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(ipv6_only))
            sock.setblocking(False)
            sock.bind(address)
            connected: Address | None = None
            if remote is not None:
                remote_port = check_port(remote[1], "open_udp")
                remote_infos = await self.getaddrinfo(
                    remote[0], remote_port, family, socket.SOCK_DGRAM
                )
                sock.connect(remote_infos[0][4])
                connected = _short(sock.getpeername())
        except BaseException:
            sock.close()
            raise
        return _HostUdpSocket(sock, connected)
