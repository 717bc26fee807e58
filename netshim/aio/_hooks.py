"""The event loop's network methods, answered by a stack with no file descriptor.

:func:`install_loop_hooks` replaces, on asyncio's ``BaseEventLoop`` (every
loop of the standard library) and on Pyodide's ``WebLoop``, the methods
unmodified code reaches the network through:

* ``create_connection`` (so ``asyncio.open_connection``, anyio's
  ``connect_tcp``, aiohttp, httpx, redis-py ...), with ``ssl=`` through
  asyncio's own SSL protocol on top of the transport;
* ``create_server`` (so ``asyncio.start_server``), giving a
  :class:`~netshim.aio.StackServer`;
* ``create_datagram_endpoint`` (anyio's UDP sockets too);
* ``getaddrinfo`` and ``getnameinfo``;
* ``sock_connect`` and ``create_connection(sock=)`` for the descriptor-less
  sockets netshim puts in place of ``socket.socket`` in Pyodide
  (:class:`~netshim.aio.StackSocket`): aiohttp connects that way, through
  aiohappyeyeballs.

Calls that name a real socket (``sock=``) and calls made by a stack's own
tasks (a tunnel reaching its gateway) go to the original methods, so a
tunnel never runs through itself.  :func:`uninstall_loop_hooks` puts the
originals back.

The stack is the one given to :func:`install_loop_hooks`, or inside
:func:`netshim.acting_as` the one chosen there.
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from .._addresses import IPAddress, check_host, parse_ip, parse_service, service_socket_types
from .._addrinfo import AddrInfo, resolve_addrinfo
from ..stack import Stack, TcpStream
from ._server import StackServer
from ._transports import StackDatagramTransport, StackStreamTransport, inside_stack

__all__ = ["install_loop_hooks", "loop_hooks_installed", "uninstall_loop_hooks", "wrap_ssl"]

_lock = threading.Lock()
_stack: Stack | None = None
_saved: dict[tuple[type, str], Any] = {}

_HOOKED = (
    "sock_connect",
    "create_connection",
    "create_server",
    "create_datagram_endpoint",
    "getaddrinfo",
    "getnameinfo",
)

# Methods the standard library's selector loop defines again below
# BaseEventLoop: the hook goes there instead.
_OWN_METHOD_ON_SUBCLASSES = frozenset({"sock_connect"})


def _loop_classes() -> list[type]:
    classes: list[type] = [asyncio.BaseEventLoop]
    if "pyodide" in sys.modules or sys.platform == "emscripten":
        try:
            from pyodide.webloop import WebLoop  # type: ignore[import-not-found]
        except ImportError:
            pass
        else:
            classes.append(WebLoop)
    return classes


def install_loop_hooks(stack: Stack) -> Stack:
    """Route the event loops' connections, servers, datagrams and lookups through ``stack``.

    Installing again only switches the stack.  Returns the stack.
    """
    global _stack
    if not isinstance(stack, Stack):
        raise TypeError(f"install_loop_hooks() needs a netshim Stack, not {type(stack).__name__}")
    with _lock:
        _stack = stack
        for cls in _loop_classes():
            for name in _HOOKED:
                owner = cls
                if name in _OWN_METHOD_ON_SUBCLASSES and cls is asyncio.BaseEventLoop:
                    # asyncio's concrete loops override it below BaseEventLoop.
                    owner = asyncio.selector_events.BaseSelectorEventLoop
                if (owner, name) in _saved:
                    continue
                original = owner.__dict__.get(name)
                _saved[(owner, name)] = original
                # A loop class without its own method inherits one; the hook
                # falls back to whatever the class resolved before.
                fallback = original if original is not None else getattr(owner, name)
                setattr(owner, name, _HOOKS[name](fallback))
    return stack


def uninstall_loop_hooks() -> None:
    """Put every original loop method back; idempotent."""
    global _stack
    with _lock:
        for (cls, name), original in reversed(list(_saved.items())):
            if original is None:
                delattr(cls, name)
            else:
                setattr(cls, name, original)
        _saved.clear()
        _stack = None


def loop_hooks_installed() -> bool:
    return _stack is not None


def _acting_stack() -> Stack | None:
    """The stack for this call, or ``None`` when the original method should answer."""
    if inside_stack.get() or _stack is None:
        return None
    from ..shim._patch import _acting

    stack = _acting.get() or _stack
    if stack.uses_host_sockets:
        return None
    return stack


def _synthetic_name(host: str) -> str | None:
    from ..shim._names import synthetic_name

    return synthetic_name(host)


async def _getaddrinfo(
    stack: Stack, host: Any, port: Any, family: int, type: int, proto: int, flags: int
) -> list[AddrInfo]:
    if stack.resolves_remotely and host is not None:
        name = check_host(host, "getaddrinfo")
        if (
            name
            and parse_ip(name) is None
            and name != "localhost"
            and not flags & socket.AI_NUMERICHOST
        ):
            from ..shim._names import synthetic

            pair = synthetic.addresses_for(name)

            async def lookup(name: str, family: int) -> tuple[list[IPAddress], str]:
                return [pair[0], pair[1]], name

            return await resolve_addrinfo(
                lookup,
                name,
                parse_service(port, type),
                family,
                type,
                proto,
                flags,
                service_socket_types(port),
            )
    token = inside_stack.set(True)
    try:
        return await stack.getaddrinfo(host, port, family, type, proto, flags)
    finally:
        inside_stack.reset(token)


def _destination(host: str) -> str:
    """A host as the stack should see it: a synthetic address turned back into its name."""
    return _synthetic_name(host) or host


async def _connect(
    stack: Stack, host: str, port: int, family: int, local_addr: tuple[str, int] | None
) -> TcpStream:
    token = inside_stack.set(True)
    try:
        if (
            family in (socket.AF_INET, socket.AF_INET6)
            and parse_ip(host) is None
            and not stack.resolves_remotely
        ):
            # Only this family's addresses: resolve here and try each in turn.
            infos = await stack.getaddrinfo(host, port, family, socket.SOCK_STREAM)
            errors: list[OSError] = []
            for info in infos:
                try:
                    return await stack.connect_tcp(str(info[4][0]), port, local_address=local_addr)
                except OSError as exc:
                    errors.append(exc)
            raise errors[0]
        return await stack.connect_tcp(_destination(host), port, local_address=local_addr)
    finally:
        inside_stack.reset(token)


def wrap_ssl(
    loop: asyncio.AbstractEventLoop,
    app_protocol: asyncio.BaseProtocol,
    context: Any,
    waiter: asyncio.Future[None],
    *,
    server_side: bool,
    server_hostname: str | None,
    handshake_timeout: float | None,
    shutdown_timeout: float | None,
) -> asyncio.BaseProtocol:
    """asyncio's SSL protocol around ``app_protocol``: TLS over a transport with no socket."""
    from asyncio import sslproto

    try:
        import ssl  # noqa: F401 - asyncio's SSL protocol needs it
    except ImportError:
        raise RuntimeError(
            "ssl= needs the ssl module, and this Python has none (Pyodide ships it as "
            "a separate package)"
        ) from None
    protocol: asyncio.BaseProtocol = sslproto.SSLProtocol(
        loop,
        app_protocol,
        context,
        waiter,
        server_side,
        server_hostname,
        ssl_handshake_timeout=handshake_timeout,  # type: ignore[arg-type]
        ssl_shutdown_timeout=shutdown_timeout,
    )
    return protocol


