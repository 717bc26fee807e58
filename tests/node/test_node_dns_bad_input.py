"""netshim.dns under bad input: fuzzed messages, over-long names, floods."""

from __future__ import annotations

import contextlib
import struct

import anyio
import dnslib
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netshim import VirtualNetwork, dns
from netshim.protocols.dns import DnsTcpFramer, build_query

pytestmark = pytest.mark.anyio

VALID_QUERY = build_query("example.test", "A", 0x1234)


def zone() -> dns.Zone:
    z = dns.Zone()
    z.add("example.test", "A", "192.0.2.1")
    z.add("*.wild.test", "TXT", '"wild"')
    return z


def mutations() -> st.SearchStrategy[bytes]:
    """Random bytes, and valid queries with bytes flipped, cut or appended."""
    flipped = st.tuples(
        st.integers(0, len(VALID_QUERY) - 1), st.integers(0, 255), st.binary(max_size=8)
    ).map(lambda t: VALID_QUERY[: t[0]] + bytes([t[1]]) + VALID_QUERY[t[0] + 1 :] + t[2])
    cut = st.integers(0, len(VALID_QUERY)).map(lambda n: VALID_QUERY[:n])
    return st.one_of(st.binary(max_size=600), flipped, cut)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=mutations())
def test_server_answers_or_drops_any_bytes(message: bytes) -> None:
    net = VirtualNetwork(seed=0)
    server = dns.serve(net.add_host("ns"), zone(), port=53)

    def handler(request: dns.Request) -> list[dns.Record]:
        return [dns.Record("A", "192.0.2.9")]

    handled = dns.serve(net.add_host("ns2"), handler, port=53)

    async def main() -> None:
        for each in (server, handled):
            for transport in ("udp", "tcp"):
                reply = await each.answer(message, ("10.0.0.9", 1234), transport)  # type: ignore[arg-type]
                if reply is not None:
                    assert len(reply) >= 12
                    assert reply[:2] == message[:2]
                    assert reply[2] & 0x80  # a response

    anyio.run(main)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reply=st.one_of(st.binary(max_size=300), mutations()))
def test_resolver_survives_any_reply(reply: bytes) -> None:
    """Whatever a server sends back, the resolver raises DnsError or returns records."""
    net = VirtualNetwork(seed=0)
    ns, client = net.add_host("ns"), net.add_host("client")

    def handler(request: dns.Request) -> bytes:
        return reply if len(reply) >= 12 else reply + bytes(12)

    async def main() -> None:
        async with dns.serve(ns, handler, port=53):
            resolver = dns.Resolver(stack=client, servers=["10.0.0.2"], timeout=0.05, tries=1)
            for rtype in ("A", "TXT"):
                with contextlib.suppress(dns.DnsError):
                    await resolver.resolve("example.test", rtype)

    anyio.run(main)


async def test_garbage_over_the_network_does_not_stop_the_server() -> None:
    net = VirtualNetwork(seed=1)
    ns, client = net.add_host("ns"), net.add_host("client")
    async with dns.serve(ns, zone(), port=53) as server:
        sock = await client.open_udp("0.0.0.0", 0)
        for garbage in (b"", b"\x00", bytes(11), b"\xff" * 600, VALID_QUERY[:20]):
            await sock.send(garbage, ("10.0.0.2", 53))
        await sock.aclose()
        stream = await client.connect_tcp("10.0.0.2", 53)
        await stream.send(struct.pack("!H", 3) + b"abc")  # shorter than a header
        with pytest.raises((anyio.EndOfStream, ConnectionResetError)):
            await stream.receive()
        await stream.aclose()
        stream = await client.connect_tcp("10.0.0.2", 53)
        await stream.send(struct.pack("!H", 100) + b"\x00" * 10)  # cut short by EOF
        await stream.send_eof()
        with pytest.raises((anyio.EndOfStream, ConnectionResetError)):
            await stream.receive()
        await stream.aclose()
        resolver = dns.Resolver(stack=client, servers=["10.0.0.2"], timeout=1, tries=1)
        assert await resolver.resolve4("example.test") == ["192.0.2.1"]
        assert server.errors >= 1  # the short length prefix


def test_names_beyond_rfc_1035_are_rejected_clearly() -> None:
    z = dns.Zone()
    with pytest.raises(ValueError, match="at most 63"):
        z.add("a" * 64 + ".test", "A", "192.0.2.1")
    with pytest.raises(ValueError, match="at most 253"):
        z.add(".".join(["a" * 60] * 5), "A", "192.0.2.1")
    with pytest.raises(ValueError, match="at most 63"):
        build_query("b" * 70 + ".test", "A", 1)


async def test_handler_records_with_bad_names_give_servfail() -> None:
    net = VirtualNetwork(seed=1)
    ns, client = net.add_host("ns"), net.add_host("client")

    def handler(request: dns.Request) -> list[dns.Record]:
        return [dns.Record("CNAME", "x" * 64 + ".test.")]

    async with dns.serve(ns, handler, port=53) as server:
        resolver = dns.Resolver(stack=client, servers=["10.0.0.2"], timeout=1, tries=1)
        with pytest.raises(dns.DnsError) as caught:
            await resolver.resolve4("example.test")
        assert caught.value.code == dns.SERVFAIL
        assert server.errors == 1


async def test_a_flood_is_answered_or_dropped_within_bounds() -> None:
    net = VirtualNetwork(seed=1)
    ns, client = net.add_host("ns"), net.add_host("client")
    peak = 0
    release = anyio.Event()

    async def slow(request: dns.Request) -> list[dns.Record]:
        nonlocal peak
        peak = max(peak, server._in_flight)
        await release.wait()
        return [dns.Record("A", "192.0.2.1")]

    async with dns.serve(ns, slow, port=53, max_in_flight=32, max_connections=4) as server:
        sock = await client.open_udp("0.0.0.0", 0)
        for query_id in range(2000):
            await sock.send(build_query("flood.test", "A", query_id), ("10.0.0.2", 53))
        await anyio.sleep(0.05)
        assert peak <= 32
        assert server._in_flight == 32
        # The socket's receive buffer bounds what waits unread; the rest was dropped.
        assert server.dropped > 0
        release.set()
        answered = 0
        with anyio.move_on_after(0.2):
            async for data, _ in sock:
                assert dnslib.DNSRecord.parse(data).a.rdata is not None
                answered += 1
        assert answered >= 32
        assert answered + server.dropped == server.queries
        await sock.aclose()
        # TCP: connections beyond max_connections are closed at once.
        streams = [await client.connect_tcp("10.0.0.2", 53) for _ in range(6)]
        await anyio.sleep(0.01)
        closed = 0
        for stream in streams:
            await stream.send(DnsTcpFramer.frame(VALID_QUERY))
            with anyio.move_on_after(0.2):
                try:
                    await stream.receive()
                except (anyio.EndOfStream, ConnectionResetError):
                    closed += 1
            await stream.aclose()
        assert closed == 2
