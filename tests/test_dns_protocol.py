"""The sans-I/O DNS core: zone answers, the stub-resolver client and TCP framing."""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Sequence
from typing import TypeVar

import pytest
from dnslib import (
    CLASS,
    CNAME,
    EDNS0,
    QTYPE,
    RCODE,
    RD,
    RR,
    TXT,
    A,
    DNSBuffer,
    DNSHeader,
    DNSQuestion,
    DNSRecord,
)
from hypothesis import example, given
from hypothesis import strategies as st

from netshim._errors import LocalProtocolError, RemoteProtocolError
from netshim.protocols.dns import (
    CLASSIC_UDP_SIZE,
    DEFAULT_MAX_BUFFERED,
    EDNS_PAYLOAD_SIZE,
    MAX_CNAME_CHAIN,
    SUPPORTED_TYPES,
    DnsAnswer,
    DnsResponse,
    DnsTcpFramer,
    Zone,
    answer_query,
    build_query,
    from_reverse_name,
    parse_response,
    reverse_name,
)

E = TypeVar("E", bound=BaseException)

SOA_VALUE = "ns1.example.com. hostmaster.example.com. 2024010101 7200 3600 1209600 60"


def raises(error: type[E], message: str) -> pytest.RaisesExc[E]:
    """``pytest.raises`` for exactly ``message``."""
    return pytest.raises(error, match=f"^{re.escape(message)}$")


def make_zone() -> Zone:
    zone = Zone()
    zone.add("example.com", "SOA", SOA_VALUE, ttl=3600)
    zone.add("example.com", "NS", "ns1.example.com.")
    zone.add("example.com", "A", "192.0.2.1")
    zone.add("example.com", "MX", "10 mail.example.com.")
    zone.add("ns1.example.com", "A", "192.0.2.53")
    zone.add("www.example.com", "CNAME", "web.example.com.")
    zone.add("web.example.com", "AAAA", "2001:db8::80")
    zone.add("web.example.com", "A", "192.0.2.80", ttl=60)
    zone.add("web.example.com", "A", "192.0.2.81", ttl=60)
    zone.add("*.apps.example.com", "A", "192.0.2.100")
    zone.add("deep.a.b.example.com", "TXT", "deep")
    return zone


def ask(
    zone: Zone,
    name: str,
    rtype: str,
    *,
    max_udp_size: int | None = CLASSIC_UDP_SIZE,
    edns_payload_size: int | None = EDNS_PAYLOAD_SIZE,
) -> DNSRecord:
    query = build_query(name, rtype, 0x1234, edns_payload_size=edns_payload_size)
    reply = answer_query(zone, query, max_udp_size=max_udp_size)
    assert reply is not None
    return DNSRecord.parse(reply)


def resolve(
    zone: Zone, name: str, rtype: str, *, max_udp_size: int | None = CLASSIC_UDP_SIZE
) -> DnsResponse:
    query = build_query(name, rtype, 77)
    reply = answer_query(zone, query, max_udp_size=max_udp_size)
    assert reply is not None
    return parse_response(reply, query_id=77, name=name, rtype=rtype)


def rdata_wire(zone: Zone) -> list[bytes]:
    wire = []
    for rr in zone:
        buffer = DNSBuffer()
        assert isinstance(rr.rdata, RD)
        rr.rdata.pack(buffer)
        wire.append(bytes(buffer.data))
    return wire


def answer_values(record: DNSRecord) -> list[tuple[str, str, str]]:
    return [(str(rr.rname), QTYPE[rr.rtype], str(rr.rdata)) for rr in record.rr]


def query_bytes(
    name: str | list[bytes] = "example.com",
    qtype: int = 1,
    *,
    query_id: int = 0x4242,
    opcode: int = 0,
    qclass: int = 1,
    questions: int = 1,
    additional: Sequence[RR] = (),
) -> bytes:
    header = DNSHeader(id=query_id, bitmap=0, rd=1, opcode=opcode)
    record = DNSRecord(header, questions=[DNSQuestion(name, qtype, qclass)] * questions)
    record.add_ar(*additional)
    return bytes(record.pack())


# --- every record type -----------------------------------------------------

TYPE_CASES = [
    ("A", "192.0.2.7", "192.0.2.7"),
    ("AAAA", "2001:DB8:0:0::7", "2001:db8::7"),
    ("CNAME", "target.example.net", "target.example.net."),
    ("MX", "10 mail.example.com.", "10 mail.example.com."),
    ("MX", "0 .", "0 ."),
    ("TXT", '"v=spf1 -all" second', '"v=spf1 -all" "second"'),
    ("TXT", '"caf\\195\\169 \\"quoted\\""', '"caf\\195\\169 \\"quoted\\""'),
    ("SRV", "0 5 5060 sip.example.com.", "0 5 5060 sip.example.com."),
    ("PTR", "host.example.com.", "host.example.com."),
    ("NS", "ns2.example.net.", "ns2.example.net."),
    ("SOA", SOA_VALUE, SOA_VALUE),
    ("CAA", '0 issue "letsencrypt.org"', '0 issue "letsencrypt.org"'),
    (
        "NAPTR",
        '100 10 "U" "E2U+sip" "!^.*$!sip:info@example.com!" .',
        '100 10 "U" "E2U+sip" "!^.*$!sip:info@example.com!" .',
    ),
]


@pytest.mark.parametrize(("rtype", "value", "text"), TYPE_CASES)
def test_each_type_is_added_and_answered(rtype: str, value: str, text: str) -> None:
    zone = Zone()
    zone.add("item.example.com", rtype, value, ttl=120)
    response = resolve(zone, "item.example.com", rtype)
    assert response.rcode == RCODE.NOERROR
    assert response.answers == (DnsAnswer("item.example.com", rtype, 120, text),)
    # The text the client reads is zone-file text the zone reads back.
    again = Zone()
    again.add("item.example.com", rtype, response.answers[0].value, ttl=120)
    assert rdata_wire(again) == rdata_wire(zone)


def test_supported_types() -> None:
    assert tuple(sorted({case[0] for case in TYPE_CASES})) == SUPPORTED_TYPES


def test_types_and_names_are_case_insensitive() -> None:
    zone = Zone()
    zone.add("Mixed.Example.COM.", "mx", "5 Mail.Example.com")
    assert [str(rr.rname) for rr in zone] == ["mixed.example.com."]
    assert len(zone.lookup("MIXED.example.com", "MX")) == 1
    response = resolve(zone, "mIxEd.ExAmPlE.cOm", "MX")
    assert response.answers[0].value == "5 mail.example.com."  # names are kept lower-case


