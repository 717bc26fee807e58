"""The standard library's network clients and servers on the virtual network.

``http.client`` against ``http.server.ThreadingHTTPServer``, ``urllib.request``,
``socketserver`` over TCP and UDP, and ``smtplib`` (plain and STARTTLS) against
the smtpd-style server of ``aiosmtpd``: unmodified, each as a client on
``client`` talking to a server that serves as ``web.internal``.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import smtplib
import socket
import socketserver
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from compat_helpers import CLIENT_ADDRESSES, Installed, Tls

from netshim.shim import acting_as


class EchoHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request with JSON describing it: method, path, body and peer."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length) if length else b""
        reply = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "body": body.decode(),
                "peer": list(self.client_address[:2]),
                "server": list(self.connection.getsockname()[:2]),
            }
        ).encode()
        self.send_response(201 if self.command == "POST" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = do_PUT = _answer  # noqa: N815 - the names http.server dispatches to

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def http_server(installed: Installed, port: int = 8080) -> Iterator[http.server.HTTPServer]:
    with acting_as(installed.web):
        server = http.server.ThreadingHTTPServer(("0.0.0.0", port), EchoHandler)
    server.daemon_threads = False
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        assert not thread.is_alive()


def test_http_client_against_threading_http_server(installed: Installed) -> None:
    with http_server(installed) as server:
        assert server.server_address == ("0.0.0.0", 8080)
        connection = http.client.HTTPConnection("web.internal", 8080, timeout=5)
        connection.request("POST", "/items", body=b"first", headers={"X-Test": "1"})
        response = connection.getresponse()
        assert response.status == 201
        first = json.loads(response.read())
        assert first["method"] == "POST"
        assert first["body"] == "first"
        assert first["peer"][0] in CLIENT_ADDRESSES
        peer = connection.sock.getpeername()
        assert peer[1] == 8080
        assert peer[0] in ("10.0.0.2", "fd00::2")
        local = connection.sock.getsockname()
        # Keep-alive: the second request goes over the same connection.
        connection.request("GET", "/again")
        response = connection.getresponse()
        assert response.status == 200
        second = json.loads(response.read())
        assert second["path"] == "/again"
        assert second["peer"] == first["peer"]
        assert tuple(second["peer"][:2]) == tuple(local[:2])
        connection.close()


def test_urllib_request(installed: Installed) -> None:
    with http_server(installed, 8081):
        with urllib.request.urlopen("http://web.internal:8081/hello?x=1", timeout=5) as reply:
            assert reply.status == 200
            assert reply.headers["Content-Type"] == "application/json"
            body = json.loads(reply.read())
        assert body["path"] == "/hello?x=1"
        assert body["peer"][0] in CLIENT_ADDRESSES
        request = urllib.request.Request(
            "http://10.0.0.2:8081/form", data=b"a=1&b=2", method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as reply:
            assert reply.status == 201
            assert json.loads(reply.read())["body"] == "a=1&b=2"


class UpperTcpHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            if line == b"quit\n":
                break
            peer = self.client_address[0].encode()
            self.wfile.write(line.strip().upper() + b" from " + peer + b"\n")


class UpperUdpHandler(socketserver.DatagramRequestHandler):
    def handle(self) -> None:
        data = self.rfile.read()
        self.wfile.write(data.upper() + b" " + self.client_address[0].encode())


@contextmanager
def serving(server: socketserver.BaseServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        assert not thread.is_alive()


def test_socketserver_tcp(installed: Installed) -> None:
    with acting_as(installed.web):
        server = socketserver.ThreadingTCPServer(("10.0.0.2", 9100), UpperTcpHandler)
    server.daemon_threads = False
    server.block_on_close = True
    with serving(server), socket.create_connection(("web.internal", 9100), timeout=5) as conn:
        reader = conn.makefile("rb")
        for word in (b"alpha", b"beta"):
            conn.sendall(word + b"\n")
            assert reader.readline() == word.upper() + b" from 10.0.0.3\n"
        conn.sendall(b"quit\n")
        assert reader.read() == b"", "the handler closed the connection"
        reader.close()


class ForkedTcpHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline()
        # A socket made in the child runs on the child's own engine (on a
        # VirtualNetwork, on the child's copy of the network, which lives in
        # memory): a datagram to itself comes back.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.settimeout(5)
            probe.bind(("127.0.0.1", 0))
            probe.sendto(b"ok", probe.getsockname())
            echoed = probe.recv(10)
        self.wfile.write(f"{os.getpid()} ".encode() + echoed + b" " + line.upper())


def test_socketserver_forking_server(installed: Installed) -> None:
    # CPython's test_socketserver forking tests hung: the child called into an
    # engine thread that fork() had not copied.
    with acting_as(installed.web):
        server = socketserver.ForkingTCPServer(("0.0.0.0", 9102), ForkedTcpHandler)
    with serving(server):
        children = set()
        for word in (b"alpha", b"beta", b"gamma"):
            with socket.create_connection(("web.internal", 9102), timeout=10) as conn:
                conn.sendall(word + b"\n")
                with conn.makefile("rb") as reader:
                    pid, answer = reader.readline().split(b" ", 1)
                    assert answer == b"ok " + word.upper() + b"\n"
                    assert reader.read() == b"", "the child's close ended the connection"
            children.add(int(pid))
    assert len(children) == 3
    assert os.getpid() not in children


def test_socketserver_udp(installed: Installed) -> None:
    with acting_as(installed.web):
        server = socketserver.ThreadingUDPServer(("0.0.0.0", 9101), UpperUdpHandler)
    server.daemon_threads = False
    server.block_on_close = True
    with serving(server), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        for word in (b"one", b"two"):
            sock.sendto(word, ("web.internal", 9101))
            data, source = sock.recvfrom(100)
            assert data == word.upper() + b" 10.0.0.3"
            assert source == ("10.0.0.2", 9101)


class Collect:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes, str]] = []

    async def handle_DATA(  # noqa: N802 - the name aiosmtpd calls
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        content = envelope.content
        assert isinstance(content, bytes)
        assert session.peer is not None
        self.messages.append(
            (str(envelope.mail_from), list(envelope.rcpt_tos), content, str(session.peer[0]))
        )
        return "250 Message accepted for delivery"


def _smtp_controller(installed: Installed, handler: Collect, **kwargs: Any) -> Controller:
    with acting_as(installed.web):
        controller = Controller(handler, hostname="10.0.0.2", port=2525, **kwargs)
        controller.start()
    return controller


def _stop_when_sessions_ended(controller: Controller) -> None:
    """Stop the server once it has seen the client's last connection end.

    ``Controller.stop()`` stops the server's loop at once; a session whose
    close is still on its way (a TLS session waits for the client's end of
    the stream before it lets go of its socket) is then never closed, and its
    socket is reported unclosed at some later test's garbage collection.
    """
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        session = controller.smtpd
        if session is None or session.transport is None:
            break
        time.sleep(0.01)
    controller.stop()


def _message(subject: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "alice@client"
    message["To"] = "bob@web.internal"
    message["Subject"] = subject
    message.set_content("Hello over the virtual network.\n")
    return message


def test_smtplib_with_aiosmtpd(installed: Installed) -> None:
    handler = Collect()
    controller = _smtp_controller(installed, handler)
    try:
        with smtplib.SMTP("web.internal", 2525, timeout=5) as client:
            code, banner = client.ehlo("client")
            assert code == 250
            assert b"SIZE" in banner or b"8BITMIME" in banner
            refused = client.send_message(_message("plain"))
            assert refused == {}
            assert client.noop()[0] == 250
    finally:
        _stop_when_sessions_ended(controller)
    [(sender, recipients, content, peer)] = handler.messages
    assert sender == "alice@client"
    assert recipients == ["bob@web.internal"]
    assert b"Subject: plain" in content
    assert b"Hello over the virtual network." in content
    assert peer in CLIENT_ADDRESSES


def test_smtplib_starttls_with_aiosmtpd(installed: Installed, tls: Tls) -> None:
    handler = Collect()
    controller = _smtp_controller(installed, handler, tls_context=tls.server, require_starttls=True)
    try:
        with smtplib.SMTP("web.internal", 2525, timeout=5) as client:
            client.ehlo()
            assert client.has_extn("starttls")
            assert client.starttls(context=tls.client)[0] == 220
            client.ehlo()
            assert client.sock is not None
            assert client.sock.version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[attr-defined]
            assert client.sock.getpeername()[:2] in (("10.0.0.2", 2525), ("fd00::2", 2525))
            client.send_message(_message("secret"))
    finally:
        _stop_when_sessions_ended(controller)
    [(_, _, content, peer)] = handler.messages
    assert b"Subject: secret" in content
    assert peer in CLIENT_ADDRESSES
