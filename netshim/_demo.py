"""``netshim demo``: a tour of a virtual network, on built-in defaults, in a few seconds.

It builds a network with a web server and a laptop, serves HTTP on the
server, fetches a page by name (the name resolves through the network's own
DNS server), then degrades the link step by step (latency, a partition, a
reset) and shows how each fault reaches the client as the error a real
network would give.  Everything is recorded to a pcap file that Wireshark or
tshark opens.  Last, ``netshim.install()`` runs unmodified standard-library
code (``http.server`` and ``urllib``) on a virtual network.
"""

from __future__ import annotations

import http.server
import socket
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import anyio

from .stack import TcpStream
from .stacks.virtual import VirtualHost, VirtualNetwork

PAGE = b"<h1>Hello from web.internal</h1>\n"


async def _serve_http(stream: TcpStream) -> None:
    request = b""
    while b"\r\n\r\n" not in request:
        try:
            request += await stream.receive()
        except anyio.EndOfStream:
            return
    body = PAGE * 2000 if request.startswith(b"GET /big") else PAGE
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
    )
    await stream.send(head + body)


async def _fetch(client: VirtualHost, name: str, path: str = "/") -> tuple[str, int, float]:
    start = time.perf_counter()
    stream = await client.connect_tcp(name, 80)
    async with stream:
        await stream.send(f"GET {path} HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
        response = b""
        while True:
            try:
                response += await stream.receive()
            except anyio.EndOfStream:
                break
    status = response.split(b"\r\n", 1)[0].decode()
    body = response.split(b"\r\n\r\n", 1)[1]
    return status, len(body), (time.perf_counter() - start) * 1000


def _say(step: str, outcome: str) -> None:
    print(f"  {step:<46} {outcome}")


async def run_demo(pcap_path: Path) -> None:
    net = VirtualNetwork(seed=0, connect_timeout=0.5)
    web = net.add_host("web.internal")
    laptop = net.add_host("laptop")
    net.add_record("www.example.com", "CNAME", "web.internal.")
    print(f"network: {', '.join(f'{h.name} {h.addresses}' for h in net.hosts)}")
    with net.capture(pcap_path):
        listener = await web.listen_tcp(None, 80)
        async with anyio.create_task_group() as group:
            group.start_soon(listener.serve, _serve_http)

            infos = await laptop.getaddrinfo("www.example.com", 80, type=1)
            _say("resolve www.example.com (DNS over virtual UDP)", str([i[4][0] for i in infos]))
            status, size, ms = await _fetch(laptop, "www.example.com")
            _say("GET http://www.example.com/", f"{status}, {size} bytes, {ms:.1f} ms")

            net.set_link(web, laptop, latency=0.040)
            status, size, ms = await _fetch(laptop, "www.example.com")
            _say("same, with 40 ms latency each way", f"{status}, {size} bytes, {ms:.1f} ms")

            net.set_link(web, laptop, bandwidth=2_000_000)
            status, size, ms = await _fetch(laptop, "www.example.com", "/big")
            _say("GET /big over a 2 MB/s link", f"{status}, {size} bytes, {ms:.1f} ms")

            net.partition(web, laptop)
            try:
                await _fetch(laptop, "10.0.0.2")
            except OSError as exc:
                _say("connect across a partition", f"{type(exc).__name__}: {exc}")
            net.heal()

            net.reset_after(web, laptop, 1000)
            try:
                await _fetch(laptop, "10.0.0.2", "/big")
            except OSError as exc:
                _say("reset after 1000 bytes", f"{type(exc).__name__}: {exc}")
            net.reset_after(web, laptop, None)

            net.refuse(web, 80)
            try:
                await _fetch(laptop, "10.0.0.2")
            except OSError as exc:
                _say("port 80 refused", f"{type(exc).__name__}: {exc}")
            net.refuse(web, 80, False)

            try:
                await laptop.getaddrinfo("nowhere.example", 80)
            except OSError as exc:
                _say("resolve nowhere.example", f"{type(exc).__name__}: {exc}")

            await listener.aclose()
    size = pcap_path.stat().st_size  # noqa: ASYNC240 - one stat, after the run
    print(f"capture: {pcap_path} ({size} bytes; open it with wireshark or tshark)")


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        here = self.connection.getsockname()[0]
        body = f"hello from {here}, you are {self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def run_unmodified_code() -> None:
    """The main job: unmodified stdlib code (http.server, urllib) on a virtual network."""
    from . import shim

    net = VirtualNetwork(seed=1)
    web = net.add_host("web.internal")
    laptop = net.add_host("laptop")
    net.add_record("www.example.com", "CNAME", "web.internal.")
    print("unmodified code under netshim.install(laptop):")
    with shim.installed(laptop):
        with shim.acting_as(web):
            server = http.server.ThreadingHTTPServer(("0.0.0.0", 8000), _Hello)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            with urllib.request.urlopen("http://www.example.com:8000/", timeout=5) as reply:
                text = reply.read().decode().strip()
            _say("urllib.request.urlopen(www.example.com:8000)", f"{reply.status}: {text}")
            _say("socket.gethostbyname('www.example.com')", socket.gethostbyname("www.example.com"))
        finally:
            server.shutdown()
            server.server_close()
            thread.join()


def main(pcap: str | None = None) -> None:
    path = Path(pcap) if pcap else Path(tempfile.mkdtemp(prefix="netshim-demo-")) / "demo.pcap"
    anyio.run(run_demo, path)
    run_unmodified_code()
