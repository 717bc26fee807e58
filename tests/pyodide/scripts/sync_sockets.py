"""Inside Pyodide: the synchronous socket API on netshim, with and without JSPI.

Run by tests/pyodide/test_pyodide_node.py twice: on plain Node (no JSPI stack
switching: calls that never wait work, the others raise CannotBlockError) and
on Node with --experimental-wasm-stack-switching (every call works, tunnels
included).  With NETSHIM_WISP_URL and NETSHIM_REDIS_PORT it also reaches a
real redis-server through the gateway.  Prints one JSON object of findings.
"""

import asyncio
import errno
import http.client
import json
import os
import socket
import sys
import time

import netshim  # first: it gives Pyodide the ssl module that redis-py imports
from netshim import VirtualNetwork
from netshim.aio import CannotBlockError, can_block
from netshim.stacks import WispStack

import redis  # isort: skip

result: dict[str, object] = {"platform": sys.platform, "can_block": can_block()}
net = VirtualNetwork(seed=0)
web = net.add_host("web.internal", ["10.0.0.2"])
laptop = net.add_host("laptop", ["10.0.0.3"])
netshim.install(laptop)
result["socket_class"] = socket.socket.__name__

# One program is server and client, with unmodified http.client as the client:
# no call has to wait, since each side acts only once the other has.
with netshim.acting_as(web):
    server = socket.socket()
    server.bind(("", 80))
    server.listen()
client = http.client.HTTPConnection("web.internal", 80)
client.request("GET", "/hello")
conn, peer = server.accept()
result["server_peer"] = list(peer)
result["request_line"] = conn.recv(4096).split(b"\r\n")[0].decode()
conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\nConnection: close\r\n\r\nhello, socket!")
conn.close()
response = client.getresponse()
result["http"] = [response.status, response.read().decode()]
client.close()

# A non-blocking socket says EAGAIN, as the kernel would.
server.setblocking(False)
try:
    server.accept()
except BlockingIOError as exc:
    result["nonblocking_accept"] = errno.errorcode[exc.errno]
server.close()


async def upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write((await reader.read(100)).upper())
    await writer.drain()
    writer.close()


async def main() -> None:
    # A synchronous client of an asyncio server on the same loop: its answer
    # needs the loop to run, which only JSPI allows from a synchronous call.
    with netshim.acting_as(web):
        echo = await asyncio.start_server(upper, "0.0.0.0", 7)
    sock = socket.create_connection(("web.internal", 7))
    sock.sendall(b"from a blocking socket")
    try:
        result["async_server_answer"] = sock.recv(100).decode()
    except CannotBlockError as exc:
        is_ewouldblock = exc.errno == errno.EWOULDBLOCK
        result["async_server_error"] = [type(exc).__name__, is_ewouldblock, str(exc)]
    sock.settimeout(0.2)
    start = time.monotonic()
    try:
        sock.recv(100)  # the server closed after answering once: EOF with JSPI
        result["after_answer"] = "eof"
    except CannotBlockError:
        result["after_answer"] = "cannot block"
    result["recv_seconds"] = round(time.monotonic() - start, 2)
    sock.close()
    echo.close()

    # A blocking receive that never gets data: socket.timeout with JSPI.
    with netshim.acting_as(web):
        quiet = socket.socket()
        quiet.bind(("", 9))
        quiet.listen()
    idle = socket.create_connection(("web.internal", 9), timeout=0.3)
    try:
        idle.recv(10)
    except TimeoutError as exc:
        result["timeout"] = [type(exc).__name__, str(exc)]
    except CannotBlockError:
        result["timeout"] = "cannot block"
    idle.close()
    quiet.close()

    # requests (urllib3 2.2+, which in Pyodide sends through fetch by itself):
    # with JSPI netshim gives it back its sockets, so it reaches a host that
    # only netshim's network has; without JSPI urllib3's fetch backend stays.
    async def page(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        body = b"requests via " + request.split(b" ")[1]
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    with netshim.acting_as(web):
        site = await asyncio.start_server(page, "0.0.0.0", 8080)
    import requests
    import urllib3.connectionpool

    result["urllib3_connection"] = urllib3.connectionpool.HTTPConnectionPool.ConnectionCls.__name__
    try:
        # Blocking on purpose: with JSPI the loop (and the server) runs meanwhile.
        answer = requests.get("http://web.internal:8080/netshim", timeout=10)  # noqa: ASYNC210
        result["requests"] = [answer.status_code, answer.text]
    except Exception as exc:
        result["requests"] = [type(exc).__name__]
    site.close()

    url = os.environ.get("NETSHIM_WISP_URL")
    if url:
        stack = WispStack(url)
        netshim.install(stack)
        port = int(os.environ["NETSHIM_REDIS_PORT"])
        try:
            r = redis.Redis(host="127.0.0.1", port=port)
            r.set("netshim:sync", "blocking redis-py in wasm")
            result["redis_get"] = r.get("netshim:sync").decode()
            rounds = 200
            start = time.perf_counter()
            for number in range(rounds):
                r.set("netshim:counter", number)
                r.get("netshim:counter")
            elapsed = time.perf_counter() - start
            result["redis_round_trips_per_second"] = round(2 * rounds / elapsed)
            r.close()
        except redis.ConnectionError as exc:
            cause = exc.__cause__ or exc.__context__
            result["redis_error"] = [type(cause).__name__, str(cause or exc)]
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            result["tunnel_connect"] = "connected"
        except CannotBlockError as exc:
            result["tunnel_connect"] = str(exc)
        await stack.aclose()


await main()  # type: ignore[top-level-await]  # noqa: F704 - Pyodide runs this at top level
print(json.dumps(result))
