"""WireGuard, sans I/O: the protocol of the WireGuard whitepaper (Donenfeld, NDSS 2017).

A :class:`WireGuardDevice` is one WireGuard interface: a static X25519 key
pair and its peers, each with a public key, an optional preshared key, an
endpoint and the *allowed IPs* that route packets to it.  It does no I/O and
reads no clock: datagrams that arrived go in with :meth:`~WireGuardDevice.receive_datagram`
``(data, source, now)``, IP packets to send with :meth:`~WireGuardDevice.send_packet`
``(packet, now)``; what results is taken out with :meth:`~WireGuardDevice.take_datagrams`
(encrypted UDP payloads and where to send them), :meth:`~WireGuardDevice.take_packets`
(decrypted IP packets) and :meth:`~WireGuardDevice.take_events` (handshakes
completed, failed or expired; endpoints that changed).  Timers are deadlines:
:meth:`~WireGuardDevice.deadline` says when :meth:`~WireGuardDevice.poll` wants to
run next.

What the whitepaper specifies and this module does:

* the Noise_IKpsk2 handshake (section 5.4): a 148-byte initiation carrying
  the initiator's encrypted static key and a TAI64N timestamp, a 92-byte
  response, transport keys from the final chaining key; HASH is BLAKE2s,
  MAC keyed BLAKE2s with 16 bytes out, HMAC is HMAC-BLAKE2s, AEAD
  ChaCha20-Poly1305 with a 64-bit little-endian counter as nonce;
* ``mac1`` on every handshake message (keyed by the receiver's public key),
  and under load ``mac2`` with a *cookie*: a responder under load answers a
  message without a valid ``mac2`` with a 64-byte cookie reply (section 5.4.7)
  whose cookie is XChaCha20-Poly1305-sealed; neither crypto backend has
  XChaCha, so :func:`hchacha20` derives its subkey here in pure Python;
* transport data (section 5.4.6) padded to 16 bytes but never beyond the
  interface's MTU (as Linux and wireguard-go pad), with a counter per key
  and a sliding window of :data:`REPLAY_WINDOW` counters against replays
  (RFC 6479's idea, kept as one Python integer used as a bit set);
* the timers of section 6: rekey after :data:`REKEY_AFTER_TIME` or
  :data:`REKEY_AFTER_MESSAGES`, keys refused after :data:`REJECT_AFTER_TIME`,
  handshake retries every :data:`REKEY_TIMEOUT` plus jitter for
  :data:`REKEY_ATTEMPT_TIME`, keepalives after :data:`KEEPALIVE_TIMEOUT` of
  silence, a new handshake when sent data got no answer, persistent
  keepalives, keys erased after three times :data:`REJECT_AFTER_TIME`;
* three key pairs per peer (previous, current and next): a responder keeps
  its new keys as *next* until the initiator's first data message confirms
  them, so packets in flight under the old keys still decrypt;
* roaming: a peer's endpoint becomes the source of its latest authenticated
  packet.

Untrusted datagrams never raise: a datagram that is short, unknown,
replayed, forged or late is dropped and counted in :attr:`WireGuardDevice.dropped`
by reason.  X25519 and ChaCha20-Poly1305 come from a :class:`CryptoBackend`:
``cryptography`` where it imports, else tlslite-ng's pure Python (Pyodide
without its CDN), with the same bytes on the wire
(:mod:`netshim.protocols._wireguard_crypto`).  Randomness (ephemeral keys,
indices, jitter, the cookie secret) comes from ``random_bytes``
(``os.urandom`` unless a test passes its own), the TAI64N wall clock from
``wall_clock``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from ._wireguard_crypto import (
    Aead,
    CryptoBackend,
    X25519Key,
    crypto_backend,
    default_backend,
)

__all__ = [
    "COOKIE_REFRESH_TIME",
    "KEEPALIVE_TIMEOUT",
    "REJECT_AFTER_MESSAGES",
    "REJECT_AFTER_TIME",
    "REKEY_AFTER_MESSAGES",
    "REKEY_AFTER_TIME",
    "REKEY_ATTEMPT_TIME",
    "REKEY_TIMEOUT",
    "REPLAY_WINDOW",
    "AllowedIps",
    "CryptoBackend",
    "Endpoint",
    "EndpointChanged",
    "HandshakeCompleted",
    "HandshakeExpired",
    "HandshakeFailed",
    "Timers",
    "WireGuardDevice",
    "WireGuardEvent",
    "WireGuardPeer",
    "crypto_backend",
    "default_backend",
    "generate_private_key",
    "hchacha20",
    "key_from_text",
    "key_to_text",
    "public_key",
    "xchacha20poly1305_decrypt",
    "xchacha20poly1305_encrypt",
]

#: A UDP endpoint: ``(ip, port)``.
Endpoint: TypeAlias = tuple[str, int]

# -- constants of the whitepaper (section 6.1 and 5.4) ---------------------------

REKEY_AFTER_MESSAGES: Final = 2**60
REJECT_AFTER_MESSAGES: Final = 2**64 - 2**13 - 1
REKEY_AFTER_TIME: Final = 120.0
REJECT_AFTER_TIME: Final = 180.0
REKEY_ATTEMPT_TIME: Final = 90.0
REKEY_TIMEOUT: Final = 5.0
KEEPALIVE_TIMEOUT: Final = 10.0
#: How long a cookie (and the responder's cookie secret) stays good.
COOKIE_REFRESH_TIME: Final = 120.0
#: Counters the replay window remembers behind the highest one seen (the
#: Linux implementation's 2048-bit window).
REPLAY_WINDOW: Final = 2048
#: Jitter added to every handshake retry, as the whitepaper asks (up to 333 ms).
REKEY_TIMEOUT_JITTER: Final = 1 / 3
#: A responder takes at most this many initiations per second from one peer
#: (the Linux and Go implementations' flood limit, 20 ms apart).
INITIATIONS_PER_SECOND: Final = 50
#: Packets waiting for a handshake, per peer; older ones are dropped first
#: (Linux's MAX_STAGED_PACKETS).
DEFAULT_MAX_STAGED_PACKETS: Final = 128
#: Handshake messages per second above which the device counts as under load
#: and asks for cookies (Linux judges by its handshake queue, 4096 deep; a
#: pure-Python responder saturates its CPU far sooner, near a few hundred).
DEFAULT_UNDER_LOAD_HANDSHAKES: Final = 128
#: Live receiver indices on one device, a bound on memory for every peer's
#: handshakes and sessions together.
DEFAULT_MAX_INDICES: Final = 1 << 16

CONSTRUCTION: Final = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER: Final = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1: Final = b"mac1----"
LABEL_COOKIE: Final = b"cookie--"

MESSAGE_INITIATION: Final = 1
MESSAGE_RESPONSE: Final = 2
MESSAGE_COOKIE_REPLY: Final = 3
MESSAGE_TRANSPORT: Final = 4

INITIATION_SIZE: Final = 148
RESPONSE_SIZE: Final = 92
COOKIE_REPLY_SIZE: Final = 64
TRANSPORT_HEADER_SIZE: Final = 16
TAG_SIZE: Final = 16
#: TAI64N labels seconds from 2**62 and counts the 10 leap seconds TAI was
#: ahead of UTC in 1972, as the reference implementations do.
_TAI64_BASE: Final = 2**62 + 10
_ZERO_KEY: Final = bytes(32)

# -- primitives ------------------------------------------------------------------


def _hash(*parts: bytes) -> bytes:
    return hashlib.blake2s(b"".join(parts)).digest()


def _mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, digest_size=16, key=key).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def _kdf(key: bytes, data: bytes, outputs: int) -> list[bytes]:
    """KDF_n of the whitepaper: HKDF with HMAC-BLAKE2s, ``outputs`` 32-byte keys."""
    secret = _hmac(key, data)
    result: list[bytes] = []
    previous = b""
    for index in range(1, outputs + 1):
        previous = _hmac(secret, previous + bytes([index]))
        result.append(previous)
    return result


# The AEAD nonce: 32 zero bits, then the counter as 64 bits little-endian.
_NONCE: Final = struct.Struct("<4xQ")
_TRANSPORT_HEADER: Final = struct.Struct("<IIQ")
_INDEX_AND_COUNTER: Final = struct.Struct("<IQ")
_MESSAGE_WORD: Final = struct.Struct("<I")
_IPV4_LENGTH: Final = struct.Struct("!H")
_REPLAY_MASK: Final = (1 << REPLAY_WINDOW) - 1
#: Zeros that pad a transport message's plaintext to 16 bytes, by count.
_PADDING: Final = tuple(bytes(count) for count in range(16))
#: Addresses whose longest-prefix match :class:`AllowedIps` remembers.
_MAX_CACHED_ROUTES: Final = 4096


def _nonce(counter: int) -> bytes:
    return _NONCE.pack(counter)


def _aead_encrypt(
    crypto: CryptoBackend, key: bytes, counter: int, plaintext: bytes, associated: bytes
) -> bytes:
    return crypto.aead(key).encrypt(_nonce(counter), plaintext, associated)


def _aead_decrypt(
    crypto: CryptoBackend, key: bytes, counter: int, ciphertext: bytes, associated: bytes
) -> bytes | None:
    try:
        return crypto.aead(key).decrypt(_nonce(counter), ciphertext, associated)
    except crypto.invalid_tag:
        return None


def _rotl32(value: int, shift: int) -> int:
    return ((value << shift) | (value >> (32 - shift))) & 0xFFFFFFFF


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha 2.2): a 32-byte subkey from a key and 16 nonce bytes.

    Twenty ChaCha rounds over the constants, key and nonce, without the final
    addition; the first and last rows of the state are the subkey.
    """
    if len(key) != 32 or len(nonce16) != 16:
        raise ValueError("HChaCha20 takes a 32-byte key and a 16-byte nonce")
    state = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
    state += list(struct.unpack("<8I", key)) + list(struct.unpack("<4I", nonce16))

    def quarter(a: int, b: int, c: int, d: int) -> None:
        state[a] = (state[a] + state[b]) & 0xFFFFFFFF
        state[d] = _rotl32(state[d] ^ state[a], 16)
        state[c] = (state[c] + state[d]) & 0xFFFFFFFF
        state[b] = _rotl32(state[b] ^ state[c], 12)
        state[a] = (state[a] + state[b]) & 0xFFFFFFFF
        state[d] = _rotl32(state[d] ^ state[a], 8)
        state[c] = (state[c] + state[d]) & 0xFFFFFFFF
        state[b] = _rotl32(state[b] ^ state[c], 7)

    for _ in range(10):
        quarter(0, 4, 8, 12)
        quarter(1, 5, 9, 13)
        quarter(2, 6, 10, 14)
        quarter(3, 7, 11, 15)
        quarter(0, 5, 10, 15)
        quarter(1, 6, 11, 12)
        quarter(2, 7, 8, 13)
        quarter(3, 4, 9, 14)
    return struct.pack("<8I", *state[0:4], *state[12:16])


