"""The gateway's WebSocket data-frame path against the websockets library's own frames.

Frames are made by ``websockets.frames.Frame.serialize`` (masked, as a client
sends them) and cut at arbitrary places; whatever the cuts, the reader must
give back exactly the messages that were sent, answer pings and close frames
through the protocol, and fail the connection with the code RFC 6455 names
for each kind of bad frame.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from netshim.transports._frames import FrameReader, frame_header, masked_frame

LIMIT = 1 << 16


def open_protocol() -> ServerProtocol:
    """A server protocol past a real handshake: where the gateway's reader takes over."""
    client = ClientProtocol(parse_uri("ws://gateway.test/"))
    client.send_request(client.connect())
    protocol = ServerProtocol()
    protocol.receive_data(b"".join(client.data_to_send()))
    (request,) = protocol.events_received()
    protocol.send_response(protocol.accept(request))
    protocol.data_to_send()
    assert protocol.state is State.OPEN
    return protocol


def client_frame(opcode: Opcode, data: bytes, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin).serialize(mask=True)


def sent_frames(protocol: ServerProtocol) -> list[Frame]:
    """The frames the protocol queued for the client (unmasked, as a server sends)."""
    out = b"".join(protocol.data_to_send())
    frames = []
    position = 0
    while position < len(out):
        length = out[position + 1] & 0x7F
        header = 2
        if length == 126:
            (length,) = struct.unpack_from("!H", out, position + 2)
            header = 4
        elif length == 127:
            (length,) = struct.unpack_from("!Q", out, position + 2)
            header = 10
        opcode = Opcode(out[position] & 0x0F)
        frames.append(Frame(opcode, out[position + header : position + header + length]))
        position += header + length
    return frames


def close_code(protocol: ServerProtocol) -> int | None:
    for frame in sent_frames(protocol):
        if frame.opcode is Opcode.CLOSE:
            return Close.parse(frame.data).code
    return None


def feed_in_pieces(reader: FrameReader, wire: bytes, cuts: list[int]) -> None:
    at = 0
    for cut in sorted(set(c % (len(wire) + 1) for c in cuts)):
        reader.feed(wire[at:cut])
        at = cut
    reader.feed(wire[at:])


