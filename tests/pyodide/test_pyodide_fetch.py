"""FetchStack in real Pyodide: unmodified HTTP clients through the host's fetch, no gateway.

Under Node (the pinned npm pyodide; Node's own fetch) and in Debian's headless
Chromium (the page and the test server share one origin; a second origin
allows CORS on /cors/ and not on /nocors/).  The script is
tests/pyodide/scripts/fetch_clients.py; the servers are in fetch_support.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from fetch_support import origin_server, websocket_echo_server
from pyodide_support import (
    PEER_DIR,
    SCRIPTS,
    build_netshim_wheel,
    dependency_wheels,
    free_port,
    require_pyodide,
    result_of,
    run_in_pyodide,
)

from netshim._pyodide_cli import download_pure_wheels
from netshim.testing import require_peer

# What the script imports besides netshim's own dependencies.
HTTPX = ("httpx", "httpcore", "h11", "certifi", "sniffio")
# Node 20 has JSPI behind this flag (pyodide.ffi.can_run_sync() is then True).
JSPI = ("--experimental-wasm-stack-switching",)
# What the Web Worker script imports besides those.
SYNC_CLIENTS = ("requests", "urllib3", "charset_normalizer")
PAGE = Path(__file__).resolve().parent / "fetch_page"


def pure_wheel(name: str) -> Path:
    """The pure-Python wheel of ``name`` at its installed version (pip picks a
    platform wheel for this Python otherwise), cached beside the others."""
    import importlib.metadata

    version = importlib.metadata.version(name)
    cache = PEER_DIR / ".wheels"
    wanted = cache / f"{name}-{version}-py3-none-any.whl"
    if not wanted.exists():
        download_pure_wheels([f"{name}=={version}"], cache)
    return wanted


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    require_pyodide()
    return [
        build_netshim_wheel(tmp_path_factory.mktemp("wheel")),
        *dependency_wheels(),
        *dependency_wheels(HTTPX),
        pure_wheel("websockets"),
    ]


def run_under_node(
    wheels: list[Path], node_options: tuple[str, ...], tmp_path: Path
) -> dict[str, Any]:
    import trustme

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with (
        origin_server() as (base, _),
        origin_server(tls=server_context) as (secure, _),
        websocket_echo_server() as websocket_url,
    ):
        completed = run_in_pyodide(
            "fetch_clients.py",
            wheels,
            env={
                "NETSHIM_BASE": base,
                "NETSHIM_HTTPS_BASE": secure,
                "NETSHIM_WS_URL": websocket_url,
                "NETSHIM_REFUSED": f"http://127.0.0.1:{free_port()}/",
                # Node's fetch trusts the test CA as a browser would its store.
                "NODE_EXTRA_CA_CERTS": str(ca_file),
            },
            node_options=node_options,
            timeout=300,
        )
    result: dict[str, Any] = result_of(completed)
    return result


def check_async_clients(result: dict[str, Any]) -> None:
    assert result["platform"] == "emscripten"
    assert result["get"] == [200, "hello through fetch", "netshim-test"]
    # httpcore keeps one connection: install() answers its "did the server close
    # this idle connection?" check from the transport (no descriptor to select on).
    assert result["connections_for_51_gets"] == 1
    assert result["head"] == [200, "19", ""]
    assert result["download"] == [10 * 1024 * 1024, result["post_expected"]]
    # A program that stops reading holds the body back: JavaScript read
    # ahead to its bound plus the chunk that crossed it (Chromium hands
    # chunks of up to 2 MiB), not to the end of the 10 MiB.
    ahead, finished, bound = result["read_ahead"]
    assert bound <= ahead < 10 * 1024 * 1024
    assert not finished
    assert result["post"]["size"] == 10 * 1024 * 1024
    assert result["post"]["sha256"] == result["post_expected"]
    assert result["chunked_upload"] == len(b"piece 0;") * 4
    assert result["chunked"] == "one,two,three"
    assert result["redirect"] == [200, "hello through fetch"]
    assert result["statuses"] == [404, 500]
    assert result["cookie"] == "netshim=baked"
    assert result["headers_seen"]["x-test"] == "1"
    assert "ConnectionResetError" in result["cut"]
    assert "ConnectionRefusedError" in result["refused"]
    assert "failed" in result["refused_message"]
    # The websockets library's asyncio client: an upgrade became the host's WebSocket.
    assert result["websocket"] == ["hello, socket", 256 * 400, True]
    if "https" in result:
        # httpx over https: anyio's TLSStream got the browser-TLS object.
        assert result["https"] == [200, "hello through fetch"]


@pytest.mark.peer("node")
def test_fetch_stack_under_node(wheels: list[Path], tmp_path: Path) -> None:
    """Async clients work without JSPI; a blocking one says how to get blocking."""
    result = run_under_node(wheels, (), tmp_path)
    check_async_clients(result)
    print("node:", result["requests_per_second"], "requests/s,", result["post_mb_per_s"], "MB/s up")
    assert result["https"] == [200, "hello through fetch"]
    assert result["can_block"] is False
    assert result["sync_error"][0] == "CannotBlockError"
    assert "JSPI" in result["sync_error"][1]


@pytest.mark.peer("node")
def test_fetch_stack_under_node_with_jspi(wheels: list[Path], tmp_path: Path) -> None:
    result = run_under_node(wheels, JSPI, tmp_path)
    check_async_clients(result)
    assert result["can_block"] is True
    assert "sync_error" not in result, result
    assert result["http_client"] == [
        [200, "hello through fetch"],
        [200, "hello through fetch"],
        100000,
    ]
    assert result["urllib"] == "one,two,three"
    assert "ConnectionRefusedError" in result["urllib_refused"]
    # http.client and urllib over https: wrap_socket marks the stream secure.
    assert result["https_http_client"] == [200, "hello through fetch"]
    assert result["https_urllib"] == "one,two,three"


def tls_server_context() -> tuple[ssl.SSLContext, str]:
    """A server context with a trustme certificate for 127.0.0.1, and its key's SPKI hash.

    The hash (base64 SHA-256 of the SubjectPublicKeyInfo) is what Chromium's
    --ignore-certificate-errors-spki-list takes.
    """
    import trustme
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(context)
    certificate = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return context, base64.b64encode(hashlib.sha256(spki).digest()).decode()


def write_wheel_index(directory: Path) -> None:
    names = sorted(path.name for path in directory.glob("*.whl"))
    (directory / "index.json").write_text(json.dumps(names))


def run_in_chromium(
    wheels: list[Path], tmp_path_factory: pytest.TempPathFactory, extra: dict[str, str]
) -> dict[str, Any]:
    """A script in Chromium from a page whose origin is the test server; its ``result``.

    ``extra`` goes into the page's query (``script=``, ``worker=1``, ``jspi=0``).
    """
    chromium = require_peer("chromium")
    if not (PEER_DIR / "node_modules" / "playwright-core").exists():
        pytest.fail("playwright-core is not installed: npm ci in tests/peers/pyodide")
    wheel_dir = tmp_path_factory.mktemp("page-wheels")
    for wheel in wheels:
        shutil.copy(wheel, wheel_dir)
    write_wheel_index(wheel_dir)
    files = {
        "/page/": PAGE,
        "/pyodide/": PEER_DIR / "node_modules" / "pyodide",
        "/wheels/": wheel_dir,
        "/scripts/": SCRIPTS,
    }
    server_context, spki = tls_server_context()
    with origin_server(files) as (base, _):
        page_origin = base.rstrip("/")
        with (
            origin_server(allow_origin=page_origin) as (other, _),
            origin_server(allow_origin=page_origin, tls=server_context) as (secure, _),
            websocket_echo_server() as websocket_url,
        ):
            query = urllib.parse.urlencode(
                {
                    "NETSHIM_BASE": base,
                    "NETSHIM_CORS_BASE": other,
                    # Another origin, so its CORS paths.
                    "NETSHIM_HTTPS_BASE": secure + "cors/",
                    "NETSHIM_WS_URL": websocket_url,
                    "NETSHIM_REFUSED": f"http://127.0.0.1:{free_port()}/",
                    **extra,
                }
            )
            completed = subprocess.run(
                [
                    require_pyodide(),
                    str(PEER_DIR / "browser.mjs"),
                    f"{base}page/index.html?{query}",
                ],
                cwd=PEER_DIR,
                env={
                    **os.environ,
                    "NETSHIM_CHROMIUM": chromium,
                    # Chromium trusts the test server's key as it would a CA's certificate.
                    "NETSHIM_CHROMIUM_ARGS": f"--ignore-certificate-errors-spki-list={spki}",
                },
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
    if completed.returncode != 0:
        pytest.fail(
            f"the page failed in Chromium:\n{completed.stdout[-4000:]}\n{completed.stderr[-4000:]}"
        )
    report: dict[str, Any] = json.loads(completed.stdout.splitlines()[-1])
    result: dict[str, Any] = report["result"]
    assert "error" not in result, report
    return result


@pytest.fixture(scope="module")
def chromium_result(wheels: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """fetch_clients.py in Chromium, from a page whose origin is the test server."""
    return run_in_chromium(wheels, tmp_path_factory, {})


@pytest.fixture(scope="module")
def worker_result(wheels: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """fetch_sync_clients.py in a dedicated Worker of that page, with JSPI hidden."""
    return run_in_chromium(
        [*wheels, *(pure_wheel(name) for name in SYNC_CLIENTS)],
        tmp_path_factory,
        {"script": "fetch_sync_clients.py", "worker": "1", "jspi": "0"},
    )


@pytest.mark.peer("chromium")
def test_fetch_stack_in_chromium_async_clients(chromium_result: dict[str, Any]) -> None:
    check_async_clients(chromium_result)
    # Figures for the docs (seen with pytest -s); not a timed test.
    print("chromium:", chromium_result["requests_per_second"], "requests/s,",
          chromium_result["post_mb_per_s"], "MB/s up")  # fmt: skip


@pytest.mark.peer("chromium")
def test_fetch_stack_in_chromium_cors(chromium_result: dict[str, Any]) -> None:
    """A second origin: allowed where its CORS headers say so, else ConnectionRefusedError."""
    assert chromium_result["cors_allowed"] == [200, "hello through fetch"]
    assert "ConnectionRefusedError" in chromium_result["cors_refused"]
    assert "Failed to fetch" in chromium_result["cors_message"]
    # Headers the browser refuses were left out (and it sent its own).
    seen = chromium_result["headers_seen"]
    assert seen["accept-encoding"] != "gzip, deflate"
    assert "sec-fetch-mode" in seen


@pytest.mark.peer("chromium")
def test_fetch_stack_in_chromium_blocking_clients_with_jspi(
    chromium_result: dict[str, Any],
) -> None:
    assert chromium_result["can_block"] is True
    assert "sync_error" not in chromium_result, chromium_result
    assert chromium_result["http_client"] == [
        [200, "hello through fetch"],
        [200, "hello through fetch"],
        100000,
    ]
    assert chromium_result["urllib"] == "one,two,three"
    assert "ConnectionRefusedError" in chromium_result["urllib_refused"]
    assert chromium_result["https_http_client"] == [200, "hello through fetch"]
    assert chromium_result["https_urllib"] == "one,two,three"


@pytest.mark.peer("chromium")
def test_fetch_stack_in_chromium_https(chromium_result: dict[str, Any]) -> None:
    """httpx over https: TLS is the browser's (the test's key is trusted by its SPKI)."""
    assert chromium_result["https"] == [200, "hello through fetch"]


@pytest.mark.peer("chromium")
def test_fetch_stack_in_a_worker_without_jspi(worker_result: dict[str, Any]) -> None:
    """Where Pyodide cannot suspend, a Worker's blocking sockets use synchronous XHR."""
    result = worker_result
    assert result["platform"] == "emscripten"
    assert result["can_block"] is False
    assert result["xhr_available"] is True
    assert result["blocking_backend"] == "XhrFetchBackend"
    errors = {name: value for name, value in result.items() if name.endswith("_error")}
    assert errors == {}
    # install() put urllib3's socket connections back in place of its own fetch backend.
    assert result["urllib3_connection"] == "urllib3.connection"
    # Every blocking request was one synchronous XHR; fetch served only asyncio's.
    assert result["calls"]["xhr"] >= 20
    assert result["calls"]["fetch"] == 1
    # A plain JavaScript callback (no Python task) blocks the same way.
    assert result["from_callback"] == [True, "hello through fetch"]
    # asyncio beside them still goes through fetch, not XHR.
    assert result["asyncio_beside"] == ["HTTP/1.1 200 OK", True, 1, 0]


