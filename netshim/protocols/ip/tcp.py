"""TCP segments (RFC 9293 section 3.1): header, options, checksum and payload.

Options are read into values for the kinds a stack acts on (MSS, window scale,
SACK, timestamps; RFC 9293, RFC 7323, RFC 2018) and kept raw otherwise, so
that a segment from any stack reads back byte for byte.  The options area of
a header is padded to a 32-bit boundary with zeros, which are end-of-option-list
bytes; :class:`EndOfOptionList` records how many, and :class:`TcpRepr` adds
one when the options it is given end off the boundary, so a value and the bytes
it emits always read back equal.

The checksum covers a pseudo-header with the IP addresses
(:func:`~netshim.protocols.ip.checksum.pseudo_header_sum`), which is why
:meth:`TcpRepr.parse` and :meth:`TcpRepr.emit` take them.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import ClassVar, TypeAlias, TypeVar

from ._base import IPAddress, IpProtocol, WireError, check_bytes, check_range, need
from .checksum import internet_checksum, ones_complement_sum, pseudo_header_sum

__all__ = [
    "HEADER_LEN",
    "EndOfOptionList",
    "MaxSegmentSize",
    "NoOperation",
    "SackBlocks",
    "SackPermitted",
    "TcpFlags",
    "TcpOption",
    "TcpRepr",
    "Timestamps",
    "UnknownOption",
    "WindowScale",
]

HEADER_LEN = 20
# Data Offset is a 4-bit count of 32-bit words: the header is at most 60 bytes.
_MAX_OPTIONS_LEN = 40
_MAX_SEQ = 0xFFFF_FFFF
_HEADER = struct.Struct("!HHIIHHHH")
_TIMESTAMP_FIELDS = struct.Struct("!II")


class TcpFlags(enum.IntFlag):
    """The 12 control bits after Data Offset; the top three are reserved.

    ``AE`` is the bit RFC 3540 named NS and Accurate ECN now uses.  Reserved
    bits that are set survive in the value (Python keeps unnamed bits of an
    ``IntFlag``), so such a segment still reads back byte for byte.
    """

    FIN = 0x001
    SYN = 0x002
    RST = 0x004
    PSH = 0x008
    ACK = 0x010
    URG = 0x020
    ECE = 0x040
    CWR = 0x080
    AE = 0x100


_flags_by_value: dict[int, TcpFlags] = {}


def _flags(value: int) -> TcpFlags:
    """``TcpFlags(value)`` for a 12-bit ``value``, cached (an enum call costs per segment)."""
    flags = _flags_by_value.get(value)
    if flags is None:
        flags = _flags_by_value[value] = TcpFlags(value)
    return flags


@dataclass(frozen=True, slots=True)
class EndOfOptionList:
    """Kind 0: the options end here; ``padding`` zero bytes follow to the header's end."""

    KIND: ClassVar[int] = 0
    padding: int = 0

    def __post_init__(self) -> None:
        check_range("padding", self.padding, 0, _MAX_OPTIONS_LEN - 1)

    def emit(self) -> bytes:
        return bytes(1 + self.padding)


@dataclass(frozen=True, slots=True)
class NoOperation:
    """Kind 1: one byte that aligns the option after it."""

    KIND: ClassVar[int] = 1

    def emit(self) -> bytes:
        return b"\x01"


@dataclass(frozen=True, slots=True)
class MaxSegmentSize:
    """Kind 2 (RFC 9293 section 3.7.1): the largest segment payload the sender accepts."""

    KIND: ClassVar[int] = 2
    mss: int

    def __post_init__(self) -> None:
        check_range("mss", self.mss, 0, 0xFFFF)

    def emit(self) -> bytes:
        return bytes((2, 4)) + self.mss.to_bytes(2, "big")


