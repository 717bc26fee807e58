"""The interface layer and its TCP core inside real Pyodide (the pinned npm package, under Node).

DESIGN decision 4: the engine core needs no threads, fds or fcntl.  The
script below builds two interfaces, joins them with the synchronous shuttle
the core allows (no event loop: Pyodide's WebLoop cannot be run from a
script), and checks a TCP exchange and a UDP datagram, all inside
Pyodide.  It runs through ``netshim pyodide run`` with the wheels the other
Pyodide tests use (``tests/pyodide/pyodide_support.py``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pyodide"))
from pyodide_support import PEER_DIR, dependency_wheels, require_pyodide

pytestmark = pytest.mark.peer("node")

SCRIPT = """\
import hashlib, random, sys
from ipaddress import IPv4Address, IPv4Interface, IPv6Interface
assert sys.platform == "emscripten", sys.platform
from netshim.ip.iface import Interface, Medium
from netshim.ip.links import Cable  # importable without fcntl
from netshim.protocols.ip import EthernetAddress

def host(n):
    addresses = [IPv4Interface(f"10.0.0.{n}/24"), IPv6Interface(f"2001:db8::{n}/64")]
    return Interface(Medium.ETHERNET, mac=EthernetAddress(bytes((2, 0, 0, 0, 0, n))),
                     addresses=addresses, rng=random.Random(n), slaac=False)

def shuttle(a, b, now):
    for _ in range(10000):
        from_a, from_b = a.transmit(now), b.transmit(now)
        if not from_a and not from_b:
            return
        for p in from_a:
            b.receive(p.data, now)
        for p in from_b:
            a.receive(p.data, now)

server, client = host(1), host(2)
listener = server.tcp_listen(IPv4Address("10.0.0.1"), 80)
connection = client.tcp_connect((IPv4Address("10.0.0.1"), 80), now=0.0)
shuttle(server, client, 0.0)
accepted = listener.accept()
data = random.Random(1).randbytes(200_000)
sent, got, now = 0, bytearray(), 0.0
while len(got) < len(data):
    sent += connection.send(data[sent:])
    now += 0.05
    shuttle(server, client, now)
    while accepted.readable():
        got += accepted.receive(1 << 20)
assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
udp = server.udp_bind(IPv4Address("0.0.0.0"), 53)
client.udp_bind(IPv4Address("0.0.0.0")).send_to(b"query", (IPv4Address("10.0.0.1"), 53), now)
shuttle(server, client, now)
assert udp.receive()[0] == b"query"
print("ok", len(got), dict(server.dropped), dict(client.dropped))
"""


def test_the_core_runs_in_pyodide(tmp_path: Path) -> None:
    require_pyodide()
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    for wheel in dependency_wheels():
        shutil.copy(wheel, cache / "wheels")
    script = tmp_path / "core.py"
    script.write_text(SCRIPT)
    completed = subprocess.run(
        [sys.executable, "-m", "netshim", "pyodide", "run", "--cache-dir", str(cache),
         "--pyodide-dir", str(PEER_DIR / "node_modules" / "pyodide"), str(script)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("ok 200000 {} {}"), completed.stdout
