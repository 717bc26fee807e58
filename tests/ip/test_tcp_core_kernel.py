"""netshim.ip.tcp against the Linux kernel's TCP, over a TUN device in a network namespace.

tests/ip/test_links_kernel.py checks that bytes get through (curl, socat, with
loss); these check the TCP behaviours one by one with the kernel as the peer:
the options it agrees to, a refused connect, a reset, both close orders,
its sender meeting our zero window, and keepalives it answers until it falls
silent.  The device is a TUN with IFF_VNET_HDR and offloads (64 KiB segments
both ways), opened inside the namespace and handed back over a Unix socket.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from ipaddress import IPv4Address, IPv4Interface

import anyio
import pytest
from link_pump import Pump, pumping, receive_all, send_all

from netshim.ip.iface import GsoInfo, Interface, Medium
from netshim.ip.links import IncomingPacket, Link, TunLink
from netshim.ip.tcp import TcpConfig, TcpConnection, TcpState
from netshim.testing import require_peer

pytestmark = [pytest.mark.anyio, pytest.mark.peer("iproute2")]

KERNEL = IPv4Address("10.78.0.1")
OURS = IPv4Address("10.78.0.2")
DEVICE = "nstcp0"

# Run inside the namespace: open a TUN device there and pass its descriptor back.
_OPENER = """
import fcntl, os, socket, struct, sys
fd = os.open("/dev/net/tun", os.O_RDWR)
flags = 0x0001 | 0x1000 | 0x4000  # IFF_TUN | IFF_NO_PI | IFF_VNET_HDR
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", sys.argv[1].encode(), flags))
socket.send_fds(socket.socket(fileno=int(sys.argv[2])), [b"fd"], [fd])
"""

# A kernel server that accepts, waits, and closes with SO_LINGER 0: an RST.
_RESETTER = """
import socket, struct, sys, time
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen()
connection, _ = server.accept()
time.sleep(0.3)
connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
connection.close()
"""

# A kernel server that echoes one connection and closes when it sees EOF.  Not
# socat's PIPE: socat (1.7.4) waits until its pipe is writable, then blocks writing a
# whole 8 KiB block when less room is left, and it is the pipe's only reader;
# with a fast enough client (the kernel's own over loopback too) that deadlock
# stops the echo now and then from about 2 MiB on.
_ECHOER = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen()
connection, _ = server.accept()
while data := connection.recv(1 << 16):
    connection.sendall(data)
connection.close()
"""


