"""The gateway as a WireGuard server: clients' flows ended and dialled again through the policy.

``netshim gateway --wireguard-port N --wireguard-config FILE`` accepts
standard WireGuard clients (wg-quick, wireguard-go, the phone apps).  FILE is
a ``wg-quick`` file from the server's side: ``[Interface]`` PrivateKey and
Address (the gateway's tunnel address, whose prefix is the clients'
network), one ``[Peer]`` per client with its PublicKey and AllowedIPs (its
tunnel address).  No packet is forwarded: the same
:class:`~netshim.isolate._terminate.Terminator` that serves
``netshim run --isolate`` runs IpStack on the WireGuard link, intercepts
every TCP connection and UDP flow the clients start, and dials each on the
gateway's stack through its :class:`~netshim.policy.Policy`, so a refused
destination never sees a packet and the client gets a reset.

Inside the tunnel the gateway's address stands for the machine's loopback
(reachable only where the policy allows ``127.0.0.1``) and the name server
is the ``[Interface]`` DNS address if it lies in the clients' network, else
the network's last usable address; clients put that address in their
``DNS =`` line.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import anyio
import anyio.abc

from ..isolate import Addressing
from ..isolate._terminate import Terminator
from ..policy import Policy
from ..protocols.wireguard import WireGuardDevice
from ..stack import Stack
from ..stacks.wireguard import WireGuardLink, parse_config

__all__ = ["WireGuardServer"]


class WireGuardServer:
    """Serves WireGuard clients on UDP ``port`` (of ``transport``), their flows onto ``stack``.

    ``config`` is the server's ``wg-quick`` file or its text; ``port``
    overrides its ListenPort.  :attr:`device` is the protocol core, for
    ``wg show``-like displays; :attr:`link` its UDP side.
    """

    def __init__(
        self,
        config: str | os.PathLike[str],
        *,
        stack: Stack,
        policy: Policy,
        port: int | None = None,
        host: str = "0.0.0.0",
        transport: Stack | None = None,
    ) -> None:
        text = str(config)
        if "[interface]" not in text.lower():
            with open(config, encoding="utf-8") as file:
                text = file.read()
        parsed = parse_config(text)
        ours = [ipaddress.ip_interface(a) for a in parsed.addresses]
        ours4 = [a for a in ours if isinstance(a, ipaddress.IPv4Interface)]
        if not ours4:
            raise ValueError("the WireGuard server's [Interface] needs an IPv4 Address")
        gateway = ours4[0]
        network = gateway.network
        dns = [ipaddress.ip_address(d) for d in parsed.dns]
        dns4 = next(
            (d for d in dns if d in network and d != gateway.ip),
            network.broadcast_address - 1,
        )
        if dns4 == gateway.ip:
            raise ValueError(f"{network} is too small for a gateway and a DNS address")
        self.addressing = Addressing(
            program4=gateway,
            gateway4=gateway.ip,
            dns4=ipaddress.IPv4Address(dns4),
            program6=None,
            mtu=parsed.mtu,
        )
        self.device = WireGuardDevice(parsed.private_key, mtu=parsed.mtu)
        for peer in parsed.peers:
            self.device.add_peer(
                peer.public_key,
                preshared_key=peer.preshared_key,
                allowed_ips=peer.allowed_ips,
                persistent_keepalive=peer.persistent_keepalive,
            )
        if transport is None:
            from ..stacks.host import HostStack

            transport = HostStack()
        listen_port = parsed.listen_port if port is None else port
        self.link = WireGuardLink(self.device, transport, bind=(host, listen_port))
        self.terminator = Terminator(
            self.link, stack, policy=policy, addressing=self.addressing, refusal="reset"
        )

    @property
    def counters(self) -> Any:
        """The terminator's counters (connections accepted and refused, UDP flows, DNS)."""
        return self.terminator.counters

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled; ``task_status.started()`` once the UDP port is bound."""
        try:
            await self.link.open()
            await self.terminator.run(task_status=task_status)
        finally:
            # Cancelled, the terminator's IpStack may not reach its link's aclose.
            with anyio.CancelScope(shield=True):
                await self.link.aclose()