def test_idna_names_are_encoded() -> None:
    zone = Zone()
    zone.add("bücher.example", "A", "192.0.2.5")
    assert [str(rr.rname) for rr in zone] == ["xn--bcher-kva.example."]
    assert resolve(zone, "xn--bcher-kva.example", "A").addresses() == ["192.0.2.5"]
    assert resolve(zone, "BÜCHER.example", "A").addresses() == ["192.0.2.5"]


def test_answers_keep_the_order_records_were_added() -> None:
    zone = make_zone()
    assert resolve(zone, "web.example.com", "A").addresses() == ["192.0.2.80", "192.0.2.81"]


def test_adding_the_same_record_twice_keeps_one() -> None:
    zone = Zone()
    first = zone.add("a.example", "A", "192.0.2.1")
    second = zone.add("a.example.", "A", "192.0.2.1", ttl=10)
    assert first is second
    assert len(zone) == 1


def test_lookup_iteration_len_and_repr() -> None:
    zone = make_zone()
    assert len(zone) == 11
    assert repr(zone) == "<Zone: 11 records at 6 names>"
    assert [QTYPE[rr.rtype] for rr in zone][:4] == ["SOA", "NS", "A", "MX"]
    assert [str(rr.rdata) for rr in zone.lookup("example.com", "A")] == ["192.0.2.1"]
    assert len(zone.lookup("example.com", "ANY")) == 4
    assert zone.lookup("example.com", "TXT") == []
    assert zone.lookup("missing.example.com", "A") == []
    wildcard = zone.lookup("x.apps.example.com", "A")
    assert [(str(rr.rname), str(rr.rdata)) for rr in wildcard] == [
        ("x.apps.example.com.", "192.0.2.100")
    ]
    assert zone.lookup("www.example.com", "A") == []  # CNAMEs are not followed


def test_remove() -> None:
    zone = make_zone()
    assert zone.remove("web.example.com", "A") == 2
    assert zone.remove("web.example.com", "A") == 0
    assert resolve(zone, "web.example.com", "AAAA").addresses() == ["2001:db8::80"]
    assert zone.remove("example.com") == 4
    assert zone.remove("nothing.example.com") == 0
    assert len(zone) == 5
    assert resolve(zone, "example.com", "A").rcode == RCODE.NOERROR  # still an ancestor
    assert zone.remove("*.apps.example.com") == 1
    assert resolve(zone, "x.apps.example.com", "A").rcode == RCODE.NXDOMAIN


def test_removing_the_last_name_below_removes_the_empty_non_terminal() -> None:
    zone = make_zone()
    assert resolve(zone, "a.b.example.com", "A").rcode == RCODE.NOERROR
    zone.remove("deep.a.b.example.com", "TXT")
    assert resolve(zone, "a.b.example.com", "A").rcode == RCODE.NXDOMAIN
    assert resolve(zone, "b.example.com", "A").rcode == RCODE.NXDOMAIN


# --- answers ---------------------------------------------------------------


def test_answer_header() -> None:
    record = ask(make_zone(), "example.com", "A")
    assert record.header.id == 0x1234
    assert (record.header.qr, record.header.aa, record.header.rd, record.header.ra) == (1, 1, 1, 1)
    assert record.header.tc == 0
    assert [str(q.qname) for q in record.questions] == ["example.com."]
    assert answer_values(record) == [("example.com.", "A", "192.0.2.1")]
    assert record.auth == []


def test_recursion_flags() -> None:
    query = build_query("example.com", "A", 9, recursion_desired=False)
    reply = answer_query(make_zone(), query, recursion_available=False)
    assert reply is not None
    header = DNSRecord.parse(reply).header
    assert (header.rd, header.ra) == (0, 0)


def test_cname_chain_is_followed() -> None:
    zone = make_zone()
    response = resolve(zone, "www.example.com", "AAAA")
    assert response.answers == (
        DnsAnswer("www.example.com", "CNAME", 300, "web.example.com."),
        DnsAnswer("web.example.com", "AAAA", 300, "2001:db8::80"),
    )
    assert response.canonical_name == "web.example.com"
    assert response.addresses() == ["2001:db8::80"]


def test_long_cname_chain() -> None:
    zone = Zone()
    for i in range(3):
        zone.add(f"c{i}.example", "CNAME", f"c{i + 1}.example")
    zone.add("c3.example", "A", "192.0.2.3")
    response = resolve(zone, "c0.example", "A")
    assert [a.rtype for a in response.answers] == ["CNAME", "CNAME", "CNAME", "A"]
    assert response.canonical_name == "c3.example"
    assert response.addresses() == ["192.0.2.3"]


def test_cname_query_is_not_followed() -> None:
    response = resolve(make_zone(), "www.example.com", "CNAME")
    assert response.answers == (DnsAnswer("www.example.com", "CNAME", 300, "web.example.com."),)


def test_cname_to_a_missing_name_is_nxdomain_with_the_chain() -> None:
    # RFC 6604: the RCODE is that of the last name in the chain.
    zone = make_zone()
    zone.add("dangling.example.com", "CNAME", "gone.example.com")
    record = ask(zone, "dangling.example.com", "A")
    assert record.header.rcode == RCODE.NXDOMAIN
    assert answer_values(record) == [("dangling.example.com.", "CNAME", "gone.example.com.")]
    assert [QTYPE[rr.rtype] for rr in record.auth] == ["SOA"]


def test_cname_to_a_name_without_the_type_is_nodata_with_the_chain() -> None:
    zone = make_zone()
    zone.add("alias.example.com", "CNAME", "ns1.example.com")
    response = resolve(zone, "alias.example.com", "AAAA")
    assert response.rcode == RCODE.NOERROR
    assert [a.rtype for a in response.answers] == ["CNAME"]
    assert response.canonical_name == "ns1.example.com"
    assert response.addresses() == []


def test_cname_loop_is_servfail() -> None:
    zone = Zone()
    zone.add("a.loop", "CNAME", "b.loop")
    zone.add("b.loop", "CNAME", "a.loop")
    record = ask(zone, "a.loop", "A")
    assert record.header.rcode == RCODE.SERVFAIL
    assert record.rr == []
    assert record.header.aa == 0


