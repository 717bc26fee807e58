"""The netshim_network fixture: every async plugin, servers in one line, markers and faults."""

from __future__ import annotations

import pytest


def test_fixture_under_sync_anyio_pytest_asyncio_and_trio(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio
        import socket

        import anyio
        import pytest
        import trio

        import netshim

        async def shout(reader, writer):
            writer.write((await reader.readline()).upper())
            await writer.drain()
            writer.close()

        def test_sync(netshim_network):
            assert netshim.is_installed()
            netshim_network.serve("web.internal", 80, shout)
            with socket.create_connection(("web.internal", 80), timeout=5) as sock:
                sock.sendall(b"sync\\n")
                assert sock.makefile("rb").readline() == b"SYNC\\n"

        @pytest.fixture(params=["asyncio", "trio"])
        def anyio_backend(request):
            return request.param

        @pytest.mark.anyio
        async def test_anyio(netshim_network):
            netshim_network.serve("web.internal", 80, shout)
            async with await anyio.connect_tcp("web.internal", 80) as stream:
                await stream.send(b"anyio\\n")
                assert await stream.receive() == b"ANYIO\\n"

        @pytest.mark.asyncio
        async def test_pytest_asyncio(netshim_network):
            netshim_network.serve("web.internal", 80, shout)
            reader, writer = await asyncio.open_connection("web.internal", 80)
            writer.write(b"asyncio\\n")
            assert await reader.readline() == b"ASYNCIO\\n"
            writer.close()
            await writer.wait_closed()

        @pytest.mark.trio
        async def test_pytest_trio(netshim_network):
            netshim_network.serve("web.internal", 80, shout)
            stream = await trio.open_tcp_stream("web.internal", 80)
            async with stream:
                await stream.send_all(b"trio\\n")
                assert await stream.receive_some() == b"TRIO\\n"

        def test_uninstalled_after():
            assert not netshim.is_installed()
        """
    )
    result = pytester.runpytest("-v", "-p", "no:randomly")
    result.assert_outcomes(passed=6)


def test_serve_every_kind_of_server(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import json
        import socket
        import socketserver

        import httpx
        from aiohttp import web

        async def asgi_app(scope, receive, send):
            if scope["type"] != "http":
                return
            body = (await receive())["body"]
            payload = json.dumps(
                {"path": scope["path"], "body": body.decode(), "client": scope["client"][0]}
            ).encode()
            await send({"type": "http.response.start", "status": 201,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": payload})

        def wsgi_app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [f"wsgi {environ['PATH_INFO']}".encode()]

        async def hello(request):
            return web.Response(text=f"aiohttp {request.path}")

        async def anyio_handler(stream):
            await stream.send(b"anyio " + await stream.receive())

        class Echo(socketserver.StreamRequestHandler):
            def handle(self):
                self.wfile.write(b"tcp " + self.rfile.readline())

        class UdpEcho(socketserver.DatagramRequestHandler):
            def handle(self):
                self.wfile.write(b"udp " + self.rfile.read())

        def test_http_servers(netshim_network):
            app = web.Application()
            app.router.add_get("/{tail:.*}", hello)
            netshim_network.serve("aiohttp.internal", 80, app)
            netshim_network.serve("asgi.internal", 80, asgi_app)
            netshim_network.serve("wsgi.internal", 8000, wsgi_app)
            with httpx.Client(timeout=5) as client:
                assert client.get("http://aiohttp.internal/a").text == "aiohttp /a"
                reply = client.post("http://asgi.internal/b", content=b"data")
                assert reply.status_code == 201
                assert reply.json()["path"] == "/b"
                assert reply.json()["body"] == "data"
                client_ip = reply.json()["client"]
                assert client_ip in (netshim_network.client.addresses + ["::ffff:10.0.0.2"])
                assert client.get("http://wsgi.internal:8000/c").text == "wsgi /c"

        def test_stream_and_datagram_servers(netshim_network):
            netshim_network.serve("anyio.internal", 9000, anyio_handler)
            netshim_network.serve("tcp.internal", 7, Echo)
            netshim_network.serve("udp.internal", 7, UdpEcho)
            netshim_network.serve_udp("fn.internal", 9, lambda data, address: data[::-1])
            with socket.create_connection(("anyio.internal", 9000), timeout=5) as sock:
                sock.sendall(b"x")
                assert sock.recv(100) == b"anyio x"
            with socket.create_connection(("tcp.internal", 7), timeout=5) as sock:
                sock.sendall(b"y\\n")
                assert sock.makefile("rb").readline() == b"tcp y\\n"
            for name, port, expected in (("udp.internal", 7, b"udp z"), ("fn.internal", 9, b"z")):
                address = socket.getaddrinfo(name, port, socket.AF_INET, socket.SOCK_DGRAM)[0][4]
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.settimeout(5)
                    sock.sendto(b"z", address)
                    assert sock.recvfrom(100) == (expected, address)

        def test_serving_twice_on_one_port_raises(netshim_network):
            netshim_network.serve("tcp.internal", 7, Echo)
            try:
                netshim_network.serve("tcp.internal", 7, Echo)
            except OSError as exc:
                assert exc.errno == 98
            else:
                raise AssertionError("EADDRINUSE expected")

        def test_not_a_server(netshim_network):
            try:
                netshim_network.serve("x", 1, 42)
            except TypeError as exc:
                assert "cannot serve 42" in str(exc)
            else:
                raise AssertionError("TypeError expected")
        """
    )
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=4)


