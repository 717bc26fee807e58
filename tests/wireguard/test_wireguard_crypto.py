"""The WireGuard core's two crypto backends: published vectors, the same bytes, a real peer.

``cryptography`` (OpenSSL) and tlslite-ng (pure Python, for Pyodide) must be
interchangeable: each meets RFC 7748's X25519 and RFC 8439's
ChaCha20-Poly1305 vectors and the XChaCha draft's, two devices on either
backend put the very same datagrams on the wire for the same keys, ephemerals
and clock, and a WireGuardStack on the pure-Python backend talks to
wireguard-go.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Callable

import anyio
import pytest
from wireguard_peer import TUNNEL_SERVER, WireGuardPeerNamespace, client_stack

from netshim.protocols import wireguard as wg
from netshim.protocols._wireguard_crypto import PurePythonTagError
from netshim.protocols.wireguard import CryptoBackend, WireGuardDevice

BACKENDS = ("cryptography", "tlslite-ng")


@pytest.fixture(params=BACKENDS)
def crypto(request: pytest.FixtureRequest) -> CryptoBackend:
    return wg.crypto_backend(request.param)


def test_backends_are_what_they_say() -> None:
    assert wg.default_backend().name == "cryptography"  # installed here
    assert wg.crypto_backend("tlslite-ng").invalid_tag is PurePythonTagError
    with pytest.raises(ValueError, match="no WireGuard crypto backend 'openssl'"):
        wg.crypto_backend("openssl")


_WITHOUT = """
import sys
for name in sys.argv[1:]:
    sys.modules[name] = None  # as if not installed: importing it raises ImportError
from netshim.protocols import wireguard as wg
try:
    device = wg.WireGuardDevice(bytes(range(32)))
except ImportError as error:
    print("ImportError:", error)
else:
    print(device.crypto.name, wg.key_to_text(device.public_key))