def test_cname_chain_bound() -> None:
    zone = Zone()
    for i in range(MAX_CNAME_CHAIN + 1):
        zone.add(f"c{i}.chain", "CNAME", f"c{i + 1}.chain")
    zone.add(f"c{MAX_CNAME_CHAIN + 1}.chain", "A", "192.0.2.1")
    assert resolve(zone, "c1.chain", "A").addresses() == ["192.0.2.1"]
    assert resolve(zone, "c0.chain", "A").rcode == RCODE.SERVFAIL


def test_cname_cannot_coexist_with_other_data() -> None:
    zone = make_zone()
    message = (
        "cannot add A record at 'www.example.com': a CNAME cannot coexist with other "
        "data at the same name (RFC 1034 section 3.6.2)"
    )
    with raises(ValueError, message):
        zone.add("www.example.com", "A", "192.0.2.9")
    with raises(
        ValueError,
        "cannot add CNAME record at 'web.example.com': a CNAME cannot coexist with other "
        "data at the same name (RFC 1034 section 3.6.2)",
    ):
        zone.add("web.example.com", "CNAME", "example.com")
    with raises(
        ValueError,
        "cannot add a second CNAME record at 'www.example.com' (RFC 2181 section 10.1)",
    ):
        zone.add("www.example.com", "CNAME", "other.example.com")
    zone.add("www.example.com", "CNAME", "web.example.com")  # the same one again is fine


def test_nxdomain_and_nodata_carry_the_soa() -> None:
    zone = make_zone()
    missing = ask(zone, "missing.example.com", "A")
    assert missing.header.rcode == RCODE.NXDOMAIN
    assert missing.header.aa == 1
    assert missing.rr == []
    # RFC 2308 section 3: the SOA, with the TTL of its MINIMUM field when lower.
    assert [(str(rr.rname), QTYPE[rr.rtype], rr.ttl) for rr in missing.auth] == [
        ("example.com.", "SOA", 60)
    ]
    nodata = ask(zone, "ns1.example.com", "AAAA")
    assert nodata.header.rcode == RCODE.NOERROR
    assert nodata.rr == []
    assert [QTYPE[rr.rtype] for rr in nodata.auth] == ["SOA"]
    assert resolve(zone, "ns1.example.com", "AAAA").min_ttl == 60


def test_negative_answers_outside_any_soa() -> None:
    zone = Zone()
    zone.add("host.internal", "A", "10.0.0.1")
    record = ask(zone, "other.internal", "A")
    assert record.header.rcode == RCODE.NXDOMAIN
    assert record.auth == []
    response = resolve(zone, "host.internal", "AAAA")
    assert response.rcode == RCODE.NOERROR
    assert response.min_ttl is None


def test_empty_non_terminal_is_nodata() -> None:
    # RFC 8020: a name with descendants exists even without records of its own.
    zone = make_zone()
    assert ask(zone, "a.b.example.com", "A").header.rcode == RCODE.NOERROR
    assert ask(zone, "b.example.com", "TXT").header.rcode == RCODE.NOERROR
    assert ask(zone, "c.b.example.com", "A").header.rcode == RCODE.NXDOMAIN


def test_any_returns_every_record_of_the_name() -> None:
    record = ask(make_zone(), "example.com", "ANY", edns_payload_size=4096)
    assert [QTYPE[rr.rtype] for rr in record.rr] == ["SOA", "NS", "A", "MX"]


def test_any_at_an_alias_gives_the_cname() -> None:
    response = resolve(make_zone(), "www.example.com", "ANY")
    assert [a.rtype for a in response.answers] == ["CNAME"]


# --- wildcards (RFC 4592) ---------------------------------------------------


def test_wildcard_synthesises_records_for_the_name_asked() -> None:
    zone = make_zone()
    response = resolve(zone, "shop.apps.example.com", "A")
    assert response.answers == (DnsAnswer("shop.apps.example.com", "A", 300, "192.0.2.100"),)
    # Several labels below the closest encloser match too (RFC 4592 section 2.1.1).
    assert resolve(zone, "a.b.apps.example.com", "A").addresses() == ["192.0.2.100"]


def test_wildcard_gives_nodata_for_other_types() -> None:
    record = ask(make_zone(), "shop.apps.example.com", "AAAA")
    assert record.header.rcode == RCODE.NOERROR
    assert record.rr == []


def test_wildcard_does_not_answer_for_existing_names() -> None:
    zone = make_zone()
    zone.add("real.apps.example.com", "TXT", "here")
    assert ask(zone, "real.apps.example.com", "A").rr == []
    assert ask(zone, "real.apps.example.com", "A").header.rcode == RCODE.NOERROR
    # Below an existing name the closest encloser is that name, which has no wildcard.
    assert ask(zone, "x.real.apps.example.com", "A").header.rcode == RCODE.NXDOMAIN


def test_wildcard_does_not_match_its_own_parent() -> None:
    assert ask(make_zone(), "apps.example.com", "A").rr == []
    assert ask(make_zone(), "apps.example.com", "A").header.rcode == RCODE.NOERROR


def test_wildcard_owner_can_be_asked_literally() -> None:
    assert resolve(make_zone(), "*.apps.example.com", "A").addresses() == ["192.0.2.100"]


def test_wildcard_cname() -> None:
    zone = make_zone()
    zone.add("*.cdn.example.com", "CNAME", "web.example.com")
    response = resolve(zone, "img.cdn.example.com", "A")
    assert response.answers[0] == DnsAnswer("img.cdn.example.com", "CNAME", 300, "web.example.com.")
    assert response.canonical_name == "web.example.com"
    assert response.addresses() == ["192.0.2.80", "192.0.2.81"]


def test_names_with_odd_bytes_only_match_wildcards() -> None:
    zone = make_zone()
    zone.add("a.b.odd.example", "A", "192.0.2.1")
    query = query_bytes([b"a.b", b"odd", b"example"])  # one label holding a dot
    reply = answer_query(zone, query)
    assert reply is not None
    assert DNSRecord.parse(reply).header.rcode == RCODE.NXDOMAIN
    query = query_bytes([b"sp ace", b"apps", b"example", b"com"])
    reply = answer_query(zone, query)
    assert reply is not None
    assert [str(rr.rdata) for rr in DNSRecord.parse(reply).rr] == ["192.0.2.100"]


# --- reverse names -----------------------------------------------------------


