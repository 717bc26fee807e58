"""httpx onto FetchStack streams directly (netshim.stacks._fetch_httpcore), with a fake fetch."""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpcore
import httpx
import pytest
from test_fetch_stack import FakeFetch, FakeResponse

import netshim
from netshim.stacks import FetchStack
from netshim.stacks._fetch_http import FetchRequest
from netshim.stacks._fetch_httpcore import FetchNetworkStream
from netshim.stacks.virtual import VirtualNetwork


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class ReadyResponse(FakeResponse):
    """A body whose pieces are all there (as JavaScript's read-ahead has them)."""

    async def read(self) -> bytes | None:
        if not self.chunks:
            return None
        chunk = self.chunks.pop(0)
        if isinstance(chunk, Exception):
            raise chunk
        return chunk

    def ready(self) -> bool:
        return True


def network_stream(client: httpx.AsyncClient) -> Any:
    """The network stream of the client's one pooled connection."""
    (connection,) = client._transport._pool.connections  # type: ignore[attr-defined]
    return connection._connection._network_stream


def count_timers(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The deadlines of the timers the running loop sets from now on, filled as they come."""
    timers: list[float] = []
    loop = asyncio.get_running_loop()
    native = loop.call_at

    def counting(when: float, *args: Any, **kwargs: Any) -> Any:
        timers.append(when)
        return native(when, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting)
    return timers


@pytest.fixture(params=[True, False], ids=["direct", "through the transport"])
def direct(request: pytest.FixtureRequest) -> bool:
    flag: bool = request.param
    return flag


@pytest.fixture
def fetch_installed(direct: bool) -> Iterator[FakeFetch]:
    fake = FakeFetch()
    with netshim.installed(FetchStack(fake, direct_httpcore=direct), mode="loop"):
        yield fake


@pytest.mark.anyio
async def test_httpx_gets_the_stream_itself_unless_told_not_to(
    fetch_installed: FakeFetch, direct: bool
) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(3):
            response = await client.get("http://example.org/a")
            assert response.status_code == 200
            assert "GET http://example.org/a" in response.text
        assert isinstance(network_stream(client), FetchNetworkStream) is direct
        # One connection kept for all three (the idle check says it is alive).
        assert len(client._transport._pool.connections) == 1  # type: ignore[attr-defined]
    assert len(fetch_installed.requests) == 3


@pytest.mark.anyio
async def test_https_marks_the_stream_secure(fetch_installed: FakeFetch, direct: bool) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get("https://example.org/secure")
        assert response.status_code == 200
        stream = network_stream(client)
        ssl_object = stream.get_extra_info("ssl_object")
        assert ssl_object is not None
        assert ssl_object.selected_alpn_protocol() == "http/1.1"
    assert fetch_installed.requests[0][0].url == "https://example.org/secure"


def causes(error: BaseException | None) -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    while error is not None:
        found.append(type(error))
        error = error.__cause__ or error.__context__
    return found


@pytest.mark.anyio
async def test_errors_have_the_causes_of_the_usual_way(direct: bool) -> None:
    async def failing(request: FetchRequest, body: bytes | None) -> FakeResponse:
        if request.url.endswith("/refused"):
            raise ConnectionRefusedError(errno.ECONNREFUSED, "fetch failed: Failed to fetch")
        reset = ConnectionResetError(errno.ECONNRESET, "the body was cut off")
        return FakeResponse(200, "OK", [("content-length", "100")], [b"partial", reset])

    stack = FetchStack(FakeFetch(failing), direct_httpcore=direct)
    with netshim.installed(stack, mode="loop"):
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.ReadError) as refused:
                await client.get("http://example.org/refused")
            with pytest.raises(httpx.ReadError) as cut:
                await client.get("http://example.org/cut")
    # httpx's error, httpcore's, anyio's, then the socket's error.
    expected = [httpx.ReadError, httpcore.ReadError, anyio.BrokenResourceError]
    assert causes(refused.value) == [*expected, ConnectionRefusedError]
    assert causes(cut.value) == [*expected, ConnectionResetError]


@pytest.mark.anyio
async def test_a_read_with_the_body_there_starts_no_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    async def ready(request: FetchRequest, body: bytes | None) -> FakeResponse:
        return ReadyResponse(200, "OK", [("content-length", "6")], [b"abc", b"def"])

    stream = await FetchStack(FakeFetch(ready)).connect_tcp("h", 80)
    network = FetchNetworkStream(stream)  # type: ignore[arg-type]
    await network.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", timeout=5)
    # The head waits for fetch's answer: under a timeout.  A read smaller
    # than the head leaves the body with fetch.
    head = await network.read(20, timeout=5)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    timers = count_timers(monkeypatch)
    rest = b""
    while not rest.endswith(b"abcdef"):
        assert stream.receive_ready()
        rest += await network.read(65536, timeout=5)
    assert (head + rest).endswith(b"\r\n\r\nabcdef")
    assert timers == []
    # Nothing left and no request: a read would wait, so it is under its timeout.
    assert not stream.receive_ready()
    with pytest.raises(httpcore.ReadTimeout):
        await network.read(65536, timeout=0.01)
    assert len(timers) == 1
    await network.aclose()
    assert network.get_extra_info("is_readable")


@pytest.mark.anyio
async def test_a_small_response_comes_whole_with_its_head() -> None:
    async def ready(request: FetchRequest, body: bytes | None) -> FakeResponse:
        return ReadyResponse(200, "OK", [("content-length", "6")], [b"abc", b"def"])

    stream = await FetchStack(FakeFetch(ready)).connect_tcp("h", 80)
    network = FetchNetworkStream(stream)  # type: ignore[arg-type]
    await network.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", timeout=5)
    answer = await network.read(65536, timeout=5)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"\r\n\r\nabcdef")
    # The exchange is over: the next request can follow.
    assert stream.exchange is None
    await network.aclose()


@pytest.mark.anyio
async def test_a_read_that_waits_for_fetch_times_out() -> None:
    never = asyncio.Event()

    async def hang(request: FetchRequest, body: bytes | None) -> FakeResponse:
        await never.wait()
        raise AssertionError("unreachable")

    stream = await FetchStack(FakeFetch(hang)).connect_tcp("h", 80)
    network = FetchNetworkStream(stream)  # type: ignore[arg-type]
    await network.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", timeout=5)
    assert not stream.receive_ready()
    with pytest.raises(httpcore.ReadTimeout):
        await network.read(65536, timeout=0.01)
    await network.aclose()


@pytest.mark.anyio
async def test_only_destinations_routed_to_fetch_go_direct() -> None:
    fake = FakeFetch()
    network = VirtualNetwork()
    web = network.add_host("web.internal")
    stack = FetchStack.for_origins(
        ["example.org:80"], default=network.add_host("client"), backend=fake
    )

    async def serve(stream: Any) -> None:
        # One request (httpx sends it whole), answered; the connection kept.
        async with stream:
            await stream.receive()
            await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nlocal")
            with contextlib.suppress(anyio.EndOfStream):
                await stream.receive()

    listener = await web.listen_tcp("0.0.0.0", 8080)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, serve)
        with netshim.installed(stack, mode="loop"):
            async with httpx.AsyncClient() as fetched, httpx.AsyncClient() as local:
                assert (await fetched.get("http://example.org/x")).status_code == 200
                assert isinstance(network_stream(fetched), FetchNetworkStream)
                assert (await local.get("http://web.internal:8080/")).text == "local"
                assert not isinstance(network_stream(local), FetchNetworkStream)
        tasks.cancel_scope.cancel()
    await listener.aclose()


@dataclass
class LateResponse(FakeResponse):
    """A body whose every piece comes after a wait (the network slower than the program)."""

    def ready(self) -> bool:
        return False


@pytest.mark.anyio
async def test_waiting_reads_share_one_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    async def late(request: FetchRequest, body: bytes | None) -> FakeResponse:
        return LateResponse(200, "OK", [("content-length", "20")], [b"x" * 2] * 10)

    stream = await FetchStack(FakeFetch(late)).connect_tcp("h", 80)
    network = FetchNetworkStream(stream)  # type: ignore[arg-type]
    timers = count_timers(monkeypatch)
    await network.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", timeout=5)
    data = b""
    reads = 0
    while not data.endswith(b"x" * 20):
        assert not stream.receive_ready()
        data += await network.read(65536, timeout=5)
        reads += 1
    assert reads > 5
    # One timer for all the waits, each under its own 5 s deadline.
    assert len(timers) == 1
    await network.aclose()


@dataclass
class StalledResponse(LateResponse):
    """Its pieces after a wait each, then nothing more, ever (a stalled download)."""

    async def read(self) -> bytes | None:
        if not self.chunks:
            await asyncio.Event().wait()
        return await super().read()


@pytest.mark.anyio
async def test_a_timeout_leaves_the_task_uncancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    async def stalled(request: FetchRequest, body: bytes | None) -> FakeResponse:
        return StalledResponse(200, "OK", [("content-length", "10")], [b"abc"])

    stream = await FetchStack(FakeFetch(stalled)).connect_tcp("h", 80)
    network = FetchNetworkStream(stream)  # type: ignore[arg-type]
    timers = count_timers(monkeypatch)
    await network.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", timeout=5)
    data = b""
    while not data.endswith(b"abc"):
        data += await network.read(65536, timeout=5)
    # The timer is still set for the reads' 5 s; a shorter wait moves it sooner.
    with pytest.raises(httpcore.ReadTimeout):
        await network.read(65536, timeout=0.01)
    assert len(timers) == 2
    assert timers[1] < timers[0]
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    await asyncio.sleep(0)
    await network.aclose()


@pytest.mark.anyio
async def test_a_cancelled_wait_stays_cancelled() -> None:
    never = asyncio.Event()

    async def hang(request: FetchRequest, body: bytes | None) -> FakeResponse:
        await never.wait()
        raise AssertionError("unreachable")

    stream = await FetchStack(FakeFetch(hang)).connect_tcp("h", 80)
    network = FetchNetworkStream(stream)  # type: ignore[arg-type]
    await network.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", timeout=5)
    with anyio.move_on_after(0.01) as scope:
        await network.read(65536, timeout=5)
    assert scope.cancelled_caught
    await network.aclose()
