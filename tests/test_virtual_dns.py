"""Names on VirtualNetwork: the resolver host speaks real DNS, getaddrinfo uses it."""

from __future__ import annotations

import io
import socket
import struct

import anyio
import dnslib
import pytest

from netshim import VirtualHost, VirtualNetwork

pytestmark = pytest.mark.anyio


def network(**options: float) -> tuple[VirtualNetwork, VirtualHost, VirtualHost]:
    net = VirtualNetwork(seed=0, **options)  # type: ignore[arg-type]
    return net, net.add_host("web.internal", ["10.0.0.2", "fd00::2"]), net.add_host("client")


async def ask_udp(host: VirtualHost, name: str, qtype: str) -> dnslib.DNSRecord:
    """Query the resolver the way any DNS client would: a raw message on UDP port 53."""
    sock = await host.open_udp("0.0.0.0", 0)
    async with sock:
        query = dnslib.DNSRecord.question(name, qtype)
        await sock.send(bytes(query.pack()), ("10.0.0.53", 53))
        with anyio.fail_after(1):
            data, source = await sock.receive()
        assert source == ("10.0.0.53", 53)
        reply = dnslib.DNSRecord.parse(data)
        assert reply.header.id == query.header.id
        return reply


async def ask_tcp(
    host: VirtualHost, name: str, qtype: str, server: str = "10.0.0.53"
) -> dnslib.DNSRecord:
    stream = await host.connect_tcp(server, 53)
    async with stream:
        query = bytes(dnslib.DNSRecord.question(name, qtype).pack())
        await stream.send(struct.pack("!H", len(query)) + query)
        data = b""
        with anyio.fail_after(1):
            while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
                data += await stream.receive()
        return dnslib.DNSRecord.parse(data[2:])


@pytest.mark.parametrize(
    ("rtype", "value", "expected"),
    [
        ("A", "192.0.2.10", "192.0.2.10"),
        ("AAAA", "2001:db8::10", "2001:db8::10"),
        ("MX", "10 mail.example.com.", "10 mail.example.com."),
        ("TXT", '"v=spf1 -all"', '"v=spf1 -all"'),
        ("SRV", "0 5 5060 sip.example.com.", "0 5 5060 sip.example.com."),
        ("CNAME", "web.internal.", "web.internal."),
    ],
)
async def test_each_record_type_is_served_over_udp_and_tcp(
    rtype: str, value: str, expected: str
) -> None:
    net, _, client = network()
    net.add_record("thing.example.com", rtype, value, ttl=123)
    for ask in (ask_udp, ask_tcp):
        reply = await ask(client, "thing.example.com", rtype)
        assert reply.header.rcode == dnslib.RCODE.NOERROR
        answers = [rr for rr in reply.rr if rr.rtype == getattr(dnslib.QTYPE, rtype)]
        assert [str(rr.rdata) for rr in answers] == [expected]
        assert answers[0].ttl == 123


async def test_hosts_have_automatic_forward_and_reverse_records() -> None:
    _, _, client = network()
    reply = await ask_udp(client, "web.internal", "A")
    assert [str(rr.rdata) for rr in reply.rr] == ["10.0.0.2"]
    reply = await ask_udp(client, "2.0.0.10.in-addr.arpa", "PTR")
    assert [str(rr.rdata) for rr in reply.rr] == ["web.internal."]


async def test_unknown_name_is_nxdomain_and_gaierror() -> None:
    _, _, client = network()
    reply = await ask_udp(client, "missing.example", "A")
    assert reply.header.rcode == dnslib.RCODE.NXDOMAIN
    with pytest.raises(socket.gaierror) as caught:
        await client.getaddrinfo("missing.example", 80)
    assert caught.value.errno == socket.EAI_NONAME
    with pytest.raises(socket.gaierror):
        await client.connect_tcp("missing.example", 80)


async def test_name_without_addresses_is_nodata() -> None:
    net, _, client = network()
    net.add_record("mail.example.com", "MX", "10 mx.example.com.")
    with pytest.raises(socket.gaierror) as caught:
        await client.getaddrinfo("mail.example.com", 25)
    assert caught.value.errno == socket.EAI_NODATA


async def test_getaddrinfo_follows_cnames_and_filters_families() -> None:
    net, web, client = network()
    net.add_record("www.example.com", "CNAME", "web.internal.")
    infos = await client.getaddrinfo(
        "www.example.com", "https", type=socket.SOCK_STREAM, flags=socket.AI_CANONNAME
    )
    assert infos == [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "web.internal", ("fd00::2", 443, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.2", 443)),
    ]
    only_v4 = await client.getaddrinfo("www.example.com", 80, socket.AF_INET, socket.SOCK_DGRAM)
    assert only_v4 == [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("10.0.0.2", 80))]
    listener = await web.listen_tcp(None, 443)
    stream = await client.connect_tcp("www.example.com", 443)
    assert stream.remote_address == ("fd00::2", 443)
    await listener.aclose()


async def test_getaddrinfo_shape_matches_the_stdlib() -> None:
    _, _, client = network()
    for args in (("127.0.0.1", 80), ("::1", "http"), (None, 8080), ("10.1.2.3", 0)):
        assert await client.getaddrinfo(*args) == socket.getaddrinfo(*args), args
    assert await client.getaddrinfo(None, 80, flags=socket.AI_PASSIVE) == socket.getaddrinfo(
        None, 80, flags=socket.AI_PASSIVE
    )
    with pytest.raises(socket.gaierror) as caught:
        await client.getaddrinfo("127.0.0.1", 80, socket.AF_INET6)
    assert caught.value.errno == socket.EAI_ADDRFAMILY
    with pytest.raises(socket.gaierror) as caught:
        await client.getaddrinfo("web.internal", 80, flags=socket.AI_NUMERICHOST)
    assert caught.value.errno == socket.EAI_NONAME
    with pytest.raises(socket.gaierror) as caught:
        await client.getaddrinfo("web.internal", 70000)
    assert caught.value.errno == socket.EAI_SERVICE
    with pytest.raises(socket.gaierror, match="a label of 64 characters") as caught:
        await client.getaddrinfo("x" * 64 + ".example", 80)
    assert caught.value.errno == socket.EAI_NONAME


