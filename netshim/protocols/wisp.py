"""Wisp, sans I/O: TCP and UDP streams multiplexed over one WebSocket.

The layer between a WebSocket and many byte streams.  Specification: the
Wisp protocol document of MercuryWorkshop (v1, and the v2 drafts), checked
against what wisp-js 0.5.0 puts on the wire.  Every packet is one binary
WebSocket message::

    uint8 type | uint32 stream id (little-endian) | payload

``CONNECT`` (0x01) opens a stream (``uint8`` stream type, ``uint16`` port,
UTF-8 host name), ``DATA`` (0x02) carries bytes or one datagram, ``CONTINUE``
(0x03) grants the client credits (an absolute count of DATA packets it may
send on the stream), ``CLOSE`` (0x04) ends a stream with a reason, ``INFO``
(0x05) carries the v2 version and extensions.  Stream 0 belongs to the
connection: the server's first ``CONTINUE`` on it sets every new stream's
initial credit.

Handshakes, as wisp-js implements them (the server picks v2 only when the
WebSocket upgrade carried a ``Sec-WebSocket-Protocol`` header)::

    v1  server: CONTINUE(0, B)                                  -> OPEN
    v2  server: INFO(2.0, extensions)   client: INFO(2.0, ext.)
        server: CONTINUE(0, B) to accept, or CLOSE(0, reason)   -> OPEN

A v2 client that receives ``CONTINUE`` before any ``INFO`` talks v1.

:class:`WispConnection` works in the shape of h11: ``receive_data(message)``
takes one whole WebSocket message (``None`` when the WebSocket closed: an
empty message is a distinct, malformed input), ``next_event()`` returns the
next :class:`Event` or :data:`NEED_DATA`, and ``send(event)`` returns the
message to put on the WebSocket.  It does no I/O and keeps no clock: the
five-second handshake timeout and every socket belong to the caller.

Errors follow one rule so that untrusted bytes never take more down than
they must: a packet that is wrong for one stream yields
:class:`PacketRejected`, whose :meth:`~PacketRejected.response` is the
``CLOSE`` to send for that stream (the core already forgot the stream); a
packet that breaks the connection (a handshake out of order) raises
:class:`~netshim.RemoteProtocolError` whose ``hint`` is the close reason to
send on stream 0.  Packets for unknown streams are dropped silently, as both
wisp-js and the specification's "tolerate" wording expect; so are trailing
bytes after a ``CLOSE`` reason or a ``CONTINUE`` count.

The LAN extension (netshim's own, id ``0xE1``; specified in ``docs/lan.md``)
lets a client listen: ``LISTEN`` (0xE0, client to server, on a new client
stream: ``uint8`` stream type, ``uint16`` port, host) is answered by
``LISTENING`` (0xE1: ``uint16`` port, host) or ``CLOSE``; each connection to
a TCP listener arrives as ``ACCEPT`` (0xE2: ``uint32`` listener stream id,
``uint16`` peer port, peer host) on a stream the server opens, whose id has
the top bit set; the server tells LAN news with ``MEMBERSHIP`` (0xE3, stream
0).  Only connections where both sides announced the extension use them, so
other Wisp peers never see them.

Flow control.  The server gives each TCP stream ``buffer_size`` credits.  Its
I/O layer calls :meth:`WispConnection.release` for every DATA packet it has
passed upstream, which returns a :class:`Continue` to send once a quarter of
the window has drained.  A ``CONTINUE`` value is absolute and does not
count packets in flight: the client sets its credit to the value whenever it
arrives, so DATA it sent before that is forgiven, and when refills cross DATA
on the wire an obedient client can have more than a window outstanding.  The
only count a server can check without falsely blaming such a client is the
sum of every credit it granted on the stream (the stream-0 window plus each
``CONTINUE`` value): an obedient client never sends more DATA than that, so a
packet past it means the client ignores credits, and its stream is rejected
with ``THROTTLED``.  That sum does not bound the server's memory (forgiven
credits keep counting), so the I/O layer also stops reading the WebSocket
while a stream's queue is over its bound.  The client side counts its credits
(:meth:`WispConnection.credit`) and refuses to send DATA without one.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

from .._errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_MAX_HOSTNAME_LENGTH",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "HEADER_SIZE",
    "NEED_DATA",
    "SERVER_STREAM_BASE",
    "Accept",
    "Close",
    "CloseReason",
    "Connect",
    "ConnectionClosed",
    "ConnectionState",
    "Continue",
    "Data",
    "Event",
    "Extension",
    "ExtensionId",
    "Info",
    "LanExtension",
    "Listen",
    "Listening",
    "Membership",
    "MembershipChange",
    "MotdExtension",
    "PacketRejected",
    "PacketType",
    "PasswordAuthExtension",
    "PasswordCredentials",
    "Role",
    "StreamConfirmationExtension",
    "StreamType",
    "UdpExtension",
    "UnknownExtension",
    "WispConnection",
    "data_header",
    "pack_datagram",
    "parse_datagram",
    "parse_extensions",
]

HEADER_SIZE: Final = 5
_HEADER = struct.Struct("<BI")
_CONNECT = struct.Struct("<BH")
_U32 = struct.Struct("<I")
_EXTENSION_HEADER = struct.Struct("<BI")
MAX_STREAM_ID: Final = 0xFFFF_FFFF
# With the LAN extension the server opens streams too (ACCEPT); their ids have
# the top bit set, the client's stay below it, so the two never collide.
SERVER_STREAM_BASE: Final = 0x8000_0000
_ADDRESS = struct.Struct("<HB")
_MEMBERSHIP = struct.Struct("<BB")

# wisp-js grants 128 packets per stream and sends a CONTINUE each time half of
# them drained.  The same window suits us: with DATA packets of 16-64 KiB (TLS
# records, socket reads) it keeps 2-8 MiB in flight per stream.
DEFAULT_BUFFER_SIZE: Final = 128
# The websockets library's default limit for one incoming message (1 MiB);
# the gateway passes it to its WebSocket layer and documents it.
DEFAULT_MAX_MESSAGE_SIZE: Final = 1 << 20
# RFC 1035 allows 253 characters of dotted name; an IPv6 literal with a zone
# stays far below.  Anything longer in a CONNECT is garbage, not a name.
DEFAULT_MAX_HOSTNAME_LENGTH: Final = 253


class PacketType(enum.IntEnum):
    CONNECT = 0x01
    DATA = 0x02
    CONTINUE = 0x03
    CLOSE = 0x04
    INFO = 0x05
    # netshim's LAN extension (see the module documentation): only on
    # connections where both sides announced ExtensionId.LAN.
    LISTEN = 0xE0
    LISTENING = 0xE1
    ACCEPT = 0xE2
    MEMBERSHIP = 0xE3


class StreamType(enum.IntEnum):
    TCP = 0x01
    UDP = 0x02


class CloseReason(enum.IntEnum):
    """Why a stream (or, on stream 0, the connection) closed, from the specification."""

    UNKNOWN = 0x01
    VOLUNTARY = 0x02
    NETWORK_ERROR = 0x03
    INCOMPATIBLE_EXTENSIONS = 0x04
    INVALID_INFO = 0x41
    UNREACHABLE = 0x42
    TIMEOUT = 0x43
    REFUSED = 0x44
    TRANSFER_TIMEOUT = 0x47
    BLOCKED = 0x48
    THROTTLED = 0x49
    CLIENT_ERROR = 0x81
    AUTH_BAD_PASSWORD = 0xC0
    AUTH_BAD_SIGNATURE = 0xC1
    AUTH_MISSING_CREDENTIALS = 0xC2
    # netshim's LAN extension.
    ADDRESS_IN_USE = 0xE0
    LISTEN_QUOTA = 0xE1
    NAME_IN_USE = 0xE2
    NOT_A_MEMBER = 0xE3


def data_header(stream_id: int) -> bytes:
    """The five bytes in front of a DATA packet's payload on ``stream_id``.

    For I/O layers that send a stream's DATA without a copy into one packet:
    the header once, then joined with each payload where the frame is built.
    Only for streams the connection accepted (:meth:`WispConnection.send`
    checks the rest).
    """
    return _HEADER.pack(PacketType.DATA, stream_id)


def _reason_name(reason: int) -> str:
    try:
        return CloseReason(reason).name
    except ValueError:
        return f"0x{reason:02x}"


class ExtensionId(enum.IntEnum):
    UDP = 0x01
    PASSWORD_AUTH = 0x02
    KEY_AUTH = 0x03
    MOTD = 0x04
    STREAM_CONFIRMATION = 0x05
    # netshim's own: listeners, LAN membership and server-opened streams.
    LAN = 0xE1


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class ConnectionState(enum.Enum):
    """Where the connection-level handshake stands.

    ``IDLE``: nothing sent yet (a server must send ``INFO`` or ``CONTINUE``;
    a client waits).  ``INFO_SENT``: a v2 server waits for the client's
    ``INFO``.  ``INFO_RECEIVED``: the peer's ``INFO`` arrived and this side
    must answer (a client with its ``INFO``, a server with ``CONTINUE`` on
    stream 0 or ``CLOSE``).  ``AWAITING_CONTINUE``: a v2 client answered and
    waits to be accepted.  ``OPEN``: streams may be used.  ``CLOSED``: stream
    0 was closed or the WebSocket ended.  ``ERROR``: a protocol error was
    raised; every later call raises too.
    """

    IDLE = "IDLE"
    INFO_SENT = "INFO-SENT"
    INFO_RECEIVED = "INFO-RECEIVED"
    AWAITING_CONTINUE = "AWAITING-CONTINUE"
    OPEN = "OPEN"
    CLOSED = "CLOSED"
    ERROR = "ERROR"

    def __str__(self) -> str:
        return self.value


def _check_stream_id(stream_id: int) -> None:
    if not 0 <= stream_id <= MAX_STREAM_ID:
        raise ValueError(f"stream id must be 0..{MAX_STREAM_ID}, got {stream_id}")


# -- extensions -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Extension:
    """One entry of an INFO packet's extension list."""

    id: ClassVar[int] = 0

    def payload(self) -> bytes:
        return b""

    def emit(self) -> bytes:
        body = self.payload()
        return _EXTENSION_HEADER.pack(self.extension_id, len(body)) + body

    @property
    def extension_id(self) -> int:
        return self.id


