"""uvloop on shim sockets: create_connection / create_server with ``sock=``, TLS, sock_* calls."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
from shim_support import Installed, answer_upper, tls_contexts

import netshim
from netshim.shim import acting_as

uvloop = pytest.importorskip("uvloop")


def listen_on_web(installed: Installed, port: int) -> socket.socket:
    with acting_as(installed.web):
        return socket.create_server(("0.0.0.0", port))


def test_create_connection_sock_both_ways_with_half_close(installed: Installed) -> None:
    listener = listen_on_web(installed, 7000)
    seen: dict[str, object] = {}

    def serve() -> None:
        conn, address = listener.accept()
        with conn:
            seen["client"] = address
            received = b""
            while chunk := conn.recv(65536):
                received += chunk
            seen["received"] = len(received)
            # Our side is still open after the client's FIN: answer now.
            conn.sendall(received[::-1] + b"|" + f"{address[0]}".encode())

    thread = threading.Thread(target=serve)
    thread.start()
    payload = bytes(range(256)) * 4096

    async def main() -> None:
        sock = socket.socket()
        sock.connect(("web.internal", 7000))
        reader, writer = await asyncio.open_connection(sock=sock)
        assert writer.get_extra_info("peername") == ("10.0.0.2", 7000)
        assert writer.get_extra_info("sockname")[0] == "10.0.0.3"
        assert writer.get_extra_info("socket").family == socket.AF_INET
        assert writer.can_write_eof()
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        answer = await reader.read()
        assert answer == payload[::-1] + b"|10.0.0.3"
        assert reader.at_eof()
        writer.close()
        await writer.wait_closed()

    uvloop.run(asyncio.wait_for(main(), 20))
    thread.join(5)
    listener.close()
    assert seen["received"] == len(payload)
    assert seen["client"][0] == "10.0.0.3"  # type: ignore[index]


def test_create_server_sock_with_tls(installed: Installed) -> None:
    server_tls, client_tls = tls_contexts()

    async def main() -> None:
        plain = await asyncio.start_server(answer_upper, sock=listen_on_web(installed, 8080))
        secure = await asyncio.start_server(
            answer_upper, sock=listen_on_web(installed, 8443), ssl=server_tls
        )
        assert plain.is_serving()
        assert plain.sockets[0].getsockname() == ("0.0.0.0", 8080)
        for port, tls in ((8080, None), (8443, client_tls)):
            sock = socket.create_connection(("web.internal", port))
            reader, writer = await asyncio.open_connection(
                sock=sock, ssl=tls, server_hostname="web.internal" if tls else None
            )
            if tls is not None:
                assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
                assert writer.get_extra_info("peername") == ("10.0.0.2", 8443)
            writer.write(b"hello\n")
            assert await reader.readline() == b"HELLO\n"
            assert await reader.readline() == b"10.0.0.3\n"
            writer.close()
            await writer.wait_closed()
        for server in (plain, secure):
            server.close()
            await server.wait_closed()
        assert not plain.is_serving()
        assert plain.sockets == ()

    uvloop.run(asyncio.wait_for(main(), 20))


def test_serve_forever_serves_until_cancelled_then_closes(installed: Installed) -> None:
    async def main() -> None:
        server = await asyncio.start_server(
            answer_upper, sock=listen_on_web(installed, 8090), start_serving=False
        )
        assert not server.is_serving()
        serving = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0)
        assert server.is_serving()
        reader, writer = await asyncio.open_connection("web.internal", 8090)
        writer.write(b"hi\n")
        assert await reader.readline() == b"HI\n"
        writer.close()
        with pytest.raises(RuntimeError, match="already being awaited"):
            await server.serve_forever()
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        assert not server.is_serving()
        assert server.sockets == ()
        with pytest.raises(RuntimeError, match="is closed"):
            await server.serve_forever()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("10.0.0.2", 8090)

    uvloop.run(asyncio.wait_for(main(), 20))


def test_create_server_with_host_and_port_listens_on_the_stack(installed: Installed) -> None:
    # What uvicorn.run(app) does under uvloop: no sock=, a host and a port.
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"served " + (await reader.readline()))
        await writer.drain()
        writer.close()

    async def main() -> None:
        with acting_as(installed.web):
            one = await asyncio.start_server(handle, "0.0.0.0", 8001)
            both = await asyncio.start_server(handle, None, 8002)
        assert one.sockets[0].getsockname() == ("0.0.0.0", 8001)
        assert sorted(s.family for s in both.sockets) == [socket.AF_INET, socket.AF_INET6]
        for host, port in (("web.internal", 8001), ("10.0.0.2", 8002), ("fd00::2", 8002)):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"hi\n")
            assert await reader.readline() == b"served hi\n"
            writer.close()
            await writer.wait_closed()
        for server in (one, both):
            server.close()
            await server.wait_closed()
        with socket.socket() as sock, pytest.raises(ValueError, match="host/port and sock"):
            await asyncio.start_server(handle, "0.0.0.0", 8003, sock=sock)

    uvloop.run(asyncio.wait_for(main(), 20))


def test_flow_control_and_abort(installed: Installed) -> None:
    listener = listen_on_web(installed, 7001)
    listener.setblocking(False)

    class Recorder(asyncio.Protocol):
        def __init__(self) -> None:
            self.events: list[str] = []
            self.data = bytearray()
            self.lost: asyncio.Future[BaseException | None] = (
                asyncio.get_running_loop().create_future()
            )

        def pause_writing(self) -> None:
            self.events.append("pause")

        def resume_writing(self) -> None:
            self.events.append("resume")

        def data_received(self, data: bytes) -> None:
            self.data += data

        def connection_lost(self, exc: BaseException | None) -> None:
            self.lost.set_result(exc)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sock = socket.create_connection(("web.internal", 7001))
        transport, protocol = await loop.create_connection(Recorder, sock=sock)
        peer, _ = await loop.sock_accept(listener)
        transport.set_write_buffer_limits(high=1024, low=0)
        assert transport.get_write_buffer_limits() == (0, 1024)
        # More than the pair's buffers hold while nobody reads: the protocol is paused.
        transport.write(b"x" * (8 << 20))
        assert protocol.events == ["pause"]
        assert transport.get_write_buffer_size() > 0
        received = 0
        while received < 8 << 20:
            received += len(await loop.sock_recv(peer, 1 << 20))
        for _ in range(100):
            if protocol.events == ["pause", "resume"]:
                break
            await asyncio.sleep(0.01)
        assert protocol.events == ["pause", "resume"]
        assert transport.get_write_buffer_size() == 0

        transport.pause_reading()
        assert not transport.is_reading()
        await loop.sock_sendall(peer, b"held")
        await asyncio.sleep(0.05)
        assert protocol.data == b""
        transport.resume_reading()
        for _ in range(100):
            if protocol.data:
                break
            await asyncio.sleep(0.01)
        assert protocol.data == b"held"

        transport.abort()
        assert await protocol.lost is None
        assert await loop.sock_recv(peer, 10) == b""
        peer.close()

    uvloop.run(asyncio.wait_for(main(), 30))
    listener.close()


def test_sock_methods_work_on_shim_sockets(installed: Installed) -> None:
    listener = listen_on_web(installed, 7002)
    listener.setblocking(False)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("web.internal", 7002))
        peer, address = await loop.sock_accept(listener)
        assert address[0] == "10.0.0.3"
        await loop.sock_sendall(sock, b"ping")
        assert await loop.sock_recv(peer, 10) == b"ping"
        await loop.sock_sendall(peer, b"pong")
        assert await loop.sock_recv(sock, 10) == b"pong"
        for each in (sock, peer):
            each.close()

    uvloop.run(asyncio.wait_for(main(), 20))
    listener.close()


def test_other_sockets_go_to_uvloop(installed: Installed) -> None:
    # A real AF_UNIX pair is no shim socket: uvloop's own transport takes it.
    left, right = socket.socketpair()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection(sock=left)
        assert type(writer.transport).__module__.startswith("uvloop")
        await loop.sock_sendall(right, b"real\n")
        assert await reader.readline() == b"real\n"
        writer.close()
        await writer.wait_closed()

    right.setblocking(False)
    uvloop.run(asyncio.wait_for(main(), 10))
    right.close()


def test_uninstall_restores_uvloop_by_identity() -> None:
    names = ("create_connection", "create_server", "connect_accepted_socket", "sock_connect")
    before = {name: uvloop.Loop.__dict__.get(name) for name in names}
    inherited = {name: getattr(uvloop.Loop, name) for name in names}
    net = netshim.VirtualNetwork(seed=0)
    host = net.add_host("h")
    netshim.install(host)
    netshim.install(host)  # twice: still one layer over uvloop's methods
    try:
        for name in names:
            assert uvloop.Loop.__dict__[name]._netshim_original is inherited[name]
    finally:
        netshim.uninstall()
    assert {name: uvloop.Loop.__dict__.get(name) for name in names} == before
    for name in names:
        assert getattr(uvloop.Loop, name) is inherited[name]
