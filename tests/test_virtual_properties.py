"""Properties of virtual TCP under any fault settings, checked with hypothesis.

TCP on the virtual network must deliver exactly the bytes sent, in order,
whatever the link does (latency, jitter, bandwidth, the UDP-only faults, a
partition that heals later); with ``reset_after`` it delivers exactly a prefix
of the budget's length and then resets.  Each example runs in trio's virtual
time, so seconds of simulated delay cost nothing.
"""

from __future__ import annotations

import anyio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from netshim import VirtualNetwork

conditions = st.fixed_dictionaries(
    {
        "latency": st.floats(0, 0.5),
        "jitter": st.floats(0, 0.2),
        "bandwidth": st.none() | st.floats(1_000, 1e9),
        "loss": st.floats(0, 1),
        "duplicate": st.floats(0, 1),
        "reorder": st.floats(0, 1),
    }
)
chunks = st.lists(st.binary(min_size=0, max_size=70_000), max_size=12)
receive_sizes = st.lists(st.integers(1, 100_000), min_size=1, max_size=8)


def run_virtual(function: object, *args: object) -> object:
    clock = trio.testing.MockClock(autojump_threshold=0)
    return anyio.run(function, *args, backend="trio", backend_options={"clock": clock})  # type: ignore[arg-type]


async def transfer(
    seed: int,
    link: dict[str, float | None],
    forward: list[bytes],
    backward: list[bytes],
    sizes: list[int],
    partition_for: float | None,
    reset_after: int | None,
) -> tuple[bytes, bytes, bool, bool]:
    net = VirtualNetwork(seed=seed)
    server_host, client_host = net.add_host("server"), net.add_host("client")
    net.set_link(server_host, client_host, **link)  # type: ignore[arg-type]
    net.reset_after(server_host, client_host, reset_after)
    listener = await server_host.listen_tcp("0.0.0.0", 80)
    client = await client_host.connect_tcp(server_host.addresses[0], 80)
    server = await listener.accept()
    received: dict[str, bytes] = {}
    reset_seen: dict[str, bool] = {"server": False, "client": False}

    async def pump(name: str, sender: object, receiver: object, parts: list[bytes]) -> None:
        async def send() -> None:
            try:
                for part in parts:
                    await sender.send(part)  # type: ignore[attr-defined]
                await sender.send_eof()  # type: ignore[attr-defined]
            except (ConnectionResetError, BrokenPipeError):
                pass

        async def receive() -> None:
            data = bytearray()
            index = 0
            try:
                while True:
                    data += await receiver.receive(sizes[index % len(sizes)])  # type: ignore[attr-defined]
                    index += 1
            except anyio.EndOfStream:
                pass
            except ConnectionResetError:
                reset_seen[name] = True
            received[name] = bytes(data)

        async with anyio.create_task_group() as group:
            group.start_soon(send)
            group.start_soon(receive)

    async def cut() -> None:
        if partition_for is not None:
            net.partition(server_host, client_host)
            await anyio.sleep(partition_for)
            net.heal()

    async with anyio.create_task_group() as group:
        group.start_soon(cut)
        group.start_soon(pump, "server", client, server, forward)
        group.start_soon(pump, "client", server, client, backward)
    return received["server"], received["client"], reset_seen["server"], reset_seen["client"]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    link=conditions,
    forward=chunks,
    backward=chunks,
    sizes=receive_sizes,
    partition_for=st.none() | st.floats(0, 30),
)
def test_tcp_delivers_exactly_what_was_sent(
    seed: int,
    link: dict[str, float | None],
    forward: list[bytes],
    backward: list[bytes],
    sizes: list[int],
    partition_for: float | None,
) -> None:
    at_server, at_client, reset_server, reset_client = run_virtual(  # type: ignore[misc]
        transfer, seed, link, forward, backward, sizes, partition_for, None
    )
    assert at_server == b"".join(forward)
    assert at_client == b"".join(backward)
    assert not reset_server
    assert not reset_client


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    link=conditions,
    forward=chunks.filter(lambda parts: sum(map(len, parts)) > 0),
    sizes=receive_sizes,
    budget=st.integers(0, 200_000),
)
def test_reset_after_delivers_a_prefix_then_resets(
    seed: int,
    link: dict[str, float | None],
    forward: list[bytes],
    sizes: list[int],
    budget: int,
) -> None:
    at_server, _, reset_server, _ = run_virtual(  # type: ignore[misc]
        transfer, seed, link, forward, [], sizes, None, budget
    )
    payload = b"".join(forward)
    if budget <= len(payload):
        assert at_server == payload[:budget]
        assert reset_server
    else:
        assert at_server == payload
