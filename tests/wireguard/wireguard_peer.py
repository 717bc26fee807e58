"""A wireguard-go peer in a network namespace of its own, reached from the test over a veth pair.

The namespace holds :attr:`WireGuardPeerNamespace.device` (wireguard-go's
user-space WireGuard behind a kernel TUN device, configured with ``wg set``)
at 10.99.0.1/24 inside the tunnel, and one end of a veth pair on a random
/30 of 100.64.0.0/10 so two test runs never share addresses; the other end
stays in the test's namespace, where the WireGuardStack's UDP socket lives.
Each test gets fresh keys for its client: :meth:`WireGuardPeerNamespace.add_client`
registers one, and :func:`client_stack` makes the WireGuardStack that is that client.

The tests import this module by its own name (conftest.py only hands pytest
the fixture): with several ``conftest.py`` under ``tests/``, the module named
``conftest`` is whichever pytest imported last.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from netshim.protocols import wireguard as wg
from netshim.protocols.wireguard import CryptoBackend, Timers, WireGuardEvent
from netshim.stacks.wireguard import PeerConfig, WireGuardStack
from netshim.testing import require_peer

TUNNEL_SERVER = "10.99.0.1"
TUNNEL_CLIENT = "10.99.0.2"
TUNNEL_NETWORK = "10.99.0.0/24"
LISTEN_PORT = 51820


def run(*command: str, stdin: str | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, input=stdin, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{command}: {result.returncode} {result.stderr.strip()}")
    return result.stdout


@dataclass
class WireGuardPeerNamespace:
    name: str
    outer_ip: str
    inner_ip: str
    private_key: bytes
    public_key: bytes
    #: The interface's name: unique, since wireguard-go's control socket
    #: (/var/run/wireguard/NAME.sock) is shared by every namespace.
    device: str

    @property
    def endpoint(self) -> tuple[str, int]:
        return self.inner_ip, LISTEN_PORT

    def exec(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *command]

    def wg(self, *arguments: str) -> str:
        return run(*self.exec("wg", *arguments))

    def add_client(
        self,
        public_key: bytes,
        *,
        endpoint: tuple[str, int] | None = None,
        preshared_key: bytes | None = None,
    ) -> None:
        """Make ``public_key`` the interface's only peer, at 10.99.0.2/32."""
        for old in self.wg("show", self.device, "peers").split():
            self.wg("set", self.device, "peer", old, "remove")
        arguments = ["set", self.device, "peer", wg.key_to_text(public_key)]
        arguments += ["allowed-ips", f"{TUNNEL_CLIENT}/32"]
        if endpoint is not None:
            arguments += ["endpoint", f"{endpoint[0]}:{endpoint[1]}"]
        if preshared_key is not None:
            path = f"/tmp/{self.name}.psk"
            with open(path, "w") as file:
                file.write(wg.key_to_text(preshared_key))
            arguments += ["preshared-key", path]
        self.wg(*arguments)

    def latest_handshakes(self) -> dict[str, int]:
        lines = self.wg("show", self.device, "latest-handshakes").split("\n")
        return {k: int(v) for k, v in (line.split("\t") for line in lines if line)}


def client_stack(
    peer: WireGuardPeerNamespace,
    *,
    private: bytes | None = None,
    register: bool = True,
    server_key: bytes | None = None,
    dial: bool = True,
    preshared_key: bytes | None = None,
    events: list[WireGuardEvent] | None = None,
    timers: Timers | None = None,
    dns: tuple[str, ...] = (),
    crypto: CryptoBackend | None = None,
) -> WireGuardStack:
    """A WireGuardStack at TUNNEL_CLIENT whose one peer is ``peer``.

    Its key is ``private`` (a new one if not given), registered with ``peer``
    unless ``register`` is false; ``server_key`` stands in for the peer's
    public key and ``events`` collects the stack's events.  Without ``dial``
    the stack does not know the peer's endpoint: it learns it from the
    peer's initiation (see :func:`register_to_be_called`).
    """
    private = private or wg.generate_private_key()
    if register:
        peer.add_client(wg.public_key(private, crypto=crypto), preshared_key=preshared_key)
    return WireGuardStack(
        private,
        addresses=[f"{TUNNEL_CLIENT}/32"],
        peers=[
            PeerConfig(
                public_key=server_key or peer.public_key,
                allowed_ips=(TUNNEL_NETWORK,),
                endpoint=peer.endpoint if dial else None,
                preshared_key=preshared_key,
            )
        ],
        dns=dns,
        timers=timers,
        on_event=events.append if events is not None else None,
        crypto=crypto,
    )


