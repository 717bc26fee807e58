"""Congestion control for :mod:`netshim.ip.tcp`: NewReno (RFC 5681, RFC 6582) and CUBIC (RFC 9438).

A controller owns two numbers, ``cwnd`` and ``ssthresh``, in bytes, and is told
four things by the connection: bytes newly acknowledged outside loss recovery
(:meth:`on_ack`), entry into fast recovery (:meth:`on_loss`), a retransmission
timeout (:meth:`on_timeout`) and the end of fast recovery (:meth:`on_recovery_end`).
Loss detection, the pipe estimate and what to retransmit stay in the connection,
so a controller is only the window arithmetic and is easy to test alone.

Slow start counts bytes (RFC 3465 with no per-ACK limit, as Linux counts packets
acked): with TSO a single ACK can cover 40 segments, and growing by one segment
per ACK would keep such a sender in slow start for ever.
"""

from __future__ import annotations

from typing import Literal, Protocol

__all__ = ["CongestionControl", "Cubic", "NewReno", "make_congestion_control"]

# RFC 6928: an initial window of ten segments, as Linux uses.
INITIAL_WINDOW_SEGMENTS = 10
# RFC 5681 section 3.1: after a loss ssthresh is at least two segments.
_MIN_SSTHRESH_SEGMENTS = 2
# Until the first loss slow start is unbounded.
_INFINITE = 1 << 62


class CongestionControl(Protocol):
    """What :class:`netshim.ip.tcp.TcpConnection` asks of a controller."""

    cwnd: int
    ssthresh: int
    mss: int

    def on_ack(self, acked: int, now: float, srtt: float | None) -> None:
        """``acked`` bytes newly acknowledged, outside loss recovery."""

    def on_loss(self, now: float, flight: int) -> None:
        """Fast retransmit: a loss detected from duplicate ACKs or SACK."""

    def on_timeout(self, now: float, flight: int) -> None:
        """The retransmission timer expired."""

    def on_recovery_end(self, now: float) -> None:
        """Every byte outstanding when recovery began is acknowledged."""


class NewReno:
    """RFC 5681 slow start and congestion avoidance with RFC 6582 recovery sizing."""

    def __init__(self, mss: int) -> None:
        self.mss = mss
        self.cwnd = INITIAL_WINDOW_SEGMENTS * mss
        self.ssthresh = _INFINITE
        # Congestion avoidance grows one MSS per window's worth of acked bytes.
        self._acked_in_window = 0

    def on_ack(self, acked: int, now: float, srtt: float | None) -> None:
        if self.cwnd < self.ssthresh:
            self.cwnd += acked
            return
        self._acked_in_window += acked
        if self._acked_in_window >= self.cwnd:
            self._acked_in_window -= self.cwnd
            self.cwnd += self.mss

    def on_loss(self, now: float, flight: int) -> None:
        self.ssthresh = max(flight // 2, _MIN_SSTHRESH_SEGMENTS * self.mss)
        self.cwnd = self.ssthresh
        self._acked_in_window = 0

    def on_timeout(self, now: float, flight: int) -> None:
        self.ssthresh = max(flight // 2, _MIN_SSTHRESH_SEGMENTS * self.mss)
        self.cwnd = self.mss
        self._acked_in_window = 0

    def on_recovery_end(self, now: float) -> None:
        self.cwnd = self.ssthresh


class Cubic:
    """RFC 9438 CUBIC, window in bytes, time in seconds.

    The cubic function is evaluated in segments as the RFC writes it; its
    TCP-friendly estimate (section 4.3) keeps CUBIC at least as fast as Reno
    on short or slow paths.
    """

    C = 0.4
    BETA = 0.7
    # Section 4.3: the Reno-friendly growth for beta 0.7.
    ALPHA = 3 * (1 - BETA) / (1 + BETA)

    def __init__(self, mss: int) -> None:
        self.mss = mss
        self.cwnd = INITIAL_WINDOW_SEGMENTS * mss
        self.ssthresh = _INFINITE
        self._w_max = 0.0  # segments, before the last reduction (less after fast convergence)
        self._cwnd_prior = 0.0  # segments, before the last reduction
        self._k = 0.0
        self._epoch_start: float | None = None
        self._w_est = 0.0  # segments
        self._cwnd_epoch = 0.0  # segments at the start of the epoch

    def on_ack(self, acked: int, now: float, srtt: float | None) -> None:
        if self.cwnd < self.ssthresh:
            self.cwnd += acked
            return
        mss = self.mss
        cwnd_segments = self.cwnd / mss
        if self._epoch_start is None:
            self._epoch_start = now
            self._cwnd_epoch = cwnd_segments
            self._w_est = cwnd_segments
            if self._w_max <= cwnd_segments:
                # No earlier reduction to climb back to: start at the plateau.
                self._w_max = cwnd_segments
                self._k = 0.0
            else:
                self._k = ((self._w_max - cwnd_segments) / self.C) ** (1 / 3)
        rtt = srtt if srtt is not None else 0.1
        t = now - self._epoch_start + rtt
        target = self.C * (t - self._k) ** 3 + self._w_max
        target = min(max(target, cwnd_segments), 1.5 * cwnd_segments)
        acked_segments = acked / mss
        # Section 4.3: Reno's own growth once W_est is back where the last
        # reduction began (cwnd_prior).
        alpha = self.ALPHA if self._w_est < self._cwnd_prior else 1.0
        self._w_est += alpha * acked_segments / cwnd_segments
        if self._w_est > target:
            # Section 4.3: the Reno-friendly region.
            target = self._w_est
        growth = (target - cwnd_segments) / cwnd_segments * acked_segments
        self.cwnd = max(self.cwnd + int(growth * mss), 2 * mss)

    def _reduce(self, flight: int) -> None:
        cwnd_segments = self.cwnd / self.mss
        self._cwnd_prior = cwnd_segments
        # Section 4.7, fast convergence: yield bandwidth to newer flows.
        if cwnd_segments < self._w_max:
            self._w_max = cwnd_segments * (1 + self.BETA) / 2
        else:
            self._w_max = cwnd_segments
        self.ssthresh = max(int(self.cwnd * self.BETA), _MIN_SSTHRESH_SEGMENTS * self.mss)
        self._epoch_start = None

    def on_loss(self, now: float, flight: int) -> None:
        self._reduce(flight)
        self.cwnd = self.ssthresh

    def on_timeout(self, now: float, flight: int) -> None:
        self._reduce(flight)
        self.cwnd = self.mss

    def on_recovery_end(self, now: float) -> None:
        self.cwnd = max(self.ssthresh, 2 * self.mss)


def make_congestion_control(name: Literal["cubic", "newreno"], mss: int) -> CongestionControl:
    """The controller called ``name`` for a connection sending ``mss``-byte segments."""
    if name == "newreno":
        return NewReno(mss)
    if name == "cubic":
        return Cubic(mss)
    raise ValueError(f"unknown congestion control {name!r}: 'cubic' or 'newreno'")
