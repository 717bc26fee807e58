"""What the shim tests share: the installed network they run on, TLS contexts, a line server."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

import trustme

from netshim import VirtualHost, VirtualNetwork


@dataclass
class Installed:
    net: VirtualNetwork
    web: VirtualHost
    client: VirtualHost


def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context for ``web.internal`` and a client context trusting it (a new CA each)."""
    authority = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("web.internal").configure_cert(server)
    client = ssl.create_default_context()
    authority.configure_trust(client)
    return server, client


async def answer_upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An asyncio stream handler: one line back in capitals, then the peer's address; closes."""
    line = await reader.readline()
    peer = writer.get_extra_info("peername")
    writer.write(line.upper() + f"{peer[0]}\n".encode())
    await writer.drain()
    writer.close()
    await writer.wait_closed()
