"""A traffic observer that keeps what a failing test's report should show.

:class:`TrafficSummary` watches a :class:`~netshim.VirtualNetwork` and
remembers, compactly, every TCP connection (endpoints, bytes each way, how it
ended), refused connection attempts, UDP flows, and DNS questions with their
answers (decoded with dnslib from the datagrams to and from port 53).
:meth:`TrafficSummary.render` turns that into a few lines of text, one per
connection, flow or lookup, for the report of a failed test.

It keeps counters and at most :data:`MAX_ITEMS` entries of each kind, not the
bytes, so that a test moving gigabytes does not hold them in memory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from dnslib import QTYPE, RCODE, DNSRecord

from .._addresses import Address, format_address

__all__ = ["MAX_ITEMS", "TrafficSummary"]

#: Entries kept per kind (connections, refusals, flows, lookups); a report
#: longer than this stops being read, and the pcap option has the rest.
MAX_ITEMS = 200

DNS_PORT = 53


@dataclass
class _Connection:
    client: Address
    server: Address
    sent: int = 0
    received: int = 0
    client_fin: bool = False
    server_fin: bool = False
    reset_by: str | None = None


@dataclass
class _Flow:
    datagrams: int = 0
    size: int = 0


@dataclass
class _Lookup:
    client: Address
    question: str
    answer: str | None = None


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


class TrafficSummary:
    """A :class:`~netshim._traffic.TrafficObserver` keeping a summary for reports.

    ``name_of(ip)`` names the virtual host owning an address, or ``None``.
    """

    def __init__(self, name_of: Callable[[str], str | None] = lambda ip: None) -> None:
        self._name_of = name_of
        self._lock = threading.Lock()
        self.connections: dict[int, _Connection] = {}
        self.refused: dict[tuple[Address, Address], int] = {}
        self.flows: dict[tuple[Address, Address], _Flow] = {}
        self.lookups: dict[tuple[Address, int], _Lookup] = {}
        self.dropped = 0

    # -- the observer protocol ---------------------------------------------------

    def tcp_open(self, conn_id: int, client: Address, server: Address) -> None:
        with self._lock:
            if len(self.connections) >= MAX_ITEMS:
                self.dropped += 1
                return
            self.connections[conn_id] = _Connection(client, server)

    def tcp_refused(self, client: Address, server: Address) -> None:
        with self._lock:
            key = (client, server)
            if key in self.refused or len(self.refused) < MAX_ITEMS:
                self.refused[key] = self.refused.get(key, 0) + 1
            else:
                self.dropped += 1

    def tcp_data(self, conn_id: int, from_client: bool, data: bytes) -> None:
        connection = self.connections.get(conn_id)
        if connection is None:
            return
        if from_client:
            connection.sent += len(data)
        else:
            connection.received += len(data)

    def tcp_fin(self, conn_id: int, from_client: bool) -> None:
        connection = self.connections.get(conn_id)
        if connection is not None:
            if from_client:
                connection.client_fin = True
            else:
                connection.server_fin = True

    def tcp_reset(self, conn_id: int, from_client: bool) -> None:
        connection = self.connections.get(conn_id)
        if connection is not None and connection.reset_by is None:
            connection.reset_by = "client" if from_client else "server"

    def udp_datagram(self, source: Address, destination: Address, data: bytes) -> None:
        with self._lock:
            if destination[1] == DNS_PORT and self._dns_question(source, data):
                return
            if source[1] == DNS_PORT and self._dns_answer(destination, data):
                return
            key = (source, destination)
            flow = self.flows.get(key)
            if flow is None:
                if len(self.flows) >= MAX_ITEMS:
                    self.dropped += 1
                    return
                flow = self.flows[key] = _Flow()
            flow.datagrams += 1
            flow.size += len(data)

    def close(self) -> None:
        pass

    # -- DNS -------------------------------------------------------------------------

    def _dns_question(self, client: Address, data: bytes) -> bool:
        try:
            message = DNSRecord.parse(data)
        except Exception:
            # Not DNS after all (or a broken message): count it as a plain datagram.
            return False
        if message.header.qr or not message.questions:
            return False
        question = message.questions[0]
        name = str(question.qname).rstrip(".") or "."
        text = f"{name} {QTYPE.get(question.qtype, str(question.qtype))}"
        key = (client, message.header.id)
        if key not in self.lookups and len(self.lookups) >= MAX_ITEMS:
            self.dropped += 1
        else:
            self.lookups.setdefault(key, _Lookup(client, text))
        return True

    def _dns_answer(self, client: Address, data: bytes) -> bool:
        try:
            message = DNSRecord.parse(data)
        except Exception:
            return False
        if not message.header.qr:
            return False
        lookup = self.lookups.get((client, message.header.id))
        if lookup is None:
            return True
        rcode = message.header.rcode
        if rcode != RCODE.NOERROR:
            lookup.answer = str(RCODE.get(rcode, str(rcode)))
        elif message.rr:
            lookup.answer = ", ".join(
                f"{QTYPE.get(record.rtype, str(record.rtype))} {str(record.rdata).rstrip('.')}"
                if record.rtype != message.questions[0].qtype
                else str(record.rdata).rstrip(".")
                for record in message.rr
            )
        else:
            lookup.answer = "no records"
        return True

    # -- the report ----------------------------------------------------------------------

    def _endpoint(self, address: Address) -> str:
        name = self._name_of(address[0])
        text = format_address(address)
        return f"{text} ({name})" if name else text

    def render(self) -> str:
        """The summary as text, one line per item; ``""`` when nothing crossed the network."""
        lines: list[str] = []
        with self._lock:
            connections = list(self.connections.values())
            refused = list(self.refused.items())
            flows = list(self.flows.items())
            lookups = list(self.lookups.values())
        for lookup in lookups:
            answer = lookup.answer or "no answer"
            lines.append(f"DNS   {lookup.question} -> {answer}")
        for connection in connections:
            if connection.reset_by is not None:
                end = f"reset by {connection.reset_by}"
            elif connection.client_fin and connection.server_fin:
                end = "closed"
            elif connection.client_fin or connection.server_fin:
                end = f"half-closed by {'client' if connection.client_fin else 'server'}"
            else:
                end = "open"
            ends = f"{self._endpoint(connection.client)} -> {self._endpoint(connection.server)}"
            lines.append(
                f"TCP   {ends}: {connection.sent} B sent, {connection.received} B received, {end}"
            )
        for (client, server), count in refused:
            lines.append(
                f"TCP   {self._endpoint(client)} -> {self._endpoint(server)}: "
                f"refused ({_plural(count, 'attempt')})"
            )
        for (source, destination), flow in flows:
            lines.append(
                f"UDP   {self._endpoint(source)} -> {self._endpoint(destination)}: "
                f"{_plural(flow.datagrams, 'datagram')}, {flow.size} B"
            )
        if self.dropped:
            lines.append(f"... and {self.dropped} more not kept (use --netshim-pcap for all)")
        return "\n".join(lines)
