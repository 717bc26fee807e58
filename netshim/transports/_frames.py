"""WebSocket data frames on the hot path, beside the websockets library's sans-I/O protocol.

The gateway and the tunnel clients move bulk data in binary messages.  The
websockets library's parser copies each byte several times on the way (into
its buffer, out of it, through the unmasking) and runs a generator per frame;
on a loopback link that was most of the gateway's CPU time per byte.  This
module does the common case itself and leaves everything else to the
library, which stays the owner of the connection's state:

* :class:`FrameReader` splits what arrived into frames over a memoryview.
  Data frames (binary, text, continuation) are unmasked straight out of the
  received bytes into the message (one copy) and reassembled here.  A data
  frame cut by the end of a read (every one, when frames are a little larger
  than a read) keeps what arrived as views of the received bytes and is
  joined once whole: one copy of a server's frame instead of two (into a
  buffer, then out of it), and for a client's the join and the unmasking,
  as before.  Control frames (ping, pong, close) and anything unusual
  (reserved bits, an unknown opcode, a frame masked the wrong way) are
  handed, whole, to the protocol's ``receive_data``, so pongs, the closing
  handshake and protocol errors behave exactly as the library defines them.
  The protocol never sees a data frame, so its fragmentation state stays
  empty and the two never disagree.
* :func:`frame_header` builds a frame's header, so that a server's message
  goes out as one ``b"".join`` of header and payload, and
  :func:`masked_frame` a client's whole frame, or :func:`masked_frame_parts`
  its head and masked payload for a ``writelines`` (RFC 6455 wants a fresh
  unpredictable mask per frame: ``os.urandom``, as the library uses).

RFC 6455 rules enforced here for the frames kept: a continuation needs a
message in progress, a new message may not start inside one, and a message
over ``max_message_size`` fails the connection with 1009 (checked from the
frame header, before its payload is buffered).
"""

from __future__ import annotations

import os
import struct
from collections import deque
from typing import cast

from websockets.frames import Opcode
from websockets.protocol import Protocol, State

try:
    from websockets.speedups import apply_mask
except ImportError:  # Pyodide and other builds without the C extension
    from websockets.utils import apply_mask

__all__ = [
    "MAX_CLOSE_REASON",
    "FrameReader",
    "close_reason",
    "frame_header",
    "masked_frame",
    "masked_frame_parts",
]

_FIN = 0x80
_RESERVED = 0x70
_MASKED = 0x80
# Plain ints: an enum member's .value is a property lookup, paid per frame.
_CONT, _TEXT, _BINARY = Opcode.CONT.value, Opcode.TEXT.value, Opcode.BINARY.value
_DATA_OPCODES = (_CONT, _TEXT, Opcode.BINARY.value)
_CONTROL_OPCODES = (Opcode.CLOSE.value, Opcode.PING.value, Opcode.PONG.value)
_MAX_CONTROL_PAYLOAD = 125
# A close frame's payload is a 2-byte code and the reason: 123 bytes of UTF-8.
MAX_CLOSE_REASON = _MAX_CONTROL_PAYLOAD - 2
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
# A data frame cut by the end of a read keeps the parts that arrived as views
# of the received bytes, joined once when the frame is whole.  Parts shorter
# than this are copied together instead, so that a peer trickling a frame in
# tiny reads cannot make us hold a view object per few bytes.
_MIN_VIEW_PART = 16 * 1024
# A one-frame message is kept as a view of its read only if it is at least
# this share (1/_VIEW_SHARE) of the read: at most this many bytes of reads are
# held per byte of messages waiting as views.
_VIEW_SHARE = 4


