"""Shared pieces of the compatibility suite: the installed network, TLS material, threads.

Every compat test installs a fresh VirtualNetwork with ``web.internal``
(10.0.0.2, fd00::2) and ``client`` (10.0.0.3, fd00::3), runs a server of an
unmodified library as ``web.internal`` and a client of another as
``client``, and checks what crossed the virtual wire both ways.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trustme

from netshim import VirtualHost, VirtualNetwork
from netshim._addresses import Address

CLIENT_ADDRESSES = ("10.0.0.3", "fd00::3", "::ffff:10.0.0.3")
WEB_ADDRESSES = ("10.0.0.2", "fd00::2", "::ffff:10.0.0.2")


@dataclass
class Traffic:
    """A traffic observer: what crossed the virtual network, as its segments."""

    opened: list[tuple[Address, Address]] = field(default_factory=list)
    tcp_bytes: int = 0
    datagrams: int = 0

    def tcp_open(self, conn_id: int, client: Address, server: Address) -> None:
        self.opened.append((client, server))

    def tcp_refused(self, client: Address, server: Address) -> None:
        pass

    def tcp_data(self, conn_id: int, from_client: bool, data: bytes) -> None:
        self.tcp_bytes += len(data)

    def tcp_fin(self, conn_id: int, from_client: bool) -> None:
        pass

    def tcp_reset(self, conn_id: int, from_client: bool) -> None:
        pass

    def udp_datagram(self, source: Address, destination: Address, data: bytes) -> None:
        self.datagrams += 1

    def close(self) -> None:
        pass


@dataclass
class Installed:
    """The installed network; ``traffic`` is set when an observer watches it.

    Watched connections move through the engine's pumps; unwatched ones
    between two in-process endpoints are joined on one socketpair.  The
    suite runs both ways.
    """

    net: VirtualNetwork
    web: VirtualHost
    client: VirtualHost
    traffic: Traffic | None = None


@dataclass
class Tls:
    """A test authority, a server context for ``web.internal`` and a trusting client context."""

    authority: trustme.CA
    server: ssl.SSLContext
    client: ssl.SSLContext
    ca_file: Path


def make_tls(directory: Path) -> Tls:
    authority = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("web.internal", "10.0.0.2").configure_cert(server)
    client = ssl.create_default_context()
    authority.configure_trust(client)
    ca_file = directory / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    return Tls(authority, server, client, ca_file)


@contextmanager
def in_thread(target: Callable[[], object], timeout: float = 10) -> Iterator[threading.Thread]:
    """Run ``target`` in a thread for the block; re-raise its failure; insist that it ends."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        thread.join(timeout)
    assert not thread.is_alive(), "the thread did not finish"
    if errors:
        raise errors[0]
