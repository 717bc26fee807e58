"""ShimSocket: a real ``socket.socket`` whose network is a netshim stack.

While :func:`netshim.install` is active, ``socket.socket`` *is*
:class:`ShimSocket`.  For AF_INET and AF_INET6 stream and datagram sockets it
owns one end of an AF_UNIX socketpair and reports the virtual family,
addresses and options; the engine (:mod:`netshim.shim._engine`) owns the
other end.  Because the file descriptor is real, ``select``, ``selectors``,
asyncio's selector loop, ``makefile``, timeouts and ``ssl`` work natively on
it.  Every other socket (AF_UNIX, ``socketpair()``, raw sockets, sockets
wrapping an inherited descriptor) is a plain socket in *passthrough* mode:
each override hands straight to the standard implementation.

Datagram sockets frame each message on the pair with its address (see
:func:`~netshim.shim._engine.pack_datagram`), so ``recvfrom`` reports the
virtual sender.  Sending goes to the stack directly, so ``sendto`` fails at
once with the errno the kernel would give (``EACCES`` for a broadcast
without ``SO_BROADCAST``, ``EMSGSIZE``, ``ENETUNREACH``).
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import functools
import ipaddress
import operator
import os
import re
import socket
import struct
import sys
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from .._addresses import parse_ip
from .._errors import os_error
from .._ip_header import DEFAULT_HEADER, DEFAULT_HOP_LIMIT, IpHeader
from ..stack import Stack, TcpListener
from . import _names
from ._engine import (
    ACCEPTED_SIZE,
    DATA,
    JOINED_ANNOUNCEMENT,
    TOOK_JOINED,
    TOOK_PASSED,
    close_tcp,
    drain_filler,
    establish,
    get_engine,
    join_accepted,
    pack_datagram,
    pump_udp,
    send_datagram,
    serve_listener,
    take_accepted,
    take_joined,
    unpack_accepted,
    unpack_datagram,
    unsplice,
)
from ._state import Phase, SocketState, lookup_state

__all__ = ["ORIGINAL_SOCKET", "ShimSocket", "acting_stack"]

ORIGINAL_SOCKET = socket.socket
# A state's kind is always a SocketKind (see SocketState), so `is` compares it.
_SOCK_STREAM = socket.SOCK_STREAM
_AF_INET = socket.AF_INET
_INET_FAMILIES = (socket.AF_INET, socket.AF_INET6)
_SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
_TYPE_MASK = ~(_SOCK_NONBLOCK | getattr(socket, "SOCK_CLOEXEC", 0))
# Largest UDP payloads, as in the stacks.
_MAX_PAYLOAD = {socket.AF_INET: 65507, socket.AF_INET6: 65527}
# Room for the address header that datagrams carry across the pair.
_HEADER_ROOM = 64


def acting_stack() -> Stack:
    """The stack new shim sockets use (see :func:`netshim.acting_as`)."""
    # Looked up once: an import statement costs more than the rest of a call.
    global _current_acting_stack
    if _current_acting_stack is None:
        from ._patch import current_acting_stack

        _current_acting_stack = current_acting_stack
    return _current_acting_stack()


_current_acting_stack: Callable[[], Stack] | None = None


# The IP each address literal a program connects or sends to stands for, per
# family (connect() parses the same few again and again): an answer that
# depends on the text alone, as no synthetic address can ever be one of
# them.  Bounded: the table starts over when full.
_literal_destinations: dict[tuple[int, str], str] = {}
_MAX_LITERAL_DESTINATIONS = 1024


def _not_connected() -> OSError:
    return os_error(errno.ENOTCONN)


if TYPE_CHECKING:
    _Base = socket.socket
else:
    _Base = object


class _ShimMeta(type):
    """Keeps ``isinstance(x, socket.socket)`` true for sockets made before install()."""

    def __instancecheck__(cls, instance: object) -> bool:
        return isinstance(instance, ORIGINAL_SOCKET)

    def __subclasscheck__(cls, subclass: type) -> bool:
        return issubclass(subclass, ORIGINAL_SOCKET)


class _ShimCommon(_Base):
    """What ShimSocket and ShimSSLSocket share: the virtual view and connecting."""

    __slots__ = ()
    _netshim: SocketState | None

    # -- identity ------------------------------------------------------------

    @property
    def family(self) -> socket.AddressFamily:
        state = self._netshim
        return state.family if state is not None else super().family

    @property
    def type(self) -> socket.SocketKind:
        state = self._netshim
        return state.kind if state is not None else super().type

    @property
    def proto(self) -> int:
        state = self._netshim
        return state.proto if state is not None else super().proto

    def _sockaddr(self, address: tuple[str, int]) -> Any:
        state = self._netshim
        assert state is not None
        host, port = address
        if state.family == socket.AF_INET6:
            ip = parse_ip(host)
            if ip is not None and ip.version == 4:
                host = f"::ffff:{ip}"
            return (host, port, 0, 0)
        return (host, port)

    def getsockname(self) -> Any:
        state = self._netshim
        if state is None:
            return super().getsockname()
        _check_open(self)
        if state.local is None:
            return self._sockaddr(state.bind_request or (self._wildcard(), 0))
        return self._sockaddr(state.local)

    def getpeername(self) -> Any:
        state = self._netshim
        if state is None:
            return super().getpeername()
        _check_open(self)
        if (
            state.remote is None
            or state.phase not in (Phase.CONNECTED, Phase.BOUND)
            or state.peer_reset
        ):
            raise _not_connected()
        return self._sockaddr(state.remote)

    # -- addresses -----------------------------------------------------------

    def _parse_address(self, address: Any, function: str) -> tuple[str, int]:
        if address.__class__ is tuple and len(address) == 2:
            host, port = address
            if host.__class__ is str and port.__class__ is int and 0 <= port <= 65535:
                return address  # the usual (ip, port)
        state = self._netshim
        assert state is not None
        family_name = "AF_INET6" if state.family == socket.AF_INET6 else "AF_INET"
        if not isinstance(address, tuple):
            raise TypeError(
                f"{function}(): {family_name} address must be tuple, not {type(address).__name__}"
            )
        expected = (2, 3, 4) if state.family == socket.AF_INET6 else (2,)
        if len(address) not in expected:
            raise TypeError(
                f"{family_name} address must be a pair (host, port)"
                if state.family == socket.AF_INET
                else "AF_INET6 address must be a tuple (host, port[, flowinfo[, scopeid]])"
            )
        host, port = address[0], address[1]
        if isinstance(host, bytes | bytearray):
            host = bytes(host).decode("idna")
        if not isinstance(host, str):
            raise TypeError(f"str, bytes or bytearray expected, not {type(host).__name__}")
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"'{type(port).__name__}' object cannot be interpreted as an integer")
        if not 0 <= port <= 65535:
            raise OverflowError(f"{function}(): port must be 0-65535.")
        if len(address) > 2 and not 0 <= operator.index(address[2]) <= 0xFFFFF:
            raise OverflowError(f"{function}(): flowinfo must be 0-1048575.")
        return host, port

    def _resolve(self, host: str, port: int, *, passive: bool) -> tuple[str, int]:
        """Turn the host of an address tuple into an IP, as the C socket module does."""
        state = self._netshim
        assert state is not None
        if host == "" and passive:
            return (self._wildcard(), port)
        if host == "<broadcast>":
            return ("255.255.255.255", port)
        ip = parse_ip(host)
        if ip is not None:
            if state.family == socket.AF_INET and ip.version == 6:
                raise socket.gaierror(
                    socket.EAI_ADDRFAMILY, "Address family for hostname not supported"
                )
            return (str(ip), port)
        name = _names.synthetic_name(host)
        if name is not None:
            return (host, port)
        infos = _names.getaddrinfo_on(state.stack, host, port, state.family, state.kind)
        return (str(infos[0][4][0]), port)

    def _target(self, address: Any, function: str) -> tuple[str, int]:
        """Where a connect or sendto goes, once the stack's synchronous check let it pass."""
        target = self._destination(address, function)
        state = self._netshim
        assert state is not None
        # Checked here, in the caller's thread, so that a refusal reaches the
        # program as the stack raised it, even from a non-blocking connect
        # whose outcome would otherwise travel as an errno in SO_ERROR.
        state.stack.check_destination(
            target[0], target[1], "tcp" if state.kind is _SOCK_STREAM else "udp"
        )
        return target

    def _destination(self, address: Any, function: str) -> tuple[str, int]:
        """An IP, or a name for stacks that resolve remotely."""
        host, port = self._parse_address(address, function)
        state = self._netshim
        assert state is not None
        key = (state.family, host)
        known = _literal_destinations.get(key)
        if known is not None:
            return (known, port)
        name = _names.synthetic_name(host)
        if name is not None:
            return (name, port)
        literal = parse_ip(host)
        if state.stack.resolves_remotely and literal is None and host:
            return (host, port)
        target = self._resolve(host, port, passive=False)
        ip = parse_ip(target[0])
        assert ip is not None  # _resolve gives an IP
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
            target = (str(ip), port)
        name = _names.synthetic_name(target[0])
        if name is not None:
            return (name, port)
        if literal is not None and not _names.in_synthetic_range(ip):
            if len(_literal_destinations) >= _MAX_LITERAL_DESTINATIONS:
                _literal_destinations.clear()
            _literal_destinations[key] = target[0]
        return target

    # -- options -------------------------------------------------------------

    def setsockopt(self, level: int, option: int, value: Any, optlen: int | None = None) -> None:
        state = self._netshim
        if state is None:
            if optlen is None:
                return super().setsockopt(level, option, value)
            return super().setsockopt(level, option, value, optlen)
        if optlen is not None:
            value = None
        elif isinstance(value, bytes | bytearray):
            value = bytes(value)
        elif isinstance(value, int):
            value = int(value)
        else:
            raise TypeError(f"a bytes-like object is required, not '{type(value).__name__}'")
        if (level, option) == (socket.SOL_SOCKET, socket.SO_LINGER) and isinstance(value, bytes):
            on, seconds = struct.unpack("ii", value[:8])
            state.abort_on_close = bool(on) and seconds == 0
        buffer_sizes = (
            (socket.SOL_SOCKET, socket.SO_RCVBUF),
            (socket.SOL_SOCKET, socket.SO_SNDBUF),
        )
        if (level, option) in buffer_sizes and isinstance(value, int):
            # Linux doubles the value to leave room for its bookkeeping.
            value = max(value * 2, 2304 if option == socket.SO_RCVBUF else 4608)
        if (level, option) == (socket.SOL_SOCKET, socket.SO_BROADCAST) and state.udp is not None:
            state.udp.broadcast = bool(value)
        if not _known_option(level, option):
            raise os_error(errno.ENOPROTOOPT)
        valid = _OPTION_RANGES.get((level, option))
        if valid is not None and isinstance(value, int) and value not in valid:
            raise os_error(errno.EINVAL)
        state.options[(level, option)] = value

    def getsockopt(self, level: int, option: int, buflen: int | None = None) -> Any:
        state = self._netshim
        if state is None:
            if buflen is None:
                return super().getsockopt(level, option)
            return super().getsockopt(level, option, buflen)
        if level == socket.SOL_SOCKET:
            if option == socket.SO_ERROR:
                code, state.error = state.error, 0
                return code
            if option == socket.SO_TYPE:
                return int(state.kind)
            if option == getattr(socket, "SO_DOMAIN", -1):
                return int(state.family)
            if option == getattr(socket, "SO_PROTOCOL", -1):
                return state.proto or (socket.IPPROTO_TCP if state.is_tcp else socket.IPPROTO_UDP)
            if option == socket.SO_ACCEPTCONN:
                return int(state.phase is Phase.LISTENING)
        if not _known_option(level, option):
            raise os_error(errno.ENOPROTOOPT)
        value = state.options.get((level, option), 0)
        if value == -1 or (level, option) not in state.options:
            # "The route's default" reads back as the value it stands for.
            value = _OPTION_DEFAULTS.get((level, option), value)
        if buflen is not None:
            if isinstance(value, bytes):
                return value[:buflen]
            return int(value).to_bytes(4, "little")[:buflen]
        if isinstance(value, bytes):
            return int.from_bytes(value[:4], "little")
        return value

    def _wildcard(self) -> str:
        state = self._netshim
        assert state is not None
        return "::" if state.family == socket.AF_INET6 else "0.0.0.0"

    def _v6only(self) -> bool:
        state = self._netshim
        assert state is not None
        return state.family == socket.AF_INET6 and bool(
            state.options.get((socket.IPPROTO_IPV6, socket.IPV6_V6ONLY), 0)
        )

    # -- binding and listening (here, so that a TLS socket wrapped before bind()
    # binds and listens on the stack too) --------------------------------------

    def bind(self, address: Any) -> None:
        state = self._netshim
        if state is None:
            return super().bind(address)
        _check_open(self)
        if state.phase is not Phase.NEW or state.local is not None:
            raise os_error(errno.EINVAL)
        host, port = self._parse_address(address, "bind")
        host, port = self._resolve(host, port, passive=True)
        stack = state.stack.stack_for_local_address(host)
        state.stack = stack
        state.bind_request = (host, port)
        if state.is_tcp:
            # Listen at once, so getsockname() knows the port before listen().
            listener = _engine_call(
                state, _listen, stack, host, port, state.backlog, self._v6only()
            )
            # Refused until listen(), as Linux refuses a bound socket's connections.
            listener.accepting = False
            state.listener = listener
            state.local = listener.local_address
        else:
            udp = _engine_call(state, _open_udp, stack, host, port, None, self._v6only())
            self._start_udp(udp)
        state.phase = Phase.BOUND

    def listen(self, backlog: int = min(socket.SOMAXCONN, 128)) -> None:
        state = self._netshim
        if state is None:
            return super().listen(backlog)
        _check_open(self)
        if not state.is_tcp:
            raise os_error(errno.EOPNOTSUPP)
        backlog = operator.index(backlog)
        if not -(2**31) <= backlog < 2**31:
            raise OverflowError(
                "signed integer is greater than maximum"
                if backlog > 0
                else "signed integer is less than minimum"
            )
        # The descriptor must still be open (a program may have closed the
        # number behind the socket's back: EBADF, as the kernel says).
        ORIGINAL_SOCKET.getsockopt(self, socket.SOL_SOCKET, socket.SO_TYPE)
        if state.phase is Phase.LISTENING:
            state.backlog = max(0, backlog)
            _engine_call(state, _set_backlog, state.listener, state.backlog)
            return None
        if state.phase not in (Phase.NEW, Phase.BOUND):
            raise os_error(errno.EINVAL)
        state.backlog = max(0, backlog)
        if state.listener is not None:
            # Made at bind(), with the backlog a socket has before listen().
            # Set here, not through the engine: a connect the engine is
            # already making must find the listener accepting (just below)
            # as soon as listen() returns, and nothing waits for room on a
            # listener that is not accepting (its connects are refused).
            state.listener.set_backlog(state.backlog)
        else:
            state.listener = _engine_call(
                state, _listen, state.stack, self._wildcard(), 0, state.backlog, self._v6only()
            )
            state.local = state.listener.local_address
        state.accept_queue = deque()
        state.listener.accepting = True
        state.phase = Phase.LISTENING
        state.engine.spawn(serve_listener, state, state.listener)
        return None

    def _accept(self) -> tuple[int, Any]:
        """What ``socket.accept()`` calls: the next connection's descriptor and address.

        Overriding this one method makes the standard ``accept()`` (and
        ``SSLSocket.accept()``, and trio's, which call it unbound) work.
        """
        state = self._netshim
        if state is None:
            return super()._accept()  # type: ignore[misc,no-any-return]
        fd, address, accepted = self._take_connection()
        if accepted is not None:
            # The caller makes the socket from the number alone.
            accepted.index(fd)
        return fd, address

    def _take_connection(self) -> tuple[int, Any, SocketState | None]:
        """The next connection's descriptor, address and state (None: another process's)."""
        state = self._netshim
        assert state is not None
        if self.fileno() < 0:  # _check_open, inlined: once per connection
            raise os_error(errno.EBADF)
        if state.phase is not Phase.LISTENING:
            raise os_error(errno.EINVAL)
        # One announcement per waiting connection, with its descriptor (see
        # serve_listener) or none for one joined in this process (see
        # join_accepted): reading it honours blocking mode and timeout
        # exactly as accept() on a real listening socket would.
        frame, ancillary, _, _ = ORIGINAL_SOCKET.recvmsg(
            self, ACCEPTED_SIZE, _ONE_DESCRIPTOR_SPACE, _MSG_CMSG_CLOEXEC
        )
        if frame == JOINED_ANNOUNCEMENT and not ancillary:
            return self._take_joined()
        fds = [
            _INT.unpack_from(data)[0]
            for level, kind, data in ancillary
            if level == _SOL_SOCKET and kind == _SCM_RIGHTS and len(data) >= _INT.size
        ]
        if len(frame) != ACCEPTED_SIZE or not fds:
            for fd in fds:
                os.close(fd)
            raise os_error(errno.EBADF, "the listener was closed")
        fd = fds[0]
        accepted = lookup_state(fd)
        if accepted is None:
            # Accepted by the engine of the process this one was forked
            # from (a pre-fork worker): served through that engine's pair.
            local, remote = unpack_accepted(frame)
            SocketState.for_inherited_connection(state, fd, local, remote)
            accepted = None
        else:
            known = accepted.remote  # what the frame says too
            assert known is not None
            remote = known
            if accepted.splice_partner is not None and not state.engine.left_behind:
                # Joined: the engine has nothing more to do for it.
                take_accepted(state)
                return fd, self._sockaddr(remote), accepted
        # Tell the engine the connection was taken (see serve_listener).
        with contextlib.suppress(OSError):
            ORIGINAL_SOCKET.send(self, TOOK_PASSED, socket.MSG_DONTWAIT)
        return fd, self._sockaddr(remote), accepted

    def _take_joined(self) -> tuple[int, Any, SocketState]:
        """The connection a joined announcement stands for: its end waits in the queue."""
        state = self._netshim
        assert state is not None
        taken = take_joined(state)
        if taken is None:
            raise os_error(errno.EBADF, "the listener was closed")
        user_end, accepted = taken
        if state.engine.left_behind:
            # A child forked after the connection was queued took its copy:
            # the parent's engine drops its own (see serve_listener).
            with contextlib.suppress(OSError):
                ORIGINAL_SOCKET.send(self, TOOK_JOINED, socket.MSG_DONTWAIT)
        remote = accepted.remote
        assert remote is not None
        if state.family is not _AF_INET:
            remote = self._sockaddr(remote)  # (an IPv4 pair is reported as it is)
        return user_end.detach(), remote, accepted

    def _connect(self, address: Any, function: str) -> int:
        state = self._netshim
        assert state is not None
        if self.fileno() < 0:  # _check_open, inlined: once per connection
            raise os_error(errno.EBADF)
        if state.kind is not _SOCK_STREAM:
            return self._connect_udp(address, function)
        if state.phase is Phase.CONNECTED:
            if state.report_connected:
                # Linux answers the first connect() after a non-blocking
                # connect completed with success, and EISCONN after that.
                state.report_connected = False
                return 0
            return errno.EISCONN
        if state.phase is Phase.CONNECTING:
            return errno.EALREADY
        if state.phase is Phase.LISTENING:
            return errno.EISCONN
        target = self._target(address, function)
        local = None
        if state.listener is not None:
            # bind() then connect(): give the port back and connect from it.
            local = state.listener.local_address
            _engine_call(state, state.listener.aclose)
            state.listener = None
        elif self._connect_joined(target):
            if self.gettimeout() == 0.0:
                # As a kernel's non-blocking connect does even on loopback;
                # the socket is writable at once.
                state.report_connected = True
                return errno.EINPROGRESS
            return 0
        timeout = self.gettimeout()
        if timeout == 0.0:
            self._start_nonblocking_connect(target, local)
            return errno.EINPROGRESS
        try:
            _engine_call(state, _connect, state, target, local, timeout)
        except TimeoutError as exc:
            if exc.errno is None:
                raise TimeoutError("timed out") from None
            raise
        except OSError as exc:
            if isinstance(exc, socket.gaierror):
                raise
            if function == "connect" and exc.errno:
                # The stack's message says why (a gateway's refusal names its
                # rule); the exception is rebuilt so that it carries no
                # engine traceback and has the class the errno gives.
                raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno)) from None
            return exc.errno or errno.EIO
        return 0

    def _connect_joined(self, target: tuple[str, int]) -> bool:
        """Connect to a shim listener of this process at once, joined to it (the common case).

        Made in the caller's thread, with no trip to the engine (see
        :meth:`netshim.stack.Stack.connect_tcp_joined`); False when the stack
        cannot, and the engine connects as for any other connection.
        """
        state = self._netshim
        assert state is not None
        if state.engine.left_behind:
            return False
        # A partial, not a lambda: called in C, with no frame of its own.
        stream = state.stack.connect_tcp_joined(
            target[0], target[1], functools.partial(join_accepted, state)
        )
        if stream is None:
            return False
        state.stream = stream
        state.local = stream.local_address
        state.remote = stream.remote_address
        state.phase = Phase.CONNECTED
        return True

    def _start_nonblocking_connect(self, target: tuple[str, int], local: Any) -> None:
        state = self._netshim
        assert state is not None
        state.report_connected = True
        # Make the descriptor unwritable until the stack answers: shrink the
        # send buffer and fill it; the engine drains it when the connect ends.
        state.original_sndbuf = ORIGINAL_SOCKET.getsockopt(
            self, socket.SOL_SOCKET, socket.SO_SNDBUF
        )
        ORIGINAL_SOCKET.setsockopt(self, socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
        filled = 0
        chunk = b"\0" * 512
        while True:
            try:
                filled += ORIGINAL_SOCKET.send(self, chunk, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
        state.filler = filled
        state.phase = Phase.CONNECTING
        state.engine.spawn(_finish_connect, state, target, local)

    def _connect_udp(self, address: Any, function: str) -> int:
        state = self._netshim
        assert state is not None
        if isinstance(address, tuple) and len(address) >= 1 and address[0] is None:
            raise TypeError("str, bytes or bytearray expected, not NoneType")
        target = self._target(address, function)
        local = None
        if state.udp is not None:
            local = state.udp.local_address
            _engine_call(state, _stop_udp, state)
        udp = _engine_call(
            state, _open_udp, state.stack, *(local or (self._wildcard(), 0)), target, self._v6only()
        )
        state.remote = udp.remote_address
        self._start_udp(udp)
        state.phase = Phase.BOUND
        return 0

    def _start_udp(self, udp: Any) -> None:
        state = self._netshim
        assert state is not None
        state.udp = udp
        state.local = udp.local_address
        state.remote = udp.remote_address
        udp.broadcast = bool(state.options.get((socket.SOL_SOCKET, socket.SO_BROADCAST), 0))
        state.engine.spawn(pump_udp, state, udp)


class ShimSocket(_ShimCommon, ORIGINAL_SOCKET, metaclass=_ShimMeta):
    """``socket.socket`` while netshim is installed; see the module documentation."""

    __slots__ = ("_netshim",)

    def __init__(
        self,
        family: int = -1,
        type: int = -1,
        proto: int = -1,
        fileno: int | None = None,
    ) -> None:
        state: SocketState | None = None
        if fileno is None:
            family = socket.AF_INET if family == -1 else family
            type = socket.SOCK_STREAM if type == -1 else type
            proto = 0 if proto == -1 else proto
            kind = type & _TYPE_MASK
            if kind == type:
                kind = type  # keeps a SocketKind a SocketKind (converting one is slow)
            if family in _INET_FAMILIES and kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                stack = (_current_acting_stack or acting_stack)()
                if stack.uses_host_sockets:
                    # The host network with nothing added: a real socket is
                    # exact and free (UDP-Lite, SCTP and the rest included).
                    super().__init__(family, type, proto)
                    self._netshim = None
                    return
                # UDP-Lite is UDP with partial checksums: on a network that
                # loses no bits it behaves as UDP, so it is carried as UDP.
                allowed = (
                    (0, socket.IPPROTO_TCP)
                    if kind == socket.SOCK_STREAM
                    else (0, socket.IPPROTO_UDP, _IPPROTO_UDPLITE)
                )
                if proto not in allowed:
                    raise os_error(errno.EPROTONOSUPPORT)
                state = SocketState(family, kind, stack, get_engine())
                if proto:
                    state.proto = proto
                user_end, engine_end = _socket.socketpair(socket.AF_UNIX, kind)
                # socket.socket.__init__'s work without its Python frame (a
                # connection makes two sockets).
                _socket.socket.__init__(self, socket.AF_UNIX, kind, 0, user_end.detach())
                self._io_refs = 0
                self._closed = False
                # The C socket object as it comes: the engine needs none of
                # what socket.socket adds, and making one costs a microsecond.
                # Still blocking: the engine makes it non-blocking when it
                # takes it up (see _engine.engine_end_of), and a connection
                # joined in connect() gives it to the accepted socket as is.
                state.engine_end = engine_end
                state.register(self)
                if type & _SOCK_NONBLOCK:
                    self.setblocking(False)
            else:
                super().__init__(family, type, proto)
        else:
            state = lookup_state(fileno)
            if state is not None and family not in (-1, state.family):
                # Told the descriptor is of another family: take it as that,
                # as CPython does (it does not check).
                _abandon_unused(state)
                state = None
            if state is not None:
                super().__init__(socket.AF_UNIX, state.kind, 0, fileno)
                state.user_socket = weakref.ref(self)
            else:
                super().__init__(family, type, proto, fileno)
        self._netshim = state

    def accept(self) -> tuple[socket.socket, Any]:
        """``socket.accept()``, making the new socket from the state ``_accept`` found.

        The standard method would look the state up again from the descriptor.
        """
        state = self._netshim
        if state is None:
            return super().accept()
        fd, address, accepted = self._take_connection()
        if accepted is None:
            sock = ShimSocket(self.family, self.type, self.proto, fileno=fd)
        else:
            sock = ShimSocket.__new__(ShimSocket)
            # socket.socket.__init__ inlined, as in __init__.
            _socket.socket.__init__(sock, socket.AF_UNIX, accepted.kind, 0, fd)
            sock._io_refs = 0
            sock._closed = False
            sock._netshim = accepted
            accepted.user_socket = weakref.ref(sock)
        if socket.getdefaulttimeout() is None and self.gettimeout():
            sock.setblocking(True)
        return sock, address

    def __repr__(self) -> str:
        state = self._netshim
        if state is None:
            return super().__repr__()
        closed = getattr(self, "_closed", False)
        text = (
            f"<netshim.ShimSocket{' [closed]' if closed else ''} fd={self.fileno()}, "
            f"family={state.family}, type={state.kind}, proto={self.proto}"
        )
        # A closed socket has no addresses to show, as CPython's repr says.
        if state.local is not None and not closed:
            text += f", laddr={self._sockaddr(state.local)}"
        if state.remote is not None and not closed:
            text += f", raddr={self._sockaddr(state.remote)}"
        return text + ">"

    # -- connecting ------------------------------------------------------------

    def connect(self, address: Any) -> None:
        state = self._netshim
        if state is None:
            return super().connect(address)
        code = self._connect(address, "connect")
        if code:
            if code == errno.EINPROGRESS:
                raise BlockingIOError(code, os.strerror(code))
            raise os_error(code)
        return None

    def connect_ex(self, address: Any) -> int:
        state = self._netshim
        if state is None:
            return super().connect_ex(address)
        return self._connect(address, "connect_ex")

    # -- stream data -------------------------------------------------------------

    def _check_stream(self) -> None:
        state = self._netshim
        assert state is not None
        _check_open(self)
        if state.phase is Phase.FAILED:
            code, state.error = state.error, 0
            state.phase = Phase.NEW
            raise os_error(code or errno.ENOTCONN)
        if state.phase is not Phase.CONNECTED and state.phase is not Phase.CONNECTING:
            raise _not_connected()

    def send(self, data: Any, flags: int = 0) -> int:
        state = self._netshim
        if state is None or (state.phase is Phase.CONNECTED and state.is_tcp):
            return super().send(data, flags)
        if not state.is_tcp:
            if state.remote is None:
                raise os_error(errno.EDESTADDRREQ)
            return self.sendto(data, flags, state.remote)
        self._check_stream()
        return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        state = self._netshim
        if state is None or (state.phase is Phase.CONNECTED and state.is_tcp):
            return super().sendall(data, flags)
        if not state.is_tcp:
            self.send(data, flags)
            return None
        self._check_stream()
        return super().sendall(data, flags)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        state = self._netshim
        if state is None or (state.phase is Phase.CONNECTED and state.is_tcp):
            return super().recv(bufsize, flags)
        if not state.is_tcp:
            return self._receive_datagram(bufsize, flags, "recv")[0]
        self._check_stream()
        return super().recv(bufsize, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        state = self._netshim
        if state is None or (state.phase is Phase.CONNECTED and state.is_tcp):
            return super().recv_into(buffer, nbytes, flags)
        if not state.is_tcp:
            return self._receive_into(buffer, nbytes, flags, "recv_into")[0]
        self._check_stream()
        return super().recv_into(buffer, nbytes, flags)

    def shutdown(self, how: int) -> None:
        state = self._netshim
        if state is not None and state.is_tcp and state.phase is not Phase.CONNECTED:
            raise _not_connected()
        return super().shutdown(how)

    # -- datagrams ---------------------------------------------------------------

    def sendto(self, data: Any, *flags_and_address: Any) -> int:
        state = self._netshim
        if state is None:
            return super().sendto(data, *flags_and_address)
        if len(flags_and_address) not in (1, 2):
            raise TypeError(f"sendto() takes 2 or 3 arguments ({len(flags_and_address) + 1} given)")
        flags = 0
        address = flags_and_address[-1]
        if len(flags_and_address) == 2:
            flags = operator.index(flags_and_address[0])
        # Checked first, as CPython parses the data argument first.
        if not isinstance(data, bytes | bytearray | memoryview):
            try:
                memoryview(data)
            except TypeError:
                raise TypeError(
                    f"a bytes-like object is required, not '{type(data).__name__}'"
                ) from None
        _check_open(self)
        if state.is_tcp:
            if state.phase is Phase.CONNECTED:
                # Linux ignores the address of a sendto() on a connected TCP
                # socket (after checking that it is one).
                self._parse_address(address, "sendto")
                return self.send(data, flags)
            raise os_error(errno.EPIPE)
        return self._send_datagram(bytes(data), flags, address, _PerMessage())

    def _send_datagram(self, payload: bytes, flags: int, address: Any, given: _PerMessage) -> int:
        state = self._netshim
        assert state is not None
        limit = _MAX_PAYLOAD[state.family]
        if len(state.corked) + len(payload) > limit:
            state.corked = b""
            raise os_error(errno.EMSGSIZE)
        if flags & _MSG_MORE:
            # Linux holds the data and sends it with the next send without
            # MSG_MORE, as one datagram.
            state.corked += payload
            return len(payload)
        sent = len(payload)
        if state.corked:
            payload, state.corked = state.corked + payload, b""
        if state.udp is None:
            udp = _engine_call(
                state, _open_udp, state.stack, self._wildcard(), 0, None, self._v6only()
            )
            self._start_udp(udp)
            state.phase = Phase.BOUND
        target: tuple[str, int]
        if isinstance(address, tuple) and state.remote is not None and address == state.remote:
            target = state.remote
        else:
            target = self._target(address, "sendto")
        assert state.udp is not None
        header = _outgoing_header(state, target[0], given)
        if state.engine.left_behind:
            # Inherited across fork(): the parent's engine reads datagrams
            # written into the pair and sends them (a failure comes back as
            # the socket's next error, as an ICMP error would).
            ORIGINAL_SOCKET.send(self, pack_datagram(payload, target, header))
            return sent
        _engine_call(state, send_datagram, state.udp, payload, target, header)
        return sent

    def _receive_datagram(
        self, bufsize: int, flags: int, function: str = "recvfrom"
    ) -> tuple[bytes, Any]:
        payload, source, _ = self._next_datagram(bufsize, flags, function)
        return payload[:bufsize], source

    def _next_datagram(
        self, bufsize: int, flags: int, function: str
    ) -> tuple[bytes, Any, IpHeader]:
        """The next datagram whole (the caller cuts it to size), its source and IP header."""
        state = self._netshim
        assert state is not None
        if bufsize < 0:
            raise ValueError(f"negative buffersize in {function}")
        _check_open(self)
        # An unbound UDP socket receives nothing until it sends or binds; it
        # still blocks (or times out, or says EAGAIN) like the real one.  The
        # pair carries each datagram framed with its source: MSG_TRUNC on the
        # pair would speak of the frame, so it is left to us.
        message = super().recv(65536 + _HEADER_ROOM, flags & ~socket.MSG_TRUNC)
        kind, payload, source, header = unpack_datagram(message)
        if kind != DATA:
            raise os_error(source[1] or errno.EIO)
        return payload, self._sockaddr(source), header

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, Any]:
        state = self._netshim
        if state is None or state.is_tcp:
            return super().recvfrom(bufsize, flags)
        return self._receive_datagram(bufsize, flags)

    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> tuple[int, Any]:
        state = self._netshim
        if state is None or state.is_tcp:
            return super().recvfrom_into(buffer, nbytes, flags)
        return self._receive_into(buffer, nbytes, flags, "recvfrom_into")

    def _receive_into(self, buffer: Any, nbytes: int, flags: int, function: str) -> tuple[int, Any]:
        view = memoryview(buffer).cast("B")
        if nbytes < 0:
            raise ValueError(f"negative buffersize in {function}")
        if nbytes > len(view):
            raise ValueError(
                "buffer too small for requested bytes"
                if function == "recv_into"
                else "nbytes is greater than the length of the buffer"
            )
        payload, source = self._receive_datagram(nbytes or len(view), flags, function)
        view[: len(payload)] = payload
        return len(payload), source

    def recvmsg(self, bufsize: int, ancbufsize: int = 0, flags: int = 0) -> Any:
        state = self._netshim
        if state is None or state.is_tcp:
            return super().recvmsg(bufsize, ancbufsize, flags)
        if bufsize < 0:
            raise ValueError("negative buffer size in recvmsg()")
        if ancbufsize < 0:
            raise ValueError("invalid ancillary data buffer length")
        payload, source, header = self._next_datagram(bufsize, flags, "recvmsg")
        ancdata, ancillary_flags = _fit_ancillary(_ancillary_for(state, header), ancbufsize)
        truncated = socket.MSG_TRUNC if len(payload) > bufsize else 0
        return payload[:bufsize], ancdata, truncated | ancillary_flags, source

    def recvmsg_into(self, buffers: Iterable[Any], ancbufsize: int = 0, flags: int = 0) -> Any:
        state = self._netshim
        if state is None or state.is_tcp:
            return super().recvmsg_into(buffers, ancbufsize, flags)
        if ancbufsize < 0:
            raise ValueError("invalid ancillary data buffer length")
        views = [memoryview(buffer).cast("B") for buffer in buffers]
        for view in views:
            if view.readonly:
                raise TypeError(
                    "recvmsg_into() argument 1 must be an iterable of single-segment "
                    "read-write buffers"
                )
        room = sum(len(view) for view in views)
        payload, source, header = self._next_datagram(room, flags, "recvmsg_into")
        # Scattered over the buffers in order, as the kernel fills an iovec.
        offset = 0
        for view in views:
            chunk = payload[offset : offset + len(view)]
            view[: len(chunk)] = chunk
            offset += len(chunk)
            if offset >= len(payload):
                break
        ancdata, ancillary_flags = _fit_ancillary(_ancillary_for(state, header), ancbufsize)
        truncated = socket.MSG_TRUNC if len(payload) > room else 0
        return min(len(payload), room), ancdata, truncated | ancillary_flags, source

    def sendmsg(
        self,
        buffers: Iterable[Any],
        ancdata: Iterable[Any] = (),
        flags: int = 0,
        address: Any = None,
    ) -> int:
        state = self._netshim
        if state is None or state.is_tcp:
            if address is None:
                return super().sendmsg(buffers, ancdata, flags)
            return super().sendmsg(buffers, ancdata, flags, address)
        data = b"".join(_sendmsg_buffers(buffers))
        given = _per_message_fields(ancdata, state.family)
        _check_open(self)
        if address is None:
            if state.remote is None:
                raise os_error(errno.EDESTADDRREQ)
            address = state.remote
        return self._send_datagram(data, flags, address, given)

    # -- closing -----------------------------------------------------------------

    def _real_close(self) -> None:
        state = self._netshim
        if state is not None and self.fileno() >= 0 and state.user_socket() is self:
            _closing(state, self)
        # What socket.socket._real_close does, without its Python frame.
        _socket.socket.close(self)

    def detach(self) -> int:
        state = self._netshim
        if state is not None:
            if self.fileno() >= 0:
                state.index(self.fileno())  # the number alone must find it from now on
            state.user_socket = lambda: None
        return super().detach()


def _abandon_unused(state: SocketState) -> None:
    """Let go of ``state`` when its descriptor is taken as another kind of socket.

    Only a socket that never did anything (detached, not bound or connected)
    is let go: nothing else will ever close its engine end.  A state in use
    keeps its engine end, whose task owns it.
    """
    if state.phase is not Phase.NEW or state.user_socket() is not None:
        return
    state.unregister()
    if state.engine_end is not None:
        state.engine_end.close()
        state.engine_end = None


def _sendmsg_buffers(buffers: Iterable[Any]) -> list[bytes]:
    """``sendmsg``'s data, checked as CPython checks it (bytes-like objects only)."""
    try:
        items = list(buffers)
    except TypeError:
        raise TypeError("sendmsg() argument 1 must be an iterable") from None
    chunks = []
    for item in items:
        try:
            chunks.append(memoryview(item).tobytes())
        except TypeError:
            raise TypeError(
                f"a bytes-like object is required, not '{type(item).__name__}'"
            ) from None
    return chunks


@dataclass(frozen=True, slots=True)
class _PerMessage:
    """IP header fields one ``sendmsg`` chose in its ancillary data (None: the socket's)."""

    hop_limit: int | None = None
    traffic_class: int | None = None


_SOL_IP = socket.IPPROTO_IP
_SOL_IPV6 = socket.IPPROTO_IPV6
_IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)
_IPV6_TCLASS = getattr(socket, "IPV6_TCLASS", 67)
_IPV6_DONTFRAG = getattr(socket, "IPV6_DONTFRAG", 62)
_IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)
_IPV6_RECVTCLASS = getattr(socket, "IPV6_RECVTCLASS", 66)
# Linux's values; the socket module lacks IP_RECVTTL.
_IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)
_IP_RECVTOS = getattr(socket, "IP_RECVTOS", 13)
# SOL_SOCKET messages Linux accepts on a UDP socket (it ignores the first two there).
_SOCKET_MESSAGES = {
    getattr(socket, "SCM_RIGHTS", 1),
    getattr(socket, "SCM_CREDENTIALS", 2),
    getattr(socket, "SO_MARK", 36),
    37,  # SO_TIMESTAMPING_OLD
    61,  # SCM_TXTIME
}
_INT = struct.Struct("i")
# Room for one passed descriptor (where the platform has ancillary data at all).
_ONE_DESCRIPTOR_SPACE = socket.CMSG_SPACE(_INT.size) if hasattr(socket, "CMSG_SPACE") else 0
_SOL_SOCKET = socket.SOL_SOCKET
_SCM_RIGHTS = getattr(socket, "SCM_RIGHTS", 1)


