"""What the tunnel tests add to tests/transfer_targets.py: the conformance checks a
tunnel can pass, and the wisp-js server as a peer.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import anyio
from transfer_targets import LOOPBACK as LOOPBACK
from transfer_targets import NODE_PEERS as NODE_PEERS
from transfer_targets import BulkTarget as BulkTarget
from transfer_targets import Transfer as Transfer
from transfer_targets import bulk_exchange as bulk_exchange
from transfer_targets import bulk_target as bulk_target
from transfer_targets import free_port as free_port
from transfer_targets import running_gateway as running_gateway
from transfer_targets import udp_echo as udp_echo
from transfer_targets import wait_for_port as wait_for_port

from netshim import HostStack as HostStack
from netshim import Stack, WispStack
from netshim.testing import CHECKS, StackPair
from netshim.transports.websocket import ClientWebSocket

#: Checks of the conformance kit that a tunnel can pass.  Left out, because a
#: tunnel cannot answer them: local addresses (they are the server's),
#: half-close (Wisp and websockify have none), and UDP sources and
#: ECONNREFUSED (the server's UDP socket is the one that sees them).
TUNNEL_CHECKS = (
    "tcp_echo_both_ways",
    "tcp_bulk_integrity",
    "tcp_abort_resets_peer",
    "tcp_closed_resource",
    "tcp_refused",
    "bad_ports",
    "udp_size_limit",
    "getaddrinfo_numeric",
)


async def run_checks(client: Stack, names: Iterable[str] = TUNNEL_CHECKS) -> None:
    """Run the named conformance checks with ``client`` connecting to the host network."""
    for name in names:
        pair = StackPair(HostStack(), client, "127.0.0.1", "0.0.0.0")
        try:
            with anyio.fail_after(30):
                await CHECKS[name](pair)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc


def node_program(script: str) -> list[str]:
    """``node`` and one of the scripts in tests/peers/node, failing or skipping as peers do."""
    import pytest

    from netshim.testing import REQUIRE_PEERS_VARIABLE, require_peer

    node = require_peer("node")
    if not (NODE_PEERS / "node_modules" / "@mercuryworkshop" / "wisp-js").is_dir():
        message = f"run 'npm ci' in {NODE_PEERS} to install the Node peers"
        if os.environ.get(REQUIRE_PEERS_VARIABLE) == "1":
            pytest.fail(message)
        pytest.skip(message)
    return [node, str(NODE_PEERS / script)]


@asynccontextmanager
async def wisp_js_server(**settings: object) -> AsyncIterator[str]:
    """The wisp-js server on loopback; yields its ``wisp://`` URL."""
    import json

    command = [*node_program("wisp_server.mjs"), json.dumps(settings)]
    async with await anyio.open_process(command) as process:
        try:
            assert process.stdout is not None
            line = b""
            with anyio.fail_after(20):
                while not line.endswith(b"\n"):
                    line += await process.stdout.receive(1)
            port = json.loads(line)["port"]
            yield f"wisp://127.0.0.1:{port}/"
        finally:
            process.kill()


def pattern(size: int) -> bytes:
    """``size`` bytes of a 251-byte cycle: a byte lost, repeated or moved shows."""
    cycle = bytes(range(251))
    return (cycle * (size // 251 + 1))[:size]


def websocket_of(stack: WispStack) -> ClientWebSocket:
    """The WebSocket of ``stack``'s one session (its host connection's client side)."""
    (session,) = stack._sessions.values()
    websocket = session.ws
    assert isinstance(websocket, ClientWebSocket)
    return websocket
