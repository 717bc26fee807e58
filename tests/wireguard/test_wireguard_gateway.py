"""The gateway as a WireGuard server, with wireguard-go as the client in a namespace.

The namespace's default route is wireguard-go's ``wg0``; ``curl`` there
reaches a loopback HTTP server of the test's machine through the gateway's
address, which only the policy's allowed port lets through, over IPv4 and
over IPv6 inside the tunnel; the server's Prometheus metrics count what
happened.
"""

from __future__ import annotations

import hashlib
import http.server
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from wireguard_peer import TUNNEL_CLIENT, TUNNEL_SERVER, WireGuardPeerNamespace, run

from netshim.gateway._wireguard import WireGuardServer
from netshim.policy import Policy
from netshim.protocols import wireguard as wg
from netshim.stacks import HostStack

pytestmark = [pytest.mark.peer("wireguard-go")]

BIG = random.Random(7).randbytes(16 << 20)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Handler(http.server.BaseHTTPRequestHandler):
    connections: list[str]

    def do_GET(self) -> None:
        self.connections.append(self.path)
        body = BIG if self.path == "/big" else b"hello through wireguard\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server6(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


@pytest.fixture(params=["127.0.0.1"])
def http_servers(request: pytest.FixtureRequest) -> Iterator[list[tuple[int, list[str]]]]:
    """Two HTTP servers on the loopback address ``request.param``: (port, paths asked) each."""
    host = request.param
    servers = []
    for _ in range(2):
        seen: list[str] = []
        handler = type("Handler", (_Handler,), {"connections": seen})
        kind = _Server6 if ":" in host else http.server.ThreadingHTTPServer
        server = kind((host, 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append((server, seen))
    try:
        yield [(server.server_address[1], seen) for server, seen in servers]
    finally:
        for server, _ in servers:
            server.shutdown()
            server.server_close()


@pytest.mark.anyio
async def test_wireguard_go_client_through_the_gateway(
    wireguard_go: WireGuardPeerNamespace, http_servers: list[tuple[int, list[str]]]
) -> None:
    (allowed_port, allowed_seen), (refused_port, refused_seen) = http_servers
    server_key = wg.generate_private_key()
    config = f"""
[Interface]
PrivateKey = {wg.key_to_text(server_key)}
Address = {TUNNEL_SERVER}/24

[Peer]
PublicKey = {wg.key_to_text(wireguard_go.public_key)}
AllowedIPs = {TUNNEL_CLIENT}/32
"""
    server = WireGuardServer(
        config,
        stack=HostStack(),
        policy=Policy(allow=[f"127.0.0.1:{allowed_port}"]),
        port=0,
        host=wireguard_go.outer_ip,
    )
    # wireguard-go turns client: its wg0 gets the client's address and routes
    # everything (but the veth's /30) to the gateway.
    namespace = wireguard_go.name
    run("ip", "-n", namespace, "addr", "flush", "dev", wireguard_go.device)
    run("ip", "-n", namespace, "addr", "add", f"{TUNNEL_CLIENT}/24", "dev", wireguard_go.device)
    run("ip", "-n", namespace, "route", "add", "default", "dev", wireguard_go.device)
    async with anyio.create_task_group() as group:
        await group.start(server.run)
        local = server.link.local_address
        assert local is not None
        for old in wireguard_go.wg("show", wireguard_go.device, "peers").split():
            wireguard_go.wg("set", wireguard_go.device, "peer", old, "remove")
        wireguard_go.wg(
            "set", wireguard_go.device, "peer", wg.key_to_text(wg.public_key(server_key)),
            "endpoint", f"{local[0]}:{local[1]}", "allowed-ips", "0.0.0.0/0",
        )  # fmt: skip
        curl = ["curl", "-sS", "--max-time", "20"]
        with anyio.fail_after(60):
            ok = await anyio.run_process(
                wireguard_go.exec(*curl, f"http://{TUNNEL_SERVER}:{allowed_port}/"), check=False
            )
            refused = await anyio.run_process(
                wireguard_go.exec(*curl, f"http://{TUNNEL_SERVER}:{refused_port}/"), check=False
            )
            big = await anyio.run_process(
                wireguard_go.exec(
                    "sh",
                    "-c",
                    f"curl -sS --max-time 60 http://{TUNNEL_SERVER}:{allowed_port}/big | sha256sum",
                ),
                check=False,
            )
        group.cancel_scope.cancel()
    assert ok.returncode == 0, ok.stderr.decode()
    assert ok.stdout == b"hello through wireguard\n"
    assert refused.returncode == 7  # CURLE_COULDNT_CONNECT: a reset, as a refusal
    assert refused_seen == []
    assert allowed_seen == ["/", "/big"]
    assert big.stdout.decode().split()[0] == hashlib.sha256(BIG).hexdigest()
    assert server.counters.tcp_refused == 1
    assert server.counters.tcp_accepted == 2


def _free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def test_netshim_gateway_command_line_serves_wireguard(
    wireguard_go: WireGuardPeerNamespace,
    http_servers: list[tuple[int, list[str]]],
    tmp_path: Path,
) -> None:
    (allowed_port, allowed_seen), (refused_port, refused_seen) = http_servers
    server_key = wg.generate_private_key()
    config = tmp_path / "wg-server.conf"
    config.write_text(
        f"[Interface]\nPrivateKey = {wg.key_to_text(server_key)}\nAddress = {TUNNEL_SERVER}/24\n"
        f"[Peer]\nPublicKey = {wg.key_to_text(wireguard_go.public_key)}\n"
        f"AllowedIPs = {TUNNEL_CLIENT}/32\n"
    )
    udp_port = _free_udp_port(wireguard_go.outer_ip)
    with socket.socket() as probe:
        probe.bind((wireguard_go.outer_ip, 0))
        http_port = probe.getsockname()[1]
    namespace = wireguard_go.name
    run("ip", "-n", namespace, "addr", "flush", "dev", wireguard_go.device)
    run("ip", "-n", namespace, "addr", "add", f"{TUNNEL_CLIENT}/24", "dev", wireguard_go.device)
    run("ip", "-n", namespace, "route", "replace", "default", "dev", wireguard_go.device)
    for old in wireguard_go.wg("show", wireguard_go.device, "peers").split():
        wireguard_go.wg("set", wireguard_go.device, "peer", old, "remove")
    wireguard_go.wg(
        "set", wireguard_go.device, "peer", wg.key_to_text(wg.public_key(server_key)),
        "endpoint", f"{wireguard_go.outer_ip}:{udp_port}", "allowed-ips", "0.0.0.0/0",
    )  # fmt: skip
    gateway = subprocess.Popen(
        [sys.executable, "-m", "netshim", "gateway", "--host", wireguard_go.outer_ip,
         "--port", str(http_port), "--wireguard-port", str(udp_port),
         "--wireguard-config", str(config), "--allow", f"127.0.0.1:{allowed_port}",
         "--event-loop", "asyncio", "--log-level", "INFO"],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert gateway.stderr is not None
        for _ in range(50):
            line = gateway.stderr.readline().decode()
            if "WireGuard on udp" in line or not line:
                break
        assert "WireGuard on udp" in line, line
        curl = ["curl", "-sS", "--max-time", "20"]
        ok = subprocess.run(
            wireguard_go.exec(*curl, f"http://{TUNNEL_SERVER}:{allowed_port}/"),
            capture_output=True,
            timeout=60,
            check=False,
        )
        refused = subprocess.run(
            wireguard_go.exec(*curl, f"http://{TUNNEL_SERVER}:{refused_port}/"),
            capture_output=True,
            timeout=60,
            check=False,
        )
        # The WireGuard metrics are the gateway's /metrics too.
        with urllib.request.urlopen(
            f"http://{wireguard_go.outer_ip}:{http_port}/metrics", timeout=20
        ) as response:
            metrics = response.read().decode()
    finally:
        gateway.terminate()
        try:
            gateway.wait(10)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait()
        gateway.stderr.close()
    assert ok.stdout == b"hello through wireguard\n", ok.stderr.decode()
    assert refused.returncode == 7
    assert allowed_seen == ["/"]
    assert refused_seen == []
    assert 'netshim_gateway_wireguard_flows_total{outcome="refused",protocol="tcp"} 1.0' in metrics
    assert 'netshim_gateway_wireguard_peers{state="connected"} 1.0' in metrics


TUNNEL6_SERVER = "fd99:99::1"
TUNNEL6_CLIENT = "fd99:99::2"


def _metrics(server: WireGuardServer) -> dict[str, float]:
    """The server's metrics as one registry renders them: ``name{labels}`` to value."""
    registry = CollectorRegistry()
    server.register_metrics(registry)
    values = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


@pytest.mark.anyio
@pytest.mark.parametrize("http_servers", ["::1"], indirect=True)
async def test_ipv6_inside_the_tunnel_and_metrics(
    wireguard_go: WireGuardPeerNamespace, http_servers: list[tuple[int, list[str]]]
) -> None:
    # The server's [Interface] has an IPv6 address too: the client's IPv6
    # connections to it reach the machine's ::1 as the policy allows.
    (allowed_port, allowed_seen), (refused_port, refused_seen) = http_servers
    server_key = wg.generate_private_key()
    # A second client that never connects: its per-client metrics stay at zero.
    idle_client = wg.key_to_text(wg.public_key(wg.generate_private_key()))
    config = f"""
[Interface]
PrivateKey = {wg.key_to_text(server_key)}
Address = {TUNNEL_SERVER}/24, {TUNNEL6_SERVER}/64

[Peer]
PublicKey = {wg.key_to_text(wireguard_go.public_key)}
AllowedIPs = {TUNNEL_CLIENT}/32, {TUNNEL6_CLIENT}/128

[Peer]
PublicKey = {idle_client}
AllowedIPs = 10.99.0.3/32
"""
    server = WireGuardServer(
        config,
        stack=HostStack(),
        policy=Policy(allow=[f"[::1]:{allowed_port}"]),
        port=0,
        host=wireguard_go.outer_ip,
    )
    assert str(server.addressing.dns6) == "fd99:99::ffff:ffff:ffff:fffe"
    namespace = wireguard_go.name
    device = wireguard_go.device
    run("ip", "-n", namespace, "addr", "flush", "dev", device)
    run("ip", "-n", namespace, "addr", "add", f"{TUNNEL_CLIENT}/24", "dev", device)
    run("ip", "-n", namespace, "addr", "add", f"{TUNNEL6_CLIENT}/64", "dev", device, "nodad")
    run("ip", "-n", namespace, "route", "replace", "default", "dev", device)
    run("ip", "-n", namespace, "-6", "route", "replace", "default", "dev", device)
    before = _metrics(server)
    started = time.time()
    assert before['netshim_gateway_wireguard_peers{state="configured"}'] == 2
    assert before['netshim_gateway_wireguard_peers{state="connected"}'] == 0
    async with anyio.create_task_group() as group:
        await group.start(server.run)
        local = server.link.local_address
        assert local is not None
        for old in wireguard_go.wg("show", device, "peers").split():
            wireguard_go.wg("set", device, "peer", old, "remove")
        wireguard_go.wg(
            "set", device, "peer", wg.key_to_text(wg.public_key(server_key)),
            "endpoint", f"{local[0]}:{local[1]}", "allowed-ips", "0.0.0.0/0,::/0",
        )  # fmt: skip
        curl = ["curl", "-sS", "--max-time", "20"]
        with anyio.fail_after(60):
            ok = await anyio.run_process(
                wireguard_go.exec(*curl, f"http://[{TUNNEL6_SERVER}]:{allowed_port}/"), check=False
            )
            refused = await anyio.run_process(
                wireguard_go.exec(*curl, f"http://[{TUNNEL6_SERVER}]:{refused_port}/"), check=False
            )
        after = _metrics(server)
        group.cancel_scope.cancel()
    assert ok.returncode == 0, ok.stderr.decode()
    assert ok.stdout == b"hello through wireguard\n"
    assert refused.returncode == 7  # CURLE_COULDNT_CONNECT: a reset, as a refusal
    assert allowed_seen == ["/"]
    assert refused_seen == []
    assert after['netshim_gateway_wireguard_peers{state="connected"}'] == 1
    assert after['netshim_gateway_wireguard_handshakes_total{outcome="completed"}'] >= 1
    assert after['netshim_gateway_wireguard_bytes_total{direction="up"}'] > 0
    assert after['netshim_gateway_wireguard_bytes_total{direction="down"}'] > 0
    assert after['netshim_gateway_wireguard_flows_total{outcome="accepted",protocol="tcp"}'] == 1
    assert after['netshim_gateway_wireguard_flows_total{outcome="refused",protocol="tcp"}'] == 1
    # Per client: the one that connected, and the one that did not.
    client = wg.key_to_text(wireguard_go.public_key)
    handshakes = 'netshim_gateway_wireguard_peer_handshakes_total{outcome="completed",peer="%s"}'
    latest = 'netshim_gateway_wireguard_peer_latest_handshake_seconds{peer="%s"}'
    moved = 'netshim_gateway_wireguard_peer_bytes_total{direction="%s",peer="%s"}'
    assert after[handshakes % client] >= 1
    assert after[handshakes % idle_client] == 0
    assert before[latest % client] == 0
    assert started <= after[latest % client] <= time.time()
    assert after[latest % idle_client] == 0
    peer = server.device.peer(wireguard_go.public_key)
    assert peer is not None
    assert 0 < after[moved % ("up", client)] <= peer.rx_bytes
    assert 0 < after[moved % ("down", client)] <= peer.tx_bytes
    assert after[moved % ("up", idle_client)] == after[moved % ("down", idle_client)] == 0
