"""DNS-over-HTTPS (RFC 8484) as a resolver transport, for stacks with TCP but no UDP.

One exchange is one HTTP/1.1 ``POST`` of the query as
``application/dns-message`` over TLS over the stack's TCP, with
``Connection: close``.  TLS runs in memory (anyio's ``TLSStream``, built on
``ssl.MemoryBIO``) above the stack's byte stream, so it works on every stack,
virtual ones included, and checks the server's certificate and name as any
HTTPS client does.  The reply body is bounded by the 64 KiB a DNS message
can have, and the headers by :data:`MAX_HEADER_BYTES`.
"""

from __future__ import annotations

import ssl
import urllib.parse
from typing import Final

import anyio
from anyio.streams.tls import TLSStream

from ..protocols.dns import MAX_MESSAGE_SIZE
from ..stack import Stack

__all__ = ["DohError", "doh_exchange", "parse_doh_url"]

MEDIA_TYPE: Final = "application/dns-message"
# Well above what a DoH server sends back (status line, a dozen headers), and
# small enough that a hostile server cannot make us buffer much.
MAX_HEADER_BYTES: Final = 16 * 1024


class DohError(Exception):
    """The DoH server did not give a DNS message: bad status, type, framing or TLS."""


def parse_doh_url(url: str) -> tuple[str, int, str]:
    """``(host, port, path)`` of an ``https://`` URL; ``ValueError`` for anything else."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"a DoH URL is https://host[:port]/path, got {url!r}")
    path = parts.path or "/dns-query"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, parts.port or 443, path


def _request(host: str, port: int, path: str, payload: bytes) -> bytes:
    authority = f"[{host}]" if ":" in host else host
    if port != 443:
        authority += f":{port}"
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {authority}\r\n"
        f"Content-Type: {MEDIA_TYPE}\r\n"
        f"Accept: {MEDIA_TYPE}\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + payload


def parse_http_response(data: bytes, *, eof: bool) -> bytes | None:
    """The body of a complete HTTP/1.1 DoH response in ``data``, or ``None`` to read more.

    Raises :class:`DohError` for a status other than 200, another content
    type, chunked or over-long bodies, or a response cut short at ``eof``.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_HEADER_BYTES:
            raise DohError(f"HTTP headers longer than {MAX_HEADER_BYTES} bytes")
        if eof:
            raise DohError("connection closed inside the HTTP headers")
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("HTTP/1.") or not status[1].isdigit():
        raise DohError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    if status[1] != "200":
        raise DohError(f"DoH server answered HTTP {' '.join(status[1:])}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise DohError(f"malformed HTTP header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    if headers.get("content-type", "").split(";")[0].strip().lower() != MEDIA_TYPE:
        raise DohError(f"DoH answer has content type {headers.get('content-type')!r}")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise DohError("chunked DoH answers are not supported; send Content-Length")
    body = data[end + 4 :]
    length_text = headers.get("content-length")
    if length_text is not None:
        if not length_text.isdigit() or int(length_text) > MAX_MESSAGE_SIZE:
            raise DohError(f"bad Content-Length {length_text!r}")
        length = int(length_text)
        if len(body) >= length:
            return body[:length]
        if eof:
            raise DohError(f"connection closed after {len(body)} of {length} body bytes")
        return None
    if len(body) > MAX_MESSAGE_SIZE:
        raise DohError("DoH answer body longer than a DNS message can be")
    return body if eof else None


async def doh_exchange(
    stack: Stack, url: str, payload: bytes, context: ssl.SSLContext | None
) -> bytes:
    """Send one query to ``url`` over ``stack`` and return the response message.

    Raises :class:`DohError` (or ``OSError`` from the stack) when there is no
    DNS message to return.  The caller bounds the time with ``anyio.fail_after``.
    """
    host, port, path = parse_doh_url(url)
    context = context or ssl.create_default_context()
    stream = await stack.connect_tcp(host, port)
    try:
        tls = await TLSStream.wrap(stream, hostname=host, ssl_context=context)
    except (ssl.SSLError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
        await stream.aclose()
        raise DohError(f"TLS with {host}:{port} failed: {exc}") from None
    async with tls:
        await tls.send(_request(host, port, path, payload))
        data = b""
        while True:
            try:
                chunk = await tls.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                chunk = b""
            data += chunk
            body = parse_http_response(data, eof=not chunk)
            if body is not None:
                return body
            if len(data) > MAX_HEADER_BYTES + MAX_MESSAGE_SIZE:
                raise DohError("DoH answer longer than any DNS message")