def _run(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def netns() -> Iterator[str]:
    require_peer("ip")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    name = f"netshim-tcp-{os.getpid()}-{random.randrange(1 << 30)}"
    _run("ip", "netns", "add", name)
    try:
        _run("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _open_tun(namespace: str) -> int:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        subprocess.run(
            ["ip", "netns", "exec", namespace, sys.executable, "-c", _OPENER,
             DEVICE, str(theirs.fileno())],
            check=True, pass_fds=[theirs.fileno()], capture_output=True,
        )  # fmt: skip
        _message, fds, _flags, _address = socket.recv_fds(ours, 16, 1)
    return fds[0]


class SilenceableLink(Link):
    """Passes packets through until :attr:`silent` is set, then drops them both ways."""

    def __init__(self, inner: Link) -> None:
        self.inner = inner
        self.medium = inner.medium
        self.tso = inner.tso
        self.silent = False

    async def send(self, packet: bytes, gso: GsoInfo | None = None) -> None:
        if not self.silent:
            await self.inner.send(packet, gso)

    async def receive(self) -> IncomingPacket:
        while True:
            packet = await self.inner.receive()
            if not self.silent:
                return packet

    async def aclose(self) -> None:
        await self.inner.aclose()


@asynccontextmanager
async def kernel_peer(
    namespace: str, config: TcpConfig | None = None
) -> AsyncIterator[tuple[Interface, Pump, SilenceableLink]]:
    tun = TunLink.from_fd(_open_tun(namespace))
    link = SilenceableLink(tun)
    try:
        _run("ip", "-n", namespace, "addr", "add", f"{KERNEL}/24", "dev", DEVICE)
        _run("ip", "-n", namespace, "link", "set", DEVICE, "up")
        iface = Interface(
            Medium.IP,
            addresses=[IPv4Interface(f"{OURS}/24")],
            rng=random.Random(21),
            tso=link.tso,
            tcp_config=config,
        )
        async with pumping((iface, link)) as (pump,):
            yield iface, pump, link
    finally:
        await link.aclose()


@asynccontextmanager
async def _kernel_process(namespace: str, *command: str) -> AsyncIterator[anyio.abc.Process]:
    """A program in the namespace, killed on the way out (a failed test must not hang)."""
    process = await anyio.open_process(["ip", "netns", "exec", namespace, *command])
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.CancelScope(shield=True):
            await process.aclose()


async def _connect(iface: Interface, pump: Pump, port: int) -> TcpConnection:
    """Connect to the kernel, trying again while its listener is not up yet."""
    with anyio.fail_after(10):
        while True:
            connection = iface.tcp_connect((KERNEL, port), now=anyio.current_time())
            pump.kick()
            await pump.wait_until(
                lambda c=connection: c.established or c.finished  # type: ignore[misc]
            )
            if connection.established:
                return connection
            await anyio.sleep(0.1)


async def test_kernel_agrees_to_every_option_and_echoes(netns: str) -> None:
    # Both ways at once, many times the windows on either side.
    data = random.Random(1).randbytes(4 << 20)
    async with (
        kernel_peer(netns) as (iface, pump, _link),
        _kernel_process(netns, sys.executable, "-c", _ECHOER, str(KERNEL), "7100"),
    ):
        connection = await _connect(iface, pump, 7100)
        # Linux answers our SYN with MSS 1460, SACK, timestamps and window scaling.
        assert connection._ts_enabled
        assert connection._sack_enabled
        assert connection._ws_enabled
        assert connection._snd_wscale >= 7
        assert connection.send_mss == 1460 - 12
        async with anyio.create_task_group() as group:
            group.start_soon(send_all, pump, connection, data)
            echoed = await receive_all(pump, connection, len(data))
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()
        assert connection.srtt is not None
        assert connection.srtt < 0.1
        # We close first: the echo closes when it sees our FIN; we end in TIME-WAIT.
        connection.shutdown()
        pump.kick()
        await pump.wait_until(lambda: connection.at_eof)
        await pump.wait_until(lambda: connection.state is TcpState.TIME_WAIT)
        assert connection.error is None


async def test_kernel_refuses_a_closed_port(netns: str) -> None:
    async with kernel_peer(netns) as (iface, pump, _link):
        connection = iface.tcp_connect((KERNEL, 7199), now=anyio.current_time())
        pump.kick()
        await pump.wait_until(lambda: connection.finished)
        assert isinstance(connection.error, ConnectionRefusedError)
        assert connection.error.errno == errno.ECONNREFUSED


async def test_kernel_reset_is_connection_reset(netns: str) -> None:
    async with (
        kernel_peer(netns) as (iface, pump, _link),
        _kernel_process(netns, sys.executable, "-c", _RESETTER, str(KERNEL), "7500"),
    ):
        connection = await _connect(iface, pump, 7500)
        connection.send(b"never read" * 1000)
        pump.kick()
        await pump.wait_until(lambda: connection.state is TcpState.CLOSED)
        assert isinstance(connection.error, ConnectionResetError)
        with pytest.raises(ConnectionResetError):
            connection.send(b"more")


async def test_kernel_closes_first_and_we_follow(netns: str) -> None:
    require_peer("socat")
    greeting = random.Random(2).randbytes(300_000)
    async with (
        kernel_peer(netns) as (iface, pump, _link),
        _kernel_process(netns, "socat", "-u", "STDIN", f"TCP4-LISTEN:7400,bind={KERNEL}") as sender,
        anyio.create_task_group() as group,
    ):

        async def feed() -> None:
            assert sender.stdin is not None
            await sender.stdin.send(greeting)
            await sender.stdin.aclose()

        # socat reads its input only once a connection is accepted.
        group.start_soon(feed)
        connection = await _connect(iface, pump, 7400)
        received = await receive_all(pump, connection, len(greeting) + 1)
        assert received == greeting
        assert connection.at_eof
        assert connection.state is TcpState.CLOSE_WAIT
        connection.shutdown()
        pump.kick()
        await pump.wait_until(lambda: connection.finished)
        assert connection.error is None


async def test_kernel_sender_meets_our_zero_window(netns: str) -> None:
    require_peer("socat")
    data = random.Random(3).randbytes(1 << 20)
    small = TcpConfig(receive_buffer=64 << 10)
    async with kernel_peer(netns, small) as (iface, pump, _link):
        listener = iface.tcp_listen(OURS, 7200)
        async with _kernel_process(netns, "socat", "-u", "STDIN", f"TCP4:{OURS}:7200") as sender:
            assert sender.stdin is not None
            async with anyio.create_task_group() as group:

                async def feed() -> None:
                    assert sender.stdin is not None
                    await sender.stdin.send(data)
                    await sender.stdin.aclose()

                group.start_soon(feed)
                await pump.wait_until(listener.readable)
                connection = listener.accept()
                assert connection is not None
                # Do not read: the window fills and closes, the kernel probes it.
                # (Up to a scaling unit short: a 1-byte window is not worth a segment.)
                await pump.wait_until(lambda: connection.readable() >= (64 << 10) - 2)
                held = connection.readable()
                await anyio.sleep(1.0)
                assert connection.readable() == held
                assert connection.info().receive_window <= 2
                assert connection.state is TcpState.ESTABLISHED
                received = await receive_all(pump, connection, len(data) + 1)
        assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
        assert connection.at_eof


async def test_keepalive_answered_by_the_kernel_then_timeout_when_silent(netns: str) -> None:
    require_peer("socat")
    async with (
        kernel_peer(netns) as (iface, pump, link),
        _kernel_process(netns, "socat", f"TCP4-LISTEN:7300,bind={KERNEL}", "PIPE"),
    ):
        connection = await _connect(iface, pump, 7300)
        connection.keepalive = (0.3, 0.2, 3)
        pump.kick()
        await anyio.sleep(1.5)
        # Several idle periods passed; the kernel answered every probe.
        assert connection.state is TcpState.ESTABLISHED
        assert connection.segments_received >= 4
        link.silent = True
        started = anyio.current_time()
        await pump.wait_until(lambda: connection.state is TcpState.CLOSED, limit=5)
        assert isinstance(connection.error, TimeoutError)
        # Idle 0.3 s, then three probes 0.2 s apart and the give-up.
        assert anyio.current_time() - started < 2.0