def xchacha20poly1305_encrypt(
    key: bytes,
    nonce24: bytes,
    plaintext: bytes,
    associated: bytes,
    *,
    crypto: CryptoBackend | None = None,
) -> bytes:
    """XChaCha20-Poly1305 sealing: ChaCha20-Poly1305 under HChaCha20's subkey."""
    crypto = crypto or default_backend()
    subkey = hchacha20(key, nonce24[:16])
    return crypto.aead(subkey).encrypt(b"\x00" * 4 + nonce24[16:], plaintext, associated)


def xchacha20poly1305_decrypt(
    key: bytes,
    nonce24: bytes,
    ciphertext: bytes,
    associated: bytes,
    *,
    crypto: CryptoBackend | None = None,
) -> bytes | None:
    """XChaCha20-Poly1305 opening; ``None`` when the tag does not verify."""
    crypto = crypto or default_backend()
    subkey = hchacha20(key, nonce24[:16])
    try:
        return crypto.aead(subkey).decrypt(b"\x00" * 4 + nonce24[16:], ciphertext, associated)
    except crypto.invalid_tag:
        return None


def tai64n(unix_time: float) -> bytes:
    """The 12-byte TAI64N label of a Unix time (seconds, then nanoseconds, big-endian)."""
    seconds = int(unix_time)
    nanoseconds = int((unix_time - seconds) * 1e9)
    # Rounded down to about 16 ms, as wireguard-go and Linux do, so the
    # timestamp reveals less about the sender's clock.
    nanoseconds &= ~0xFFFFFF
    return struct.pack(">QI", _TAI64_BASE + seconds, max(0, nanoseconds))


# -- keys ------------------------------------------------------------------------


def key_from_text(text: str) -> bytes:
    """A 32-byte key from its base64 form (``wg genkey``'s); ``ValueError`` if not one."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError as exc:
        raise ValueError(f"not a base64 WireGuard key: {text!r}") from exc
    if len(key) != 32:
        raise ValueError(f"a WireGuard key is 32 bytes, this one {len(key)}: {text!r}")
    return key


def key_to_text(key: bytes) -> str:
    """The base64 form of a 32-byte key."""
    return base64.b64encode(key).decode("ascii")


def generate_private_key(random_bytes: Callable[[int], bytes] = os.urandom) -> bytes:
    """A new X25519 private key (clamped, as ``wg genkey`` prints it)."""
    key = bytearray(random_bytes(32))
    key[0] &= 248
    key[31] = (key[31] & 127) | 64
    return bytes(key)


def public_key(private_key: bytes, *, crypto: CryptoBackend | None = None) -> bytes:
    """The X25519 public key of ``private_key`` (``wg pubkey``)."""
    return (crypto or default_backend()).x25519(private_key).public_bytes()


def _dh(private: X25519Key, public: bytes) -> bytes | None:
    """X25519, or ``None`` for a public key of small order (an all-zero result)."""
    return private.exchange(public)


def _mix_ephemeral(chaining_key: bytes, hash_: bytes, ephemeral: bytes) -> tuple[bytes, bytes]:
    """The chaining key and hash after an ephemeral public key (whitepaper 5.4.2, 5.4.3)."""
    (chaining_key,) = _kdf(chaining_key, ephemeral, 1)
    return chaining_key, _hash(hash_, ephemeral)


def _mix_response(
    chaining_key: bytes, hash_: bytes, ephemeral: bytes, ee: bytes, se: bytes, preshared_key: bytes
) -> tuple[bytes, bytes, bytes]:
    """The chaining key, hash and key of a response (whitepaper 5.4.3).

    Both sides compute them alike: from the initiation's chaining key and
    hash, the responder's ephemeral public key, the ephemeral-ephemeral and
    static-ephemeral DH results and the preshared key.
    """
    chaining_key, hash_ = _mix_ephemeral(chaining_key, hash_, ephemeral)
    (chaining_key,) = _kdf(chaining_key, ee, 1)
    (chaining_key,) = _kdf(chaining_key, se, 1)
    chaining_key, tau, key = _kdf(chaining_key, preshared_key, 3)
    return chaining_key, _hash(hash_, tau), key


# -- events ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WireGuardEvent:
    """Something that happened to a peer, from :meth:`WireGuardDevice.take_events`."""

    public_key: bytes

    @property
    def peer(self) -> str:
        """The peer's public key in base64, as ``wg show`` prints it."""
        return key_to_text(self.public_key)


