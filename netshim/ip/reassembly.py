"""Out-of-order TCP data held for :mod:`netshim.ip.tcp` until the gap before it is filled.

Sequence numbers here are *unwrapped*: the connection turns each 32-bit
sequence number into an unbounded integer near its receive point before it
gets here, so plain comparisons are correct and no modular arithmetic is
needed (see the note at the top of :mod:`netshim.ip.tcp`).

Pieces are kept sorted, never overlapping, and each as the bytes that arrived
(trimmed to the gaps they fill): merging neighbours by concatenation would copy
the whole run again for every segment that extends it, quadratic in the run's
length after one loss.  Beside the pieces, the contiguous ranges they form are
kept up to date on every insert, because a SACK block is wanted for every
out-of-order arrival and recomputing the ranges from thousands of pieces each
time made one lost segment cost a quadratic amount of work.

The connection only offers data inside its advertised window, which bounds the
bytes; :attr:`ReorderBuffer.piece_limit` bounds the count, so a peer sending
one-byte segments cannot make the per-piece overhead the larger cost.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

__all__ = ["ReorderBuffer"]

# RFC 2018: at most four blocks fit, three beside timestamps; we remember a few more.
_RECENT_BLOCKS = 4
# Arrivals remembered for SACK reports between two ACKs.
_MAX_TRACKED_ARRIVALS = 1024


class ReorderBuffer:
    """Segments received ahead of the next expected byte."""

    __slots__ = (
        "_arrivals",
        "_datas",
        "_ends",
        "_range_ends",
        "_range_starts",
        "_recent",
        "_starts",
        "held_bytes",
        "piece_limit",
    )

    def __init__(self, piece_limit: int) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._datas: list[bytes] = []
        # The contiguous ranges the pieces form, sorted (their ends are sorted too).
        self._range_starts: list[int] = []
        self._range_ends: list[int] = []
        self.held_bytes = 0
        self.piece_limit = piece_limit
        # Sequence numbers of the latest arrivals, newest first, for SACK block order.
        self._recent: list[int] = []
        # Arrivals since the last SACK report, oldest first (see sack_reports).
        self._arrivals: list[int] = []

    def __len__(self) -> int:
        return len(self._starts)

    def __bool__(self) -> bool:
        return bool(self._starts)

    def insert(self, start: int, data: bytes) -> bool:
        """Hold ``data`` (its first byte is ``start``); ``True`` if any of it was new.

        Bytes already held are not stored twice; when :attr:`piece_limit`
        pieces are held, new pieces are dropped (the sender retransmits them).
        """
        end = start + len(data)
        starts, ends = self._starts, self._ends
        index = bisect_right(starts, start)
        cursor = start
        if index and ends[index - 1] > cursor:
            cursor = ends[index - 1]
        stored = False
        while cursor < end:
            gap_end = starts[index] if index < len(starts) else end
            if gap_end > cursor:
                piece_end = min(gap_end, end)
                if len(starts) >= self.piece_limit:
                    break
                if cursor == start and piece_end == end:
                    piece = data
                else:
                    piece = data[cursor - start : piece_end - start]
                starts.insert(index, cursor)
                ends.insert(index, piece_end)
                self._datas.insert(index, piece)
                self.held_bytes += piece_end - cursor
                self._cover(cursor, piece_end)
                stored = True
                index += 1
                cursor = piece_end
            else:
                cursor = max(cursor, ends[index])
                index += 1
        if stored:
            recent = self._recent
            if start in recent:
                recent.remove(start)
            recent.insert(0, start)
            del recent[_RECENT_BLOCKS * 2 :]
            arrivals = self._arrivals
            arrivals.append(start)
            if len(arrivals) > _MAX_TRACKED_ARRIVALS:
                del arrivals[: len(arrivals) - _MAX_TRACKED_ARRIVALS // 2]
        return stored

    def _cover(self, start: int, end: int) -> None:
        """Merge ``[start, end)`` into the contiguous ranges."""
        range_starts, range_ends = self._range_starts, self._range_ends
        low = bisect_left(range_ends, start)  # first range ending at or after start
        high = bisect_right(range_starts, end)  # ranges starting at or before end
        if low < high:
            start = min(start, range_starts[low])
            end = max(end, range_ends[high - 1])
        range_starts[low:high] = [start]
        range_ends[low:high] = [end]

    def pop_ready(self, next_seq: int) -> tuple[list[bytes], int]:
        """The held data that continues the stream at ``next_seq``, and the new next sequence."""
        chunks: list[bytes] = []
        starts, ends, datas = self._starts, self._ends, self._datas
        taken = 0
        while taken < len(starts) and starts[taken] <= next_seq:
            if ends[taken] > next_seq:
                data = datas[taken]
                skip = next_seq - starts[taken]
                chunks.append(data[skip:] if skip else data)
                next_seq = ends[taken]
            self.held_bytes -= ends[taken] - starts[taken]
            taken += 1
        if taken:
            del starts[:taken], ends[:taken], datas[:taken]
            range_starts, range_ends = self._range_starts, self._range_ends
            gone = bisect_right(range_ends, next_seq)
            del range_starts[:gone], range_ends[:gone]
        return chunks, next_seq

    def blocks(self) -> list[tuple[int, int]]:
        """Contiguous ranges held, ``(start, end)``, in sequence order."""
        return list(zip(self._range_starts, self._range_ends, strict=True))

    def _block_of(self, seq: int) -> tuple[int, int] | None:
        index = bisect_right(self._range_starts, seq) - 1
        if index >= 0 and seq < self._range_ends[index]:
            return self._range_starts[index], self._range_ends[index]
        return None

    def sack_reports(self, limit: int, max_reports: int) -> list[list[tuple[int, int]]]:
        """SACK blocks for one or more ACKs, covering every block that grew since the last report.

        An ACK holds three or four blocks.  When many segments arrive between
        two ACKs (a batch read from a device, receive offload), more blocks
        than that may have changed, and a block never reported makes the
        sender resend data we hold.  So each changed block is reported once,
        in as many ACKs as needed (at most ``max_reports``), newest first.
        """
        if not self._starts:
            self._arrivals.clear()
            return []
        touched: list[tuple[int, int]] = []
        for seq in reversed(self._arrivals):
            block = self._block_of(seq)
            if block is not None and block not in touched:
                touched.append(block)
                if len(touched) >= limit * max_reports:
                    break
        if len(touched) <= limit:
            return [self.sack_blocks(limit)]
        self._arrivals.clear()
        return [touched[at : at + limit] for at in range(0, len(touched), limit)]

    def sack_blocks(self, limit: int) -> list[tuple[int, int]]:
        """Up to ``limit`` blocks, the one holding the latest arrival first (RFC 2018 section 4)."""
        self._arrivals.clear()
        if not self._range_starts:
            return []
        chosen: list[tuple[int, int]] = []
        for seq in self._recent:
            block = self._block_of(seq)
            if block is not None and block not in chosen:
                chosen.append(block)
                if len(chosen) >= limit:
                    return chosen
        # Then the highest ranges, which tell the sender the most about what is missing.
        index = len(self._range_starts) - 1
        while index >= 0 and len(chosen) < limit:
            block = (self._range_starts[index], self._range_ends[index])
            if block not in chosen:
                chosen.append(block)
            index -= 1
        return chosen

    def clear(self) -> None:
        self._starts.clear()
        self._ends.clear()
        self._datas.clear()
        self._range_starts.clear()
        self._range_ends.clear()
        self._recent.clear()
        self._arrivals.clear()
        self.held_bytes = 0
