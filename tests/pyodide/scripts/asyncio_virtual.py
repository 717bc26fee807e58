"""Inside Pyodide: asyncio and anyio servers and clients on a VirtualNetwork via install().

Run by tests/pyodide/test_pyodide_node.py; prints one JSON object of findings.
"""

import asyncio
import errno
import json
import socket
import sys

import anyio

import netshim
from netshim import VirtualNetwork

result: dict[str, object] = {
    "platform": sys.platform,
    "loop": type(asyncio.get_event_loop()).__name__,
    "ssl": type(sys.modules["ssl"]).__name__ if "ssl" in sys.modules else None,
}
try:
    socket.socketpair()
except OSError as exc:
    result["socketpair"] = repr(exc)

net = VirtualNetwork(seed=0)
web = net.add_host("web.internal", ["10.0.0.2", "fd00::2"])
laptop = net.add_host("laptop")
netshim.install(laptop)  # "auto": the loop hooks, since Pyodide has no socketpair


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data.upper())
        await writer.drain()
    writer.close()


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.transport.sendto(data[::-1], addr)  # type: ignore[attr-defined]


class UdpClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future[tuple[bytes, object]] = (
            asyncio.get_running_loop().create_future()
        )

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.answer.set_result((data, addr))


async def main() -> None:
    loop = asyncio.get_running_loop()
    with netshim.acting_as(web):
        server = await asyncio.start_server(echo, "0.0.0.0", 7)
        udp_server, _ = await loop.create_datagram_endpoint(UdpEcho, local_addr=("0.0.0.0", 9))
    result["server_sockname"] = list(server.sockets[0].getsockname())

    reader, writer = await asyncio.open_connection("web.internal", 7)
    result["peername"] = list(writer.get_extra_info("peername"))
    payload = b"pyodide " * 50_000  # 400 kB: windows fill, drain waits, flow control runs
    writer.write(payload)
    await writer.drain()
    echoed = await reader.readexactly(len(payload))
    result["echo_ok"] = echoed == payload.upper()
    writer.write_eof()
    result["after_eof"] = (await reader.read()).decode()
    writer.close()

    infos = await loop.getaddrinfo("web.internal", 80, type=socket.SOCK_STREAM)
    result["getaddrinfo"] = sorted(info[4][0] for info in infos)

    transport, client = await loop.create_datagram_endpoint(UdpClient, remote_addr=("10.0.0.2", 9))
    transport.sendto(b"datagram")
    data, source = await asyncio.wait_for(client.answer, 5)
    result["udp"] = [data.decode(), list(source)]  # type: ignore[arg-type]
    transport.close()

    async with await anyio.connect_tcp("web.internal", 7) as stream:
        await stream.send(b"anyio")
        result["anyio"] = (await stream.receive()).decode()
        result["anyio_remote"] = list(stream.extra(anyio.abc.SocketAttribute.remote_address))

    try:
        await asyncio.open_connection("web.internal", 1)
    except ConnectionRefusedError as exc:
        # Pyodide's errno numbers are emscripten's (ECONNREFUSED is 14 there).
        result["refused_is_econnrefused"] = exc.errno == errno.ECONNREFUSED

    server.close()
    await server.wait_closed()
    udp_server.close()


await main()  # type: ignore[top-level-await]  # noqa: F704 - Pyodide runs this at top level
print(json.dumps(result))