def _per_message_fields(ancdata: Iterable[Any], family: int) -> _PerMessage:
    """What ``sendmsg``'s ancillary data asks of one datagram, checked as Linux checks it.

    Ancillary items must be ``(level, type, data)`` (CPython's ``TypeError``s).
    An IPv6 socket takes ``IPV6_HOPLIMIT`` and ``IPV6_TCLASS`` (an int,
    -1..255, -1 meaning the socket's value) and ``IPV6_DONTFRAG``; an IPv4
    socket ``IP_TTL`` (an int, 1..255) and ``IP_TOS`` (an int or one byte);
    another type at the socket's IP level is ``EINVAL``, as an item of
    another protocol's level is ignored.  (Linux's packet-info and routing
    header messages choose a source or a path, which netshim's stacks do not
    offer: they are ``EINVAL`` here.)
    """
    try:
        items = list(ancdata)
    except TypeError:
        raise TypeError("sendmsg() argument 2 must be an iterable") from None
    checked = []
    for item in items:
        if not isinstance(item, tuple | list) or len(item) != 3:
            length = len(item) if isinstance(item, tuple | list) else 0
            raise TypeError(
                "[sendmsg() ancillary data items]() argument must be sequence of length 3, "
                f"not {length}"
            )
        level, kind, data = item
        if not isinstance(level, int) or not isinstance(kind, int):
            raise TypeError("an integer is required")
        checked.append((level, kind, memoryview(data).tobytes()))
    hop_limit: int | None = None
    traffic_class: int | None = None
    ip_level = _SOL_IPV6 if family == socket.AF_INET6 else _SOL_IP
    for level, kind, data in checked:
        if level == socket.SOL_SOCKET:
            if kind not in _SOCKET_MESSAGES:
                raise os_error(errno.EINVAL)
            continue
        if level != ip_level:
            continue
        if family == socket.AF_INET and kind == socket.IP_TOS and len(data) == 1:
            value = data[0]
        elif len(data) == _INT.size and kind in _IP_LEVEL_MESSAGES[ip_level]:
            value = _INT.unpack(data)[0]
        else:
            raise os_error(errno.EINVAL)
        low = 1 if (ip_level, kind) == (_SOL_IP, socket.IP_TTL) else -1
        high = 1 if kind == _IPV6_DONTFRAG else 255
        if not low <= value <= high:
            raise os_error(errno.EINVAL)
        if kind in (_IPV6_HOPLIMIT, socket.IP_TTL) and value != -1:
            hop_limit = value
        elif kind in (_IPV6_TCLASS, socket.IP_TOS) and value != -1:
            traffic_class = value
    return _PerMessage(hop_limit, traffic_class)