"""


def _without(*modules: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-c", _WITHOUT, *modules], capture_output=True, text=True, check=True
    )
    return completed.stdout.strip()


def test_default_backend_without_cryptography() -> None:
    expected = wg.key_to_text(wg.public_key(bytes(range(32))))
    assert _without() == f"cryptography {expected}"
    # Where cryptography does not import (Pyodide offline): tlslite-ng, same key.
    assert _without("cryptography") == f"tlslite-ng {expected}"
    missing = _without("cryptography", "tlslite")
    assert missing.startswith("ImportError: WireGuard needs the cryptography package")
    assert "tlslite-ng" in missing


# -- published vectors -------------------------------------------------------------------


def test_x25519_rfc7748_vectors(crypto: CryptoBackend) -> None:
    # RFC 7748, section 5.2: the scalar's and the u-coordinate's unused bits
    # are ignored (clamped, masked).
    scalar = bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    point = bytes.fromhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    assert crypto.x25519(scalar).exchange(point) == bytes.fromhex(
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"
    )
    # Section 5.2, the iterated test after one iteration: k = u = 9.
    nine = bytes([9]) + bytes(31)
    assert crypto.x25519(nine).exchange(nine) == bytes.fromhex(
        "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"
    )
    # Section 6.1: Alice and Bob.
    alice = crypto.x25519(
        bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    bob = crypto.x25519(
        bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    )
    assert alice.public_bytes() == bytes.fromhex(
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )
    assert bob.public_bytes() == bytes.fromhex(
        "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    )
    shared = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert alice.exchange(bob.public_bytes()) == shared
    assert bob.exchange(alice.public_bytes()) == shared
    # A point of small order gives the all-zero secret, which WireGuard refuses.
    assert alice.exchange(bytes(32)) is None
    assert alice.exchange(bytes([1]) + bytes(31)) is None


RFC8439_PLAINTEXT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip "
    b"for the future, sunscreen would be it."
)


def test_chacha20poly1305_rfc8439_vector(crypto: CryptoBackend) -> None:
    # RFC 8439, section 2.8.2.
    key = bytes(range(0x80, 0xA0))
    nonce = bytes.fromhex("070000004041424344454647")
    associated = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    sealed = crypto.aead(key).encrypt(nonce, RFC8439_PLAINTEXT, associated)
    assert sealed.hex() == (
        "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
        "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
        "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
        "3ff4def08e4b7a9de576d26586cec64b6116"
        "1ae10b594f09e26a7e902ecbd0600691"
    )
    cipher = crypto.aead(key)
    assert cipher.decrypt(nonce, memoryview(sealed), associated) == RFC8439_PLAINTEXT
    tampered = bytearray(sealed)
    tampered[3] ^= 1
    with pytest.raises(crypto.invalid_tag):
        cipher.decrypt(nonce, bytes(tampered), associated)
    with pytest.raises(crypto.invalid_tag):
        cipher.decrypt(nonce, sealed, b"other")
    # No associated data (the transport path passes None): the same as empty.
    empty = cipher.encrypt(nonce, b"", None)
    assert len(empty) == 16
    assert empty == cipher.encrypt(nonce, b"", b"")
    assert cipher.decrypt(nonce, empty, None) == b""


def test_xchacha20poly1305_draft_vector(crypto: CryptoBackend) -> None:
    # draft-irtf-cfrg-xchacha-03, appendix A.3.1: HChaCha20 over either
    # backend's ChaCha20-Poly1305.
    associated = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    key = bytes(range(0x80, 0xA0))
    nonce = bytes(range(0x40, 0x58))
    sealed = wg.xchacha20poly1305_encrypt(key, nonce, RFC8439_PLAINTEXT, associated, crypto=crypto)
    assert sealed.hex() == (
        "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
        "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
        "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
        "21f9664c97637da9768812f615c68b13b52e"
        "c0875924c1c7987947deafd8780acf49"
    )
    opened = wg.xchacha20poly1305_decrypt(key, nonce, sealed, associated, crypto=crypto)
    assert opened == RFC8439_PLAINTEXT
    assert wg.xchacha20poly1305_decrypt(key, nonce, sealed, b"x", crypto=crypto) is None


# -- the same bytes on the wire ------------------------------------------------------------

A_ENDPOINT = ("192.0.2.1", 51820)
B_ENDPOINT = ("192.0.2.2", 51820)


def _seeded(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def _packet(source: str, destination: str, payload: bytes) -> bytes:
    """An IPv4 packet of protocol 253 (for experiments)."""
    import ipaddress

    total = 20 + len(payload)
    return (
        bytes([0x45, 0])
        + total.to_bytes(2, "big")
        + bytes(4)
        + bytes([64, 253, 0, 0])
        + ipaddress.IPv4Address(source).packed
        + ipaddress.IPv4Address(destination).packed
        + payload
    )


def _conversation(crypto_a: CryptoBackend, crypto_b: CryptoBackend) -> list[bytes]:
    """Every datagram of a scripted exchange between A and B, in order.

    B is under load, so A's first initiation earns a cookie reply (XChaCha20-
    Poly1305) and its retry carries mac2; then data both ways, a keepalive,
    and a rekey with a second handshake and data under the new keys.
    """
    clock = [1_700_000_000.0]

    def wall() -> float:
        clock[0] += 0.05
        return clock[0]

    a = WireGuardDevice(
        wg.generate_private_key(_seeded(1)),
        random_bytes=_seeded(3),
        wall_clock=wall,
        crypto=crypto_a,
    )
    b = WireGuardDevice(
        wg.generate_private_key(_seeded(2)),
        random_bytes=_seeded(4),
        wall_clock=wall,
        crypto=crypto_b,
        under_load=True,
    )
    a.add_peer(b.public_key, endpoint=B_ENDPOINT, allowed_ips=["10.0.0.2/32"])
    b.add_peer(a.public_key, allowed_ips=["10.0.0.1/32"], preshared_key=bytes(range(32)))
    a.peer(b.public_key).preshared_key = bytes(range(32))  # type: ignore[union-attr]
    wire: list[bytes] = []
    received: list[bytes] = []
    now = 10.0

    def pump() -> None:
        for _ in range(10):
            from_a, from_b = a.take_datagrams(), b.take_datagrams()
            if not from_a and not from_b:
                return
            for data, _ in from_a:
                wire.append(data)
                b.receive_datagram(data, A_ENDPOINT, now)
            for data, _ in from_b:
                wire.append(data)
                a.receive_datagram(data, B_ENDPOINT, now)
            received.extend(p for p, _ in a.take_packets() + b.take_packets())

    a.send_packet(_packet("10.0.0.1", "10.0.0.2", b"first"), now)
    pump()
    assert b.dropped["under load: cookie sent"] == 1
    now += 5.5  # past REKEY_TIMEOUT and its jitter: the retry, with mac2
    a.poll(now)
    b.poll(now)
    pump()
    assert a.peer(b.public_key).has_session  # type: ignore[union-attr]
    for number in range(3):
        a.send_packet(_packet("10.0.0.1", "10.0.0.2", b"to b %d" % number * 40), now)
        b.send_packet(_packet("10.0.0.2", "10.0.0.1", b"to a %d" % number), now)
        pump()
    now += 10.5  # B got data and sent none since: a keepalive
    a.poll(now)
    b.poll(now)
    pump()
    now += 121.0  # REKEY_AFTER_TIME: A's next packet starts a new handshake
    b.under_load = False
    a.send_packet(_packet("10.0.0.1", "10.0.0.2", b"after rekey"), now)
    pump()
    a.send_packet(_packet("10.0.0.1", "10.0.0.2", b"under new keys"), now)
    pump()
    assert len(received) == 9
    assert a.dropped == {}
    assert dict(b.dropped) == {"under load: cookie sent": 1}
    return wire


def test_both_backends_put_the_same_bytes_on_the_wire() -> None:
    openssl = wg.crypto_backend("cryptography")
    python = wg.crypto_backend("tlslite-ng")
    reference = _conversation(openssl, openssl)
    kinds = [data[0] for data in reference]
    # Initiation, cookie reply, initiation, response, then transport data.
    assert kinds[:4] == [1, 3, 1, 2]
    assert kinds.count(1) == 3
    assert kinds.count(2) == 2
    assert _conversation(python, python) == reference
    # Mixed: each side may run either backend.
    assert _conversation(openssl, python) == reference
    assert _conversation(python, openssl) == reference
    assert wg.public_key(bytes(range(32)), crypto=python) == wg.public_key(
        bytes(range(32)), crypto=openssl
    )


def test_pure_python_backend_drops_forgeries() -> None:
    python = wg.crypto_backend("tlslite-ng")
    a = WireGuardDevice(wg.generate_private_key(_seeded(1)), random_bytes=_seeded(3), crypto=python)
    b = WireGuardDevice(wg.generate_private_key(_seeded(2)), random_bytes=_seeded(4), crypto=python)
    a.add_peer(b.public_key, endpoint=B_ENDPOINT, allowed_ips=["10.0.0.2/32"])
    b.add_peer(a.public_key, allowed_ips=["10.0.0.1/32"])
    a.send_packet(_packet("10.0.0.1", "10.0.0.2", b"hello"), 1.0)
    ((initiation, _),) = a.take_datagrams()
    b.receive_datagram(initiation, A_ENDPOINT, 1.0)
    ((response, _),) = b.take_datagrams()
    a.receive_datagram(response, B_ENDPOINT, 1.0)
    ((data, _),) = a.take_datagrams()
    forged = bytearray(data)
    forged[-1] ^= 0x80
    b.receive_datagram(bytes(forged), A_ENDPOINT, 1.0)
    assert b.dropped["bad transport authentication"] == 1
    assert b.take_packets() == []
    b.receive_datagram(data, A_ENDPOINT, 1.0)
    assert [p for p, _ in b.take_packets()] == [_packet("10.0.0.1", "10.0.0.2", b"hello")]


# -- a real peer, on the pure-Python backend -----------------------------------------------

_ECHO_SERVER = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
conn, _ = server.accept()
data = b""
while chunk := conn.recv(65536):
    data += chunk
conn.sendall(data[::-1])
conn.close()
"""