def test_ptr_for_reverse_names() -> None:
    zone = Zone()
    assert reverse_name("192.0.2.1") == "1.2.0.192.in-addr.arpa"
    zone.add(reverse_name("192.0.2.1"), "PTR", "host.example.com.")
    zone.add(reverse_name("2001:db8::1"), "PTR", "host.example.com.")
    v4 = resolve(zone, "1.2.0.192.in-addr.arpa", "PTR")
    assert v4.answers == (DnsAnswer("1.2.0.192.in-addr.arpa", "PTR", 300, "host.example.com."),)
    v6_name = reverse_name("2001:db8::1")
    assert v6_name.endswith(".8.b.d.0.1.0.0.2.ip6.arpa")
    assert resolve(zone, v6_name, "PTR").answers[0].value == "host.example.com."
    assert resolve(zone, reverse_name("192.0.2.2"), "PTR").rcode == RCODE.NXDOMAIN


@pytest.mark.parametrize("address", ["192.0.2.1", "0.0.0.0", "2001:db8::1", "::", "::ffff:1.2.3.4"])
def test_from_reverse_name_inverts_reverse_name(address: str) -> None:
    name = reverse_name(address)
    assert from_reverse_name(name) == ipaddress.ip_address(address)
    assert from_reverse_name(name.upper() + ".") == ipaddress.ip_address(address)


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "example.com",
        "in-addr.arpa",
        "2.0.192.in-addr.arpa",  # a reverse zone, not an address
        "5.1.2.0.192.in-addr.arpa",
        "256.2.0.192.in-addr.arpa",
        "01.2.0.192.in-addr.arpa",
        "1..0.192.in-addr.arpa",
        "a.2.0.192.in-addr.arpa",
        "1.2.0.192.in-addr.arpa.example",
        "1.2.0.192.ip6.arpa",
        "0." * 31 + "ip6.arpa",
        "0." * 33 + "ip6.arpa",
        "0." * 31 + "g.ip6.arpa",
        "0." * 30 + "00..ip6.arpa",  # 32 labels, 32 digits, but not one each
        "0." * 30 + "x.0.ip6.arpa",  # int() would read "0x..." as a prefix
        "0." * 31 + "_.ip6.arpa",
        "0." * 32 + "in-addr.arpa",
    ],
)
def test_from_reverse_name_of_anything_else_is_none(name: str) -> None:
    assert from_reverse_name(name) is None


# --- EDNS0 and size limits -------------------------------------------------


def big_zone() -> Zone:
    zone = Zone()
    for i in range(12):
        zone.add("big.example", "TXT", f"{i:02d}" + "x" * 150)
    return zone


def test_edns_opt_is_echoed() -> None:
    record = ask(make_zone(), "example.com", "A")
    (opt,) = record.ar
    assert opt.rtype == QTYPE.OPT
    assert opt.rclass == EDNS_PAYLOAD_SIZE
    assert (opt.edns_ver, opt.edns_do, opt.edns_rcode) == (0, 0, 0)


def test_edns_do_bit_is_echoed() -> None:
    query = query_bytes(additional=[EDNS0(udp_len=1232, flags="do")])
    reply = answer_query(make_zone(), query)
    assert reply is not None
    assert DNSRecord.parse(reply).ar[0].edns_do == 1


def test_no_opt_without_edns() -> None:
    assert ask(make_zone(), "example.com", "A", edns_payload_size=None).ar == []


def test_unknown_edns_version_is_badvers() -> None:
    query = query_bytes(additional=[EDNS0(udp_len=1232, version=1)])
    reply = answer_query(make_zone(), query)
    assert reply is not None
    record = DNSRecord.parse(reply)
    assert record.rr == []
    assert (record.header.rcode, record.ar[0].edns_rcode, record.ar[0].edns_ver) == (0, 1, 0)
    response = parse_response(reply, query_id=0x4242, name="example.com", rtype="A")
    assert response.rcode == 16


def test_two_opt_records_or_a_named_opt_are_formerr() -> None:
    for additional in (
        [EDNS0(udp_len=1232), EDNS0(udp_len=1232)],
        [EDNS0("example.com", udp_len=1232)],
    ):
        reply = answer_query(make_zone(), query_bytes(additional=additional))
        assert reply is not None
        assert reply[:4] == b"\x42\x42\x81\x01"  # QR, RD, FORMERR
        assert reply[4:] == bytes(8)


def test_udp_answer_over_512_bytes_is_truncated() -> None:
    record = ask(big_zone(), "big.example", "TXT", edns_payload_size=None)
    assert record.header.tc == 1
    assert record.rr == record.auth == record.ar == []
    assert [str(q.qname) for q in record.questions] == ["big.example."]
    response = resolve(big_zone(), "big.example", "TXT")  # asks with 1232: still too big
    assert response.truncated
    assert response.answers == ()


def test_edns_size_is_honoured() -> None:
    fits = ask(big_zone(), "big.example", "TXT", edns_payload_size=4096)
    assert fits.header.tc == 0
    assert len(fits.rr) == 12
    truncated = ask(big_zone(), "big.example", "TXT", edns_payload_size=1232)
    assert truncated.header.tc == 1
    assert [rr.rtype for rr in truncated.ar] == [QTYPE.OPT]  # the OPT record stays


def test_advertised_size_below_512_counts_as_512() -> None:
    zone = Zone()
    for i in range(6):
        zone.add("mid.example", "A", f"192.0.2.{i}")
    query = query_bytes("mid.example", additional=[EDNS0(udp_len=100)])
    reply = answer_query(zone, query)
    assert reply is not None
    assert len(reply) > 100
    assert DNSRecord.parse(reply).header.tc == 0


def test_max_udp_size_applies_without_edns() -> None:
    query = build_query("big.example", "TXT", 5, edns_payload_size=None)
    reply = answer_query(big_zone(), query, max_udp_size=4096)
    assert reply is not None
    assert DNSRecord.parse(reply).header.tc == 0
    with raises(ValueError, "max_udp_size is 512..65535 or None, got 100"):
        answer_query(big_zone(), query, max_udp_size=100)


def test_tcp_is_never_truncated() -> None:
    record = ask(big_zone(), "big.example", "TXT", max_udp_size=None, edns_payload_size=None)
    assert record.header.tc == 0
    assert len(record.rr) == 12
    assert len(record.pack()) > 1232


def test_tcp_answer_beyond_65535_bytes_is_truncated() -> None:
    zone = Zone()
    for i in range(300):
        zone.add("huge.example", "TXT", f"{i:03d}" + "y" * 250)
    record = ask(zone, "huge.example", "TXT", max_udp_size=None)
    assert record.header.tc == 1


# --- what a server does with odd messages ----------------------------------


@pytest.mark.parametrize("data", [b"", b"\x00", bytes(11)])
def test_messages_shorter_than_the_header_are_dropped(data: bytes) -> None:
    assert answer_query(make_zone(), data) is None