@dataclass(frozen=True, slots=True)
class HandshakeCompleted(WireGuardEvent):
    """New session keys with the peer; ``initiator`` says whether this device asked."""

    initiator: bool
    endpoint: Endpoint | None


@dataclass(frozen=True, slots=True)
class HandshakeFailed(WireGuardEvent):
    """No answer to :data:`REKEY_ATTEMPT_TIME` of handshake attempts; waiting packets dropped."""


@dataclass(frozen=True, slots=True)
class HandshakeExpired(WireGuardEvent):
    """The current keys passed :data:`REJECT_AFTER_TIME` with no new handshake: nothing flows."""


@dataclass(frozen=True, slots=True)
class EndpointChanged(WireGuardEvent):
    """The peer roamed: its authenticated packets now come from ``new``."""

    old: Endpoint | None
    new: Endpoint


# -- configuration and routing ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timers:
    """The protocol's timer constants; tests shorten them (a real peer uses the defaults)."""

    rekey_after_time: float = REKEY_AFTER_TIME
    reject_after_time: float = REJECT_AFTER_TIME
    rekey_attempt_time: float = REKEY_ATTEMPT_TIME
    rekey_timeout: float = REKEY_TIMEOUT
    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    rekey_after_messages: int = REKEY_AFTER_MESSAGES
    reject_after_messages: int = REJECT_AFTER_MESSAGES


_Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


class AllowedIps:
    """Longest-prefix match from IP prefixes to peers (a peer's AllowedIPs, all peers together).

    One table per family, keyed by prefix length then by the masked address
    as an integer; a lookup tries the lengths present, longest first.  A
    prefix given twice belongs to the last peer given it, as ``wg set`` does.
    """

    def __init__(self) -> None:
        self._tables: dict[int, dict[int, dict[int, WireGuardPeer]]] = {4: {}, 6: {}}
        self._lengths: dict[int, list[int]] = {4: [], 6: []}
        # Every packet sent and received is looked up, nearly always for
        # the same few addresses: their answers, forgotten on any change.
        self._cache: dict[bytes, WireGuardPeer | None] = {}

    def insert(self, network: _Network, peer: WireGuardPeer) -> None:
        self._cache.clear()
        table = self._tables[network.version].setdefault(network.prefixlen, {})
        table[int(network.network_address)] = peer
        self._lengths[network.version] = sorted(self._tables[network.version], reverse=True)

    def remove_peer(self, peer: WireGuardPeer) -> None:
        self._cache.clear()
        for version, tables in self._tables.items():
            for length in list(tables):
                table = tables[length]
                for key in [k for k, v in table.items() if v is peer]:
                    del table[key]
                if not table:
                    del tables[length]
            self._lengths[version] = sorted(tables, reverse=True)

    def lookup(self, address: bytes) -> WireGuardPeer | None:
        """The peer for a 4- or 16-byte address, or ``None``."""
        cache = self._cache
        try:
            return cache[address]
        except (KeyError, TypeError):  # TypeError: a bytearray, not hashable
            pass
        if len(cache) >= _MAX_CACHED_ROUTES:
            cache.clear()
        peer = cache[bytes(address)] = self._match(address)
        return peer

    def _match(self, address: bytes) -> WireGuardPeer | None:
        version = 4 if len(address) == 4 else 6
        bits = 32 if version == 4 else 128
        value = int.from_bytes(address, "big")
        tables = self._tables[version]
        for length in self._lengths[version]:
            masked = value & (((1 << length) - 1) << (bits - length)) if length else 0
            peer = tables[length].get(masked)
            if peer is not None:
                return peer
        return None


def _destination(packet: bytes) -> bytes | None:
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        return packet[16:20]
    if len(packet) >= 40 and packet[0] >> 4 == 6:
        return packet[24:40]
    return None


def _source_and_length(packet: bytes) -> tuple[bytes, int] | None:
    """An IP packet's source address and total length, or ``None`` if it is not one."""
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        length = _IPV4_LENGTH.unpack_from(packet, 2)[0]
        if length < 20 or length > len(packet):
            return None
        return packet[12:16], length
    if len(packet) >= 40 and packet[0] >> 4 == 6:
        length = 40 + int.from_bytes(packet[4:6], "big")
        if length > len(packet):
            return None
        return packet[8:24], length
    return None


# -- sessions --------------------------------------------------------------------


class _ReplayWindow:
    """Which counters arrived: the highest, and a bit set of the :data:`REPLAY_WINDOW` below it."""

    __slots__ = ("bits", "highest")

    def __init__(self) -> None:
        self.highest = -1
        # Bit i set: counter (highest - i) arrived.
        self.bits = 0

    def check(self, counter: int) -> bool:
        """Whether ``counter`` may be new (before decryption: no state changes)."""
        if counter > self.highest:
            return True
        behind = self.highest - counter
        return behind < REPLAY_WINDOW and not (self.bits >> behind) & 1

    def accept(self, counter: int) -> bool:
        """Record an authenticated ``counter``; False if it was seen or is too old."""
        if counter > self.highest:
            shift = counter - self.highest
            self.bits = ((self.bits << shift) | 1) & _REPLAY_MASK
            self.highest = counter
            return True
        behind = self.highest - counter
        if behind >= REPLAY_WINDOW or (self.bits >> behind) & 1:
            return False
        self.bits |= 1 << behind
        return True


class _Session:
    """One pair of transport keys (a "keypair" in the reference implementations)."""

    __slots__ = (
        "created",
        "initiator",
        "local_index",
        "receive_cipher",
        "remote_index",
        "replay",
        "send_cipher",
        "send_counter",
    )

    def __init__(
        self,
        aead: Callable[[bytes], Aead],
        send_key: bytes,
        receive_key: bytes,
        local_index: int,
        remote_index: int,
        created: float,
        initiator: bool,
    ) -> None:
        # One cipher object per key, made once: the transport path calls it directly.
        self.send_cipher = aead(send_key)
        self.receive_cipher = aead(receive_key)
        self.send_counter = 0
        self.replay = _ReplayWindow()
        self.local_index = local_index
        self.remote_index = remote_index
        self.created = created
        self.initiator = initiator


@dataclass
class _Handshake:
    """A handshake in progress: the Noise state between two messages."""

    initiator: bool
    local_index: int
    chaining_key: bytes
    hash: bytes
    ephemeral: X25519Key | None = None
    remote_ephemeral: bytes = b""
    remote_index: int = 0