_IP_LEVEL_MESSAGES = {
    _SOL_IP: {socket.IP_TTL, socket.IP_TOS},
    _SOL_IPV6: {_IPV6_HOPLIMIT, _IPV6_TCLASS, _IPV6_DONTFRAG},
}


def _option_value(state: SocketState, level: int, option: int, default: int) -> int:
    value = state.options.get((level, option))
    if value is None:
        return default
    if isinstance(value, bytes):
        return int.from_bytes(value[:4], "little", signed=True)
    return int(value)


def _outgoing_header(state: SocketState, host: str, given: _PerMessage) -> IpHeader:
    """The hop limit and traffic class a datagram to ``host`` leaves with, as Linux picks them."""
    ip = parse_ip(host)
    multicast = ip is not None and ip.is_multicast
    if state.family == socket.AF_INET6:
        hops = (_SOL_IPV6, socket.IPV6_MULTICAST_HOPS if multicast else socket.IPV6_UNICAST_HOPS)
        tclass = (_SOL_IPV6, _IPV6_TCLASS)
    else:
        hops = (_SOL_IP, socket.IP_MULTICAST_TTL if multicast else socket.IP_TTL)
        tclass = (_SOL_IP, socket.IP_TOS)
    hop_limit = given.hop_limit
    if hop_limit is None:
        hop_limit = _option_value(state, *hops, -1)
        if hop_limit == -1:  # the route's default
            hop_limit = 1 if multicast else DEFAULT_HOP_LIMIT
    traffic_class = given.traffic_class
    if traffic_class is None:
        traffic_class = max(0, _option_value(state, *tclass, 0)) & 0xFF
    if hop_limit == DEFAULT_HOP_LIMIT and traffic_class == 0:
        return DEFAULT_HEADER
    return IpHeader(hop_limit, traffic_class)