def test_responses_are_dropped() -> None:
    reply = answer_query(make_zone(), build_query("example.com", "A", 3))
    assert reply is not None
    assert answer_query(make_zone(), reply) is None


def test_other_opcodes_are_notimp() -> None:
    reply = answer_query(make_zone(), query_bytes(opcode=4))  # NOTIFY
    assert reply == struct.pack("!6H", 0x4242, 0x8000 | 4 << 11 | 0x0100 | RCODE.NOTIMP, 0, 0, 0, 0)


@pytest.mark.parametrize(
    "body",
    [
        b"\x00\x01\x00\x00\x00\x00\x00\x00",  # one question, none there
        b"\x00\x01\x00\x00\x00\x00\x00\x00\x07example",  # cut inside the name
        b"\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00",  # cut inside the type
        b"\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",  # pointer to itself
        b"\x00\x01\x00\x00\x00\x00\x00\x00\x01\xff\x00\x00\x01\x00\x01",  # not UTF-8
    ],
)
def test_malformed_bodies_are_formerr_with_the_same_id(body: bytes) -> None:
    reply = answer_query(make_zone(), b"\xbe\xef\x01\x00" + body)
    assert reply == b"\xbe\xef\x81\x01" + bytes(8)


def test_question_counts_other_than_one_are_formerr() -> None:
    for count in (0, 2):
        reply = answer_query(make_zone(), query_bytes(questions=count))
        assert reply is not None
        assert DNSRecord.parse(reply).header.rcode == RCODE.FORMERR


def test_overlong_names_are_formerr() -> None:
    # dnslib reads a label length of 64..191 as a length; no answer could carry it.
    label = b"\x46" + b"a" * 70
    query = b"\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + label + b"\x00\x00\x01\x00\x01"
    reply = answer_query(make_zone(), query)
    assert reply is not None
    assert DNSRecord.parse(reply).header.rcode == RCODE.FORMERR


def test_other_classes_and_zone_transfers_are_refused() -> None:
    chaos = answer_query(make_zone(), query_bytes("version.bind", QTYPE.TXT, qclass=CLASS.CH))
    assert chaos is not None
    assert DNSRecord.parse(chaos).header.rcode == RCODE.REFUSED
    axfr = answer_query(make_zone(), query_bytes("example.com", QTYPE.AXFR))
    assert axfr is not None
    assert DNSRecord.parse(axfr).header.rcode == RCODE.REFUSED
    any_class = answer_query(make_zone(), query_bytes("example.com", QTYPE.A, qclass=255))
    assert any_class is not None
    assert [str(rr.rdata) for rr in DNSRecord.parse(any_class).rr] == ["192.0.2.1"]


# --- validation --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rtype", "value", "message"),
    [
        (
            "a.example",
            "HINFO",
            "x y",
            "unsupported DNS record type 'HINFO': a zone holds "
            "A, AAAA, CAA, CNAME, MX, NAPTR, NS, PTR, SOA, SRV, TXT",
        ),
        (
            "a.example",
            "A",
            "192.0.2",
            "invalid A record data '192.0.2' for 'a.example': Expected 4 octets in '192.0.2'",
        ),
        (
            "a.example",
            "A",
            "192.0.2.1 extra",
            "invalid A record data '192.0.2.1 extra' for 'a.example': "
            "expected 1 field (address), got 2",
        ),
        (
            "a.example",
            "AAAA",
            "192.0.2.1",
            "invalid AAAA record data '192.0.2.1' for 'a.example': "
            "At least 3 parts expected in '192.0.2.1'",
        ),
        (
            "a.example",
            "MX",
            "mail.example.com",
            "invalid MX record data 'mail.example.com' for 'a.example': "
            "expected 2 fields (preference exchange), got 1",
        ),
        (
            "a.example",
            "MX",
            "70000 mail.example.com",
            "invalid MX record data '70000 mail.example.com' for 'a.example': "
            "preference 70000 is above 65535",
        ),
        (
            "a.example",
            "MX",
            "ten mail.example.com",
            "invalid MX record data 'ten mail.example.com' for 'a.example': "
            "preference 'ten' is not a number",
        ),
        (
            "a.example",
            "SRV",
            "0 5 5060 bad..name",
            "invalid SRV record data '0 5 5060 bad..name' for 'a.example': "
            "invalid DNS name 'bad..name': empty label",
        ),
        (
            "a.example",
            "CNAME",
            ".",
            "invalid CNAME record data '.' for 'a.example': "
            "invalid DNS name '.': the root name cannot be used here",
        ),
        (
            "a.example",
            "TXT",
            "",
            "invalid TXT record data '' for 'a.example': expected one or more strings, got none",
        ),
        (
            "a.example",
            "TXT",
            '"unclosed',
            "invalid TXT record data '\"unclosed' for 'a.example': has an unclosed quote",
        ),
        (
            "a.example",
            "TXT",
            "x" * 256,
            f"invalid TXT record data '{'x' * 256}' for 'a.example': "
            "a TXT string is 256 bytes long, at most 255 are allowed",
        ),
        (
            "a.example",
            "TXT",
            "\\999",
            "invalid TXT record data '\\\\999' for 'a.example': escape \\999 is above 255",
        ),
        (
            "a.example",
            "SOA",
            "ns. host. 1 2 3 4",
            "invalid SOA record data 'ns. host. 1 2 3 4' for 'a.example': expected 7 fields "
            "(mname rname serial refresh retry expire minimum), got 6",
        ),
        (
            "a.example",
            "CAA",
            '0 is-sue "ca.example"',
            "invalid CAA record data '0 is-sue \"ca.example\"' for 'a.example': "
            "tag 'is-sue' is not 1 to 15 letters and digits",
        ),
        (
            "a.example",
            "CAA",
            '256 issue "ca.example"',
            "invalid CAA record data '256 issue \"ca.example\"' for 'a.example': "
            "flags 256 is above 255",
        ),
        (
            "a.example",
            "NAPTR",
            '100 10 "U" "E2U+sip"',
            "invalid NAPTR record data '100 10 \"U\" \"E2U+sip\"' for 'a.example': expected 6 "
            "fields (order preference flags service regexp replacement), got 4",
        ),
        (
            "a." + "b" * 64 + ".example",
            "A",
            "192.0.2.1",
            f"invalid DNS name 'a.{'b' * 64}.example': label '{'b' * 64}' is 64 characters "
            "long, at most 63 are allowed",
        ),
        (
            ".".join(["abcdefghi"] * 26),
            "A",
            "192.0.2.1",
            "invalid DNS name 'abcdefghi.abcdefghi.abcdefghi.abcdefghi.'...: 259 characters "
            "long, at most 253 are allowed",
        ),
        ("a..example", "A", "192.0.2.1", "invalid DNS name 'a..example': empty label"),
        (
            "",
            "A",
            "192.0.2.1",
            "invalid DNS name '': the root name cannot be used here",
        ),
        (
            "a b.example",
            "A",
            "192.0.2.1",
            "invalid DNS name 'a b.example': label 'a b' may hold only letters, digits, "
            "'-', '_' and '/'",
        ),
        (
            "a.*.example",
            "A",
            "192.0.2.1",
            "invalid DNS name 'a.*.example': '*' is allowed only as the leftmost label",
        ),
    ],
)
def test_add_rejects_invalid_records(name: str, rtype: str, value: str, message: str) -> None:
    zone = Zone()
    with raises(ValueError, message):
        zone.add(name, rtype, value)
    assert len(zone) == 0


