"""The WireGuard core on each crypto backend: cryptography (OpenSSL) and tlslite-ng (pure Python).

    python benchmarks/wireguard_crypto.py [--mib N] [--handshakes N] [--no-pyodide]

Two :class:`~netshim.protocols.wireguard.WireGuardDevice` back to back, no
I/O, so what is measured is the protocol core and its ciphers:

* X25519: one scalar multiplication (median);
* handshake: initiation, response and the confirming keepalive between two
  devices, both sides' work (median of N);
* transport: ``--mib`` MiB of 1420-byte IP packets (wg-quick's MTU) sealed by
  one device and opened by the other; MiB/s of wall time and CPU seconds per
  GiB (this process's, both sides together: halve it for one side).

Ratios are each backend against ``cryptography`` in the same run.  Unless
``--no-pyodide``, the same script then runs inside Pyodide under Node (the
pinned npm package of tests/peers/pyodide, with netshim's wheel built from
this checkout and tlslite-ng's), where tlslite-ng is the only backend.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if sys.platform != "emscripten":  # Pyodide runs this file's text, with no __file__
    ROOT = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(ROOT))

from netshim.protocols import wireguard as wg

PACKET_SIZE = 1420


def _packet(payload: bytes) -> bytes:
    total = 20 + len(payload)
    return (
        bytes([0x45, 0])
        + total.to_bytes(2, "big")
        + bytes(4)
        + bytes([64, 253, 0, 0])
        + bytes([10, 0, 0, 1, 10, 0, 0, 2])
        + payload
    )


def _pair(crypto: wg.CryptoBackend) -> tuple[wg.WireGuardDevice, wg.WireGuardDevice]:
    a = wg.WireGuardDevice(wg.generate_private_key(), crypto=crypto)
    b = wg.WireGuardDevice(wg.generate_private_key(), crypto=crypto)
    a.add_peer(b.public_key, endpoint=("192.0.2.2", 51820), allowed_ips=["10.0.0.2/32"])
    b.add_peer(a.public_key, endpoint=("192.0.2.1", 51820), allowed_ips=["10.0.0.1/32"])
    return a, b


def _handshake(a: wg.WireGuardDevice, b: wg.WireGuardDevice, now: float) -> None:
    a.send_to_peer(a.peers[0], b"", now)
    for data, _ in a.take_datagrams():
        b.receive_datagram(data, ("192.0.2.1", 51820), now)
    for data, _ in b.take_datagrams():
        a.receive_datagram(data, ("192.0.2.2", 51820), now)
    for data, _ in a.take_datagrams():
        b.receive_datagram(data, ("192.0.2.1", 51820), now)
    assert a.peers[0].has_session


def measure(name: str, mib: float, handshakes: int) -> dict[str, float | str]:
    crypto = wg.crypto_backend(name)
    key = crypto.x25519(wg.generate_private_key())
    point = crypto.x25519(wg.generate_private_key()).public_bytes()
    times = []
    for _ in range(max(5, handshakes)):
        started = time.perf_counter()
        key.exchange(point)
        times.append(time.perf_counter() - started)
    x25519_ms = statistics.median(times) * 1000
    times = []
    for number in range(handshakes):
        a, b = _pair(crypto)
        started = time.perf_counter()
        _handshake(a, b, float(number))
        times.append(time.perf_counter() - started)
    handshake_ms = statistics.median(times) * 1000
    a, b = _pair(crypto)
    _handshake(a, b, 0.0)
    packet = _packet(bytes(PACKET_SIZE - 20))
    count = max(1, int(mib * (1 << 20) / PACKET_SIZE))
    source = ("192.0.2.1", 51820)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        a.send_packet(packet, 1.0)
        for data, _ in a.take_datagrams():
            b.receive_datagram(data, source, 1.0)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert len(b.take_packets()) == count
    moved = count * PACKET_SIZE
    return {
        "backend": name,
        "x25519_ms": x25519_ms,
        "handshake_ms": handshake_ms,
        "mib_per_s": moved / wall / (1 << 20),
        "cpu_s_per_gib": cpu / moved * (1 << 30),
    }


def _row(where: str, result: dict[str, float | str], baseline: dict[str, float | str]) -> str:
    ratio = float(result["mib_per_s"]) / float(baseline["mib_per_s"])
    return (
        f"{where:9} {result['backend']:13} {result['x25519_ms']:9.2f} "
        f"{result['handshake_ms']:12.1f} {result['mib_per_s']:10.2f} "
        f"{result['cpu_s_per_gib']:12.0f} {ratio:9.4f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=1.0, help="MiB through tlslite-ng")
    parser.add_argument("--handshakes", type=int, default=5)
    parser.add_argument("--no-pyodide", action="store_true")
    options = parser.parse_args()
    # cryptography moves 64 times as much, to time it at all.
    baseline = measure("cryptography", options.mib * 64, options.handshakes)
    pure = measure("tlslite-ng", options.mib, options.handshakes)
    print(
        f"{'where':9} {'backend':13} {'x25519 ms':>9} {'handshake ms':>12} "
        f"{'MiB/s':>10} {'CPU s/GiB':>12} {'vs openssl':>10}"
    )
    print(_row("CPython", baseline, baseline))
    print(_row("CPython", pure, baseline))
    if options.no_pyodide:
        return
    sys.path.insert(0, str(ROOT / "tests" / "pyodide"))
    import tempfile

    import pyodide_support

    with tempfile.TemporaryDirectory() as directory:
        wheels = [
            pyodide_support.build_netshim_wheel(Path(directory)),
            *pyodide_support.dependency_wheels(
                pyodide_support.DEPENDENCIES + pyodide_support.TLS_LIBRARIES
            ),
        ]
        completed = pyodide_support.run_in_pyodide(
            Path(__file__).resolve(),
            wheels,
            env={"NETSHIM_MIB": str(options.mib), "NETSHIM_HANDSHAKES": str(options.handshakes)},
            timeout=1800,
        )
    if completed.returncode != 0:
        sys.exit(f"Pyodide run failed:\n{completed.stdout}\n{completed.stderr}")
    line = [text for text in completed.stdout.splitlines() if text.startswith("{")][-1]
    print(_row("Pyodide", json.loads(line), baseline))


if sys.platform == "emscripten":
    import os

    print(
        json.dumps(
            measure(
                "tlslite-ng",
                float(os.environ.get("NETSHIM_MIB", "1")),
                int(os.environ.get("NETSHIM_HANDSHAKES", "5")),
            )
        )
    )
elif __name__ == "__main__":
    main()
