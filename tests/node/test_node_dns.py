"""netshim.dns: resolver and server speaking real DNS over the virtual network."""

from __future__ import annotations

import ssl
from typing import Any

import anyio
import pytest
import trustme
from anyio.streams.tls import TLSStream

from netshim import VirtualHost, VirtualNetwork, dns, use_stack
from netshim.dns import promises
from netshim.protocols.dns import answer_query

pytestmark = pytest.mark.anyio


def example_zone() -> dns.Zone:
    zone = dns.Zone()
    zone.add("example.test", "SOA", "ns1.example.test. admin.example.test. 7 3600 600 86400 60")
    zone.add("example.test", "NS", "ns1.example.test.")
    zone.add("example.test", "A", "192.0.2.1", ttl=120)
    zone.add("example.test", "A", "192.0.2.2", ttl=120)
    zone.add("example.test", "AAAA", "2001:db8::1")
    zone.add("example.test", "MX", "10 mail.example.test.")
    zone.add("example.test", "MX", "20 backup.example.test.")
    zone.add("example.test", "TXT", '"v=spf1 -all"')
    zone.add("example.test", "TXT", '"two" "chunks"')
    zone.add("example.test", "CAA", '0 issue "ca.example.net"')
    zone.add("www.example.test", "CNAME", "example.test.")
    zone.add("_sip._udp.example.test", "SRV", "5 10 5060 sip.example.test.")
    zone.add("example.test", "NAPTR", '100 10 "S" "SIP+D2U" "" _sip._udp.example.test.')
    zone.add("1.2.0.192.in-addr.arpa", "PTR", "example.test.")
    zone.add("*.wild.example.test", "A", "192.0.2.99")
    zone.add("outside.example.test", "CNAME", "target.other.test.")
    return zone


def network() -> tuple[VirtualNetwork, VirtualHost, VirtualHost]:
    net = VirtualNetwork(seed=3)
    return net, net.add_host("ns"), net.add_host("client")


async def test_every_record_type_from_our_server() -> None:
    _, ns, client = network()
    async with dns.serve(ns, example_zone(), host="0.0.0.0", port=53):
        resolver = dns.Resolver(stack=client, servers=["10.0.0.2"], timeout=1, tries=1)
        assert await resolver.resolve4("example.test") == ["192.0.2.1", "192.0.2.2"]
        assert await resolver.resolve4("example.test", ttl=True) == [
            dns.AddressRecord("192.0.2.1", 120),
            dns.AddressRecord("192.0.2.2", 120),
        ]
        assert await resolver.resolve6("example.test") == ["2001:db8::1"]
        assert await resolver.resolve_mx("example.test") == [
            dns.MxRecord(10, "mail.example.test"),
            dns.MxRecord(20, "backup.example.test"),
        ]
        assert await resolver.resolve_txt("example.test") == [["v=spf1 -all"], ["two", "chunks"]]
        assert await resolver.resolve_caa("example.test") == [
            dns.CaaRecord(0, "issue", "ca.example.net")
        ]
        assert await resolver.resolve_ns("example.test") == ["ns1.example.test"]
        assert await resolver.resolve_soa("example.test") == dns.SoaRecord(
            "ns1.example.test", "admin.example.test", 7, 3600, 600, 86400, 60
        )
        assert await resolver.resolve_srv("_sip._udp.example.test") == [
            dns.SrvRecord(5, 10, 5060, "sip.example.test")
        ]
        assert await resolver.resolve_naptr("example.test") == [
            dns.NaptrRecord(100, 10, "S", "SIP+D2U", "", "_sip._udp.example.test")
        ]
        assert await resolver.resolve_cname("www.example.test") == ["example.test"]
        assert await resolver.resolve_ptr("1.2.0.192.in-addr.arpa") == ["example.test"]
        assert await resolver.reverse("192.0.2.1") == ["example.test"]
        assert await resolver.resolve4("www.example.test") == ["192.0.2.1", "192.0.2.2"]
        assert await resolver.resolve4("anything.wild.example.test") == ["192.0.2.99"]
        assert await resolver.resolve("example.test", "MX") == await resolver.resolve_mx(
            "example.test"
        )
        assert await resolver.resolve("example.test", "SOA") == [
            await resolver.resolve_soa("example.test")
        ]
        kinds = {entry["type"] for entry in await resolver.resolve_any("example.test")}
        assert kinds == {"SOA", "NS", "A", "AAAA", "MX", "TXT", "CAA", "NAPTR"}
        (mx_entry,) = [e for e in await resolver.resolve_any("example.test") if e["type"] == "MX"][
            :1
        ]
        assert mx_entry == {"type": "MX", "priority": 10, "exchange": "mail.example.test"}


