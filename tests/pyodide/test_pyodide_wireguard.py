"""WireGuard in real Pyodide under Node: WireGuardStack over the gateway's Wisp UDP to wireguard-go.

The browser has no UDP, so a page's WireGuard datagrams ride Wisp UDP streams
to netshim's gateway (CPython, on this machine), which sends them on to the
peer as its policy allows: here only the peer's own address and port.  The
peer is wireguard-go in a network namespace (tests/wireguard/wireguard_peer.py);
behind its kernel interface, on the tunnel address, the standard library's
HTTP server serves a file.  The script (scripts/wireguard_over_wisp.py) runs
the handshake and fetches that file through the tunnel, with Pyodide's
pure-Python crypto (tlslite-ng: Pyodide's own ``cryptography`` is only on its
CDN).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import random
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio.from_thread
import pytest
from pyodide_support import (
    DEPENDENCIES,
    ROOT,
    TLS_LIBRARIES,
    build_netshim_wheel,
    dependency_wheels,
    require_pyodide,
    result_of,
    run_in_pyodide,
)

from netshim.protocols import wireguard as wg


def _load_wireguard_fixtures() -> ModuleType:
    # The namespace and wireguard-go peer of the WireGuard tests, loaded by
    # path under a name of its own (tests/wireguard is not on sys.path here).
    path = ROOT / "tests" / "wireguard" / "wireguard_peer.py"
    spec = importlib.util.spec_from_file_location("wireguard_peer_fixtures", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


_fixtures = _load_wireguard_fixtures()
wireguard_go = _fixtures.wireguard_go
TUNNEL_CLIENT: str = _fixtures.TUNNEL_CLIENT
TUNNEL_SERVER: str = _fixtures.TUNNEL_SERVER
LISTEN_PORT: int = _fixtures.LISTEN_PORT

pytestmark = pytest.mark.peer("wireguard-go")

# Runs in the namespace: the standard library's HTTP server on the tunnel
# address, serving a directory; it logs each request (client address first).
_HTTP_SERVER = """
import functools, http.server, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[3])
server = http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), handler)
print("ready", flush=True)
server.serve_forever()
"""


@contextlib.contextmanager
def gateway_for(endpoint: tuple[str, int]) -> Iterator[str]:
    """netshim's gateway on loopback whose policy allows only ``endpoint``; its Wisp URL."""
    from netshim import HostStack
    from netshim.gateway import Gateway, GatewayConfig
    from netshim.policy import Policy

    policy = Policy(allow=[f"{endpoint[0]}:{endpoint[1]}"])
    gateway = Gateway(HostStack(), GatewayConfig(policy=policy))
    with anyio.from_thread.start_blocking_portal() as portal:
        future, _ = portal.start_task(functools.partial(gateway.serve, host="127.0.0.1", port=0))
        try:
            host, port = gateway.addresses["http"]
            yield f"ws://{host}:{port}/"
        finally:
            future.cancel()


@contextlib.contextmanager
def http_server_in(peer: Any, directory: Path) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    port = random.randrange(20000, 30000)
    process = subprocess.Popen(
        peer.exec("python3", "-c", _HTTP_SERVER, TUNNEL_SERVER, str(port), str(directory)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        yield port, process
    finally:
        process.terminate()
        process.wait(10)


def test_pyodide_wireguard_over_wisp_to_wireguard_go(
    wireguard_go: Any,
    tmp_path: Path,
) -> None:
    require_pyodide()
    wheels = [
        build_netshim_wheel(tmp_path / "wheel"),
        # tlslite-ng (with ecdsa and six) is the crypto; sniffio because
        # IpStack's driver still asks it which event loop runs.
        *dependency_wheels(DEPENDENCIES + TLS_LIBRARIES + ("sniffio",)),
    ]
    body = f"through the tunnel from wasm {secrets.token_hex(8)}\n"
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "hello.txt").write_text(body)
    private = wg.generate_private_key()
    wireguard_go.add_client(wg.public_key(private))
    host, port = wireguard_go.endpoint
    config = _fixtures.client_config(wireguard_go, private)
    with (
        http_server_in(wireguard_go, tmp_path / "site") as (http_port, server),
        gateway_for(wireguard_go.endpoint) as wisp,
    ):
        completed = run_in_pyodide(
            "wireguard_over_wisp.py",
            wheels,
            env={
                "NETSHIM_WISP_URL": wisp,
                "NETSHIM_WG_CONFIG": config,
                "NETSHIM_HTTP_HOST": TUNNEL_SERVER,
                "NETSHIM_HTTP_PORT": str(http_port),
            },
            timeout=300,
        )
        handshakes = wireguard_go.latest_handshakes()
        server.terminate()
        _, log = server.communicate(timeout=10)
    result = result_of(completed)
    print(f"\nhandshake in Pyodide over Wisp: {result['handshake_ms']} ms")
    assert result["platform"] == "emscripten"
    assert result["cryptography_installed"] is False
    assert result["backend"] == "tlslite-ng"
    assert result["stack_stream"] == ["HTTP/1.0 200 OK", body]
    assert result["asyncio_peer"] == [TUNNEL_SERVER, http_port]
    assert result["asyncio"] == ["HTTP/1.0 200 OK", body]
    assert "HandshakeCompleted" in result["events"]
    assert result["dropped"] == {}
    # The peer's address as the tunnel sees it: the endpoint, through the gateway.
    assert result["peer_endpoint"] == [host, port]
    assert result["rx_bytes"] > len(body)
    # wireguard-go completed the handshake with this key; the kernel server
    # saw both requests come from the tunnel address.
    assert handshakes.get(wg.key_to_text(wg.public_key(private)), 0) > 0
    requests = [line for line in log.splitlines() if "GET /hello.txt" in line]
    assert len(requests) == 2
    assert all(line.startswith(TUNNEL_CLIENT) for line in requests)
