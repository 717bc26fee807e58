"""How fast the sans-I/O TCP core (netshim.ip.tcp) moves bytes, with no link at all.

Two :class:`~netshim.ip.tcp.TcpConnection` objects hand their segments to each
other in memory under a fake clock (50 microseconds one way, time advancing
only when nothing is due), so the figures are the TCP core's own cost per byte:
what is left for the interface, checksums and the TUN device.  Scenarios: no
loss, 1 % of data segments lost, and 2 % of segments reordered (held back
behind a few others); each with 64 KiB TSO/GRO segments (the TUN target) and
with plain 1448-byte segments.

The sender sends from a prebuilt 1 MiB pattern and the receiver compares each
read with the pattern (one memcmp per read, no hashing while the clock runs).
Prints MiB/s of wall time and CPU seconds per GiB (both connections together:
the in-memory loop runs sender and receiver in one process).

    python benchmarks/ip_core.py [--mib 256] [--quick]
"""

from __future__ import annotations

import argparse
import heapq
import ipaddress
import random
import time
from dataclasses import dataclass

from netshim.ip.tcp import TcpConfig, TcpConnection
from netshim.protocols.ip import IPAddress, TcpFlags, TcpRepr

A: tuple[IPAddress, int] = (ipaddress.IPv4Address("10.0.0.1"), 40000)
B: tuple[IPAddress, int] = (ipaddress.IPv4Address("10.0.0.2"), 80)
PATTERN_SIZE = 1 << 20
ONE_WAY = 0.00005


@dataclass
class Scenario:
    name: str
    loss: float = 0.0
    reorder: float = 0.0


def run(total: int, config: TcpConfig, scenario: Scenario, seed: int = 1) -> dict[str, float]:
    rng = random.Random(seed)
    pattern = rng.randbytes(PATTERN_SIZE)
    doubled_bytes = pattern + pattern
    doubled = memoryview(doubled_bytes)
    now = 0.0
    client = TcpConnection.open_active(A, B, iss=rng.getrandbits(32), now=now, config=config)
    server: TcpConnection | None = None
    in_flight: list[tuple[float, int, int, TcpRepr]] = []  # (time, order, destination, seg)
    order = 0
    sent = 0
    received = 0
    lost = 0

    def transmit(source: int, segments: list[TcpRepr]) -> None:
        nonlocal order, lost
        for segment in segments:
            delay = ONE_WAY
            if source == 0 and segment.payload:
                if scenario.loss and rng.random() < scenario.loss:
                    lost += 1
                    continue
                if scenario.reorder and rng.random() < scenario.reorder:
                    delay += ONE_WAY * 3
            order += 1
            heapq.heappush(in_flight, (now + delay, order, 1 - source, segment))

    wall = time.perf_counter()
    cpu = time.process_time()
    while received < total:
        # The application: fill the send buffer, drain the receive buffer.
        if client.established and sent < total:
            offset = sent % PATTERN_SIZE
            chunk = min(total - sent, PATTERN_SIZE)
            sent += client.send(doubled[offset : offset + chunk])
        if server is not None:
            while server.readable():
                data = server.receive(PATTERN_SIZE)
                offset = received % PATTERN_SIZE
                if doubled_bytes[offset : offset + len(data)] != data:
                    raise AssertionError(f"corrupted data at byte {received}")
                received += len(data)
        for index, connection in enumerate((client, server)):
            if connection is None:
                continue
            deadline = connection.deadline()
            if deadline is not None and deadline <= now:
                transmit(index, connection.poll(now))
        if in_flight and in_flight[0][0] <= now:
            while in_flight and in_flight[0][0] <= now:
                _, _, destination, segment = heapq.heappop(in_flight)
                if destination == 0:
                    client.on_segment(segment, now)
                    # As an interface would: answer each packet before reading the next.
                    transmit(0, client.poll(now))
                elif server is None:
                    if segment.flags & TcpFlags.SYN:
                        server = TcpConnection.open_passive(
                            B, A, segment, iss=rng.getrandbits(32), now=now, config=config
                        )
                else:
                    server.on_segment(segment, now)
                    transmit(1, server.poll(now))
            continue
        pending = [entry[0] for entry in in_flight[:1]]
        for connection in (client, server):
            if connection is not None:
                deadline = connection.deadline()
                if deadline is not None:
                    pending.append(deadline)
        if not pending:
            raise AssertionError("stalled: nothing in flight and no timer pending")
        now = max(now, min(pending))
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall
    info = client.info()
    return {
        "mib_s": total / wall / 2**20,
        "cpu_s_per_gib": cpu / (total / 2**30),
        "wall": wall,
        "fake_seconds": now,
        "retransmissions": info.retransmissions,
        "timeouts": info.timeouts,
        "lost": lost,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="MiB per transfer (default 256)")
    parser.add_argument("--quick", action="store_true", help="only the 64 KiB-segment runs")
    args = parser.parse_args()
    total = args.mib << 20
    buffers = {"send_buffer": 4 << 20, "receive_buffer": 4 << 20}
    configs = [("TSO 64 KiB segments", TcpConfig(max_segment_payload=65000, **buffers))]
    if not args.quick:
        configs.append(("1448-byte segments", TcpConfig(**buffers)))
    scenarios = [
        Scenario("no loss"),
        Scenario("1 % loss", loss=0.01),
        Scenario("2 % reordered", reorder=0.02),
    ]
    print(f"netshim.ip.tcp in-memory loop, {args.mib} MiB per run, 4 MiB buffers")
    print(f"{'segments':<22}{'scenario':<16}{'MiB/s':>9}{'CPU s/GiB':>11}{'rexmit':>8}{'RTOs':>6}")
    for label, config in configs:
        for scenario in scenarios:
            result = run(total, config, scenario)
            print(
                f"{label:<22}{scenario.name:<16}{result['mib_s']:>9.0f}"
                f"{result['cpu_s_per_gib']:>11.2f}{result['retransmissions']:>8.0f}"
                f"{result['timeouts']:>6.0f}"
            )


if __name__ == "__main__":
    main()
