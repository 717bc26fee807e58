"""SOCKS5, sans I/O: the handshake of RFC 1928 with the username/password method of RFC 1929.

The layer between a proxy client's TCP connection and the stream or UDP
association it asks for.  Both roles are here, in the shape of h11:
``receive_data(data)`` buffers bytes (``b""`` means EOF), ``next_event()``
returns an event or :data:`NEED_DATA`, ``send(event)`` returns bytes.

Server side::

    client: VER=5 NMETHODS METHODS...        -> Greeting(methods)
    server: MethodChoice(method)             (0x00 none, 0x02 user/password, 0xff refuse)
    client: VER=1 ULEN UNAME PLEN PASSWD     -> Credentials(username, password)
    server: AuthResult(ok)
    client: VER=5 CMD RSV ATYP ADDR PORT     -> Request(command, host, port)
    server: Reply(code, host, port)          -> RELAY (CONNECT) or ASSOCIATED (UDP)

After a successful ``CONNECT`` reply the TCP connection carries the stream;
:meth:`Socks5Connection.trailing_data` hands over bytes that arrived early.
UDP datagrams of an association carry the header of RFC 1928 section 7,
built and parsed by :class:`UdpDatagram`; fragments are not supported (the
RFC allows dropping them).  Violations raise
:class:`~netshim.RemoteProtocolError` whose ``hint`` is the reply code to
send, when the protocol has one for the mistake.  Every message has a
bounded size (at most 513 bytes for credentials, 262 for a request), so no
limit needs configuring.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

from .._addresses import parse_ip
from .._errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "NEED_DATA",
    "AuthMethod",
    "AuthResult",
    "Command",
    "ConnectionClosed",
    "Credentials",
    "Event",
    "Greeting",
    "MethodChoice",
    "Reply",
    "ReplyCode",
    "Request",
    "Role",
    "Socks5Connection",
    "State",
    "UdpDatagram",
    "encode_address",
]

VERSION: Final = 5
AUTH_VERSION: Final = 1


class AuthMethod(enum.IntEnum):
    NO_AUTHENTICATION = 0x00
    GSSAPI = 0x01
    USERNAME_PASSWORD = 0x02
    NO_ACCEPTABLE = 0xFF


class Command(enum.IntEnum):
    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03


class ReplyCode(enum.IntEnum):
    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class AddressType(enum.IntEnum):
    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    """RFC 1928's phases: method negotiation, sub-negotiation, request, then use."""

    GREETING = "GREETING"
    METHOD_CHOSEN = "METHOD-CHOSEN"
    AUTHENTICATING = "AUTHENTICATING"
    AUTH_REPLY = "AUTH-REPLY"
    REQUEST = "REQUEST"
    REPLY = "REPLY"
    RELAY = "RELAY"
    ASSOCIATED = "ASSOCIATED"
    CLOSED = "CLOSED"
    ERROR = "ERROR"

    def __str__(self) -> str:
        return self.value


class Event:
    __slots__ = ()


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


@dataclass(frozen=True, slots=True)
class Greeting(Event):
    methods: tuple[int, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.methods) <= 255:
            raise ValueError("a greeting offers 1-255 methods")


@dataclass(frozen=True, slots=True)
class MethodChoice(Event):
    method: int


@dataclass(frozen=True, slots=True)
class Credentials(Event):
    username: str
    password: str

    def __post_init__(self) -> None:
        if not (
            1 <= len(self.username.encode()) <= 255 and 1 <= len(self.password.encode()) <= 255
        ):
            raise ValueError("RFC 1929 usernames and passwords are 1-255 bytes")

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>)"


@dataclass(frozen=True, slots=True)
class AuthResult(Event):
    success: bool


