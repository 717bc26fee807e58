"""One end of a benchmarks/ip.py measurement: the kernel's TCP, IpStack's or pytcp's, in a process.

    python benchmarks/ip_peer.py ROLE JSON

benchmarks/ip.py starts two of these per measurement (each in the network
namespace it belongs in, with ``ip netns exec``) and reads their CPU time
from /proc around the timed interval.  The protocol with the orchestrator is
benchmarks/bench_pattern.py's: a process prints ``{"ready": true}`` once it
listens or is connected, waits for a line on stdin ("go"), does its part,
prints one JSON result line and then waits for stdin to close, so that its
stack keeps running (acknowledging, retransmitting, closing) until the other
end has everything.

Roles (``JSON`` holds their parameters):

* ``kernel-server``: a kernel socket listening on ``port`` (of ``bind``,
  0.0.0.0 by default); with ``mode``
  ``sink`` it receives one stream to its end, ``source`` sends ``size``
  bytes on the first connection and closes, ``echo`` echoes every
  connection's bytes (1-byte ping-pong), ``accept`` accepts and closes
  (connect rate), ``hold`` accepts and keeps connections open (idle memory);
* ``kernel-client``, ``ipstack`` and ``pytcp``: the connecting side, with
  ``mode`` ``send`` (``size`` bytes, then close), ``recv`` (to the end),
  ``connects`` (``count`` connect + close, one after another), ``ping``
  (``count`` 1-byte round trips on one connection) or, for ``ipstack``,
  ``idle`` (``count`` connections left open, memory measured).

Senders write slices of the prebuilt pattern (bench_pattern.BIG); receivers
read into a preallocated buffer and compare every piece with the slice where
it belongs (one memcmp), so neither end hashes while the clock runs.  A
receiver's result carries its byte count and whether every piece matched.

The IpStack process adopts a TAP or TUN descriptor (``fd``, inherited) with
offloads, optionally behind :class:`netshim.ip.links.FaultyLink` (``loss``;
with ``wire_mtu`` the loss is drawn per wire segment of that MTU) and a
:class:`netshim.ip.links.PcapLink` inside it (``pcap``: a path, recording
what really crossed the device); ``trace`` prints the connection's recovery
counters to stderr when the transfer ends.
The pytcp process opens its own TAP device by name (pytcp's only way to get
one), so it runs inside the kernel's namespace; its logging is switched off
and it is run with ``python -O`` (its debug logging hides behind
``__debug__``), its fastest configuration.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pattern import BIG, PERIOD, WINDOW, payload, start

# Sends and receives move this much at a time (a receiver's check is one
# memcmp per piece, so a piece must fit in bench_pattern.WINDOW).
PIECE = 1 << 20
TAG = 0


def say(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


def wait_for_go() -> None:
    sys.stdin.readline()


def linger() -> None:
    """Wait for the orchestrator to close stdin (the other end has everything)."""
    sys.stdin.read()


class Checker:
    """Counts received bytes and compares each piece with the pattern."""

    def __init__(self) -> None:
        self.received = 0
        self.ok = True

    def feed(self, piece: bytes | memoryview) -> None:
        while len(piece) > WINDOW - PERIOD:
            self.feed(piece[: WINDOW - PERIOD])
            piece = piece[WINDOW - PERIOD :]
        if not BIG.startswith(piece, start(TAG, self.received)):
            self.ok = False
        self.received += len(piece)


# -- the kernel's sockets


def kernel_receive(sock: socket.socket) -> Checker:
    checker = Checker()
    buffer = bytearray(PIECE)
    view = memoryview(buffer)
    while n := sock.recv_into(buffer):
        checker.feed(view[:n])
    return checker


def kernel_send(sock: socket.socket, size: int) -> None:
    sent = 0
    while sent < size:
        n = min(PIECE, size - sent)
        sock.sendall(payload(TAG, sent, n))
        sent += n


def congestion_control(sock: socket.socket, p: dict[str, Any]) -> None:
    """``sock`` uses the congestion control ``p["cc"]`` names (the system's default without)."""
    if p.get("cc"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, p["cc"].encode())


def kernel_server(p: dict[str, Any]) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((p.get("bind", "0.0.0.0"), p["port"]))
    listener.listen(4096)
    mode = p["mode"]
    if mode in ("echo", "accept", "hold"):
        # These serve until the orchestrator closes stdin; the client reports.
        threading.Thread(target=serve_until_stdin_closes, daemon=True).start()
        say({"ready": True})
        held = []
        while True:
            conn, _ = listener.accept()
            if mode == "accept":
                conn.close()
            elif mode == "hold":
                held.append(conn)
            else:
                threading.Thread(target=echo, args=(conn,), daemon=True).start()
    say({"ready": True})
    conn, _ = listener.accept()
    congestion_control(conn, p)
    wait_for_go()
    if mode == "sink":
        checker = kernel_receive(conn)
        say({"received": checker.received, "ok": checker.ok})
    else:
        kernel_send(conn, p["size"])
        conn.close()
        say({"sent": p["size"]})
    linger()


def serve_until_stdin_closes() -> None:
    wait_for_go()
    linger()
    # The accept loop holds the main thread: leave from here.
    os._exit(0)


def echo(conn: socket.socket) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while data := conn.recv(65536):
        conn.sendall(data)


def kernel_client(p: dict[str, Any]) -> None:
    address = (p["host"], p["port"])
    mode = p["mode"]
    if mode == "connects":
        say({"ready": True})
        wait_for_go()
        began = time.perf_counter()
        for _ in range(p["count"]):
            socket.create_connection(address).close()
        say({"seconds": time.perf_counter() - began, "count": p["count"]})
        linger()
        return
    sock = socket.create_connection(address)
    congestion_control(sock, p)
    say({"ready": True})
    wait_for_go()
    if mode == "send":
        kernel_send(sock, p["size"])
        sock.close()
        say({"sent": p["size"]})
    elif mode == "recv":
        checker = kernel_receive(sock)
        say({"received": checker.received, "ok": checker.ok})
    else:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        times = []
        for _ in range(p["count"]):
            began = time.perf_counter()
            sock.sendall(b"x")
            sock.recv(1)
            times.append(time.perf_counter() - began)
        say({"rtt": statistics.median(times)})
    linger()


# -- IpStack


async def ipstack(p: dict[str, Any]) -> None:
    import anyio

    from netshim.ip.links import Faults, FaultyLink, PcapLink, TapLink, TunLink
    from netshim.ip.tcp import TcpConfig
    from netshim.stacks.ip import IpStack

    link: Any = (TapLink if p["medium"] == "tap" else TunLink).from_fd(p["fd"])
    if p.get("pcap"):
        link = PcapLink(link, p["pcap"])
    if p.get("loss"):
        link = FaultyLink(link, Faults(loss=p["loss"], seed=7), wire_mtu=p.get("wire_mtu"))
    config = TcpConfig(nodelay=p["mode"] == "ping")
    stack = IpStack(link, addresses=[p["address"]], tcp_config=config)
    address = (p["host"], p["port"])

    async def go() -> None:
        await anyio.to_thread.run_sync(wait_for_go)

    async with stack:
        mode = p["mode"]
        if mode == "connects":
            say({"ready": True})
            await go()
            began = time.perf_counter()
            for _ in range(p["count"]):
                stream = await stack.connect_tcp(*address)
                await stream.aclose()
            say({"seconds": time.perf_counter() - began, "count": p["count"]})
        elif mode == "idle":
            # One connection first, so that ARP, the resolver and the driver
            # are all set up before the measurement starts.
            streams = [await stack.connect_tcp(*address)]
            say({"ready": True})
            await go()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            rss_before = rss()
            for _ in range(p["count"]):
                streams.append(await stack.connect_tcp(*address))
            # Let the last handshakes' ACKs and timers settle.
            await anyio.sleep(0.5)
            after = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            say(
                {
                    "traced": (after - before) / p["count"],
                    "rss": (rss() - rss_before) / p["count"],
                    "count": p["count"],
                }
            )
        else:
            stream = await stack.connect_tcp(*address)
            say({"ready": True})
            await go()
            async with anyio.create_task_group() as tasks:
                connection = stream._connection  # type: ignore[attr-defined]
                if p.get("trace"):
                    tasks.start_soon(trace, connection, stack)
                if mode == "send":
                    sent, size = 0, p["size"]
                    while sent < size:
                        n = min(PIECE, size - sent)
                        await stream.send(payload(TAG, sent, n))
                        sent += n
                    await stream.aclose()
                    say({"sent": size})
                elif mode == "recv":
                    checker = Checker()
                    try:
                        while True:
                            checker.feed(await stream.receive(PIECE))
                    except anyio.EndOfStream:
                        pass
                    say({"received": checker.received, "ok": checker.ok})
                else:
                    times = []
                    for _ in range(p["count"]):
                        began = time.perf_counter()
                        await stream.send(b"x")
                        await stream.receive(1)
                        times.append(time.perf_counter() - began)
                    say({"rtt": statistics.median(times)})
                tasks.cancel_scope.cancel()
        await anyio.to_thread.run_sync(linger)


async def trace(connection: Any, stack: Any) -> None:
    """Print (to stderr, at the end) the connection's recovery counters and cwnd over time.

    cwnd is sampled every 5 ms, in send-MSS segments; the counters are
    TCP_INFO's (retransmitted segments, timeouts, fast recoveries) and the
    core's RACK-TLP ones; each retransmission timeout records the state it
    found (what was in flight, SACKed, in recovery, how long since a send),
    which tells a needless timeout from a needed one.  It reads the core's
    private fields: this is a measuring tool, not an interface.
    """
    import anyio

    samples: list[int] = []
    rtts: list[float] = []
    timeouts: list[dict[str, Any]] = []
    on_timeout = connection._on_retransmit_timeout

    def traced_timeout(now: float, out: list[Any]) -> None:
        # The state a retransmission timeout finds: what was outstanding and why.
        c = connection
        timeouts.append(
            {
                "flight": c._snd_max - c._snd_una,
                "queued_beyond": c._send_queue.end - c._snd_max,
                "cwnd": c.cwnd,
                "sacked": c._sacked_bytes,
                "recovery": c._in_recovery,
                "rexmits": len(c._rexmits),
                "high_rxt": c._high_rxt - c._snd_una,
                "lost_edge": c._lost_edge - c._snd_una,
                "send_window": c._snd_wnd,
                "tlp": c._tlp_high is not None,
                "last_sent_ago_ms": round((now - max(c._xmit_times[-1:] or [now])) * 1000, 1),
                "lost_again": len(c._lost_again),
                "first_record": (c._xmit_ends[0] - c._snd_una) if c._xmit_ends else None,
                "first_hole": [x - c._snd_una for x in c._next_hole(c._snd_una, c._snd_max) or ()],
                "rack_order_minus_first": (c._rack_order - c._xmit_orders[0])
                if c._xmit_orders
                else None,
                "rack_deadline": c._rack_deadline and round(c._rack_deadline - now, 4),
                "sack_blocks": len(c._sacked_starts),
            }
        )
        on_timeout(now, out)

    connection._on_retransmit_timeout = traced_timeout
    try:
        while True:
            samples.append(connection.cwnd // max(1, connection.send_mss))
            # RACK's RTT of the newest delivered segment, from the clock the
            # core is given (the timestamp option's RTT is in milliseconds).
            rtts.append(connection._rack_rtt)
            await anyio.sleep(0.005)
    finally:
        info = connection.info()
        samples.sort()
        quantiles = (
            [samples[int(q * (len(samples) - 1))] for q in (0.1, 0.5, 0.9)] if samples else []
        )
        print(
            json.dumps(
                {
                    "retransmissions": info.retransmissions,
                    "timeouts": info.timeouts,
                    "fast_recoveries": info.fast_recoveries,
                    "segments_sent": info.segments_sent,
                    "bytes_sent": info.bytes_sent,
                    "cwnd_segments_p10_p50_p90": quantiles,
                    "srtt_ms": info.srtt and round(info.srtt * 1000, 2),
                    "rack_rtt_ms_median": rtts and round(sorted(rtts)[len(rtts) // 2] * 1000, 3),
                    "loss_probes": connection.loss_probes,
                    "loss_probe_repairs": connection.loss_probe_repairs,
                    "lost_retransmissions": connection.lost_retransmissions,
                    "spurious_recoveries": connection.spurious_recoveries,
                    "at_timeouts": timeouts,
                    "interface_dropped": dict(stack._interface.dropped),
                    "link_lost": [
                        getattr(getattr(stack._link, name, None), "lost", None)
                        for name in ("outbound", "inbound")
                    ],
                }
            ),
            file=sys.stderr,
            flush=True,
        )


def rss() -> int:
    """Resident bytes of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# -- pytcp


def pytcp(p: dict[str, Any]) -> None:
    from pytcp import config

    # pytcp logs every packet to stdout by default; our stdout is the protocol.
    config.LOG_CHANEL = set()
    config.IP6_SUPPORT = False
    from pytcp import TcpIpStack
    from pytcp.lib import socket as pytcp_socket

    stack = TcpIpStack(
        interface=p["device"], ip4_address=p["address"], ip4_gateway=p["host"], mac_address=None
    )
    # The device exists now: the orchestrator configures the kernel's side.
    say({"device": True})
    wait_for_go()
    stack.start()
    try:
        sock = pytcp_socket.socket(pytcp_socket.AF_INET4, pytcp_socket.SOCK_STREAM)
        sock.connect((p["host"], p["port"]))
        say({"ready": True})
        wait_for_go()
        if p["mode"] == "send":
            # pytcp's send() queues everything it is given (its buffer is
            # unbounded), so the pieces go in at once and the time is the
            # transfer's.
            sent, size = 0, p["size"]
            while sent < size:
                n = min(PIECE, size - sent)
                sock.send(bytes(payload(TAG, sent, n)))
                sent += n
            sock.close()
            say({"sent": size})
        else:
            checker = Checker()
            while data := sock.recv():
                checker.feed(data)
            say({"received": checker.received, "ok": checker.ok})
        linger()
    finally:
        # pytcp's threads are not daemons: leave without waiting for them.
        sys.stdout.flush()
        os._exit(0)


def main() -> None:
    role, p = sys.argv[1], json.loads(sys.argv[2])
    if role == "kernel-server":
        kernel_server(p)
    elif role == "kernel-client":
        kernel_client(p)
    elif role == "ipstack":
        import anyio

        anyio.run(ipstack, p)
    elif role == "pytcp":
        pytcp(p)
    else:
        sys.exit(f"unknown role {role!r}")


if __name__ == "__main__":
    main()