messages = st.lists(
    st.tuples(
        st.booleans(),  # text?
        st.lists(st.binary(max_size=300), min_size=1, max_size=4),  # fragments
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(messages, st.lists(st.integers(min_value=0), max_size=12), st.booleans())
def test_messages_survive_any_cut(
    plan: list[tuple[bool, list[bytes]]], cuts: list[int], pings: bool
) -> None:
    protocol = open_protocol()
    reader = FrameReader(protocol, masked=True, max_message_size=LIMIT)
    wire = b""
    expected: list[bytes | str] = []
    for text, parts in plan:
        if text:
            parts = [part.decode("latin-1").encode() for part in parts]
        for index, part in enumerate(parts):
            opcode = (Opcode.TEXT if text else Opcode.BINARY) if index == 0 else Opcode.CONT
            wire += client_frame(opcode, part, fin=index == len(parts) - 1)
            if pings:
                # Control frames may come between the fragments of a message.
                wire += client_frame(Opcode.PING, b"p%d" % index)
        whole = b"".join(parts)
        expected.append(whole.decode() if text else whole)
    feed_in_pieces(reader, wire, cuts)
    assert list(reader.messages) == expected
    assert not reader.finished
    pongs = [f for f in sent_frames(protocol) if f.opcode is Opcode.PONG]
    assert len(pongs) == (sum(len(parts) for _, parts in plan) if pings else 0)


def test_large_frames_with_16_and_64_bit_lengths() -> None:
    protocol = open_protocol()
    reader = FrameReader(protocol, masked=True, max_message_size=1 << 20)
    small, medium, large = b"a" * 125, b"b" * 65535, b"c" * 70000
    wire = b"".join(client_frame(Opcode.BINARY, d) for d in (small, medium, large))
    feed_in_pieces(reader, wire, [1, 3, 130, 70000, 140000])
    assert list(reader.messages) == [small, medium, large]


def test_close_frame_is_answered_and_ends_the_input() -> None:
    protocol = open_protocol()
    reader = FrameReader(protocol, masked=True, max_message_size=LIMIT)
    wire = client_frame(Opcode.BINARY, b"before")
    wire += client_frame(Opcode.CLOSE, Close(1000, "bye").serialize())
    wire += client_frame(Opcode.BINARY, b"after the close")
    reader.feed(wire)
    assert list(reader.messages) == [b"before"]
    assert reader.finished
    assert close_code(protocol) == 1000
    # The server ends the TCP connection once the closing handshake is done.
    assert protocol.eof_sent


def test_unmasked_reader_for_server_frames() -> None:
    protocol = open_protocol()
    reader = FrameReader(protocol, masked=False, max_message_size=1 << 20)
    reader.feed(frame_header(5) + b"hello" + frame_header(70000) + b"x" * 70000)
    assert list(reader.messages) == [b"hello", b"x" * 70000]


def test_views_only_of_messages_that_are_a_large_share_of_their_read() -> None:
    # A view keeps its whole read alive: a small message left unread must not
    # hold a large read, so it is copied; a large one is handed over as a view.
    protocol = open_protocol()
    reader = FrameReader(protocol, masked=False, max_message_size=1 << 20, views=True)
    small, large = b"s" * 100, bytes(range(256)) * 300
    reader.feed(frame_header(len(small)) + small + frame_header(len(large)) + large)
    first, second = reader.messages
    assert type(first) is bytes
    assert first == small
    assert isinstance(second, memoryview)
    assert second.readonly
    assert second == large
    # The same small message alone in its read is most of it: a view.
    reader.feed(frame_header(len(small)) + small)
    assert isinstance(reader.messages[2], memoryview)
    assert reader.messages[2] == small


@settings(max_examples=150, deadline=None)
@given(
    st.booleans(),
    st.lists(st.integers(min_value=1, max_value=150_000), min_size=1, max_size=4),
    st.lists(st.integers(min_value=0), max_size=10),
    st.booleans(),
)
def test_large_frames_cut_anywhere_in_either_direction(
    masked: bool, sizes: list[int], cuts: list[int], fragmented: bool
) -> None:
    """Frames larger than a read, cut into views and small copies, come back whole.

    While a frame is incomplete, ``buffered`` counts exactly the bytes of it
    that arrived: the gateway charges them to the client's upload budget.
    """
    protocol = open_protocol()
    reader = FrameReader(protocol, masked=masked, max_message_size=1 << 20)
    payloads = [bytes([index + 1]) * size for index, size in enumerate(sizes)]
    frames = []
    for index, payload in enumerate(payloads):
        opcode = Opcode.CONT if fragmented and index else Opcode.BINARY
        fin = not fragmented or index == len(payloads) - 1
        if masked:
            frames.append(client_frame(opcode, payload, fin))
        else:
            frames.append(frame_header(len(payload), opcode.value) + payload)
            if not fin:
                # frame_header makes final frames only: clear FIN by hand.
                frames[-1] = bytes([frames[-1][0] & 0x7F]) + frames[-1][1:]
    wire = b"".join(frames)
    header_sizes = [
        len(frame) - len(payload) for frame, payload in zip(frames, payloads, strict=True)
    ]
    at = 0
    for cut in [*sorted({c % (len(wire) + 1) for c in cuts}), len(wire)]:
        reader.feed(wire[at:cut])
        at = cut
        # What arrived of the frame in progress, plus the payloads of the
        # message's earlier fragments.
        start = 0
        held = 0
        for frame, header in zip(frames, header_sizes, strict=True):
            if start + len(frame) > at:
                held += at - start
                break
            held += len(frame) - header if fragmented else 0
            start += len(frame)
        else:
            held = 0
        assert reader.buffered == held
    expected = [b"".join(payloads)] if fragmented else payloads
    assert list(reader.messages) == expected
    assert not reader.finished


def bad(first: int, second: int, rest: bytes = b"") -> bytes:
    return bytes((first, second)) + rest


MASK = b"\x01\x02\x03\x04"


@given(
    st.sampled_from(
        [
            ("reserved bit", bad(0x82 | 0x40, 0x80 | 1, MASK + b"x"), 1002),
            ("unmasked from a client", bad(0x82, 1, b"x"), 1002),
            ("unknown opcode", bad(0x83, 0x80 | 1, MASK + b"x"), 1002),
            ("fragmented ping", bad(0x09, 0x80 | 1, MASK + b"x"), 1002),
            ("long ping", bad(0x89, 0x80 | 126, struct.pack("!H", 200) + MASK), 1002),
            ("continuation first", bad(0x80, 0x80 | 1, MASK + b"x"), 1002),
            ("too big", bad(0x82, 0x80 | 127, struct.pack("!Q", LIMIT + 1) + MASK), 1009),
            ("2**63 length", bad(0x82, 0x80 | 127, struct.pack("!Q", 1 << 63) + MASK), 1009),
        ]
    ),
    st.booleans(),
)
def test_bad_frames_fail_the_connection_with_the_rfc_code(
    case: tuple[str, bytes, int], after_good: bool
) -> None:
    _, wire, code = case
    protocol = open_protocol()
    reader = FrameReader(protocol, masked=True, max_message_size=LIMIT)
    prefix = client_frame(Opcode.BINARY, b"good") if after_good else b""
    reader.feed(prefix + wire + client_frame(Opcode.BINARY, b"never delivered"))
    # Everything before the bad frame arrived; nothing after it.
    assert list(reader.messages) == ([b"good"] if after_good else [])
    assert reader.finished
    assert close_code(protocol) == code
    reader.feed(client_frame(Opcode.BINARY, b"ignored"))
    assert len(reader.messages) == (1 if after_good else 0)


def test_new_message_inside_a_fragmented_one_fails() -> None:
    protocol = open_protocol()
    reader = FrameReader(protocol, masked=True, max_message_size=LIMIT)
    wire = client_frame(Opcode.BINARY, b"part", fin=False) + client_frame(Opcode.BINARY, b"new")
    reader.feed(wire)
    assert not reader.messages
    assert close_code(protocol) == 1002


def test_fragments_adding_up_past_the_limit_fail_with_1009() -> None:
    protocol = open_protocol()
    reader = FrameReader(protocol, masked=True, max_message_size=100)
    wire = client_frame(Opcode.BINARY, b"a" * 60, fin=False)
    wire += client_frame(Opcode.CONT, b"b" * 60)
    reader.feed(wire)
    assert not reader.messages
    assert close_code(protocol) == 1009


@given(st.integers(min_value=0, max_value=1 << 20))
def test_frame_header_matches_the_library(length: int) -> None:
    expected = Frame(Opcode.BINARY, b"\0" * length).serialize(mask=False)
    assert frame_header(length) == expected[: len(expected) - length]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=9), st.binary(max_size=300) | st.binary(min_size=65530, max_size=65540))
def test_masked_frame_with_a_prefix_is_one_message(prefix: bytes, data: bytes) -> None:
    # The prefix and the data are masked apart (the data with the mask
    # turned by the prefix's length); a reader sees one message.
    reader = FrameReader(open_protocol(), masked=True, max_message_size=1 << 20)
    reader.feed(masked_frame(data, prefix))
    assert list(reader.messages) == [prefix + data]
