"""A DHCPv4 client (RFC 2131, options from RFC 2132), sans-I/O.

The client is a state machine that an interface drives: it hands out the
UDP payloads to send (from port 68 to port 67, with the IP addresses to use)
through :meth:`DhcpClient.poll`, takes the payloads that arrive on port 68
through :meth:`DhcpClient.receive`, and asks to be polled again at
:meth:`DhcpClient.deadline`.  It never reads a clock: every call gets ``now``.

States follow RFC 2131 section 4.4: INIT sends DISCOVER, SELECTING takes the
first OFFER and REQUESTs it, REQUESTING waits for the ACK (a NAK starts
over), BOUND holds the lease until T1, RENEWING asks the leasing server by
unicast until T2, REBINDING asks any server by broadcast until the lease
ends, and then the address is lost and the client starts again.  Lost
messages are sent again after 4, 8, 16, 32 and 64 seconds (section 4.1),
with up to a second of random spread so that clients that started together
do not stay in step; while renewing or rebinding, half the time left until
T2 (or the lease's end), at least 60 seconds (section 4.4.5).

The client asks for the broadcast flag, so servers answer to the broadcast
address: the interface has no address to receive a unicast reply on yet.

Untrusted bytes: :func:`parse_message` raises only :class:`DhcpError`; the
client drops what does not parse, what is not a reply to its own
transaction, and what lacks the options a reply must carry, and counts each
in :attr:`DhcpClient.dropped`.
"""

from __future__ import annotations

import enum
import ipaddress
import random
import struct
from collections import Counter
from dataclasses import dataclass, field

from ..protocols.ip import EthernetAddress

__all__ = [
    "CLIENT_PORT",
    "SERVER_PORT",
    "DhcpClient",
    "DhcpError",
    "DhcpLease",
    "DhcpMessage",
    "DhcpState",
    "MessageType",
    "OutgoingDhcp",
    "parse_message",
]

CLIENT_PORT = 68
SERVER_PORT = 67

_MAGIC_COOKIE = b"\x63\x82\x53\x63"
# op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr,
# sname, file: the fixed part before the magic cookie (RFC 2131 figure 1).
_FIXED = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
_BOOTREQUEST = 1
_BOOTREPLY = 2
_HTYPE_ETHERNET = 1
_BROADCAST_FLAG = 0x8000
# Servers must accept messages of at least 576 bytes (IP + UDP + DHCP); pad
# requests to the minimum BOOTP size as most clients do, for old relays.
_MIN_MESSAGE = 300

_ZERO = ipaddress.IPv4Address(0)
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")

# Option codes (RFC 2132).
_PAD = 0
_SUBNET_MASK = 1
_ROUTER = 3
_DNS_SERVERS = 6
_HOSTNAME = 12
_DOMAIN_NAME = 15
_MTU = 26
_REQUESTED_ADDRESS = 50
_LEASE_TIME = 51
_OVERLOAD = 52
_MESSAGE_TYPE = 53
_SERVER_ID = 54
_PARAMETERS = 55
_MAX_MESSAGE_SIZE = 57
_RENEWAL_TIME = 58
_REBINDING_TIME = 59
_CLIENT_ID = 61
_END = 255

_ASKED_FOR = bytes([_SUBNET_MASK, _ROUTER, _DNS_SERVERS, _DOMAIN_NAME, _MTU, _LEASE_TIME])

# RFC 2131 4.1: the retransmission delays before a lease is held.
_BACKOFF = (4.0, 8.0, 16.0, 32.0, 64.0)
# Attempts at one exchange before the client goes back to DISCOVER.
_REQUEST_ATTEMPTS = 4
# RFC 2131 4.4.5: the shortest wait between renewal attempts.
_MIN_RENEW_WAIT = 60.0


class DhcpError(ValueError):
    """Bytes that are not a well-formed DHCP message."""


class MessageType(enum.IntEnum):
    """Option 53, DHCP Message Type."""

    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