@dataclass(frozen=True, slots=True)
class UdpExtension(Extension):
    """The sender supports UDP streams (no payload either way)."""

    id: ClassVar[int] = ExtensionId.UDP


@dataclass(frozen=True, slots=True)
class PasswordAuthExtension(Extension):
    """Server side: username/password authentication is offered (and maybe ``required``)."""

    id: ClassVar[int] = ExtensionId.PASSWORD_AUTH
    required: bool = True

    def payload(self) -> bytes:
        return bytes([1 if self.required else 0])


@dataclass(frozen=True, slots=True)
class PasswordCredentials(Extension):
    """Client side of the password extension: the credentials.

    Emitted as wisp-js does (``uint8`` username length, ``uint16`` password
    length, username, password).  The v2 draft 6 drops the password length;
    :func:`parse_extensions` reads both forms, taking the length-prefixed one
    when its lengths add up to the payload exactly.
    """

    id: ClassVar[int] = ExtensionId.PASSWORD_AUTH
    username: str = ""
    password: str = ""

    def __post_init__(self) -> None:
        if len(self.username.encode()) > 0xFF:
            raise ValueError("a Wisp username is at most 255 bytes of UTF-8")
        if len(self.password.encode()) > 0xFFFF:
            raise ValueError("a Wisp password is at most 65535 bytes of UTF-8")

    def __repr__(self) -> str:
        return f"PasswordCredentials(username={self.username!r}, password=<hidden>)"

    def payload(self) -> bytes:
        user, password = self.username.encode(), self.password.encode()
        return struct.pack("<BH", len(user), len(password)) + user + password


@dataclass(frozen=True, slots=True)
class MotdExtension(Extension):
    """Server side: a message of the day for the user (the client sends it empty)."""

    id: ClassVar[int] = ExtensionId.MOTD
    message: str = ""

    def payload(self) -> bytes:
        return self.message.encode()


@dataclass(frozen=True, slots=True)
class StreamConfirmationExtension(Extension):
    """The server sends a ``CONTINUE`` on each stream once its socket is connected."""

    id: ClassVar[int] = ExtensionId.STREAM_CONFIRMATION


@dataclass(frozen=True, slots=True)
class LanExtension(Extension):
    """netshim's LAN extension: listeners, server-opened streams, LAN membership.

    The server announces it empty.  A client announces it with the LAN it
    joins: ``lan`` (empty: none; the client may still use the extension's
    events but has no address to listen on), the ``member`` name it asks for
    (its DNS name becomes ``member.lan``; empty: the server picks one) and the
    LAN's ``token``.  Payload: ``uint8`` version (1), then, for a client,
    ``uint8`` length + LAN name, ``uint8`` length + member name, ``uint16``
    length + token, all UTF-8.
    """

    id: ClassVar[int] = ExtensionId.LAN
    lan: str = ""
    member: str = ""
    token: str = ""

    def __post_init__(self) -> None:
        if len(self.lan.encode()) > 63 or len(self.member.encode()) > 63:
            raise ValueError("a LAN or member name is at most 63 bytes of UTF-8 (one DNS label)")
        if len(self.token.encode()) > 0xFFFF:
            raise ValueError("a LAN token is at most 65535 bytes of UTF-8")

    def __repr__(self) -> str:
        return f"LanExtension(lan={self.lan!r}, member={self.member!r}, token=<hidden>)"

    def payload(self) -> bytes:
        if not (self.lan or self.member or self.token):
            return bytes([1])
        lan, member, token = self.lan.encode(), self.member.encode(), self.token.encode()
        return (
            bytes([1, len(lan)])
            + lan
            + bytes([len(member)])
            + member
            + struct.pack("<H", len(token))
            + token
        )


