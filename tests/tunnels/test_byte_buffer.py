"""The tunnels' receive buffer: reads of any size give the bytes in order, then the end."""

from __future__ import annotations

import errno
import os

import anyio
import pytest

from netshim._errors import os_error
from netshim.stacks._tunnel import ByteBuffer


@pytest.mark.parametrize("read_size", [1, 7, 1000, 65536, 1 << 20])
def test_reads_of_any_size_give_every_byte_once_in_order(read_size: int) -> None:
    chunks = [os.urandom(n) for n in (26214, 5, 7000, 1, 6553)]
    buffer = ByteBuffer()
    for chunk in chunks:
        buffer.push(chunk)
    buffer.eof = True
    total = sum(map(len, chunks))
    got: list[bytes] = []
    taken = 0
    while True:
        assert buffer.size == total - taken
        try:
            piece = buffer.take(read_size)
        except anyio.EndOfStream:
            break
        assert 0 < len(piece) <= read_size
        got.append(piece)
        taken += len(piece)
    assert b"".join(got) == b"".join(chunks)
    assert buffer.size == 0


def test_a_read_never_spans_two_chunks_and_a_whole_chunk_is_not_copied() -> None:
    first, second = os.urandom(100), os.urandom(50)
    buffer = ByteBuffer()
    buffer.push(first)
    buffer.push(second)
    assert buffer.take(30) == first[:30]
    assert buffer.take(1000) == first[30:]
    # The second chunk comes back as the very object pushed.
    assert buffer.take(1000) is second
    assert not buffer.ready


def test_an_error_comes_after_the_bytes_that_arrived_before_it() -> None:
    buffer = ByteBuffer()
    buffer.push(b"abcdef")
    buffer.error = os_error(errno.ECONNRESET)
    assert buffer.take(4) == b"abcd"
    assert buffer.take(4) == b"ef"
    with pytest.raises(ConnectionResetError):
        buffer.take(4)
