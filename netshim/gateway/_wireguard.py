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
``DNS =`` line.  An IPv6 ``Address`` beside the IPv4 one carries IPv6 inside
the tunnel the same way: its network is the clients', the address stands
for ``::1``, and the DNS address is chosen by the same rule.

What the server did is exported as Prometheus metrics beside the gateway's
own (:meth:`WireGuardServer.register_metrics`): clients configured and with
live keys, handshakes, datagram bytes each way, datagrams dropped by reason,
and the clients' flows accepted and refused; and per client (labelled with
its public key, as ``wg show`` names peers) its handshakes, the wall-clock
time of its latest one and its datagram bytes each way.  The label's values
are the configured clients only, so their number is bounded by the file.
They are read from the protocol core's counters when scraped, so the data
path counts nothing more.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.abc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ..isolate import Addressing
from ..isolate._terminate import Terminator
from ..policy import Policy
from ..protocols.wireguard import (
    HandshakeCompleted,
    HandshakeFailed,
    WireGuardDevice,
    WireGuardEvent,
    WireGuardPeer,
    key_to_text,
)
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
        ours6 = [a for a in ours if isinstance(a, ipaddress.IPv6Interface)]
        if not ours4:
            raise ValueError("the WireGuard server's [Interface] needs an IPv4 Address")
        dns = [ipaddress.ip_address(d) for d in parsed.dns]
        gateway = ours4[0]
        gateway6 = ours6[0] if ours6 else None
        self.addressing = Addressing(
            program4=gateway,
            gateway4=gateway.ip,
            dns4=ipaddress.IPv4Address(_dns_address(gateway, dns)),
            program6=None,
            mtu=parsed.mtu,
        )
        if gateway6 is not None:
            self.addressing = dataclasses.replace(
                self.addressing,
                program6=gateway6,
                gateway6=gateway6.ip,
                dns6=ipaddress.IPv6Address(_dns_address(gateway6, dns)),
            )
        self.device = WireGuardDevice(parsed.private_key, mtu=parsed.mtu)
        self.handshakes = 0
        self.failed_handshakes = 0
        #: Per client's public key: handshakes completed and failed, and the
        #: wall-clock time (``time.time()``) its latest one completed.
        self.peer_handshakes: Counter[bytes] = Counter()
        self.peer_failed_handshakes: Counter[bytes] = Counter()
        self.peer_latest_handshake: dict[bytes, float] = {}
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
        self.link = WireGuardLink(
            self.device, transport, bind=(host, listen_port), on_event=self._count
        )
        self.terminator = Terminator(
            self.link, stack, policy=policy, addressing=self.addressing, refusal="reset"
        )

    @property
    def counters(self) -> Any:
        """The terminator's counters (connections accepted and refused, UDP flows, DNS)."""
        return self.terminator.counters

    def _count(self, event: WireGuardEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self.handshakes += 1
            self.peer_handshakes[event.public_key] += 1
            self.peer_latest_handshake[event.public_key] = time.time()
        elif isinstance(event, HandshakeFailed):
            self.failed_handshakes += 1
            self.peer_failed_handshakes[event.public_key] += 1

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Export this server's metrics in ``registry`` (the gateway's, for its ``/metrics``)."""
        registry.register(_WireGuardMetrics(self))

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


def _dns_address(
    gateway: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
    configured: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The name server's address in ``gateway``'s network: ``DNS =``'s if there, else the last."""
    network = gateway.network
    found = next(
        (d for d in configured if d in network and d != gateway.ip),
        network.broadcast_address - 1,
    )
    if found == gateway.ip or found not in network:
        raise ValueError(f"{network} is too small for a gateway and a DNS address")
    return found


class _WireGuardMetrics(Collector):
    """The server's counters as Prometheus metrics, read when scraped."""

    def __init__(self, server: WireGuardServer) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        server = self._server
        device = server.device
        peers = device.peers
        clients = GaugeMetricFamily(
            "netshim_gateway_wireguard_peers",
            "WireGuard clients: configured, and with live keys (a handshake in the last 180 s).",
            labels=["state"],
        )
        clients.add_metric(["configured"], len(peers))
        clients.add_metric(["connected"], sum(1 for peer in peers if peer.has_session))
        yield clients
        handshakes = CounterMetricFamily(
            "netshim_gateway_wireguard_handshakes",
            "WireGuard handshakes with clients, by outcome (failed: gave up after 90 s).",
            labels=["outcome"],
        )
        handshakes.add_metric(["completed"], server.handshakes)
        handshakes.add_metric(["failed"], server.failed_handshakes)
        yield handshakes
        moved = CounterMetricFamily(
            "netshim_gateway_wireguard_bytes",
            "WireGuard datagram bytes, by direction (up: from clients).",
            labels=["direction"],
        )
        moved.add_metric(["up"], sum(peer.rx_bytes for peer in peers))
        moved.add_metric(["down"], sum(peer.tx_bytes for peer in peers))
        yield moved
        dropped = CounterMetricFamily(
            "netshim_gateway_wireguard_dropped",
            "Datagrams and packets the WireGuard layer dropped, by reason "
            "(unknown peer, bad mac1, replayed counter, ...).",
            labels=["reason"],
        )
        for reason, count in sorted(device.dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped
        counters = server.counters
        flows = CounterMetricFamily(
            "netshim_gateway_wireguard_flows",
            "Flows WireGuard clients started, by protocol and outcome "
            "(refused: by the policy, or the destination failed).",
            labels=["protocol", "outcome"],
        )
        flows.add_metric(["tcp", "accepted"], counters.tcp_accepted)
        flows.add_metric(["tcp", "refused"], counters.tcp_refused)
        flows.add_metric(["udp", "accepted"], counters.udp_flows)
        flows.add_metric(["udp", "refused"], counters.udp_refused)
        flows.add_metric(["dns", "accepted"], counters.dns_queries)
        yield flows
        yield from self._per_peer(peers)

    def _per_peer(self, peers: list[WireGuardPeer]) -> Iterator[Metric]:
        server = self._server
        handshakes = CounterMetricFamily(
            "netshim_gateway_wireguard_peer_handshakes",
            "WireGuard handshakes with each client, by outcome (failed: gave up after 90 s).",
            labels=["peer", "outcome"],
        )
        latest = GaugeMetricFamily(
            "netshim_gateway_wireguard_peer_latest_handshake_seconds",
            "Unix time of each client's latest completed handshake (0: none yet).",
            labels=["peer"],
        )
        moved = CounterMetricFamily(
            "netshim_gateway_wireguard_peer_bytes",
            "WireGuard datagram bytes of each client, by direction (up: from the client).",
            labels=["peer", "direction"],
        )
        for peer in peers:
            key = peer.public_key
            name = key_to_text(key)
            handshakes.add_metric([name, "completed"], server.peer_handshakes[key])
            handshakes.add_metric([name, "failed"], server.peer_failed_handshakes[key])
            latest.add_metric([name], server.peer_latest_handshake.get(key, 0.0))
            moved.add_metric([name, "up"], peer.rx_bytes)
            moved.add_metric([name, "down"], peer.tx_bytes)
        yield handshakes
        yield latest
        yield moved
