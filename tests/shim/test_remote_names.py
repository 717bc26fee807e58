"""Remote names: for stacks that resolve at the far end, getaddrinfo hands out synthetic
addresses and connect/sendto turn them back into names (DESIGN decision 5)."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest

import netshim
from netshim import Stack, TcpListener, TcpStream, UdpSocket, VirtualHost, VirtualNetwork
from netshim.shim import acting_as


class FarEndResolver(Stack):
    """A stack that, like a tunnel, takes names and resolves them on the far side.

    Its own getaddrinfo refuses names, so anything that resolves locally fails.
    """

    resolves_remotely = True

    def __init__(self, far_side: VirtualHost) -> None:
        self.far_side = far_side
        self.names_asked: list[str] = []

    async def connect_tcp(self, host: str, port: int, *, local_address: Any = None) -> TcpStream:
        self.names_asked.append(host)
        return await self.far_side.connect_tcp(host, port)

    async def listen_tcp(self, host: Any = None, port: int = 0, **options: Any) -> TcpListener:
        return await self.far_side.listen_tcp(host, port, **options)

    async def open_udp(self, host: str = "0.0.0.0", port: int = 0, **options: Any) -> UdpSocket:
        return await self.far_side.open_udp(host, port, **options)

    async def getaddrinfo(self, host: Any, port: Any, *args: Any) -> Any:
        if host is not None and netshim._addresses.parse_ip(str(host)) is None:
            raise AssertionError(f"the shim resolved {host!r} locally")
        return await self.far_side.getaddrinfo(host, port, *args)


@pytest.fixture
def far_end() -> Any:
    net = VirtualNetwork(seed=0)
    web = net.add_host("web.internal", ["10.0.0.2", "fd00::2"])
    gateway = net.add_host("gateway", ["10.0.0.9", "fd00::9"])
    stack = FarEndResolver(gateway)
    netshim.install(stack)
    try:
        yield stack, web
    finally:
        netshim.uninstall()


def test_getaddrinfo_returns_stable_synthetic_addresses(far_end: Any) -> None:
    infos = socket.getaddrinfo("web.internal", 80, type=socket.SOCK_STREAM)
    # IPv4 first: code that only tries the first answer then works everywhere,
    # and the far end picks the real family anyway.
    assert [info[0] for info in infos] == [socket.AF_INET, socket.AF_INET6]
    v4, v6 = infos[0][4][0], infos[1][4][0]
    assert v4.startswith("198.18.") or v4.startswith("198.19.")
    assert v6.startswith("100::")
    assert socket.getaddrinfo("web.internal", 443, socket.AF_INET)[0][4][0] == v4
    other = socket.getaddrinfo("db.internal", 5432, socket.AF_INET)[0][4][0]
    assert other != v4
    # Numbers and localhost are not names to send across.
    assert socket.getaddrinfo("10.0.0.2", 80, socket.AF_INET)[0][4][0] == "10.0.0.2"


def test_connect_to_a_synthetic_address_connects_by_name(far_end: Any) -> None:
    stack, web = far_end
    with acting_as(web):
        server = socket.create_server(("0.0.0.0", 8080))
    server.settimeout(5)
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            received.append(conn.recv(100))
            conn.sendall(b"reply")

    thread = threading.Thread(target=serve)
    thread.start()
    client = socket.create_connection(("web.internal", 8080), timeout=5)
    assert client.getpeername()[0] in ("10.0.0.2", "fd00::2")
    client.sendall(b"request")
    assert client.recv(100) == b"reply"
    client.close()
    thread.join(5)
    server.close()
    assert received == [b"request"]
    assert stack.names_asked == ["web.internal"], "the name, not an address, crossed the stack"


def test_asyncio_open_connection_uses_names_too(far_end: Any) -> None:
    stack, web = far_end

    async def main() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()

        with acting_as(web):
            server = await asyncio.start_server(handle, "0.0.0.0", 9000)
        reader, writer = await asyncio.open_connection("web.internal", 9000)
        writer.write(b"echo\n")
        assert await reader.readline() == b"echo\n"
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 10))
    assert stack.names_asked
    assert set(stack.names_asked) == {"web.internal"}


def test_gethostbyaddr_of_a_synthetic_address_names_it(far_end: Any) -> None:
    address = socket.gethostbyname("api.example.com")
    assert socket.gethostbyaddr(address) == ("api.example.com", [], [address])
