"""The interface on real TAP and TUN devices, with the Linux kernel as its peer.

Each test makes a network namespace, and a process inside it opens a TAP or
TUN device there (``TUNSETIFF`` acts in the opener's namespace) and hands the
descriptor back over a Unix socket, which :meth:`TapLink.from_fd` adopts.  The
kernel side of the device gets addresses in the namespace; the interface gets
the other end of the subnet.  Then kernel tools run in the namespace:
``ping`` and ``ping -6`` (answered by the interface after ARP or neighbour
discovery), ``socat`` for UDP and TCP, and ``curl`` fetching from a listener
on the interface.  Everything is removed in the fixture's ``finally``.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import random
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface

import anyio
import pytest
from link_pump import Pump, pumping, receive_all, send_all
from namespaces import (
    DEVICE,
    KERNEL_V4,
    KERNEL_V6,
    configure_kernel_side,
    in_namespace,
    open_device,
    run,
)

from netshim.ip.iface import Interface, Medium
from netshim.ip.links import Bridge, Faults, FaultyLink, Link, TapLink, TunLink
from netshim.ip.tcp import TcpConnection
from netshim.protocols.ip import EthernetAddress
from netshim.testing import require_peer

pytestmark = [pytest.mark.anyio, pytest.mark.peer("iproute2")]

OUR_V4 = IPv4Address("10.77.0.2")
OUR_V6 = IPv6Address("2001:db8:77::2")
OUR_MAC = EthernetAddress.from_text("02:00:00:77:00:02")


@asynccontextmanager
async def kernel_peer(
    namespace: str, medium: Medium, *, faults: Faults | None = None
) -> AsyncIterator[tuple[Interface, Pump]]:
    link: Link
    if medium is Medium.ETHERNET:
        link = TapLink.from_fd(open_device(namespace, 0x0002))
    else:
        link = TunLink.from_fd(open_device(namespace, 0x0001))
    try:
        configure_kernel_side(namespace)
        iface = Interface(
            medium,
            mac=OUR_MAC if medium is Medium.ETHERNET else None,
            addresses=[IPv4Interface(f"{OUR_V4}/24"), IPv6Interface(f"{OUR_V6}/64")],
            rng=random.Random(5),
            tso=link.tso,
        )
        driven = link if faults is None else FaultyLink(link, faults)
        async with pumping((iface, driven)) as (pump,):
            yield iface, pump
    finally:
        await link.aclose()


def test_adopting_the_wrong_kind_of_device_fails(netns: str) -> None:
    fd = open_device(netns, 0x0002)
    try:
        with pytest.raises(ValueError, match="not a TUN"):
            TunLink.from_fd(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("medium", [Medium.ETHERNET, Medium.IP], ids=["tap", "tun"])
async def test_kernel_ping_and_ping6_are_answered(netns: str, medium: Medium) -> None:
    require_peer("ping")
    async with kernel_peer(netns, medium) as (iface, _pump):
        out = await in_namespace(netns, "ping", "-c", "3", "-i", "0.2", "-W", "2", str(OUR_V4))
        assert "3 received" in out
        out = await in_namespace(
            netns, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", str(OUR_V6)
        )
        assert "3 received" in out
        if medium is Medium.ETHERNET:
            link_local = iface.addresses_of(6)[0]
            out = await in_namespace(
                netns, "ping", "-6", "-c", "1", "-W", "2", f"{link_local}%{DEVICE}"
            )
            assert "1 received" in out
            neighbours = run("ip", "-n", netns, "neigh", "show", "dev", DEVICE)
            assert str(OUR_MAC) in neighbours


async def test_arp_and_neighbour_discovery_against_the_kernel(netns: str) -> None:
    require_peer("socat")
    async with kernel_peer(netns, Medium.ETHERNET) as (iface, pump):
        for address, port in ((KERNEL_V4, 6000), (KERNEL_V6, 6001)):
            async with await anyio.open_process(
                ["ip", "netns", "exec", netns, "socat", "-u",
                 f"UDP{address.version}-RECV:{port}", "STDOUT"],
            ) as receiver:  # fmt: skip
                sock = iface.udp_bind(IPv4Address(0) if address.version == 4 else IPv6Address(0))
                assert receiver.stdout is not None
                data = b""
                with anyio.fail_after(10):
                    while b"ping" not in data:
                        # The receiver may not be bound yet: resend until it hears us.
                        sock.send_to(b"ping", (address, port), anyio.current_time())
                        pump.kick()
                        with anyio.move_on_after(0.3):
                            data += await receiver.stdout.receive()
                receiver.terminate()
                sock.close()
            assert iface.neighbors.lookup(address, anyio.current_time()) is not None


@pytest.mark.parametrize("medium", [Medium.ETHERNET, Medium.IP], ids=["tap", "tun"])
async def test_kernel_udp_to_a_udp_socket_and_back(netns: str, medium: Medium) -> None:
    require_peer("socat")
    async with kernel_peer(netns, medium) as (iface, pump):
        sock = iface.udp_bind(IPv4Address(0), 5000)

        async def echo_upper() -> None:
            await pump.wait_until(sock.readable)
            received = sock.receive()
            assert received is not None
            payload, source = received
            sock.send_to(payload.upper(), source, anyio.current_time())
            pump.kick()

        async with anyio.create_task_group() as group:
            group.start_soon(echo_upper)
            out = await in_namespace(
                netns, "socat", "-T", "3", "-", f"UDP4:{OUR_V4}:5000", stdin=b"hello kernel\n"
            )
        assert out == "HELLO KERNEL\n"
        closed_port = await anyio.run_process(
            ["ip", "netns", "exec", netns, "socat", "-T", "2", "-", f"UDP4:{OUR_V4}:5999"],
            input=b"anyone?\n" * 2,
            check=False,
        )
        # ICMP port unreachable makes the kernel's connected socket fail the next read.
        assert b"Connection refused" in closed_port.stderr
        assert iface.dropped["udp port unreachable"] >= 1


async def serve_http(pump: Pump, connection: TcpConnection, body: bytes) -> None:
    request = b""
    while b"\r\n\r\n" not in request:
        await pump.wait_until(lambda: connection.readable() or connection.at_eof)
        request += connection.receive(65536)
    header = f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    await send_all(pump, connection, header + body)
    connection.shutdown()
    pump.kick()


@pytest.mark.parametrize("medium", [Medium.ETHERNET, Medium.IP], ids=["tap", "tun"])
@pytest.mark.parametrize("version", [4, 6])
async def test_kernel_curl_fetches_from_a_listener(
    netns: str, medium: Medium, version: int
) -> None:
    require_peer("curl")
    body = random.Random(9).randbytes(4 << 20)
    address = OUR_V4 if version == 4 else OUR_V6
    url = f"http://{address}:8080/" if version == 4 else f"http://[{address}]:8080/"
    async with kernel_peer(netns, medium) as (iface, pump):
        listener = iface.tcp_listen(address, 8080)

        async def serve() -> None:
            await pump.wait_until(listener.readable)
            connection = listener.accept()
            assert connection is not None
            await serve_http(pump, connection, body)

        async with anyio.create_task_group() as group:
            group.start_soon(serve)
            out = await in_namespace(netns, "sh", "-c", f"curl -sS --max-time 30 {url} | sha256sum")
        assert out.split()[0] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("medium", [Medium.ETHERNET, Medium.IP], ids=["tap", "tun"])
async def test_connecting_to_kernel_socat_both_directions(netns: str, medium: Medium) -> None:
    require_peer("socat")
    upload = random.Random(3).randbytes(4 << 20)
    async with kernel_peer(netns, medium) as (iface, pump):
        async with await anyio.open_process(
            ["ip", "netns", "exec", netns, "sh", "-c",
             "socat -u TCP4-LISTEN:7000,reuseaddr STDOUT | sha256sum"],
        ) as sink:  # fmt: skip
            connection = await connect_with_retry(iface, pump, (KERNEL_V4, 7000))
            await send_all(pump, connection, upload)
            connection.shutdown()
            pump.kick()
            await pump.wait_until(lambda: connection.at_eof)
            assert sink.stdout is not None
            with anyio.fail_after(20):
                digest = (await sink.stdout.receive()).decode().split()[0]
        assert digest == hashlib.sha256(upload).hexdigest()
        download = random.Random(4).randbytes(4 << 20)
        async with await anyio.open_process(
            ["ip", "netns", "exec", netns, "socat", "-u", "STDIN",
             "TCP6-LISTEN:7001,reuseaddr"],
        ) as source:  # fmt: skip
            assert source.stdin is not None
            connection = await connect_with_retry(iface, pump, (KERNEL_V6, 7001))
            async with anyio.create_task_group() as group:

                async def feed() -> None:
                    assert source.stdin is not None
                    await source.stdin.send(download)
                    await source.stdin.aclose()

                group.start_soon(feed)
                received = await receive_all(pump, connection, len(download))
        assert hashlib.sha256(received).digest() == hashlib.sha256(download).digest()


async def connect_with_retry(
    iface: Interface, pump: Pump, remote: tuple[IPv4Address | IPv6Address, int]
) -> TcpConnection:
    """Connect, trying again while the kernel listener is not up yet (RST: refused)."""
    with anyio.fail_after(10):
        while True:
            connection = iface.tcp_connect(remote, now=anyio.current_time())
            pump.kick()
            await pump.wait_until(
                lambda c=connection: c.established or c.finished  # type: ignore[misc]
            )
            if connection.established:
                return connection
            await anyio.sleep(0.1)


async def test_fragmented_kernel_datagram_is_reassembled(netns: str) -> None:
    require_peer("socat")
    payload = bytes(range(256)) * 20  # 5120 bytes: the kernel sends four fragments
    async with kernel_peer(netns, Medium.ETHERNET) as (iface, pump):
        sock = iface.udp_bind(OUR_V4, 5353)
        await in_namespace(
            netns, "socat", "-u", "STDIN", f"UDP4-SENDTO:{OUR_V4}:5353", stdin=payload
        )
        await pump.wait_until(sock.readable)
        received = sock.receive()
        assert received is not None
        assert received[0] == payload
        assert len(iface.reassembler) == 0


@pytest.mark.parametrize("medium", [Medium.ETHERNET, Medium.IP], ids=["tap", "tun"])
async def test_tcp_with_the_kernel_survives_loss_duplication_and_reordering(
    netns: str, medium: Medium
) -> None:
    require_peer("curl")
    faults = Faults(loss=0.02, duplicate=0.01, reorder=0.01, seed=11)
    body = random.Random(12).randbytes(8 << 20)
    async with kernel_peer(netns, medium, faults=faults) as (iface, pump):
        listener = iface.tcp_listen(OUR_V4, 8080)

        async def serve() -> None:
            await pump.wait_until(listener.readable)
            connection = listener.accept()
            assert connection is not None
            await serve_http(pump, connection, body)

        async with anyio.create_task_group() as group:
            group.start_soon(serve)
            out = await in_namespace(
                netns, "sh", "-c", f"curl -sS --max-time 60 http://{OUR_V4}:8080/ | sha256sum"
            )
        assert out.split()[0] == hashlib.sha256(body).hexdigest()
        assert isinstance(pump.link, FaultyLink)
        # With offloads a lost packet is up to 64 KiB: dozens of segments at once.
        assert pump.link.outbound.lost + pump.link.inbound.lost > 0


async def test_slaac_address_from_dnsmasq_router_advertisements(
    netns: str, tmp_path: pathlib.Path
) -> None:
    dnsmasq = require_peer("dnsmasq")
    async with kernel_peer(netns, Medium.ETHERNET) as (iface, pump), await anyio.open_process(
        ["ip", "netns", "exec", netns, dnsmasq, "--no-daemon", "--conf-file=/dev/null",
         "--port=0", f"--pid-file={tmp_path / 'dnsmasq.pid'}", f"--interface={DEVICE}",
         "--bind-interfaces", "--enable-ra", "--dhcp-range=2001:db8:77::,ra-only,64,10m",
         "--ra-param=nstest0,3,600"],
    ) as router:  # fmt: skip
        try:
            slaac = IPv6Address("2001:db8:77::ff:fe77:2")
            # Our solicitations went out before dnsmasq started; it advertises
            # on its own within seconds, and answers later solicitations.
            await pump.wait_until(lambda: slaac in iface.addresses_of(6), limit=20)
            assert iface.router6 is not None
            assert iface.router6.is_link_local
            out = await in_namespace(netns, "ping", "-6", "-c", "1", "-W", "2", str(slaac))
            assert "1 received" in out
        finally:
            router.terminate()


def test_open_by_name_inside_a_namespace(netns: str) -> None:
    script = (
        "from netshim.ip.links import TapLink, TunLink\n"
        "tap = TapLink.open('nstap%d')\n"
        "tun = TunLink.open('nstun0', offload=False)\n"
        "print(tap.name, tap.vnet_hdr, tap.offload, tap.tso)\n"
        "print(tun.name, tun.vnet_hdr, tun.offload, tun.tso)\n"
    )
    out = run("ip", "netns", "exec", netns, sys.executable, "-c", script)
    assert out.splitlines() == ["nstap0 True True True", "nstun0 True False True"]


async def test_a_tap_device_joins_a_bridge_of_interfaces(netns: str) -> None:
    require_peer("ping")
    tap = TapLink.from_fd(open_device(netns, 0x0002), offload=False)
    bridge = Bridge()
    hosts = [
        Interface(
            Medium.ETHERNET,
            mac=EthernetAddress(bytes((2, 0, 0, 0x77, 0, n))),
            addresses=[IPv4Interface(f"10.77.0.{n}/24")],
            rng=random.Random(n),
            slaac=False,
        )
        for n in (2, 3)
    ]
    try:
        configure_kernel_side(netns)
        async with anyio.create_task_group() as group:
            group.start_soon(bridge.run_port, tap)
            async with pumping(*((host, bridge.port()) for host in hosts)):
                for n in (2, 3):
                    out = await in_namespace(netns, "ping", "-c", "2", "-W", "2", f"10.77.0.{n}")
                    assert "2 received" in out
                # The kernel's MAC and both interfaces' were learnt.
                assert len(bridge.mac_table()) == 3
            group.cancel_scope.cancel()
        assert len(bridge.mac_table()) == 2  # the TAP's port left with the device
    finally:
        await tap.aclose()


async def test_kernel_refusals_reach_our_sockets(netns: str) -> None:
    async with kernel_peer(netns, Medium.ETHERNET) as (iface, pump):
        sock = iface.udp_bind(IPv4Address(0))
        sock.connect((KERNEL_V4, 9))
        sock.send(b"anyone?", anyio.current_time())
        pump.kick()
        await pump.wait_until(sock.readable)
        with pytest.raises(ConnectionRefusedError):
            sock.receive()
        for remote in ((KERNEL_V4, 9), (KERNEL_V6, 9)):
            connection = iface.tcp_connect(remote, now=anyio.current_time())
            pump.kick()
            await pump.wait_until(lambda c=connection: c.finished)  # type: ignore[misc]
            assert isinstance(connection.error, ConnectionRefusedError)


async def test_fragmented_kernel_datagram_over_ipv6_is_reassembled(netns: str) -> None:
    require_peer("socat")
    payload = bytes(range(256)) * 20
    async with kernel_peer(netns, Medium.IP) as (iface, pump):
        sock = iface.udp_bind(OUR_V6, 5353)
        await in_namespace(
            netns, "socat", "-u", "STDIN", f"UDP6-SENDTO:[{OUR_V6}]:5353", stdin=payload
        )
        await pump.wait_until(sock.readable)
        received = sock.receive()
        assert received is not None
        assert received[0] == payload


async def test_a_deleted_device_breaks_the_link(netns: str) -> None:
    link = TapLink.from_fd(open_device(netns, 0x0002))
    try:
        run("ip", "-n", netns, "link", "set", DEVICE, "up")

        async def delete_soon() -> None:
            await anyio.sleep(0.2)
            run("ip", "-n", netns, "link", "del", DEVICE)

        async def read_until_broken() -> None:
            while True:
                await link.receive()  # the kernel's own IPv6 chatter, then the end

        async with anyio.create_task_group() as group:
            group.start_soon(delete_soon)
            with anyio.fail_after(5), pytest.raises(anyio.BrokenResourceError):
                await read_until_broken()
        with pytest.raises(anyio.BrokenResourceError):
            await link.send(bytes(60))
    finally:
        await link.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await link.receive()