async def test_records_can_change_during_a_run() -> None:
    net, _, client = network()
    net.add_record("db.example", "A", "10.0.0.20")
    first = await client.getaddrinfo("db.example", 5432, socket.AF_INET, socket.SOCK_STREAM)
    assert first[0][4] == ("10.0.0.20", 5432)
    assert net.remove_records("db.example", "A") == 1
    net.add_record("db.example", "A", "10.0.0.21")
    second = await client.getaddrinfo("db.example", 5432, socket.AF_INET, socket.SOCK_STREAM)
    assert second[0][4] == ("10.0.0.21", 5432)


async def test_unreachable_resolver_is_a_temporary_failure() -> None:
    net, _, client = network(dns_timeout=0.05)
    net.partition(client, "resolver")
    with pytest.raises(socket.gaierror) as caught:
        await client.getaddrinfo("web.internal", 80)
    assert caught.value.errno == socket.EAI_AGAIN
    net.heal()
    assert await client.getaddrinfo("web.internal", 80, socket.AF_INET, socket.SOCK_STREAM)


async def test_large_answers_fall_back_to_tcp() -> None:
    net, _, client = network()
    for number in range(60):
        net.add_record("many.example", "A", f"10.9.0.{number + 1}")
    reply = await ask_udp(client, "many.example", "A")
    assert reply.header.tc == 1
    infos = await client.getaddrinfo("many.example", 80, socket.AF_INET, socket.SOCK_STREAM)
    assert len(infos) == 60


async def test_garbage_to_the_resolver_does_not_break_it() -> None:
    _, _, client = network()
    sock = await client.open_udp("0.0.0.0", 0)
    await sock.send(b"\x00\x01garbage", ("10.0.0.53", 53))
    await sock.send(b"", ("10.0.0.53", 53))
    stream = await client.connect_tcp("10.0.0.53", 53)
    await stream.send(b"\x00\x05abcde")
    await stream.aclose()
    reply = await ask_tcp(client, "web.internal", "AAAA", server="fd00::53")
    assert [str(rr.rdata) for rr in reply.rr] == ["fd00::2"]
    assert await client.getaddrinfo("web.internal", 80)


async def test_record_validation_names_the_problem() -> None:
    net, _, _ = network()
    with pytest.raises(ValueError, match="BOGUS"):
        net.add_record("x.example", "BOGUS", "1")
    with pytest.raises(ValueError, match=r"x\.example"):
        net.add_record("x.example", "A", "not-an-address")
    with pytest.raises(ValueError):
        net.add_record("a" * 64 + ".example", "A", "10.0.0.1")


async def test_getaddrinfo_now_answers_as_getaddrinfo_does_when_nothing_can_wait() -> None:
    net, _, client = network()
    net.add_record("www.example.com", "CNAME", "web.internal.")
    net.add_record("mail.example.com", "MX", "10 mx.example.com.")
    questions: list[tuple[object, ...]] = [
        ("web.internal", 80),
        ("www.example.com", "https", 0, socket.SOCK_STREAM, 0, socket.AI_CANONNAME),
        ("www.example.com", 80, socket.AF_INET, socket.SOCK_DGRAM),
        ("client", 22),
        ("localhost", 80),
    ]
    for question in questions:
        now = client.getaddrinfo_now(*question)  # type: ignore[arg-type]
        assert now is not None, question
        assert now == await client.getaddrinfo(*question), question  # type: ignore[arg-type]
    for name, code in (("missing.example", socket.EAI_NONAME), ("mail.example.com", None)):
        with pytest.raises(socket.gaierror) as now_error:
            client.getaddrinfo_now(name, 80)
        with pytest.raises(socket.gaierror) as awaited_error:
            await client.getaddrinfo(name, 80)
        assert now_error.value.errno == awaited_error.value.errno
        assert code is None or now_error.value.errno == code
    # Each query draws its id and binds a port as one sent over UDP would,
    # so what the network draws next is the same either way.
    now_net, _, now_client = network()
    awaited_net, _, awaited_client = network()
    assert now_client.getaddrinfo_now("web.internal", 80) is not None
    await awaited_client.getaddrinfo("web.internal", 80)
    assert now_net.rng.random() == awaited_net.rng.random()
    now_port = (await now_client.open_udp()).local_address
    assert now_port == (await awaited_client.open_udp()).local_address


async def test_getaddrinfo_now_declines_what_could_wait_or_be_seen() -> None:
    net, _, client = network()
    net.set_link(client, "resolver", latency=0.001)
    assert client.getaddrinfo_now("web.internal", 80) is None
    net.clear_faults()
    net.partition(client, "resolver")
    assert client.getaddrinfo_now("web.internal", 80) is None
    net.heal()
    assert client.getaddrinfo_now("web.internal", 80) is not None
    capture = net.capture(io.BytesIO())
    assert client.getaddrinfo_now("web.internal", 80) is None  # the queries belong in it
    capture.close()
    client.resolvers = ["10.0.0.99"]  # nobody there
    assert client.getaddrinfo_now("web.internal", 80) is None