class DhcpState(enum.Enum):
    """RFC 2131 section 4.4's client states (INIT-REBOOT and REBOOTING are not used)."""

    INIT = "init"
    SELECTING = "selecting"
    REQUESTING = "requesting"
    BOUND = "bound"
    RENEWING = "renewing"
    REBINDING = "rebinding"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class DhcpMessage:
    """The fields of a DHCP message that a client reads or writes."""

    op: int
    xid: int
    chaddr: bytes
    ciaddr: ipaddress.IPv4Address = _ZERO
    yiaddr: ipaddress.IPv4Address = _ZERO
    siaddr: ipaddress.IPv4Address = _ZERO
    flags: int = 0
    secs: int = 0
    options: dict[int, bytes] = field(default_factory=dict)

    @property
    def message_type(self) -> MessageType | None:
        value = self.options.get(_MESSAGE_TYPE)
        if value is None or len(value) != 1:
            return None
        try:
            return MessageType(value[0])
        except ValueError:
            return None

    def emit(self) -> bytes:
        """The message as bytes, options in the order given, padded to 300 bytes."""
        fixed = _FIXED.pack(
            self.op,
            _HTYPE_ETHERNET,
            len(self.chaddr),
            0,
            self.xid,
            self.secs,
            self.flags,
            self.ciaddr.packed,
            self.yiaddr.packed,
            self.siaddr.packed,
            _ZERO.packed,
            self.chaddr.ljust(16, b"\0"),
            b"",
            b"",
        )
        parts = [fixed, _MAGIC_COOKIE]
        for code, value in self.options.items():
            # An option longer than 255 bytes is split into several of the
            # same code, which the receiver joins (RFC 3396).
            for start in range(0, max(len(value), 1), 255):
                chunk = value[start : start + 255]
                parts.append(bytes([code, len(chunk)]) + chunk)
        parts.append(bytes([_END]))
        message = b"".join(parts)
        return message.ljust(_MIN_MESSAGE, b"\0")


def _read_options(area: bytes, options: dict[int, bytes]) -> None:
    position = 0
    while position < len(area):
        code = area[position]
        if code == _END:
            return
        if code == _PAD:
            position += 1
            continue
        if position + 1 >= len(area):
            raise DhcpError(f"DHCP option {code} has no length byte")
        length = area[position + 1]
        end = position + 2 + length
        if end > len(area):
            raise DhcpError(f"DHCP option {code} runs past the end ({length} bytes)")
        # Repeated options are joined (RFC 3396).
        options[code] = options.get(code, b"") + area[position + 2 : end]
        position = end


def parse_message(data: bytes | bytearray | memoryview) -> DhcpMessage:
    """Read one DHCP message; :class:`DhcpError` for anything malformed."""
    data = bytes(data)
    if len(data) < _FIXED.size + len(_MAGIC_COOKIE):
        raise DhcpError(f"DHCP message truncated: {len(data)} bytes")
    (
        op,
        _htype,
        hlen,
        _hops,
        xid,
        secs,
        flags,
        ciaddr,
        yiaddr,
        siaddr,
        _giaddr,
        chaddr,
        sname,
        file,
    ) = _FIXED.unpack_from(data)
    if op not in (_BOOTREQUEST, _BOOTREPLY):
        raise DhcpError(f"DHCP op {op} is neither BOOTREQUEST nor BOOTREPLY")
    if hlen > 16:
        raise DhcpError(f"DHCP hardware address length {hlen} is over 16")
    if data[_FIXED.size : _FIXED.size + 4] != _MAGIC_COOKIE:
        raise DhcpError("DHCP message lacks the magic cookie")
    options: dict[int, bytes] = {}
    _read_options(data[_FIXED.size + 4 :], options)
    overload = options.get(_OVERLOAD, b"")
    # Option overload (RFC 2132 9.3): more options in the file and sname fields.
    if overload in (b"\x01", b"\x03"):
        _read_options(file, options)
    if overload in (b"\x02", b"\x03"):
        _read_options(sname, options)
    return DhcpMessage(
        op=op,
        xid=xid,
        chaddr=chaddr[:hlen],
        ciaddr=ipaddress.IPv4Address(ciaddr),
        yiaddr=ipaddress.IPv4Address(yiaddr),
        siaddr=ipaddress.IPv4Address(siaddr),
        flags=flags,
        secs=secs,
        options=options,
    )


def _addresses(value: bytes | None) -> tuple[ipaddress.IPv4Address, ...]:
    if not value or len(value) % 4:
        return ()
    return tuple(ipaddress.IPv4Address(value[i : i + 4]) for i in range(0, len(value), 4))