def _ancillary_for(state: SocketState, header: IpHeader) -> list[tuple[int, int, bytes]]:
    """The control messages a datagram arriving with ``header`` brings, in Linux's order."""
    items = []
    if state.family == socket.AF_INET6:
        if _option_value(state, _SOL_IPV6, _IPV6_RECVHOPLIMIT, 0):
            items.append((_SOL_IPV6, _IPV6_HOPLIMIT, _INT.pack(header.hop_limit)))
        if _option_value(state, _SOL_IPV6, _IPV6_RECVTCLASS, 0):
            items.append((_SOL_IPV6, _IPV6_TCLASS, _INT.pack(header.traffic_class)))
    else:
        if _option_value(state, _SOL_IP, _IP_RECVTTL, 0):
            items.append((_SOL_IP, socket.IP_TTL, _INT.pack(header.hop_limit)))
        if _option_value(state, _SOL_IP, _IP_RECVTOS, 0):
            # Linux hands the TOS byte itself, not an int.
            items.append((_SOL_IP, socket.IP_TOS, bytes([header.traffic_class])))
    return items


def _fit_ancillary(
    items: list[tuple[int, int, bytes]], room: int
) -> tuple[list[tuple[int, int, bytes]], int]:
    """Cut control messages to an ancillary buffer of ``room`` bytes as Linux's ``put_cmsg`` does.

    A message whose header does not fit is dropped; one whose data does not
    fit keeps what fits; each takes ``CMSG_SPACE`` of its data, padding
    included, from the room left.  Anything cut sets ``MSG_CTRUNC``.
    """
    header_size = socket.CMSG_LEN(0)
    fitted = []
    flags = 0
    for level, kind, data in items:
        if room < header_size:
            flags = socket.MSG_CTRUNC
            continue
        length = socket.CMSG_LEN(len(data))
        if room < length:
            flags = socket.MSG_CTRUNC
            length = room
        fitted.append((level, kind, data[: length - header_size]))
        room -= min(socket.CMSG_SPACE(len(data)), room)
    return fitted, flags


