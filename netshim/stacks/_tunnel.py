"""What every tunnel stack shares: names resolved at the far end, no listening, byte buffers.

A tunnel (Wisp, websockify, SOCKS5) carries connections to a server that
connects on our behalf, so it cannot listen, its local addresses are not
ours to know, and names are best resolved by the server.  For code that
calls ``getaddrinfo`` before connecting, :meth:`TunnelStack.getaddrinfo`
hands out the socket shim's synthetic addresses (see
:mod:`netshim.shim._names`) and every connect maps them back to the name,
so the name travels through the tunnel either way.
"""

from __future__ import annotations

import errno
import socket
from collections import deque

import anyio

from .._addresses import (
    IPAddress,
    check_host,
    check_port,
    parse_ip,
    parse_service,
    service_socket_types,
)
from .._addrinfo import AddrInfo, resolve_addrinfo
from .._errors import os_error
from ..stack import DEFAULT_BACKLOG, Stack, TcpListener

__all__ = ["ByteBuffer", "TunnelStack", "UNKNOWN_LOCAL"]

#: The local address a tunnelled stream reports: the real one is the
#: server's, on another machine.
UNKNOWN_LOCAL = ("0.0.0.0", 0)


class TunnelStack(Stack):
    """Base of the stacks that reach the network through a server."""

    resolves_remotely = True

    #: How the stack names itself in messages ("Wisp", "SOCKS5" ...).
    kind = "tunnel"

    async def listen_tcp(
        self,
        host: str | None = None,
        port: int = 0,
        *,
        backlog: int = DEFAULT_BACKLOG,
        ipv6_only: bool = False,
    ) -> TcpListener:
        """Always ``OSError(EOPNOTSUPP)``: a tunnel only connects outwards."""
        raise os_error(errno.EOPNOTSUPP, f"{self.kind} tunnels cannot listen, only connect")

    async def getaddrinfo(
        self,
        host: str | bytes | None,
        port: str | bytes | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[AddrInfo]:
        """Numeric hosts as they are; names as synthetic addresses that stand for the name."""
        name = None if host is None else check_host(host, "getaddrinfo")
        number = parse_service(port, type, flags)

        async def lookup(name: str, family: int) -> tuple[list[IPAddress], str]:
            if flags & socket.AI_NUMERICHOST:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            from ..shim._names import synthetic

            return list(synthetic.addresses_for(name)), name

        return await resolve_addrinfo(
            lookup, name, number, family, type, proto, flags, service_socket_types(port)
        )

    @staticmethod
    def destination(host: object, port: object, function: str) -> tuple[str, int]:
        """``host`` and ``port`` checked, with a synthetic address turned back into its name."""
        port = check_port(port, function)
        name = check_host(host, function)
        if not name:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if parse_ip(name) is not None:
            from ..shim._names import synthetic_name

            original = synthetic_name(name)
            if original is not None:
                return original, port
        return name, port


class ByteBuffer:
    """Received bytes waiting to be read, with the end of the stream behind them.

    ``error`` is raised once the bytes before it were read, as a socket
    reports a reset after the data that arrived first.
    """

    __slots__ = ("chunks", "eof", "error", "size")

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.eof = False
        self.error: OSError | None = None

    def push(self, data: bytes) -> None:
        if data and not self.eof and self.error is None:
            self.chunks.append(data)
            self.size += len(data)

    @property
    def finished(self) -> bool:
        return self.eof or self.error is not None

    @property
    def ready(self) -> bool:
        """Whether :meth:`take` answers without waiting."""
        return bool(self.chunks) or self.finished

    def take(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes``; raises EndOfStream or the error once empty."""
        if self.chunks:
            first = self.chunks[0]
            if len(first) <= max_bytes:
                self.chunks.popleft()
                self.size -= len(first)
                return first
            self.chunks[0] = first[max_bytes:]
            self.size -= max_bytes
            return first[:max_bytes]
        if self.error is not None:
            raise self.error
        if self.eof:
            raise anyio.EndOfStream
        raise AssertionError("take() on an empty buffer")