def _seconds(value: bytes | None) -> int | None:
    if value is None or len(value) != 4:
        return None
    return int.from_bytes(value, "big")


@dataclass(frozen=True, slots=True)
class DhcpLease:
    """What the server granted: the address and the configuration that came with it."""

    interface: ipaddress.IPv4Interface
    server: ipaddress.IPv4Address
    routers: tuple[ipaddress.IPv4Address, ...]
    dns_servers: tuple[ipaddress.IPv4Address, ...]
    domain: str | None
    mtu: int | None
    lease_time: float
    renew_time: float
    rebind_time: float
    obtained_at: float

    @property
    def address(self) -> ipaddress.IPv4Address:
        return self.interface.ip

    @property
    def expires_at(self) -> float:
        return self.obtained_at + self.lease_time


@dataclass(frozen=True, slots=True)
class OutgoingDhcp:
    """One message to send from ``source``:68 to ``destination``:67."""

    payload: bytes
    source: ipaddress.IPv4Address
    destination: ipaddress.IPv4Address


class DhcpClient:
    """Gets and keeps an IPv4 lease for one Ethernet interface.

    ``mac`` is the interface's hardware address (the client identifier is
    derived from it); ``hostname`` goes in option 12 when given; ``rng``
    chooses transaction ids and the spread of retransmissions (seed it for
    repeatable tests).  :attr:`lease` is the current lease or ``None``;
    :meth:`take_change` says once when it was gained, changed or lost.
    """

    def __init__(
        self,
        mac: EthernetAddress,
        *,
        hostname: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.mac = mac
        self.hostname = hostname
        self.state = DhcpState.INIT
        self.lease: DhcpLease | None = None
        self.dropped: Counter[str] = Counter()
        self._rng = rng if rng is not None else random.SystemRandom()
        self._xid = 0
        self._attempt = 0
        self._next_send: float | None = 0.0
        self._started: float | None = None
        self._offer: DhcpMessage | None = None
        self._changed = False
        self._outbox: list[OutgoingDhcp] = []

    # -- driving --------------------------------------------------------

    def deadline(self) -> float | None:
        """When :meth:`poll` must run next: a retransmission or a lease timer."""
        times = [t for t in (self._next_send, self._lease_timer()) if t is not None]
        return min(times) if times else None

    def poll(self, now: float) -> list[OutgoingDhcp]:
        """Messages due at ``now``, after moving between states as timers say."""
        self._run_lease_timers(now)
        if self._next_send is not None and now >= self._next_send:
            self._send_due(now)
        out, self._outbox = self._outbox, []
        return out

    def receive(self, payload: bytes | bytearray | memoryview, now: float) -> None:
        """A UDP payload that arrived on port 68; never raises for its content."""
        try:
            message = parse_message(payload)
        except DhcpError:
            self.dropped["malformed"] += 1
            return
        if message.op != _BOOTREPLY or message.xid != self._xid:
            self.dropped["not ours"] += 1
            return
        if message.chaddr != self.mac.octets:
            self.dropped["not ours"] += 1
            return
        kind = message.message_type
        if kind is MessageType.OFFER and self.state is DhcpState.SELECTING:
            if _SERVER_ID not in message.options or message.yiaddr == _ZERO:
                self.dropped["incomplete offer"] += 1
                return
            self._offer = message
            self._enter(DhcpState.REQUESTING, now)
        elif kind is MessageType.ACK and self.state in (
            DhcpState.REQUESTING,
            DhcpState.RENEWING,
            DhcpState.REBINDING,
        ):
            lease = self._lease_from(message, now)
            if lease is None:
                self.dropped["incomplete ack"] += 1
                return
            old = self.lease
            if old is None or (lease.interface, lease.routers, lease.dns_servers) != (
                old.interface,
                old.routers,
                old.dns_servers,
            ):
                self._changed = True
            self.lease = lease
            self.state = DhcpState.BOUND
            self._next_send = None
        elif kind is MessageType.NAK and self.state in (
            DhcpState.REQUESTING,
            DhcpState.RENEWING,
            DhcpState.REBINDING,
        ):
            self._lose_lease()
            self._enter(DhcpState.INIT, now)
        else:
            self.dropped["unexpected"] += 1

    def take_change(self) -> bool:
        """True once after the lease was gained, lost or changed address or routes."""
        changed, self._changed = self._changed, False
        return changed

    def release(self) -> list[OutgoingDhcp]:
        """Give the lease back (DHCPRELEASE) and stop; the messages to send."""
        out: list[OutgoingDhcp] = []
        lease = self.lease
        if lease is not None:
            options = {_MESSAGE_TYPE: bytes([MessageType.RELEASE]), _SERVER_ID: lease.server.packed}
            options[_CLIENT_ID] = self._client_id()
            message = DhcpMessage(
                op=_BOOTREQUEST,
                xid=self._rng.getrandbits(32),
                chaddr=self.mac.octets,
                ciaddr=lease.address,
                options=options,
            )
            out.append(OutgoingDhcp(message.emit(), lease.address, lease.server))
            self._lose_lease()
        self.state = DhcpState.STOPPED
        self._next_send = None
        return out

    # -- internals ------------------------------------------------------

    def _client_id(self) -> bytes:
        return bytes([_HTYPE_ETHERNET]) + self.mac.octets

    def _enter(self, state: DhcpState, now: float) -> None:
        self.state = state
        self._attempt = 0
        self._next_send = now
        if state is DhcpState.INIT:
            self._offer = None

    def _lose_lease(self) -> None:
        if self.lease is not None:
            self.lease = None
            self._changed = True

    def _lease_timer(self) -> float | None:
        lease = self.lease
        if lease is None:
            return None
        if self.state is DhcpState.BOUND:
            return lease.obtained_at + lease.renew_time
        if self.state is DhcpState.RENEWING:
            return lease.obtained_at + lease.rebind_time
        if self.state is DhcpState.REBINDING:
            return lease.expires_at
        return None

    def _run_lease_timers(self, now: float) -> None:
        lease = self.lease
        if lease is None:
            return
        if now >= lease.expires_at and self.state in (
            DhcpState.BOUND,
            DhcpState.RENEWING,
            DhcpState.REBINDING,
        ):
            self._lose_lease()
            self._enter(DhcpState.INIT, now)
        elif self.state is DhcpState.BOUND and now >= lease.obtained_at + lease.renew_time:
            self._enter(DhcpState.RENEWING, now)
        elif self.state is DhcpState.RENEWING and now >= lease.obtained_at + lease.rebind_time:
            self._enter(DhcpState.REBINDING, now)

    def _spread(self) -> float:
        return self._rng.uniform(-1.0, 1.0)

    def _send_due(self, now: float) -> None:
        state = self.state
        if state is DhcpState.INIT or (
            state is DhcpState.SELECTING and self._attempt >= len(_BACKOFF)
        ):
            # A new transaction: a new id, as RFC 2131 4.4.1 asks.
            self._xid = self._rng.getrandbits(32)
            self._started = now
            self.state = DhcpState.SELECTING
            self._attempt = 0
        if self.state is DhcpState.SELECTING:
            self._outbox.append(self._discover(now))
        elif self.state is DhcpState.REQUESTING:
            if self._attempt >= _REQUEST_ATTEMPTS:
                self._enter(DhcpState.INIT, now)
                self._send_due(now)
                return
            self._outbox.append(self._request(now))
        elif self.state in (DhcpState.RENEWING, DhcpState.REBINDING):
            self._outbox.append(self._request(now))
            lease = self.lease
            assert lease is not None
            end = (
                lease.obtained_at + lease.rebind_time
                if self.state is DhcpState.RENEWING
                else lease.expires_at
            )
            self._next_send = now + max((end - now) / 2, _MIN_RENEW_WAIT)
            self._attempt += 1
            return
        else:
            self._next_send = None
            return
        delay = _BACKOFF[min(self._attempt, len(_BACKOFF) - 1)]
        self._next_send = now + delay + self._spread()
        self._attempt += 1

    def _secs(self, now: float) -> int:
        started = self._started if self._started is not None else now
        return min(int(now - started), 0xFFFF)

    def _common_options(self, kind: MessageType) -> dict[int, bytes]:
        options = {_MESSAGE_TYPE: bytes([kind]), _CLIENT_ID: self._client_id()}
        options[_PARAMETERS] = _ASKED_FOR
        options[_MAX_MESSAGE_SIZE] = (1500).to_bytes(2, "big")
        if self.hostname:
            options[_HOSTNAME] = self.hostname.encode("ascii", "replace")[:63]
        return options

    def _discover(self, now: float) -> OutgoingDhcp:
        message = DhcpMessage(
            op=_BOOTREQUEST,
            xid=self._xid,
            chaddr=self.mac.octets,
            flags=_BROADCAST_FLAG,
            secs=self._secs(now),
            options=self._common_options(MessageType.DISCOVER),
        )
        return OutgoingDhcp(message.emit(), _ZERO, _BROADCAST)

    def _request(self, now: float) -> OutgoingDhcp:
        options = self._common_options(MessageType.REQUEST)
        if self.state is DhcpState.REQUESTING:
            offer = self._offer
            assert offer is not None
            # SELECTING's REQUEST names the address and the chosen server
            # and leaves ciaddr empty (RFC 2131 table 5).
            options[_REQUESTED_ADDRESS] = offer.yiaddr.packed
            options[_SERVER_ID] = offer.options[_SERVER_ID]
            message = DhcpMessage(
                op=_BOOTREQUEST,
                xid=self._xid,
                chaddr=self.mac.octets,
                flags=_BROADCAST_FLAG,
                secs=self._secs(now),
                options=options,
            )
            return OutgoingDhcp(message.emit(), _ZERO, _BROADCAST)
        lease = self.lease
        assert lease is not None
        if self._attempt == 0:
            self._xid = self._rng.getrandbits(32)
            self._started = now
        # RENEWING and REBINDING put the address in ciaddr and name no server.
        message = DhcpMessage(
            op=_BOOTREQUEST,
            xid=self._xid,
            chaddr=self.mac.octets,
            ciaddr=lease.address,
            secs=self._secs(now),
            options=options,
        )
        destination = lease.server if self.state is DhcpState.RENEWING else _BROADCAST
        return OutgoingDhcp(message.emit(), lease.address, destination)

    def _lease_from(self, message: DhcpMessage, now: float) -> DhcpLease | None:
        options = message.options
        lease_time = _seconds(options.get(_LEASE_TIME))
        mask = options.get(_SUBNET_MASK)
        server_ids = _addresses(options.get(_SERVER_ID))
        if lease_time is None or message.yiaddr == _ZERO:
            return None
        if server_ids:
            server = server_ids[0]
        elif self.lease is not None:
            server = self.lease.server
        else:
            return None
        try:
            if mask is not None and len(mask) == 4:
                interface = ipaddress.IPv4Interface(
                    f"{message.yiaddr}/{ipaddress.IPv4Address(mask)}"
                )
            else:
                interface = ipaddress.IPv4Interface(f"{message.yiaddr}/24")
        except ValueError:
            return None
        # 0xFFFFFFFF means infinity (RFC 2131 3.3); a year stands in for it.
        lease_seconds = float(lease_time) if lease_time != 0xFFFFFFFF else 365 * 86400.0
        renew = _seconds(options.get(_RENEWAL_TIME))
        rebind = _seconds(options.get(_REBINDING_TIME))
        renew_time = float(renew) if renew is not None else lease_seconds * 0.5
        rebind_time = float(rebind) if rebind is not None else lease_seconds * 0.875
        # T1 < T2 < lease, whatever the server said.
        rebind_time = min(rebind_time, lease_seconds)
        renew_time = min(renew_time, rebind_time)
        mtu_value = options.get(_MTU)
        mtu = int.from_bytes(mtu_value, "big") if mtu_value and len(mtu_value) == 2 else None
        if mtu is not None and mtu < 576:
            mtu = None
        domain_value = options.get(_DOMAIN_NAME)
        domain = domain_value.rstrip(b"\0").decode("ascii", "replace") if domain_value else None
        return DhcpLease(
            interface=interface,
            server=server,
            routers=_addresses(options.get(_ROUTER)),
            dns_servers=_addresses(options.get(_DNS_SERVERS)),
            domain=domain,
            mtu=mtu,
            lease_time=lease_seconds,
            renew_time=renew_time,
            rebind_time=rebind_time,
            obtained_at=now,
        )