def _check_open(sock: Any) -> None:
    if sock.fileno() < 0:
        raise os_error(errno.EBADF)


_MSG_MORE = getattr(socket, "MSG_MORE", 0)
_SHUT_WR = socket.SHUT_WR
# Linux's count of the bytes waiting in a socket (SIOCINQ), where the
# platform has the ioctl (Pyodide has neither module).
try:
    import fcntl
    import termios

    _FIONREAD: int | None = termios.FIONREAD
except ImportError:
    _FIONREAD = None
_NO_BYTES = bytes(4)
_MSG_CMSG_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
_IPPROTO_UDPLITE = getattr(socket, "IPPROTO_UDPLITE", 136)
# What a stack appends to an errno's text when all it adds is the address.
_ADDRESS_DETAIL = re.compile(r" \((\[[0-9a-fA-F:.%\w]+\]|[\w.-]+):\d+\)$")


def _engine_call(state: SocketState, function: Any, *args: Any) -> Any:
    """``state.engine.call`` with errors worded as the socket module words them.

    A stack names the address in its errors (``Address already in use
    (127.0.0.1:80)``), which helps in a log but not in a program that compares
    the text with the standard library's; a detail that says more (a policy
    refusal, a gateway's reason) is kept.
    """
    try:
        return state.engine.call(function, *args)
    except OSError as exc:
        if isinstance(exc, socket.gaierror) or not exc.errno or not exc.strerror:
            raise
        plain = os.strerror(exc.errno)
        if exc.strerror != plain and _ADDRESS_DETAIL.sub("", exc.strerror) == plain:
            raise OSError(exc.errno, plain) from None
        raise


