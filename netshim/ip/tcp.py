"""One TCP connection's state machine, sans-I/O (RFC 9293 and its companions).

A :class:`TcpConnection` takes segments (:class:`~netshim.protocols.ip.TcpRepr`,
ports but no addresses) and a clock value in, and gives segments, readiness and
errors out.  It never reads a clock, starts a task or touches a socket: the
interface (:mod:`netshim.ip.iface`) hands it each segment with
:meth:`~TcpConnection.on_segment`, calls :meth:`~TcpConnection.poll` when
:meth:`~TcpConnection.deadline` says so (or after anything it did to the
connection), and wraps what ``poll`` returns into IP packets.

What is implemented, by RFC:

* RFC 9293: the state machine, simultaneous open and close, TIME-WAIT, MSS
  option, zero-window probing (persist timer), Nagle's algorithm and its
  ``TCP_NODELAY`` switch, delayed ACKs (at least every second full segment,
  at once for out-of-order data, Linux's quick-ACK mode at the start and after
  idle), sender and receiver silly-window avoidance (and, with large
  segments, Linux's deferral of a small one while ACKs are due), keepalives
  (RFC 1122 section 4.2.3.6), ``TCP_USER_TIMEOUT`` (RFC 5482).
* RFC 5961: RST and SYN in a synchronized state are accepted only at exactly
  RCV.NXT (RST) and otherwise answered with a challenge ACK; ACKs far below
  SND.UNA are challenged; challenge ACKs are rate-limited (section 7).
  RFC 6191: :meth:`TcpConnection.accepts_new_syn` for a SYN reusing a
  TIME-WAIT pair.
* RFC 6298: SRTT/RTTVAR, Karn's rule (without timestamps), exponential backoff;
  the RTO has Linux's shape (SRTT + max(4 RTTVAR, min_rto)).
* RFC 7323: window scaling, timestamps for RTT measurement and PAWS (the basic
  check; no idle expiry of TS.Recent).
* RFC 2018 SACK, both ways, and loss recovery after RFC 6675, with losses
  found by RACK-TLP (RFC 8985) as Linux's default (``tcp_recovery=1``) does:
  data (first sendings, retransmissions and probes alike) sent before data
  known delivered, longer ago than that data's RTT plus a reordering window,
  is lost.  The window is a quarter of the minimum RTT (one more quarter per
  round trip with D-SACKs, at most SRTT), none in recovery or past the
  duplicate threshold until reordering has been seen; a timer
  re-checks segments still inside it.  A tail loss probe goes two smoothed
  RTTs after the last send (plus a delayed-ACK allowance when one segment is
  out, capped at the RTO) with the last segment again (not new data: a
  receiver answers a duplicate at once, but may hold the ACK of one new
  segment for its delayed-ACK timer), so that a lost tail is found by SACK,
  or a lost ACK by a D-SACK, instead of the RTO; a probe that drew no
  D-SACK repaired a loss, and the window is reduced as after a fast
  recovery (section 7.4; one that was not needed changes nothing).  The duplicate-ACK
  threshold still starts recovery too.  RFC 2883 D-SACK both ways: a recovery
  whose retransmissions all arrived twice is undone and the reordering
  window opened.  Without SACK, NewReno fast retransmit and recovery (RFC 6582).
  Congestion windows come from :mod:`netshim.ip.congestion` (CUBIC, RFC 9438,
  by default; NewReno selectable), grown only while cwnd limits the sender
  (RFC 7661); the initial window is ten segments of the agreed MSS (RFC 6928).
* RFC 6528 initial sequence numbers (:func:`initial_sequence_number`).

Not implemented: urgent data (URG is ignored), ECN, TCP Fast Open, MD5 and
TCP-AO signatures, path MTU probing (RFC 4821; ICMP-driven PMTU discovery is
in :meth:`TcpConnection.on_icmp_error`), F-RTO, and the decay of RACK's
reordering window after recoveries without D-SACKs.  An RST in
TIME-WAIT ends it, as Linux does by default (no RFC 1337 protection).

Sequence numbers are 32-bit on the wire and unbounded inside.  Each incoming
number is *unwrapped* once, to the integer nearest the point it is compared
with (RCV.NXT for sequence numbers, SND.UNA for acknowledgements), and each
outgoing one is reduced modulo 2**32 once.  Everything between is plain integer
arithmetic, which is both correct across the wrap and cheaper in Python than
modular comparisons at every step.

Data waits in chunked queues (:mod:`netshim.ip.buffers`): each byte is copied
once in and once out, never again as the buffer moves.  Out-of-order data
waits in :class:`~netshim.ip.reassembly.ReorderBuffer`, only inside the
advertised window, so a connection holds at most ``receive_buffer`` received
bytes and ``send_buffer`` bytes to send.  An idle established connection costs
under 6 KiB besides its data.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import os
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Literal

from ..protocols.ip import (
    IPAddress,
    MaxSegmentSize,
    NoOperation,
    SackBlocks,
    SackPermitted,
    TcpFlags,
    TcpOption,
    TcpRepr,
    Timestamps,
    WindowScale,
)
from .buffers import ReceiveQueue, SendQueue
from .congestion import CongestionControl, make_congestion_control
from .reassembly import ReorderBuffer

__all__ = [
    "TcpConfig",
    "TcpConnection",
    "TcpInfo",
    "TcpState",
    "initial_sequence_number",
    "reset_for_unexpected",
]

_MASK = 0xFFFF_FFFF
_HALF = 1 << 31

_FIN = 0x01
_SYN = 0x02
_RST = 0x04
_PSH = 0x08
_ACK = 0x10

# Built once: constructing an IntFlag per segment is measurable at 100k segments/s.
_FLAGS = {value: TcpFlags(value) for value in range(0x20)}
_NOP = NoOperation()
# Segments and options this module builds skip the wire layer's field checks
# (about 10 microseconds a segment, a third of the per-segment cost): their
# values are in range by construction (ports from the connection, numbers
# reduced modulo 2**32, windows capped at 0xFFFF) and their options are laid
# out on 4-byte boundaries.  Untrusted segments still come through TcpRepr.parse.
_new = object.__new__
_set = object.__setattr__
_SACK_PERMITTED = SackPermitted()
# A connection's SYN options, made once per value (every SYN-ACK has them).
_mss_options: dict[int, MaxSegmentSize] = {}
_window_scale_options: dict[int, WindowScale] = {}


def _mss_option(mss: int) -> MaxSegmentSize:
    option = _mss_options.get(mss)
    if option is None:
        if len(_mss_options) >= 64:
            _mss_options.clear()
        option = _mss_options[mss] = MaxSegmentSize(mss)
    return option


def _window_scale_option(shift: int) -> WindowScale:
    option = _window_scale_options.get(shift)
    if option is None:
        option = _window_scale_options[shift] = WindowScale(shift)
    return option


# RFC 9293 section 3.7.1: the MSS a peer is assumed to take when its SYN has no option.
_DEFAULT_MSS_V4 = 536
_DEFAULT_MSS_V6 = 1220
# Linux's floor for an MSS it is told (net.ipv4.tcp_min_snd_mss): smaller values
# only make a peer cost more CPU per byte.
_MIN_MSS = 48
# RFC 7323 section 2.3: shifts above 14 are treated as 14.
_MAX_WINDOW_SHIFT = 14
_TIMESTAMP_OPTIONS_LEN = 12
_DUPLICATE_ACK_THRESHOLD = 3
# ACKs one poll may send to report SACK blocks that changed in a batch of arrivals.
_MAX_SACK_REPORTS = 16
# Linux's net.ipv4.tcp_invalid_ratelimit: one ACK per half second to segments
# that deserve only a challenge.
_CHALLENGE_ACK_INTERVAL = 0.5
# Linux's TCP_MAX_QUICKACKS: segments acknowledged at once after a start or an idle period.
_QUICKACKS = 16
# RSTs answering bad ACKs, queued between two polls: a flood costs no more.
_MAX_PENDING_RESETS = 8
# SACK blocks remembered by a sender; more only cost retransmissions of data the
# peer has, and a bound keeps a hostile peer from making every ACK expensive.
_MAX_SACK_BLOCKS_KEPT = 256
# Linux's net.ipv4.tcp_max_reordering is 300 segments; a lower cap keeps loss
# detection from growing too slow after a burst of reordering.
_MAX_REORDERING = 64
# Retransmissions watched for loss in one recovery; beyond this the RTO covers them.
_MAX_TRACKED_RETRANSMISSIONS = 1024
# A sample above this is a bogus TSecr (a peer echoing garbage), not an RTT.
_MAX_RTT_SAMPLE = 120.0
# Linux's cap on RACK's reordering window steps (it is also capped at SRTT).
_MAX_RACK_STEPS = 256
# Linux's TCP_TIMEOUT_MIN (two ticks): slack on a loss probe's timer for ACKs
# that the peer's interrupt moderation or its scheduler hold back a little.
_TLP_SLACK = 0.002
# Rounding allowance when a deadline computed as ``t + d`` is compared with ``now - d``.
_CLOCK_SLACK = 1e-9


class TcpState(enum.Enum):
    """RFC 9293 section 3.3.2 states; ``str()`` gives the RFC's spelling (``SYN-SENT``)."""

    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"

    def __str__(self) -> str:
        return self.value


# State groups are tuples: membership is tested by identity, while a frozenset
# would call Enum.__hash__, a Python function, on every segment.
_SYNCHRONIZED = (
    TcpState.SYN_RECEIVED,
    TcpState.ESTABLISHED,
    TcpState.FIN_WAIT_1,
    TcpState.FIN_WAIT_2,
    TcpState.CLOSE_WAIT,
    TcpState.CLOSING,
    TcpState.LAST_ACK,
    TcpState.TIME_WAIT,
)
# States in which received data is taken (the peer has not sent its FIN).
_RECEIVING = (
    TcpState.ESTABLISHED,
    TcpState.FIN_WAIT_1,
    TcpState.FIN_WAIT_2,
)
# States in which our data (and FIN) may go out.
_SENDING = (
    TcpState.ESTABLISHED,
    TcpState.CLOSE_WAIT,
    TcpState.FIN_WAIT_1,
    TcpState.CLOSING,
    TcpState.LAST_ACK,
)
_KEEPALIVE_STATES = (
    TcpState.ESTABLISHED,
    TcpState.CLOSE_WAIT,
    TcpState.FIN_WAIT_2,
)