@dataclass(frozen=True, slots=True)
class WindowScale:
    """Kind 3 (RFC 7323 section 2): the window is shifted left by ``shift``.

    RFC 7323 caps the shift at 14 and tells receivers to use 14 for anything
    larger; the value is kept as sent so that the segment reads back unchanged.
    """

    KIND: ClassVar[int] = 3
    shift: int

    def __post_init__(self) -> None:
        check_range("shift", self.shift, 0, 0xFF)

    def emit(self) -> bytes:
        return bytes((3, 3, self.shift))


@dataclass(frozen=True, slots=True)
class SackPermitted:
    """Kind 4 (RFC 2018 section 2): selective acknowledgements may be sent."""

    KIND: ClassVar[int] = 4

    def emit(self) -> bytes:
        return bytes((4, 2))


@dataclass(frozen=True, slots=True)
class SackBlocks:
    """Kind 5 (RFC 2018 section 3): ``(left edge, right edge)`` of blocks received."""

    KIND: ClassVar[int] = 5
    # 40 bytes of options hold the kind and length bytes and four 8-byte blocks.
    MAX_BLOCKS: ClassVar[int] = 4
    blocks: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        blocks = tuple(tuple(block) for block in self.blocks)
        if not 1 <= len(blocks) <= self.MAX_BLOCKS:
            raise ValueError(f"a SACK option has 1..{self.MAX_BLOCKS} blocks, got {len(blocks)}")
        for block in blocks:
            if len(block) != 2:
                raise ValueError(f"a SACK block is (left, right), got {block!r}")
            check_range("SACK block edge", block[0], 0, _MAX_SEQ)
            check_range("SACK block edge", block[1], 0, _MAX_SEQ)
        object.__setattr__(self, "blocks", blocks)

    def emit(self) -> bytes:
        body = b"".join(
            left.to_bytes(4, "big") + right.to_bytes(4, "big") for left, right in self.blocks
        )
        return bytes((5, 2 + len(body))) + body


@dataclass(frozen=True, slots=True)
class Timestamps:
    """Kind 8 (RFC 7323 section 3): TSval and TSecr."""

    KIND: ClassVar[int] = 8
    value: int
    echo_reply: int

    def __post_init__(self) -> None:
        check_range("value", self.value, 0, _MAX_SEQ)
        check_range("echo_reply", self.echo_reply, 0, _MAX_SEQ)

    def emit(self) -> bytes:
        return bytes((8, 10)) + self.value.to_bytes(4, "big") + self.echo_reply.to_bytes(4, "big")


@dataclass(frozen=True, slots=True)
class UnknownOption:
    """Any other kind, kept as its raw data (the bytes after kind and length)."""

    kind: int
    data: bytes = b""

    def __post_init__(self) -> None:
        check_range("kind", self.kind, 0, 0xFF)
        if self.kind in _KNOWN_KINDS:
            raise ValueError(
                f"option kind {self.kind} has its own class, {_KNOWN_KINDS[self.kind].__name__}"
            )
        data = check_bytes("data", self.data)
        if len(data) > _MAX_OPTIONS_LEN - 2:
            raise ValueError(
                f"option data is at most {_MAX_OPTIONS_LEN - 2} bytes, got {len(data)}"
            )
        object.__setattr__(self, "data", data)

    def emit(self) -> bytes:
        return bytes((self.kind, 2 + len(self.data))) + self.data


TcpOption: TypeAlias = (
    EndOfOptionList
    | NoOperation
    | MaxSegmentSize
    | WindowScale
    | SackPermitted
    | SackBlocks
    | Timestamps
    | UnknownOption
)
_OptionT = TypeVar("_OptionT", bound=TcpOption)

_KNOWN_KINDS: dict[int, type[TcpOption]] = {
    cls.KIND: cls
    for cls in (
        EndOfOptionList,
        NoOperation,
        MaxSegmentSize,
        WindowScale,
        SackPermitted,
        SackBlocks,
        Timestamps,
    )
}


_FIXED_OPTION_LEN: dict[type, int] = {
    NoOperation: 1,
    MaxSegmentSize: 4,
    WindowScale: 3,
    SackPermitted: 2,
    Timestamps: 10,
}