def _known_option(level: int, option: int) -> bool:
    return (level, option) in _KNOWN_OPTIONS


_KNOWN_OPTIONS = (
    {
        (socket.SOL_SOCKET, name)
        for name in (
            getattr(socket, "SO_REUSEADDR", -1),  # Pyodide has no SO_REUSEADDR
            getattr(socket, "SO_REUSEPORT", -1),
            socket.SO_KEEPALIVE,
            socket.SO_BROADCAST,
            socket.SO_LINGER,
            socket.SO_RCVBUF,
            socket.SO_SNDBUF,
            socket.SO_OOBINLINE,
            socket.SO_RCVLOWAT,
            socket.SO_SNDLOWAT,
            socket.SO_RCVTIMEO,
            socket.SO_SNDTIMEO,
            getattr(socket, "SO_PRIORITY", -1),
            getattr(socket, "SO_MARK", -1),
            getattr(socket, "SO_BINDTODEVICE", -1),
        )
    }
    | {
        (socket.IPPROTO_TCP, name)
        for name in (
            socket.TCP_NODELAY,
            getattr(socket, "TCP_KEEPIDLE", -1),
            getattr(socket, "TCP_KEEPINTVL", -1),
            getattr(socket, "TCP_KEEPCNT", -1),
            getattr(socket, "TCP_USER_TIMEOUT", -1),
            getattr(socket, "TCP_QUICKACK", -1),
            getattr(socket, "TCP_CORK", -1),
            getattr(socket, "TCP_MAXSEG", -1),
            getattr(socket, "TCP_NOTSENT_LOWAT", -1),
            getattr(socket, "TCP_FASTOPEN", -1),
            getattr(socket, "TCP_CONGESTION", -1),
        )
    }
    | {
        (socket.IPPROTO_IP, name)
        for name in (
            socket.IP_TTL,
            socket.IP_TOS,
            socket.IP_MULTICAST_TTL,
            socket.IP_MULTICAST_LOOP,
            socket.IP_MULTICAST_IF,
            socket.IP_ADD_MEMBERSHIP,
            socket.IP_DROP_MEMBERSHIP,
            getattr(socket, "IP_RECVERR", -1),
            _IP_RECVTTL,
            _IP_RECVTOS,
            getattr(socket, "IP_PKTINFO", -1),
            getattr(socket, "IP_MTU_DISCOVER", -1),
            # Linux's value; the socket module names it from Python 3.12 on.
            getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24 if sys.platform == "linux" else -1),
        )
    }
    | {
        # UDP-Lite's checksum coverage (UDPLITE_SEND_CSCOV, UDPLITE_RECV_CSCOV).
        (_IPPROTO_UDPLITE, getattr(socket, "UDPLITE_SEND_CSCOV", 10)),
        (_IPPROTO_UDPLITE, getattr(socket, "UDPLITE_RECV_CSCOV", 11)),
    }
    | {
        (socket.IPPROTO_IPV6, name)
        for name in (
            socket.IPV6_V6ONLY,
            socket.IPV6_UNICAST_HOPS,
            socket.IPV6_MULTICAST_HOPS,
            socket.IPV6_MULTICAST_LOOP,
            socket.IPV6_JOIN_GROUP,
            socket.IPV6_LEAVE_GROUP,
            getattr(socket, "IPV6_RECVPKTINFO", -1),
            _IPV6_TCLASS,
            _IPV6_RECVHOPLIMIT,
            _IPV6_RECVTCLASS,
        )
    }
)


