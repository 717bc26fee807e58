"""What the gateway reports: Prometheus metrics and one log line per stream.

Each :class:`Metrics` has its own registry, so that several gateways in one
process (tests, benchmarks) do not collide in prometheus-client's global one.
Stream log lines are ``logfmt`` (``key=value``) on the ``netshim.gateway``
logger, one per stream when it ends, so that a log shipper can index them
without a parser of its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .._addresses import format_address

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "StreamRecord", "logger"]

logger = logging.getLogger("netshim.gateway")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.connections = Gauge(
            "netshim_gateway_connections",
            "Client connections open now, by protocol.",
            ["protocol"],
            registry=self.registry,
        )
        self.connections_total = Counter(
            "netshim_gateway_accepted_connections",
            "Client connections accepted, by protocol.",
            ["protocol"],
            registry=self.registry,
        )
        self.streams = Gauge(
            "netshim_gateway_streams",
            "Streams open now, by protocol and transport.",
            ["protocol", "transport"],
            registry=self.registry,
        )
        self.streams_closed = Counter(
            "netshim_gateway_streams_closed",
            "Streams ended, by protocol and close reason.",
            ["protocol", "reason"],
            registry=self.registry,
        )
        self.bytes = Counter(
            "netshim_gateway_stream_bytes",
            "Payload bytes moved, by direction (up: client to destination).",
            ["direction"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "netshim_gateway_policy_refusals",
            "Destinations the policy refused, by protocol.",
            ["protocol"],
            registry=self.registry,
        )
        self.internal_errors = Counter(
            "netshim_gateway_internal_errors",
            "Connections or streams ended by an unexpected exception, by front "
            "(each also logged as an error).",
            ["front"],
            registry=self.registry,
        )
        self.bad_requests = Counter(
            "netshim_gateway_bad_http_requests",
            "HTTP requests answered with an error before any protocol started "
            "(malformed, too large, too slow).",
            registry=self.registry,
        )
        self.refused_connections = Counter(
            "netshim_gateway_refused_connections",
            "Client connections closed at once for a connection limit, by front.",
            ["front"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "netshim_gateway_auth_failures",
            "Failed authentications, by protocol.",
            ["protocol"],
            registry=self.registry,
        )

        self._bytes_up = self.bytes.labels("up")
        self._bytes_down = self.bytes.labels("down")
        # The children of the per-stream metrics, by label values: labels()
        # takes a lock and builds its key on every call, a good part of what
        # counting a short stream cost (benchmarks/gateway.py, connect latency).
        self._open: dict[tuple[str, str], Gauge] = {}
        self._closed: dict[tuple[str, str], Counter] = {}

    def stream_opened(self, record: StreamRecord) -> None:
        """Count a stream that is now open."""
        _child(self._open, self.streams, record.protocol, record.transport).inc()

    def stream_ended(self, record: StreamRecord) -> None:
        """Count a stream that :meth:`stream_opened` counted, now ended, and log its line."""
        _child(self._open, self.streams, record.protocol, record.transport).dec()
        _child(self._closed, self.streams_closed, record.protocol, record.reason).inc()
        if record.up:
            self._bytes_up.inc(record.up)
        if record.down:
            self._bytes_down.inc(record.down)
        if logger.isEnabledFor(logging.INFO):
            logger.info(record.line())

    def render(self) -> bytes:
        return generate_latest(self.registry)


MetricT = TypeVar("MetricT", Counter, Gauge)


def _child(cache: dict[tuple[str, str], MetricT], metric: MetricT, a: str, b: str) -> MetricT:
    """``metric.labels(a, b)``, kept in ``cache`` after the first call."""
    child = cache.get((a, b))
    if child is None:
        child = cache[a, b] = metric.labels(a, b)
    return child


def _loggable(text: str) -> str:
    """``text`` as is when it is plain ASCII, else quoted with escapes.

    Hosts come from remote clients: a newline or a control character written
    raw would forge or garble log lines.
    """
    if text.isascii() and text.isprintable() and " " not in text:
        return text
    return ascii(text)


@dataclass(slots=True)
class StreamRecord:
    """What the log line of one stream says."""

    protocol: str
    client: tuple[str, int]
    host: str
    port: int
    transport: str = "tcp"
    ip: str = "-"
    up: int = 0
    down: int = 0
    reason: str = "-"
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        duration = time.monotonic() - self.started
        destination = format_address((_loggable(self.host), self.port))
        return (
            f"stream protocol={self.protocol} transport={self.transport} "
            f"client={format_address(self.client)} dest={destination} ip={self.ip} "
            f"up={self.up} down={self.down} duration={duration:.3f} close={self.reason}"
        )
