"""Out-of-order TCP data held for :mod:`netshim.ip.tcp` until the gap before it is filled.

Sequence numbers here are *unwrapped*: the connection turns each 32-bit
sequence number into an unbounded integer near its receive point before it
gets here, so plain comparisons are correct and no modular arithmetic is
needed (see the note at the top of :mod:`netshim.ip.tcp`).

Pieces are kept sorted, never overlapping, and each as the bytes that arrived
(trimmed to the gaps they fill): merging neighbours by concatenation would copy
the whole run again for every segment that extends it, quadratic in the run's
length after one loss.  The connection only offers data inside its advertised
window, which bounds the bytes; :data:`piece_limit` bounds the count, so a peer
sending one-byte segments cannot make the per-piece overhead the larger cost.
"""

from __future__ import annotations

from bisect import bisect_right

__all__ = ["ReorderBuffer"]

# RFC 2018: at most four blocks fit, three beside timestamps; we remember a few more.
_RECENT_BLOCKS = 4


class ReorderBuffer:
    """Segments received ahead of the next expected byte."""

    __slots__ = ("_datas", "_ends", "_recent", "_starts", "held_bytes", "piece_limit")

    def __init__(self, piece_limit: int) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._datas: list[bytes] = []
        self.held_bytes = 0
        self.piece_limit = piece_limit
        # Sequence numbers of the latest arrivals, newest first, for SACK block order.
        self._recent: list[int] = []

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
                piece = (
                    data
                    if cursor == start and piece_end == end
                    else data[cursor - start : piece_end - start]
                )
                starts.insert(index, cursor)
                ends.insert(index, piece_end)
                self._datas.insert(index, piece)
                self.held_bytes += piece_end - cursor
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
        return stored

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
        return chunks, next_seq

    def discard_below(self, next_seq: int) -> None:
        """Forget pieces wholly before ``next_seq`` (already received some other way)."""
        self.pop_ready(next_seq)

    def blocks(self) -> list[tuple[int, int]]:
        """Contiguous ranges held, ``(start, end)``, in sequence order."""
        result: list[tuple[int, int]] = []
        for start, end in zip(self._starts, self._ends, strict=True):
            if result and result[-1][1] == start:
                result[-1] = (result[-1][0], end)
            else:
                result.append((start, end))
        return result

    def sack_blocks(self, limit: int) -> list[tuple[int, int]]:
        """Up to ``limit`` blocks, the one holding the latest arrival first (RFC 2018 section 4)."""
        ranges = self.blocks()
        if not ranges:
            return []
        chosen: list[tuple[int, int]] = []
        for seq in self._recent:
            for block in ranges:
                if block[0] <= seq < block[1]:
                    if block not in chosen:
                        chosen.append(block)
                    break
            if len(chosen) >= limit:
                return chosen
        # Then the highest ranges, which tell the sender the most about what is missing.
        for block in reversed(ranges):
            if len(chosen) >= limit:
                break
            if block not in chosen:
                chosen.append(block)
        return chosen

    def clear(self) -> None:
        self._starts.clear()
        self._ends.clear()
        self._datas.clear()
        self._recent.clear()
        self.held_bytes = 0
