"""The network a test gets from the ``netshim_network`` fixture.

:class:`TestNetwork` is a :class:`~netshim.VirtualNetwork` with one host,
``client``, that the test process runs as, plus what tests need in one line:

* :meth:`TestNetwork.serve` and :meth:`TestNetwork.serve_udp` run a server as
  a virtual host (created on first use);
* the fault methods take the client as the default second host, so
  ``net.partition("db")`` cuts the test off from ``db`` and
  ``net.set_link("web", latency=0.2)`` slows the test's traffic to ``web``;
* :meth:`TestNetwork.run_isolated` runs a subprocess (``curl``, ``psql``, a
  C-extension client) confined to a network namespace whose only way out is
  this network, as the client host (``netshim run --isolate``);
* :meth:`TestNetwork.configure` applies the ``hosts``, ``records`` and
  ``links`` a marker or the ``netshim_options`` fixture gives;
* :attr:`TestNetwork.traffic` summarises what crossed it, for the report of
  a failing test.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..stacks.virtual import LinkConditions, VirtualHost, VirtualNetwork
from ._serve import Server, UdpHandler, start_server, start_udp_server
from ._summary import TrafficSummary

__all__ = ["TestNetwork"]

HostRef = VirtualHost | str

_LINK_OPTIONS = frozenset({"latency", "jitter", "bandwidth", "loss", "duplicate", "reorder"})


class TestNetwork(VirtualNetwork):
    """A VirtualNetwork prepared for one test (see the module documentation)."""

    # Not a test class, whatever its name says.
    __test__ = False

    def __init__(self, seed: int = 0, *, client: str = "client", **options: Any) -> None:
        super().__init__(seed, **options)
        self.client = self.add_host(client)
        self.traffic = TrafficSummary(self._name_of)
        self.add_observer(self.traffic)
        self.servers: list[Server] = []

    def _name_of(self, ip: str) -> str | None:
        try:
            owner = self.owner_of(ipaddress.ip_address(ip))
        except ValueError:
            return None
        return owner.name if owner is not None else None

    def ensure_host(self, host: HostRef, addresses: Iterable[str] | None = None) -> VirtualHost:
        """The host ``host``, added (with ``addresses``, else the next free ones) if missing."""
        if isinstance(host, VirtualHost):
            return host
        try:
            return self.host(host)
        except KeyError:
            return self.add_host(host, None if addresses is None else list(addresses))

    # -- servers -------------------------------------------------------------------

    def serve(self, host: HostRef, port: int, app: Any, *, ssl: Any = None) -> Server:
        """Run ``app`` as ``host`` (added if missing) on ``port``, every address, both families.

        ``app`` is an aiohttp ``Application``, an ASGI app, an asyncio
        ``(reader, writer)`` or anyio ``(stream)`` handler, a WSGI app, or a
        ``socketserver`` request handler class; ``ssl`` an ``SSLContext``
        for TLS.  The server runs in a thread until the test ends (or
        ``server.stop()``); returns once it listens.
        """
        target = self.ensure_host(host)
        server = start_server(target, target.name, port, app, ssl=ssl)
        self.servers.append(server)
        return server

    def serve_udp(self, host: HostRef, port: int, handler: UdpHandler) -> Server:
        """Answer datagrams on ``host:port``: ``handler(data, address)`` returns a reply or None."""
        target = self.ensure_host(host)
        server = start_udp_server(target, target.name, port, handler)
        self.servers.append(server)
        return server

    def run_isolated(
        self,
        argv: Sequence[str],
        *,
        host: HostRef | None = None,
        policy: Any = None,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` confined, as ``host`` (the client by default), on this network.

        The program and its children can reach nothing but this network
        (see :mod:`netshim.isolate`): ``curl http://api.internal/`` reaches
        :meth:`serve`'s server by its name.  ``policy`` defaults to allowing
        private addresses (a virtual network's are private); metadata
        addresses stay refused.  Returns its exit status and output like
        ``subprocess.run(..., capture_output=True)``; after ``timeout``
        seconds the program is killed and ``TimeoutError`` raised.
        """
        import anyio

        from ..isolate import run
        from ..policy import Policy
        from ..shim._engine import get_engine

        stack = self.client if host is None else self.ensure_host(host)
        chosen = policy if policy is not None else Policy(allow_private=True)
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        captured: dict[int, bytes] = {}

        def drain(fd: int) -> None:
            with os.fdopen(fd, "rb") as reader:
                captured[fd] = reader.read()

        readers = [
            threading.Thread(target=drain, args=(fd,), daemon=True) for fd in (out_read, err_read)
        ]
        for reader in readers:
            reader.start()

        async def confined() -> int:
            with anyio.fail_after(timeout):
                return await run(
                    list(argv),
                    stack=stack,
                    policy=chosen,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out_write,
                    stderr=err_write,
                )

        try:
            status = get_engine().call(confined)
        finally:
            os.close(out_write)
            os.close(err_write)
            for reader in readers:
                reader.join(10)
        return subprocess.CompletedProcess(
            list(argv), status, captured.get(out_read, b""), captured.get(err_read, b"")
        )

    def stop_servers(self) -> None:
        """Stop every server :meth:`serve` started, newest first."""
        while self.servers:
            self.servers.pop().stop()

    # -- faults, with the test's own host as the default peer ----------------------

    def set_link(
        self,
        a: HostRef,
        b: HostRef | None = None,
        *,
        latency: float = 0.0,
        jitter: float = 0.0,
        bandwidth: float | None = None,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
    ) -> LinkConditions:
        """:meth:`VirtualNetwork.set_link`; without ``b``, between ``a`` and the client."""
        return super().set_link(
            a,
            self.client if b is None else b,
            latency=latency,
            jitter=jitter,
            bandwidth=bandwidth,
            loss=loss,
            duplicate=duplicate,
            reorder=reorder,
        )

    def partition(self, a: HostRef, b: HostRef | None = None) -> None:
        """:meth:`VirtualNetwork.partition`; without ``b``, between ``a`` and the client."""
        super().partition(a, self.client if b is None else b)

    def heal(self, a: HostRef | None = None, b: HostRef | None = None) -> None:
        """:meth:`VirtualNetwork.heal`; ``heal(a)`` heals ``a`` and the client, ``heal()`` all."""
        if a is not None and b is None:
            b = self.client
        super().heal(a, b)

    def reset_after(self, a: HostRef, b: HostRef | None = None, nbytes: int | None = None) -> None:
        """:meth:`VirtualNetwork.reset_after`; without ``b``, between ``a`` and the client.

        ``net.reset_after("web", nbytes=100)`` resets each new connection to
        ``web`` once 100 bytes crossed it; ``nbytes=None`` turns it off.
        """
        super().reset_after(a, self.client if b is None else b, nbytes)

    # -- configuration from markers and fixtures --------------------------------------

    def configure(
        self,
        *,
        hosts: Iterable[str] | Mapping[str, Iterable[str]] = (),
        records: Mapping[str, Any] | Iterable[tuple[str, str, str]] = (),
        links: Mapping[Any, Mapping[str, Any]] = {},
    ) -> None:
        """Add hosts, DNS records and link conditions.

        ``hosts``: names, or ``{name: [addresses]}``.  ``records``:
        ``{name: value or [values]}`` (an IP gives A or AAAA, anything else a
        CNAME), or ``(name, type, value)`` tuples.  ``links``: ``{(a, b):
        {"latency": ...}}`` or ``{a: {...}}`` for ``a`` and the client; hosts
        they name are added if missing.
        """
        if isinstance(hosts, Mapping):
            for name, addresses in hosts.items():
                self.ensure_host(name, addresses)
        else:
            for name in hosts:
                self.ensure_host(name)
        if isinstance(records, Mapping):
            for name, values in records.items():
                for value in [values] if isinstance(values, str) else values:
                    self.add_record(name, _record_type(value), value)
        else:
            for record in records:
                if not (isinstance(record, tuple) and len(record) == 3):
                    raise TypeError(f"a netshim record is (name, type, value), not {record!r}")
                self.add_record(*record)
        for pair, conditions in links.items():
            unknown = set(conditions) - _LINK_OPTIONS
            if unknown:
                raise TypeError(
                    f"unknown link option(s) {sorted(unknown)} for {pair!r}: "
                    f"one of {sorted(_LINK_OPTIONS)}"
                )
            if isinstance(pair, tuple):
                a, b = (self.ensure_host(name) for name in pair)
            else:
                a, b = self.ensure_host(pair), self.client
            self.set_link(a, b, **conditions)


def _record_type(value: str) -> str:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return "CNAME"
    return "A" if ip.version == 4 else "AAAA"