@dataclass(eq=False)
class WireGuardPeer:
    """One peer of a :class:`WireGuardDevice` (made by :meth:`WireGuardDevice.add_peer`).

    Its configuration (``endpoint``, ``persistent_keepalive``) may change at
    any time; the rest is state the device keeps, readable for ``wg show``
    style displays: :attr:`rx_bytes`, :attr:`tx_bytes` (datagram bytes),
    :attr:`last_handshake` (the ``now`` of the latest completed handshake).
    """

    public_key: bytes
    preshared_key: bytes = _ZERO_KEY
    endpoint: Endpoint | None = None
    allowed_ips: list[_Network] = field(default_factory=list)
    #: Seconds between keepalives sent even when idle (``PersistentKeepalive``), or 0.
    persistent_keepalive: float = 0.0
    rx_bytes: int = 0
    tx_bytes: int = 0
    last_handshake: float | None = None

    # State, not configuration.
    _static_static: bytes | None = field(default=None, repr=False)
    _mac1_key: bytes = field(default=b"", repr=False)
    _cookie_key: bytes = field(default=b"", repr=False)
    _handshake: _Handshake | None = field(default=None, repr=False)
    _current: _Session | None = field(default=None, repr=False)
    _previous: _Session | None = field(default=None, repr=False)
    _next: _Session | None = field(default=None, repr=False)
    _staged: deque[bytes] = field(default_factory=deque, repr=False)
    _greatest_timestamp: bytes = field(default=bytes(12), repr=False)
    _last_initiation_received: float | None = field(default=None, repr=False)
    _last_initiation_sent: float | None = field(default=None, repr=False)
    _attempts_started: float | None = field(default=None, repr=False)
    _retransmit_at: float | None = field(default=None, repr=False)
    _keepalive_at: float | None = field(default=None, repr=False)
    _new_handshake_at: float | None = field(default=None, repr=False)
    _persistent_at: float | None = field(default=None, repr=False)
    _zero_keys_at: float | None = field(default=None, repr=False)
    _expired_reported: bool = field(default=True, repr=False)
    _cookie: bytes | None = field(default=None, repr=False)
    _cookie_time: float = field(default=0.0, repr=False)
    _last_mac1: bytes | None = field(default=None, repr=False)

    @property
    def has_session(self) -> bool:
        """Whether current transport keys exist (they may be too old to use)."""
        return self._current is not None

    def _deadlines(self, reject_after_time: float) -> Iterable[float | None]:
        yield self._retransmit_at
        yield self._keepalive_at
        yield self._new_handshake_at
        yield self._persistent_at
        yield self._zero_keys_at
        if self._current is not None and not self._expired_reported:
            yield self._current.created + reject_after_time


# -- the device ------------------------------------------------------------------


