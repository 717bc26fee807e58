"""netshim inside real Pyodide under Node: the wheel installs, and asyncio runs on the stack.

Pyodide is the pinned npm package (tests/peers/pyodide); netshim's wheel is
built from this checkout and installed into it with its dependencies' wheels,
all from local files.  Scripts under tests/pyodide/scripts run there and report
what they saw as JSON.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pyodide_support import (
    CLIENT_LIBRARIES,
    TLS_LIBRARIES,
    build_netshim_wheel,
    dependency_wheels,
    http_server,
    https_server,
    pure_wheels,
    redis_server,
    require_pyodide,
    result_of,
    run_in_pyodide,
    wisp_gateway,
)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    require_pyodide()
    return [build_netshim_wheel(tmp_path_factory.mktemp("wheel")), *dependency_wheels()]


def test_wheel_is_pure_python(wheels: list[Path]) -> None:
    assert wheels[0].name.endswith("-py3-none-any.whl")


def test_asyncio_server_and_client_on_a_virtual_network(wheels: list[Path]) -> None:
    result = result_of(run_in_pyodide("asyncio_virtual.py", wheels))
    # Really Pyodide: WebLoop, no socketpair, no ssl module but netshim's stand-in.
    assert result["platform"] == "emscripten"
    assert result["loop"] == "WebLoop"
    assert "OSError" in result["socketpair"]
    assert result["server_sockname"] == ["0.0.0.0", 7]
    assert result["peername"] == ["10.0.0.2", 7]
    assert result["echo_ok"] is True
    assert result["after_eof"] == ""
    assert result["getaddrinfo"] == ["10.0.0.2", "fd00::2"]
    assert result["udp"] == ["margatad", ["10.0.0.2", 9]]
    assert result["anyio"] == "ANYIO"
    assert result["anyio_remote"] == ["10.0.0.2", 7]
    assert result["refused_is_econnrefused"] is True


def test_redis_and_httpx_through_the_gateway_over_wisp(wheels: list[Path]) -> None:
    libraries = dependency_wheels(CLIENT_LIBRARIES)
    with redis_server() as redis_port, http_server(b"hello, wasm") as url, wisp_gateway() as wisp:
        completed = run_in_pyodide(
            "wisp_clients.py",
            [*wheels, *libraries],
            env={
                "NETSHIM_WISP_URL": wisp,
                "NETSHIM_REDIS_PORT": str(redis_port),
                "NETSHIM_HTTP_URL": url,
            },
        )
    result = result_of(completed)
    assert result["platform"] == "emscripten"
    assert result["ping"] is True
    assert result["get"] == "hello from wasm"
    assert result["round_trips_per_second"] > 0
    # A reply wakes the command waiting for it with one loop callback: the
    # task's own (WebLoop's futures added a second one for their bookkeeping).
    assert result["loop_callbacks_per_command"] <= 1
    assert result["http_status"] == 200
    assert result["http_body"] == "hello, wasm"
    assert result["wisp_version"] == 2


# Node 20 has JSPI (WebAssembly stack switching) behind this flag; Pyodide
# then reports pyodide.ffi.can_run_sync() as True.
JSPI = ("--experimental-wasm-stack-switching",)


def run_sync_sockets(wheels: list[Path], node_options: tuple[str, ...]) -> dict[str, object]:
    libraries = [*dependency_wheels(CLIENT_LIBRARIES), *pure_wheels()]
    with redis_server() as redis_port, wisp_gateway() as wisp:
        completed = run_in_pyodide(
            "sync_sockets.py",
            [*wheels, *libraries],
            env={"NETSHIM_WISP_URL": wisp, "NETSHIM_REDIS_PORT": str(redis_port)},
            node_options=node_options,
        )
    result: dict[str, object] = result_of(completed)
    return result


def check_calls_that_never_wait(result: dict[str, object]) -> None:
    assert result["platform"] == "emscripten"
    assert result["socket_class"] == "StackSocket"
    # Unmodified http.client against a server socket in the same program.
    assert result["server_peer"] == ["10.0.0.3", result["server_peer"][1]]  # type: ignore[index]
    assert result["request_line"] == "GET /hello HTTP/1.1"
    assert result["http"] == [200, "hello, socket!"]
    assert result["nonblocking_accept"] == "EAGAIN"


def test_sync_sockets_without_jspi(wheels: list[Path]) -> None:
    result = run_sync_sockets(wheels, ())
    assert result["can_block"] is False
    check_calls_that_never_wait(result)
    # Calls that would have to wait say why, and what to do instead.
    name, is_ewouldblock, message = result["async_server_error"]  # type: ignore[misc]
    assert (name, is_ewouldblock) == ("CannotBlockError", True)
    assert "socket.recv() would have to wait" in message
    assert "JSPI" in message
    assert "can_run_sync() is False" in message
    assert result["after_answer"] == "cannot block"
    assert result["timeout"] == "cannot block"
    # requests keeps urllib3's fetch backend, which cannot see the virtual network.
    assert result["urllib3_connection"] == "EmscriptenHTTPConnection"
    assert result["requests"] != [200, "requests via /netshim"]
    # A tunnel always waits for its gateway: the connect says so, also under redis-py.
    assert result["redis_error"][0] == "CannotBlockError"  # type: ignore[index]
    assert "socket.connect() would have to wait" in result["tunnel_connect"]  # type: ignore[operator]


def test_sync_sockets_with_jspi(wheels: list[Path]) -> None:
    result = run_sync_sockets(wheels, JSPI)
    assert result["can_block"] is True
    check_calls_that_never_wait(result)
    # The loop runs while a blocking call waits: an asyncio server answers it.
    assert result["async_server_answer"] == "FROM A BLOCKING SOCKET"
    assert result["after_answer"] == "eof"
    assert result["timeout"] == ["TimeoutError", "timed out"]
    # requests on urllib3's own sockets, through netshim, to the virtual network.
    assert result["urllib3_connection"] == "HTTPConnection"
    assert result["requests"] == [200, "requests via /netshim"]
    # Blocking redis-py through the gateway over Wisp, to a real redis-server.
    assert result["redis_get"] == "blocking redis-py in wasm"
    assert result["redis_round_trips_per_second"] > 0  # type: ignore[operator]
    assert result["tunnel_connect"] == "connected"


def test_tls_to_the_destination_with_tlslite_over_wisp(wheels: list[Path]) -> None:
    import trustme

    libraries = dependency_wheels(CLIENT_LIBRARIES + TLS_LIBRARIES)
    other_ca = trustme.CA().cert_pem.bytes().decode()
    with https_server(b"hello, tls in wasm") as (port, ca_pem), wisp_gateway() as wisp:
        completed = run_in_pyodide(
            "tls_clients.py",
            [*wheels, *libraries],
            env={
                "NETSHIM_WISP_URL": wisp,
                "NETSHIM_TLS_PORT": str(port),
                "NETSHIM_CA_PEM": ca_pem,
                "NETSHIM_OTHER_CA_PEM": other_ca,
            },
            timeout=300,
        )
    result = result_of(completed)
    assert result["platform"] == "emscripten"
    assert result["ssl_is_standin"] is True
    assert "netshim.tls.enable()" in result["disabled"]
    # The raw GET on a TLS stream, then unmodified httpx, both checked against the CA.
    assert result["raw"] == "hello, tls in wasm"
    assert result["version"] == "TLSv1.3"
    assert result["peer_san"] == [["DNS", "localhost"], ["IP Address", "127.0.0.1"]]
    assert result["http_status"] == 200
    assert result["http_body"] == "hello, tls in wasm"
    assert "Hostname mismatch" in result["wrong_name"]
    assert result["untrusted"] == "unable to get local issuer certificate"