@pytest.mark.peer("wireguard-go")
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_pure_python_stack_with_wireguard_go(
    wireguard_go: WireGuardPeerNamespace, anyio_backend: str
) -> None:
    python = wg.crypto_backend("tlslite-ng")
    stack = client_stack(wireguard_go, crypto=python)
    assert stack.device.crypto is python
    payload = random.Random(7).randbytes(48 * 1024)
    port = str(random.randrange(20000, 30000))
    async with (
        stack,
        await anyio.open_process(
            wireguard_go.exec("python3", "-c", _ECHO_SERVER, TUNNEL_SERVER, port)
        ) as server,
    ):
        try:
            assert server.stdout is not None
            assert b"ready" in await server.stdout.receive()
            with anyio.fail_after(120):
                await stack.handshake()
                assert wg.key_to_text(stack.device.public_key) in wireguard_go.latest_handshakes()
                stream = await stack.connect_tcp(TUNNEL_SERVER, int(port))
                await stream.send(payload)
                await stream.send_eof()
                answer = b""
                while True:
                    try:
                        answer += await stream.receive()
                    except anyio.EndOfStream:
                        break
                await stream.aclose()
                await server.wait()
        finally:
            if server.returncode is None:
                server.kill()
    # 48 KiB each way through wireguard-go's kernel side, reversed by the server.
    assert answer == payload[::-1]
    assert stack.wireguard_dropped == {}