@pytest.mark.peer("chromium")
def test_requests_in_a_worker(worker_result: dict[str, Any]) -> None:
    result = worker_result
    assert result["requests_get"] == [200, "hello through fetch", "netshim-test"]
    assert result["requests_post"] == result["requests_post_expected"]
    assert result["requests_chunked"] == "one,two,three"
    status, text, url = result["requests_redirect"]
    assert [status, text] == [200, "hello through fetch"]
    assert url.endswith("/redirect")  # XHR follows it; the program sees the final answer
    assert result["requests_statuses"] == [404, 500]
    assert result["requests_cookie"] == "netshim=baked"
    assert result["requests_big"] == 10 * 1024 * 1024
    assert result["requests_cors_allowed"] == [200, "hello through fetch"]
    assert "ConnectionRefusedError" in result["requests_cors_refused"]
    assert "XMLHttpRequest GET" in result["requests_cors_message"]
    assert "NetworkError" in result["requests_cors_message"]
    # A body cut off midway: synchronous XHR reports it as it reports a refusal.
    assert "ConnectionRefusedError" in result["requests_cut"]
    assert result["requests_https"] == [200, "hello through fetch"]


@pytest.mark.peer("chromium")
def test_urllib_and_http_client_in_a_worker(worker_result: dict[str, Any]) -> None:
    result = worker_result
    assert result["urllib_chunked"] == "one,two,three"
    assert result["urllib_post"] == 100000
    assert result["urllib_redirect"] == [200, "hello through fetch"]
    assert result["urllib_missing"] == [404, "no such thing"]
    assert result["urllib_https"] == "one,two,three"
    assert "ConnectionRefusedError" in result["urllib_refused"]
    assert result["http_client"] == [
        [200, "hello through fetch"],
        [200, "hello through fetch"],
        100000,
        [500, "server error"],
    ]
    assert result["http_client_https"] == [200, "hello through fetch"]
    # A WebSocket cannot open from a blocking socket: answered 501, saying why.
    status, why = result["websocket_upgrade"]
    assert status == 501
    assert "WebSocket" in why
    assert "JSPI" in why
