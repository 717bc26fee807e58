"""The TCP send queue keeps immutable bytes without copying and copies what may change."""

from __future__ import annotations

from netshim.ip.buffers import LARGE_CHUNK, SendQueue


def test_large_bytes_are_sent_from_the_callers_object() -> None:
    data = bytes(range(256)) * 1024
    queue = SendQueue(1000)
    queue.append(memoryview(data))
    piece = queue.read(1000 + 65536, 65160)
    assert isinstance(piece, memoryview)
    assert piece.obj is data
    assert bytes(piece) == data[65536 : 65536 + 65160]


def test_a_bytearray_is_copied_so_later_changes_are_not_sent() -> None:
    data = bytearray(b"a" * 100_000)
    queue = SendQueue(0)
    queue.append(data)
    data[:] = b"b" * 100_000
    assert bytes(queue.read(10, 50_000)) == b"a" * 50_000


def test_reads_across_chunks_and_after_acknowledgement() -> None:
    first = b"x" * LARGE_CHUNK + b"y" * 10_000
    queue = SendQueue(0)
    queue.append(first)
    queue.append(b"z" * 5000)
    assert bytes(queue.read(LARGE_CHUNK - 5, 10)) == b"x" * 5 + b"y" * 5
    assert bytes(queue.read(LARGE_CHUNK + 9_990, 20)) == b"y" * 10 + b"z" * 10
    queue.drop_until(LARGE_CHUNK + 100)
    assert bytes(queue.read(LARGE_CHUNK + 100, 4)) == b"yyyy"
    assert len(queue) == 10_000 - 100 + 5000