@dataclass(frozen=True, slots=True)
class TcpConfig:
    """Per-connection settings; the defaults follow Linux's.

    ``mss`` is what we advertise (the interface sets it from the MTU).
    ``max_segment_payload`` is for links that segment for us (TSO/GSO): data
    segments then carry up to that many bytes, a multiple of the send MSS,
    and the link cuts them at :attr:`TcpConnection.send_mss`.  ``send_buffer``
    and ``receive_buffer`` bound the bytes held each way; the receive buffer
    is also the largest window offered, out-of-order data included.
    ``keepalive`` is ``(idle, interval, probes)`` as TCP_KEEPIDLE,
    TCP_KEEPINTVL and TCP_KEEPCNT.  ``user_timeout`` is TCP_USER_TIMEOUT in
    seconds: how long sent data may stay unacknowledged before ``ETIMEDOUT``.
    """

    mss: int = 1460
    max_segment_payload: int | None = None
    # 1 MiB each way, held only while data waits: with 256 KiB a bulk
    # transfer over a TUN/TAP device was window-bound (the peer stopped for
    # ACKs every 256 KiB), received at 325-390 MiB/s for 2.6-2.9 CPU s/GiB
    # against 530-700 MiB/s for 1.4-1.7, and after a loss could not send past
    # the hole.  Linux autotunes to 4 MiB (sending) and 6 MiB (receiving).
    send_buffer: int = 1024 * 1024
    receive_buffer: int = 1024 * 1024
    window_scale: bool = True
    timestamps: bool = True
    sack: bool = True
    nodelay: bool = False
    delayed_ack: float = 0.04
    keepalive: tuple[float, float, int] | None = None
    initial_rto: float = 1.0
    min_rto: float = 0.2
    max_rto: float = 120.0
    syn_retries: int = 6
    data_retries: int = 15
    time_wait: float = 60.0
    user_timeout: float | None = None
    congestion: Literal["cubic", "newreno"] = "cubic"

    def __post_init__(self) -> None:
        if not 64 <= self.mss <= 0xFFFF:
            raise ValueError(f"mss must be in 64..65535, got {self.mss}")
        if self.max_segment_payload is not None and not 64 <= self.max_segment_payload <= 0xFFFF:
            raise ValueError(
                f"max_segment_payload must be in 64..65535, got {self.max_segment_payload}"
            )
        if self.send_buffer < 1 or self.receive_buffer < 1:
            raise ValueError("send_buffer and receive_buffer must be positive")
        if not 0 < self.min_rto <= self.initial_rto <= self.max_rto:
            raise ValueError("need 0 < min_rto <= initial_rto <= max_rto")
        if self.congestion not in ("cubic", "newreno"):
            raise ValueError(f"congestion must be 'cubic' or 'newreno', got {self.congestion!r}")


@dataclass(frozen=True, slots=True)
class TcpInfo:
    """A snapshot of a connection's counters, as Linux's TCP_INFO reports them."""

    state: TcpState
    send_mss: int
    receive_mss: int
    srtt: float | None
    rttvar: float | None
    rto: float
    cwnd: int
    ssthresh: int
    send_window: int
    receive_window: int
    retransmissions: int
    timeouts: int
    fast_recoveries: int
    bytes_sent: int
    bytes_acked: int
    bytes_received: int
    segments_sent: int
    segments_received: int
    out_of_order_bytes: int


def initial_sequence_number(
    secret: bytes, local: tuple[IPAddress, int], remote: tuple[IPAddress, int], now: float
) -> int:
    """RFC 6528: a 4-microsecond clock plus a keyed hash of the connection's addresses.

    The hash is keyed BLAKE2s (a pseudorandom function, as the RFC asks), a
    third of HMAC-SHA256's cost; a secret longer than its 32-byte key limit is
    hashed down to one.
    """
    identity = (
        local[0].packed
        + local[1].to_bytes(2, "big")
        + remote[0].packed
        + remote[1].to_bytes(2, "big")
    )
    if len(secret) > 32:
        secret = hashlib.blake2s(secret).digest()
    offset = int.from_bytes(hashlib.blake2s(identity, key=secret, digest_size=4).digest(), "big")
    return (int(now * 250_000) + offset) & _MASK


def reset_for_unexpected(segment: TcpRepr) -> TcpRepr | None:
    """RFC 9293 section 3.10.7.1: the RST answering ``segment`` when no connection takes it.

    ``None`` for an RST (an RST is never answered).  A segment with ACK gets
    ``<SEQ=SEG.ACK><CTL=RST>``; one without gets
    ``<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>``.
    """
    flags = int(segment.flags)
    if flags & _RST:
        return None
    if flags & _ACK:
        return TcpRepr(
            src_port=segment.dst_port,
            dst_port=segment.src_port,
            seq=segment.ack,
            ack=0,
            flags=_FLAGS[_RST],
            window=0,
        )
    return TcpRepr(
        src_port=segment.dst_port,
        dst_port=segment.src_port,
        seq=0,
        ack=(segment.seq + segment.segment_len()) & _MASK,
        flags=_FLAGS[_RST | _ACK],
        window=0,
    )


def _error(code: int) -> OSError:
    # OSError picks the subclass from the errno: ConnectionRefusedError and so on.
    return OSError(code, os.strerror(code))


def _window_shift(buffer: int) -> int:
    shift = 0
    while shift < _MAX_WINDOW_SHIFT and buffer >> shift > 0xFFFF:
        shift += 1
    return shift


