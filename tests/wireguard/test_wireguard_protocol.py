"""The WireGuard core (netshim.protocols.wireguard) back to back, with known answers and fuzzing.

Two devices exchange datagrams through :class:`Wire` at times the test
chooses, so every timer of the whitepaper's section 6 runs in microseconds.
The handshake's bytes are checked against wireguard-go in
``test_wireguard_peer.py``; here the primitives meet published vectors.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netshim.protocols import wireguard as wg
from netshim.protocols.wireguard import (
    EndpointChanged,
    HandshakeCompleted,
    HandshakeExpired,
    HandshakeFailed,
    Timers,
    WireGuardDevice,
)

A_ENDPOINT = ("192.0.2.1", 51820)
B_ENDPOINT = ("192.0.2.2", 51820)


def _random_bytes(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return rng.randbytes


def ipv4_packet(source: str, destination: str, payload: bytes = b"x" * 20) -> bytes:
    """An IPv4 packet (protocol 253, for experiments) good enough for routing checks."""
    import ipaddress

    total = 20 + len(payload)
    header = bytes([0x45, 0]) + total.to_bytes(2, "big") + bytes(4) + bytes([64, 253, 0, 0])
    return (
        header
        + ipaddress.IPv4Address(source).packed
        + ipaddress.IPv4Address(destination).packed
        + payload
    )


class Wire:
    """Two devices, A (10.0.0.1) and B (10.0.0.2), and the datagrams between them."""

    def __init__(
        self,
        timers: Timers | None = None,
        *,
        under_load_b: bool | None = None,
        preshared: bytes | None = None,
        preshared_b: bytes | None = None,
        mtu: int | None = None,
    ) -> None:
        self.now = 1000.0
        self.clock = 1_700_000_000.0
        a_key = wg.generate_private_key(_random_bytes(1))
        b_key = wg.generate_private_key(_random_bytes(2))
        self.a = WireGuardDevice(
            a_key, timers=timers, random_bytes=_random_bytes(3), wall_clock=self.wall, mtu=mtu
        )
        self.b = WireGuardDevice(
            b_key,
            timers=timers,
            random_bytes=_random_bytes(4),
            wall_clock=self.wall,
            under_load=under_load_b,
            mtu=mtu,
        )
        self.a_peer = self.a.add_peer(
            self.b.public_key,
            endpoint=B_ENDPOINT,
            allowed_ips=["10.0.0.2/32"],
            preshared_key=preshared,
        )
        self.b_peer = self.b.add_peer(
            self.a.public_key,
            allowed_ips=["10.0.0.1/32"],
            preshared_key=preshared if preshared_b is None else preshared_b,
        )
        self.a_source = A_ENDPOINT
        self.captured: list[bytes] = []

    def wall(self) -> float:
        # Strictly increasing, as TAI64N timestamps must be across handshakes.
        self.clock += 0.05
        return self.clock

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.clock += seconds
        self.a.poll(self.now)
        self.b.poll(self.now)

    def pump(self, rounds: int = 10, *, drop: bool = False) -> int:
        """Deliver datagrams both ways until quiet; returns how many moved."""
        moved = 0
        for _ in range(rounds):
            from_a = self.a.take_datagrams()
            from_b = self.b.take_datagrams()
            if not from_a and not from_b:
                break
            for data, destination in from_a:
                assert destination == B_ENDPOINT
                self.captured.append(data)
                if not drop:
                    self.b.receive_datagram(data, self.a_source, self.now)
            for data, destination in from_b:
                assert destination == self.a_source
                if not drop:
                    self.a.receive_datagram(data, B_ENDPOINT, self.now)
            moved += len(from_a) + len(from_b)
        return moved

    def handshake(self) -> None:
        self.a.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2"), self.now)
        self.pump()
        assert [p for p, _ in self.b.take_packets()] == [ipv4_packet("10.0.0.1", "10.0.0.2")]


# -- primitives against published vectors --------------------------------------------


def test_hchacha20_vector() -> None:
    # draft-irtf-cfrg-xchacha-03, section 2.2.1.
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    assert wg.hchacha20(key, nonce).hex() == (
        "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
    )


def test_xchacha20poly1305_vector() -> None:
    # draft-irtf-cfrg-xchacha-03, appendix A.3.1.
    plaintext = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip "
        b"for the future, sunscreen would be it."
    )
    associated = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    key = bytes(range(0x80, 0xA0))
    nonce = bytes(range(0x40, 0x58))
    sealed = wg.xchacha20poly1305_encrypt(key, nonce, plaintext, associated)
    assert sealed.hex() == (
        "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
        "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
        "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
        "21f9664c97637da9768812f615c68b13b52e"
        "c0875924c1c7987947deafd8780acf49"
    )
    assert wg.xchacha20poly1305_decrypt(key, nonce, sealed, associated) == plaintext
    assert wg.xchacha20poly1305_decrypt(key, nonce, sealed, b"other") is None


def test_keys_round_trip_base64() -> None:
    private = wg.generate_private_key(_random_bytes(9))
    assert wg.key_from_text(wg.key_to_text(private)) == private
    assert private[0] & 7 == 0
    assert private[31] & 0xC0 == 0x40
    with pytest.raises(ValueError, match="32 bytes"):
        wg.key_from_text("AAAA")
    with pytest.raises(ValueError, match="base64"):
        wg.key_from_text("not base64!")


def test_tai64n_is_ordered_and_whitened() -> None:
    assert wg.tai64n(0.0) == (2**62 + 10).to_bytes(8, "big") + bytes(4)
    assert wg.tai64n(1.5) > wg.tai64n(1.0)
    # Nanoseconds rounded down to 2**24 ns.
    assert int.from_bytes(wg.tai64n(1.123456789)[8:], "big") % (1 << 24) == 0


def test_replay_window() -> None:
    window = wg._ReplayWindow()
    assert window.accept(0)
    assert not window.accept(0)
    assert window.accept(5)
    assert window.accept(3)
    assert not window.accept(3)
    assert window.accept(5000)
    # 5000 - 2048 = 2952: the oldest counter still remembered is 2953.
    assert not window.check(2952)
    assert window.accept(2953)
    assert not window.accept(2953)


def test_allowed_ips_longest_prefix() -> None:
    device = WireGuardDevice(wg.generate_private_key(_random_bytes(5)))
    keys = [wg.public_key(wg.generate_private_key(_random_bytes(10 + i))) for i in range(3)]
    wide = device.add_peer(keys[0], allowed_ips=["0.0.0.0/0", "::/0"])
    narrow = device.add_peer(keys[1], allowed_ips=["10.1.0.0/16"])
    host = device.add_peer(keys[2], allowed_ips=["10.1.2.3/32", "fd00::/64"])
    import ipaddress

    def route(text: str) -> object:
        return device.route(ipaddress.ip_address(text).packed)

    assert route("8.8.8.8") is wide
    assert route("10.1.9.9") is narrow
    assert route("10.1.2.3") is host
    assert route("fd00::1") is host
    assert route("fd01::1") is wide
    device.remove_peer(keys[2])
    assert route("10.1.2.3") is narrow
    assert route("fd00::1") is wide


# -- two devices back to back ----------------------------------------------------------


def test_handshake_and_data_both_ways() -> None:
    wire = Wire()
    wire.handshake()
    events_a = wire.a.take_events()
    events_b = wire.b.take_events()
    assert [type(e) for e in events_a] == [HandshakeCompleted]
    assert isinstance(events_a[0], HandshakeCompleted)
    assert events_a[0].initiator
    # B learnt A's endpoint from the initiation, then confirmed keys from data.
    assert [type(e) for e in events_b] == [EndpointChanged, HandshakeCompleted]
    assert wire.b_peer.endpoint == A_ENDPOINT
    back = ipv4_packet("10.0.0.2", "10.0.0.1", b"reply")
    wire.b.send_packet(back, wire.now)
    wire.pump()
    assert [p for p, _ in wire.a.take_packets()] == [back]
    assert wire.a.dropped == {}
    assert wire.b.dropped == {}
    assert wire.a_peer.tx_bytes == wire.b_peer.rx_bytes > 0


def test_preshared_key_mismatch_never_completes() -> None:
    wire = Wire(preshared=bytes(range(32)), preshared_b=bytes(32))
    wire.a.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2"), wire.now)
    wire.pump()
    assert wire.a.dropped["bad response"] == 1
    assert not wire.a_peer.has_session


def test_same_preshared_key_completes() -> None:
    wire = Wire(preshared=bytes(range(32)))
    wire.handshake()


def test_responder_waits_for_confirmation_before_sending() -> None:
    wire = Wire()
    wire.a.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2"), wire.now)
    initiation = wire.a.take_datagrams()
    wire.b.receive_datagram(initiation[0][0], A_ENDPOINT, wire.now)
    response = wire.b.take_datagrams()
    # B has only "next" keys: its own packet waits for A's first data.
    wire.b.send_packet(ipv4_packet("10.0.0.2", "10.0.0.1"), wire.now)
    assert wire.b.take_datagrams() == []
    wire.a.receive_datagram(response[0][0], B_ENDPOINT, wire.now)
    wire.pump()
    assert len(wire.a.take_packets()) == 1


def test_unknown_peer_and_wrong_key_dropped() -> None:
    wire = Wire()
    stranger = WireGuardDevice(wg.generate_private_key(_random_bytes(77)))
    stranger.add_peer(wire.b.public_key, endpoint=B_ENDPOINT, allowed_ips=["10.0.0.0/24"])
    stranger.send_packet(ipv4_packet("10.0.0.9", "10.0.0.2"), 0.0)
    ((initiation, _),) = stranger.take_datagrams()
    wire.b.receive_datagram(initiation, ("192.0.2.9", 1), wire.now)
    assert wire.b.dropped["unknown peer"] == 1
    # Addressed to a key B does not hold: mac1 already fails.
    wrong = WireGuardDevice(wg.generate_private_key(_random_bytes(78)))
    wrong.add_peer(
        wg.public_key(wg.generate_private_key(_random_bytes(79))),
        endpoint=B_ENDPOINT,
        allowed_ips=["0.0.0.0/0"],
    )
    wrong.send_packet(ipv4_packet("10.0.0.9", "10.0.0.2"), 0.0)
    ((initiation, _),) = wrong.take_datagrams()
    wire.b.receive_datagram(initiation, ("192.0.2.9", 1), wire.now)
    assert wire.b.dropped["bad mac1"] == 1
    assert wire.b.take_datagrams() == []


def test_replayed_transport_and_initiation_dropped() -> None:
    wire = Wire()
    wire.handshake()
    initiation = wire.captured[0]
    data = wire.captured[1]
    wire.b.receive_datagram(data, A_ENDPOINT, wire.now)
    assert wire.b.dropped["replayed counter"] == 1
    wire.advance(1.0)
    wire.b.receive_datagram(initiation, A_ENDPOINT, wire.now)
    assert wire.b.dropped["replayed initiation"] == 1
    assert wire.b.take_packets() == []


def test_out_of_order_within_window_accepted() -> None:
    wire = Wire()
    wire.handshake()
    packets = [ipv4_packet("10.0.0.1", "10.0.0.2", bytes([i]) * 30) for i in range(5)]
    for packet in packets:
        wire.a.send_packet(packet, wire.now)
    datagrams = wire.a.take_datagrams()
    for data, _ in reversed(datagrams):
        wire.b.receive_datagram(data, A_ENDPOINT, wire.now)
    assert [p for p, _ in wire.b.take_packets()] == packets[::-1]


def test_source_outside_allowed_ips_dropped() -> None:
    wire = Wire()
    wire.handshake()
    # A may send anything it routes to B; B checks the source.
    wire.a.send_to_peer(wire.a_peer, ipv4_packet("10.9.9.9", "10.0.0.2"), wire.now)
    wire.pump()
    assert wire.b.take_packets() == []
    assert wire.b.dropped["source not in allowed IPs"] == 1


def test_no_route_dropped() -> None:
    wire = Wire()
    wire.a.send_packet(ipv4_packet("10.0.0.1", "10.0.0.77"), wire.now)
    wire.a.send_packet(b"\x00junk", wire.now)
    assert wire.a.dropped == {"no peer for destination": 1, "not an IP packet": 1}


def test_keepalive_after_silence() -> None:
    wire = Wire()
    wire.handshake()
    wire.advance(wg.KEEPALIVE_TIMEOUT + 0.1)
    ((keepalive, _),) = wire.b.take_datagrams()
    assert len(keepalive) == wg.TRANSPORT_HEADER_SIZE + wg.TAG_SIZE


def test_rekey_after_time_keeps_old_keys_for_packets_in_flight() -> None:
    timers = Timers(rekey_after_time=5.0, reject_after_time=20.0, keepalive_timeout=2.0)
    wire = Wire(timers)
    wire.handshake()
    wire.advance(6.0)
    wire.pump()
    wire.a.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2", b"old"), wire.now)
    sent = wire.a.take_datagrams()
    # A used the old keys, then started a new handshake.
    assert [len(d) for d, _ in sent][1] == wg.INITIATION_SIZE
    late_old = sent[0][0]
    wire.b.receive_datagram(sent[1][0], A_ENDPOINT, wire.now)
    wire.pump()
    assert [type(e) for e in wire.a.take_events()][-1] is HandshakeCompleted
    # The packet under the old keys still arrives after the new handshake.
    wire.b.receive_datagram(late_old, A_ENDPOINT, wire.now)
    assert [p[20:] for p, _ in wire.b.take_packets()] == [b"old"]
    wire.a.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2", b"new"), wire.now)
    wire.pump()
    assert [p[20:] for p, _ in wire.b.take_packets()] == [b"new"]


def test_send_packets_gives_what_send_packet_gives() -> None:
    # The batched path settles route, key and timers once per run of one
    # destination; its datagrams, drops and counters must be send_packet's,
    # before the handshake (staged), after it, and across runs and drops.
    to_b = [ipv4_packet("10.0.0.1", "10.0.0.2", bytes([size % 251]) * size) for size in (1, 300)]
    nowhere = ipv4_packet("10.0.0.1", "10.9.9.9")
    burst = [*to_b, b"\x00not ip", nowhere, *to_b, to_b[0]]
    one_by_one, batched = Wire(mtu=1420), Wire(mtu=1420)
    for packet in to_b:
        one_by_one.a.send_packet(packet, one_by_one.now)
    batched.a.send_packets(to_b, batched.now)
    initiation = batched.a.take_datagrams()
    assert one_by_one.a.take_datagrams() == initiation
    for wire in (one_by_one, batched):
        for data, _ in initiation:
            wire.b.receive_datagram(data, A_ENDPOINT, wire.now)
        wire.pump()
        assert [p for p, _ in wire.b.take_packets()] == to_b
    for packet in burst:
        one_by_one.a.send_packet(packet, one_by_one.now)
    batched.a.send_packets(burst, batched.now)
    sent = batched.a.take_datagrams()
    assert one_by_one.a.take_datagrams() == sent
    assert len(sent) == 5
    assert (
        one_by_one.a.dropped
        == batched.a.dropped
        == {
            "not an IP packet": 1,
            "no peer for destination": 1,
        }
    )
    assert one_by_one.a_peer.tx_bytes == batched.a_peer.tx_bytes
    for data, _ in sent:
        batched.b.receive_datagram(data, A_ENDPOINT, batched.now)
    assert [p for p, _ in batched.b.take_packets()] == [*to_b, *to_b, to_b[0]]


def test_receive_datagrams_gives_what_receive_datagram_gives() -> None:
    # The batched path shares the key's checks across a run; whatever breaks
    # the run (a handshake message, the first data under new keys, a replay,
    # a forgery, a roamed endpoint, a keepalive, a foreign inner source, an
    # unknown index, a runt) must come out as receive_datagram has it.
    one_by_one, batched = Wire(), Wire()
    for wire in (one_by_one, batched):
        wire.a.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2", b"first"), wire.now)
    initiation = [(data, A_ENDPOINT) for data, _ in batched.a.take_datagrams()]
    one_by_one.a.take_datagrams()
    one_by_one.b.receive_datagram(*initiation[0], one_by_one.now)
    batched.b.receive_datagrams(initiation, batched.now)
    response = batched.b.take_datagrams()
    assert one_by_one.b.take_datagrams() == response
    sender = batched.a  # one sender's bytes for both receivers
    sender.receive_datagram(response[0][0], B_ENDPOINT, batched.now)
    sender.send_packets(
        [ipv4_packet("10.0.0.1", "10.0.0.2", bytes([n]) * 90) for n in range(3)], batched.now
    )
    sender.send_packet(ipv4_packet("10.0.0.9", "10.0.0.2"), batched.now)
    sender.send_to_peer(batched.a_peer, b"", batched.now)
    sender.send_packets(
        [ipv4_packet("10.0.0.1", "10.0.0.2", bytes([n]) * 40) for n in range(2)], batched.now
    )
    staged, *data, foreign, keepalive, late1, late2 = [d for d, _ in sender.take_datagrams()]
    forged = bytearray(data[1])
    forged[-1] ^= 1
    unknown = bytearray(data[2])
    unknown[4] ^= 0xFF
    roamed = ("192.0.2.77", 4000)
    burst = [
        (staged, A_ENDPOINT),  # confirms B's new keys
        (data[0], A_ENDPOINT),
        (data[0], A_ENDPOINT),  # replayed
        (bytes(forged), A_ENDPOINT),
        (data[1], A_ENDPOINT),
        (b"\x04\x00", A_ENDPOINT),
        (bytes(unknown), A_ENDPOINT),
        (foreign, A_ENDPOINT),
        (keepalive, A_ENDPOINT),
        (data[2], roamed),
        (late1, roamed),
        (initiation[0][0], A_ENDPOINT),  # replayed initiation
        (late2, roamed),
    ]
    for data_, source in burst:
        one_by_one.b.receive_datagram(data_, source, one_by_one.now)
    batched.b.receive_datagrams([(memoryview(d), s) for d, s in burst], batched.now)
    got = [(p, peer.public_key) for p, peer in batched.b.take_packets()]
    assert [(p, peer.public_key) for p, peer in one_by_one.b.take_packets()] == got
    assert len(got) == 6
    assert one_by_one.b.dropped == batched.b.dropped
    assert set(batched.b.dropped) == {
        "replayed counter",
        "bad transport authentication",
        "short datagram",
        "unknown receiver index",
        "source not in allowed IPs",
        "replayed initiation",
    }
    assert one_by_one.b.take_events() == batched.b.take_events()
    assert one_by_one.b.take_datagrams() == batched.b.take_datagrams()
    for left, right in ((one_by_one.b_peer, batched.b_peer),):
        assert left.endpoint == right.endpoint == roamed
        assert left.rx_bytes == right.rx_bytes
        assert left._keepalive_at == right._keepalive_at
        assert left._new_handshake_at == right._new_handshake_at


def test_send_packets_starts_a_due_rekey_after_its_run() -> None:
    wire = Wire(Timers(rekey_after_messages=4))
    wire.handshake()
    wire.advance(wg.REKEY_TIMEOUT + 0.1)
    wire.a.send_packets([ipv4_packet("10.0.0.1", "10.0.0.2")] * 5, wire.now)
    kinds = [d[0] for d, _ in wire.a.take_datagrams()]
    assert kinds == [wg.MESSAGE_TRANSPORT] * 5 + [wg.MESSAGE_INITIATION]


@pytest.mark.parametrize("batched", [False, True])
def test_padding_stops_at_the_mtu(batched: bool) -> None:
    # Sizes: a full-MTU packet is not padded (its datagram would not fit a
    # 1500-byte IPv6 path otherwise), one just under pads up to the MTU only,
    # a small one to 16; without an MTU, to 16 always.
    sizes = (1420, 1410, 100)
    for mtu, expected in ((1420, [1452, 1452, 144]), (None, [1456, 1456, 144])):
        wire = Wire(mtu=mtu)
        wire.handshake()
        packets = [ipv4_packet("10.0.0.1", "10.0.0.2", bytes(size - 20)) for size in sizes]
        if batched:
            wire.a.send_packets(packets, wire.now)
        else:
            for packet in packets:
                wire.a.send_packet(packet, wire.now)
        datagrams = wire.a.take_datagrams()
        assert [len(data) for data, _ in datagrams] == expected
        for data, _ in datagrams:
            wire.b.receive_datagram(data, A_ENDPOINT, wire.now)
        assert [p for p, _ in wire.b.take_packets()] == packets


class _SealOnly:
    """A send cipher without ``encrypt_into``, as older ``cryptography`` releases have."""

    def __init__(self, cipher: object) -> None:
        self._cipher = cipher

    def encrypt(self, nonce: bytes, data: bytes, associated: bytes | None) -> bytes:
        return self._cipher.encrypt(nonce, data, associated)  # type: ignore[attr-defined, no-any-return]


@pytest.mark.parametrize("mtu", [1420, None])
@pytest.mark.parametrize("cipher", ["as given", "without encrypt_into"])
def test_datagram_views_hold_the_bytes_the_plain_path_gives(mtu: int | None, cipher: str) -> None:
    # Random sizes around the MTU and the 16-byte padding steps: the views
    # written in place (or, without encrypt_into, the bytes path) must hold
    # exactly the datagrams of a device that makes bytes, and decrypt.
    rng = random.Random(mtu or 0)
    sizes = [20, 21, 35, 36, 1400, 1404, 1405, 1419, 1420, 1500] + [
        rng.randrange(20, 1500) for _ in range(40)
    ]
    packets = [ipv4_packet("10.0.0.1", "10.0.0.2", rng.randbytes(size - 20)) for size in sizes]
    plain, views = Wire(mtu=mtu), Wire(mtu=mtu)
    views.a.datagram_views = True
    for wire in (plain, views):
        wire.handshake()
        session = wire.a_peer._current
        assert session is not None
        if cipher == "without encrypt_into":
            session.send_cipher = _SealOnly(session.send_cipher)  # type: ignore[assignment]
        wire.a.send_packets(packets, wire.now)
    expected = plain.a.take_datagrams()
    got = views.a.take_datagrams()
    assert all(isinstance(data, bytes) for data, _ in expected)
    if cipher == "as given" and hasattr(views.a_peer._current.send_cipher, "encrypt_into"):  # type: ignore[union-attr]
        assert all(isinstance(data, memoryview) for data, _ in got)
    assert [(bytes(data), where) for data, where in got] == expected
    assert views.a_peer.tx_bytes == plain.a_peer.tx_bytes
    for data, _ in got:
        views.b.receive_datagram(data, A_ENDPOINT, views.now)
    assert [p for p, _ in views.b.take_packets()] == packets


def test_rekey_after_messages() -> None:
    wire = Wire(Timers(rekey_after_messages=4))
    wire.handshake()
    # Initiations are at least REKEY_TIMEOUT apart.
    wire.advance(wg.REKEY_TIMEOUT + 0.1)
    for _ in range(5):
        wire.a.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2"), wire.now)
    kinds = [d[0] for d, _ in wire.a.take_datagrams()]
    assert wg.MESSAGE_INITIATION in kinds


def test_keys_expire_and_handshake_expired_event() -> None:
    timers = Timers(rekey_after_time=5.0, reject_after_time=9.0)
    wire = Wire(timers)
    wire.handshake()
    wire.a.take_events()
    data_before = wire.captured[1]
    wire.advance(9.5)
    assert HandshakeExpired(wire.b.public_key) in wire.a.take_events()
    wire.b.receive_datagram(
        data_before[:8] + (99).to_bytes(8, "little") + data_before[16:], A_ENDPOINT, wire.now
    )
    assert wire.b.dropped["expired keys"] == 1
    # After 3 x REJECT_AFTER_TIME every key is erased.
    wire.advance(20.0)
    assert not wire.a_peer.has_session


def test_handshake_retries_then_fails() -> None:
    wire = Wire(Timers(rekey_timeout=1.0, rekey_attempt_time=5.0))
    wire.a.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2"), wire.now)
    initiations = 0
    for _ in range(80):
        initiations += len(wire.a.take_datagrams())
        wire.advance(0.1)
    assert 4 <= initiations <= 6
    assert HandshakeFailed(wire.b.public_key) in wire.a.take_events()
    assert wire.a.dropped["handshake failed: staged packets"] == 1


def test_new_handshake_when_data_gets_no_answer() -> None:
    wire = Wire(Timers(keepalive_timeout=1.0, rekey_timeout=1.0))
    wire.handshake()
    wire.pump()
    wire.a.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2"), wire.now)
    wire.pump(drop=True)
    wire.advance(2.1)
    assert [d[0] for d, _ in wire.a.take_datagrams()] == [wg.MESSAGE_INITIATION]


def test_cookie_reply_under_load() -> None:
    wire = Wire(Timers(rekey_timeout=1.0), under_load_b=True)
    wire.a.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2"), wire.now)
    wire.pump()
    # B answered with a cookie, not a response; A keeps it for the retry.
    assert wire.b.dropped["under load: cookie sent"] == 1
    assert not wire.a_peer.has_session
    assert wire.a_peer._cookie is not None
    wire.advance(1.5)
    wire.pump()
    assert wire.a_peer.has_session
    assert [p for p, _ in wire.b.take_packets()] == [ipv4_packet("10.0.0.1", "10.0.0.2")]
    # A cookie from the wrong source is no good: roaming A needs a new one.
    assert wire.b.dropped["under load: cookie sent"] == 1


def test_roaming_endpoint_follows_authenticated_packets() -> None:
    wire = Wire()
    wire.handshake()
    wire.b.take_events()
    wire.a_source = ("198.51.100.7", 4000)
    wire.a.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2"), wire.now)
    wire.pump()
    assert wire.b_peer.endpoint == ("198.51.100.7", 4000)
    assert wire.b.take_events() == [
        EndpointChanged(wire.a.public_key, A_ENDPOINT, ("198.51.100.7", 4000))
    ]
    wire.b.send_packet(ipv4_packet("10.0.0.2", "10.0.0.1"), wire.now)
    ((_, destination),) = wire.b.take_datagrams()
    assert destination == ("198.51.100.7", 4000)
    # A forged packet from elsewhere does not move the endpoint.
    wire.b.receive_datagram(b"\x04\x00\x00\x00" + bytes(40), ("203.0.113.1", 1), wire.now)
    assert wire.b_peer.endpoint == ("198.51.100.7", 4000)


def test_persistent_keepalive_starts_a_handshake() -> None:
    wire = Wire()
    wire.a_peer.persistent_keepalive = 25.0
    assert wire.a.deadline() is not None
    wire.advance(0.0)
    wire.pump()
    assert wire.a_peer.has_session
    assert wire.a.deadline() is not None


# -- untrusted bytes -------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([0, 1, 2, 3, 4]))
def test_garbage_never_raises(data: bytes, kind: int) -> None:
    device = WireGuardDevice(wg.generate_private_key(_random_bytes(5)), under_load=None)
    device.add_peer(wg.public_key(wg.generate_private_key(_random_bytes(6))), endpoint=B_ENDPOINT)
    if kind:
        data = bytes([kind, 0, 0, 0]) + data
    device.receive_datagram(data, ("192.0.2.3", 9), 1.0)
    device.poll(2.0)
    assert sum(device.dropped.values()) >= 1


_WIRE = Wire()
_WIRE.handshake()
_VALID = list(_WIRE.captured)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_VALID), st.integers(0, 147), st.integers(1, 255), st.booleans())
def test_mutated_messages_never_raise(data: bytes, position: int, flip: int, load: bool) -> None:
    device = WireGuardDevice(
        wg.generate_private_key(_random_bytes(2)), random_bytes=_random_bytes(8), under_load=load
    )
    device.add_peer(_WIRE.a.public_key, allowed_ips=["10.0.0.1/32"])
    mutated = bytearray(data)
    mutated[position % len(mutated)] ^= flip
    device.receive_datagram(bytes(mutated), A_ENDPOINT, 1.0)
    assert device.take_packets() == []


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 200), st.integers(0, 255)),
        min_size=1,
        max_size=12,
    )
)
def test_mutated_bursts_batched_as_one_by_one(picks: list[tuple[int, int, int]]) -> None:
    # Transport messages of a live session, repeated, reordered and mutated
    # (flip 0 leaves one intact), through receive_datagrams and through
    # receive_datagram on twin devices: nothing raises, the results agree.
    one_by_one, batched = Wire(), Wire()
    for wire in (one_by_one, batched):
        wire.handshake()
        wire.a.send_packets(
            [ipv4_packet("10.0.0.1", "10.0.0.2", bytes([n]) * (20 + 30 * n)) for n in range(6)],
            wire.now,
        )
    sent = [data for data, _ in batched.a.take_datagrams()]
    burst = []
    for index, position, flip in picks:
        mutated = bytearray(sent[index])
        mutated[position % len(mutated)] ^= flip
        burst.append((bytes(mutated), A_ENDPOINT))
    for data, source in burst:
        one_by_one.b.receive_datagram(data, source, one_by_one.now)
    batched.b.receive_datagrams(burst, batched.now)
    assert [p for p, _ in one_by_one.b.take_packets()] == [p for p, _ in batched.b.take_packets()]
    assert one_by_one.b.dropped == batched.b.dropped
    assert one_by_one.b_peer.rx_bytes == batched.b_peer.rx_bytes