class WireGuardDevice:
    """A WireGuard interface without I/O (see the module documentation).

    ``private_key`` is 32 raw bytes.  ``timers`` shortens the protocol's
    timers for tests.  ``under_load`` forces (True) or forbids (False) the
    cookie mechanism; ``None`` judges by the rate of handshake messages.
    ``crypto`` is where X25519 and ChaCha20-Poly1305 come from
    (:func:`default_backend` unless given: ``cryptography`` when it imports,
    else tlslite-ng's pure Python).  ``mtu`` is the tunnel interface's: padding
    stops there, so a full-sized packet's datagram is no larger than it must
    be (``None``: always pad to 16 bytes).
    """

    def __init__(
        self,
        private_key: bytes,
        *,
        timers: Timers | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        wall_clock: Callable[[], float] = time.time,
        under_load: bool | None = None,
        max_staged_packets: int = DEFAULT_MAX_STAGED_PACKETS,
        crypto: CryptoBackend | None = None,
        mtu: int | None = None,
    ) -> None:
        if len(private_key) != 32:
            raise ValueError("a WireGuard private key is 32 bytes")
        self.crypto = crypto = crypto or default_backend()
        self._private = crypto.x25519(private_key)
        self.public_key = self._private.public_bytes()
        self.timers = timers if timers is not None else Timers()
        self._random_bytes = random_bytes
        self._wall_clock = wall_clock
        self.under_load = under_load
        self.max_staged_packets = max_staged_packets
        # Largest padded plaintext (inf: no cap); a packet already longer is not cut.
        self._pad_limit: float = float("inf") if mtu is None else mtu
        self._peers: dict[bytes, WireGuardPeer] = {}
        self._routes = AllowedIps()
        self._indices: dict[int, tuple[WireGuardPeer, _Handshake | _Session]] = {}
        # The responder's side of the cookie mechanism (whitepaper 5.4.7).
        self._mac1_key = _hash(LABEL_MAC1, self.public_key)
        self._cookie_key = _hash(LABEL_COOKIE, self.public_key)
        self._cookie_secret = b""
        self._cookie_secret_time = -COOKIE_REFRESH_TIME
        self._handshake_times: deque[float] = deque()
        self._datagrams: list[tuple[bytes | memoryview, Endpoint]] = []
        #: True: the transport datagrams of a run may be memoryviews into one
        #: buffer, written in place where the cipher has ``encrypt_into``.
        #: For a sender that only hands them to the socket: a view is not
        #: hashable and does not concatenate.
        self.datagram_views = False
        self._packets: list[tuple[bytes, WireGuardPeer]] = []
        self._events: list[WireGuardEvent] = []
        #: Datagrams and packets dropped, by reason.
        self.dropped: Counter[str] = Counter()
        # The initiation template is the same for every peer until the
        # public keys differ: HASH(HASH(CONSTRUCTION) || IDENTIFIER).
        self._initial_chaining_key = _hash(CONSTRUCTION)
        self._initial_hash = _hash(self._initial_chaining_key, IDENTIFIER)

    # -- configuration ------------------------------------------------------

    @property
    def peers(self) -> list[WireGuardPeer]:
        return list(self._peers.values())

    def add_peer(
        self,
        public_key: bytes,
        *,
        preshared_key: bytes | None = None,
        endpoint: Endpoint | None = None,
        allowed_ips: Iterable[str | _Network] = (),
        persistent_keepalive: float = 0.0,
    ) -> WireGuardPeer:
        """Add (or replace) the peer with ``public_key``; its AllowedIPs take those prefixes."""
        if len(public_key) != 32:
            raise ValueError("a WireGuard public key is 32 bytes")
        if preshared_key is not None and len(preshared_key) != 32:
            raise ValueError("a WireGuard preshared key is 32 bytes")
        if public_key in self._peers:
            self.remove_peer(public_key)
        networks = [
            n if not isinstance(n, str) else ipaddress.ip_network(n, strict=False)
            for n in allowed_ips
        ]
        peer = WireGuardPeer(
            public_key=public_key,
            preshared_key=preshared_key or _ZERO_KEY,
            endpoint=endpoint,
            allowed_ips=networks,
            persistent_keepalive=persistent_keepalive,
        )
        peer._static_static = _dh(self._private, public_key)
        peer._mac1_key = _hash(LABEL_MAC1, public_key)
        peer._cookie_key = _hash(LABEL_COOKIE, public_key)
        self._peers[public_key] = peer
        for network in networks:
            self._routes.insert(network, peer)
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        peer = self._peers.pop(public_key, None)
        if peer is None:
            return
        self._routes.remove_peer(peer)
        self._erase(peer)

    def peer(self, public_key: bytes) -> WireGuardPeer | None:
        return self._peers.get(public_key)

    def route(self, destination: bytes) -> WireGuardPeer | None:
        """The peer whose AllowedIPs hold ``destination`` (4 or 16 bytes) most specifically."""
        return self._routes.lookup(destination)

    # -- outputs ------------------------------------------------------------

    def take_datagrams(self) -> list[tuple[bytes | memoryview, Endpoint]]:
        """UDP payloads to send, with their destinations, oldest first.

        Bytes, or memoryviews where :attr:`datagram_views` allows them.
        """
        out, self._datagrams = self._datagrams, []
        return out

    def take_packets(self) -> list[tuple[bytes, WireGuardPeer]]:
        """Decrypted IP packets (padding removed) and the peer each came from."""
        out, self._packets = self._packets, []
        return out

    def take_events(self) -> list[WireGuardEvent]:
        out, self._events = self._events, []
        return out

    # -- sending --------------------------------------------------------------

    def send_packet(self, packet: bytes, now: float) -> None:
        """Encrypt an IP packet to the peer its destination routes to (staged for a handshake)."""
        destination = _destination(packet)
        if destination is None:
            self.dropped["not an IP packet"] += 1
            return
        peer = self._routes.lookup(destination)
        if peer is None:
            self.dropped["no peer for destination"] += 1
            return
        self.send_to_peer(peer, packet, now)

    def send_packets(self, packets: Iterable[bytes], now: float) -> None:
        """:meth:`send_packet` for each of ``packets`` in turn, the per-packet work shared.

        A burst from one connection goes to one peer under one key: the
        route, the key's checks and the timers are settled once per run of
        packets with the same destination, and only the counter, padding and
        AEAD are done per packet.  The datagrams are the ones
        :meth:`send_packet` would give, except that a rekey a run makes due
        starts its handshake after the run rather than amid it.
        """
        run: list[bytes] = []
        run_destination: bytes | None = None
        for packet in packets:
            destination = _destination(packet)
            if destination is None:
                self.dropped["not an IP packet"] += 1
                continue
            if destination != run_destination:
                if run:
                    self._send_run(run_destination, run, now)
                    run = []
                run_destination = destination
            run.append(packet)
        if run:
            self._send_run(run_destination, run, now)

    def _send_run(self, destination: bytes | None, packets: list[bytes], now: float) -> None:
        """Encrypt ``packets``, all to ``destination``, to its peer."""
        assert destination is not None
        peer = self._routes.lookup(destination)
        if peer is None:
            self.dropped["no peer for destination"] += len(packets)
            return
        session = peer._current
        endpoint = peer.endpoint
        timers = self.timers
        if (
            endpoint is None
            or session is None
            or now - session.created >= timers.reject_after_time
            or session.send_counter + len(packets) > timers.reject_after_messages
        ):
            # Staged for a handshake, dropped, or a key that runs out
            # within the run: the general path, packet by packet.
            for packet in packets:
                self.send_to_peer(peer, packet, now)
            return
        counter = session.send_counter
        remote = session.remote_index
        seal = session.send_cipher.encrypt
        pack_header = _TRANSPORT_HEADER.pack
        pack_nonce = _NONCE.pack
        limit = self._pad_limit
        out = self._datagrams
        sent = 0
        seal_into = getattr(session.send_cipher, "encrypt_into", None)
        if seal_into is not None and self.datagram_views:
            counter, sent = self._seal_run_in_place(seal_into, remote, counter, packets, endpoint)
            packets = []
        for packet in packets:
            length = len(packet)
            padding = -length % 16
            if padding:
                if length + padding > limit:
                    padding = max(0, int(limit) - length)
                if padding:
                    packet = packet + _PADDING[padding]
            datagram = pack_header(MESSAGE_TRANSPORT, remote, counter) + seal(
                pack_nonce(counter), packet, None
            )
            counter += 1
            sent += len(datagram)
            out.append((datagram, endpoint))
        session.send_counter = counter
        peer.tx_bytes += sent
        # As _send_transport: every packet here is data, not a keepalive.
        peer._keepalive_at = None
        if peer._new_handshake_at is None:
            peer._new_handshake_at = now + timers.keepalive_timeout + timers.rekey_timeout
        self._touch_persistent(peer, now)
        if counter >= timers.rekey_after_messages or (
            session.initiator and now - session.created >= timers.rekey_after_time
        ):
            self._initiate(peer, now, retry=False)

    def _seal_run_in_place(
        self,
        seal_into: Callable[[bytes, bytes, bytes | None, memoryview], object],
        remote: int,
        counter: int,
        packets: list[bytes],
        endpoint: Endpoint,
    ) -> tuple[int, int]:
        """:meth:`_send_run`'s datagrams as views into one buffer; the next counter, bytes sent.

        Each datagram's header is packed and its ciphertext and tag written
        in place: one allocation for the run instead of a ciphertext and a
        datagram per packet, and no copy of the ciphertext after the header.
        """
        # Room for each packet's header, tag and at most 15 bytes of padding.
        buffer = bytearray(sum(map(len, packets)) + 47 * len(packets))
        view = memoryview(buffer)
        pack_header_into = _TRANSPORT_HEADER.pack_into
        pack_nonce = _NONCE.pack
        limit = self._pad_limit
        append = self._datagrams.append
        start = 0
        for packet in packets:
            length = len(packet)
            padding = -length % 16
            if padding:
                if length + padding > limit:
                    padding = max(0, int(limit) - length)
                if padding:
                    packet = packet + _PADDING[padding]
                    length += padding
            end = start + length + 32
            pack_header_into(buffer, start, MESSAGE_TRANSPORT, remote, counter)
            seal_into(pack_nonce(counter), packet, None, view[start + 16 : end])
            counter += 1
            append((view[start:end], endpoint))
            start = end
        return counter, start

    def send_to_peer(self, peer: WireGuardPeer, packet: bytes, now: float) -> None:
        """Encrypt ``packet`` to ``peer`` whatever its destination (``b""`` sends a keepalive)."""
        if peer.endpoint is None:
            self.dropped["peer has no endpoint"] += 1
            return
        session = peer._current
        if session is not None and self._usable(session, now):
            self._send_transport(peer, session, packet, now)
            timers = self.timers
            if session.send_counter >= timers.rekey_after_messages or (
                session.initiator and now - session.created >= timers.rekey_after_time
            ):
                self._initiate(peer, now, retry=False)
            return
        if packet:
            if len(peer._staged) >= self.max_staged_packets:
                peer._staged.popleft()
                self.dropped["staged packet displaced"] += 1
            peer._staged.append(packet)
        self._initiate(peer, now, retry=False)

    def _usable(self, session: _Session, now: float) -> bool:
        return (
            now - session.created < self.timers.reject_after_time
            and session.send_counter < self.timers.reject_after_messages
        )

    def _send_transport(
        self, peer: WireGuardPeer, session: _Session, packet: bytes, now: float
    ) -> None:
        assert peer.endpoint is not None
        counter = session.send_counter
        session.send_counter = counter + 1
        length = len(packet)
        padding = -length % 16
        if padding and length + padding > self._pad_limit:
            padding = max(0, int(self._pad_limit) - length)
        if padding:
            packet = packet + _PADDING[padding]
        datagram = _TRANSPORT_HEADER.pack(
            MESSAGE_TRANSPORT, session.remote_index, counter
        ) + session.send_cipher.encrypt(_NONCE.pack(counter), packet, None)
        self._emit(peer, datagram)
        # Section 6.5: anything sent answers the peer's data; data (not a
        # keepalive) expects an answer within KEEPALIVE + REKEY_TIMEOUT.
        peer._keepalive_at = None
        if packet and peer._new_handshake_at is None:
            peer._new_handshake_at = now + self.timers.keepalive_timeout + self.timers.rekey_timeout
        self._touch_persistent(peer, now)

    def _emit(self, peer: WireGuardPeer, datagram: bytes) -> None:
        assert peer.endpoint is not None
        peer.tx_bytes += len(datagram)
        self._datagrams.append((datagram, peer.endpoint))

    def _touch_persistent(self, peer: WireGuardPeer, now: float) -> None:
        if peer.persistent_keepalive:
            peer._persistent_at = now + peer.persistent_keepalive

    def _send_staged(self, peer: WireGuardPeer, now: float) -> None:
        session = peer._current
        if session is None:
            return
        while peer._staged:
            self._send_transport(peer, session, peer._staged.popleft(), now)

    # -- handshake: initiator ------------------------------------------------------

    def _new_index(self, peer: WireGuardPeer, state: _Handshake | _Session) -> int:
        while True:
            index = int.from_bytes(self._random_bytes(4), "little")
            if index not in self._indices:
                self._indices[index] = (peer, state)
                return index

    def _forget_index(self, state: _Handshake | _Session | None) -> None:
        if state is not None:
            entry = self._indices.get(state.local_index)
            if entry is not None and entry[1] is state:
                del self._indices[state.local_index]

    def _initiate(self, peer: WireGuardPeer, now: float, *, retry: bool) -> None:
        """Send a handshake initiation, unless one was sent less than REKEY_TIMEOUT ago."""
        if peer.endpoint is None:
            return
        if not retry:
            if peer._handshake is not None and peer._handshake.initiator:
                return  # in progress: its retries continue
            last = peer._last_initiation_sent
            if last is not None and now - last < self.timers.rekey_timeout:
                return
            peer._attempts_started = now
        if peer._static_static is None:
            self.dropped["peer public key of small order"] += 1
            return
        if len(self._indices) >= DEFAULT_MAX_INDICES:
            self.dropped["too many indices"] += 1
            return
        self._forget_index(peer._handshake)
        ephemeral = self.crypto.x25519(self._random_bytes(32))
        ephemeral_public = ephemeral.public_bytes()
        chaining_key, hash_ = _mix_ephemeral(
            self._initial_chaining_key, _hash(self._initial_hash, peer.public_key), ephemeral_public
        )
        shared = _dh(ephemeral, peer.public_key)
        assert shared is not None  # the static-static DH above succeeded for this key
        chaining_key, key = _kdf(chaining_key, shared, 2)
        encrypted_static = _aead_encrypt(self.crypto, key, 0, self.public_key, hash_)
        hash_ = _hash(hash_, encrypted_static)
        chaining_key, key = _kdf(chaining_key, peer._static_static, 2)
        encrypted_timestamp = _aead_encrypt(self.crypto, key, 0, tai64n(self._wall_clock()), hash_)
        hash_ = _hash(hash_, encrypted_timestamp)
        handshake = _Handshake(
            initiator=True,
            local_index=0,
            chaining_key=chaining_key,
            hash=hash_,
            ephemeral=ephemeral,
        )
        handshake.local_index = self._new_index(peer, handshake)
        peer._handshake = handshake
        body = (
            struct.pack("<II", MESSAGE_INITIATION, handshake.local_index)
            + ephemeral_public
            + encrypted_static
            + encrypted_timestamp
        )
        self._emit(peer, self._add_macs(peer, body, now))
        peer._last_initiation_sent = now
        jitter = int.from_bytes(self._random_bytes(2), "little") / 65536 * REKEY_TIMEOUT_JITTER
        peer._retransmit_at = now + self.timers.rekey_timeout + jitter
        self._touch_persistent(peer, now)

    def _add_macs(self, peer: WireGuardPeer, body: bytes, now: float) -> bytes:
        mac1 = _mac(peer._mac1_key, body)
        peer._last_mac1 = mac1
        cookie = peer._cookie
        if cookie is not None and now - peer._cookie_time < COOKIE_REFRESH_TIME:
            mac2 = _mac(cookie, body + mac1)
        else:
            mac2 = bytes(16)
        return body + mac1 + mac2

    # -- receiving --------------------------------------------------------------------

    def receive_datagram(self, data: bytes | memoryview, source: Endpoint, now: float) -> None:
        """Take one UDP payload from ``source``; drops what does not authenticate (never raises).

        ``data`` may be a view into a receive buffer: nothing of it is kept
        after the call.
        """
        if len(data) < 4:
            self.dropped["short datagram"] += 1
            return
        # The type and the three reserved zero bytes as one little-endian word.
        word = _MESSAGE_WORD.unpack_from(data)[0]
        if word == MESSAGE_TRANSPORT:
            self._receive_transport(data, source, now)
            return
        if word > 0xFF:
            self.dropped["bad reserved bytes"] += 1
            return
        kind = word
        data = bytes(data)
        if kind == MESSAGE_INITIATION:
            self._receive_initiation(data, source, now)
        elif kind == MESSAGE_RESPONSE:
            self._receive_response(data, source, now)
        elif kind == MESSAGE_COOKIE_REPLY:
            self._receive_cookie_reply(data, now)
        else:
            self.dropped["unknown message type"] += 1

    def receive_datagrams(
        self, datagrams: Iterable[tuple[bytes | memoryview, Endpoint]], now: float
    ) -> None:
        """:meth:`receive_datagram` for each of ``datagrams`` in turn, the per-datagram work shared.

        A burst of transport messages under a peer's current key from its
        known endpoint shares the key's lookup and checks; per datagram
        remain the replay window, the AEAD and the inner packet's source.
        Anything else (handshake messages, a new key, a roamed endpoint, a
        key due for renewal) goes through the general path, with the same
        results as :meth:`receive_datagram`.  Nothing of ``data`` is kept
        after the call.
        """
        timers = self.timers
        reject_after_messages = timers.reject_after_messages
        packets = self._packets
        unpack_word = _MESSAGE_WORD.unpack_from
        unpack_index = _INDEX_AND_COUNTER.unpack_from
        pack_nonce = _NONCE.pack
        invalid_tag = self.crypto.invalid_tag
        lookup = self._routes.lookup
        run_index = -1
        # The run's key, when the fast path holds for it, else None.
        session: _Session | None = None
        peer: WireGuardPeer | None = None
        endpoint: Endpoint | None = None
        allowed_source = b""
        received = 0
        for data, source in datagrams:
            if (
                len(data) < TRANSPORT_HEADER_SIZE + TAG_SIZE
                or unpack_word(data)[0] != MESSAGE_TRANSPORT
            ):
                self.receive_datagram(data, source, now)
                run_index = -1
                continue
            receiver_index, counter = unpack_index(data, 4)
            if receiver_index != run_index:
                if peer is not None:
                    peer.rx_bytes += received
                    received = 0
                run_index = receiver_index
                session = peer = None
                allowed_source = b""
                entry = self._indices.get(receiver_index)
                if entry is not None:
                    candidate, state = entry
                    if (
                        isinstance(state, _Session)
                        and state is candidate._current
                        and now - state.created < timers.reject_after_time
                        and not (
                            state.initiator
                            and now - state.created
                            >= timers.reject_after_time
                            - timers.keepalive_timeout
                            - timers.rekey_timeout
                        )
                    ):
                        session, peer, endpoint = state, candidate, candidate.endpoint
            if session is None or peer is None or (source is not endpoint and source != endpoint):
                if peer is not None:
                    peer.rx_bytes += received
                    received = 0
                self._receive_transport(data, source, now)
                run_index = -1
                peer = None
                continue
            replay = session.replay
            ahead = counter > replay.highest
            if counter >= reject_after_messages or not (ahead or replay.check(counter)):
                self.dropped["replayed counter"] += 1
                continue
            try:
                plaintext = session.receive_cipher.decrypt(
                    pack_nonce(counter), data[TRANSPORT_HEADER_SIZE:], None
                )
            except invalid_tag:
                self.dropped["bad transport authentication"] += 1
                continue
            if ahead:
                replay.bits = ((replay.bits << (counter - replay.highest)) | 1) & _REPLAY_MASK
                replay.highest = counter
            elif not replay.accept(counter):
                self.dropped["replayed counter"] += 1
                continue
            received += len(data)
            # Any authenticated packet answers the data we sent.
            peer._new_handshake_at = None
            if not plaintext:
                continue  # a keepalive
            if peer._keepalive_at is None:
                peer._keepalive_at = now + timers.keepalive_timeout
            parsed = _source_and_length(plaintext)
            if parsed is None:
                self.dropped["not an IP packet inside"] += 1
                continue
            source_address, length = parsed
            if source_address != allowed_source:
                if lookup(source_address) is not peer:
                    self.dropped["source not in allowed IPs"] += 1
                    continue
                allowed_source = source_address
            packets.append((plaintext[:length], peer))
        if peer is not None:
            peer.rx_bytes += received

    def _is_under_load(self, now: float) -> bool:
        times = self._handshake_times
        times.append(now)
        while times and now - times[0] > 1.0:
            times.popleft()
        if self.under_load is not None:
            return self.under_load
        return len(times) > DEFAULT_UNDER_LOAD_HANDSHAKES

    def _source_bytes(self, source: Endpoint) -> bytes:
        try:
            address = ipaddress.ip_address(source[0]).packed
        except ValueError:
            address = str(source[0]).encode("utf-8", "replace")
        return address + int(source[1] & 0xFFFF).to_bytes(2, "big")

    def _check_macs(self, data: bytes, source: Endpoint, now: float) -> bool:
        """mac1 always; under load mac2 too, answering a missing one with a cookie reply."""
        mac1_start = len(data) - 32
        mac1 = data[mac1_start : mac1_start + 16]
        if not hmac.compare_digest(_mac(self._mac1_key, data[:mac1_start]), mac1):
            self.dropped["bad mac1"] += 1
            return False
        if not self._is_under_load(now):
            return True
        if now - self._cookie_secret_time >= COOKIE_REFRESH_TIME:
            self._cookie_secret = self._random_bytes(32)
            self._cookie_secret_time = now
        cookie = _mac(self._cookie_secret, self._source_bytes(source))
        if hmac.compare_digest(_mac(cookie, data[: mac1_start + 16]), data[mac1_start + 16 :]):
            return True
        nonce = self._random_bytes(24)
        sender = data[4:8]
        reply = (
            struct.pack("<I", MESSAGE_COOKIE_REPLY)
            + sender
            + nonce
            + xchacha20poly1305_encrypt(self._cookie_key, nonce, cookie, mac1, crypto=self.crypto)
        )
        self._datagrams.append((reply, source))
        self.dropped["under load: cookie sent"] += 1
        return False

    def _receive_initiation(self, data: bytes, source: Endpoint, now: float) -> None:
        if len(data) != INITIATION_SIZE:
            self.dropped["bad initiation size"] += 1
            return
        if not self._check_macs(data, source, now):
            return
        (sender_index,) = struct.unpack_from("<I", data, 4)
        ephemeral_public = data[8:40]
        encrypted_static = data[40:88]
        encrypted_timestamp = data[88:116]
        chaining_key, hash_ = _mix_ephemeral(
            self._initial_chaining_key, _hash(self._initial_hash, self.public_key), ephemeral_public
        )
        shared = _dh(self._private, ephemeral_public)
        if shared is None:
            self.dropped["bad initiation"] += 1
            return
        chaining_key, key = _kdf(chaining_key, shared, 2)
        static = _aead_decrypt(self.crypto, key, 0, encrypted_static, hash_)
        if static is None:
            self.dropped["bad initiation"] += 1
            return
        hash_ = _hash(hash_, encrypted_static)
        peer = self._peers.get(static)
        if peer is None:
            self.dropped["unknown peer"] += 1
            return
        if peer._static_static is None:
            self.dropped["bad initiation"] += 1
            return
        chaining_key, key = _kdf(chaining_key, peer._static_static, 2)
        timestamp = _aead_decrypt(self.crypto, key, 0, encrypted_timestamp, hash_)
        if timestamp is None:
            self.dropped["bad initiation"] += 1
            return
        hash_ = _hash(hash_, encrypted_timestamp)
        if timestamp <= peer._greatest_timestamp:
            self.dropped["replayed initiation"] += 1
            return
        last = peer._last_initiation_received
        if last is not None and now - last < 1 / INITIATIONS_PER_SECOND:
            self.dropped["initiation flood"] += 1
            return
        peer._greatest_timestamp = timestamp
        peer._last_initiation_received = now
        peer.rx_bytes += len(data)
        if len(self._indices) >= DEFAULT_MAX_INDICES:
            self.dropped["too many indices"] += 1
            return

        # The response (whitepaper 5.4.3).
        self._forget_index(peer._handshake)
        ephemeral = self.crypto.x25519(self._random_bytes(32))
        response_ephemeral = ephemeral.public_bytes()
        ee = _dh(ephemeral, ephemeral_public)
        se = _dh(ephemeral, static)
        if ee is None or se is None:
            self.dropped["bad initiation"] += 1
            return
        chaining_key, hash_, key = _mix_response(
            chaining_key, hash_, response_ephemeral, ee, se, peer.preshared_key
        )
        encrypted_nothing = _aead_encrypt(self.crypto, key, 0, b"", hash_)
        receive_key, send_key = _kdf(chaining_key, b"", 2)
        peer._handshake = None
        session = _Session(
            self.crypto.aead, send_key, receive_key, 0, sender_index, now, initiator=False
        )
        session.local_index = self._new_index(peer, session)
        self._set_endpoint(peer, source)
        body = (
            struct.pack("<III", MESSAGE_RESPONSE, session.local_index, sender_index)
            + response_ephemeral
            + encrypted_nothing
        )
        self._emit(peer, self._add_macs(peer, body, now))
        # Counts as a handshake sent: no initiation of ours for REKEY_TIMEOUT,
        # packets wait for the initiator to confirm these keys instead.
        peer._last_initiation_sent = now
        # The responder's keys wait as "next" until the initiator uses them;
        # the older previous keys go, the current ones stay usable meanwhile.
        self._forget_index(peer._next)
        self._forget_index(peer._previous)
        peer._previous = None
        peer._next = session
        self._handshake_done(peer, now, initiator=False)
        self._touch_persistent(peer, now)

    def _receive_response(self, data: bytes, source: Endpoint, now: float) -> None:
        if len(data) != RESPONSE_SIZE:
            self.dropped["bad response size"] += 1
            return
        if not self._check_macs(data, source, now):
            return
        sender_index, receiver_index = struct.unpack_from("<II", data, 4)
        entry = self._indices.get(receiver_index)
        if entry is None or not isinstance(entry[1], _Handshake) or not entry[1].initiator:
            self.dropped["response to no handshake"] += 1
            return
        peer, handshake = entry
        assert isinstance(handshake, _Handshake)
        assert handshake.ephemeral is not None
        response_ephemeral = data[12:44]
        encrypted_nothing = data[44:60]
        ee = _dh(handshake.ephemeral, response_ephemeral)
        se = _dh(self._private, response_ephemeral)
        if ee is None or se is None:
            self.dropped["bad response"] += 1
            return
        chaining_key, hash_, key = _mix_response(
            handshake.chaining_key, handshake.hash, response_ephemeral, ee, se, peer.preshared_key
        )
        if _aead_decrypt(self.crypto, key, 0, encrypted_nothing, hash_) is None:
            self.dropped["bad response"] += 1
            return
        send_key, receive_key = _kdf(chaining_key, b"", 2)
        del self._indices[receiver_index]
        peer.rx_bytes += len(data)
        peer._handshake = None
        session = _Session(
            self.crypto.aead, send_key, receive_key, 0, sender_index, now, initiator=True
        )
        # The index that named the handshake now names its session.
        session.local_index = receiver_index
        self._indices[receiver_index] = (peer, session)
        # The initiator uses new keys at once.  Unconfirmed "next" keys (we
        # answered the peer's initiation meanwhile) are newer than the
        # current ones, so they become the fallback and the current go.
        if peer._next is not None:
            self._forget_index(peer._current)
            fallback: _Session | None = peer._next
        else:
            fallback = peer._current
        self._forget_index(peer._previous)
        peer._previous = fallback
        peer._next = None
        peer._current = session
        self._set_endpoint(peer, source)
        self._handshake_done(peer, now, initiator=True)
        self._received_authenticated(peer, now)
        if peer._staged:
            self._send_staged(peer, now)
        else:
            # Confirms the keys to the responder, which cannot send before.
            self._send_transport(peer, session, b"", now)

    def _handshake_done(self, peer: WireGuardPeer, now: float, *, initiator: bool) -> None:
        peer.last_handshake = now
        peer._retransmit_at = None
        peer._attempts_started = None
        peer._zero_keys_at = now + 3 * self.timers.reject_after_time
        peer._expired_reported = False
        self._events.append(HandshakeCompleted(peer.public_key, initiator, peer.endpoint))

    def _receive_cookie_reply(self, data: bytes, now: float) -> None:
        if len(data) != COOKIE_REPLY_SIZE:
            self.dropped["bad cookie reply size"] += 1
            return
        (receiver_index,) = struct.unpack_from("<I", data, 4)
        entry = self._indices.get(receiver_index)
        if entry is None:
            self.dropped["cookie reply to no handshake"] += 1
            return
        peer = entry[0]
        if peer._last_mac1 is None:
            self.dropped["cookie reply to no handshake"] += 1
            return
        cookie = xchacha20poly1305_decrypt(
            peer._cookie_key, data[8:32], data[32:64], peer._last_mac1, crypto=self.crypto
        )
        if cookie is None:
            self.dropped["bad cookie reply"] += 1
            return
        peer._cookie = cookie
        peer._cookie_time = now
        # One cookie per message: a second reply to the same mac1 is stale.
        peer._last_mac1 = None

    def _receive_transport(self, data: bytes | memoryview, source: Endpoint, now: float) -> None:
        if len(data) < TRANSPORT_HEADER_SIZE + TAG_SIZE:
            self.dropped["short transport message"] += 1
            return
        receiver_index, counter = _INDEX_AND_COUNTER.unpack_from(data, 4)
        entry = self._indices.get(receiver_index)
        if entry is None or not isinstance(entry[1], _Session):
            self.dropped["unknown receiver index"] += 1
            return
        peer, session = entry
        assert isinstance(session, _Session)
        timers = self.timers
        if now - session.created >= timers.reject_after_time:
            self.dropped["expired keys"] += 1
            return
        replay = session.replay
        # A counter above the highest seen is new: the common case, checked
        # and recorded here without the window's methods.
        ahead = counter > replay.highest
        if counter >= timers.reject_after_messages or not (ahead or replay.check(counter)):
            self.dropped["replayed counter"] += 1
            return
        try:
            plaintext = session.receive_cipher.decrypt(
                _NONCE.pack(counter), memoryview(data)[TRANSPORT_HEADER_SIZE:], None
            )
        except self.crypto.invalid_tag:
            self.dropped["bad transport authentication"] += 1
            return
        if ahead:
            replay.bits = ((replay.bits << (counter - replay.highest)) | 1) & _REPLAY_MASK
            replay.highest = counter
        elif not replay.accept(counter):
            self.dropped["replayed counter"] += 1
            return
        peer.rx_bytes += len(data)
        if session is peer._next:
            # The initiator used the new keys: they are confirmed.
            self._forget_index(peer._previous)
            peer._previous = peer._current
            peer._current = session
            peer._next = None
            self._send_staged(peer, now)
        if peer.endpoint != source:
            self._set_endpoint(peer, source)
        # Any authenticated packet answers the data we sent.
        peer._new_handshake_at = None
        if (
            session is peer._current
            and session.initiator
            and now - session.created
            >= timers.reject_after_time - timers.keepalive_timeout - timers.rekey_timeout
        ):
            self._initiate(peer, now, retry=False)
        if not plaintext:
            return  # a keepalive
        if peer._keepalive_at is None:
            peer._keepalive_at = now + timers.keepalive_timeout
        parsed = _source_and_length(plaintext)
        if parsed is None:
            self.dropped["not an IP packet inside"] += 1
            return
        source_address, length = parsed
        if self._routes.lookup(source_address) is not peer:
            self.dropped["source not in allowed IPs"] += 1
            return
        self._packets.append((plaintext[:length], peer))

    def _received_authenticated(self, peer: WireGuardPeer, now: float) -> None:
        # Any authenticated packet answers the data we sent.
        peer._new_handshake_at = None

    def _set_endpoint(self, peer: WireGuardPeer, source: Endpoint) -> None:
        if peer.endpoint != source:
            old = peer.endpoint
            peer.endpoint = source
            self._events.append(EndpointChanged(peer.public_key, old, source))

    # -- timers -----------------------------------------------------------------

    def deadline(self) -> float | None:
        """When :meth:`poll` next has work, or ``None`` when nothing is scheduled."""
        soonest: float | None = None
        for peer in self._peers.values():
            if peer.persistent_keepalive and peer._persistent_at is None and peer.endpoint:
                return float("-inf")
            for value in peer._deadlines(self.timers.reject_after_time):
                if value is not None and (soonest is None or value < soonest):
                    soonest = value
        return soonest

    def poll(self, now: float) -> None:
        """Run the timers that are due (retries, keepalives, rekeys, expiry)."""
        timers = self.timers
        for peer in list(self._peers.values()):
            if peer._retransmit_at is not None and now >= peer._retransmit_at:
                started = peer._attempts_started if peer._attempts_started is not None else now
                if now - started >= timers.rekey_attempt_time or peer._handshake is None:
                    self._forget_index(peer._handshake)
                    peer._handshake = None
                    peer._retransmit_at = None
                    peer._attempts_started = None
                    peer._last_initiation_sent = None
                    dropped = len(peer._staged)
                    peer._staged.clear()
                    if dropped:
                        self.dropped["handshake failed: staged packets"] += dropped
                    self._events.append(HandshakeFailed(peer.public_key))
                else:
                    # Set again by a successful retry; if the retry cannot
                    # even be built (no indices left), try again later
                    # rather than at once, forever.
                    peer._retransmit_at = now + timers.rekey_timeout
                    self._initiate(peer, now, retry=True)
            if peer._keepalive_at is not None and now >= peer._keepalive_at:
                peer._keepalive_at = None
                self.send_to_peer(peer, b"", now)
            if peer._new_handshake_at is not None and now >= peer._new_handshake_at:
                peer._new_handshake_at = None
                self._initiate(peer, now, retry=False)
            if (
                peer.persistent_keepalive
                and peer.endpoint is not None
                and (peer._persistent_at is None or now >= peer._persistent_at)
            ):
                self._touch_persistent(peer, now)
                self.send_to_peer(peer, b"", now)
            current = peer._current
            if (
                current is not None
                and not peer._expired_reported
                and now - current.created >= timers.reject_after_time
            ):
                peer._expired_reported = True
                self._events.append(HandshakeExpired(peer.public_key))
            if peer._zero_keys_at is not None and now >= peer._zero_keys_at:
                self._erase(peer)

    def _erase(self, peer: WireGuardPeer) -> None:
        """Forget every key of ``peer`` (after 3 x REJECT_AFTER_TIME, or on removal)."""
        for state in (peer._handshake, peer._current, peer._previous, peer._next):
            self._forget_index(state)
        peer._handshake = peer._current = peer._previous = peer._next = None
        peer._zero_keys_at = None
        peer._retransmit_at = None
        peer._keepalive_at = None
        peer._new_handshake_at = None
        peer._expired_reported = True
        peer._staged.clear()