def _ssl_context(ssl: Any, server_side: bool) -> Any:
    if isinstance(ssl, bool):
        import ssl as ssl_module

        if server_side:
            raise ValueError("create_server() needs an SSLContext for ssl=, not True")
        return ssl_module.create_default_context()
    return ssl


# -- the hooks --------------------------------------------------------------


def _hook_create_connection(original: Callable[..., Any]) -> Callable[..., Any]:
    async def create_connection(
        self: asyncio.AbstractEventLoop,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | None = None,
        port: int | None = None,
        *,
        ssl: Any = None,
        family: int = 0,
        proto: int = 0,
        flags: int = 0,
        sock: Any = None,
        local_addr: tuple[str, int] | None = None,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        **kwargs: Any,
    ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        from ._sync import StackSocket

        if isinstance(sock, StackSocket):
            if host is not None or port is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            if ssl and server_hostname is None:
                raise ValueError("You must set server_hostname when using ssl without a host")
            return await _wrap_stream(
                self,
                sock.take_stream(),
                protocol_factory(),
                ssl,
                server_hostname,
                ssl_handshake_timeout,
                ssl_shutdown_timeout,
            )
        stack = _acting_stack()
        if stack is None or sock is not None:
            return await original(  # type: ignore[no-any-return]
                self,
                protocol_factory,
                host,
                port,
                ssl=ssl,
                family=family,
                proto=proto,
                flags=flags,
                sock=sock,
                local_addr=local_addr,
                server_hostname=server_hostname,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
                **kwargs,
            )
        if server_hostname is not None and not ssl:
            raise ValueError("server_hostname is only meaningful with ssl")
        if (ssl_handshake_timeout is not None or ssl_shutdown_timeout is not None) and not ssl:
            raise ValueError("ssl timeouts are only meaningful with ssl")
        if host is None or port is None:
            raise ValueError("host and port was not specified and no sock specified")
        if ssl and server_hostname is None:
            server_hostname = _synthetic_name(host) or host
        number = parse_service(port, socket.SOCK_STREAM)
        stream = await _connect(stack, check_host(host, "connect"), number, family, local_addr)
        return await _wrap_stream(
            self,
            stream,
            protocol_factory(),
            ssl,
            server_hostname,
            ssl_handshake_timeout,
            ssl_shutdown_timeout,
        )

    return create_connection


async def _wrap_stream(
    loop: asyncio.AbstractEventLoop,
    stream: TcpStream,
    protocol: asyncio.BaseProtocol,
    ssl: Any,
    server_hostname: str | None,
    handshake_timeout: float | None,
    shutdown_timeout: float | None,
) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
    waiter: asyncio.Future[None] = loop.create_future()
    try:
        if ssl:
            tls = wrap_ssl(
                loop,
                protocol,
                _ssl_context(ssl, False),
                waiter,
                server_side=False,
                server_hostname=server_hostname,
                handshake_timeout=handshake_timeout,
                shutdown_timeout=shutdown_timeout,
            )
            transport = StackStreamTransport(loop, stream, tls)
        else:
            transport = StackStreamTransport(loop, stream, protocol, waiter=waiter)
    except BaseException:
        await stream.abort()
        raise
    try:
        await waiter
    except BaseException:
        transport.close()
        raise
    if ssl:
        # The SSL protocol made its application-side transport when the
        # handshake finished; asyncio's own create_connection returns it too.
        return tls._app_transport, protocol  # type: ignore[attr-defined]
    return transport, protocol


def _hook_sock_connect(original: Callable[..., Any]) -> Callable[..., Any]:
    async def sock_connect(self: asyncio.AbstractEventLoop, sock: Any, address: Any) -> None:
        from ._sync import StackSocket

        if isinstance(sock, StackSocket):
            await sock.connect_async(address)
            return
        await original(self, sock, address)

    return sock_connect


def _hook_create_server(original: Callable[..., Any]) -> Callable[..., Any]:
    async def create_server(
        self: asyncio.AbstractEventLoop,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | Iterable[str] | None = None,
        port: int | None = None,
        *,
        family: int = socket.AF_UNSPEC,
        flags: int = socket.AI_PASSIVE,
        sock: Any = None,
        backlog: int = 100,
        ssl: Any = None,
        reuse_address: bool | None = None,
        reuse_port: bool | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        start_serving: bool = True,
        **kwargs: Any,
    ) -> asyncio.AbstractServer:
        stack = _acting_stack()
        if stack is None or sock is not None:
            return await original(  # type: ignore[no-any-return]
                self,
                protocol_factory,
                host,
                port,
                family=family,
                flags=flags,
                sock=sock,
                backlog=backlog,
                ssl=ssl,
                reuse_address=reuse_address,
                reuse_port=reuse_port,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
                start_serving=start_serving,
                **kwargs,
            )
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        if (ssl_handshake_timeout is not None or ssl_shutdown_timeout is not None) and not ssl:
            raise ValueError("ssl timeouts are only meaningful with ssl")
        number = parse_service(port or 0, socket.SOCK_STREAM)
        hosts: list[str | None]
        if host is None or host == "":
            # One dual-stack listener, or one of the family asked for.
            hosts = [
                "0.0.0.0"
                if family == socket.AF_INET
                else "::"
                if family == socket.AF_INET6
                else None
            ]
        elif isinstance(host, str):
            hosts = [host]
        else:
            hosts = list(host)
        listeners = []
        token = inside_stack.set(True)
        try:
            for name in hosts:
                address = name
                if name is not None and parse_ip(name) is None:
                    infos = await stack.getaddrinfo(
                        name, number, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
                    )
                    address = str(infos[0][4][0])
                owner = stack.stack_for_local_address(address) if address else stack
                listeners.append(
                    await owner.listen_tcp(
                        address,
                        number,
                        backlog=backlog,
                        ipv6_only=family == socket.AF_INET6 and address == "::",
                    )
                )
        except BaseException:
            for listener in listeners:
                await listener.aclose()
            raise
        finally:
            inside_stack.reset(token)
        server = StackServer(
            self,
            listeners,
            protocol_factory,
            ssl_context=ssl,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        if start_serving:
            await server.start_serving()
        return server

    return create_server


def _hook_create_datagram_endpoint(original: Callable[..., Any]) -> Callable[..., Any]:
    async def create_datagram_endpoint(
        self: asyncio.AbstractEventLoop,
        protocol_factory: Callable[[], asyncio.DatagramProtocol],
        local_addr: Any = None,
        remote_addr: Any = None,
        *,
        family: int = 0,
        proto: int = 0,
        flags: int = 0,
        reuse_port: bool | None = None,
        allow_broadcast: bool | None = None,
        sock: Any = None,
        **kwargs: Any,
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        stack = _acting_stack()
        unix = family == getattr(socket, "AF_UNIX", -1) or isinstance(local_addr, str | bytes)
        if stack is None or sock is not None or unix:
            return await original(  # type: ignore[no-any-return]
                self,
                protocol_factory,
                local_addr,
                remote_addr,
                family=family,
                proto=proto,
                flags=flags,
                reuse_port=reuse_port,
                allow_broadcast=allow_broadcast,
                sock=sock,
                **kwargs,
            )
        token = inside_stack.set(True)
        try:
            remote: tuple[str, int] | None = None
            if remote_addr is not None:
                host = _destination(check_host(remote_addr[0], "connect"))
                port = parse_service(remote_addr[1], socket.SOCK_DGRAM)
                if parse_ip(host) is None and not stack.resolves_remotely:
                    infos = await stack.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
                    host = str(infos[0][4][0])
                    family = family or infos[0][0]
                elif parse_ip(host) is not None:
                    family = family or (socket.AF_INET6 if ":" in host else socket.AF_INET)
                remote = (host, port)
            wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
            local_host, local_port = wildcard, 0
            if local_addr is not None:
                local_host = check_host(local_addr[0], "bind") or wildcard
                local_port = parse_service(local_addr[1], socket.SOCK_DGRAM)
                if parse_ip(local_host) is None:
                    infos = await stack.getaddrinfo(
                        local_host, local_port, family, socket.SOCK_DGRAM, 0, socket.AI_PASSIVE
                    )
                    local_host = str(infos[0][4][0])
            owner = stack.stack_for_local_address(local_host)
            udp = await owner.open_udp(local_host, local_port, remote=remote)
        finally:
            inside_stack.reset(token)
        if allow_broadcast:
            udp.broadcast = True
        protocol = protocol_factory()
        waiter: asyncio.Future[None] = self.create_future()
        transport = StackDatagramTransport(self, udp, protocol, waiter=waiter)
        try:
            await waiter
        except BaseException:
            transport.abort()
            raise
        return transport, protocol

    return create_datagram_endpoint


def _hook_getaddrinfo(original: Callable[..., Any]) -> Callable[..., Any]:
    async def getaddrinfo(
        self: asyncio.AbstractEventLoop,
        host: Any,
        port: Any,
        *,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[AddrInfo]:
        stack = _acting_stack()
        if stack is None:
            return await original(  # type: ignore[no-any-return]
                self, host, port, family=family, type=type, proto=proto, flags=flags
            )
        return await _getaddrinfo(stack, host, port, family, type, proto, flags)

    return getaddrinfo


def _hook_getnameinfo(original: Callable[..., Any]) -> Callable[..., Any]:
    async def getnameinfo(
        self: asyncio.AbstractEventLoop, sockaddr: tuple[Any, ...], flags: int = 0
    ) -> tuple[str, str]:
        stack = _acting_stack()
        if stack is None:
            return await original(self, sockaddr, flags)  # type: ignore[no-any-return]
        host, port = str(sockaddr[0]), int(sockaddr[1])
        name = host
        if not flags & socket.NI_NUMERICHOST:
            synthetic = _synthetic_name(host)
            if synthetic is not None:
                name = synthetic
            else:
                token = inside_stack.set(True)
                try:
                    name = await stack.reverse_lookup(host)
                except OSError:
                    if flags & socket.NI_NAMEREQD:
                        raise socket.gaierror(
                            socket.EAI_NONAME, "Name or service not known"
                        ) from None
                finally:
                    inside_stack.reset(token)
            if flags & socket.NI_NOFQDN:
                name = name.split(".", 1)[0]
        service = str(port)
        if not flags & socket.NI_NUMERICSERV:
            try:
                service = socket.getservbyport(port, "udp" if flags & socket.NI_DGRAM else "tcp")
            except OSError:
                service = str(port)
        return name, service

    return getnameinfo


_HOOKS: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]] = {
    "sock_connect": _hook_sock_connect,
    "create_connection": _hook_create_connection,
    "create_server": _hook_create_server,
    "create_datagram_endpoint": _hook_create_datagram_endpoint,
    "getaddrinfo": _hook_getaddrinfo,
    "getnameinfo": _hook_getnameinfo,
}