# Linux's accepted values for options with a range (-1: the route's or system's
# default) and what it reports for those whose default is not 0.
_OPTION_RANGES = {
    (socket.IPPROTO_IP, socket.IP_TTL): range(-1, 256),
    (socket.IPPROTO_IP, socket.IP_MULTICAST_TTL): range(-1, 256),
    (socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS): range(-1, 256),
    (socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS): range(-1, 256),
    (socket.IPPROTO_IPV6, _IPV6_TCLASS): range(-1, 256),
}
_OPTION_DEFAULTS = {
    (socket.IPPROTO_IP, socket.IP_TTL): DEFAULT_HOP_LIMIT,
    (socket.IPPROTO_IP, socket.IP_MULTICAST_TTL): 1,
    (socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP): 1,
    (socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS): DEFAULT_HOP_LIMIT,
    (socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS): 1,
    (socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP): 1,
    (socket.IPPROTO_IPV6, _IPV6_TCLASS): 0,
}


# -- engine-side helpers ----------------------------------------------------------


async def _listen(stack: Stack, host: str, port: int, backlog: int, v6only: bool) -> Any:
    return await stack.listen_tcp(host, port, backlog=backlog, ipv6_only=v6only)


async def _set_backlog(listener: TcpListener, backlog: int) -> None:
    listener.set_backlog(backlog)