def client_config(peer: WireGuardPeerNamespace, private: bytes) -> str:
    """The wg-quick file of a client at TUNNEL_CLIENT (key ``private``) of ``peer`` alone."""
    host, port = peer.endpoint
    return (
        f"[Interface]\nPrivateKey = {wg.key_to_text(private)}\nAddress = {TUNNEL_CLIENT}/32\n\n"
        f"[Peer]\nPublicKey = {wg.key_to_text(peer.public_key)}\n"
        f"AllowedIPs = {TUNNEL_NETWORK}\nEndpoint = {host}:{port}\n"
    )


async def register_to_be_called(peer: WireGuardPeerNamespace, stack: WireGuardStack) -> None:
    """Open ``stack``'s UDP socket and register its key with ``peer`` at that address.

    ``peer`` then initiates the handshake when it has something to send to
    TUNNEL_CLIENT.
    """
    await stack.link.open()
    local = stack.link.local_address
    assert local is not None
    peer.add_client(stack.device.public_key, endpoint=(peer.outer_ip, local[1]))


@pytest.fixture(scope="module")
def wireguard_go() -> Iterator[WireGuardPeerNamespace]:
    require_peer("wireguard-go")
    require_peer("wg")
    require_peer("ip")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = f"{os.getpid() % 100000}{random.randrange(100)}"
    name = f"netshim-wg-{tag}"
    outer, inner = f"nswg{tag}o"[:15], f"nswg{tag}i"[:15]
    device = f"wgt{tag}"[:15]
    block = random.randrange(1 << 20) * 4
    base = (100 << 24) | (64 << 16) | (block & 0x3FFFFC)
    outer_ip = ".".join(str((base + 1) >> s & 255) for s in (24, 16, 8, 0))
    inner_ip = ".".join(str((base + 2) >> s & 255) for s in (24, 16, 8, 0))
    private = wg.generate_private_key()
    process: subprocess.Popen[bytes] | None = None
    run("ip", "netns", "add", name)
    try:
        run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        run("ip", "link", "set", inner, "netns", name)
        run("ip", "addr", "add", f"{outer_ip}/30", "dev", outer)
        run("ip", "link", "set", outer, "up")
        run("ip", "-n", name, "addr", "add", f"{inner_ip}/30", "dev", inner)
        run("ip", "-n", name, "link", "set", inner, "up")
        run("ip", "-n", name, "link", "set", "lo", "up")
        process = subprocess.Popen(
            ["ip", "netns", "exec", name, "wireguard-go", "-f", device],
            env={**os.environ, "WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            if (
                subprocess.run(
                    ["ip", "-n", name, "link", "show", device], capture_output=True, check=False
                ).returncode
                == 0
            ):
                break
            time.sleep(0.05)
        key_path = f"/tmp/{name}.key"
        with open(key_path, "w") as file:
            file.write(wg.key_to_text(private))
        run("ip", "netns", "exec", name, "wg", "set", device, "private-key", key_path,
            "listen-port", str(LISTEN_PORT))  # fmt: skip
        os.unlink(key_path)
        run("ip", "-n", name, "addr", "add", f"{TUNNEL_SERVER}/24", "dev", device)
        run("ip", "-n", name, "link", "set", device, "mtu", "1420", "up")
        yield WireGuardPeerNamespace(
            name, outer_ip, inner_ip, private, wg.public_key(private), device
        )
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        subprocess.run(["ip", "link", "del", outer], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        for suffix in (".key", ".psk"):
            if os.path.exists(f"/tmp/{name}{suffix}"):
                os.unlink(f"/tmp/{name}{suffix}")
