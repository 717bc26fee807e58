"""dnspython asking the virtual network's resolver (10.0.0.53) over UDP and TCP."""

from __future__ import annotations

import asyncio

import dns.asyncquery
import dns.asyncresolver
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.reversename
import pytest
from compat_helpers import Installed

RESOLVER = "10.0.0.53"


def test_dnspython_query_over_udp_and_tcp(installed: Installed) -> None:
    installed.net.add_record("mail.internal", "MX", "10 web.internal.")
    installed.net.add_record("web.internal", "TXT", '"v=spf1 -all"')
    query = dns.message.make_query("web.internal", dns.rdatatype.A)
    over_udp = dns.query.udp(query, RESOLVER, timeout=5)
    assert over_udp.rcode() == dns.rcode.NOERROR
    assert over_udp.id == query.id
    assert [item.address for item in over_udp.answer[0]] == ["10.0.0.2"]
    query = dns.message.make_query("web.internal", dns.rdatatype.AAAA)
    over_tcp = dns.query.tcp(query, RESOLVER, timeout=5)
    assert [item.address for item in over_tcp.answer[0]] == ["fd00::2"]
    mx = dns.query.tcp(dns.message.make_query("mail.internal", "MX"), "fd00::53", timeout=5)
    [record] = mx.answer[0]
    assert (record.preference, str(record.exchange)) == (10, "web.internal.")
    txt = dns.query.udp(dns.message.make_query("web.internal", "TXT"), RESOLVER, timeout=5)
    assert [record.strings for record in txt.answer[0]] == [(b"v=spf1 -all",)]
    missing = dns.query.udp(dns.message.make_query("nowhere.internal", "A"), RESOLVER, timeout=5)
    assert missing.rcode() == dns.rcode.NXDOMAIN


def test_dnspython_stub_resolver(installed: Installed) -> None:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [RESOLVER]
    resolver.lifetime = 5
    answer = resolver.resolve("client", "A")
    assert [item.address for item in answer] == ["10.0.0.3"]
    assert answer.nameserver == RESOLVER
    answer = resolver.resolve("web.internal", "AAAA", tcp=True)
    assert [item.address for item in answer] == ["fd00::2"]
    reverse = resolver.resolve(dns.reversename.from_address("10.0.0.2"), "PTR")
    assert [str(item) for item in reverse] == ["web.internal."]
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("nowhere.internal", "A")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_dnspython_async(installed: Installed, backend: str) -> None:
    import dns.asyncbackend

    async def main() -> None:
        use = dns.asyncbackend.get_backend(backend)
        query = dns.message.make_query("web.internal", "A")
        reply = await dns.asyncquery.udp(query, RESOLVER, timeout=5, backend=use)
        assert [item.address for item in reply.answer[0]] == ["10.0.0.2"]
        reply = await dns.asyncquery.tcp(query, RESOLVER, timeout=5, backend=use)
        assert [item.address for item in reply.answer[0]] == ["10.0.0.2"]
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = ["fd00::53"]
        answer = await resolver.resolve("client", "AAAA", backend=use)
        assert [item.address for item in answer] == ["fd00::3"]

    if backend == "trio":
        import trio

        trio.run(main)
    else:
        asyncio.run(asyncio.wait_for(main(), 20))
