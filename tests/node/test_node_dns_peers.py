"""netshim.dns against real DNS software on loopback: dnsmasq serves, dig asks.

Our resolver asks dnsmasq (records from its command-line options, one of
each type) over UDP, over TCP and after truncation; dig asks our server
over UDP and TCP.  Everything stays on 127.0.0.1, on ports picked free.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import dnslib
import pytest
from node_helpers import require_peer

from netshim import HostStack, dns

pytestmark = pytest.mark.anyio

BIG_TXT_COUNT = 30


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (as far as one can tell)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def wire_name(name: str) -> bytes:
    """A name in uncompressed wire form: dnsmasq copies --dns-rr data verbatim."""
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"


def dnsmasq_config(port: int) -> str:
    soa = (
        wire_name("ns1.interop.test")
        + wire_name("admin.interop.test")
        + struct.pack("!5I", 2024010101, 3600, 600, 86400, 300)
    )
    lines = [
        "no-resolv",
        "no-hosts",
        f"port={port}",
        "listen-address=127.0.0.1",
        "bind-interfaces",
        # Stay root: the test environment may have no 'dnsmasq' user to drop to.
        "user=root",
        "pid-file=",
        # Authoritative for interop.test: NXDOMAIN and NODATA instead of forwarding.
        "local=/interop.test/",
        "address=/a.interop.test/192.0.2.10",
        "host-record=host.interop.test,192.0.2.11,2001:db8::11",
        "mx-host=interop.test,mail.interop.test,10",
        "mx-host=interop.test,backup.interop.test,20",
        'txt-record=interop.test,"v=spf1 -all","second chunk"',
        "srv-host=_sip._udp.interop.test,sip.interop.test,5060,5,10",
        "cname=www.interop.test,host.interop.test",
        "ptr-record=10.2.0.192.in-addr.arpa,ptr.interop.test",
        "caa-record=interop.test,128,issue,ca.example.net",
        "naptr-record=interop.test,100,10,S,SIP+D2U,,_sip._udp.interop.test",
        f"dns-rr=interop.test,2,{wire_name('ns1.interop.test').hex()}",
        f"dns-rr=soa.interop.test,6,{soa.hex()}",
    ]
    lines += [
        f"txt-record=big.interop.test,{index:02d}{'y' * 60}" for index in range(BIG_TXT_COUNT)
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A dnsmasq on 127.0.0.1 serving the records above; yields "127.0.0.1:port"."""
    program = require_peer("dnsmasq")
    port = free_port()
    config = Path(tmp_path_factory.mktemp("dnsmasq")) / "dnsmasq.conf"
    config.write_text(dnsmasq_config(port))
    process = subprocess.Popen(
        [program, "--no-daemon", f"--conf-file={config}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                error = process.stderr.read().decode() if process.stderr else ""
                pytest.fail(f"dnsmasq exited with {process.returncode}: {error}")
            query = dnslib.DNSRecord.question("a.interop.test", "A")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.settimeout(0.2)
                try:
                    probe.sendto(bytes(query.pack()), ("127.0.0.1", port))
                    probe.recvfrom(512)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        pytest.fail("dnsmasq did not start answering within 10 seconds")
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=5)
        if process.stderr:
            process.stderr.close()


@pytest.mark.peer("dnsmasq")
async def test_every_record_type_from_dnsmasq(dnsmasq: str) -> None:
    resolver = dns.Resolver(stack=HostStack(), servers=[dnsmasq], timeout=2, tries=2)
    assert await resolver.resolve4("a.interop.test") == ["192.0.2.10"]
    (record,) = await resolver.resolve4("host.interop.test", ttl=True)
    assert record.address == "192.0.2.11"
    assert record.ttl >= 0
    assert await resolver.resolve6("host.interop.test") == ["2001:db8::11"]
    assert sorted(await resolver.resolve_mx("interop.test"), key=lambda r: r.priority) == [
        dns.MxRecord(10, "mail.interop.test"),
        dns.MxRecord(20, "backup.interop.test"),
    ]
    assert await resolver.resolve_txt("interop.test") == [["v=spf1 -all", "second chunk"]]
    assert await resolver.resolve_srv("_sip._udp.interop.test") == [
        dns.SrvRecord(5, 10, 5060, "sip.interop.test")
    ]
    assert await resolver.resolve_cname("www.interop.test") == ["host.interop.test"]
    assert await resolver.resolve4("www.interop.test") == ["192.0.2.11"]
    assert await resolver.resolve_ptr("10.2.0.192.in-addr.arpa") == ["ptr.interop.test"]
    assert await resolver.reverse("192.0.2.10") == ["ptr.interop.test"]
    assert await resolver.resolve_caa("interop.test") == [
        dns.CaaRecord(128, "issue", "ca.example.net")
    ]
    assert await resolver.resolve_naptr("interop.test") == [
        dns.NaptrRecord(100, 10, "S", "SIP+D2U", "", "_sip._udp.interop.test")
    ]
    assert await resolver.resolve_ns("interop.test") == ["ns1.interop.test"]
    assert await resolver.resolve_soa("soa.interop.test") == dns.SoaRecord(
        "ns1.interop.test", "admin.interop.test", 2024010101, 3600, 600, 86400, 300
    )
    with pytest.raises(dns.DnsError) as caught:
        await resolver.resolve_srv("host.interop.test")
    assert (caught.value.code, caught.value.syscall) == (dns.NODATA, "querySrv")
    with pytest.raises(dns.DnsError) as caught:
        await resolver.resolve4("missing.interop.test")
    assert caught.value.code == dns.NOTFOUND
    # Outside its domain, with no upstream configured, dnsmasq refuses.
    with pytest.raises(dns.DnsError) as caught:
        await resolver.resolve4("elsewhere.example")
    assert caught.value.code == dns.REFUSED


@pytest.mark.peer("dnsmasq")
async def test_dnsmasq_truncation_falls_back_to_tcp(dnsmasq: str) -> None:
    for edns in (False, True):
        resolver = dns.Resolver(stack=HostStack(), servers=[dnsmasq], timeout=2, edns=edns)
        records = await resolver.resolve_txt("big.interop.test")
        assert sorted(chunk[0][:2] for chunk in records) == [
            f"{index:02d}" for index in range(BIG_TXT_COUNT)
        ]
    tcp = dns.Resolver(stack=HostStack(), servers=[dnsmasq], transport="tcp", timeout=2)
    assert await tcp.resolve4("a.interop.test") == ["192.0.2.10"]


@pytest.mark.peer("dnsmasq")
async def test_our_server_forwards_to_dnsmasq(dnsmasq: str) -> None:
    stack = HostStack()
    local = dns.Zone()
    local.add("local.test", "A", "192.0.2.200")
    async with dns.serve(stack, local, host="127.0.0.1", port=0, upstream=dnsmasq) as server:
        resolver = dns.Resolver(stack=stack, servers=[f"127.0.0.1:{server.port}"], timeout=2)
        assert await resolver.resolve4("local.test") == ["192.0.2.200"]
        assert await resolver.resolve4("a.interop.test") == ["192.0.2.10"]
        assert len(await resolver.resolve_txt("big.interop.test")) == BIG_TXT_COUNT


def dig(*arguments: str) -> str:
    program = require_peer("dig")
    result = subprocess.run(
        [program, "+time=2", "+tries=1", *arguments],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    return result.stdout


@pytest.mark.peer("dig")
@pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
async def test_dig_asks_our_server(transport: str) -> None:
    require_peer("dig")
    zone = dns.Zone()
    zone.add("example.test", "A", "192.0.2.1")
    zone.add("example.test", "MX", "10 mail.example.test.")
    zone.add("example.test", "TXT", '"hello world"')
    zone.add("*.wild.example.test", "AAAA", "2001:db8::5")
    zone.add("example.test", "SOA", "ns.example.test. admin.example.test. 1 2 3 4 60")
    async with dns.serve(HostStack(), zone, host="127.0.0.1", port=0) as server:
        where = ["@127.0.0.1", "-p", str(server.port), transport]

        async def ask(*question: str) -> str:
            return await anyio.to_thread.run_sync(lambda: dig(*where, *question))

        assert (await ask("example.test", "A", "+short")).split() == ["192.0.2.1"]
        assert (await ask("example.test", "MX", "+short")).split() == ["10", "mail.example.test."]
        assert (await ask("example.test", "TXT", "+short")).strip() == '"hello world"'
        assert (await ask("x.wild.example.test", "AAAA", "+short")).strip() == "2001:db8::5"
        missing = await ask("nope.example.test", "A")
        assert "status: NXDOMAIN" in missing
        assert "ns.example.test. admin.example.test." in missing  # the SOA, RFC 2308
        full = await ask("example.test", "A")
        assert "flags: qr aa rd" in full
        assert "EDNS: version: 0" in full
        assert server.queries >= 6


@pytest.mark.peer("dig")
async def test_dig_gets_truncated_then_tcp() -> None:
    require_peer("dig")
    zone = dns.Zone()
    for index in range(40):
        zone.add("big.test", "TXT", f'"{index:02d} {"z" * 60}"')
    async with dns.serve(HostStack(), zone, host="127.0.0.1", port=0) as server:
        output = await anyio.to_thread.run_sync(
            lambda: dig("@127.0.0.1", "-p", str(server.port), "+noedns", "big.test", "TXT")
        )
        # dig retries over TCP by itself after TC, and gets every record.
        assert "Truncated, retrying in TCP mode" in output
        assert output.count(" " + "z" * 60 + '"') == 40
        assert "(TCP)" in output
