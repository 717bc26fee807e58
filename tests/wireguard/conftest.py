"""The WireGuard tests' fixture: the wireguard-go peer of tests/wireguard/wireguard_peer.py."""

from wireguard_peer import wireguard_go as wireguard_go

__all__ = ["wireguard_go"]