async def test_error_codes() -> None:
    _, ns, client = network()
    async with dns.serve(ns, example_zone(), port=53):
        resolver = dns.Resolver(stack=client, servers=["10.0.0.2"], timeout=0.2, tries=2)
        with pytest.raises(dns.DnsError) as caught:
            await resolver.resolve4("missing.example.test")
        assert (caught.value.code, caught.value.syscall) == (dns.NOTFOUND, "queryA")
        assert caught.value.hostname == "missing.example.test"
        with pytest.raises(dns.DnsError) as caught:
            await resolver.resolve_srv("example.test")
        assert (caught.value.code, caught.value.syscall) == (dns.NODATA, "querySrv")
        with pytest.raises(dns.DnsNameError) as name_error:
            await resolver.resolve4("x" * 64 + ".example.test")
        assert name_error.value.code == dns.BADNAME
        assert "at most 63" in str(name_error.value)
        assert isinstance(name_error.value, ValueError)
        with pytest.raises(dns.DnsNameError, match="at most 253"):
            await resolver.resolve4(".".join(["abcdefgh"] * 40))
    # Nobody answers any more: ETIMEOUT after tries x timeout.
    resolver = dns.Resolver(stack=client, servers=["10.0.0.2"], timeout=0.05, tries=2)
    with pytest.raises(dns.DnsError) as caught:
        await resolver.resolve4("example.test")
    assert caught.value.code in (dns.TIMEOUT, dns.CONNREFUSED)


async def test_refused_and_servfail_move_to_the_next_server() -> None:
    net, ns, client = network()
    other = net.add_host("ns2")

    def refuse(request: dns.Request) -> bytes:
        # A hand-made REFUSED reply: header only, QR and RCODE 5 set.
        return request.message[:2] + b"\x81\x05" + b"\x00" * 8

    async with (
        dns.serve(ns, refuse, port=53),
        dns.serve(other, example_zone(), port=53),
    ):
        resolver = dns.Resolver(stack=client, servers=["10.0.0.2", "10.0.0.4"], timeout=1)
        assert await resolver.resolve4("example.test") == ["192.0.2.1", "192.0.2.2"]
        alone = dns.Resolver(stack=client, servers=["10.0.0.2"], timeout=1)
        with pytest.raises(dns.DnsError) as caught:
            await alone.resolve4("example.test")
        assert caught.value.code == dns.REFUSED


async def test_truncated_answers_are_asked_again_over_tcp() -> None:
    _, ns, client = network()
    zone = dns.Zone()
    for index in range(40):
        zone.add("big.test", "TXT", f'"{index:02d} {"x" * 60}"')
    async with dns.serve(ns, zone, port=53) as server:
        resolver = dns.Resolver(stack=client, servers=["10.0.0.2"], edns=False)
        records = await resolver.resolve_txt("big.test")
        assert len(records) == 40
        assert records[0][0].startswith("00 ")
        assert server.queries == 2  # UDP with TC set, then TCP.
        tcp_only = dns.Resolver(stack=client, servers=["10.0.0.2"], transport="tcp")
        assert len(await tcp_only.resolve_txt("big.test")) == 40
        assert server.queries == 3


async def test_cache_answers_until_the_ttl_runs_out() -> None:
    _, ns, client = network()
    zone = dns.Zone()
    zone.add("cached.test", "A", "192.0.2.7", ttl=1)
    async with dns.serve(ns, zone, port=53) as server:
        resolver = dns.Resolver(stack=client, servers=["10.0.0.2"])
        assert await resolver.resolve4("cached.test") == ["192.0.2.7"]
        assert await resolver.resolve4("cached.test") == ["192.0.2.7"]
        assert server.queries == 1
        assert resolver.cache_entries == 1
        await anyio.sleep(1.05)
        assert await resolver.resolve4("cached.test") == ["192.0.2.7"]
        assert server.queries == 2
        uncached = dns.Resolver(stack=client, servers=["10.0.0.2"], cache_size=0)
        await uncached.resolve4("cached.test")
        await uncached.resolve4("cached.test")
        assert server.queries == 4


