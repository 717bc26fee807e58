"""Two WireGuardStacks back to back over the host's loopback UDP, on asyncio and trio.

No peer program: both ends are netshim, which checks the stack's own plumbing
(events as callbacks and as an async iterator, a listener inside the tunnel,
an endpoint learnt from the initiator) on both anyio backends.
"""

from __future__ import annotations

import hashlib
import socket
import sys
from collections.abc import Callable

import anyio
import anyio.lowlevel
import pytest

from netshim.protocols import wireguard as wg
from netshim.protocols.wireguard import EndpointChanged, HandshakeCompleted, WireGuardEvent
from netshim.stacks.wireguard import PeerConfig, TransferUpdated, WireGuardStack

pytestmark = pytest.mark.anyio


def server_stack(
    client_key: bytes,
    listen_host: str | None = None,
    on_event: Callable[[WireGuardEvent], None] | None = None,
) -> WireGuardStack:
    """The tunnel's 10.66.0.1, whose one peer is the client with ``client_key``."""
    return WireGuardStack(
        wg.generate_private_key(),
        addresses=["10.66.0.1/24"],
        peers=[PeerConfig(wg.public_key(client_key), ("10.66.0.2/32",))],
        listen_host=listen_host,
        on_event=on_event,
    )


async def client_of(server: WireGuardStack, client_key: bytes, host: str) -> WireGuardStack:
    """The tunnel's 10.66.0.2, whose one peer is ``server``, reached at ``host``."""
    # The server's port is only known once its socket is bound.
    await server.link.open()
    address = server.link.local_address
    assert address is not None
    return WireGuardStack(
        client_key,
        addresses=["10.66.0.2/24"],
        peers=[PeerConfig(server.device.public_key, ("10.66.0.0/24",), (host, address[1]))],
    )


async def test_two_stacks_talk_tcp_through_the_tunnel() -> None:
    client_key = wg.generate_private_key()
    server_events: list[WireGuardEvent] = []
    server = server_stack(client_key, on_event=server_events.append)
    async with server:
        client = await client_of(server, client_key, "127.0.0.1")
        listener = await server.listen_tcp("10.66.0.1", 7000)
        payload = bytes(range(256)) * 4096  # 1 MiB
        received: list[WireGuardEvent] = []

        async def watch() -> None:
            async with client.events() as events:
                async for event in events:
                    received.append(event)
                    if isinstance(event, TransferUpdated) and event.tx_bytes > len(payload):
                        return

        async def serve() -> None:
            stream = await listener.accept()
            digest = hashlib.sha256()
            try:
                while True:
                    digest.update(await stream.receive())
            except anyio.EndOfStream:
                pass
            await stream.send(digest.hexdigest().encode())
            await stream.aclose()

        async with client:
            with anyio.fail_after(60):
                async with anyio.create_task_group() as group:
                    group.start_soon(watch)
                    group.start_soon(serve)
                    await anyio.lowlevel.checkpoint()  # let watch() subscribe first
                    stream = await client.connect_tcp("10.66.0.1", 7000)
                    await stream.send(payload)
                    await stream.send_eof()
                    answer = b""
                    try:
                        while True:
                            answer += await stream.receive()
                    except anyio.EndOfStream:
                        pass
                    await stream.aclose()
        await listener.aclose()
    assert answer.decode() == hashlib.sha256(payload).hexdigest()
    assert any(isinstance(e, HandshakeCompleted) and e.initiator for e in received)
    assert any(isinstance(e, EndpointChanged) for e in server_events)
    assert any(isinstance(e, HandshakeCompleted) and not e.initiator for e in server_events)
    assert server.peers[0].endpoint is not None
    assert server.peers[0].endpoint[0] == "127.0.0.1"


async def test_ipv6_endpoints() -> None:
    client_key = wg.generate_private_key()
    server = server_stack(client_key, listen_host="::")
    async with server:
        client = await client_of(server, client_key, "::1")
        async with client:
            with anyio.fail_after(20):
                await client.handshake()
    assert server.peers[0].endpoint is not None
    assert server.peers[0].endpoint[0] == "::1"


@pytest.mark.skipif(sys.platform != "linux", reason="UDP_SEGMENT and UDP_GRO are Linux's")
async def test_the_link_takes_a_segmented_run_of_datagrams_one_by_one() -> None:
    # One segmented send of ten transport messages (to an unknown receiver
    # index): whether the kernel hands the link one coalesced buffer
    # (UDP_GRO) or ten datagrams, the device sees ten.
    from netshim.stacks import HostStack
    from netshim.stacks.wireguard import WireGuardLink

    device = wg.WireGuardDevice(wg.generate_private_key())
    link = WireGuardLink(device, HostStack(), bind=("127.0.0.1", 0))
    await link.open()
    address = link.local_address
    assert address is not None
    message = (4).to_bytes(4, "little") + bytes(44)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        segment = [(17, 103, (len(message)).to_bytes(2, sys.byteorder))]  # SOL_UDP, UDP_SEGMENT
        sender.sendmsg([message * 10], segment, 0, address)
    for _ in range(100):
        assert link.receive_nowait() is None
        if device.dropped["unknown receiver index"] >= 10:
            break
        await anyio.sleep(0.01)
    assert device.dropped == {"unknown receiver index": 10}
    await link.aclose()