def test_marker_and_options_fixture_configure_the_network(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def netshim_options():
            return {"records": {"api.example.com": "10.0.0.99"}, "seed": 7}
        """
    )
    pytester.makepyfile(
        """
        import socket
        import time

        import pytest

        def test_from_options_fixture(netshim_network):
            assert netshim_network.seed == 7
            assert socket.gethostbyname("api.example.com") == "10.0.0.99"

        @pytest.mark.netshim(
            hosts={"db": ["10.0.0.50"]},
            records=[("www.example.com", "CNAME", "db."), ("db6.example.com", "AAAA", "fd00::50")],
            links={"db": {"latency": 0.1}},
            connect_timeout=1,
        )
        def test_from_marker(netshim_network):
            assert netshim_network.seed == 7, "the options fixture still applies"
            assert socket.gethostbyname("www.example.com") == "10.0.0.50"
            assert netshim_network.link("db", "client").conditions.latency == 0.1
            netshim_network.serve_udp("db", 9, lambda data, address: data)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(5)
                started = time.monotonic()
                sock.sendto(b"ping", ("10.0.0.50", 9))
                assert sock.recv(10) == b"ping"
                assert time.monotonic() - started >= 0.2, "latency both ways"
            netshim_network.partition("db")
            with pytest.raises(TimeoutError):
                socket.create_connection(("db", 9), timeout=5)
        """
    )
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=2)


def test_faults_change_in_the_middle_of_a_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import socket
        import socketserver

        import pytest

        class Echo(socketserver.StreamRequestHandler):
            def handle(self):
                for line in self.rfile:
                    self.wfile.write(line)

        def round_trip(payload):
            with socket.create_connection(("web", 7), timeout=2) as sock:
                sock.sendall(payload)
                return sock.makefile("rb").readline()

        @pytest.mark.netshim(connect_timeout=0.5)
        def test_faults(netshim_network):
            netshim_network.serve("web", 7, Echo)
            assert round_trip(b"fine\\n") == b"fine\\n"
            netshim_network.refuse("web", 7)
            with pytest.raises(ConnectionRefusedError):
                round_trip(b"refused\\n")
            netshim_network.refuse("web", 7, False)
            netshim_network.reset_after("web", nbytes=4)
            with pytest.raises(ConnectionResetError):
                round_trip(b"reset after four bytes\\n")
            netshim_network.reset_after("web", nbytes=None)
            netshim_network.partition("web")
            with pytest.raises(TimeoutError):
                round_trip(b"cut\\n")
            netshim_network.heal("web")
            netshim_network.set_link("web", bandwidth=100_000, latency=0.01)
            assert round_trip(b"slow\\n") == b"slow\\n"
        """
    )
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=1)


@pytest.mark.peer("netns")
def test_a_confined_subprocess_reaches_the_tests_servers_by_name(
    pytester: pytest.Pytester,
) -> None:
    from netshim.testing import require_peer

    curl = require_peer("curl")
    pytester.makepyfile(
        f"""
        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"served to " + environ["REMOTE_ADDR"].encode()]

        def test_curl(netshim_network):
            netshim_network.serve("api.internal", 80, app)
            result = netshim_network.run_isolated(
                ["{curl}", "-sS", "--max-time", "20", "http://api.internal/"]
            )
            assert result.returncode == 0, result.stderr
            # The confined program is the test's client host on the virtual network.
            # (its IPv4 address as a dual-stack server sees it)
            assert result.stdout == b"served to ::ffff:10.0.0.2"

        def test_metadata_stays_refused(netshim_network):
            result = netshim_network.run_isolated(
                ["{curl}", "-sS", "--max-time", "20", "http://169.254.169.254/"]
            )
            assert result.returncode == 7
        """
    )
    result = pytester.runpytest("-v", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