def test_longest_valid_names_and_labels() -> None:
    zone = Zone()
    label = "a" * 63
    zone.add(f"{label}.example", "A", "192.0.2.1")
    longest = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(longest) == 253
    zone.add(longest + ".", "A", "192.0.2.2")
    assert resolve(zone, longest, "A").addresses() == ["192.0.2.2"]


@pytest.mark.parametrize(
    ("ttl", "error", "message"),
    [
        (-1, ValueError, "a TTL is 0..2147483647 seconds (RFC 2181 section 8), got -1"),
        (2**31, ValueError, "a TTL is 0..2147483647 seconds (RFC 2181 section 8), got 2147483648"),
        (True, TypeError, "a TTL must be an int, not bool (True)"),
        (1.5, TypeError, "a TTL must be an int, not float (1.5)"),
    ],
)
def test_ttl_limits(ttl: object, error: type[Exception], message: str) -> None:
    with raises(error, message):
        Zone().add("a.example", "A", "192.0.2.1", ttl=ttl)  # type: ignore[arg-type]


def test_ttl_bounds_are_accepted() -> None:
    zone = Zone()
    zone.add("zero.example", "A", "192.0.2.1", ttl=0)
    zone.add("max.example", "A", "192.0.2.1", ttl=2**31 - 1)
    assert resolve(zone, "max.example", "A").min_ttl == 2**31 - 1


def test_second_soa_is_rejected() -> None:
    zone = make_zone()
    with raises(ValueError, "cannot add a second SOA record at 'example.com'"):
        zone.add("example.com", "SOA", "a. b. 1 2 3 4 5")


def test_remove_and_lookup_check_their_arguments() -> None:
    zone = make_zone()
    with pytest.raises(ValueError, match=r"^unsupported DNS record type 'ANY'"):
        zone.remove("example.com", "ANY")
    with pytest.raises(ValueError, match=r"^unsupported DNS record type 'SPF'"):
        zone.lookup("example.com", "SPF")
    with raises(ValueError, "invalid DNS name 'a..b': empty label"):
        zone.lookup("a..b", "A")


def test_zone_file_rdata_syntax() -> None:
    zone = Zone()
    zone.add("a.example", "SOA", "ns.a.example. host.a.example. (\n 1 ; serial\n 2 3 4 5 )")
    zone.add("a.example", "TXT", 'one\\ word "two ; words" \\059')
    values = [a.value for a in resolve(zone, "a.example", "ANY").answers]
    assert values == ["ns.a.example. host.a.example. 1 2 3 4 5", '"one word" "two ; words" ";"']


# --- the client ----------------------------------------------------------------


def test_build_query() -> None:
    query = DNSRecord.parse(build_query("Example.COM.", "AAAA", 0xABCD))
    assert query.header.id == 0xABCD
    assert (query.header.qr, query.header.opcode, query.header.rd) == (0, 0, 1)
    assert [(str(q.qname), q.qtype, q.qclass) for q in query.questions] == [
        ("example.com.", QTYPE.AAAA, CLASS.IN)
    ]
    (opt,) = query.ar
    assert (opt.rtype, opt.rclass, str(opt.rname)) == (QTYPE.OPT, 1232, ".")


def test_build_query_options() -> None:
    query = DNSRecord.parse(
        build_query("example.com", 65280, 1, recursion_desired=False, edns_payload_size=None)
    )
    assert query.header.rd == 0
    assert query.ar == []
    assert query.questions[0].qtype == 65280
    assert DNSRecord.parse(build_query("x.example", "type65280", 1)).q.qtype == 65280


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("a..b", "A", 1), {}, "invalid DNS name 'a..b': empty label"),
        (("example.com", "BOGUS", 1), {}, "unknown DNS record type 'BOGUS'"),
        (("example.com", 70000, 1), {}, "a DNS record type is 0..65535, got 70000"),
        (("example.com", "A", 65536), {}, "query_id is 0..65535, got 65536"),
        (
            ("example.com", "A", 1),
            {"edns_payload_size": 511},
            "edns_payload_size is 512..65535 or None, got 511",
        ),
    ],
)
def test_build_query_rejects(
    args: tuple[str, str | int, int], kwargs: dict[str, int], message: str
) -> None:
    with raises(ValueError, message):
        build_query(*args, **kwargs)  # type: ignore[arg-type]


def test_round_trip_through_the_zone() -> None:
    zone = make_zone()
    for qtype in ("A", "AAAA", "MX", "NS", "SOA", "TXT"):
        query_id = 4000 + len(qtype)
        reply = answer_query(zone, build_query("example.com", qtype, query_id))
        assert reply is not None
        response = parse_response(reply, query_id=query_id, name="example.com", rtype=qtype)
        assert response.rcode == RCODE.NOERROR
        assert [a.rtype for a in response.answers] == [qtype] * len(response.answers)


def test_response_fields() -> None:
    response = resolve(make_zone(), "www.example.com", "A")
    assert response == DnsResponse(
        rcode=0,
        truncated=False,
        answers=(
            DnsAnswer("www.example.com", "CNAME", 300, "web.example.com."),
            DnsAnswer("web.example.com", "A", 60, "192.0.2.80"),
            DnsAnswer("web.example.com", "A", 60, "192.0.2.81"),
        ),
        canonical_name="web.example.com",
        min_ttl=60,
    )
    with pytest.raises(AttributeError):
        response.rcode = 3  # type: ignore[misc]