@dataclass(frozen=True, slots=True)
class Request(Event):
    """``host`` is an IP in canonical text, or a domain name as sent."""

    command: Command
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Reply(Event):
    code: int
    host: str = "0.0.0.0"
    port: int = 0

    @property
    def succeeded(self) -> bool:
        return self.code == ReplyCode.SUCCEEDED


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The peer closed the TCP connection."""


def encode_address(host: str, port: int) -> bytes:
    """``ATYP ADDR PORT`` for an IP or a domain name."""
    ip = parse_ip(host)
    if isinstance(ip, ipaddress.IPv4Address):
        body = bytes([AddressType.IPV4]) + ip.packed
    elif isinstance(ip, ipaddress.IPv6Address):
        body = bytes([AddressType.IPV6]) + ip.packed
    else:
        name = host.encode("idna")
        if not 1 <= len(name) <= 255:
            raise ValueError(f"SOCKS5 domain names are 1-255 bytes, got {len(name)}")
        body = bytes([AddressType.DOMAIN, len(name)]) + name
    return body + struct.pack("!H", port)


def _decode_address(buffer: bytes | bytearray, offset: int) -> tuple[str, int, int] | None:
    """``(host, port, end)`` from ``ATYP ADDR PORT`` at ``offset``; ``None`` if incomplete."""
    if len(buffer) <= offset:
        return None
    kind = buffer[offset]
    if kind == AddressType.IPV4:
        end = offset + 1 + 4
        if len(buffer) < end + 2:
            return None
        host = str(ipaddress.IPv4Address(bytes(buffer[offset + 1 : end])))
    elif kind == AddressType.IPV6:
        end = offset + 1 + 16
        if len(buffer) < end + 2:
            return None
        host = str(ipaddress.IPv6Address(bytes(buffer[offset + 1 : end])))
    elif kind == AddressType.DOMAIN:
        if len(buffer) < offset + 2:
            return None
        length = buffer[offset + 1]
        end = offset + 2 + length
        if len(buffer) < end + 2:
            return None
        if length == 0:
            raise RemoteProtocolError("empty domain name", ReplyCode.GENERAL_FAILURE)
        try:
            host = bytes(buffer[offset + 2 : end]).decode("ascii")
        except UnicodeDecodeError:
            raise RemoteProtocolError(
                "domain name is not ASCII", ReplyCode.GENERAL_FAILURE
            ) from None
    else:
        raise RemoteProtocolError(
            f"unknown address type 0x{kind:02x}", ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED
        )
    (port,) = struct.unpack_from("!H", buffer, end)
    return host, port, end + 2


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    """One datagram of a UDP association, with its RFC 1928 section 7 header."""

    host: str
    port: int
    data: bytes
    fragment: int = 0

    @classmethod
    def parse(cls, packet: bytes) -> UdpDatagram:
        """Parse a datagram; ``RemoteProtocolError`` if it is truncated or malformed."""
        if len(packet) < 4 or packet[0:2] != b"\x00\x00":
            raise RemoteProtocolError("UDP datagram without the RSV/FRAG header")
        decoded = _decode_address(packet, 3)
        if decoded is None:
            raise RemoteProtocolError("truncated UDP datagram header")
        host, port, end = decoded
        return cls(host, port, packet[end:], packet[2])

    def emit(self) -> bytes:
        return (
            b"\x00\x00" + bytes([self.fragment]) + encode_address(self.host, self.port) + self.data
        )


class Socks5Connection:
    """One end of a SOCKS5 control connection (see the module documentation)."""

    def __init__(self, role: Role) -> None:
        self.role = role
        self.state = State.GREETING
        self.method: int | None = None
        self.command: Command | None = None
        self._buffer = bytearray()
        self._eof = False

    def __repr__(self) -> str:
        return f"<Socks5Connection {self.role.value} {self.state}>"

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer; ``b""`` means the peer closed."""
        if self.state is State.ERROR:
            raise LocalProtocolError("the connection is in the ERROR state")
        if data:
            self._buffer += data
        else:
            self._eof = True

    def trailing_data(self) -> bytes:
        """Bytes received after the handshake (the start of the stream); empties the buffer."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def next_event(self) -> Event | _NeedData:
        if self.state is State.ERROR:
            raise LocalProtocolError("the connection is in the ERROR state")
        try:
            event = self._parse()
        except RemoteProtocolError:
            self.state = State.ERROR
            raise
        if event is None:
            if self._eof:
                if self._buffer and self.state not in (State.RELAY, State.ASSOCIATED):
                    self.state = State.ERROR
                    raise RemoteProtocolError(f"connection closed in the middle of {self.state}")
                self.state = State.CLOSED
                return ConnectionClosed()
            return NEED_DATA
        return event

    def _parse(self) -> Event | None:
        buffer, state = self._buffer, self.state
        if self.role is Role.SERVER:
            if state is State.GREETING:
                if len(buffer) < 2:
                    return None
                if buffer[0] != VERSION:
                    raise RemoteProtocolError(f"SOCKS version {buffer[0]} is not supported")
                count = buffer[1]
                if count == 0:
                    raise RemoteProtocolError("a greeting must offer at least one method")
                if len(buffer) < 2 + count:
                    return None
                methods = tuple(buffer[2 : 2 + count])
                del buffer[: 2 + count]
                self.state = State.METHOD_CHOSEN
                return Greeting(methods)
            if state is State.AUTHENTICATING:
                if len(buffer) < 2:
                    return None
                if buffer[0] != AUTH_VERSION:
                    raise RemoteProtocolError(f"auth sub-negotiation version {buffer[0]}")
                user_end = 2 + buffer[1]
                if len(buffer) < user_end + 1:
                    return None
                password_end = user_end + 1 + buffer[user_end]
                if len(buffer) < password_end:
                    return None
                try:
                    credentials = Credentials(
                        bytes(buffer[2:user_end]).decode(),
                        bytes(buffer[user_end + 1 : password_end]).decode(),
                    )
                except (UnicodeDecodeError, ValueError) as exc:
                    raise RemoteProtocolError(f"bad credentials: {exc}") from None
                del buffer[:password_end]
                self.state = State.AUTH_REPLY
                return credentials
            if state is State.REQUEST:
                if len(buffer) < 4:
                    return None
                if buffer[0] != VERSION or buffer[2] != 0:
                    raise RemoteProtocolError("malformed request header", ReplyCode.GENERAL_FAILURE)
                decoded = _decode_address(buffer, 3)
                if decoded is None:
                    return None
                host, port, end = decoded
                try:
                    command = Command(buffer[1])
                except ValueError:
                    raise RemoteProtocolError(
                        f"unknown command 0x{buffer[1]:02x}", ReplyCode.COMMAND_NOT_SUPPORTED
                    ) from None
                del buffer[:end]
                self.state = State.REPLY
                self.command = command
                return Request(command, host, port)
            return None
        # Client role.
        if state is State.METHOD_CHOSEN:
            if len(buffer) < 2:
                return None
            if buffer[0] != VERSION:
                raise RemoteProtocolError(f"server answered with SOCKS version {buffer[0]}")
            method = buffer[1]
            del buffer[:2]
            self.method = method
            if method == AuthMethod.NO_ACCEPTABLE:
                self.state = State.CLOSED
            elif method == AuthMethod.USERNAME_PASSWORD:
                self.state = State.AUTHENTICATING
            else:
                self.state = State.REQUEST
            return MethodChoice(method)
        if state is State.AUTH_REPLY:
            if len(buffer) < 2:
                return None
            ok = buffer[1] == 0
            del buffer[:2]
            self.state = State.REQUEST if ok else State.CLOSED
            return AuthResult(ok)
        if state is State.REPLY:
            if len(buffer) < 4:
                return None
            if buffer[0] != VERSION:
                raise RemoteProtocolError("malformed reply")
            decoded = _decode_address(buffer, 3)
            if decoded is None:
                return None
            host, port, end = decoded
            code = buffer[1]
            del buffer[:end]
            if code != ReplyCode.SUCCEEDED:
                self.state = State.CLOSED
            else:
                self.state = self._after_success()
            return Reply(code, host, port)
        return None

    def _after_success(self) -> State:
        return State.ASSOCIATED if self.command is Command.UDP_ASSOCIATE else State.RELAY

    def send(self, event: Event) -> bytes:
        """Encode ``event``; ``LocalProtocolError`` names event, role and state when out of turn."""
        role, state = self.role, self.state
        if role is Role.SERVER:
            if isinstance(event, MethodChoice) and state is State.METHOD_CHOSEN:
                self.method = event.method
                if event.method == AuthMethod.NO_ACCEPTABLE:
                    self.state = State.CLOSED
                elif event.method == AuthMethod.USERNAME_PASSWORD:
                    self.state = State.AUTHENTICATING
                else:
                    self.state = State.REQUEST
                return bytes([VERSION, event.method])
            if isinstance(event, AuthResult) and state is State.AUTH_REPLY:
                self.state = State.REQUEST if event.success else State.CLOSED
                return bytes([AUTH_VERSION, 0 if event.success else 1])
            if isinstance(event, Reply) and state in (State.REPLY, State.REQUEST, State.ERROR):
                # A failure reply may also answer a request that failed to parse.
                if event.succeeded and state is State.REPLY:
                    self.state = self._after_success()
                else:
                    self.state = State.CLOSED
                return bytes([VERSION, event.code, 0]) + encode_address(event.host, event.port)
        else:
            if isinstance(event, Greeting) and state is State.GREETING:
                self.state = State.METHOD_CHOSEN
                return bytes([VERSION, len(event.methods), *event.methods])
            if isinstance(event, Credentials) and state is State.AUTHENTICATING:
                self.state = State.AUTH_REPLY
                user, password = event.username.encode(), event.password.encode()
                return bytes([AUTH_VERSION, len(user)]) + user + bytes([len(password)]) + password
            if isinstance(event, Request) and state is State.REQUEST:
                self.state = State.REPLY
                self.command = event.command
                return bytes([VERSION, event.command, 0]) + encode_address(event.host, event.port)
        raise LocalProtocolError(
            f"can't send {type(event).__name__} when role={role.value} and state={state}"
        )
