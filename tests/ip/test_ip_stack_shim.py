"""``netshim.install(IpStack(...))``: unmodified socket code whose connections are packets.

The program's side is this test's own code (urllib, ``socket.create_connection``,
a ``socketserver`` server); the other side is the kernel in a namespace behind a
TAP device: ``python3 -m http.server`` and ``curl``.
"""

from __future__ import annotations

import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from namespaces import DEVICE, open_device, run

import netshim
from netshim.ip.links import TapLink
from netshim.stacks.ip import IpStack
from netshim.testing import require_peer

pytestmark = pytest.mark.peer("iproute2")

KERNEL = "10.79.0.1"
OURS = "10.79.0.2"


def test_urllib_and_a_socketserver_over_packets_to_the_kernel(netns: str) -> None:
    curl = require_peer("curl")
    link = TapLink.from_fd(open_device(netns, 0x0002))
    run("ip", "-n", netns, "addr", "add", f"{KERNEL}/24", "dev", DEVICE)
    run("ip", "-n", netns, "link", "set", DEVICE, "up")
    web = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "http.server",
         "--bind", KERNEL, "8000", "--directory", "/etc"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    stack = IpStack(link, addresses=[f"{OURS}/24"], hostname="packets")
    netshim.install(stack)
    try:
        assert socket.gethostname() == "packets"
        deadline = time.monotonic() + 20
        while True:
            try:
                body = urllib.request.urlopen(f"http://{KERNEL}:8000/hostname", timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with open("/etc/hostname", "rb") as expected:
            assert body == expected.read()
        with socket.create_connection((KERNEL, 8000), timeout=5) as conn:
            assert conn.getsockname()[0] == OURS
            conn.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
            assert conn.recv(100).startswith(b"HTTP/1.0 200")

        class Hello(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.recv(65536)
                self.request.sendall(b"from a socketserver on packets\n")

        with socketserver.TCPServer((OURS, 8080), Hello) as server:
            thread = threading.Thread(target=server.handle_request, daemon=True)
            thread.start()
            fetched = subprocess.run(
                ["ip", "netns", "exec", netns, curl, "-sS", "--max-time", "10",
                 "--http0.9", f"http://{OURS}:8080/"],
                capture_output=True, timeout=30, check=False,
            )  # fmt: skip
            thread.join(10)
        assert fetched.stdout == b"from a socketserver on packets\n", fetched.stderr
    finally:
        netshim.uninstall()
        web.terminate()
        web.wait()