def _parse_lan(body: bytes, sender: Role) -> LanExtension:
    if not body:
        raise ValueError("empty LAN extension payload")
    if body[0] != 1:
        raise ValueError(f"LAN extension version {body[0]} (this side speaks 1)")
    if sender is Role.SERVER or len(body) == 1:
        return LanExtension()
    offset = 1
    fields: list[str] = []
    for width in (1, 1, 2):
        if offset + width > len(body):
            raise ValueError("LAN extension payload truncated")
        length = body[offset] if width == 1 else struct.unpack_from("<H", body, offset)[0]
        offset += width
        if offset + length > len(body):
            raise ValueError("LAN extension field runs past the payload")
        fields.append(body[offset : offset + length].decode())
        offset += length
    if offset != len(body):
        raise ValueError(f"{len(body) - offset} stray bytes after the LAN extension")
    return LanExtension(*fields)


@dataclass(frozen=True, slots=True)
class UnknownExtension(Extension):
    """An extension this module does not interpret, kept as raw bytes."""

    raw_id: int = 0
    data: bytes = b""

    @property
    def extension_id(self) -> int:
        return self.raw_id

    def payload(self) -> bytes:
        return self.data


def _parse_extension(ext_id: int, body: bytes, sender: Role) -> Extension:
    if ext_id == ExtensionId.UDP:
        return UdpExtension()
    if ext_id == ExtensionId.MOTD:
        return MotdExtension(body.decode("utf-8", "replace") if sender is Role.SERVER else "")
    if ext_id == ExtensionId.STREAM_CONFIRMATION:
        return StreamConfirmationExtension()
    if ext_id == ExtensionId.LAN:
        return _parse_lan(body, sender)
    if ext_id == ExtensionId.PASSWORD_AUTH:
        if sender is Role.SERVER:
            # Draft 2 had no payload and meant "required".
            return PasswordAuthExtension(required=not body or body[0] != 0)
        return _parse_credentials(body)
    return UnknownExtension(raw_id=ext_id, data=body)


def _parse_credentials(body: bytes) -> PasswordCredentials:
    if not body:
        raise ValueError("empty password-authentication payload")
    user_length = body[0]
    if len(body) >= 3:
        (password_length,) = struct.unpack_from("<H", body, 1)
        if 3 + user_length + password_length == len(body):
            user = body[3 : 3 + user_length]
            password = body[3 + user_length :]
            return PasswordCredentials(user.decode(), password.decode())
    if 1 + user_length > len(body):
        raise ValueError("password-authentication username runs past the payload")
    return PasswordCredentials(body[1 : 1 + user_length].decode(), body[1 + user_length :].decode())


def parse_extensions(data: bytes, sender: Role) -> tuple[Extension, ...]:
    """Parse an INFO packet's extension list as sent by ``sender``.

    Raises ``ValueError`` when an entry's length runs past the data or a
    payload is malformed.
    """
    extensions: list[Extension] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _EXTENSION_HEADER.size:
            raise ValueError(f"truncated extension header at byte {offset}")
        ext_id, length = _EXTENSION_HEADER.unpack_from(data, offset)
        offset += _EXTENSION_HEADER.size
        if length > len(data) - offset:
            raise ValueError(
                f"extension 0x{ext_id:02x} claims {length} bytes, {len(data) - offset} left"
            )
        extensions.append(_parse_extension(ext_id, bytes(data[offset : offset + length]), sender))
        offset += length
    return tuple(extensions)


# -- events -----------------------------------------------------------------------------


class Event:
    """Base of every Wisp event."""

    __slots__ = ()


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


@dataclass(frozen=True, slots=True)
class Connect(Event):
    """Open stream ``stream_id`` to ``host``:``port`` (client to server)."""

    stream_id: int
    host: str
    port: int
    stream_type: StreamType = StreamType.TCP

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id)
        if self.stream_id == 0:
            raise ValueError("stream id 0 is reserved for the connection")
        if not 1 <= self.port <= 0xFFFF:
            raise ValueError(f"port must be 1..65535, got {self.port}")
        if not self.host:
            raise ValueError("host must not be empty")
        if len(self.host.encode()) > DEFAULT_MAX_HOSTNAME_LENGTH + 64:
            raise ValueError(f"host name is too long: {self.host[:40]!r}...")
        object.__setattr__(self, "stream_type", StreamType(self.stream_type))


@dataclass(frozen=True, slots=True)
class Data(Event):
    """Bytes of a TCP stream, or one UDP datagram."""

    stream_id: int
    data: bytes

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id)
        if self.stream_id == 0:
            raise ValueError("DATA cannot go to stream 0")

    def __repr__(self) -> str:
        return f"Data(stream_id={self.stream_id}, data=<{len(self.data)} bytes>)"


@dataclass(frozen=True, slots=True)
class Continue(Event):
    """The client may now send ``buffer_remaining`` DATA packets on the stream (absolute)."""

    stream_id: int
    buffer_remaining: int

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id)
        if not 0 <= self.buffer_remaining <= 0xFFFF_FFFF:
            raise ValueError(f"buffer_remaining must fit 32 bits, got {self.buffer_remaining}")


@dataclass(frozen=True, slots=True)
class Close(Event):
    """Stream ``stream_id`` is closed (stream 0: the whole connection)."""

    stream_id: int
    reason: int = CloseReason.VOLUNTARY

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id)
        if not 0 <= self.reason <= 0xFF:
            raise ValueError(f"close reason must be one byte, got {self.reason}")

    def __repr__(self) -> str:
        return f"Close(stream_id={self.stream_id}, reason={_reason_name(self.reason)})"


@dataclass(frozen=True, slots=True)
class Info(Event):
    """The v2 handshake: the sender's version and extensions (always on stream 0)."""

    major: int = 2
    minor: int = 0
    extensions: tuple[Extension, ...] = ()

    def __post_init__(self) -> None:
        if not (0 <= self.major <= 0xFF and 0 <= self.minor <= 0xFF):
            raise ValueError(f"version must be two bytes, got {self.major}.{self.minor}")
        object.__setattr__(self, "extensions", tuple(self.extensions))

    def find(self, kind: type[Extension]) -> Extension | None:
        """The first extension of ``kind``, or ``None``."""
        for extension in self.extensions:
            if isinstance(extension, kind):
                return extension
        return None