async def test_cname_pointing_elsewhere_is_chased() -> None:
    _, ns, client = network()
    zone = example_zone()
    zone.add("target.other.test", "A", "198.51.100.5")
    async with dns.serve(ns, example_zone(), port=53), dns.serve(client, zone, port=5353):
        # The first server knows only the CNAME; a second query asks for its target.
        chained = dns.Resolver(stack=client, servers=["10.0.0.2"])
        with pytest.raises(dns.DnsError) as caught:
            await chained.resolve4("outside.example.test")
        assert caught.value.code == dns.NOTFOUND
        both = dns.Resolver(stack=client, servers=["127.0.0.1:5353"])
        assert await both.resolve4("outside.example.test") == ["198.51.100.5"]
        assert await both.resolve_cname("outside.example.test") == ["target.other.test"]


async def test_handler_and_forwarding() -> None:
    net, ns, client = network()
    upstream_host = net.add_host("upstream")
    seen: list[dns.Request] = []

    async def handler(request: dns.Request) -> Any:
        seen.append(request)
        if request.name == "dynamic.test":
            return [dns.Record("A", "203.0.113.9", ttl=5), dns.Record("TXT", '"hi"')]
        if request.name == "empty.test":
            return []
        if request.name == "broken.test":
            raise RuntimeError("handler bug")
        return None

    async with (
        dns.serve(upstream_host, example_zone(), port=53),
        dns.serve(ns, handler, port=53, upstream="10.0.0.4") as server,
    ):
        resolver = dns.Resolver(stack=client, servers=["10.0.0.2"], timeout=1, tries=1)
        assert await resolver.resolve4("dynamic.test", ttl=True) == [
            dns.AddressRecord("203.0.113.9", 5)
        ]
        assert await resolver.resolve_txt("dynamic.test") == [["hi"]]
        with pytest.raises(dns.DnsError) as caught:
            await resolver.resolve4("empty.test")
        assert caught.value.code == dns.NODATA
        with pytest.raises(dns.DnsError) as caught:
            await resolver.resolve4("broken.test")
        assert caught.value.code == dns.SERVFAIL
        assert server.errors == 1
        # Not the handler's: forwarded to the upstream and relayed back.
        assert await resolver.resolve_mx("example.test") == [
            dns.MxRecord(10, "mail.example.test"),
            dns.MxRecord(20, "backup.example.test"),
        ]
        assert seen[0].client[0] == "10.0.0.3"
        assert seen[0].transport == "udp"
        assert seen[0].type == "A"


async def test_zone_with_upstream_forwards_only_unknown_names() -> None:
    net, ns, client = network()
    upstream_host = net.add_host("upstream")
    local = dns.Zone()
    local.add("example.test", "A", "10.9.9.9")
    async with (
        dns.serve(upstream_host, example_zone(), port=53),
        dns.serve(ns, local, port=53, upstream="10.0.0.4"),
    ):
        resolver = dns.Resolver(stack=client, servers=["10.0.0.2"], timeout=1, tries=1)
        assert await resolver.resolve4("example.test") == ["10.9.9.9"]
        assert await resolver.resolve_srv("_sip._udp.example.test") == [
            dns.SrvRecord(5, 10, 5060, "sip.example.test")
        ]


async def test_module_functions_use_the_current_stack() -> None:
    net, ns, client = network()
    net.add_record("site.test", "A", "192.0.2.50")
    net.add_record("site.test", "MX", "5 mx.site.test.")
    with use_stack(client):
        assert dns.get_servers() == ["10.0.0.53", "fd00::53"]
        assert await dns.resolve4("site.test") == ["192.0.2.50"]
        assert await promises.resolve_mx("site.test") == [dns.MxRecord(5, "mx.site.test")]
        assert await dns.reverse("10.0.0.2") == ["ns"]
        assert await dns.lookup_service("10.0.0.2", 22) == ("ns", "ssh")
        assert await dns.lookup("site.test") == dns.LookupAddress("192.0.2.50", 4)
        assert await dns.lookup("ns", all=True) == [
            dns.LookupAddress("fd00::2", 6),
            dns.LookupAddress("10.0.0.2", 4),
        ]
        assert await dns.lookup("ns", all=True, order="ipv4first") == [
            dns.LookupAddress("10.0.0.2", 4),
            dns.LookupAddress("fd00::2", 6),
        ]
        assert await dns.lookup("ns", 4) == dns.LookupAddress("10.0.0.2", 4)
        with pytest.raises(dns.DnsError) as caught:
            await dns.lookup("nowhere.test")
        assert (caught.value.code, caught.value.syscall) == (dns.NOTFOUND, "getaddrinfo")
        with pytest.raises(dns.DnsError) as caught:
            await dns.lookup("ns", 5)
        assert caught.value.code == dns.BADFAMILY
        async with dns.serve(ns, example_zone(), port=53):
            dns.set_servers(["10.0.0.2"])
            try:
                assert dns.get_servers() == ["10.0.0.2"]
                assert await dns.resolve4("example.test") == ["192.0.2.1", "192.0.2.2"]
            finally:
                dns.set_servers(None)
            assert dns.get_servers() == ["10.0.0.53", "fd00::53"]


