"""Inside Pyodide: TLS to the final destination with netshim.tls (tlslite-ng), over Wisp.

The gateway (CPython) only relays TCP; the TLS session runs here, in pure
Python, against a real TLS server (CPython's ssl, a trustme certificate for
localhost).  Run by tests/pyodide/test_pyodide_node.py with NETSHIM_WISP_URL,
NETSHIM_TLS_PORT and NETSHIM_CA_PEM set; prints one JSON object of findings.
"""

import asyncio
import json
import os
import sys

import netshim  # first: it gives Pyodide the ssl stand-in that httpx imports
import netshim.tls
from netshim.stacks import WispStack

import httpx  # isort: skip
import ssl  # isort: skip

result: dict[str, object] = {
    "platform": sys.platform,
    "ssl_is_standin": netshim._ssl_standin.is_standin(ssl),
}
stack = WispStack(os.environ["NETSHIM_WISP_URL"])
netshim.install(stack)
port = int(os.environ["NETSHIM_TLS_PORT"])


def context() -> ssl.SSLContext:
    made = ssl.create_default_context()
    made.load_verify_locations(cadata=os.environ["NETSHIM_CA_PEM"])
    return made


async def main() -> None:
    # Before enable(): the stand-in says what to do.
    try:
        await asyncio.open_connection("localhost", port, ssl=context())
    except ssl.SSLError as error:
        result["disabled"] = str(error)
    netshim.tls.enable()

    reader, writer = await asyncio.open_connection("localhost", port, ssl=context())
    writer.write(b"GET /raw HTTP/1.0\r\nHost: localhost\r\n\r\n")
    result["raw"] = (await reader.read()).decode().split("\r\n")[-1]
    result["version"] = writer.get_extra_info("ssl_object").version()
    result["peer_san"] = [
        list(name) for name in writer.get_extra_info("peercert")["subjectAltName"]
    ]
    writer.close()

    async with httpx.AsyncClient(verify=context()) as http:
        response = await http.get(f"https://localhost:{port}/hello")
        result["http_status"] = response.status_code
        result["http_body"] = response.text
        result["http_version"] = response.http_version

    # A name the certificate does not carry, and a CA nobody trusts, both fail.
    try:
        await asyncio.open_connection(
            "localhost", port, ssl=context(), server_hostname="wrong.example"
        )
        result["wrong_name"] = "connected"
    except ssl.SSLCertVerificationError as error:
        result["wrong_name"] = error.verify_message
    untrusted = ssl.create_default_context()
    untrusted.load_verify_locations(cadata=os.environ["NETSHIM_OTHER_CA_PEM"])
    try:
        await asyncio.open_connection("localhost", port, ssl=untrusted)
        result["untrusted"] = "connected"
    except ssl.SSLCertVerificationError as error:
        result["untrusted"] = error.verify_message
    await stack.aclose()


await main()  # type: ignore[top-level-await]  # noqa: F704 - Pyodide runs this at top level
print(json.dumps(result))