def _option_len(option: TcpOption) -> int:
    """``len(option.emit())`` without building the bytes (asked for every segment)."""
    fixed = _FIXED_OPTION_LEN.get(type(option))
    if fixed is not None:
        return fixed
    if type(option) is EndOfOptionList:
        return 1 + option.padding
    if type(option) is SackBlocks:
        return 2 + 8 * len(option.blocks)
    return len(option.emit())


def _parse_option(kind: int, data: bytes) -> TcpOption:
    """The option of ``kind`` (2 or more) whose bytes after kind and length are ``data``."""
    size = 2 + len(data)
    if kind == MaxSegmentSize.KIND and size == 4:
        return MaxSegmentSize(int.from_bytes(data, "big"))
    if kind == WindowScale.KIND and size == 3:
        return WindowScale(data[0])
    if kind == SackPermitted.KIND and size == 2:
        return SackPermitted()
    if kind == SackBlocks.KIND and len(data) % 8 == 0 and 1 <= len(data) // 8 <= 4:
        return SackBlocks(
            tuple(
                (int.from_bytes(data[i : i + 4], "big"), int.from_bytes(data[i + 4 : i + 8], "big"))
                for i in range(0, len(data), 8)
            )
        )
    if kind == Timestamps.KIND and size == 10:
        # Two 32-bit fields are in range by construction: skip the checks.
        return _trusted_timestamps(*_TIMESTAMP_FIELDS.unpack(data))
    if kind in _KNOWN_KINDS:
        raise WireError(f"TCP option kind {kind} has invalid length {size}")
    return UnknownOption(kind, data)


# The two layouts nearly every segment from Linux carries, read with one
# unpack instead of option by option: NOP, NOP, timestamps (every segment
# after the handshake), and MSS, SACK permitted, timestamps, NOP, window scale
# (every SYN and SYN-ACK).  The fields are in range by construction.
_NOP_NOP_TIMESTAMPS = b"\x01\x01\x08\x0a"
_NOP_NOP_TIMESTAMPS_LAYOUT = struct.Struct("!4sII")
_SYN_LAYOUT = struct.Struct("!HHHHIIHBB")
_SYN_LAYOUT_MARKS = (0x0204, 0x0402, 0x080A, 0x0103, 3)
_NO_OPERATION = NoOperation()
_SACK_PERMITTED = SackPermitted()


def _trusted_timestamps(value: int, echo_reply: int) -> Timestamps:
    timestamps = object.__new__(Timestamps)
    object.__setattr__(timestamps, "value", value)
    object.__setattr__(timestamps, "echo_reply", echo_reply)
    return timestamps


def _parse_common_options(area: bytes) -> tuple[TcpOption, ...] | None:
    """What :func:`_parse_options` gives for Linux's two usual layouts; None for others."""
    if len(area) == 12:
        marks, value, echo_reply = _NOP_NOP_TIMESTAMPS_LAYOUT.unpack(area)
        if marks == _NOP_NOP_TIMESTAMPS:
            return (_NO_OPERATION, _NO_OPERATION, _trusted_timestamps(value, echo_reply))
    elif len(area) == 20:
        mss_mark, mss, sack_mark, ts_mark, value, echo_reply, nop_ws_mark, ws_len, shift = (
            _SYN_LAYOUT.unpack(area)
        )
        if (mss_mark, sack_mark, ts_mark, nop_ws_mark, ws_len) == _SYN_LAYOUT_MARKS:
            mss_option = object.__new__(MaxSegmentSize)
            object.__setattr__(mss_option, "mss", mss)
            scale = object.__new__(WindowScale)
            object.__setattr__(scale, "shift", shift)
            return (
                mss_option,
                _SACK_PERMITTED,
                _trusted_timestamps(value, echo_reply),
                _NO_OPERATION,
                scale,
            )
    return None


