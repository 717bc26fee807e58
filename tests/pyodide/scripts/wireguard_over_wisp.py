"""Inside Pyodide: a WireGuard peer whose encrypted UDP rides a gateway's Wisp streams.

The page's side of docs/wireguard.md's browser example: a ``wg-quick`` file,
:class:`~netshim.stacks.wireguard.WireGuardStack` with a
:class:`~netshim.stacks.WispStack` as its transport (the browser has no UDP;
the gateway sends the datagrams on), a handshake with a wireguard-go peer,
then HTTP through the tunnel to a kernel server behind that peer: once on the
stack's own streams, once with unmodified asyncio code after
``netshim.install``.  Pyodide here has no ``cryptography``, so the crypto is
tlslite-ng's pure Python.  Run by tests/pyodide/test_pyodide_wireguard.py with
NETSHIM_WISP_URL, NETSHIM_WG_CONFIG and NETSHIM_HTTP_HOST / _PORT set; prints
one JSON object of findings.
"""

import asyncio
import importlib.util
import json
import os
import sys
import time

import anyio

import netshim
from netshim.stacks import WispStack
from netshim.stacks.wireguard import WireGuardStack

result: dict[str, object] = {
    "platform": sys.platform,
    "cryptography_installed": importlib.util.find_spec("cryptography") is not None,
}
host = os.environ["NETSHIM_HTTP_HOST"]
port = int(os.environ["NETSHIM_HTTP_PORT"])
request = f"GET /hello.txt HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()
events: list[str] = []

wisp = WispStack(os.environ["NETSHIM_WISP_URL"])
stack = WireGuardStack.from_config(
    os.environ["NETSHIM_WG_CONFIG"],
    transport=wisp,
    on_event=lambda event: events.append(type(event).__name__),
)
result["backend"] = stack.device.crypto.name


def split(response: bytes) -> list[str]:
    head, _, body = response.partition(b"\r\n\r\n")
    return [head.split(b"\r\n")[0].decode(), body.decode()]


async def main() -> None:
    async with stack:
        started = time.perf_counter()
        await stack.handshake()
        result["handshake_ms"] = round((time.perf_counter() - started) * 1000)
        # The stack's own streams.
        stream = await stack.connect_tcp(host, port)
        await stream.send(request)
        response = b""
        while True:
            try:
                response += await stream.receive()
            except anyio.EndOfStream:
                break
        await stream.aclose()
        result["stack_stream"] = split(response)
        # Unmodified asyncio code, once the stack is installed.
        netshim.install(stack)
        try:
            reader, writer = await asyncio.open_connection(host, port)
            result["asyncio_peer"] = list(writer.get_extra_info("peername")[:2])
            writer.write(request)
            result["asyncio"] = split(await reader.read())
            writer.close()
        finally:
            netshim.uninstall()
        result["events"] = events
        result["dropped"] = stack.wireguard_dropped
        (peer,) = stack.peers
        result["peer_endpoint"] = list(peer.endpoint or ())
        result["rx_bytes"] = peer.rx_bytes
    await wisp.aclose()


await main()  # type: ignore[top-level-await]  # noqa: F704 - Pyodide runs this at top level
print(json.dumps(result))