def frame_header(length: int, opcode: int = Opcode.BINARY.value, *, masked: bool = False) -> bytes:
    """The header of one final frame carrying ``length`` payload bytes.

    With ``masked`` (a client's frame) the mask key follows the header; see
    :func:`masked_frame`.
    """
    first = _FIN | opcode
    mask_bit = _MASKED if masked else 0
    if length < 126:
        return bytes((first, mask_bit | length))
    if length < 1 << 16:
        return bytes((first, mask_bit | 126)) + _U16.pack(length)
    return bytes((first, mask_bit | 127)) + _U64.pack(length)


def close_reason(text: str) -> str:
    """``text`` cut to fit a close frame: at most 123 bytes of UTF-8, never mid-character.

    Reasons often quote what a remote client sent (a refused host name), so
    their length in bytes is not known in advance; the websockets library
    raises rather than cut, and cutting by characters is not enough.
    """
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= MAX_CLOSE_REASON:
        return text
    return encoded[:MAX_CLOSE_REASON].decode("utf-8", "ignore")


def masked_frame(data: bytes, prefix: bytes = b"") -> bytes:
    """One final binary frame as a client sends it: header, a fresh random mask, masked data.

    The message is ``prefix + data``; see :func:`masked_frame_parts`.
    """
    return b"".join(masked_frame_parts(data, prefix))


def masked_frame_parts(data: bytes | memoryview, prefix: bytes = b"") -> tuple[bytes, bytes]:
    """:func:`masked_frame` in two parts: header, mask and masked ``prefix``; masked ``data``.

    ``data`` is masked with the mask turned by the prefix's length, so that it
    is copied once (masked, from a view as well) and never joined to the
    prefix: a transport's ``writelines`` sends both parts with one ``writev``.
    """
    mask = os.urandom(4)
    header = frame_header(len(prefix) + len(data), masked=True)
    if not prefix:
        return header + mask, apply_mask(data, mask)
    turn = len(prefix) % 4
    return (
        header + mask + apply_mask(prefix, mask),
        apply_mask(data, mask[turn:] + mask[:turn]),
    )


def _header_size(second: int) -> int:
    """A frame's header size, mask key included, from its second byte."""
    code = second & 0x7F
    extended = 2 if code == 126 else 8 if code == 127 else 0
    return 2 + extended + (4 if second & _MASKED else 0)


def _payload_length(data: memoryview | bytearray, position: int) -> int:
    """The payload length of the frame whose (whole) header starts at ``position``."""
    code = data[position + 1] & 0x7F
    if code == 126:
        return int(_U16.unpack_from(data, position + 2)[0])
    if code == 127:
        return int(_U64.unpack_from(data, position + 2)[0])
    return code


def _problem(first: int, second: int, opcode: int, length: int, masked: bool) -> str | None:
    """Why a frame header breaks RFC 6455 (for a peer that masks as ``masked`` says)."""
    if first & _RESERVED:
        return "reserved bits must be 0"
    if bool(second & _MASKED) != masked:
        return "incorrect masking"
    if opcode in _DATA_OPCODES:
        return None
    if opcode not in _CONTROL_OPCODES:
        return "invalid opcode"
    if not first & _FIN:
        return "fragmented control frame"
    if length > _MAX_CONTROL_PAYLOAD:
        return "control frame too long"
    return None


