"""Foundation benchmarks: VirtualNetwork against the kernel's loopback, in one run.

    python benchmarks/foundation.py [--backend asyncio|trio] [--quick]

Prints, for each measure, the virtual figure, the baseline figure measured in
the same run, and their ratio:

* bulk TCP throughput: one connection, the same chunk size both ways, through
  anyio streams (VirtualHost streams vs HostStack streams on 127.0.0.1);
* connections per second: connect, accept, one byte each way, close;
* Python memory per idle virtual connection, with 10,000 connections open
  (tracemalloc; both ends of each connection counted).

Targets: throughput >= 1.0x, connection rate >= 2x, <= 8 KiB per connection.
Figures vary with the machine; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from pathlib import Path

import anyio
import sniffio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import netshim
from netshim import Stack

CHUNK = 64 * 1024


async def throughput(server: Stack, client: Stack, address: str, total: int) -> float:
    """Bytes per second moved from client to server over one connection."""
    listener = await server.listen_tcp(address, 0)
    payload = b"x" * CHUNK
    async with listener:
        stream = await client.connect_tcp(address, listener.local_address[1])
        accepted = await listener.accept()
        received = 0

        async def sink() -> None:
            nonlocal received
            while received < total:
                received += len(await accepted.receive(CHUNK))

        start = time.perf_counter()
        async with anyio.create_task_group() as group:
            group.start_soon(sink)
            for _ in range(total // CHUNK):
                await stream.send(payload)
        elapsed = time.perf_counter() - start
        await stream.aclose()
        await accepted.aclose()
    return total / elapsed


async def connection_rate(server: Stack, client: Stack, address: str, count: int) -> float:
    """Connections per second: connect, accept, one byte each way, close both."""
    listener = await server.listen_tcp(address, 0)
    port = listener.local_address[1]
    async with listener:
        start = time.perf_counter()
        for _ in range(count):
            stream = await client.connect_tcp(address, port)
            accepted = await listener.accept()
            await stream.send(b"?")
            await accepted.receive()
            await accepted.send(b"!")
            await stream.receive()
            await stream.aclose()
            await accepted.aclose()
        elapsed = time.perf_counter() - start
    return count / elapsed


async def memory_per_connection(count: int) -> float:
    """Bytes of Python memory per open idle virtual connection (both ends)."""
    net = netshim.VirtualNetwork(seed=0, ipv4_subnet="10.0.0.0/16")
    server = net.add_host("server")
    client = net.add_host("client")
    listener = await server.listen_tcp("0.0.0.0", 80, backlog=count)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    pairs = []
    for _ in range(count):
        stream = await client.connect_tcp(server.addresses[0], 80)
        pairs.append((stream, await listener.accept()))
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    for stream, accepted in pairs:
        await stream.aclose()
        await accepted.aclose()
    return (after - before) / count


async def main(quick: bool) -> None:
    total = (64 if quick else 512) * 1024 * 1024
    connections = 500 if quick else 3000
    net = netshim.VirtualNetwork(seed=0)
    server, client = net.add_host("server"), net.add_host("client")
    host = netshim.HostStack()

    print(f"netshim foundation benchmark, backend {sniffio.current_async_library()}")
    virtual_bps = await throughput(server, client, server.addresses[0], total)
    host_bps = await throughput(host, host, "127.0.0.1", total)
    print(
        f"throughput, {CHUNK // 1024} KiB chunks, {total >> 20} MiB: "
        f"virtual {virtual_bps / 1e6:,.0f} MB/s, kernel loopback {host_bps / 1e6:,.0f} MB/s, "
        f"ratio {virtual_bps / host_bps:.2f}x (target >= 1.0x)"
    )
    virtual_cps = await connection_rate(server, client, server.addresses[0], connections)
    host_cps = await connection_rate(host, host, "127.0.0.1", connections)
    print(
        f"connections/s, {connections} connections: virtual {virtual_cps:,.0f}, "
        f"kernel loopback {host_cps:,.0f}, ratio {virtual_cps / host_cps:.2f}x (target >= 2x)"
    )
    per_connection = await memory_per_connection(10_000)
    print(
        f"memory per idle virtual connection, 10,000 open: {per_connection / 1024:.2f} KiB "
        f"(target <= 8 KiB)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    arguments = parser.parse_args()
    anyio.run(main, arguments.quick, backend=arguments.backend)