def test_nxdomain_response() -> None:
    response = resolve(make_zone(), "nope.example.com", "A")
    assert response.rcode == RCODE.NXDOMAIN
    assert response.answers == ()
    assert response.canonical_name == "nope.example.com"
    assert response.min_ttl == 60


def reply_with(
    *answers: RR, name: str = "host.example", qtype: int = 1, query_id: int = 5
) -> bytes:
    record = DNSRecord(DNSHeader(id=query_id, bitmap=0, qr=1), q=DNSQuestion(name, qtype))
    record.add_answer(*answers)
    return bytes(record.pack())


def test_addresses_only_follow_the_chain() -> None:
    data = reply_with(
        RR("elsewhere.example", QTYPE.A, rdata=A("192.0.2.66"), ttl=5),
        RR("HOST.example", QTYPE.A, rdata=A("192.0.2.1"), ttl=50),
    )
    response = parse_response(data, query_id=5, name="host.example", rtype="A")
    assert response.addresses() == ["192.0.2.1"]
    assert response.answers[1].name == "HOST.example"
    assert response.min_ttl == 5


def test_cname_loop_in_a_response_ends() -> None:
    data = reply_with(
        RR("host.example", QTYPE.CNAME, rdata=CNAME("b.example")),
        RR("b.example", QTYPE.CNAME, rdata=CNAME("host.example")),
    )
    response = parse_response(data, query_id=5, name="host.example", rtype="A")
    assert response.canonical_name == "host.example"
    assert response.addresses() == []


def test_unknown_types_in_a_response_are_read() -> None:
    data = reply_with(RR("host.example", 65280, rdata=RD(b"\x01\x02")), qtype=65280)
    response = parse_response(data, query_id=5, name="host.example", rtype=65280)
    assert response.answers == (DnsAnswer("host.example", "TYPE65280", 0, "\\# 2 0102"),)


def test_bare_error_responses_are_accepted() -> None:
    servfail = struct.pack("!6H", 9, 0x8182, 0, 0, 0, 0)
    response = parse_response(servfail, query_id=9, name="example.com", rtype="A")
    assert (response.rcode, response.answers, response.min_ttl) == (RCODE.SERVFAIL, (), None)
    truncated = struct.pack("!6H", 9, 0x8380, 0, 0, 0, 0)
    assert parse_response(truncated, query_id=9, name="example.com", rtype="A").truncated


def good_reply() -> bytes:
    reply = answer_query(make_zone(), build_query("example.com", "A", 100))
    assert reply is not None
    return reply


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x64\x81", "DNS response of 3 bytes is shorter than the 12-byte header"),
        (
            build_query("example.com", "A", 100),
            "DNS message is a query, not a response (QR bit clear)",
        ),
        (
            b"\x00\x65" + good_reply()[2:],
            "DNS response id 101 does not match query id 100",
        ),
        (
            good_reply()[:2] + b"\xa5" + good_reply()[3:],
            "DNS response has opcode 4, not QUERY (0)",
        ),
        (
            struct.pack("!6H", 100, 0x8180, 0, 0, 0, 0),
            "DNS response has no question section",
        ),
        (
            reply_with(name="other.example", query_id=100),
            "DNS response answers other.example A, not the question asked: example.com A",
        ),
    ],
)
def test_parse_response_rejects(data: bytes, message: str) -> None:
    with raises(RemoteProtocolError, message):
        parse_response(data, query_id=100, name="example.com", rtype="A")


def test_parse_response_rejects_another_type_and_a_cut_message() -> None:
    with pytest.raises(RemoteProtocolError, match=r"not the question asked: example\.com AAAA$"):
        parse_response(good_reply(), query_id=100, name="example.com", rtype="AAAA")
    with pytest.raises(RemoteProtocolError, match=r"^malformed DNS response: "):
        parse_response(good_reply()[:-3], query_id=100, name="example.com", rtype="A")


# --- TCP framing ---------------------------------------------------------------

MESSAGE = build_query("example.com", "A", 1)
FRAMED = DnsTcpFramer.frame(MESSAGE)


def tr(data: bytes, expected: bytes) -> None:
    """Feed ``data`` whole, byte by byte, and with trailing data, as h11's tests do."""
    framer = DnsTcpFramer()
    framer.receive_data(data)
    assert framer.next_message() == expected
    assert framer.next_message() is None

    framer = DnsTcpFramer()
    for i in range(len(data)):
        framer.receive_data(data[i : i + 1])
        message = framer.next_message()
        if i < len(data) - 1:
            assert message is None
        else:
            assert message == expected

    framer = DnsTcpFramer()
    framer.receive_data(data + b"\x00\x0c" + b"trailing")
    assert framer.next_message() == expected
    assert framer.next_message() is None
    assert repr(framer) == "<DnsTcpFramer OPEN, 10 bytes buffered>"


def test_frame() -> None:
    assert len(MESSAGE).to_bytes(2, "big") + MESSAGE == FRAMED
    tr(FRAMED, MESSAGE)
    header_only = bytes(12)
    tr(b"\x00\x0c" + header_only, header_only)


def test_pipelined_messages_come_out_one_at_a_time() -> None:
    second = build_query("example.org", "AAAA", 2)
    framer = DnsTcpFramer()
    framer.receive_data(FRAMED + DnsTcpFramer.frame(second) + FRAMED[:5])
    assert framer.next_message() == MESSAGE
    assert framer.next_message() == second
    assert framer.next_message() is None
    framer.receive_data(FRAMED[5:])
    assert framer.next_message() == MESSAGE


def test_clean_eof() -> None:
    framer = DnsTcpFramer()
    framer.receive_data(FRAMED)
    framer.receive_data(b"")
    assert not framer.at_eof
    assert framer.next_message() == MESSAGE
    assert framer.at_eof
    assert framer.next_message() is None
    framer.receive_data(b"")  # EOF again changes nothing
    assert repr(framer) == "<DnsTcpFramer EOF, 0 bytes buffered>"
    with raises(RuntimeError, "received data after EOF"):
        framer.receive_data(b"more")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00", "connection closed inside the length prefix of a DNS message"),
        (FRAMED[:20], f"connection closed after 18 of the {len(MESSAGE)} bytes of a DNS message"),
    ],
)
def test_eof_inside_a_message(data: bytes, message: str) -> None:
    framer = DnsTcpFramer()
    framer.receive_data(data)
    assert framer.next_message() is None
    framer.receive_data(b"")
    with raises(RemoteProtocolError, message):
        framer.next_message()
    # The error sticks, as h11's ERROR state does.
    with pytest.raises(RemoteProtocolError, match=r"^DNS over TCP stream already failed: "):
        framer.next_message()
    with pytest.raises(RemoteProtocolError, match=r"^DNS over TCP stream already failed: "):
        framer.receive_data(b"x")
    assert repr(framer).startswith("<DnsTcpFramer ERROR")