class FrameReader:
    """Turns received bytes into whole messages (see the module documentation).

    ``masked`` says whether the peer masks its frames (a client does, a
    server must not).  Messages are appended to :attr:`messages`: ``bytes``
    for binary ones, ``str`` for text; a text message that is not valid
    UTF-8 fails the connection with 1007, as RFC 6455 (8.1) requires.  After
    a protocol error the connection is failed through the protocol and the
    rest of the input is discarded.
    """

    def __init__(
        self, protocol: Protocol, *, masked: bool, max_message_size: int, views: bool = False
    ) -> None:
        self.protocol = protocol
        self.masked = masked
        self.max_message_size = max_message_size
        # With ``views``, an unmasked binary message that is one whole frame
        # of a ``bytes`` read is kept as a read-only view of that read: no
        # copy here (its reader copies what it keeps).  Such views are in
        # ``messages`` as well; only a reader that asked for them sees them.
        self.views = views and not masked
        self.messages: deque[bytes | str] = deque()
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_size = 0
        self._fragment_text = False
        self._finished = False
        # The data frame a read ended in (see _MIN_VIEW_PART): its payload's
        # parts so far, how many bytes are still missing, and its header.
        self._parts: list[memoryview | bytearray] = []
        self._parts_size = 0
        self._missing_payload = 0
        self._part_opcode = 0
        self._part_fin = False
        self._part_mask: bytes | None = None
        # Frames handed to the protocol: a caller that sees this change has
        # protocol output (a pong, a close) to flush.
        self.control_frames = 0

    @property
    def buffered(self) -> int:
        """Bytes held for messages not yet whole: a frame's start and earlier fragments."""
        return len(self._buffer) + self._parts_size + self._fragment_size

    @property
    def finished(self) -> bool:
        """Whether input is being discarded (after a protocol error or the closing handshake)."""
        return self._finished

    def feed(self, data: bytes) -> None:
        """Take what arrived; complete messages go to :attr:`messages`."""
        if self._finished or not data:
            return
        with memoryview(data) as view:
            start, size = 0, len(data)
            if self._missing_payload:
                start = min(self._missing_payload, size)
                self._add_part(view[:start])
                self._missing_payload -= start
                if self._missing_payload:
                    return
                self._end_cut_frame()
                if self._finished:
                    return
            # A frame begun in an earlier read is completed from the front of
            # this one; only its missing bytes are copied, not the whole read.
            while self._buffer and start < size:
                take = min(self._missing(), size - start)
                self._buffer += view[start : start + take]
                start += take
                with memoryview(self._buffer) as pending:
                    used = self._parse(pending)
                if self._finished:
                    self._buffer = bytearray()
                    return
                if used:
                    del self._buffer[:used]
            if start < size:
                with view[start:] as rest:
                    # ``data`` is bytes (it never changes): a frame cut at the
                    # end may keep views of it.
                    used = self._parse(rest, keep_views=isinstance(data, bytes))
                    if used < len(rest) and not self._finished:
                        self._buffer = bytearray(rest[used:])

    def _missing(self) -> int:
        """How many more bytes the buffered frame start needs to become a header or a frame."""
        buffer = self._buffer
        if len(buffer) < 2:
            return 2 - len(buffer)
        header = _header_size(buffer[1])
        if len(buffer) < header:
            return header - len(buffer)
        return max(1, header + _payload_length(buffer, 0) - len(buffer))

    def _add_part(self, part: memoryview) -> None:
        parts = self._parts
        if len(part) >= _MIN_VIEW_PART:
            parts.append(part)
        elif parts and isinstance(parts[-1], bytearray):
            parts[-1] += part
        else:
            parts.append(bytearray(part))
        self._parts_size += len(part)

    def _end_cut_frame(self) -> None:
        """The cut data frame is whole: one join, unmasked if it was masked."""
        parts, self._parts = self._parts, []
        self._parts_size = 0
        payload = b"".join(parts)
        mask = self._part_mask
        if mask is not None:
            payload = apply_mask(payload, mask)
        self._data_frame(self._part_opcode, self._part_fin, payload)

    def _drop_cut_frame(self) -> None:
        self._parts = []
        self._parts_size = 0
        self._missing_payload = 0

    def feed_eof(self) -> None:
        """The stream ended; the protocol decides what that means."""
        self._buffer = bytearray()
        self._drop_cut_frame()
        self.protocol.receive_eof()

    def _fail(self, code: int, reason: str) -> None:
        self._finished = True
        self._fragments = []
        self._drop_cut_frame()
        self.protocol.fail(code, reason)

    def _parse(self, view: memoryview, *, keep_views: bool = False) -> int:
        """Handle every whole frame in ``view``; return how many bytes were used.

        With ``keep_views`` (``view`` is over bytes that never change), a data
        frame cut by the end of ``view`` is taken as far as it goes (see
        :attr:`_parts`) instead of being left for the caller to buffer.
        """
        position, end = 0, len(view)
        masked, limit = self.masked, self.max_message_size
        while end - position >= 2:
            first, second = view[position], view[position + 1]
            header = _header_size(second)
            if end - position < header:
                break
            length = _payload_length(view, position)
            opcode = first & 0x0F
            problem = _problem(first, second, opcode, length, masked)
            if problem is not None:
                self._fail(1002, problem)
                return end
            data_frame = opcode in _DATA_OPCODES
            if data_frame and self._fragment_size + length > limit:
                self._fail(1009, "message too big")
                return end
            stop = position + header + length
            if stop > end:
                if keep_views and data_frame:
                    self._part_opcode = opcode
                    self._part_fin = bool(first & _FIN)
                    start = position + header
                    self._part_mask = bytes(view[start - 4 : start]) if masked else None
                    # Counted in ``buffered`` as a buffered frame start would be.
                    self._parts_size = header
                    self._add_part(view[start:end])
                    self._missing_payload = stop - end
                    return end
                break
            if not data_frame:
                self._to_protocol(view[position:stop])
                if self._finished:
                    return end
            else:
                payload = view[position + header : stop]
                if masked:
                    mask = bytes(view[position + header - 4 : position + header])
                    data = apply_mask(payload, mask)
                elif (
                    keep_views
                    and self.views
                    and first == _FIN | _BINARY
                    and length * _VIEW_SHARE >= len(view.obj)  # type: ignore[arg-type]
                ):
                    # A whole message in one frame, over bytes that never change.
                    # Only a large share of the read is kept as a view: a view
                    # keeps its whole read alive until the reader takes it, and a
                    # small message left unread must not hold a large read.
                    if self.protocol.state is State.OPEN and not self._fragments:
                        self.messages.append(cast(bytes, payload))
                    else:
                        self._data_frame(opcode, True, bytes(payload))
                    if self._finished:
                        return end
                    position = stop
                    continue
                else:
                    data = bytes(payload)
                self._data_frame(opcode, bool(first & _FIN), data)
                if self._finished:
                    return end
            position = stop
        return position

    def _to_protocol(self, frame: memoryview) -> None:
        protocol = self.protocol
        self.control_frames += 1
        protocol.receive_data(bytes(frame))
        # Control frames are answered through the protocol's output; their
        # events carry nothing the tunnels use.
        protocol.events_received()
        if protocol.eof_sent or protocol.parser_exc is not None:
            # The closing handshake is over (or failed): nothing more is read.
            self._finished = True

    def _data_frame(self, opcode: int, fin: bool, data: bytes) -> None:
        if self.protocol.state is not State.OPEN:
            # Data after a close frame is ignored (RFC 6455, 5.5.1).
            return
        if opcode == _CONT:
            if not self._fragment_size and not self._fragments:
                self._fail(1002, "unexpected continuation frame")
                return
            self._fragments.append(data)
            self._fragment_size += len(data)
        elif self._fragments:
            self._fail(1002, "expected a continuation frame")
            return
        elif fin:
            if opcode == _TEXT:
                self._text_message(data)
            else:
                self.messages.append(data)
            return
        else:
            self._fragments = [data]
            self._fragment_size = len(data)
            self._fragment_text = opcode == _TEXT
        if fin:
            message = b"".join(self._fragments)
            self._fragments = []
            self._fragment_size = 0
            if self._fragment_text:
                self._text_message(message)
            else:
                self.messages.append(message)

    def _text_message(self, data: bytes) -> None:
        try:
            self.messages.append(data.decode("utf-8"))
        except UnicodeDecodeError:
            self._fail(1007, "invalid UTF-8 in a text message")
