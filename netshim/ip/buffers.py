"""Byte queues for :mod:`netshim.ip.tcp`: data to send (kept until acknowledged) and data received.

Both are lists of chunks rather than one ``bytearray``.  A ``bytearray`` used
as a FIFO looks free (deleting from the front only moves a start pointer) but
the next append that grows it moves the whole remaining content: measured at
under 600 MiB/s for a 3 MiB buffer fed 1 MiB at a time, it would be the
slowest part of a TCP connection.  With chunks, large writes of ``bytes``
(or of read-only views of ``bytes``: what a relay hands over) are kept as
views of the caller's objects, which nobody can change, and other large
writes are copied once; a segment's payload is a view of one chunk, copied
only where it spans two (and then once, into the packet), and received
payloads are kept as the very ``bytes`` objects the segments carried.

Small writes and small segments are gathered into a ``bytearray`` chunk of at
most :data:`SMALL_CHUNK`, so a peer sending one-byte segments costs about
what its bytes cost, not a Python object per byte.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque

__all__ = ["ReceiveQueue", "SendQueue"]

# Writes and segments below this are gathered into a shared chunk.
SMALL_CHUNK = 4096
# Large writes are cut into chunks this big, so that a partly acknowledged
# chunk never keeps much more than this alive beyond the buffer's bound.
LARGE_CHUNK = 256 * 1024


class SendQueue:
    """Bytes from sequence number :attr:`start` to :attr:`end`, readable at any position.

    Positions are the connection's unwrapped sequence numbers.  ``read``
    returns bytes that stay as they are while the segment is in use (a view
    of an immutable chunk, or a copy), so chunks can be dropped meanwhile.
    """

    __slots__ = ("_chunks", "_first", "_starts", "end", "start")

    def __init__(self, start: int) -> None:
        self.start = start
        self.end = start
        # Small chunks are bytearrays that later small writes extend; large
        # ones are read-only views of bytes objects, sliced without copying.
        self._chunks: list[bytearray | memoryview] = []
        self._starts: list[int] = []  # sequence number of each chunk's first byte
        self._first = 0  # chunks before this index are fully acknowledged

    def __len__(self) -> int:
        return self.end - self.start

    def append(self, data: bytes | bytearray | memoryview) -> None:
        size = len(data)
        if not size:
            return
        chunks = self._chunks
        if size < SMALL_CHUNK:
            last = chunks[-1] if len(chunks) > self._first else None
            if type(last) is bytearray and len(last) + size <= SMALL_CHUNK:
                last += data
            else:
                chunks.append(bytearray(data))
                self._starts.append(self.end)
            self.end += size
            return
        view = memoryview(data)
        # Only a bytes object is sure not to change under the queue: any
        # other buffer (a bytearray the caller reuses) is copied.
        immutable = type(view.obj) is bytes and view.itemsize == 1
        for offset in range(0, size, LARGE_CHUNK):
            piece = view[offset : offset + LARGE_CHUNK]
            if not immutable:
                piece = memoryview(piece.tobytes())
            chunks.append(piece)
            self._starts.append(self.end)
            self.end += len(piece)

    def read(self, position: int, length: int) -> bytes | memoryview:
        """``length`` bytes from ``position``, which must lie within the queue."""
        starts = self._starts
        index = bisect_right(starts, position, self._first) - 1
        chunk = self._chunks[index]
        offset = position - starts[index]
        if offset + length <= len(chunk):
            if type(chunk) is memoryview:
                return chunk[offset : offset + length]
            with memoryview(chunk) as view:
                return bytes(view[offset : offset + length])
        pieces: list[bytes | memoryview] = []
        views: list[memoryview] = []
        remaining = length
        while remaining > 0 and index < len(self._chunks):
            chunk = self._chunks[index]
            view = memoryview(chunk)
            views.append(view)
            piece = view[offset : offset + remaining]
            pieces.append(piece)
            remaining -= len(piece)
            offset = 0
            index += 1
        result = b"".join(pieces)
        for used in pieces:
            if isinstance(used, memoryview):
                used.release()
        for used in views:
            used.release()
        return result

    def drop_until(self, position: int) -> int:
        """Forget bytes before ``position``; the number forgotten."""
        if position > self.end:
            position = self.end
        dropped = position - self.start
        if dropped <= 0:
            return 0
        self.start = position
        chunks, starts = self._chunks, self._starts
        first = self._first
        while first < len(chunks) and starts[first] + len(chunks[first]) <= position:
            first += 1
        if first == len(chunks):
            chunks.clear()
            starts.clear()
            first = 0
        elif first > 64 and first * 2 > len(chunks):
            del chunks[:first], starts[:first]
            first = 0
        self._first = first
        return dropped

    def clear(self) -> None:
        self.drop_until(self.end)


class ReceiveQueue:
    """Received in-order bytes waiting for the application."""

    __slots__ = ("_chunks", "_head", "length")

    def __init__(self) -> None:
        self._chunks: deque[bytes | bytearray] = deque()
        self._head = 0  # bytes of the first chunk already read
        self.length = 0

    def __len__(self) -> int:
        return self.length

    def __bool__(self) -> bool:
        return self.length > 0

    def append(self, data: bytes) -> None:
        size = len(data)
        if not size:
            return
        chunks = self._chunks
        if size < SMALL_CHUNK:
            if chunks:
                last = chunks[-1]
                if type(last) is bytearray and len(last) + size <= SMALL_CHUNK:
                    last += data
                    self.length += size
                    return
            chunks.append(bytearray(data))
        else:
            chunks.append(data)
        self.length += size

    def read(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` from the front (``b""`` when empty)."""
        chunks = self._chunks
        pieces: list[bytes | bytearray | memoryview] = []
        wanted = min(max_bytes, self.length)
        remaining = wanted
        while remaining > 0:
            chunk = chunks[0]
            head = self._head
            available = len(chunk) - head
            if available <= remaining:
                pieces.append(chunk if head == 0 else memoryview(chunk)[head:])
                chunks.popleft()
                self._head = 0
                remaining -= available
            else:
                pieces.append(memoryview(chunk)[head : head + remaining])
                self._head = head + remaining
                remaining = 0
        self.length -= wanted
        if len(pieces) == 1 and type(pieces[0]) is bytes:
            return pieces[0]
        return b"".join(pieces)

    def clear(self) -> None:
        self._chunks.clear()
        self._head = 0
        self.length = 0