def test_length_shorter_than_a_header() -> None:
    framer = DnsTcpFramer()
    framer.receive_data(b"\x00\x0bxxxxxxxxxxx")
    with pytest.raises(RemoteProtocolError, match=r"^DNS over TCP length 11 is shorter than"):
        framer.next_message()


def test_max_buffered() -> None:
    assert DEFAULT_MAX_BUFFERED == 2 * 65537
    framer = DnsTcpFramer(max_buffered=100)
    framer.receive_data(b"\x00\x63")
    with raises(
        RemoteProtocolError, "DNS over TCP message of 99 bytes is more than max_buffered=100 allows"
    ):
        framer.next_message()
    framer = DnsTcpFramer(max_buffered=100)
    framer.receive_data(FRAMED * 2)
    with raises(
        RemoteProtocolError,
        f"peer sent {len(FRAMED) * 3} bytes of DNS messages ahead of those read, "
        "more than max_buffered=100",
    ):
        framer.receive_data(FRAMED)
    with raises(ValueError, "max_buffered must be at least 14, got 13"):
        DnsTcpFramer(max_buffered=13)


def test_default_bound_takes_the_largest_message_after_a_partial_one() -> None:
    largest = DnsTcpFramer.frame(bytes(65535))
    framer = DnsTcpFramer()
    framer.receive_data(largest[:-1])
    framer.receive_data(largest[-1:] + largest[:65535])
    assert framer.next_message() == bytes(65535)


def test_frame_rejects_impossible_messages() -> None:
    with raises(LocalProtocolError, "a DNS message over TCP is 12..65535 bytes, got 65536"):
        DnsTcpFramer.frame(bytes(65536))
    with pytest.raises(LocalProtocolError, match=r"got 11$"):
        DnsTcpFramer.frame(bytes(11))


def test_tcp_exchange_back_to_back() -> None:
    zone = big_zone()
    client, server = DnsTcpFramer(), DnsTcpFramer()
    server.receive_data(DnsTcpFramer.frame(build_query("big.example", "TXT", 31)))
    query = server.next_message()
    assert query is not None
    reply = answer_query(zone, query, max_udp_size=None)
    assert reply is not None
    client.receive_data(DnsTcpFramer.frame(reply))
    message = client.next_message()
    assert message is not None
    response = parse_response(message, query_id=31, name="big.example", rtype="TXT")
    assert not response.truncated
    assert len(response.answers) == 12


# --- fuzzing -------------------------------------------------------------------

FUZZ_ZONE = make_zone()
FUZZ_ZONE.add("*.wild.example.com", "CNAME", "www.example.com")
FUZZ_ZONE.add("loop.example.com", "CNAME", "loop.example.com")
SEED_QUERIES = [
    build_query("www.example.com", "A", 0x1111),
    build_query("x.wild.example.com", "ANY", 0x2222, edns_payload_size=None),
    build_query("loop.example.com", "TXT", 0x3333),
    build_query(reverse_name("192.0.2.1"), "PTR", 0x4444),
]


def check_reply(query: bytes, reply: bytes | None) -> None:
    if reply is None:
        return
    assert len(reply) >= 12
    assert reply[:2] == query[:2]
    assert reply[2] & 0x80
    assert len(reply) <= 65535


@given(st.binary(max_size=600))
@example(b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01\x00\x00\x01\x00\x01\x00\x00\x29")
def test_answer_query_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    check_reply(data, answer_query(FUZZ_ZONE, data))
    check_reply(data, answer_query(FUZZ_ZONE, data, max_udp_size=None))
    # Behind a plausible header, so that the body reaches the parser.
    query = b"\x00\x01\x01\x00\x00\x01" + data
    check_reply(query, answer_query(FUZZ_ZONE, query))


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[position] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[position : position + draw(st.integers(1, 4))]
        else:
            del data[position:]
    return bytes(data)


@given(mutated(SEED_QUERIES))
def test_answer_query_never_raises_on_mutated_queries(data: bytes) -> None:
    check_reply(data, answer_query(FUZZ_ZONE, data))
    check_reply(data, answer_query(FUZZ_ZONE, data, max_udp_size=None))


def check_parse(data: bytes) -> None:
    try:
        response = parse_response(data, query_id=0x1111, name="www.example.com", rtype="A")
    except RemoteProtocolError:
        return
    assert isinstance(response, DnsResponse)
    response.addresses()


@given(st.binary(max_size=600))
def test_parse_response_raises_only_remote_protocol_error(data: bytes) -> None:
    check_parse(b"\x11\x11\x81\x80" + data)
    check_parse(data)


SEED_REPLIES = [
    reply
    for query in SEED_QUERIES
    if (reply := answer_query(FUZZ_ZONE, query, max_udp_size=None)) is not None
]


@given(mutated(SEED_REPLIES))
def test_parse_response_raises_only_remote_protocol_error_on_mutated_replies(data: bytes) -> None:
    check_parse(data)
    check_parse(b"\x11\x11" + data[2:])


@given(st.lists(st.binary(max_size=255), min_size=1, max_size=4))
def test_txt_text_round_trips(strings: list[bytes]) -> None:
    # Any bytes written as \DDD escapes are read in; the text the client gets
    # back describes the same strings.
    zone = Zone()
    zone.add(
        "t.example", "TXT", " ".join('"' + "".join(f"\\{b:03d}" for b in s) + '"' for s in strings)
    )
    (answer,) = resolve(zone, "t.example", "TXT", max_udp_size=None).answers
    again = Zone()
    again.add("t.example", "TXT", answer.value)
    assert rdata_wire(again) == rdata_wire(zone)
    (record,) = again
    assert isinstance(record.rdata, TXT)
    assert record.rdata.data == strings


@given(
    st.lists(st.binary(min_size=12, max_size=80), min_size=1, max_size=4),
    st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_framer_reassembles_any_split(messages: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(DnsTcpFramer.frame(m) for m in messages)
    framer = DnsTcpFramer()
    received: list[bytes] = []
    start = 0
    for cut in [*sorted(min(cut, len(stream)) for cut in cuts), len(stream)]:
        if cut > start:  # b"" would be EOF
            framer.receive_data(stream[start:cut])
            start = cut
        while (message := framer.next_message()) is not None:
            received.append(message)
    assert received == messages
