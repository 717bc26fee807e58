"""netshim.tls: the ssl stand-in's SSLContext with tlslite-ng, under asyncio's SSL layer.

The client side is what Pyodide gets (the stand-in's context, TLS in pure
Python); the server is CPython's real ``ssl`` (OpenSSL) with trustme
certificates, over netshim.aio transports on a VirtualNetwork.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import Iterator

import pytest
import trustme

import netshim
import netshim.tls
from netshim import VirtualHost, _ssl_standin
from netshim.tls._x509 import Certificate, CertificateError, match_hostname, verify_chain

pytest.importorskip("tlslite")
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def hosts(hosts: tuple[VirtualHost, VirtualHost]) -> Iterator[tuple[VirtualHost, VirtualHost]]:
    """The shared hosts (tests/aio/conftest.py) with netshim's TLS in place of ``ssl``."""
    netshim.tls.enable()
    try:
        yield hosts
    finally:
        netshim.tls.disable()


def client_context(ca: trustme.CA | None) -> _ssl_standin.SSLContext:
    context = _ssl_standin.create_default_context()
    if ca is not None:
        context.load_verify_locations(cadata=ca.cert_pem.bytes().decode())
    return context


async def start_tls_server(
    web: VirtualHost, ca: trustme.CA, name: str = "web.internal"
) -> asyncio.AbstractServer:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(server_context)
    server_context.set_alpn_protocols(["http/1.1"])

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            writer.write(b"secret: " + line)
            await writer.drain()
            writer.close()
        except (ssl.SSLError, ConnectionError):
            writer.close()  # a client that refused our certificate

    with netshim.acting_as(web):
        return await asyncio.start_server(handler, "0.0.0.0", 443, ssl=server_context)


@pytest.mark.parametrize("key_type", [trustme.KeyType.ECDSA, trustme.KeyType.RSA])
async def test_open_connection_checks_the_server(
    hosts: tuple[VirtualHost, VirtualHost], key_type: trustme.KeyType
) -> None:
    ca = trustme.CA(key_type=key_type)
    server = await start_tls_server(hosts[0], ca)
    context = client_context(ca)
    context.set_alpn_protocols(["h2", "http/1.1"])
    reader, writer = await asyncio.open_connection("web.internal", 443, ssl=context)
    sslobj = writer.get_extra_info("ssl_object")
    assert type(sslobj).__name__ == "TLSLiteObject"
    assert sslobj.version() == "TLSv1.3"
    assert sslobj.selected_alpn_protocol() == "http/1.1"
    assert writer.get_extra_info("cipher")[0].startswith("TLS_")
    peercert = writer.get_extra_info("peercert")
    assert peercert["subjectAltName"] == (("DNS", "web.internal"),)
    issuer = dict(entry for rdn in peercert["issuer"] for entry in rdn)
    assert issuer["organizationName"].startswith("trustme")
    assert peercert["notAfter"].endswith(" GMT")
    assert len(sslobj.getpeercert(binary_form=True)) > 100
    writer.write(b"hi\n")
    assert await reader.read() == b"secret: hi\n"
    writer.close()
    server.close()
    await server.wait_closed()


async def test_a_wrong_name_or_an_untrusted_ca_fails(
    hosts: tuple[VirtualHost, VirtualHost],
) -> None:
    ca = trustme.CA()
    server = await start_tls_server(hosts[0], ca)
    # The real ssl module's class: asyncio and anyio catch the module in effect.
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        await asyncio.open_connection(
            "10.0.0.2", 443, ssl=client_context(ca), server_hostname="other.internal"
        )
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        await asyncio.open_connection("web.internal", 443, ssl=client_context(trustme.CA()))
    with pytest.raises(ssl.SSLCertVerificationError, match="no trusted CA"):
        await asyncio.open_connection("web.internal", 443, ssl=client_context(None))
    # Checking turned off, as ssl.CERT_NONE does: the session works.
    unchecked = client_context(None)
    unchecked.check_hostname = False
    unchecked.verify_mode = _ssl_standin.CERT_NONE
    reader, writer = await asyncio.open_connection("web.internal", 443, ssl=unchecked)
    assert writer.get_extra_info("peercert") == {}
    writer.write(b"anyway\n")
    assert await reader.read() == b"secret: anyway\n"
    writer.close()
    server.close()
    await server.wait_closed()


async def test_without_the_backend_the_error_says_what_to_do(
    hosts: tuple[VirtualHost, VirtualHost],
) -> None:
    server = await start_tls_server(hosts[0], trustme.CA())
    netshim.tls.disable()
    with pytest.raises(_ssl_standin.SSLError, match=r"netshim\.tls\.enable\(\)"):
        await asyncio.open_connection("web.internal", 443, ssl=client_context(None))
    server.close()
    await server.wait_closed()


def test_chain_through_an_intermediate_and_names() -> None:
    root = trustme.CA()
    intermediate = root.create_child_ca()
    leaf = intermediate.issue_cert("*.example.test", "192.0.2.7")
    chain = [Certificate.from_der(b).der for b in [
        ssl.PEM_cert_to_DER_cert(blob.bytes().decode()) for blob in leaf.cert_chain_pems
    ]]  # fmt: skip
    root_der = ssl.PEM_cert_to_DER_cert(root.cert_pem.bytes().decode())
    checked = verify_chain(chain, [root_der])
    match_hostname(checked, "a.example.test")
    match_hostname(checked, "192.0.2.7")
    for wrong in ("example.test", "a.b.example.test", "192.0.2.8"):
        with pytest.raises(CertificateError, match="mismatch"):
            match_hostname(checked, wrong)
    # Outside the validity period, however well signed.
    future = checked.not_after + datetime.timedelta(days=1)
    with pytest.raises(CertificateError, match="expired"):
        verify_chain(chain, [root_der], now=future)
    # Without the intermediate the chain does not reach the root.
    with pytest.raises(CertificateError, match="local issuer"):
        verify_chain(chain[:1], [root_der])
    # A certificate signed by another key with the same issuer name is refused.
    impostor = trustme.CA()
    impostor_der = ssl.PEM_cert_to_DER_cert(impostor.cert_pem.bytes().decode())
    assert Certificate.from_der(impostor_der).subject != Certificate.from_der(root_der).subject
    with pytest.raises(CertificateError):
        verify_chain(chain, [impostor_der])