def _parse_options(area: bytes) -> tuple[TcpOption, ...]:
    common = _parse_common_options(area)
    if common is not None:
        return common
    options: list[TcpOption] = []
    at = 0
    while at < len(area):
        kind = area[at]
        if kind == EndOfOptionList.KIND:
            padding = area[at + 1 :]
            if padding.strip(b"\x00"):
                raise WireError("TCP options have non-zero bytes after end-of-option-list")
            options.append(EndOfOptionList(len(padding)))
            break
        if kind == NoOperation.KIND:
            options.append(NoOperation())
            at += 1
            continue
        if at + 1 >= len(area):
            raise WireError(f"TCP option kind {kind} truncated: no length byte")
        size = area[at + 1]
        if size < 2:
            raise WireError(f"TCP option kind {kind} has invalid length {size}")
        if at + size > len(area):
            raise WireError(
                f"TCP option kind {kind} truncated: length {size}, {len(area) - at} bytes left"
            )
        options.append(_parse_option(kind, area[at + 2 : at + size]))
        at += size
    return tuple(options)


def _aligned(options: tuple[TcpOption, ...]) -> tuple[TcpOption, ...]:
    """``options`` padded to a 32-bit boundary with an end-of-option-list entry."""
    length = sum(_option_len(option) for option in options)
    missing = -length % 4
    if not missing:
        return options
    if options and isinstance(options[-1], EndOfOptionList):
        return (*options[:-1], EndOfOptionList(options[-1].padding + missing))
    return (*options, EndOfOptionList(missing - 1))