class TcpConnection:
    """One TCP connection, from its SYN to CLOSED.

    Create one with :meth:`open_active` (connect) or :meth:`open_passive`
    (a listener accepted a SYN).  Feed it with :meth:`on_segment` and
    :meth:`on_icmp_error`; drain it with :meth:`poll` whenever
    :meth:`deadline` is due, and after every call that may have given it
    something to send (``on_segment``, ``send``, ``receive``, ``shutdown``,
    ``abort``): ``deadline()`` is then the time of that call.

    The application side mirrors a non-blocking socket: :meth:`send` takes
    what fits, :meth:`receive` returns what is there, ``b""`` only at EOF, and
    raises ``BlockingIOError`` when there is nothing yet.
    """

    # Slots: a connection has over a hundred attributes, which as a
    # __dict__ are a dictionary grown five times while __init__ runs (half
    # of the cost of making a connection) and read through it afterwards.
    # __dict__ stays, so that an attribute missing here still works.
    # fmt: off
    __slots__ = (
        "__dict__", "__weakref__", "_ack_now", "_active", "_cc", "_delack_deadline", "_dsack",
        "_dupacks", "_fin_queued", "_fin_received", "_force_rexmit", "_handshake_done",
        "_high_rxt", "_in_recovery", "_ipv6", "_keepalive", "_keepalive_deadline",
        "_keepalive_probes_out", "_keepalive_rearm", "_last_ack_sent", "_last_challenge",
        "_last_data_received", "_last_received", "_lost_again", "_lost_edge", "_max_payload",
        "_max_snd_wnd", "_min_rtt", "_now", "_output_wanted", "_peer_fin_seq", "_peer_mss",
        "_pending", "_persist_backoff", "_persist_deadline", "_persist_unanswered", "_pmtu_mss",
        "_quickacks", "_rack_deadline", "_rack_end", "_rack_order", "_rack_reordering_seen",
        "_rack_rtt", "_rack_steps", "_rack_steps_round_end", "_rcv_adv", "_rcv_mss", "_rcv_nxt",
        "_rcv_wscale", "_recover", "_recv_buf", "_reorder", "_reordering", "_retries",
        "_rexmit_high", "_rexmits", "_rtt_seq", "_rtt_time", "_rtx_deadline", "_sack_enabled",
        "_sacked_bytes", "_sacked_ends", "_sacked_starts", "_send_order", "_send_queue",
        "_snd_max", "_snd_nxt", "_snd_una", "_snd_wl1", "_snd_wl2", "_snd_wnd", "_snd_wscale",
        "_soft_error", "_stall_start", "_syn_pending", "_time_wait_deadline", "_timeout_recovery",
        "_tlp_deadline", "_tlp_high", "_tlp_retransmitted", "_ts_enabled", "_ts_offset",
        "_ts_recent", "_undo_cwnd", "_undo_entry_segments", "_undo_from", "_undo_retrans",
        "_undo_ssthresh", "_ws_enabled", "_xmit_ends", "_xmit_orders", "_xmit_times",
        "bytes_acked", "bytes_received", "bytes_sent", "challenge_acks_suppressed", "config",
        "error", "fast_recoveries", "irs", "iss", "local", "loss_probe_repairs", "loss_probes",
        "lost_retransmissions", "nodelay", "remote", "retransmissions", "rto", "rttvar",
        "segments_received", "segments_sent", "send_mss", "spurious_recoveries", "srtt", "state",
        "timeouts",
    )
    # fmt: on

    def __init__(
        self,
        local: tuple[IPAddress, int],
        remote: tuple[IPAddress, int],
        *,
        iss: int,
        now: float,
        config: TcpConfig,
        state: TcpState,
    ) -> None:
        if not 0 <= iss <= _MASK:
            raise ValueError(f"iss must be in 0..{_MASK}, got {iss}")
        self.local = local
        self.remote = remote
        self.state = state
        self.config = config
        self.error: OSError | None = None
        self.nodelay = config.nodelay
        self._keepalive = config.keepalive
        self._now = now
        self._ipv6 = local[0].version == 6
        self._active = state is TcpState.SYN_SENT
        self._handshake_done = False

        # Send sequence space (unwrapped).
        self.iss = iss
        self._snd_una = iss
        self._snd_nxt = iss
        self._snd_max = iss
        self._snd_wnd = 0
        self._max_snd_wnd = 0
        self._snd_wl1 = 0
        self._snd_wl2 = 0
        self._snd_wscale = 0
        self._send_queue = SendQueue(iss + 1)  # the SYN takes iss
        self._fin_queued = False
        self._syn_pending = True  # our SYN (or SYN-ACK) is to be sent

        # Receive sequence space (unwrapped), set once the peer's SYN is known.
        self.irs = 0
        self._rcv_nxt = 0
        self._rcv_adv = 0  # right edge of the window we advertised
        self._rcv_wscale = _window_shift(config.receive_buffer) if config.window_scale else 0
        self._recv_buf = ReceiveQueue()
        self._reorder = ReorderBuffer(max(64, config.receive_buffer // 512))
        self._peer_fin_seq: int | None = None
        self._fin_received = False
        self._last_ack_sent = 0
        self._rcv_mss = min(config.mss, _DEFAULT_MSS_V4)

        # Options agreed in the handshake.
        self._peer_mss = _DEFAULT_MSS_V6 if self._ipv6 else _DEFAULT_MSS_V4
        self._pmtu_mss: int | None = None
        self._ts_enabled = config.timestamps
        self._sack_enabled = config.sack
        self._ws_enabled = config.window_scale
        self._ts_recent = 0
        self._ts_offset = (iss * 2654435761) & _MASK  # hides our uptime from the peer
        self.send_mss = config.mss
        self._max_payload = config.mss
        self._update_send_mss()

        # Retransmission (RFC 6298).
        self.srtt: float | None = None
        self.rttvar: float | None = None
        self.rto = config.initial_rto
        self._retries = 0
        self._rtx_deadline: float | None = None
        self._rtt_seq: int | None = None  # Karn timing without timestamps
        self._rtt_time = 0.0
        self._stall_start: float | None = None
        self._soft_error: OSError | None = None

        # Loss recovery (RFC 6675 simplified / RFC 6582).
        self._cc: CongestionControl = make_congestion_control(config.congestion, self.send_mss)
        self._in_recovery = False
        # Recovery after a timeout rather than duplicate ACKs: cwnd grows in it.
        self._timeout_recovery = False
        # Send the first lost segment even when the pipe estimate says no
        # (RFC 6675 section 5 step 3, RFC 6582 partial ACKs).
        self._force_rexmit = False
        self._recover = iss
        self._dupacks = 0
        # SACKed [start, end) blocks above SND.UNA, sorted, merged.
        self._sacked_starts: list[int] = []
        self._sacked_ends: list[int] = []
        self._sacked_bytes = 0
        self._lost_edge = iss  # holes below this are deemed lost
        self._high_rxt = iss  # retransmitted up to here in this recovery
        # Retransmissions as (start, end, time sent, send order): RACK (RFC 8985)
        # finds one lost when data sent after it is delivered while it is still
        # missing.  The send order, a count of segments sent, breaks the ties of
        # equal clock values (a whole burst is sent at one clock reading).
        self._rexmits: list[tuple[int, int, float, int]] = []
        self._lost_again: list[tuple[int, int]] = []
        self.lost_retransmissions = 0
        # RACK: first transmissions as parallel lists of end sequence, send time
        # and send order (all ascending), trimmed as SND.UNA passes them.
        self._xmit_ends: list[int] = []
        self._xmit_times: list[float] = []
        self._xmit_orders: list[int] = []
        self._send_order = 0
        # The end of the highest data sent more than once: an ACK below it may
        # be for a retransmission, and gives no RTT sample from send times (Karn).
        self._rexmit_high = iss
        # The most recently sent segment known delivered: its send order and RTT,
        # and how far its delivered data reaches.  One send (a TSO packet) is
        # several wire segments with one order: those below the delivered end
        # were sent before it, as Linux's tcp_rack_sent_after orders one skb's
        # pieces by sequence.
        self._rack_order = -1
        self._rack_rtt = 0.0
        self._rack_end = iss
        self._rack_reordering_seen = False
        # RFC 8985 section 6.2 step 4: the window grows by a quarter of the
        # minimum RTT per round trip that brought a D-SACK, as Linux's reo_wnd_steps.
        self._rack_steps = 1
        self._rack_steps_round_end = iss
        self._rack_deadline: float | None = None
        self._min_rtt: float | None = None
        # Tail loss probe (RFC 8985 section 7): when it fires, and SND.MAX at
        # the last probe (no second probe until the ACK passes it).
        self._tlp_deadline: float | None = None
        self._tlp_high: int | None = None
        self.loss_probes = 0
        # RFC 8985 section 7.4: a probe that sent data again, as
        # ``(start, end, SND.MAX then)``, until an ACK beyond it tells whether
        # it repaired a loss (no D-SACK for it came) or was not needed.
        self._tlp_retransmitted: tuple[int, int, int] | None = None
        self.loss_probe_repairs = 0
        # Duplicate ACKs (or SACKed segments) that mean a loss; raised when a
        # recovery proves spurious, as Linux adapts tp->reordering.
        self._reordering = _DUPLICATE_ACK_THRESHOLD
        # Undoing a spurious fast recovery (RFC 2883 section 4.3, as Linux's
        # undo_retrans): the window before it, and its retransmissions that no
        # D-SACK has yet shown to be needless.
        self._undo_cwnd: int | None = None
        self._undo_ssthresh = 0
        self._undo_retrans = 0
        self._undo_from = iss
        self._undo_entry_segments = 0
        # A D-SACK block to report in the next ACK: a duplicate we received.
        self._dsack: tuple[int, int] | None = None

        # Other timers.
        self._ack_now = False
        self._delack_deadline: float | None = None
        self._persist_deadline: float | None = None
        self._persist_backoff = 0
        self._persist_unanswered = 0
        self._keepalive_probes_out = 0
        self._keepalive_deadline: float | None = None
        self._keepalive_rearm = False
        self._last_received = now
        self._time_wait_deadline: float | None = None
        self._output_wanted = True
        self._pending: list[TcpRepr] = []

        self._last_challenge = -_CHALLENGE_ACK_INTERVAL
        self._quickacks = _QUICKACKS
        self._last_data_received = now

        # Counters.
        self.challenge_acks_suppressed = 0
        self.spurious_recoveries = 0
        self.retransmissions = 0
        self.timeouts = 0
        self.fast_recoveries = 0
        self.bytes_sent = 0
        self.bytes_acked = 0
        self.bytes_received = 0
        self.segments_sent = 0
        self.segments_received = 0

    # ------------------------------------------------------------------ opening

    @classmethod
    def open_active(
        cls,
        local: tuple[IPAddress, int],
        remote: tuple[IPAddress, int],
        *,
        iss: int,
        now: float,
        config: TcpConfig,
    ) -> TcpConnection:
        """A connection in SYN-SENT whose SYN the next :meth:`poll` sends (``connect``)."""
        return cls(local, remote, iss=iss, now=now, config=config, state=TcpState.SYN_SENT)

    @classmethod
    def open_passive(
        cls,
        local: tuple[IPAddress, int],
        remote: tuple[IPAddress, int],
        syn: TcpRepr,
        *,
        iss: int,
        now: float,
        config: TcpConfig,
    ) -> TcpConnection:
        """A connection in SYN-RECEIVED answering ``syn``, which a listener accepted.

        The next :meth:`poll` sends the SYN-ACK.  Options the SYN did not
        offer are not used (RFC 7323, RFC 2018).  Raises ``ValueError`` if
        ``syn`` is not a SYN without ACK and RST.
        """
        flags = int(syn.flags)
        if flags & (_SYN | _ACK | _RST) != _SYN:
            raise ValueError(
                f"open_passive needs a SYN without ACK or RST, got flags {syn.flags!r}"
            )
        connection = cls(
            local, remote, iss=iss, now=now, config=config, state=TcpState.SYN_RECEIVED
        )
        connection._take_syn(syn, now)
        return connection

    def _take_syn(self, syn: TcpRepr, now: float) -> None:
        """Set up the receive side and options from the peer's SYN (or SYN-ACK)."""
        self.irs = syn.seq
        self._rcv_nxt = syn.seq + 1
        self._last_ack_sent = self._rcv_nxt
        # What our SYN (or SYN-ACK) offers, unscaled as RFC 7323 says SYN windows are.
        self._rcv_adv = self._rcv_nxt + min(self.config.receive_buffer, 0xFFFF)
        self._snd_wnd = syn.window
        self._max_snd_wnd = syn.window
        self._snd_wl1 = self._rcv_nxt - 1
        mss_option = syn.find_option(MaxSegmentSize)
        if mss_option is not None:
            self._peer_mss = max(mss_option.mss, _MIN_MSS)
        scale = syn.find_option(WindowScale)
        if scale is not None and self.config.window_scale:
            self._snd_wscale = min(scale.shift, _MAX_WINDOW_SHIFT)
        else:
            self._ws_enabled = False
            self._snd_wscale = 0
            self._rcv_wscale = 0
        timestamps = syn.find_option(Timestamps)
        if timestamps is not None and self.config.timestamps:
            self._ts_recent = timestamps.value
        else:
            self._ts_enabled = False
        if syn.find_option(SackPermitted) is None:
            self._sack_enabled = False
        self._update_send_mss()
        # The initial window is ten of the segments agreed on (RFC 6928), not of
        # the 536 bytes assumed before the handshake (as Linux sets it once the
        # MSS is known).
        self._cc = make_congestion_control(self.config.congestion, self.send_mss)
        self._last_received = now

    def _update_send_mss(self) -> None:
        mss = min(self._peer_mss, self.config.mss)
        if self._pmtu_mss is not None:
            mss = min(mss, self._pmtu_mss)
        if self._ts_enabled:
            mss -= _TIMESTAMP_OPTIONS_LEN
        self.send_mss = max(mss, _MIN_MSS - _TIMESTAMP_OPTIONS_LEN)
        limit = self.config.max_segment_payload
        if limit is None or limit <= self.send_mss:
            self._max_payload = self.send_mss
        else:
            self._max_payload = limit // self.send_mss * self.send_mss

    # ------------------------------------------------------------------ readiness

    @property
    def established(self) -> bool:
        """The handshake completed (stays true through closing): connect/accept readiness."""
        return self._handshake_done

    @property
    def finished(self) -> bool:
        """CLOSED with nothing left to send: the interface may forget the connection."""
        return self.state is TcpState.CLOSED and not self._pending and not self._ack_now

    @property
    def at_eof(self) -> bool:
        """The peer's FIN arrived in order and every byte before it was read."""
        return self._fin_received and not self._recv_buf

    def readable(self) -> int:
        """Bytes :meth:`receive` can return now."""
        return len(self._recv_buf)

    def send_space(self) -> int:
        """Bytes :meth:`send` would take now (0 once the sending side is shut)."""
        if self._fin_queued or self.state is TcpState.CLOSED:
            return 0
        return max(0, self.config.send_buffer - len(self._send_queue))

    @property
    def max_payload(self) -> int:
        """The most payload one segment carries: a whole number of MSS, up to a TSO packet's."""
        return self._max_payload

    @property
    def cwnd(self) -> int:
        return self._cc.cwnd

    @property
    def ssthresh(self) -> int:
        return self._cc.ssthresh

    def info(self) -> TcpInfo:
        """Counters and estimates, TCP_INFO-style."""
        return TcpInfo(
            state=self.state,
            send_mss=self.send_mss,
            receive_mss=self._rcv_mss,
            srtt=self.srtt,
            rttvar=self.rttvar,
            rto=self.rto,
            cwnd=self._cc.cwnd,
            ssthresh=self._cc.ssthresh,
            send_window=self._snd_wnd,
            receive_window=max(0, self._rcv_adv - self._rcv_nxt),
            retransmissions=self.retransmissions,
            timeouts=self.timeouts,
            fast_recoveries=self.fast_recoveries,
            bytes_sent=self.bytes_sent,
            bytes_acked=self.bytes_acked,
            bytes_received=self.bytes_received,
            segments_sent=self.segments_sent,
            segments_received=self.segments_received,
            out_of_order_bytes=self._reorder.held_bytes,
        )

    def __repr__(self) -> str:
        return (
            f"<TcpConnection {self.local[0]}:{self.local[1]} -> {self.remote[0]}:{self.remote[1]}"
            f" {self.state}>"
        )

    # ------------------------------------------------------------------ application side

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Queue what fits of ``data`` for sending; the count taken (0 when the buffer is full).

        Raises ``BrokenPipeError`` (EPIPE) after :meth:`shutdown` or
        :meth:`abort`, or the connection's error (``ECONNRESET``...) after it failed.
        """
        if self._fin_queued or self.state not in _SENDABLE_STATES:
            if self.error is not None and self.error.errno != errno.EPIPE:
                raise _error(self.error.errno or errno.EPIPE)
            raise _error(errno.EPIPE)
        room = self.config.send_buffer - len(self._send_queue)
        if room <= 0:
            return 0
        taken = len(data) if len(data) <= room else room
        if taken:
            if taken == len(data):
                self._send_queue.append(data)
            else:
                self._send_queue.append(memoryview(data)[:taken])
            self._output_wanted = True
        return taken

    def receive(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` received bytes; ``b""`` only at EOF.

        Raises ``BlockingIOError`` when nothing is there yet, or the
        connection's error (``ECONNRESET``...) once the data before it is read.
        """
        buffer = self._recv_buf
        if not buffer:
            if self._fin_received:
                return b""
            if self.error is not None:
                raise _error(self.error.errno or errno.ECONNRESET)
            if self.state is TcpState.CLOSED:
                return b""
            raise BlockingIOError(errno.EAGAIN, "no data received yet")
        data = buffer.read(max_bytes)
        if self.state in _RECEIVING:
            self._maybe_window_update()
        return data

    def shutdown(self) -> None:
        """Send a FIN after the queued data (``shutdown(SHUT_WR)``); idempotent.

        In SYN-SENT and SYN-RECEIVED the FIN waits for the handshake, as RFC
        9293 section 3.10.4 allows.
        """
        if self._fin_queued:
            return
        if self.state in (TcpState.CLOSED, TcpState.LISTEN):
            return
        self._fin_queued = True
        if self.state is TcpState.ESTABLISHED:
            self.state = TcpState.FIN_WAIT_1
        elif self.state is TcpState.CLOSE_WAIT:
            self.state = TcpState.LAST_ACK
        self._output_wanted = True

    def abort(self) -> None:
        """Send an RST now (if the peer knows of us) and go to CLOSED (``SO_LINGER`` 0 close)."""
        if self.state in _SYNCHRONIZED and self.state is not TcpState.TIME_WAIT:
            self._pending.append(self._segment(self._snd_nxt, _RST | _ACK, b"", options=()))
        self._enter_closed()

    def accepts_new_syn(self, syn: TcpRepr) -> bool:
        """Whether ``syn`` may end this TIME-WAIT connection and open a new one (RFC 6191).

        A SYN for the same address pair during TIME-WAIT is a new connection
        when it cannot be confused with the old one: its timestamp is newer
        than the last one seen, or (without timestamps) its sequence number is
        beyond the old connection's.  The interface then forgets this
        connection and hands the SYN to its listener, as Linux does.
        """
        # The state first: the interface asks for every segment of a known pair.
        if self.state is not TcpState.TIME_WAIT or int(syn.flags) & (_SYN | _ACK | _RST) != _SYN:
            return False
        timestamps = syn.find_option(Timestamps)
        if self._ts_enabled and timestamps is not None:
            return 0 < (timestamps.value - self._ts_recent) & _MASK < _HALF
        return 0 < (syn.seq - self._rcv_nxt) & _MASK < _HALF

    @property
    def fin_queued(self) -> bool:
        """:meth:`shutdown` was called."""
        return self._fin_queued

    # ------------------------------------------------------------------ ICMP

    def on_icmp_error(
        self, error: int, now: float, *, mtu: int | None = None, seq: int | None = None
    ) -> None:
        """An ICMP error about one of our segments (its quoted ``seq`` if known).

        With ``mtu`` (fragmentation needed, packet too big) the send MSS
        shrinks to fit and what is in flight goes again.  Otherwise, in
        SYN-SENT the error ends the connection (``ECONNREFUSED``,
        ``EHOSTUNREACH``...); later it is soft, remembered and reported only if
        the connection times out, as Linux does.  A ``seq`` outside what is
        unacknowledged is ignored (RFC 5927: it may be forged).
        """
        self._now = now
        if seq is not None:
            offset = (seq - self._snd_una + _HALF & _MASK) - _HALF
            if not 0 <= offset < max(1, self._snd_max - self._snd_una):
                return
        if mtu is not None:
            header = (40 if self._ipv6 else 20) + 20
            new_mss = max(mtu - header, _MIN_MSS)
            if self._pmtu_mss is None or new_mss < self._pmtu_mss:
                self._pmtu_mss = new_mss
                old = self.send_mss
                self._update_send_mss()
                self._cc.mss = self.send_mss
                if self.send_mss < old and self.state in _SENDING:
                    # The big segments in flight were dropped: send them again, cut smaller.
                    self._snd_nxt = self._snd_una
                    self._clear_scoreboard()
                    self._output_wanted = True
            return
        if self.state is TcpState.SYN_SENT:
            self.error = _error(error)
            self._enter_closed()
        elif self.state is not TcpState.CLOSED:
            self._soft_error = _error(error)

    # ------------------------------------------------------------------ incoming segments

    def on_segment(self, segment: TcpRepr, now: float) -> None:
        """Process one segment addressed to this connection; never raises for its content."""
        self._now = now
        self.segments_received += 1
        state = self.state
        if state is TcpState.SYN_SENT:
            self._on_segment_syn_sent(segment, now)
        elif state in _SYNCHRONIZED:
            self._on_segment_synchronized(segment, now)
        # CLOSED and LISTEN: the interface answers for us (reset_for_unexpected).

    def _on_segment_syn_sent(self, segment: TcpRepr, now: float) -> None:
        flags = int(segment.flags)
        if flags & _ACK:
            ack = self._unwrap_ack(segment.ack)
            if ack <= self.iss or ack > self._snd_max:
                if not flags & _RST:
                    self._queue_reset(segment)
                return
            if flags & _RST:
                self.error = _error(errno.ECONNREFUSED)
                self._enter_closed()
                return
        elif flags & _RST:
            return
        if not flags & _SYN:
            return
        self._take_syn(segment, now)
        if flags & _ACK:
            self._snd_una = self._unwrap_ack(segment.ack)
            self._snd_wl1 = self._rcv_nxt - 1
            self._snd_wl2 = self._snd_una
            timestamps = segment.find_option(Timestamps) if self._ts_enabled else None
            # The SYN's send time first (a SYN sent once: Karn), as for data.
            if self._retries == 0:
                self._rtt_sample(now - self._rtt_time)
            elif timestamps is not None and timestamps.echo_reply:
                self._timestamp_rtt(timestamps.echo_reply, now)
            self._enter_established(now)
            self._ack_now = True
        else:
            # Simultaneous open: our SYN goes again with an ACK (RFC 9293 figure 7).
            self.state = TcpState.SYN_RECEIVED
            self._syn_pending = True
            self._snd_nxt = self._snd_una
            self._rtx_deadline = now
        self._output_wanted = True

    def _enter_established(self, now: float) -> None:
        self.state = TcpState.ESTABLISHED
        self._handshake_done = True
        self._syn_pending = False
        self._retries = 0
        self._rtx_deadline = None
        self._stall_start = None
        self._recover = self._snd_una - 1
        self._high_rxt = self._lost_edge = self._snd_una
        if self._fin_queued:
            self.state = TcpState.FIN_WAIT_1
        self._arm_keepalive(now)

    def _unwrap_ack(self, ack: int) -> int:
        return self._snd_una + ((ack - self._snd_una + _HALF & _MASK) - _HALF)

    def _on_segment_synchronized(self, segment: TcpRepr, now: float) -> None:
        flags = int(segment.flags)
        payload = segment.payload
        rcv_nxt = self._rcv_nxt
        seq = rcv_nxt + ((segment.seq - rcv_nxt + _HALF & _MASK) - _HALF)
        if (
            flags & (_SYN | _ACK) == _SYN | _ACK
            and seq == rcv_nxt - 1
            and self.state is TcpState.SYN_RECEIVED
        ):
            # Simultaneous open (RFC 9293 figure 8): the peer's SYN-ACK repeats the
            # SYN we have; its ACK completes our side of the handshake.
            flags &= ~_SYN
            seq = rcv_nxt
            payload = b""
        seg_len = len(payload) + (flags & _SYN and 1) + (flags & _FIN and 1)

        timestamps: Timestamps | None = None
        if self._ts_enabled and segment.options:
            for option in segment.options:
                if type(option) is Timestamps:
                    timestamps = option
                    break
            # RFC 7323 section 5.3, PAWS: an older TSval is an old duplicate.
            if (
                timestamps is not None
                and not flags & _RST
                and (timestamps.value - self._ts_recent) & _MASK >= _HALF
            ):
                if payload or flags & (_SYN | _FIN):
                    if payload and self._sack_enabled and seq + len(payload) <= rcv_nxt:
                        # An old duplicate: D-SACK it, as Linux's tcp_send_dupack does.
                        self._dsack = (seq, seq + len(payload))
                    self._ack_now = True
                    self._output_wanted = True
                else:
                    self._challenge_ack(now)
                return

        # RFC 9293 section 3.10.7.4, first: is the segment in the window?
        window = self._rcv_adv - rcv_nxt
        if window < 0:
            window = 0
        offset = seq - rcv_nxt
        if seg_len == 0:
            acceptable = offset == 0 if window == 0 else 0 <= offset < window
        elif window == 0:
            acceptable = False
        else:
            acceptable = 0 <= offset < window or 0 < offset + seg_len <= window
        if not acceptable:
            if flags & _RST:
                return
            if self.state is TcpState.TIME_WAIT and flags & _FIN:
                # The peer's FIN again: our last ACK was lost.  Restart 2MSL (RFC 9293 3.10.7.4).
                self._time_wait_deadline = now + self.config.time_wait
            # A zero window still lets ACKs and window updates through (RFC 9293 3.10.7.4).
            if not (window == 0 and offset == 0 and flags & _ACK and not flags & _SYN):
                if self.state is TcpState.SYN_RECEIVED and flags & _SYN and not flags & _ACK:
                    self._resend_syn_ack(segment, now)
                    return
                if payload or flags & _FIN:
                    # Old data again: the duplicate ACK helps the sender recover,
                    # and a D-SACK tells it the retransmission was not needed.
                    if payload and self._sack_enabled and seq + len(payload) <= rcv_nxt:
                        self._dsack = (seq, seq + len(payload))
                    self._ack_now = True
                    self._output_wanted = True
                else:
                    self._challenge_ack(now)
                return
            payload = b""
            flags &= ~_FIN
            self._ack_now = True
            self._output_wanted = True

        if timestamps is not None and seq <= self._last_ack_sent:
            self._ts_recent = timestamps.value

        self._last_received = now
        self._keepalive_probes_out = 0

        # Second: RST (RFC 5961 section 3.2).
        if flags & _RST:
            if offset == 0:
                self._on_reset()
            else:
                self._challenge_ack(now)
            return

        # Fourth: SYN (RFC 5961 section 4.2): never a reset, always a challenge ACK.
        if flags & _SYN:
            if self.state is TcpState.SYN_RECEIVED and seq == rcv_nxt - 1:
                self._resend_syn_ack(segment, now)
                return
            self._challenge_ack(now)
            return

        # Fifth: ACK.
        if not flags & _ACK:
            return
        ack = self._snd_una + ((segment.ack - self._snd_una + _HALF & _MASK) - _HALF)
        if self.state is TcpState.SYN_RECEIVED:
            if not self._snd_una < ack <= self._snd_max:
                self._queue_reset(segment)
                self._output_wanted = True
                return
            self._snd_wnd = segment.window << self._snd_wscale
            self._max_snd_wnd = max(self._max_snd_wnd, self._snd_wnd)
            self._snd_wl1 = seq
            self._snd_wl2 = ack
            if self._retries == 0:
                self._rtt_sample(now - self._rtt_time)
            elif timestamps is not None and timestamps.echo_reply:
                self._timestamp_rtt(timestamps.echo_reply, now)
            self._snd_una = ack
            if self._snd_nxt < ack:
                # The peer's SYN came again (_resend_syn_ack put SND.NXT back
                # on our SYN), and then its ACK of the first SYN-ACK: what
                # was queued meanwhile (data, a FIN) leaves from ISS + 1.
                self._snd_nxt = ack
            self._enter_established(now)
            self._output_wanted = True
        elif not self._process_ack(segment, flags, seq, ack, timestamps, now):
            return

        if self.state is TcpState.CLOSED:
            return
        if self.state is TcpState.TIME_WAIT:
            if flags & _FIN:
                # The peer's FIN again: our ACK was lost.  Restart 2MSL (RFC 9293 3.10.7.4).
                self._time_wait_deadline = now + self.config.time_wait
                self._ack_now = True
                self._output_wanted = True
            return

        # Seventh: segment text.
        fin = flags & _FIN
        if (payload or fin) and self.state in _RECEIVING:
            self._process_data(seq, payload, bool(fin), now)
        elif payload or fin:
            # After the peer's FIN nothing more can come; ACK what we have.
            self._ack_now = True
            self._output_wanted = True

    def _challenge_ack(self, now: float) -> None:
        """An ACK answering a suspicious segment, at most one per interval (RFC 5961 section 7).

        Covers challenge ACKs for in-window RST and SYN and the ACKs answering
        out-of-window segments without data, as Linux's tcp_invalid_ratelimit
        does: two stacks that disagree (or a peer that forges segments) cannot
        make us send an ACK per segment received.
        """
        if now - self._last_challenge >= _CHALLENGE_ACK_INTERVAL:
            self._last_challenge = now
            self._ack_now = True
            self._output_wanted = True
        else:
            self.challenge_acks_suppressed += 1

    def _resend_syn_ack(self, segment: TcpRepr, now: float) -> None:
        # The peer's SYN again: our SYN-ACK was lost (RFC 9293 3.10.7.4, SYN-RECEIVED).
        self._syn_pending = True
        self._snd_nxt = self._snd_una
        self._output_wanted = True

    def _queue_reset(self, segment: TcpRepr) -> None:
        """Answer an unacceptable ACK with ``<SEQ=SEG.ACK><CTL=RST>``, a bounded number at once."""
        if len(self._pending) < _MAX_PENDING_RESETS:
            self._pending.append(self._reset_to(segment))
        self._output_wanted = True

    def _reset_to(self, segment: TcpRepr) -> TcpRepr:
        """``<SEQ=SEG.ACK><CTL=RST>``, for an unacceptable ACK."""
        return TcpRepr(
            src_port=self.local[1],
            dst_port=self.remote[1],
            seq=segment.ack,
            ack=0,
            flags=_FLAGS[_RST],
            window=0,
        )

    def _on_reset(self) -> None:
        state = self.state
        if state is TcpState.TIME_WAIT or state is TcpState.CLOSING or state is TcpState.LAST_ACK:
            self._enter_closed()
            return
        if state is TcpState.SYN_RECEIVED:
            code = errno.ECONNREFUSED if self._active else errno.ECONNRESET
        elif state is TcpState.CLOSE_WAIT:
            code = errno.EPIPE
        else:
            code = errno.ECONNRESET
        self.error = _error(code)
        self._enter_closed()

    def _enter_closed(self) -> None:
        self.state = TcpState.CLOSED
        self._send_queue.clear()
        self._reorder.clear()
        self._rtx_deadline = None
        self._tlp_deadline = None
        self._rack_deadline = None
        self._persist_deadline = None
        self._delack_deadline = None
        self._keepalive_deadline = None
        self._time_wait_deadline = None
        self._ack_now = False
        self._syn_pending = False

    def _process_ack(
        self,
        segment: TcpRepr,
        flags: int,
        seq: int,
        ack: int,
        timestamps: Timestamps | None,
        now: float,
    ) -> bool:
        """Fifth step for synchronized states past SYN-RECEIVED; ``False`` drops the segment."""
        snd_una = self._snd_una
        if ack > self._snd_max:
            # Acknowledges something not yet sent: ACK and drop (RFC 9293 3.10.7.4).
            self._challenge_ack(now)
            return False
        if ack < snd_una - self._max_snd_wnd:
            # RFC 5961 section 5.2: far below anything in flight: challenge.
            self._challenge_ack(now)
            return False

        window = segment.window << self._snd_wscale
        self._persist_unanswered = 0
        sack_enabled = self._sack_enabled
        sacked_before = self._sacked_bytes
        if sack_enabled:
            if segment.options:
                for option in segment.options:
                    if type(option) is SackBlocks:
                        self._take_sack(option.blocks, ack, now)
                        break
            if ack > snd_una:
                # Before the ACK trims the send records RACK reads.
                self._rack_delivered(ack, now)

        if ack > snd_una:
            self._on_ack_advance(ack, timestamps, now)
        elif (
            ack == snd_una
            and not segment.payload
            and not flags & (_SYN | _FIN)
            and window == self._snd_wnd
            and self._snd_max > snd_una
            # RFC 6675 section 2: with SACK, a duplicate ACK SACKs new data; one
            # with only a D-SACK (a needless retransmission arrived) is not.
            and (not sack_enabled or self._sacked_bytes > sacked_before)
        ):
            self._on_duplicate_ack(now)
        elif self._sack_enabled and not self._in_recovery and self._snd_max > snd_una:
            self._maybe_enter_recovery(now)
        if sack_enabled and (self._sacked_starts or self._rexmits or self._in_recovery):
            self._rack_detect(now)

        # RFC 9293 3.10.7.4: the window comes from the newest segment only.
        if self._snd_wl1 < seq or (self._snd_wl1 == seq and self._snd_wl2 <= ack):
            if window != self._snd_wnd:
                self._output_wanted = True
            self._snd_wnd = window
            if window > self._max_snd_wnd:
                self._max_snd_wnd = window
            self._snd_wl1 = seq
            self._snd_wl2 = ack
            if window and self._persist_deadline is not None:
                self._persist_deadline = None
                self._persist_backoff = 0
        return True

    def _on_ack_advance(self, ack: int, timestamps: Timestamps | None, now: float) -> None:
        acked = ack - self._snd_una
        # RFC 7661 / Linux's tcp_is_cwnd_limited: the window grows only while it
        # is what limits the sender, not after an idle or application-limited spell.
        cwnd_limited = 2 * (self._snd_max - self._snd_una) >= self._cc.cwnd
        sample_sends = self._snd_una >= self._rexmit_high
        self._snd_una = ack
        if self._snd_nxt < ack:
            # After a go-back-N the originals arrived: skip what they covered.
            self._snd_nxt = ack
        self.bytes_acked += self._send_queue.drop_until(ack)
        if self._sacked_starts:
            self._trim_scoreboard(ack)
        xmit_ends = self._xmit_ends
        oldest_sent: float | None = None
        if xmit_ends and xmit_ends[0] <= ack:
            gone = bisect_right(xmit_ends, ack)
            if sample_sends:
                oldest_sent = self._xmit_times[0]
                newest_sent = self._xmit_times[gone - 1]
            del xmit_ends[:gone], self._xmit_times[:gone], self._xmit_orders[:gone]
        if self._tlp_high is not None and ack >= self._tlp_high:
            self._tlp_high = None
        probe = self._tlp_retransmitted
        if probe is not None and ack > probe[2]:
            # RFC 8985 section 7.4: past the probe with no D-SACK for it, so
            # the probe repaired a loss; the congestion response is a fast
            # recovery's, as Linux's CWR state gives (one reduction, at once).
            self._tlp_retransmitted = None
            if not self._in_recovery:
                self.loss_probe_repairs += 1
                # The flight as this ACK found it.
                self._cc.on_loss(now, self._snd_max - ack + acked)
                self._cc.on_recovery_end(now)
        self._retries = 0
        self._persist_backoff = 0
        # Something worked: forget soft errors (as Linux clears sk_err_soft).
        self._soft_error = None
        self._output_wanted = True

        if oldest_sent is not None:
            # As Linux prefers: the send times of the data this ACK covers,
            # to the microsecond, rather than the timestamp option's
            # millisecond clock (at sub-millisecond round trips its samples
            # are 0 or 1 ms, and a minimum RTT of 0 leaves RACK no
            # reordering window).  The oldest send gives the smoothed RTT
            # (tcp_ack_update_rtt's seq_rtt), the newest the minimum (ca_rtt).
            self._rtt_sample(now - oldest_sent, now - newest_sent)
            self._rtt_seq = None
        elif timestamps is not None and timestamps.echo_reply:
            self._timestamp_rtt(timestamps.echo_reply, now)
        elif self._rtt_seq is not None and ack >= self._rtt_seq:
            self._rtt_sample(now - self._rtt_time)
            self._rtt_seq = None

        if self._in_recovery:
            if self._timeout_recovery:
                self._cc.on_ack(acked, now, self.srtt)
            if ack > self._recover:
                self._in_recovery = False
                self._dupacks = 0
                if self._timeout_recovery:
                    self._timeout_recovery = False
                else:
                    self._cc.on_recovery_end(now)
            elif self._timeout_recovery:
                if self._high_rxt < ack:
                    self._high_rxt = ack
            else:
                # RFC 6582 partial ACK: the next hole is lost too.
                self._dupacks = 0
                if not self._sack_enabled:
                    self._high_rxt = ack
                    self._lost_edge = max(self._lost_edge, ack + self.send_mss)
                    self._force_rexmit = True
                elif self._high_rxt < ack:
                    self._high_rxt = ack
        else:
            self._dupacks = 0
            if cwnd_limited:
                self._cc.on_ack(acked, now, self.srtt)
            if self._sack_enabled and self._sacked_starts:
                self._maybe_enter_recovery(now)

        if self._snd_max > ack:
            self._rtx_deadline = now + self.rto
            self._stall_start = now
        else:
            self._rtx_deadline = None
            self._stall_start = None
        self._arm_loss_probe(now)

        state = self.state
        if self._fin_queued and ack == self._send_queue.end + 1:
            # Our FIN is acknowledged.
            if state is TcpState.FIN_WAIT_1:
                self.state = TcpState.FIN_WAIT_2
            elif state is TcpState.CLOSING:
                self._enter_time_wait(now)
            elif state is TcpState.LAST_ACK:
                self._enter_closed()

    def _on_duplicate_ack(self, now: float) -> None:
        self._dupacks += 1
        if self._in_recovery:
            self._output_wanted = True
            return
        self._maybe_enter_recovery(now)

    def _maybe_enter_recovery(self, now: float) -> None:
        """RFC 6675 section 5: three duplicate ACKs, or more than two segments SACKed above."""
        if self._snd_una <= self._recover:
            return  # RFC 6582 section 4: not for losses of a recovery already handled
        threshold = self._reordering
        lost = self._dupacks >= threshold or (self._sacked_bytes > (threshold - 1) * self.send_mss)
        if lost:
            self._enter_recovery(now)

    def _enter_recovery(self, now: float) -> None:
        self._in_recovery = True
        self._tlp_deadline = None
        # This recovery's reduction covers whatever a probe repaired.
        self._tlp_retransmitted = None
        self.fast_recoveries += 1
        self._recover = self._snd_max - 1
        self._undo_cwnd = self._cc.cwnd
        self._undo_ssthresh = self._cc.ssthresh
        self._undo_retrans = 0
        self._undo_from = self._snd_una
        self._undo_entry_segments = max(self._dupacks, self._sacked_bytes // self.send_mss)
        self._cc.on_loss(now, self._snd_max - self._snd_una)
        self._high_rxt = self._snd_una
        self._lost_edge = self._snd_una + self.send_mss
        self._rexmits.clear()
        self._lost_again.clear()
        self._force_rexmit = True
        self._rtt_seq = None
        self._output_wanted = True

    # SACK scoreboard -------------------------------------------------------

    def _take_sack(self, blocks: tuple[tuple[int, int], ...], ack: int, now: float) -> None:
        snd_una = self._snd_una
        snd_max = self._snd_max
        for index, (left_wire, right_wire) in enumerate(blocks):
            left = snd_una + ((left_wire - snd_una + _HALF & _MASK) - _HALF)
            right = left + ((right_wire - left_wire) & _MASK)
            if index == 0 and left < right <= ack:
                # RFC 2883: a first block below the cumulative ACK reports a duplicate.
                probe = self._tlp_retransmitted
                if probe is not None and left < probe[1] and right > probe[0]:
                    # The probe's data had arrived before it: nothing was lost.
                    self._tlp_retransmitted = None
                self._on_dsack(left)
                continue
            # Anything beyond what we sent is bogus.
            if left < snd_una:
                left = snd_una
            if right > snd_max or right <= left:
                continue
            self._add_sacked(left, right)
            self._rack_delivered(right, now)

    # RACK and TLP (RFC 8985) -------------------------------------------

    def _rack_delivered(self, end: int, now: float) -> None:
        """Data ending at ``end`` reached the peer: remember it if it was sent last."""
        order = -1
        sent = 0.0
        for rexmit_start, rexmit_end, rexmit_time, rexmit_order in reversed(self._rexmits):
            if rexmit_start < end <= rexmit_end:
                # As Linux: delivered sooner than the minimum RTT after the
                # retransmission, it was the original that arrived.
                if self._min_rtt is None or now - rexmit_time >= self._min_rtt:
                    order = rexmit_order
                    sent = rexmit_time
                break
        if order < 0:
            index = bisect_left(self._xmit_ends, end)
            if index == len(self._xmit_ends):
                return
            order = self._xmit_orders[index]
            sent = self._xmit_times[index]
        if order > self._rack_order:
            self._rack_order = order
            self._rack_rtt = now - sent
            self._rack_end = end
        elif order == self._rack_order and end > self._rack_end:
            self._rack_end = end

    def _rack_reordering_window(self) -> float:
        # As Linux's tcp_rack_reo_wnd: no allowance while no reordering was
        # seen and recovery is on (or the duplicate threshold already says loss).
        if not self._rack_reordering_seen and (
            self._in_recovery or self._sacked_bytes >= self._reordering * self.send_mss
        ):
            return 0.0
        min_rtt = self._min_rtt if self._min_rtt is not None else 0.0
        srtt = self.srtt if self.srtt is not None else 0.0
        return min(min_rtt / 4 * self._rack_steps, srtt)

    def _rack_detect(self, now: float) -> None:
        """RFC 8985 section 6.2: data sent before delivered data, long enough ago, is lost."""
        self._rack_deadline = None
        snd_una = self._snd_una
        rack_order = self._rack_order
        if rack_order < 0 or self._snd_max <= snd_una:
            return
        wait = self._rack_rtt + self._rack_reordering_window()
        # A nanosecond of slack: a re-check is due at ``sent + wait``, and in
        # floating point that can be ``now`` while ``sent`` is still a hair
        # above ``now - wait`` (the timer would fire at the same instant forever).
        cutoff = now - wait + _CLOCK_SLACK
        next_check: float | None = None
        newly_lost = False

        # First transmissions: sent in sequence order, so those sent before the
        # RACK segment are a prefix, and the lost ones a prefix of that.
        times, ends = self._xmit_times, self._xmit_ends
        before = bisect_left(self._xmit_orders, rack_order)
        lost = min(before, bisect_right(times, cutoff))
        edge = ends[lost - 1] if lost else snd_una
        if lost == before < len(times) and self._xmit_orders[before] == rack_order:
            # The RACK send itself: what of it lies below its delivered part.
            below = min(self._rack_end, ends[before])
            if times[before] <= cutoff:
                edge = max(edge, below)
            elif self._next_hole(max(edge, snd_una), below) is not None:
                next_check = times[before] + wait
        if edge > snd_una and edge > self._lost_edge:
            if self._next_hole(max(self._lost_edge, snd_una), edge) is not None:
                newly_lost = True
            self._lost_edge = edge
        if lost < before:
            start = ends[lost - 1] if lost else snd_una
            if self._next_hole(max(start, snd_una), ends[before - 1]) is not None:
                next_check = times[lost] + wait

        if self._rexmits:
            kept: list[tuple[int, int, float, int]] = []
            for entry in self._rexmits:
                start, end, sent, order = entry
                if end <= snd_una:
                    continue
                if order == rack_order and start < self._rack_end < end and sent <= cutoff:
                    # A retransmitted TSO packet delivered in part: its pieces
                    # below the delivered one are lost again.
                    hole = self._next_hole(max(start, snd_una), self._rack_end)
                    if hole is not None:
                        self._retransmission_lost(hole)
                        newly_lost = True
                        kept.append((self._rack_end, end, sent, order))
                        continue
                if order < rack_order:
                    if sent > cutoff:
                        due = sent + wait
                        if next_check is None or due < next_check:
                            next_check = due
                        kept.append(entry)
                        continue
                    hole = self._next_hole(max(start, snd_una), end)
                    if hole is not None:
                        self._retransmission_lost(hole)
                        newly_lost = True
                    continue
                kept.append(entry)
            self._rexmits = kept

        if newly_lost:
            self._output_wanted = True
            if not self._in_recovery:
                lost_edge = self._lost_edge
                self._enter_recovery(now)
                self._lost_edge = max(self._lost_edge, lost_edge)
        self._rack_deadline = next_check

    def _arm_loss_probe(self, now: float) -> None:
        """RFC 8985 section 7.2: a probe two round trips after the last send."""
        flight = self._snd_max - self._snd_una
        if (
            self.srtt is None
            or flight <= 0
            or not self._sack_enabled
            or self._in_recovery
            or self._tlp_high is not None
            or self.state not in _SENDING
        ):
            self._tlp_deadline = None
            return
        # Linux's allowances: a delayed ACK when one segment is out, else two ticks.
        pto = 2 * self.srtt + (self.config.min_rto if flight <= self.send_mss else _TLP_SLACK)
        if self._rtx_deadline is not None and self._rtx_deadline - now < pto:
            pto = max(0.0, self._rtx_deadline - now)
        self._tlp_deadline = now + pto

    def _on_loss_probe(self, now: float, out: list[TcpRepr]) -> None:
        """RFC 8985 section 7.3: the last segment sent, again.

        The RFC's first choice is a new segment when one may go.  But the
        flights that need a probe are mostly ones whose only ACK was lost (a
        receiver acknowledges a whole TSO packet, or a coalesced one, with a
        single ACK), and a receiver may hold the ACK of one new in-order
        full-sized segment for its delayed-ACK timer (Linux: 40 ms at
        least, 200 ms at worst), while it acknowledges a duplicate at once
        (RFC 9293 section 3.10.7.4: an unacceptable segment is answered
        with an ACK; Linux adds a D-SACK and its quick-ACK mode).  The last
        segment again is the RFC's own alternative, and the original TLP
        proposal's only probe (draft-dukkipati-tcpm-tcp-loss-probe): its ACK
        says as much about the tail (a D-SACK if it had arrived, a SACK above
        a hole if not) one round trip after the probe rather than 40 ms.
        """
        self._tlp_deadline = None
        snd_una = self._snd_una
        if self._in_recovery or self._snd_max <= snd_una or self.state not in _SENDING:
            return
        data_end = self._send_queue.end
        end = min(self._snd_max, data_end)
        start = max(snd_una, end - self.send_mss)
        if start >= end:
            return  # only the FIN is out: the RTO sends it again
        self._send_data(start, end - start, now, out)
        if len(self._rexmits) < _MAX_TRACKED_RETRANSMISSIONS:
            self._rexmits.append((start, end, now, self._send_order))
        self._tlp_retransmitted = (start, end, self._snd_max)
        self.loss_probes += 1
        self._tlp_high = self._snd_max
        self._rtx_deadline = now + self.rto

    def _on_dsack(self, left: int) -> None:
        self._rack_reordering_seen = True
        if self._snd_una >= self._rack_steps_round_end:
            self._rack_steps = min(self._rack_steps + 1, _MAX_RACK_STEPS)
            self._rack_steps_round_end = self._snd_max
        if self._undo_cwnd is None or left < self._undo_from or self._undo_retrans <= 0:
            return
        self._undo_retrans -= 1
        if self._undo_retrans:
            return
        # Every retransmission of the last recovery arrived twice: the "loss" was
        # reordering.  Restore the window and wait for more duplicates next time.
        cc = self._cc
        cc.cwnd = max(cc.cwnd, self._undo_cwnd)
        cc.ssthresh = max(cc.ssthresh, self._undo_ssthresh)
        self._undo_cwnd = None
        self.spurious_recoveries += 1
        self._rack_reordering_seen = True
        self._reordering = min(
            max(self._reordering, self._undo_entry_segments + 1), _MAX_REORDERING
        )
        if self._in_recovery and not self._timeout_recovery:
            self._in_recovery = False
            self._dupacks = 0
        self._output_wanted = True

    def _add_sacked(self, left: int, right: int) -> None:
        starts, ends = self._sacked_starts, self._sacked_ends
        low = bisect_left(ends, left)  # first block ending at or after left
        high = bisect_right(starts, right)  # blocks starting at or before right
        if low < high:
            removed = 0
            for index in range(low, high):
                removed += ends[index] - starts[index]
            left = min(left, starts[low])
            right = max(right, ends[high - 1])
            self._sacked_bytes -= removed
        elif len(starts) >= _MAX_SACK_BLOCKS_KEPT:
            # A bounded scoreboard: an unrecorded block only costs a retransmission.
            return
        starts[low:high] = [left]
        ends[low:high] = [right]
        self._sacked_bytes += right - left

    def _trim_scoreboard(self, ack: int) -> None:
        starts, ends = self._sacked_starts, self._sacked_ends
        gone = bisect_right(ends, ack)
        for index in range(gone):
            self._sacked_bytes -= ends[index] - starts[index]
        del starts[:gone], ends[:gone]
        if starts and starts[0] < ack:
            self._sacked_bytes -= ack - starts[0]
            starts[0] = ack

    def _clear_scoreboard(self) -> None:
        self._rexmits.clear()
        self._lost_again.clear()
        self._sacked_starts.clear()
        self._sacked_ends.clear()
        self._sacked_bytes = 0
        self._in_recovery = False
        self._timeout_recovery = False
        self._dupacks = 0
        self._high_rxt = self._lost_edge = self._snd_una

    def _sacked_below(self, limit: int) -> int:
        total = 0
        ends = self._sacked_ends
        for index, start in enumerate(self._sacked_starts):
            if start >= limit:
                break
            total += min(ends[index], limit) - start
        return total

    def _pipe(self) -> int:
        """RFC 6675's estimate of bytes in the network."""
        flight = self._snd_nxt - self._snd_una
        if not self._in_recovery:
            return flight - self._sacked_bytes
        # Above the lost edge and not SACKed is in flight; below it only what
        # was retransmitted and not yet SACKed.  A partial ACK can pass the
        # lost edge: what it acknowledged is in flight no more.
        lost_edge = max(self._lost_edge, self._snd_una)
        above = self._snd_nxt - lost_edge
        if self._sacked_bytes:
            above -= self._sacked_bytes - self._sacked_below(lost_edge)
        if not self._sack_enabled:
            above -= self._dupacks * self.send_mss
        retransmitted = 0
        if self._high_rxt > self._snd_una:
            retransmitted = self._high_rxt - self._snd_una - self._sacked_below(self._high_rxt)
        return max(0, above) + retransmitted

    def _retransmission_lost(self, hole: tuple[int, int]) -> None:
        """Count ``hole`` of a retransmission as lost again: resent in this recovery, or marked."""
        self.lost_retransmissions += 1
        if self._in_recovery:
            self._lost_again.append(hole)
        elif hole[1] > self._lost_edge:
            self._lost_edge = hole[1]

    def _next_hole(self, start: int, limit: int) -> tuple[int, int] | None:
        """The first un-SACKed range at or after ``start`` and below ``limit``."""
        starts, ends = self._sacked_starts, self._sacked_ends
        index = bisect_right(ends, start)
        if index < len(starts) and starts[index] <= start:
            start = ends[index]
            index += 1
        if start >= limit:
            return None
        if index < len(starts) and starts[index] < limit:
            return start, starts[index]
        return start, limit

    # RTT -----------------------------------------------------------------

    def _timestamp_rtt(self, echo_reply: int, now: float) -> None:
        sent_ms = (echo_reply - self._ts_offset) & _MASK
        elapsed = ((int(now * 1000) - sent_ms) & _MASK) / 1000
        if elapsed <= _MAX_RTT_SAMPLE:
            self._rtt_sample(elapsed)

    def _rtt_sample(self, rtt: float, newest: float | None = None) -> None:
        """One RTT measurement; ``newest``, if given, is the one for the minimum RTT."""
        if rtt < 0:
            return
        least = rtt if newest is None or newest < 0 else newest
        if self._min_rtt is None or least < self._min_rtt:
            self._min_rtt = least
        if self.srtt is None or self.rttvar is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        config = self.config
        # Linux's form of RFC 6298 (2.3): the variance term is at least min_rto.
        self.rto = min(self.srtt + max(4 * self.rttvar, config.min_rto), config.max_rto)

    # Received data ---------------------------------------------------------

    def _process_data(self, seq: int, payload: bytes, fin: bool, now: float) -> None:
        rcv_nxt = self._rcv_nxt
        if seq < rcv_nxt:
            skip = rcv_nxt - seq
            if skip > len(payload):
                return
            if self._sack_enabled:
                self._dsack = (seq, rcv_nxt)
                self._ack_now = True
            payload = payload[skip:]
            seq = rcv_nxt
        limit = self._rcv_adv
        if seq + len(payload) > limit:
            payload = payload[: max(0, limit - seq)]
            fin = False
            self._ack_now = True
        size = len(payload)
        if seq == rcv_nxt:
            if size:
                if now - self._last_data_received > self.rto:
                    # Linux's quick-ACK mode: after an idle period (and at the
                    # start) the first segments are acknowledged at once, so a
                    # sender's Nagle or slow start is not held up by our delayed ACK.
                    self._quickacks = _QUICKACKS
                self._last_data_received = now
                self._recv_buf.append(payload)
                rcv_nxt += size
                self.bytes_received += size
                if size > self._rcv_mss:
                    self._rcv_mss = min(size, self.config.mss)
                if self._reorder:
                    chunks, new_nxt = self._reorder.pop_ready(rcv_nxt)
                    for chunk in chunks:
                        self._recv_buf.append(chunk)
                    self.bytes_received += new_nxt - rcv_nxt
                    rcv_nxt = new_nxt
                    # Filling a hole is acknowledged at once (RFC 5681 section 4.2).
                    self._ack_now = True
                self._rcv_nxt = rcv_nxt
            if fin or (self._peer_fin_seq is not None and rcv_nxt == self._peer_fin_seq):
                self._on_fin(now)
                return
            if self._ack_now:
                pass
            elif (
                rcv_nxt - self._last_ack_sent > self._rcv_mss
                or self._quickacks
                or self.config.delayed_ack <= 0
            ):
                if self._quickacks and size:
                    self._quickacks -= 1
                self._ack_now = True
            elif self._delack_deadline is None:
                self._delack_deadline = now + self.config.delayed_ack
        else:
            if size and not self._reorder.insert(seq, payload) and self._sack_enabled:
                self._dsack = (seq, seq + size)
            if fin:
                self._peer_fin_seq = seq + size
            # Out of order: a duplicate ACK at once, with SACK blocks (RFC 5681 4.2).
            self._ack_now = True
        self._output_wanted = True

    def _on_fin(self, now: float) -> None:
        self._rcv_nxt += 1
        self._fin_received = True
        self._peer_fin_seq = None
        self._reorder.clear()
        self._output_wanted = True
        state = self.state
        if state is TcpState.ESTABLISHED and self.config.delayed_ack > 0:
            # A passive close: the ACK waits as a delayed ACK does (Linux's
            # tcp_fin enters its "pingpong" mode here), so that an application
            # that closes at once answers with one FIN+ACK segment, not an ACK
            # and then a FIN.  The peer's FIN_WAIT_1 lasts that much longer.
            if self._delack_deadline is None:
                self._delack_deadline = now + self.config.delayed_ack
        else:
            self._ack_now = True
        if state is TcpState.ESTABLISHED:
            self.state = TcpState.CLOSE_WAIT
        elif state is TcpState.FIN_WAIT_1:
            # Our FIN not yet acknowledged (else we would be in FIN-WAIT-2): simultaneous close.
            self.state = TcpState.CLOSING
        elif state is TcpState.FIN_WAIT_2:
            self._enter_time_wait(now)

    def _enter_time_wait(self, now: float) -> None:
        self.state = TcpState.TIME_WAIT
        self._time_wait_deadline = now + self.config.time_wait
        self._rtx_deadline = None
        self._tlp_deadline = None
        self._rack_deadline = None
        self._persist_deadline = None
        self._keepalive_deadline = None

    def _receive_space(self) -> int:
        return self.config.receive_buffer - len(self._recv_buf)

    def _maybe_window_update(self) -> None:
        current = self._rcv_adv - self._rcv_nxt
        possible = self._usable_window_edge() - self._rcv_nxt
        if possible >= 2 * current and possible - current >= self._sws_threshold():
            self._ack_now = True
            self._output_wanted = True

    def _sws_threshold(self) -> int:
        # RFC 9293 3.8.6.2.2: open the window by at least min(buffer/2, MSS).
        return min(self.config.receive_buffer // 2, self._rcv_mss)

    def _usable_window_edge(self) -> int:
        space = self._receive_space()
        maximum = 0xFFFF << self._rcv_wscale
        if space > maximum:
            space = maximum
        return self._rcv_nxt + space

    def _window_field(self) -> int:
        """The window to advertise now; moves :attr:`_rcv_adv` (never backwards)."""
        # The same arithmetic as _usable_window_edge and _sws_threshold, inlined:
        # this runs for every segment sent.
        rcv_nxt = self._rcv_nxt
        rcv_adv = self._rcv_adv
        shift = self._rcv_wscale
        buffer = self.config.receive_buffer
        space = buffer - self._recv_buf.length
        if space > 0xFFFF << shift:
            space = 0xFFFF << shift
        edge = rcv_nxt + space
        threshold = self._rcv_mss if self._rcv_mss < buffer // 2 else buffer // 2
        if edge - rcv_adv < threshold and rcv_adv >= rcv_nxt:
            edge = rcv_adv
        field = (edge - rcv_nxt) >> shift
        if field > 0xFFFF:
            field = 0xFFFF
        advertised = rcv_nxt + (field << shift)
        if advertised > rcv_adv:
            self._rcv_adv = advertised
        return field

    # ------------------------------------------------------------------ output

    def deadline(self) -> float | None:
        """When :meth:`poll` must next run; ``None`` when nothing is pending."""
        if self._output_wanted or self._pending or self._ack_now:
            return self._now
        earliest: float | None = None
        for when in (
            self._rtx_deadline,
            self._tlp_deadline,
            self._rack_deadline,
            self._delack_deadline,
            self._persist_deadline,
            self._keepalive_deadline,
            self._time_wait_deadline,
        ):
            if when is not None and (earliest is None or when < earliest):
                earliest = when
        return earliest

    def poll(self, now: float) -> list[TcpRepr]:
        """Every segment due at ``now``: handshake, data, ACKs, retransmissions, probes, RST."""
        self._now = now
        out = self._pending
        self._pending = []
        self._output_wanted = False
        state = self.state
        if state is TcpState.CLOSED:
            return out
        if self._time_wait_deadline is not None and now >= self._time_wait_deadline:
            self._enter_closed()
            return out
        if self._tlp_deadline is not None and now >= self._tlp_deadline:
            self._on_loss_probe(now, out)
        if self._rack_deadline is not None and now >= self._rack_deadline:
            self._rack_detect(now)
        if self._rtx_deadline is not None and now >= self._rtx_deadline:
            self._on_retransmit_timeout(now, out)
            if self.state is TcpState.CLOSED:
                return out
        if self._persist_deadline is not None and now >= self._persist_deadline:
            self._on_persist_timeout(now, out)
            if self.state is TcpState.CLOSED:
                return out
        if self._keepalive_deadline is not None and now >= self._keepalive_deadline:
            self._on_keepalive_timeout(now, out)
            if self.state is TcpState.CLOSED:
                return out
        if self._delack_deadline is not None and now >= self._delack_deadline:
            self._ack_now = True
        if self._keepalive_rearm:
            self._keepalive_rearm = False
            if self._keepalive is not None and self.state in _KEEPALIVE_STATES:
                self._keepalive_deadline = now + self._keepalive[0]
        sent_before = len(out)
        if self._syn_pending:
            self._send_syn(now, out)
        elif self.state in _SENDING:
            self._output(now, out)
        if self._ack_now and len(out) == sent_before and self.state is not TcpState.SYN_SENT:
            if self._sack_enabled and self._reorder:
                limit = 3 if self._ts_enabled else 4
                reports = self._reorder.sack_reports(limit, _MAX_SACK_REPORTS)
                for blocks in reports[1:]:
                    out.append(self._segment(self._snd_nxt, _ACK, b"", sack=blocks))
                out.append(self._segment(self._snd_nxt, _ACK, b"", sack=reports[0]))
            else:
                out.append(self._segment(self._snd_nxt, _ACK, b""))
        self.segments_sent += len(out)
        return out

    def _send_syn(self, now: float, out: list[TcpRepr]) -> None:
        config = self.config
        syn_ack = self.state is TcpState.SYN_RECEIVED
        options: list[TcpOption] = [_mss_option(config.mss)]
        if self._sack_enabled:
            options.append(_SACK_PERMITTED)
        if self._ts_enabled:
            timestamps = _new(Timestamps)
            _set(timestamps, "value", self._ts_value(now))
            _set(timestamps, "echo_reply", self._ts_recent if syn_ack else 0)
            options.append(timestamps)
        if self._ws_enabled:
            options += (_NOP, _window_scale_option(self._rcv_wscale))
        if syn_ack:
            self._rcv_adv = self._rcv_nxt + min(config.receive_buffer, 0xFFFF)
            self._last_ack_sent = self._rcv_nxt
        ack = self._rcv_nxt & _MASK if syn_ack else 0
        flags = _FLAGS[_SYN | _ACK] if syn_ack else _FLAGS[_SYN]
        window = min(config.receive_buffer, 0xFFFF)
        if self._sack_enabled is self._ts_enabled:
            # MSS (4), NOP + window scale (4), SACK permitted with timestamps
            # (12): whole words, so the segment may skip TcpRepr's checks.
            segment = _new(TcpRepr)
            _set(segment, "src_port", self.local[1])
            _set(segment, "dst_port", self.remote[1])
            _set(segment, "seq", self.iss & _MASK)
            _set(segment, "ack", ack)
            _set(segment, "flags", flags)
            _set(segment, "window", window)
            _set(segment, "options", tuple(options))
            _set(segment, "payload", b"")
            _set(segment, "urgent", 0)
        else:
            # TcpRepr pads the options to a word.
            segment = TcpRepr(
                src_port=self.local[1],
                dst_port=self.remote[1],
                seq=self.iss,
                ack=ack,
                flags=flags,
                window=window,
                options=tuple(options),
            )
        out.append(segment)
        self._syn_pending = False
        self._ack_now = False
        self._delack_deadline = None
        self._snd_nxt = self.iss + 1
        if self._snd_max < self._snd_nxt:
            self._snd_max = self._snd_nxt
        if self._retries:
            self.retransmissions += 1
        else:
            self._rtt_time = now
        self._rtx_deadline = now + self.rto

    def _ts_value(self, now: float) -> int:
        return (int(now * 1000) + self._ts_offset) & _MASK

    def _segment(
        self,
        seq: int,
        flags: int,
        payload: bytes | memoryview,
        *,
        options: tuple[TcpOption, ...] | None = None,
        sack: list[tuple[int, int]] | None = None,
    ) -> TcpRepr:
        """A segment from the current receive state; an ACK in it clears pending ACKs."""
        if options is None:
            # Every layout here is a multiple of four bytes (two NOPs before each
            # option), as _trusted_segment requires.
            options = ()
            if self._ts_enabled:
                timestamps = _new(Timestamps)
                _set(timestamps, "value", (int(self._now * 1000) + self._ts_offset) & _MASK)
                _set(timestamps, "echo_reply", self._ts_recent)
                options = (_NOP, _NOP, timestamps)
            if self._sack_enabled and (self._reorder or self._dsack is not None):
                limit = 3 if self._ts_enabled else 4
                blocks = sack if sack else self._reorder.sack_blocks(limit)
                if self._dsack is not None:
                    # RFC 2883: the duplicate goes first, once.
                    blocks = [self._dsack, *blocks[: limit - 1]]
                    self._dsack = None
                sack_option = _new(SackBlocks)
                _set(sack_option, "blocks", tuple((a & _MASK, b & _MASK) for a, b in blocks))
                options += (_NOP, _NOP, sack_option)
        window = 0
        ack = 0
        if flags & _ACK:
            window = self._window_field()
            ack = self._rcv_nxt & _MASK
            self._last_ack_sent = self._rcv_nxt
            self._ack_now = False
            self._delack_deadline = None
        segment = _new(TcpRepr)
        _set(segment, "src_port", self.local[1])
        _set(segment, "dst_port", self.remote[1])
        _set(segment, "seq", seq & _MASK)
        _set(segment, "ack", ack)
        _set(segment, "flags", _FLAGS[flags])
        _set(segment, "window", window)
        _set(segment, "options", options)
        _set(segment, "payload", payload)
        _set(segment, "urgent", 0)
        return segment

    def _output(self, now: float, out: list[TcpRepr]) -> None:
        """Send what the windows allow: lost data first, then new data, then the FIN."""
        cc = self._cc
        mss = self.send_mss
        max_payload = self._max_payload
        pipe = self._pipe()
        data_end = self._send_queue.end

        if self._in_recovery:
            force = self._force_rexmit
            self._force_rexmit = False
            while self._lost_again and (force or pipe < cc.cwnd):
                force = False
                again_start, again_end = self._lost_again.pop(0)
                again_start = max(again_start, self._snd_una)
                again_end = min(again_end, data_end)
                if again_start >= again_end:
                    continue
                self._send_data(again_start, again_end - again_start, now, out)
                self._rexmits.append((again_start, again_end, now, self._send_order))
                pipe += again_end - again_start
            while force or pipe < cc.cwnd:
                # A forced retransmission is one segment; others fill what cwnd allows.
                allowed = mss if force else max(mss, cc.cwnd - pipe)
                force = False
                start = max(self._high_rxt, self._snd_una)
                hole = self._next_hole(start, min(self._lost_edge, self._snd_max, data_end))
                if hole is None:
                    break
                length = min(hole[1] - hole[0], max_payload, allowed)
                self._send_data(hole[0], length, now, out)
                self._high_rxt = hole[0] + length
                if len(self._rexmits) < _MAX_TRACKED_RETRANSMISSIONS:
                    self._rexmits.append((hole[0], hole[0] + length, now, self._send_order))
                pipe += length

        window_end = self._snd_una + self._snd_wnd
        sent_any = False
        while True:
            snd_nxt = self._snd_nxt
            unsent = data_end - snd_nxt
            if unsent <= 0:
                break
            room = cc.cwnd - pipe
            usable = window_end - snd_nxt
            length = unsent
            if length > max_payload:
                length = max_payload
            if length > usable:
                length = usable
            if length > room:
                length = room
            if length <= 0:
                break
            if length < mss and snd_nxt >= self._snd_max:
                if length < unsent:
                    # Sender silly-window avoidance (RFC 9293 3.8.6.2.1).
                    if length < self._max_snd_wnd // 2:
                        break
                elif not self.nodelay and snd_nxt > self._snd_una and not self._fin_queued:
                    # Nagle: a small segment waits while data is unacknowledged.
                    break
            elif (
                length < unsent
                and length < max_payload
                and max_payload > mss
                and not self._in_recovery
                and self._tso_defers(length, now)
            ):
                break
            self._send_data(snd_nxt, length, now, out)
            pipe += length
            sent_any = True

        if self._fin_queued and self._snd_nxt == data_end and self.state in _FIN_STATES:
            self._send_fin(data_end, now, out)
            sent_any = True
        if sent_any:
            self._arm_loss_probe(now)

        # Nothing in flight and nothing sendable while data waits: probe the window.
        if (
            not sent_any
            and self._snd_max == self._snd_una
            and (data_end > self._snd_nxt)
            and self._rtx_deadline is None
            and self._persist_deadline is None
        ):
            self._persist_deadline = now + self._persist_interval()

    def _tso_defers(self, length: int, now: float) -> bool:
        """Whether a window-limited large segment waits for the next ACK (Linux's TSO deferral).

        Sending each ACK's room at once makes a packet per ACK, most of them
        small; waiting for the next ACK makes fewer, larger ones (less work
        per byte on both ends).  It waits only while less than a third of the
        window is free, so more than two thirds are in flight and ACKs are
        coming, and while the oldest segment in flight was sent at least half
        an RTT ago, so that its ACK is near (Linux's tcp_tso_should_defer).
        """
        if length * 3 >= min(self._snd_wnd, self._cc.cwnd):
            return False
        srtt = self.srtt
        times = self._xmit_times
        if srtt is None or not times:
            return False
        return now - times[0] >= srtt / 2

    def _send_data(self, start: int, length: int, now: float, out: list[TcpRepr]) -> None:
        end = start + length
        data_end = self._send_queue.end
        flags = _ACK
        if end == data_end:
            flags |= _PSH
            if self._fin_queued and self.state in _FIN_STATES:
                flags |= _FIN
        out.append(self._segment(start, flags, self._send_queue.read(start, length)))
        self._send_order += 1
        if start < self._snd_max:
            self.retransmissions += 1
            self._rtt_seq = None
            if end > self._rexmit_high:
                self._rexmit_high = end
            if self._undo_cwnd is not None:
                self._undo_retrans += 1
        else:
            self.bytes_sent += length
            self._xmit_ends.append(end)
            self._xmit_times.append(now)
            self._xmit_orders.append(self._send_order)
            if self._rtt_seq is None and not self._ts_enabled:
                self._rtt_seq = end
                self._rtt_time = now
        if flags & _FIN:
            end += 1
        if end > self._snd_nxt:
            self._snd_nxt = end
        if end > self._snd_max:
            self._snd_max = end
        if self._rtx_deadline is None:
            self._rtx_deadline = now + self.rto
        if self._stall_start is None:
            self._stall_start = now
        self._persist_deadline = None

    def _send_fin(self, fin_seq: int, now: float, out: list[TcpRepr]) -> None:
        out.append(self._segment(fin_seq, _FIN | _ACK, b""))
        if fin_seq + 1 <= self._snd_max:
            self.retransmissions += 1
        self._snd_nxt = fin_seq + 1
        if self._snd_max < self._snd_nxt:
            self._snd_max = self._snd_nxt
        if self._rtx_deadline is None:
            self._rtx_deadline = now + self.rto
        if self._stall_start is None:
            self._stall_start = now

    # ------------------------------------------------------------------ timers

    def _fail(self, code: int) -> None:
        error = self._soft_error if self._soft_error is not None else _error(code)
        self.error = error
        self._enter_closed()

    def _on_retransmit_timeout(self, now: float, out: list[TcpRepr]) -> None:
        config = self.config
        self._rtx_deadline = None
        if self.state is TcpState.SYN_SENT or (
            self.state is TcpState.SYN_RECEIVED and self._snd_una == self.iss
        ):
            self._retries += 1
            if self._retries > config.syn_retries:
                self._fail(errno.ETIMEDOUT)
                return
            self.timeouts += 1
            self.rto = min(self.rto * 2, config.max_rto)
            self._syn_pending = True
            return
        if self._snd_max == self._snd_una:
            return
        self._retries += 1
        self.timeouts += 1
        stalled_for = now - self._stall_start if self._stall_start is not None else 0.0
        if self._retries > config.data_retries or (
            config.user_timeout is not None and stalled_for >= config.user_timeout
        ):
            self._fail(errno.ETIMEDOUT)
            return
        self._cc.on_timeout(now, self._snd_max - self._snd_una)
        self._undo_cwnd = None
        self._tlp_deadline = None
        self._tlp_high = None
        self._tlp_retransmitted = None
        self._rack_deadline = None
        self._recover = self._snd_max - 1
        if self._retries > 1:
            # A second timeout in a row: the peer may have reneged on what it
            # SACKed (RFC 2018 section 8), so SACK information is no longer trusted.
            self._clear_scoreboard()
        self._rtt_seq = None
        data_end = self._send_queue.end
        if self._snd_una >= data_end:
            # Only the FIN is outstanding: send it again.
            self._snd_nxt = self._snd_una
            self._in_recovery = False
        else:
            # As Linux's loss state: every byte not SACKed is lost and goes again,
            # in order, under a one-segment window that slow start reopens
            # (RFC 5681 section 3.1); SACKed data is not sent twice.
            self._in_recovery = True
            self._timeout_recovery = True
            self._dupacks = 0
            self._high_rxt = self._snd_una
            self._lost_edge = self._snd_max
            self._rexmits.clear()
            self._lost_again.clear()
            self._force_rexmit = True
        self.rto = min(self.rto * 2, config.max_rto)
        self._output_wanted = True
        if self.state in _SENDING:
            self._output(now, out)
        self._rtx_deadline = now + self.rto
        if config.user_timeout is not None and self._stall_start is not None:
            # Linux clamps the timer so that TCP_USER_TIMEOUT is met on time.
            self._rtx_deadline = min(self._rtx_deadline, self._stall_start + config.user_timeout)

    def _persist_interval(self) -> float:
        return min(self.rto * (1 << min(self._persist_backoff, 16)), self.config.max_rto)

    def _on_persist_timeout(self, now: float, out: list[TcpRepr]) -> None:
        self._persist_deadline = None
        if self.state not in _SENDING:
            return
        data_end = self._send_queue.end
        if data_end <= self._snd_nxt or self._snd_max != self._snd_una:
            self._persist_backoff = 0
            return
        self._persist_backoff += 1
        self._persist_unanswered += 1
        if self._persist_unanswered > self.config.data_retries:
            self._fail(errno.ETIMEDOUT)
            return
        usable = self._snd_una + self._snd_wnd - self._snd_nxt
        if usable > 0:
            # RFC 9293 3.8.6.2.1: the override timeout sends what fits.
            self._send_data(self._snd_nxt, min(usable, data_end - self._snd_nxt), now, out)
        else:
            # Linux's zero-window probe: an old sequence number the peer must ACK.
            out.append(self._segment(self._snd_una - 1, _ACK, b""))
        if self._snd_max == self._snd_una:
            self._persist_deadline = now + self._persist_interval()

    def _arm_keepalive(self, now: float) -> None:
        if self._keepalive is None:
            self._keepalive_deadline = None
        else:
            self._keepalive_deadline = self._last_received + self._keepalive[0]

    def _on_keepalive_timeout(self, now: float, out: list[TcpRepr]) -> None:
        keepalive = self._keepalive
        if keepalive is None or self.state not in _KEEPALIVE_STATES:
            self._keepalive_deadline = None
            return
        idle, interval, probes = keepalive
        if self._snd_max != self._snd_una or self._send_queue.end > self._snd_nxt:
            # Data outstanding: the retransmission timer watches the peer.
            self._keepalive_deadline = now + idle
            return
        silent = now - self._last_received
        if silent < idle:
            self._keepalive_probes_out = 0
            self._keepalive_deadline = self._last_received + idle
            return
        if self._keepalive_probes_out >= probes:
            self.error = _error(errno.ETIMEDOUT)
            out.append(self._segment(self._snd_nxt, _RST | _ACK, b"", options=()))
            self._enter_closed()
            return
        out.append(self._segment(self._snd_una - 1, _ACK, b""))
        self._keepalive_probes_out += 1
        self._keepalive_deadline = now + interval

    @property
    def keepalive(self) -> tuple[float, float, int] | None:
        """``(idle, interval, probes)``: TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT; or ``None``."""
        return self._keepalive

    @keepalive.setter
    def keepalive(self, keepalive: tuple[float, float, int] | None) -> None:
        self._keepalive = keepalive
        self._keepalive_probes_out = 0
        # As Linux: the first probe comes a full idle period after the option is set,
        # counted from the next poll() (only poll() is told the time).
        self._keepalive_deadline = None
        self._keepalive_rearm = keepalive is not None
        self._output_wanted = True


_FIN_STATES = (
    TcpState.FIN_WAIT_1,
    TcpState.CLOSING,
    TcpState.LAST_ACK,
)
_SENDABLE_STATES = (
    TcpState.SYN_SENT,
    TcpState.SYN_RECEIVED,
    TcpState.ESTABLISHED,
    TcpState.CLOSE_WAIT,
)