def test_server_addresses_round_trip() -> None:
    resolver = dns.Resolver(servers=["1.2.3.4", "1.2.3.4:5353", "::1", "[::1]:5353"])
    assert resolver.get_servers() == ["1.2.3.4", "1.2.3.4:5353", "::1", "[::1]:5353"]
    for bad in ("example.com", "1.2.3.4:x", "[::1]x", "1.2.3.4:0"):
        with pytest.raises(ValueError, match="invalid DNS server"):
            resolver.set_servers([bad])
    assert resolver.get_servers() == ["1.2.3.4", "1.2.3.4:5353", "::1", "[::1]:5353"]
    with pytest.raises(ValueError, match="tries"):
        dns.Resolver(tries=0)


async def test_cancel_fails_outstanding_queries() -> None:
    net, ns, client = network()
    net.partition(ns, client)
    resolver = dns.Resolver(stack=client, servers=["10.0.0.2"], timeout=10)
    outcome: list[Any] = []

    async def ask() -> None:
        try:
            await resolver.resolve4("example.test")
        except dns.DnsError as exc:
            outcome.append(exc.code)

    with anyio.fail_after(2):
        async with anyio.create_task_group() as group:
            group.start_soon(ask)
            group.start_soon(ask)
            await anyio.sleep(0.05)
            resolver.cancel()
    assert outcome == [dns.CANCELLED, dns.CANCELLED]


async def test_dns_over_https_on_the_virtual_network() -> None:
    """A DoH client on a stack with no UDP path: an in-process HTTPS server answers."""
    net, ns, client = network()
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("doh.test").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    net.add_record("doh.test", "A", "10.0.0.2")
    zone = example_zone()
    requests: list[bytes] = []

    async def handle(stream: Any) -> None:
        try:
            tls = await TLSStream.wrap(stream, server_side=True, ssl_context=server_context)
        except anyio.BrokenResourceError:
            return  # The client rejected our certificate, as the last check wants.
        data = b""
        while b"\r\n\r\n" not in data:
            data += await tls.receive()
        head, _, body = data.partition(b"\r\n\r\n")
        requests.append(head)
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += await tls.receive()
        reply = answer_query(zone, body, max_udp_size=None) or b""
        await tls.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/dns-message\r\n"
            + f"Content-Length: {len(reply)}\r\n\r\n".encode()
            + reply
        )
        await tls.aclose()

    listener = await ns.listen_tcp("0.0.0.0", 443)
    async with anyio.create_task_group() as group:
        group.start_soon(listener.serve, handle)
        resolver = dns.Resolver(
            stack=client,
            transport="https",
            doh_url="https://doh.test/dns-query",
            ssl_context=client_context,
            timeout=2,
            tries=1,
        )
        assert await resolver.resolve_mx("example.test") == [
            dns.MxRecord(10, "mail.example.test"),
            dns.MxRecord(20, "backup.example.test"),
        ]
        assert requests[0].startswith(b"POST /dns-query HTTP/1.1\r\n")
        assert b"content-type: application/dns-message" in requests[0].lower()
        # A server whose certificate does not verify gives no answer.
        untrusting = dns.Resolver(
            stack=client, transport="https", doh_url="https://doh.test/", timeout=2, tries=1
        )
        with pytest.raises(dns.DnsError) as caught:
            await untrusting.resolve4("example.test")
        assert caught.value.code == dns.BADRESP
        await listener.aclose()