async def _open_udp(stack: Stack, host: str | None, port: int, remote: Any, v6only: bool) -> Any:
    return await stack.open_udp(
        host if host is not None else "0.0.0.0", port, remote=remote, ipv6_only=v6only
    )


async def _connect(
    state: SocketState,
    target: tuple[str, int],
    local: Any,
    timeout: float | None,  # noqa: ASYNC109 - the socket's own timeout, applied inside
) -> None:
    stack = state.stack
    if timeout is None:
        stream = await stack.connect_tcp(target[0], target[1], local_address=local)
    else:
        try:
            with anyio.fail_after(timeout):
                stream = await stack.connect_tcp(target[0], target[1], local_address=local)
        except TimeoutError as exc:
            if getattr(exc, "errno", None):
                raise
            raise TimeoutError("timed out") from None
    establish(state, stream)
    if state.splice_pending:
        # The peer waits in a listener a shim socket serves, whose task wakes
        # in the loop's next round: let it announce the connection before
        # connect() returns, as a kernel's listener is readable by then.
        await anyio.lowlevel.checkpoint()


async def _finish_connect(state: SocketState, target: tuple[str, int], local: Any) -> None:
    try:
        stream = await state.stack.connect_tcp(target[0], target[1], local_address=local)
    except OSError as exc:
        state.error = exc.errno or errno.EIO
        state.phase = Phase.FAILED
    else:
        # Record the outcome before the socket turns writable: the program
        # reads SO_ERROR and getpeername() as soon as it does.  Nothing
        # below waits, so a splice cannot take the engine end before the
        # filler is drained from it.
        establish(state, stream)
    engine_end = state.engine_end
    assert engine_end is not None
    drain_filler(engine_end, state.filler)
    state.filler = 0
    user = state.user_socket()
    if user is not None and user.fileno() >= 0:
        with contextlib.suppress(OSError):
            ORIGINAL_SOCKET.setsockopt(
                user, socket.SOL_SOCKET, socket.SO_SNDBUF, state.original_sndbuf // 2
            )


async def _stop_udp(state: SocketState) -> None:
    if state.pump_scope is not None:
        state.pump_scope.cancel()
    if state.udp is not None:
        await state.udp.aclose()
    # The pump closed the engine's end; give the socket a fresh pair side.


def _closing(state: SocketState, user: socket.socket) -> None:
    """The program closes ``user``, the socket of ``state``: what the connection does then.

    A joined socket whose peer may still send keeps its end open through a
    duplicate descriptor (see :func:`_hold_joined_end`); ``user``'s own
    descriptor is closed as usual.
    """
    partner = state.splice_partner
    engine = state.engine
    if state.shared_by_fork:
        # Another process may still hold this socket (a forking server's
        # child): as with the kernel's own sockets, only the last close ends
        # the connection, which the pair's EOF tells by itself.
        pass
    elif partner is not None and state.abort_on_close:
        # Joined sockets: a byte left unread in our end makes the kernel
        # report a reset to the other program when we close, as RST would.
        partner.peer_reset = True
        peer = partner.user_socket()
        if peer is not None and peer.fileno() >= 0:
            with contextlib.suppress(OSError):
                ORIGINAL_SOCKET.send(peer, b"\0", socket.MSG_DONTWAIT)
    elif (
        (partner is not None or state.splice_pending)
        and not state.abort_on_close
        # Not when the peer closed already: its FIN came, it sends no more.
        and (partner is None or not partner.closed_by_user or partner.shared_by_fork)
    ):
        # Pending too: the listener may still join this end to its peer.
        _hold_joined_end(state, user)
    if (
        partner is not None
        and partner.closed_by_user
        and not state.shared_by_fork
        and not partner.engine.left_behind
    ):
        # The end the peer held open when it closed waited for this close.
        # (A peer closing at this very moment, in another thread, is not
        # closed_by_user yet: the engine's watch releases its end, which
        # this close makes readable.)
        partner.engine.release_held(partner)
    if partner is not None and partner.closed_by_user:
        # Both closed: the two states refer to each other, a cycle that only
        # the garbage collector would free (its collections were a twentieth
        # of a connect + accept + close); nothing asks for the partner now.
        state.splice_partner = None
        partner.splice_partner = None
    state.closed_by_user = True
    state.phase = Phase.CLOSED
    state.unregister()
    stream = state.stream
    if (
        partner is not None
        and state.engine_end is None
        and stream is not None
        and stream.close_joined()
    ):
        return  # the engine never took part in a joined connection
    engine.spawn(_close_engine_side, state)


def _hold_joined_end(state: SocketState, user: socket.socket) -> None:
    """Keep a joined socket's end open past ``close()``, as TCP keeps the connection.

    On TCP the peer of a closed socket gets a FIN, and its first ``send``
    afterwards still succeeds (the reply is a reset); only later calls fail.
    Closing one end of an AF_UNIX pair would fail that first ``send`` with
    EPIPE at once.  So the end is half-closed (the FIN) and a duplicate of
    its descriptor kept, and closed when the peer next sends or closes (see
    :meth:`~netshim.shim._engine.Engine.hold`): unread data then makes the
    kernel report ECONNRESET to the peer, as the reset would.  With data the
    program left unread nothing is held, so the close resets the peer at
    once, as on TCP.
    """
    if _has_unread_data(user):
        return  # closing resets the peer at once, as on TCP
    # Not contextlib.suppress, which costs more than the call.
    try:  # noqa: SIM105
        _socket.socket.shutdown(user, _SHUT_WR)
    except OSError:  # (the peer's end is gone already)
        pass
    # A duplicate, not the socket's own descriptor: close() must free the
    # number the program knew at once, as on Linux (a later os.read() on it
    # fails with EBADF, and the number can be given out again).
    try:
        held = os.dup(user.fileno())
    except OSError:  # another thread closed the socket meanwhile
        return
    state.engine.hold(state, held)


def _has_unread_data(sock: socket.socket) -> bool:
    """Whether bytes wait unread in ``sock`` (or, where the ioctl is missing, its peer's FIN)."""
    if _FIONREAD is not None:
        # One system call, and no exception to raise as a peek's EAGAIN does;
        # into a buffer of our own, which ioctl() fills in place (cheaper
        # than the copy it returns for an immutable one).
        count = bytearray(4)
        try:
            fcntl.ioctl(sock.fileno(), _FIONREAD, count, True)
        except OSError:
            return False
        return count != _NO_BYTES
    try:
        if _socket.socket.gettimeout(sock) is not None:
            # With a timeout, recv() would wait for data before its peek.
            _socket.socket.setblocking(sock, False)
        _socket.socket.recv(sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:  # EAGAIN: nothing there
        return False
    return True  # data, or the peer's FIN: it sends nothing more, nothing to hold


async def _close_engine_side(state: SocketState) -> None:
    if state.splice_pending:
        unsplice(state)  # its pump sends what was written, then closes
        return
    if state.pump_scope is not None:
        if state.is_tcp:
            await close_tcp(state)
        else:
            state.pump_scope.cancel()
        return
    if state.listener is not None:
        await state.listener.aclose()
        if state.serving:
            return  # serve_listener ends, and closes the engine end
    if state.stream is not None:
        if state.abort_on_close:
            await state.stream.abort()
        else:
            await state.stream.aclose()
    if state.udp is not None:
        await state.udp.aclose()
    if state.engine_end is not None:
        state.engine_end.close()