@dataclass(frozen=True, slots=True)
class PacketRejected(Event):
    """A packet was malformed or not allowed for its stream; the stream (if any) is gone.

    ``stream_id`` is ``None`` when the packet could not even be attributed
    to a stream (shorter than a header).
    """

    stream_id: int | None
    reason: int
    detail: str

    def response(self) -> Close | None:
        """The ``CLOSE`` to send for the offending stream, if it was a real stream."""
        if self.stream_id is None or self.stream_id == 0:
            return None
        return Close(self.stream_id, self.reason)


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The WebSocket ended (``receive_data(None)``); every stream is gone."""


@dataclass(frozen=True, slots=True)
class Listen(Event):
    """Listen on ``port`` of the client's LAN address (client to server; LAN extension).

    ``port`` 0 lets the server choose; ``host`` empty means the client's own
    LAN address.  A TCP listener's connections arrive as :class:`Accept`; a
    UDP listener's stream carries addressed datagrams (:func:`pack_datagram`)
    both ways.  The server answers :class:`Listening` or ``CLOSE``; the
    client's ``CLOSE`` on the stream stops listening.
    """

    stream_id: int
    port: int = 0
    host: str = ""
    stream_type: StreamType = StreamType.TCP

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id)
        if not 0 < self.stream_id < SERVER_STREAM_BASE:
            raise ValueError(f"a client's stream id is 1..{SERVER_STREAM_BASE - 1}")
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if len(self.host.encode()) > DEFAULT_MAX_HOSTNAME_LENGTH:
            raise ValueError(f"host name is too long: {self.host[:40]!r}...")
        object.__setattr__(self, "stream_type", StreamType(self.stream_type))


@dataclass(frozen=True, slots=True)
class Listening(Event):
    """The listener on ``stream_id`` is bound to ``host``:``port`` (server to client)."""

    stream_id: int
    host: str
    port: int

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id)
        if not 1 <= self.port <= 0xFFFF:
            raise ValueError(f"port must be 1..65535, got {self.port}")


@dataclass(frozen=True, slots=True)
class Accept(Event):
    """A connection from ``host``:``port`` reached listener ``listener_id`` (server to client).

    ``stream_id`` is a new stream the server opened (top bit set); it works
    as a connected TCP stream from then on, with the client counting credits.
    """

    stream_id: int
    listener_id: int
    host: str
    port: int

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id)
        _check_stream_id(self.listener_id)
        if self.stream_id < SERVER_STREAM_BASE:
            raise ValueError(f"a server's stream id is at least {SERVER_STREAM_BASE:#x}")
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port must be 0..65535, got {self.port}")


class MembershipChange(enum.IntEnum):
    """What a :class:`Membership` event reports."""

    # This client joined: ``host`` is its LAN address, ``name`` its DNS name.
    JOINED = 1
    MEMBER_JOINED = 2
    MEMBER_LEFT = 3


@dataclass(frozen=True, slots=True)
class Membership(Event):
    """LAN membership news (server to client, stream 0).

    ``prefix_length`` is the LAN's prefix (with :attr:`MembershipChange.JOINED`).
    """

    change: MembershipChange
    host: str
    name: str
    prefix_length: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "change", MembershipChange(self.change))
        if not 0 <= self.prefix_length <= 128:
            raise ValueError(f"prefix length must be 0..128, got {self.prefix_length}")
        if len(self.name.encode()) > DEFAULT_MAX_HOSTNAME_LENGTH:
            raise ValueError(f"name is too long: {self.name[:40]!r}...")


def pack_datagram(host: str, port: int, payload: bytes) -> bytes:
    """One datagram on a UDP listener stream: its peer's address, then its payload.

    ``uint16`` port, ``uint8`` host length, host (UTF-8), payload.  The
    client puts the destination there, the server the source.
    """
    raw = host.encode()
    if len(raw) > 0xFF:
        raise ValueError(f"host name is too long: {host[:40]!r}...")
    return _ADDRESS.pack(port, len(raw)) + raw + payload


def parse_datagram(data: bytes) -> tuple[str, int, bytes]:
    """``(host, port, payload)`` of a :func:`pack_datagram` message; ``ValueError`` if malformed."""
    if len(data) < _ADDRESS.size:
        raise ValueError(f"addressed datagram of {len(data)} bytes")
    port, length = _ADDRESS.unpack_from(data)
    end = _ADDRESS.size + length
    if not length or end > len(data):
        raise ValueError("addressed datagram's host is empty or runs past the message")
    host = data[_ADDRESS.size : end].decode()
    if port == 0:
        raise ValueError("addressed datagram to port 0")
    return host, port, data[end:]


# -- the connection ---------------------------------------------------------------------


@dataclass(slots=True)
class _Stream:
    stream_type: StreamType
    # Server: DATA packets received and not yet released upstream.
    queued: int = 0
    # Server: released since the last CONTINUE for this stream.
    drained: int = 0
    # Server: DATA packets received in all, and the sum of every credit
    # granted (see the module documentation on flow control).
    received: int = 0
    granted: int = 0
    # Client: DATA packets it may still send.
    credit: int = 0
    # A LAN-extension listener: no bytes of its own (TCP) or addressed datagrams (UDP).
    listener: bool = False


@dataclass(slots=True)
class _Counters:
    packets_in: int = 0
    packets_out: int = 0
    rejected: int = 0
    ignored: int = 0


class WispConnection:
    """One end of a Wisp connection (see the module documentation).

    ``role`` is :attr:`Role.SERVER` or :attr:`Role.CLIENT`.  ``version`` is 1
    or 2; a server uses 2 only when the WebSocket upgrade carried a
    subprotocol.  ``extensions`` are the ones this side announces in its
    ``INFO`` (a client's :class:`PasswordCredentials` go there).
    ``buffer_size`` is the server's per-stream credit.  ``udp`` says whether
    a v1 server accepts UDP streams (v2 asks for the UDP extension on both
    sides).
    """

    def __init__(
        self,
        role: Role,
        *,
        version: int = 2,
        extensions: Sequence[Extension] = (),
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        udp: bool = True,
    ) -> None:
        if version not in (1, 2):
            raise ValueError(f"Wisp version must be 1 or 2, got {version}")
        if not 1 <= buffer_size <= 0xFFFF_FFFF:
            raise ValueError(f"buffer_size must be 1..2**32-1, got {buffer_size}")
        self.role = role
        self.version = version
        self.local_extensions: tuple[Extension, ...] = tuple(extensions)
        self.peer_info: Info | None = None
        self.buffer_size = buffer_size if role is Role.SERVER else 0
        self.state = ConnectionState.IDLE
        self._udp_v1 = udp
        self._streams: dict[int, _Stream] = {}
        self._incoming: deque[bytes | bytearray | memoryview | None] = deque()
        self._pending: deque[Event] = deque()
        self.counters = _Counters()

    def __repr__(self) -> str:
        return (
            f"<WispConnection {self.role.value} v{self.version} {self.state} "
            f"streams={len(self._streams)}>"
        )

    # -- what both sides agreed on

    def _peer_has(self, ext_id: int) -> bool:
        return self.peer_info is not None and any(
            e.extension_id == ext_id for e in self.peer_info.extensions
        )

    def _local_has(self, ext_id: int) -> bool:
        return any(e.extension_id == ext_id for e in self.local_extensions)

    def negotiated(self, ext_id: int) -> bool:
        """Whether extension ``ext_id`` was announced by both sides (v2 only)."""
        return self.version == 2 and self._local_has(ext_id) and self._peer_has(ext_id)

    @property
    def udp_allowed(self) -> bool:
        """Whether UDP streams may be opened on this connection."""
        if self.version == 1:
            return self._udp_v1
        return self.negotiated(ExtensionId.UDP)

    @property
    def lan_enabled(self) -> bool:
        """Whether both sides speak the LAN extension (listeners, ACCEPT, MEMBERSHIP)."""
        return self.negotiated(ExtensionId.LAN)

    @property
    def lan_request(self) -> LanExtension | None:
        """A server's view of the LAN the client asked to join (``None``: no extension)."""
        if self.peer_info is None:
            return None
        found = self.peer_info.find(LanExtension)
        return found if isinstance(found, LanExtension) else None

    def is_listener(self, stream_id: int) -> bool:
        stream = self._streams.get(stream_id)
        return stream is not None and stream.listener

    @property
    def credentials(self) -> PasswordCredentials | None:
        """A server's view of the client's password credentials, if it sent any."""
        if self.peer_info is None:
            return None
        found = self.peer_info.find(PasswordCredentials)
        return found if isinstance(found, PasswordCredentials) else None

    @property
    def motd(self) -> str | None:
        """A client's view of the server's message of the day."""
        if self.peer_info is None:
            return None
        found = self.peer_info.find(MotdExtension)
        return found.message if isinstance(found, MotdExtension) else None

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def stream_type(self, stream_id: int) -> StreamType | None:
        stream = self._streams.get(stream_id)
        return None if stream is None else stream.stream_type

    def credit(self, stream_id: int) -> int:
        """A client's remaining credit on a TCP stream (UDP streams have no limit)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            raise LocalProtocolError(f"stream {stream_id} is not open")
        return stream.credit

    def queued(self, stream_id: int) -> int:
        """A server's count of DATA packets received on the stream and not yet released."""
        stream = self._streams.get(stream_id)
        return 0 if stream is None else stream.queued

    # -- starting

    def initiate(self) -> bytes:
        """The server's first message: ``INFO`` for v2, the initial ``CONTINUE`` for v1."""
        if self.role is not Role.SERVER:
            raise LocalProtocolError("only the server speaks first in Wisp")
        if self.version == 2:
            return self.send(Info(2, 0, self.local_extensions))
        return self.send(Continue(0, self.buffer_size))

    def local_info(self) -> Info:
        """The ``INFO`` this side announces."""
        return Info(2, 0, self.local_extensions)

    # -- sending

    def send(self, event: Event) -> bytes:
        """Encode ``event`` as one WebSocket message and update the state.

        Raises :class:`~netshim.LocalProtocolError` when the event is not
        allowed now (naming event, role and state): DATA without credit or on
        an unknown stream, CONNECT before the handshake finished or on a
        stream in use, anything after the connection closed.
        """
        self._check_usable()
        message = self._encode(event)
        self.counters.packets_out += 1
        return message

    def send_data_header(self, stream_id: int) -> bytes:
        """What :meth:`send` does for ``Data(stream_id, payload)``, but only the header is returned.

        The same checks and credit; the caller sends the five bytes and the
        payload as one message (a WebSocket that takes a prefix joins them
        where it builds the frame: one copy of the payload fewer).
        """
        self._check_usable()
        self._take_data_credit(stream_id)
        self.counters.packets_out += 1
        return _HEADER.pack(PacketType.DATA, stream_id)

    def take_data_header(self, stream_id: int) -> bytes | None:
        """:meth:`send_data_header` where it needs no waiting; ``None`` (nothing taken) otherwise.

        ``None`` when the connection is not open, the stream is not open, or
        a client's TCP stream has no credit left: the caller then takes the
        way that waits (or raises), :meth:`send_data_header` after it.
        """
        stream = self._streams.get(stream_id)
        if stream is None or self.state is not ConnectionState.OPEN:
            return None
        if self.role is Role.CLIENT and stream.stream_type is StreamType.TCP:
            if stream.credit <= 0:
                return None
            stream.credit -= 1
        self.counters.packets_out += 1
        return _HEADER.pack(PacketType.DATA, stream_id)

    def _take_data_credit(self, stream_id: int) -> None:
        if self.state is not ConnectionState.OPEN:
            raise LocalProtocolError(
                f"can't send Data when role={self.role.value} and state={self.state}"
            )
        stream = self._streams.get(stream_id)
        if stream is None:
            raise LocalProtocolError(f"can't send DATA on stream {stream_id}: not open")
        if self.role is Role.CLIENT and stream.stream_type is StreamType.TCP:
            if stream.credit <= 0:
                raise LocalProtocolError(
                    f"can't send DATA on stream {stream_id}: no credit left (wait for CONTINUE)"
                )
            stream.credit -= 1

    def _not_now(self, event: Event) -> LocalProtocolError:
        return LocalProtocolError(
            f"can't send {type(event).__name__} when role={self.role.value} and state={self.state}"
        )

    def _encode(self, event: Event) -> bytes:
        state, role = self.state, self.role
        if isinstance(event, Data):
            self._take_data_credit(event.stream_id)
            return _HEADER.pack(PacketType.DATA, event.stream_id) + event.data
        if isinstance(event, Connect):
            if role is not Role.CLIENT or state is not ConnectionState.OPEN:
                raise self._not_now(event)
            if event.stream_id in self._streams:
                raise LocalProtocolError(f"stream {event.stream_id} is already open")
            if event.stream_type is StreamType.UDP and not self.udp_allowed:
                raise LocalProtocolError("the server did not offer UDP streams")
            self._streams[event.stream_id] = _Stream(event.stream_type, credit=self.buffer_size)
            host = event.host.encode()
            return (
                _HEADER.pack(PacketType.CONNECT, event.stream_id)
                + _CONNECT.pack(event.stream_type, event.port)
                + host
            )
        if isinstance(event, Continue):
            if role is not Role.SERVER:
                raise self._not_now(event)
            if event.stream_id == 0:
                v1_start = state is ConnectionState.IDLE and self.version == 1
                if not (v1_start or state is ConnectionState.INFO_RECEIVED):
                    raise self._not_now(event)
                self.buffer_size = event.buffer_remaining or self.buffer_size
                self.state = ConnectionState.OPEN
            elif state is not ConnectionState.OPEN or event.stream_id not in self._streams:
                raise LocalProtocolError(
                    f"can't send CONTINUE on stream {event.stream_id}: not open"
                )
            else:
                self._streams[event.stream_id].granted += event.buffer_remaining
            return _HEADER.pack(PacketType.CONTINUE, event.stream_id) + _U32.pack(
                event.buffer_remaining
            )
        if isinstance(event, Close):
            if event.stream_id == 0:
                if state is ConnectionState.IDLE and role is Role.CLIENT:
                    raise self._not_now(event)
                self._streams.clear()
                self.state = ConnectionState.CLOSED
            else:
                if state is not ConnectionState.OPEN:
                    raise self._not_now(event)
                # Closing a stream the peer already closed is a harmless race.
                self._streams.pop(event.stream_id, None)
            return _HEADER.pack(PacketType.CLOSE, event.stream_id) + bytes([event.reason])
        if isinstance(event, (Listen, Listening, Accept, Membership)):
            return self._encode_lan(event)
        if isinstance(event, Info):
            if self.version != 2:
                raise self._not_now(event)
            if role is Role.SERVER and state is ConnectionState.IDLE:
                self.state = ConnectionState.INFO_SENT
            elif role is Role.CLIENT and state is ConnectionState.INFO_RECEIVED:
                self.state = ConnectionState.AWAITING_CONTINUE
            else:
                raise self._not_now(event)
            self.local_extensions = event.extensions
            body = b"".join(extension.emit() for extension in event.extensions)
            return _HEADER.pack(PacketType.INFO, 0) + bytes([event.major, event.minor]) + body
        raise LocalProtocolError(f"{type(event).__name__} is not sent on the wire")

    def _encode_lan(self, event: Listen | Listening | Accept | Membership) -> bytes:
        if self.state is not ConnectionState.OPEN or not self.lan_enabled:
            raise LocalProtocolError(
                f"can't send {type(event).__name__}: the LAN extension was not negotiated "
                f"or the connection is not open (state={self.state})"
            )
        client = self.role is Role.CLIENT
        if isinstance(event, Listen):
            if not client:
                raise self._not_now(event)
            if event.stream_id in self._streams:
                raise LocalProtocolError(f"stream {event.stream_id} is already open")
            if event.stream_type is StreamType.UDP and not self.udp_allowed:
                raise LocalProtocolError("the server did not offer UDP streams")
            self._streams[event.stream_id] = _Stream(event.stream_type, listener=True)
            return (
                _HEADER.pack(PacketType.LISTEN, event.stream_id)
                + _CONNECT.pack(event.stream_type, event.port)
                + event.host.encode()
            )
        if client:
            raise self._not_now(event)
        if isinstance(event, Listening):
            if not self.is_listener(event.stream_id):
                raise LocalProtocolError(f"stream {event.stream_id} is not a listener")
            return (
                _HEADER.pack(PacketType.LISTENING, event.stream_id)
                + struct.pack("<H", event.port)
                + event.host.encode()
            )
        if isinstance(event, Accept):
            if event.stream_id in self._streams:
                raise LocalProtocolError(f"stream {event.stream_id} is already open")
            listener = self._streams.get(event.listener_id)
            if (
                listener is None
                or not listener.listener
                or listener.stream_type is not StreamType.TCP
            ):
                raise LocalProtocolError(f"stream {event.listener_id} is not a TCP listener")
            self._streams[event.stream_id] = _Stream(StreamType.TCP, granted=self.buffer_size)
            return (
                _HEADER.pack(PacketType.ACCEPT, event.stream_id)
                + struct.pack("<IH", event.listener_id, event.port)
                + event.host.encode()
            )
        name = event.name.encode()
        return (
            _HEADER.pack(PacketType.MEMBERSHIP, 0)
            + bytes([event.change, event.prefix_length, len(name)])
            + name
            + event.host.encode()
        )

    def release(self, stream_id: int, packets: int = 1) -> Continue | None:
        """Server: ``packets`` DATA packets of the stream went upstream.

        Returns the :class:`Continue` to send when a quarter of the window has
        drained since the last one, else ``None`` (also for closed streams).
        """
        stream = self._streams.get(stream_id)
        if stream is None or stream.stream_type is StreamType.UDP:
            return None
        stream.queued = max(0, stream.queued - packets)
        stream.drained += packets
        if stream.drained >= max(1, self.buffer_size // 4):
            stream.drained = 0
            return Continue(stream_id, max(0, self.buffer_size - stream.queued))
        return None

    def confirm(self, stream_id: int) -> Continue | None:
        """Server: the stream's socket connected; the confirmation ``CONTINUE`` if negotiated."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.stream_type is StreamType.UDP:
            return None
        if not self.negotiated(ExtensionId.STREAM_CONFIRMATION):
            return None
        stream.drained = 0
        return Continue(stream_id, max(0, self.buffer_size - stream.queued))

    # -- receiving

    def receive_data(self, message: bytes | bytearray | memoryview | None) -> None:
        """Queue one whole WebSocket message, or ``None`` when the WebSocket ended.

        The message is not copied: a ``bytearray`` or ``memoryview`` handed
        in must not change until its events were taken.  (Each payload is
        copied once, into the ``bytes`` of its event.)
        """
        self._check_usable()
        if self._incoming and self._incoming[-1] is None:
            raise LocalProtocolError("receive_data() after the end of the WebSocket")
        self._incoming.append(message)

    def _data_to_take(self, message: bytes | memoryview, role: Role) -> int | None:
        """The stream id of DATA that ``role``'s fast path may take, else ``None``.

        For :meth:`take_data` and :meth:`take_client_data`: the connection is
        open in ``role`` and no events wait (they must come first).
        """
        if (
            self.role is not role
            or self.state is not ConnectionState.OPEN
            or self._incoming
            or self._pending
            or len(message) < HEADER_SIZE
            or message[0] != PacketType.DATA
        ):
            return None
        return int(_U32.unpack_from(message, 1)[0])

    def take_data(self, message: bytes) -> tuple[int, memoryview] | None:
        """Server: ``message`` taken at once if it is DATA on an open TCP stream within its credit.

        The bulk of an upload, without an event per packet: the state changes
        exactly as :meth:`receive_data` and :meth:`next_event` would change it,
        and the result is the stream id and a view of the payload (not a
        copy; ``message`` must not change).  Anything else (another packet
        type, a stream without credit, events still waiting) returns ``None``
        and changes nothing: hand the message to :meth:`receive_data`.
        """
        stream_id = self._data_to_take(message, Role.SERVER)
        if stream_id is None:
            return None
        stream = self._streams.get(stream_id)
        if (
            stream is None
            or stream.listener
            or stream.stream_type is not StreamType.TCP
            or stream.received >= stream.granted
        ):
            return None
        self.counters.packets_in += 1
        stream.queued += 1
        stream.received += 1
        return stream_id, memoryview(message)[HEADER_SIZE:]

    def take_client_data(self, message: bytes | memoryview) -> tuple[int, memoryview] | None:
        """Client: ``message`` taken at once if it is DATA on an open stream.

        The client's side of :meth:`take_data`: the state changes exactly as
        :meth:`receive_data` and :meth:`next_event` would change it, and the
        result is the stream id and a view of the payload (not a copy;
        ``message`` must not change).  Anything else returns ``None`` and
        changes nothing: hand the message to :meth:`receive_data`.
        """
        stream_id = self._data_to_take(message, Role.CLIENT)
        if stream_id is None or stream_id == 0 or stream_id not in self._streams:
            return None
        self.counters.packets_in += 1
        return stream_id, memoryview(message)[HEADER_SIZE:]

    def next_event(self) -> Event | _NeedData:
        """The next event from the received messages, or :data:`NEED_DATA`.

        Raises :class:`~netshim.RemoteProtocolError` (with the close reason
        for stream 0 as ``hint``) when the peer broke the connection-level
        protocol; the state is then ``ERROR``.
        """
        self._check_usable()
        while not self._pending:
            if not self._incoming:
                return NEED_DATA
            message = self._incoming.popleft()
            try:
                self._process(message)
            except RemoteProtocolError:
                self.state = ConnectionState.ERROR
                raise
        return self._pending.popleft()

    def events(self) -> Iterable[Event]:
        """Every event available now."""
        while True:
            event = self.next_event()
            if isinstance(event, _NeedData):
                return
            yield event

    def _check_usable(self) -> None:
        if self.state is ConnectionState.ERROR:
            raise LocalProtocolError("the connection is in the ERROR state after a protocol error")

    def _reject(self, stream_id: int | None, reason: int, detail: str) -> None:
        self.counters.rejected += 1
        if stream_id is not None and stream_id != 0:
            self._streams.pop(stream_id, None)
        self._pending.append(PacketRejected(stream_id, reason, detail))

    def _process(self, message: bytes | bytearray | memoryview | None) -> None:
        if message is None:
            self._streams.clear()
            if self.state is not ConnectionState.CLOSED:
                self.state = ConnectionState.CLOSED
            self._pending.append(ConnectionClosed())
            return
        if self.state is ConnectionState.CLOSED:
            self.counters.ignored += 1
            return
        if len(message) < HEADER_SIZE:
            self._reject(None, CloseReason.INVALID_INFO, f"packet of {len(message)} bytes")
            return
        self.counters.packets_in += 1
        kind, stream_id = _HEADER.unpack_from(message)
        # One copy, straight from the message into the payload's bytes.
        payload = bytes(memoryview(message)[HEADER_SIZE:])
        if self.state is not ConnectionState.OPEN:
            self._process_handshake(kind, stream_id, payload)
            return
        if self.role is Role.SERVER:
            self._process_server(kind, stream_id, payload)
        else:
            self._process_client(kind, stream_id, payload)

    def _process_handshake(self, kind: int, stream_id: int, payload: bytes) -> None:
        role, state = self.role, self.state
        if kind == PacketType.INFO and stream_id == 0 and self.version == 2:
            expected = ConnectionState.INFO_SENT if role is Role.SERVER else ConnectionState.IDLE
            if state is not expected:
                raise RemoteProtocolError(
                    f"unexpected INFO when role={role.value} and state={state}",
                    CloseReason.INCOMPATIBLE_EXTENSIONS,
                )
            if len(payload) < 2:
                raise RemoteProtocolError(
                    "INFO payload shorter than its version", CloseReason.INCOMPATIBLE_EXTENSIONS
                )
            sender = Role.CLIENT if role is Role.SERVER else Role.SERVER
            try:
                extensions = parse_extensions(payload[2:], sender)
            except (ValueError, UnicodeDecodeError) as exc:
                raise RemoteProtocolError(
                    f"malformed INFO extensions: {exc}", CloseReason.INCOMPATIBLE_EXTENSIONS
                ) from None
            info = Info(payload[0], payload[1], extensions)
            if info.major < 2:
                raise RemoteProtocolError(
                    f"INFO announces version {info.major}.{info.minor}",
                    CloseReason.INCOMPATIBLE_EXTENSIONS,
                )
            self.peer_info = info
            self.state = ConnectionState.INFO_RECEIVED
            self._pending.append(info)
            return
        if role is Role.CLIENT and kind == PacketType.CONTINUE and stream_id == 0:
            if state not in (ConnectionState.IDLE, ConnectionState.AWAITING_CONTINUE):
                raise RemoteProtocolError(f"unexpected CONTINUE on stream 0 in state {state}")
            if len(payload) < _U32.size:
                raise RemoteProtocolError("CONTINUE payload shorter than 4 bytes")
            if state is ConnectionState.IDLE:
                # A server that skipped INFO speaks v1, whatever we asked for.
                self.version = 1
            (self.buffer_size,) = _U32.unpack_from(payload)
            self.state = ConnectionState.OPEN
            self._pending.append(Continue(0, self.buffer_size))
            return
        if role is Role.CLIENT and kind == PacketType.CLOSE and stream_id == 0:
            reason = payload[0] if payload else CloseReason.UNKNOWN
            self.state = ConnectionState.CLOSED
            self._pending.append(Close(0, reason))
            return
        if role is Role.SERVER and kind == PacketType.CLOSE and stream_id == 0:
            reason = payload[0] if payload else CloseReason.UNKNOWN
            self.state = ConnectionState.CLOSED
            self._pending.append(Close(0, reason))
            return
        raise RemoteProtocolError(
            f"packet type 0x{kind:02x} on stream {stream_id} before the handshake finished "
            f"(role={role.value}, state={state})",
            CloseReason.INCOMPATIBLE_EXTENSIONS,
        )

    def _process_server(self, kind: int, stream_id: int, payload: bytes) -> None:
        if kind == PacketType.DATA:
            stream = self._streams.get(stream_id)
            if stream is None:
                self.counters.ignored += 1
                return
            if stream.listener:
                if stream.stream_type is StreamType.TCP:
                    self._reject(stream_id, CloseReason.INVALID_INFO, "DATA on a TCP listener")
                    return
            elif stream.stream_type is StreamType.TCP:
                stream.queued += 1
                stream.received += 1
                if stream.received > stream.granted:
                    self._reject(
                        stream_id,
                        CloseReason.THROTTLED,
                        f"DATA packet {stream.received} with {stream.granted} credits granted "
                        "in all: the client ignores CONTINUE credits",
                    )
                    return
            self._pending.append(Data(stream_id, payload))
        elif kind == PacketType.CONNECT:
            self._process_connect(stream_id, payload)
        elif kind == PacketType.LISTEN and self.lan_enabled:
            self._process_listen(stream_id, payload)
        elif kind == PacketType.CLOSE:
            if stream_id == 0:
                self._streams.clear()
                self.state = ConnectionState.CLOSED
                reason = payload[0] if payload else CloseReason.UNKNOWN
                self._pending.append(Close(0, reason))
                return
            if self._streams.pop(stream_id, None) is None:
                self.counters.ignored += 1
                return
            # Trailing bytes after the reason are a known client quirk; an
            # empty payload still clearly means "close".
            self._pending.append(Close(stream_id, payload[0] if payload else CloseReason.UNKNOWN))
        elif kind in (PacketType.CONTINUE, PacketType.INFO):
            # Clients never send these once open; wisp-js logs and carries on.
            self.counters.ignored += 1
        else:
            self._reject(
                stream_id if stream_id in self._streams else None,
                CloseReason.INVALID_INFO,
                f"unknown packet type 0x{kind:02x}",
            )

    def _process_connect(self, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            self._reject(None, CloseReason.INVALID_INFO, "CONNECT on the reserved stream 0")
            return
        if stream_id >= SERVER_STREAM_BASE and self.lan_enabled:
            self._reject(
                None, CloseReason.INVALID_INFO, f"stream id {stream_id:#x} is the server's"
            )
            return
        if stream_id in self._streams:
            self._reject(stream_id, CloseReason.INVALID_INFO, f"stream {stream_id} already open")
            return
        if len(payload) < _CONNECT.size:
            self._reject(stream_id, CloseReason.INVALID_INFO, "CONNECT payload too short")
            return
        raw_type, port = _CONNECT.unpack_from(payload)
        raw_host = payload[_CONNECT.size :]
        if raw_type not in (StreamType.TCP, StreamType.UDP):
            self._reject(
                stream_id, CloseReason.INVALID_INFO, f"unknown stream type 0x{raw_type:02x}"
            )
            return
        if raw_type == StreamType.UDP and not self.udp_allowed:
            self._reject(stream_id, CloseReason.BLOCKED, "UDP streams were not negotiated")
            return
        if port == 0:
            self._reject(stream_id, CloseReason.INVALID_INFO, "port 0")
            return
        try:
            host = raw_host.decode("utf-8").strip()
        except UnicodeDecodeError:
            self._reject(stream_id, CloseReason.INVALID_INFO, "host name is not UTF-8")
            return
        if not host or len(host) > DEFAULT_MAX_HOSTNAME_LENGTH or "\x00" in host:
            self._reject(stream_id, CloseReason.INVALID_INFO, f"bad host name {host[:40]!r}")
            return
        # A new stream starts with the window announced on stream 0.
        self._streams[stream_id] = _Stream(StreamType(raw_type), granted=self.buffer_size)
        self._pending.append(Connect(stream_id, host, port, StreamType(raw_type)))

    def _process_listen(self, stream_id: int, payload: bytes) -> None:
        if not 0 < stream_id < SERVER_STREAM_BASE:
            self._reject(None, CloseReason.INVALID_INFO, f"LISTEN on stream {stream_id:#x}")
            return
        if stream_id in self._streams:
            self._reject(stream_id, CloseReason.INVALID_INFO, f"stream {stream_id} already open")
            return
        if len(payload) < _CONNECT.size:
            self._reject(stream_id, CloseReason.INVALID_INFO, "LISTEN payload too short")
            return
        raw_type, port = _CONNECT.unpack_from(payload)
        if raw_type not in (StreamType.TCP, StreamType.UDP):
            self._reject(
                stream_id, CloseReason.INVALID_INFO, f"unknown stream type 0x{raw_type:02x}"
            )
            return
        if raw_type == StreamType.UDP and not self.udp_allowed:
            self._reject(stream_id, CloseReason.BLOCKED, "UDP streams were not negotiated")
            return
        try:
            host = payload[_CONNECT.size :].decode("utf-8").strip()
        except UnicodeDecodeError:
            self._reject(stream_id, CloseReason.INVALID_INFO, "host name is not UTF-8")
            return
        if len(host) > DEFAULT_MAX_HOSTNAME_LENGTH or "\x00" in host:
            self._reject(stream_id, CloseReason.INVALID_INFO, f"bad host name {host[:40]!r}")
            return
        self._streams[stream_id] = _Stream(StreamType(raw_type), listener=True)
        self._pending.append(Listen(stream_id, port, host, StreamType(raw_type)))

    def _process_lan_client(self, kind: int, stream_id: int, payload: bytes) -> bool:
        """A client's LAN-extension packets; ``False`` if ``kind`` is not one."""
        if kind == PacketType.MEMBERSHIP and stream_id == 0:
            try:
                if len(payload) < 3 or len(payload) < 3 + payload[2]:
                    raise ValueError("truncated")
                name = payload[3 : 3 + payload[2]].decode()
                host = payload[3 + payload[2] :].decode()
                event = Membership(MembershipChange(payload[0]), host, name, payload[1])
            except ValueError as exc:
                self._reject(0, CloseReason.INVALID_INFO, f"malformed MEMBERSHIP: {exc}")
                return True
            self._pending.append(event)
            return True
        if kind == PacketType.ACCEPT:
            if stream_id < SERVER_STREAM_BASE or stream_id in self._streams:
                self._reject(None, CloseReason.INVALID_INFO, f"ACCEPT on stream {stream_id:#x}")
                return True
            try:
                if len(payload) < 6:
                    raise ValueError("truncated")
                listener_id, port = struct.unpack_from("<IH", payload)
                host = payload[6:].decode()
            except ValueError as exc:
                self._reject(stream_id, CloseReason.INVALID_INFO, f"malformed ACCEPT: {exc}")
                return True
            listener = self._streams.get(listener_id)
            if listener is None or not listener.listener:
                # The listener closed while the connection was on its way.
                self._reject(stream_id, CloseReason.REFUSED, f"no listener {listener_id}")
                return True
            self._streams[stream_id] = _Stream(StreamType.TCP, credit=self.buffer_size)
            self._pending.append(Accept(stream_id, listener_id, host, port))
            return True
        if kind == PacketType.LISTENING:
            stream = self._streams.get(stream_id)
            if stream is None or not stream.listener:
                self.counters.ignored += 1
                return True
            try:
                if len(payload) < 2:
                    raise ValueError("truncated")
                (port,) = struct.unpack_from("<H", payload)
                listening = Listening(stream_id, payload[2:].decode(), port)
            except ValueError as exc:
                self._reject(stream_id, CloseReason.INVALID_INFO, f"malformed LISTENING: {exc}")
                return True
            self._pending.append(listening)
            return True
        return False

    def _process_client(self, kind: int, stream_id: int, payload: bytes) -> None:
        lan_packet = kind >= PacketType.LISTEN and self.lan_enabled
        if lan_packet and self._process_lan_client(kind, stream_id, payload):
            return
        if stream_id == 0:
            if kind == PacketType.CLOSE:
                self._streams.clear()
                self.state = ConnectionState.CLOSED
                self._pending.append(Close(0, payload[0] if payload else CloseReason.UNKNOWN))
            else:
                self.counters.ignored += 1
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            self.counters.ignored += 1
            return
        if kind == PacketType.DATA:
            self._pending.append(Data(stream_id, payload))
        elif kind == PacketType.CONTINUE:
            if len(payload) < _U32.size:
                self._reject(stream_id, CloseReason.CLIENT_ERROR, "CONTINUE shorter than 4 bytes")
                return
            (remaining,) = _U32.unpack_from(payload)
            stream.credit = remaining
            self._pending.append(Continue(stream_id, remaining))
        elif kind == PacketType.CLOSE:
            del self._streams[stream_id]
            self._pending.append(Close(stream_id, payload[0] if payload else CloseReason.UNKNOWN))
        else:
            self.counters.ignored += 1
