"""A conformance kit for the Stack contract, in the spirit of trio's ``check_two_way_stream``.

Every stack netshim ships (and any a user writes) should pass the same suite:
``await check_stack(make_pair)`` runs every check in :data:`CHECKS`, each on a
fresh :class:`StackPair` from ``make_pair``.  A pair is a stack to listen on,
a stack to connect from, and the address the second uses to reach the first
(for the host network all three are the same machine on ``127.0.0.1``; for a
virtual network, two hosts).  Each check raises ``AssertionError`` naming what
the stack got wrong.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from anyio.abc import SocketAttribute

from .stack import Stack, TcpListener, TcpStream

__all__ = ["CHECKS", "REQUIRE_PEERS_VARIABLE", "StackPair", "check_stack", "require_peer"]

#: Set to ``1`` where every peer program is installed (CI): a missing peer then
#: fails the test that needs it instead of skipping it.
REQUIRE_PEERS_VARIABLE = "NETSHIM_REQUIRE_PEERS"


def require_peer(program: str) -> str:
    """Path of the peer ``program`` (tshark, dig, …) for a pytest test.

    Skips the test when the program is missing, unless
    ``NETSHIM_REQUIRE_PEERS=1``: then a missing peer is a broken install and
    the test fails.
    """
    import pytest

    path = shutil.which(program)
    if path is None:
        message = f"peer program {program!r} is not installed"
        if os.environ.get(REQUIRE_PEERS_VARIABLE) == "1":
            pytest.fail(f"{message} ({REQUIRE_PEERS_VARIABLE}=1)")
        pytest.skip(message)
    return path


@dataclass
class StackPair:
    """Two views of one network: where servers listen and where clients connect from."""

    server: Stack
    client: Stack
    server_ip: str
    client_ip: str


MakePair = Callable[[], Awaitable[StackPair]]


@asynccontextmanager
async def _connected(pair: StackPair) -> AsyncIterator[tuple[TcpStream, TcpStream, TcpListener]]:
    listener = await pair.server.listen_tcp(pair.server_ip, 0)
    async with listener:
        client = await pair.client.connect_tcp(pair.server_ip, listener.local_address[1])
        server = await listener.accept()
        async with client, server:
            yield client, server, listener


async def check_tcp_addresses(pair: StackPair) -> None:
    async with _connected(pair) as (client, server, listener):
        port = listener.local_address[1]
        assert port != 0, "listening on port 0 must report the ephemeral port chosen"
        assert client.remote_address == (pair.server_ip, port), client.remote_address
        assert server.local_address == (pair.server_ip, port), server.local_address
        assert server.remote_address == client.local_address, (
            server.remote_address,
            client.local_address,
        )
        assert client.local_address[0] == pair.client_ip, client.local_address
        assert client.extra(SocketAttribute.remote_port) == port
        assert client.extra(SocketAttribute.local_address) == client.local_address
        family = socket.AF_INET6 if ":" in pair.server_ip else socket.AF_INET
        assert client.extra(SocketAttribute.family) == family


async def check_tcp_echo_both_ways(pair: StackPair) -> None:
    async with _connected(pair) as (client, server, _):
        await client.send(b"ping")
        assert await _receive_exactly(server, 4) == b"ping"
        await server.send(b"pong!")
        assert await _receive_exactly(client, 5) == b"pong!"


async def check_tcp_bulk_integrity(pair: StackPair) -> None:
    payload = os.urandom(1 << 20)
    async with _connected(pair) as (client, server, _):

        async def send_all() -> None:
            for offset in range(0, len(payload), 50_000):
                await client.send(payload[offset : offset + 50_000])
            await client.send_eof()

        async with anyio.create_task_group() as group:
            group.start_soon(send_all)
            received = await _receive_to_eof(server)
        assert received == payload, f"received {len(received)} bytes, sent {len(payload)}"


async def check_tcp_half_close(pair: StackPair) -> None:
    async with _connected(pair) as (client, server, _):
        await client.send(b"request")
        await client.send_eof()
        assert await _receive_to_eof(server) == b"request"
        await server.send(b"still open the other way")
        await server.send_eof()
        assert await _receive_to_eof(client) == b"still open the other way"
        try:
            await client.send(b"after eof")
        except BrokenPipeError:
            pass
        else:
            raise AssertionError("send() after send_eof() must raise BrokenPipeError")


async def check_tcp_abort_resets_peer(pair: StackPair) -> None:
    async with _connected(pair) as (client, server, _):
        await server.abort()
        try:
            with anyio.fail_after(5):
                await client.receive()
        except ConnectionResetError:
            pass
        else:
            raise AssertionError("the peer of an aborted stream must see ConnectionResetError")


async def check_tcp_closed_resource(pair: StackPair) -> None:
    async with _connected(pair) as (client, _, _):
        await client.aclose()
        await client.aclose()  # idempotent
        for operation in (client.receive, lambda: client.send(b"x")):
            try:
                await operation()
            except anyio.ClosedResourceError:
                pass
            else:
                raise AssertionError("using a stream after aclose() must raise ClosedResourceError")


async def check_tcp_refused(pair: StackPair) -> None:
    listener = await pair.server.listen_tcp(pair.server_ip, 0)
    port = listener.local_address[1]
    await listener.aclose()
    try:
        await pair.client.connect_tcp(pair.server_ip, port)
    except ConnectionRefusedError as exc:
        assert exc.errno == errno.ECONNREFUSED
    else:
        raise AssertionError("connecting to a closed port must raise ConnectionRefusedError")


async def check_tcp_address_in_use(pair: StackPair) -> None:
    listener = await pair.server.listen_tcp(pair.server_ip, 0)
    async with listener:
        try:
            await pair.server.listen_tcp(pair.server_ip, listener.local_address[1])
        except OSError as exc:
            assert exc.errno == errno.EADDRINUSE, exc
        else:
            raise AssertionError("a second listener on the same port must raise EADDRINUSE")


async def check_listener_close_ends_iteration(pair: StackPair) -> None:
    listener = await pair.server.listen_tcp(pair.server_ip, 0)
    accepted: list[TcpStream] = []

    async def serve() -> None:
        async for stream in listener:
            accepted.append(stream)

    async with anyio.create_task_group() as group:
        group.start_soon(serve)
        stream = await pair.client.connect_tcp(pair.server_ip, listener.local_address[1])
        await anyio.sleep(0.05)
        await listener.aclose()
    await stream.aclose()
    for item in accepted:
        await item.aclose()
    assert len(accepted) == 1, accepted


async def check_bad_ports(pair: StackPair) -> None:
    for bad, kind in ((70000, OverflowError), (-1, OverflowError), ("80", TypeError)):
        try:
            await pair.client.connect_tcp(pair.server_ip, bad)  # type: ignore[arg-type]
        except kind as exc:
            assert str(bad) in str(exc), f"message should name {bad!r}: {exc}"
        else:
            raise AssertionError(f"port {bad!r} must raise {kind.__name__}")


async def check_udp_round_trip(pair: StackPair) -> None:
    server = await pair.server.open_udp(pair.server_ip, 0)
    async with server:
        client = await pair.client.open_udp(pair.client_ip, 0)
        async with client:
            await client.send(b"hello", server.local_address)
            with anyio.fail_after(5):
                data, source = await server.receive()
            assert data == b"hello"
            assert source == client.local_address, (source, client.local_address)
            await server.send(b"world", source)
            with anyio.fail_after(5):
                assert await client.receive() == (b"world", server.local_address)


async def check_udp_connected_refused(pair: StackPair) -> None:
    probe = await pair.server.open_udp(pair.server_ip, 0)
    port = probe.local_address[1]
    await probe.aclose()
    client = await pair.client.open_udp(pair.client_ip, 0, remote=(pair.server_ip, port))
    async with client:
        assert client.remote_address == (pair.server_ip, port)
        await client.send(b"anyone?")
        try:
            with anyio.fail_after(5):
                await client.receive()
        except ConnectionRefusedError:
            pass
        else:
            raise AssertionError("a connected UDP socket must report ECONNREFUSED")


async def check_udp_size_limit(pair: StackPair) -> None:
    client = await pair.client.open_udp(pair.client_ip, 0)
    async with client:
        limit = 65527 if ":" in pair.client_ip else 65507
        try:
            await client.send(b"x" * (limit + 1), (pair.server_ip, 9))
        except OSError as exc:
            assert exc.errno == errno.EMSGSIZE, exc
        else:
            raise AssertionError("an oversized datagram must raise EMSGSIZE")


async def check_getaddrinfo_numeric(pair: StackPair) -> None:
    infos = await pair.client.getaddrinfo(pair.server_ip, 80, type=socket.SOCK_STREAM)
    expected = socket.getaddrinfo(pair.server_ip, 80, type=socket.SOCK_STREAM)
    assert infos == expected, (infos, expected)
    try:
        await pair.client.getaddrinfo(pair.server_ip, "no-such-service")
    except socket.gaierror as exc:
        assert exc.errno == socket.EAI_SERVICE
    else:
        raise AssertionError("an unknown service name must raise gaierror(EAI_SERVICE)")


CHECKS: dict[str, Callable[[StackPair], Awaitable[None]]] = {
    "tcp_addresses": check_tcp_addresses,
    "tcp_echo_both_ways": check_tcp_echo_both_ways,
    "tcp_bulk_integrity": check_tcp_bulk_integrity,
    "tcp_half_close": check_tcp_half_close,
    "tcp_abort_resets_peer": check_tcp_abort_resets_peer,
    "tcp_closed_resource": check_tcp_closed_resource,
    "tcp_refused": check_tcp_refused,
    "tcp_address_in_use": check_tcp_address_in_use,
    "listener_close_ends_iteration": check_listener_close_ends_iteration,
    "bad_ports": check_bad_ports,
    "udp_round_trip": check_udp_round_trip,
    "udp_connected_refused": check_udp_connected_refused,
    "udp_size_limit": check_udp_size_limit,
    "getaddrinfo_numeric": check_getaddrinfo_numeric,
}


async def check_stack(make_pair: MakePair) -> None:
    """Run every check in :data:`CHECKS`, each on a fresh pair."""
    for name, check in CHECKS.items():
        pair = await make_pair()
        try:
            await check(pair)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc


async def _receive_exactly(stream: TcpStream, size: int) -> bytes:
    data = b""
    with anyio.fail_after(5):
        while len(data) < size:
            data += await stream.receive(size - len(data))
    return data


async def _receive_to_eof(stream: TcpStream) -> bytes:
    parts = []
    with anyio.fail_after(10):
        while True:
            try:
                parts.append(await stream.receive())
            except anyio.EndOfStream:
                return b"".join(parts)