@dataclass(frozen=True, slots=True)
class TcpRepr:
    """One TCP segment.

    ``options`` not ending on a 32-bit boundary get an :class:`EndOfOptionList`
    appended (or the last one's padding grown) to reach it, as on the wire.
    Raises ``ValueError`` for out-of-range fields or options over 40 bytes.
    """

    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: TcpFlags
    window: int
    options: tuple[TcpOption, ...] = ()
    payload: bytes = b""
    urgent: int = 0

    def __post_init__(self) -> None:
        check_range("src_port", self.src_port, 0, 0xFFFF)
        check_range("dst_port", self.dst_port, 0, 0xFFFF)
        check_range("seq", self.seq, 0, _MAX_SEQ)
        check_range("ack", self.ack, 0, _MAX_SEQ)
        check_range("flags", int(self.flags), 0, 0xFFF)
        object.__setattr__(self, "flags", TcpFlags(self.flags))
        check_range("window", self.window, 0, 0xFFFF)
        check_range("urgent", self.urgent, 0, 0xFFFF)
        options = tuple(self.options)
        for index, option in enumerate(options):
            if not isinstance(option, TcpOption):
                raise TypeError(f"options[{index}] is not a TCP option: {option!r}")
            if isinstance(option, EndOfOptionList) and index != len(options) - 1:
                raise ValueError("nothing may follow EndOfOptionList in TCP options")
        options = _aligned(options)
        length = sum(_option_len(option) for option in options)
        if length > _MAX_OPTIONS_LEN:
            raise ValueError(f"TCP options take at most {_MAX_OPTIONS_LEN} bytes, got {length}")
        object.__setattr__(self, "options", options)
        object.__setattr__(self, "payload", check_bytes("payload", self.payload))

    @classmethod
    def parse(
        cls,
        buf: bytes | bytearray | memoryview,
        src_addr: IPAddress,
        dst_addr: IPAddress,
        *,
        verify_checksum: bool = True,
    ) -> TcpRepr:
        """Read a segment that is the whole of ``buf`` (an IP payload).

        ``src_addr`` and ``dst_addr`` are the IP packet's, for the checksum.
        Raises :class:`WireError` when ``buf`` is shorter than the header its
        Data Offset gives, an option is malformed, the addresses are of
        different families, or (with ``verify_checksum``) the checksum is
        wrong.  A segment cut short in its payload is caught only by the
        checksum: TCP has no length field of its own.
        """
        buf = bytes(buf)
        need(buf, HEADER_LEN, "TCP header")
        header_len = (buf[12] >> 4) * 4
        if header_len < HEADER_LEN:
            raise WireError(f"TCP data offset gives {header_len} bytes, below {HEADER_LEN}")
        need(buf, header_len, "TCP header with options")
        if verify_checksum:
            try:
                start = pseudo_header_sum(src_addr, dst_addr, IpProtocol.TCP, len(buf))
            except ValueError as exc:
                raise WireError(str(exc)) from None
            if ones_complement_sum(buf, start) != 0xFFFF:
                raise WireError(
                    f"TCP checksum 0x{int.from_bytes(buf[16:18], 'big'):04x} is wrong "
                    f"for {src_addr} -> {dst_addr}"
                )
        src_port, dst_port, seq, ack, offset_flags, window, _checksum, urgent = _HEADER.unpack_from(
            buf
        )
        # Every field read from its fixed-width slot is in range and the
        # options parsed fill whole words, so __post_init__ would find
        # nothing to say: a received segment skips it.
        segment = object.__new__(cls)
        setattr_ = object.__setattr__
        setattr_(segment, "src_port", src_port)
        setattr_(segment, "dst_port", dst_port)
        setattr_(segment, "seq", seq)
        setattr_(segment, "ack", ack)
        setattr_(segment, "flags", _flags(offset_flags & 0x0FFF))
        setattr_(segment, "window", window)
        setattr_(
            segment,
            "options",
            _parse_options(buf[HEADER_LEN:header_len]) if header_len > HEADER_LEN else (),
        )
        setattr_(segment, "payload", buf[header_len:])
        setattr_(segment, "urgent", urgent)
        return segment

    def header_len(self) -> int:
        return HEADER_LEN + sum(_option_len(option) for option in self.options)

    def buffer_len(self) -> int:
        return self.header_len() + len(self.payload)

    def segment_len(self) -> int:
        """Sequence space the segment takes: its payload, plus one each for SYN and FIN."""
        return (
            len(self.payload)
            + (1 if self.flags & TcpFlags.SYN else 0)
            + (1 if self.flags & TcpFlags.FIN else 0)
        )

    def find_option(self, kind: type[_OptionT]) -> _OptionT | None:
        """The first option of class ``kind`` (``MaxSegmentSize``, say), or ``None``."""
        for option in self.options:
            if isinstance(option, kind):
                return option
        return None

    def options_bytes(self) -> bytes:
        """The options area as on the wire."""
        options = self.options
        if len(options) == 3:
            # NOP, NOP, timestamps: nearly every segment after a handshake.
            first, second, timestamps = options
            if (
                type(timestamps) is Timestamps
                and type(first) is NoOperation
                and type(second) is NoOperation
            ):
                return _NOP_NOP_TIMESTAMPS_LAYOUT.pack(
                    _NOP_NOP_TIMESTAMPS, timestamps.value, timestamps.echo_reply
                )
        return b"".join([option.emit() for option in options])

    def emit(self, src_addr: IPAddress, dst_addr: IPAddress) -> bytes:
        """The segment with its checksum for these IP addresses.

        Raises ``ValueError`` when the addresses are of different families or
        the segment is too long for an IPv4 pseudo-header.
        """
        options = self.options_bytes()
        header_len = HEADER_LEN + len(options)
        header = _HEADER.pack(
            self.src_port,
            self.dst_port,
            self.seq,
            self.ack,
            # int(): OR-ing the IntFlag itself is an enum call per segment.
            header_len // 4 << 12 | int(self.flags),
            self.window,
            0,
            self.urgent,
        )
        payload = self.payload
        start = pseudo_header_sum(src_addr, dst_addr, IpProtocol.TCP, header_len + len(payload))
        # The header and options fill whole words, so the sums chain.
        checksum = internet_checksum(payload, ones_complement_sum(header + options, start))
        return b"".join((header[:16], checksum.to_bytes(2, "big"), header[18:], options, payload))