async def test_the_link_sends_one_by_one_when_segmenting_is_refused() -> None:
    # A route whose device cannot segment refuses a UDP_SEGMENT send (EIO, or
    # EINVAL beyond its MTU): the run goes out datagram by datagram, and so
    # does everything after; a full buffer keeps the rest for later.
    import errno

    from netshim.stacks import HostStack
    from netshim.stacks.wireguard import WireGuardLink

    class Refusing:
        family = socket.AF_INET

        def __init__(self) -> None:
            self.sent: list[bytes] = []
            self.full = False

        def sendmsg(self, buffers: list[bytes], *args: object) -> int:
            raise OSError(errno.EIO, "no segmentation here")

        def sendto(self, data: bytes, address: object) -> int:
            if self.full:
                raise BlockingIOError
            self.sent.append(data)
            return len(data)

    link = WireGuardLink(wg.WireGuardDevice(wg.generate_private_key()), HostStack())
    fake = Refusing()
    link._raw = fake  # type: ignore[assignment]
    link._gso = True
    endpoint = ("192.0.2.1", 51820)
    link._out = [(bytes([index]) * 100, endpoint) for index in range(5)]
    assert link._write_ready()
    assert fake.sent == [bytes([index]) * 100 for index in range(5)]
    assert not link._gso
    fake.full = True
    link._out = [(b"later", endpoint)]
    assert not link._write_ready()
    assert link._out == [(b"later", endpoint)]


async def test_the_link_wait_wakes_for_timers_and_for_close() -> None:
    # Nobody answers: the handshake retries come from the link's wait
    # ending at the protocol's deadlines (asyncio: its own timer handle and
    # reader; trio: a cancel scope), and the failure after the attempt time
    # too.  Closing the stack ends the wait it is in.
    from netshim.protocols.wireguard import Timers

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.setblocking(False)
        stack = WireGuardStack(
            wg.generate_private_key(),
            addresses=["10.66.0.2/24"],
            peers=[
                PeerConfig(
                    wg.public_key(wg.generate_private_key()),
                    ("10.66.0.0/24",),
                    silent.getsockname(),
                )
            ],
            # Retries every 0.05 s plus up to 0.333 s of jitter: three at least.
            timers=Timers(rekey_timeout=0.05, rekey_attempt_time=1.2),
        )
        with anyio.fail_after(20):
            async with stack:
                with pytest.raises(ConnectionError, match="failed"):
                    await stack.handshake()
                # The driver waits in the link again, with no deadline left.
                await anyio.sleep(0.05)
            initiations = []
            while True:
                try:
                    initiations.append(silent.recv(2048))
                except BlockingIOError:
                    break
    assert len(initiations) >= 3
    assert all(len(message) == 148 and message[0] == 1 for message in initiations)
    assert stack.link._reader_loop is None


async def test_the_link_writes_without_waiting_while_the_socket_takes_its_datagrams() -> None:
    # write_nowait takes a pass's packets whole (here, a packet for a peer
    # without keys: a handshake initiation goes out) or not at all: before
    # the socket is open, and while earlier datagrams wait for room.
    from netshim.stacks import HostStack
    from netshim.stacks.wireguard import WireGuardLink

    class Socket:
        family = socket.AF_INET

        def __init__(self) -> None:
            self.sent: list[bytes] = []
            self.full = False

        def sendto(self, data: bytes, address: object) -> int:
            if self.full:
                raise BlockingIOError
            self.sent.append(data)
            return len(data)

    device = wg.WireGuardDevice(wg.generate_private_key())
    peer_key = wg.public_key(wg.generate_private_key())
    device.add_peer(peer_key, endpoint=("192.0.2.1", 51820), allowed_ips=["10.66.0.0/24"])
    link = WireGuardLink(device, HostStack())
    # An IPv4 header to 10.66.0.1 (the device routes on the destination alone).
    packet = bytes([0x45, 0, 0, 20]) + bytes(8) + bytes([10, 66, 0, 2, 10, 66, 0, 1])
    assert link.write_nowait([(packet, None)]) == 0
    fake = Socket()
    link._raw = fake  # type: ignore[assignment]
    assert link.write_nowait([(packet, None)]) == 1
    assert [len(datagram) for datagram in fake.sent] == [148]
    # The socket is full: the packet is staged for the handshake, and a
    # retry's initiation would wait in the link (none is due yet).
    fake.full = True
    link._out = [(b"queued", ("192.0.2.1", 51820))]
    assert link.write_nowait([(packet, None)]) == 0
    assert link._out == [(b"queued", ("192.0.2.1", 51820))]
    fake.full = False
    assert link.write_nowait([(packet, None)]) == 1
    assert fake.sent[1:] == [b"queued"]
    assert link._out == []
