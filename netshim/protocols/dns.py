"""DNS at the message layer: an authoritative zone, a stub-resolver client, TCP framing.

Three sans-I/O pieces on top of dnslib's wire codec, none of which touches a
socket, a task or a clock:

* :class:`Zone` holds records and :func:`answer_query` turns a query message
  into the authoritative answer message (RFC 1034 section 4.3.2, RFC 1035),
  with wildcards (RFC 4592), CNAME chains and their response codes (RFC 6604),
  negative answers carrying the zone's SOA (RFC 2308) and EDNS0 (RFC 6891).
* :func:`build_query` and :func:`parse_response` are the two halves of a stub
  resolver's exchange; the response is checked against the query before any
  of it is believed.
* :class:`DnsTcpFramer` splits a TCP byte stream into messages by their
  two-byte length prefix (RFC 1035 section 4.2.2, RFC 7766), in the h11 shape.

Zone data is given as zone-file text (RFC 1035 section 5.1): the rdata of an
MX record is ``"10 mail.example.com."``.  Names in rdata are always absolute;
a trailing dot is optional.  Names may hold letters, digits, ``-``, ``_`` and
``/`` (RFC 2317 reverse zones), non-ASCII labels are IDNA-encoded, and ``*``
may stand alone as the leftmost label of an owner name to make a wildcard.
Names compare without regard to case (RFC 4343) and the zone keeps them,
rdata names included, in lower case.

Untrusted bytes never raise out of :func:`answer_query`: it answers FORMERR,
NOTIMP or REFUSED, or returns ``None`` when the bytes cannot be answered at
all.  :func:`parse_response` and :class:`DnsTcpFramer` raise only
:class:`~netshim._errors.RemoteProtocolError` for what the peer sent.
"""

from __future__ import annotations

import ipaddress
import re
import string
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, NoReturn

from dnslib import (
    AAAA,
    CAA,
    CLASS,
    CNAME,
    EDNS0,
    MX,
    NAPTR,
    NS,
    OPCODE,
    PTR,
    QTYPE,
    RCODE,
    RD,
    RR,
    SOA,
    SRV,
    TXT,
    A,
    DNSBuffer,
    DNSHeader,
    DNSLabel,
    DNSQuestion,
    DNSRecord,
)

from .._addresses import MAX_LABEL_LENGTH, MAX_NAME_LENGTH, IPAddress
from .._errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "CLASSIC_UDP_SIZE",
    "DEFAULT_MAX_BUFFERED",
    "EDNS_PAYLOAD_SIZE",
    "HEADER_SIZE",
    "MAX_CNAME_CHAIN",
    "MAX_MESSAGE_SIZE",
    "MAX_TTL",
    "SUPPORTED_TYPES",
    "DnsAnswer",
    "DnsResponse",
    "DnsTcpFramer",
    "Zone",
    "answer_query",
    "build_query",
    "check_name",
    "parse_response",
    "from_reverse_name",
    "reverse_name",
    "split_rdata",
]

HEADER_SIZE: Final = 12
# RFC 1035 section 4.2.1: without EDNS0, a DNS message over UDP is at most 512 bytes.
CLASSIC_UDP_SIZE: Final = 512
# The length prefix of RFC 1035 section 4.2.2 is 16 bits, so no message is longer.
MAX_MESSAGE_SIZE: Final = 0xFFFF
# The EDNS0 UDP payload size we ask for and advertise: the value of DNS Flag
# Day 2020, which fits the 1280-byte IPv6 minimum MTU less the IPv6 and UDP
# headers, so that answers never need IP fragmentation.
EDNS_PAYLOAD_SIZE: Final = 1232
# How many CNAMEs one answer follows before it gives up with SERVFAIL, as
# resolvers do for a chain that loops.  Real chains are a handful of links
# long; the bound only has to stop a loop cheaply.
MAX_CNAME_CHAIN: Final = 16
# RFC 2181 section 8: a TTL is 0..2**31 - 1 seconds.
MAX_TTL: Final = 2**31 - 1
# Two whole messages of the largest size: RFC 7766 section 6.2.1.1 lets a
# client pipeline queries, and a caller that drains next_message() after each
# receive_data() of up to 64 KiB never holds more than one partial message plus
# that read.  More than this means the peer keeps sending while its answers go
# unread, and buffering it would let one connection take memory without end.
DEFAULT_MAX_BUFFERED: Final = 2 * (2 + MAX_MESSAGE_SIZE)

_QR: Final = 0x8000
_DO_FLAG: Final = 0x8000
_BADVERS: Final = 16  # RFC 6891 section 9, carried as extended RCODE 1 in the OPT record
_CLASS_ANY: Final = 255
_ZONE_TRANSFER_TYPES: Final = frozenset({251, 252})  # IXFR, AXFR

# Characters a label keeps in text form; any other byte is written \DDD.
_BARE_BYTES: Final = frozenset((string.ascii_letters + string.digits + "-_/*").encode())
_NAME_CHARACTERS: Final = frozenset(string.ascii_lowercase + string.digits + "-_/")
_TYPE_NUMBER = re.compile(r"TYPE([0-9]{1,5})")  # RFC 3597 section 5: "TYPE65280"


def reverse_name(address: str) -> str:
    """The PTR owner name of an IPv4 or IPv6 address: ``4.3.2.1.in-addr.arpa``.

    Raises ``ValueError`` when ``address`` is not an IP address.
    """
    return ipaddress.ip_address(address).reverse_pointer


def from_reverse_name(name: str) -> IPAddress | None:
    """The address a PTR owner name stands for, or ``None`` for any other name.

    The inverse of :func:`reverse_name`: ``4.3.2.1.in-addr.arpa`` (four
    decimal labels) or ``ip6.arpa`` under 32 labels of one hex digit each, in
    any case, with or without the final dot.  A shorter name (a reverse zone,
    not an address) or a malformed label is ``None``.
    """
    labels = name.lower().rstrip(".").split(".")
    if labels[-2:] == ["in-addr", "arpa"] and len(labels) == 6:
        try:
            return ipaddress.IPv4Address(".".join(reversed(labels[:4])))
        except ValueError:
            return None
    if labels[-2:] == ["ip6", "arpa"] and len(labels) == 34:
        nibbles = labels[:32]
        if not all(len(label) == 1 and label in string.hexdigits for label in nibbles):
            return None
        return ipaddress.IPv6Address(int("".join(reversed(nibbles)), 16))
    return None


# --- names ---------------------------------------------------------------


def _normalise_name(name: str) -> str:
    """``name`` as lower-case ASCII without the trailing dot, or ``ValueError``.

    RFC 1035 section 2.3.4 limits a label to 63 octets and a name to 255 on the
    wire, which is 253 characters of dotted text.
    """
    if not isinstance(name, str):
        raise TypeError(f"a DNS name must be a str, not {type(name).__name__} ({name!r})")
    text = name[:-1] if name.endswith(".") else name
    if not text:
        raise ValueError(f"invalid DNS name {name!r}: the root name cannot be used here")
    labels: list[str] = []
    for index, label in enumerate(text.split(".")):
        if not label:
            raise ValueError(f"invalid DNS name {name!r}: empty label")
        if label.isascii():
            ascii_label = label.lower()
        else:
            try:
                ascii_label = label.encode("idna").decode("ascii").lower()
            except UnicodeError:
                raise ValueError(
                    f"invalid DNS name {name!r}: label {label!r} cannot be IDNA-encoded"
                ) from None
        if len(ascii_label) > MAX_LABEL_LENGTH:
            raise ValueError(
                f"invalid DNS name {name!r}: label {label!r} is {len(ascii_label)} "
                f"characters long, at most {MAX_LABEL_LENGTH} are allowed"
            )
        if ascii_label == "*":
            if index:
                raise ValueError(
                    f"invalid DNS name {name!r}: '*' is allowed only as the leftmost label"
                )
        elif not _NAME_CHARACTERS.issuperset(ascii_label):
            raise ValueError(
                f"invalid DNS name {name!r}: label {label!r} may hold only letters, "
                "digits, '-', '_' and '/'"
            )
        labels.append(ascii_label)
    key = ".".join(labels)
    if len(key) > MAX_NAME_LENGTH:
        raise ValueError(
            f"invalid DNS name {name[:40]!r}...: {len(key)} characters long, "
            f"at most {MAX_NAME_LENGTH} are allowed"
        )
    return key


def _to_label(key: str) -> DNSLabel:
    return DNSLabel([part.encode("ascii") for part in key.split(".")] if key else [])


def _label_text(raw: bytes) -> str:
    return "".join(chr(byte) if byte in _BARE_BYTES else f"\\{byte:03d}" for byte in raw)


def _wire_key(name: DNSLabel) -> str:
    """The zone key a name from the wire would have: any name, escaped, lower-cased.

    Bytes that no zone name holds (a dot inside a label, spaces, non-ASCII)
    become ``\\DDD``, so such names can match only wildcards, never by accident.
    """
    return ".".join(_label_text(label) for label in name.label).lower()


def _name_text(name: DNSLabel) -> str:
    """A name as text without the trailing dot, case kept; the root is ``"."``."""
    return ".".join(_label_text(label) for label in name.label) or "."


def _zone_name(name: DNSLabel) -> str:
    """A name as zone-file text: absolute, with the trailing dot."""
    return "".join(_label_text(label) + "." for label in name.label) or "."


def _fits_wire(name: DNSLabel) -> bool:
    # dnslib decodes label lengths up to 191 and names of any length; answering
    # them back would fail, so such a question is a format error.
    return len(name) <= MAX_NAME_LENGTH and all(
        len(label) <= MAX_LABEL_LENGTH for label in name.label
    )


def _ancestors(key: str) -> Iterator[str]:
    """``key``, each name above it, and the root (``""``)."""
    while key:
        yield key
        _, _, key = key.partition(".")
    yield ""


# --- rdata in zone-file text ---------------------------------------------


class _RdataError(Exception):
    """Why one record's rdata text is invalid; :meth:`Zone.add` adds the context."""


def _split_rdata(text: str) -> list[bytes]:
    """The fields of zone-file rdata (RFC 1035 section 5.1) as raw bytes.

    Fields are separated by blanks; ``"..."`` quotes a field with blanks in it;
    ``\\X`` is the character X and ``\\DDD`` the byte of decimal value DDD;
    parentheses only group lines and ``;`` starts a comment.
    """
    data = text.encode("utf-8")
    fields: list[bytes] = []
    current = bytearray()
    in_field = quoted = False
    i = 0
    while i < len(data):
        byte = data[i]
        if byte == 0x5C:  # backslash
            digits = data[i + 1 : i + 4]
            if len(digits) == 3 and digits.isdigit():
                if int(digits) > 255:
                    raise _RdataError(f"escape \\{digits.decode()} is above 255")
                current.append(int(digits))
                i += 4
            elif i + 1 < len(data):
                current.append(data[i + 1])
                i += 2
            else:
                raise _RdataError("ends in a lone backslash")
            in_field = True
            continue
        i += 1
        if quoted:
            if byte == 0x22:
                quoted = False
            else:
                current.append(byte)
        elif byte == 0x22:
            quoted = in_field = True
        elif byte == 0x3B:  # ";" comments out the rest of the line
            newline = data.find(b"\n", i)
            i = len(data) if newline < 0 else newline
        elif byte in b" \t\r\n()":
            if in_field:
                fields.append(bytes(current))
                current.clear()
                in_field = False
        else:
            current.append(byte)
            in_field = True
    if quoted:
        raise _RdataError("has an unclosed quote")
    if in_field:
        fields.append(bytes(current))
    return fields


def split_rdata(text: str) -> list[bytes]:
    """The fields of rdata in zone-file text, unescaped, as :attr:`DnsAnswer.value` holds it.

    ``'10 mail.example.com.'`` gives ``[b"10", b"mail.example.com."]`` and
    ``'"a b" "c\\"d"'`` gives ``[b"a b", b'c"d']``.  Raises ``ValueError`` for
    an unclosed quote, a lone backslash or an escape above 255.
    """
    try:
        return _split_rdata(text)
    except _RdataError as exc:
        raise ValueError(f"invalid rdata text {text!r}: {exc}") from None


def check_name(name: str) -> str:
    """``name`` as lower-case ASCII without the trailing dot; ``ValueError`` saying why not.

    The limits are RFC 1035's: 63 octets a label and 255 a name on the wire.
    """
    return _normalise_name(name)


def _field_text(field: bytes) -> str:
    try:
        return field.decode("utf-8")
    except UnicodeDecodeError:
        raise _RdataError(f"{field!r} is not UTF-8 text") from None


def _number(field: bytes, what: str, bits: int) -> int:
    text = _field_text(field)
    if not (text.isascii() and text.isdigit()):
        raise _RdataError(f"{what} {text!r} is not a number")
    value = int(text)
    if value >= 1 << bits:
        raise _RdataError(f"{what} {value} is above {(1 << bits) - 1}")
    return value


def _name_field(field: bytes, *, root_allowed: bool = False) -> DNSLabel:
    text = _field_text(field)
    if text == "." and root_allowed:
        return DNSLabel(None)
    try:
        return _to_label(_normalise_name(text))
    except ValueError as exc:
        raise _RdataError(str(exc)) from None


def _character_string(field: bytes, what: str) -> bytes:
    if len(field) > 255:
        raise _RdataError(f"{what} is {len(field)} bytes long, at most 255 are allowed")
    return field


def _parse_a(fields: list[bytes]) -> RD:
    try:
        address = ipaddress.IPv4Address(_field_text(fields[0]))
    except ValueError as exc:
        raise _RdataError(str(exc)) from None
    return A(tuple(address.packed))


def _parse_aaaa(fields: list[bytes]) -> RD:
    try:
        address = ipaddress.IPv6Address(_field_text(fields[0]))
    except ValueError as exc:
        raise _RdataError(str(exc)) from None
    if address.scope_id is not None:
        raise _RdataError("an AAAA record cannot hold a scope (%zone)")
    return AAAA(tuple(address.packed))


def _parse_cname(fields: list[bytes]) -> RD:
    return CNAME(_name_field(fields[0]))


def _parse_ptr(fields: list[bytes]) -> RD:
    return PTR(_name_field(fields[0]))


def _parse_ns(fields: list[bytes]) -> RD:
    return NS(_name_field(fields[0]))


def _parse_mx(fields: list[bytes]) -> RD:
    # RFC 7505: exchange "." is a "null MX", saying the domain takes no mail.
    return MX(_name_field(fields[1], root_allowed=True), _number(fields[0], "preference", 16))


def _parse_txt(fields: list[bytes]) -> RD:
    return TXT([_character_string(field, "a TXT string") for field in fields])


def _parse_srv(fields: list[bytes]) -> RD:
    # RFC 2782: target "." says the service is decidedly not available.
    return SRV(
        _number(fields[0], "priority", 16),
        _number(fields[1], "weight", 16),
        _number(fields[2], "port", 16),
        _name_field(fields[3], root_allowed=True),
    )


def _parse_soa(fields: list[bytes]) -> RD:
    names = ("serial", "refresh", "retry", "expire", "minimum")
    times = [_number(field, what, 32) for field, what in zip(fields[2:], names, strict=True)]
    return SOA(_name_field(fields[0]), _name_field(fields[1]), times)


def _parse_caa(fields: list[bytes]) -> RD:
    # RFC 8659 section 4.1: the tag is 1 to 15 letters and digits.
    tag = _field_text(fields[1])
    if not (1 <= len(tag) <= 15 and tag.isascii() and tag.isalnum()):
        raise _RdataError(f"tag {tag!r} is not 1 to 15 letters and digits")
    return CAA(_number(fields[0], "flags", 8), tag, _field_text(fields[2]))


def _parse_naptr(fields: list[bytes]) -> RD:
    return NAPTR(
        _number(fields[0], "order", 16),
        _number(fields[1], "preference", 16),
        _character_string(fields[2], "flags"),
        _character_string(fields[3], "service"),
        _character_string(fields[4], "regexp"),
        _name_field(fields[5], root_allowed=True),
    )


# Per type: the rdata fields in order (None: one or more strings) and the parser.
_RDATA_FORMATS: Final[dict[str, tuple[tuple[str, ...] | None, Callable[[list[bytes]], RD]]]] = {
    "A": (("address",), _parse_a),
    "AAAA": (("address",), _parse_aaaa),
    "CAA": (("flags", "tag", "value"), _parse_caa),
    "CNAME": (("target",), _parse_cname),
    "MX": (("preference", "exchange"), _parse_mx),
    "NAPTR": (
        ("order", "preference", "flags", "service", "regexp", "replacement"),
        _parse_naptr,
    ),
    "NS": (("nsdname",), _parse_ns),
    "PTR": (("ptrdname",), _parse_ptr),
    "SOA": (("mname", "rname", "serial", "refresh", "retry", "expire", "minimum"), _parse_soa),
    "SRV": (("priority", "weight", "port", "target"), _parse_srv),
    "TXT": (None, _parse_txt),
}

SUPPORTED_TYPES: Final = tuple(sorted(_RDATA_FORMATS))
"""The record types a :class:`Zone` holds."""


def _parse_rdata(rtype: str, value: str) -> RD:
    fields = _split_rdata(value)
    names, parse = _RDATA_FORMATS[rtype]
    if names is None:
        if not fields:
            raise _RdataError("expected one or more strings, got none")
    elif len(fields) != len(names):
        raise _RdataError(
            f"expected {len(names)} field{'s' if len(names) > 1 else ''} "
            f"({' '.join(names)}), got {len(fields)}"
        )
    return parse(fields)


def _pack_rdata(rdata: RD) -> bytes:
    buffer = DNSBuffer()
    rdata.pack(buffer)
    return bytes(buffer.data)


def _quoted(data: bytes) -> str:
    """``data`` as a quoted zone-file character-string that :func:`_split_rdata` reads back."""
    parts = []
    for byte in data:
        if byte in b'"\\':
            parts.append("\\" + chr(byte))
        elif 0x20 <= byte < 0x7F:
            parts.append(chr(byte))
        else:
            parts.append(f"\\{byte:03d}")
    return '"' + "".join(parts) + '"'


def _rdata_text(rdata: RD) -> str:
    """Zone-file text for rdata, written so that :meth:`Zone.add` reads it back.

    The types a zone holds are written here rather than by dnslib, whose text
    escapes bytes in octal and quotes nothing inside quoted strings.
    """
    if isinstance(rdata, A):
        return str(ipaddress.IPv4Address(bytes(rdata.data)))
    if isinstance(rdata, AAAA):
        return str(ipaddress.IPv6Address(bytes(rdata.data)))
    if isinstance(rdata, CNAME):  # also PTR, NS and DNAME
        return _zone_name(rdata.label)
    if isinstance(rdata, MX):
        return f"{rdata.preference} {_zone_name(rdata.label)}"
    if isinstance(rdata, TXT):
        return " ".join(_quoted(item) for item in rdata.data)
    if isinstance(rdata, SRV):
        return f"{rdata.priority} {rdata.weight} {rdata.port} {_zone_name(rdata.target)}"
    if isinstance(rdata, SOA):
        times = " ".join(str(time) for time in rdata.times)
        return f"{_zone_name(rdata.mname)} {_zone_name(rdata.rname)} {times}"
    if isinstance(rdata, CAA):
        tag = _label_text(rdata.tag.encode("utf-8"))
        return f"{rdata.flags} {tag} {_quoted(rdata.value.encode('utf-8'))}"
    if isinstance(rdata, NAPTR):
        strings = " ".join(_quoted(item) for item in (rdata.flags, rdata.service, rdata.regexp))
        return f"{rdata.order} {rdata.preference} {strings} {_zone_name(rdata.replacement)}"
    return rdata.toZone()


def _type_name(code: int) -> str:
    return QTYPE[code]  # "TYPE65280" for a code dnslib has no name for


def _type_code(rtype: str | int) -> int:
    """The numeric type of a mnemonic ("MX", "ANY", "TYPE65280") or a number."""
    if isinstance(rtype, bool) or not isinstance(rtype, str | int):
        raise TypeError(f"a DNS record type must be a str or int, not {type(rtype).__name__}")
    if isinstance(rtype, int):
        if not 0 <= rtype <= 0xFFFF:
            raise ValueError(f"a DNS record type is 0..65535, got {rtype}")
        return rtype
    code = QTYPE.reverse.get(rtype.upper())
    if code is not None:
        return code
    match = _TYPE_NUMBER.fullmatch(rtype.upper())
    if match and int(match[1]) <= 0xFFFF:
        return int(match[1])
    raise ValueError(f"unknown DNS record type {rtype!r}")


def _zone_type(rtype: str) -> str:
    if not isinstance(rtype, str):
        raise TypeError(f"a DNS record type must be a str, not {type(rtype).__name__}")
    upper = rtype.upper()
    if upper not in _RDATA_FORMATS:
        raise ValueError(
            f"unsupported DNS record type {rtype!r}: a zone holds {', '.join(SUPPORTED_TYPES)}"
        )
    return upper


def _check_ttl(ttl: int) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise TypeError(f"a TTL must be an int, not {type(ttl).__name__} ({ttl!r})")
    if not 0 <= ttl <= MAX_TTL:
        raise ValueError(f"a TTL is 0..{MAX_TTL} seconds (RFC 2181 section 8), got {ttl}")
    return ttl


# --- the zone ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Resolution:
    rcode: int
    answers: list[RR]
    authority: list[RR]


class Zone:
    """Resource records, keyed by lower-case name, that :func:`answer_query` serves.

    The zone is a set of records as a master file would hold them: it need not
    have an SOA or NS record, and every name it does not hold is answered as
    NXDOMAIN.  Records of one name and type keep the order they were added in,
    which is the order of the answer.  Adding a record that is already there
    (same name, type and rdata) changes nothing, as RRsets are sets (RFC 2181
    section 5).
    """

    def __init__(self) -> None:
        self._records: dict[str, list[RR]] = {}
        # Every name at or above an owner name, with how many owner names are
        # at or below it: a name is in the tree (RFC 4592 section 2.2.2, empty
        # non-terminals included) if and only if it is a key here.
        self._nodes: dict[str, int] = {}

    def add(self, name: str, rtype: str, value: str, ttl: int = 300) -> RR:
        """Add one record and return it; ``value`` is the rdata as zone-file text.

        ``rtype`` is one of :data:`SUPPORTED_TYPES`, in any case.  Raises
        ``ValueError`` for an unsupported type, a name beyond RFC 1035's limits,
        rdata that does not parse, a TTL outside 0..2**31 - 1, a CNAME beside
        other records at one name (RFC 1034 section 3.6.2) or a second CNAME or
        SOA at a name; ``TypeError`` for arguments of the wrong type.
        """
        key = _normalise_name(name)
        upper = _zone_type(rtype)
        ttl = _check_ttl(ttl)
        if not isinstance(value, str):
            raise TypeError(f"record data must be a str, not {type(value).__name__} ({value!r})")
        try:
            rdata = _parse_rdata(upper, value)
            wire = _pack_rdata(rdata)
            if len(wire) > MAX_MESSAGE_SIZE:
                raise _RdataError(f"is {len(wire)} bytes packed, at most {MAX_MESSAGE_SIZE} fit")
        except _RdataError as exc:
            raise ValueError(f"invalid {upper} record data {value!r} for {name!r}: {exc}") from None
        code = _type_code(upper)
        existing = self._records.get(key, [])
        for record in existing:
            if record.rtype == code and _pack_rdata(_rd(record)) == wire:
                return record
        has_cname = any(record.rtype == QTYPE.CNAME for record in existing)
        if existing and (has_cname or code == QTYPE.CNAME):
            if has_cname and code == QTYPE.CNAME:
                raise ValueError(
                    f"cannot add a second CNAME record at {name!r} (RFC 2181 section 10.1)"
                )
            raise ValueError(
                f"cannot add {upper} record at {name!r}: a CNAME cannot coexist with other "
                "data at the same name (RFC 1034 section 3.6.2)"
            )
        if code == QTYPE.SOA and any(record.rtype == code for record in existing):
            raise ValueError(f"cannot add a second SOA record at {name!r}")
        record = RR(_to_label(key), code, CLASS.IN, ttl, rdata)
        if not existing:
            self._records[key] = existing
            for node in _ancestors(key):
                self._nodes[node] = self._nodes.get(node, 0) + 1
        existing.append(record)
        return record

    def remove(self, name: str, rtype: str | None = None) -> int:
        """Remove the records of ``name`` (all, or those of ``rtype``); return how many.

        A wildcard is removed by its own name, ``*.example.com``.  Raises
        ``ValueError`` for an invalid name or unsupported type.
        """
        key = _normalise_name(name)
        code = None if rtype is None else _type_code(_zone_type(rtype))
        records = self._records.get(key)
        if not records:
            return 0
        kept = [] if code is None else [record for record in records if record.rtype != code]
        removed = len(records) - len(kept)
        if kept:
            self._records[key] = kept
        else:
            del self._records[key]
            for node in _ancestors(key):
                self._nodes[node] -= 1
                if not self._nodes[node]:
                    del self._nodes[node]
        return removed

    def lookup(self, name: str, rtype: str) -> list[RR]:
        """The records DNS has for ``name`` and ``rtype`` (``"ANY"`` for all types).

        A wildcard answers for a name that is not in the zone, with records
        whose owner is ``name`` (RFC 4592); CNAMEs are not followed.  The list
        is new; the records are the zone's own and should not be changed.
        """
        key = _normalise_name(name)
        if isinstance(rtype, str) and rtype.upper() == "ANY":
            code = QTYPE.ANY
        else:
            code = _type_code(_zone_type(rtype))
        records, _ = self._records_at(key, _to_label(key))
        return [record for record in records if code in (QTYPE.ANY, record.rtype)]

    def __iter__(self) -> Iterator[RR]:
        """Every record, name by name in the order the names were first added."""
        for records in list(self._records.values()):
            yield from list(records)

    def __len__(self) -> int:
        return sum(len(records) for records in self._records.values())

    def __repr__(self) -> str:
        return f"<Zone: {len(self)} records at {len(self._records)} names>"

    def _records_at(self, key: str, owner: DNSLabel) -> tuple[list[RR], bool]:
        """The records answering for ``key`` and whether the name exists.

        RFC 4592 section 4.1: a name not in the tree is answered from the
        wildcard ``*.<closest encloser>``, if there is one, where the closest
        encloser is the nearest ancestor in the tree; a wildcard never answers
        for a name that exists, even as an empty non-terminal.
        """
        if key in self._nodes:
            return list(self._records.get(key, ())), True
        for ancestor in _ancestors(key):
            if ancestor != key and ancestor in self._nodes:
                wildcard = self._records.get(f"*.{ancestor}" if ancestor else "*")
                if not wildcard:
                    return [], False
                return [RR(owner, r.rtype, r.rclass, r.ttl, r.rdata) for r in wildcard], True
        return [], False

    def _negative_soa(self, key: str) -> list[RR]:
        """The SOA for a negative answer (RFC 2308 section 3), from the nearest zone apex.

        Its TTL is the lesser of the SOA's own and its MINIMUM field, the time a
        resolver may cache the negative answer (RFC 2308 section 5).
        """
        for ancestor in _ancestors(key):
            for record in self._records.get(ancestor, ()):
                if isinstance(record.rdata, SOA):
                    ttl = min(record.ttl, record.rdata.times[4])
                    return [RR(record.rname, record.rtype, record.rclass, ttl, record.rdata)]
        return []

    def _resolve(self, key: str, owner: DNSLabel, qtype: int) -> _Resolution:
        """RFC 1034 section 4.3.2 step 3, over this zone alone, with RFC 6604's RCODE."""
        answers: list[RR] = []
        seen: set[str] = set()
        while True:
            records, exists = self._records_at(key, owner)
            if not exists:
                return _Resolution(RCODE.NXDOMAIN, answers, self._negative_soa(key))
            matching = [r for r in records if qtype in (QTYPE.ANY, r.rtype)]
            if matching:
                return _Resolution(RCODE.NOERROR, answers + matching, [])
            cname = next((r for r in records if r.rtype == QTYPE.CNAME), None)
            if cname is None or not isinstance(cname.rdata, CNAME):
                return _Resolution(RCODE.NOERROR, answers, self._negative_soa(key))
            answers.append(cname)
            seen.add(key)
            owner = cname.rdata.label
            key = _wire_key(owner)
            if key in seen or len(seen) > MAX_CNAME_CHAIN:
                return _Resolution(RCODE.SERVFAIL, [], [])


def _rd(record: RR) -> RD:
    rdata = record.rdata
    if not isinstance(rdata, RD):
        raise TypeError(f"an OPT record has no record data: {record!r}")
    return rdata


# --- the server ----------------------------------------------------------


def _header_only(query_id: int, opcode: int, rd: int, rcode: int) -> bytes:
    flags = _QR | opcode << 11 | rd << 8 | rcode
    return struct.pack("!6H", query_id, flags, 0, 0, 0, 0)


def answer_query(
    zone: Zone,
    message: bytes,
    *,
    max_udp_size: int | None = CLASSIC_UDP_SIZE,
    recursion_available: bool = True,
) -> bytes | None:
    """The authoritative answer to the query ``message``, or ``None`` to drop it.

    ``max_udp_size`` is the size limit for a query that came over UDP without
    an EDNS0 OPT record (RFC 1035's 512 by default); a query with one is held
    to the size it advertises, never less than 512 (RFC 6891 section 6.2.5).
    ``None`` means the query came over TCP, where only the 65535-byte limit of
    the length prefix applies.  An answer over the limit is sent with TC set
    and its answer, authority and additional sections emptied (the OPT record
    stays), which tells the client to ask again over TCP.

    The answer follows CNAMEs inside the zone (SERVFAIL for a loop or a chain
    longer than :data:`MAX_CNAME_CHAIN`), synthesises from wildcards, answers
    NXDOMAIN for a name the zone lacks and NOERROR with no answers for a name
    without records of the type, both with the zone's SOA when it has one.
    QTYPE ANY gets every record of the name.  A query with an OPT record gets
    one back advertising :data:`EDNS_PAYLOAD_SIZE`, with the DO bit echoed;
    an EDNS version above 0 gets BADVERS.

    This never raises for any ``message``: bytes shorter than the header, or
    a message that is a response (QR set), return ``None``; an opcode other
    than QUERY gets NOTIMP; a body that does not parse, a question count other
    than one, more than one OPT record or an OPT record not owned by the root
    get FORMERR; a class other than IN or ANY, and zone transfers, get REFUSED.
    Raises ``ValueError`` for a ``max_udp_size`` outside 512..65535.
    """
    if max_udp_size is not None and not CLASSIC_UDP_SIZE <= max_udp_size <= MAX_MESSAGE_SIZE:
        raise ValueError(
            f"max_udp_size is {CLASSIC_UDP_SIZE}..{MAX_MESSAGE_SIZE} or None, got {max_udp_size}"
        )
    if not HEADER_SIZE <= len(message) <= MAX_MESSAGE_SIZE:
        return None
    query_id, flags = struct.unpack_from("!HH", message)
    if flags & _QR:
        return None
    opcode = flags >> 11 & 0xF
    rd = flags >> 8 & 1
    if opcode != OPCODE.QUERY:
        return _header_only(query_id, opcode, rd, RCODE.NOTIMP)
    try:
        query = DNSRecord.parse(message)
    # dnslib raises DNSError for most malformed input but ValueError,
    # UnicodeDecodeError or RecursionError for some; all of them mean FORMERR.
    except Exception:
        return _header_only(query_id, opcode, rd, RCODE.FORMERR)
    options = [record for record in query.ar if record.rtype == QTYPE.OPT]
    if (
        len(query.questions) != 1
        or len(options) > 1
        or (options and options[0].rname.label)
        or not _fits_wire(query.questions[0].qname)
    ):
        return _header_only(query_id, opcode, rd, RCODE.FORMERR)
    question = query.questions[0]
    response = DNSRecord(
        DNSHeader(id=query_id, bitmap=0, qr=1, rd=rd, ra=int(recursion_available)),
        q=question,
    )
    limit = MAX_MESSAGE_SIZE if max_udp_size is None else max_udp_size
    if options:
        option = options[0]
        if max_udp_size is not None:
            limit = max(option.rclass, CLASSIC_UDP_SIZE)
        version_ok = option.edns_ver == 0
        response.add_ar(
            EDNS0(
                udp_len=EDNS_PAYLOAD_SIZE,
                ext_rcode=0 if version_ok else _BADVERS >> 4,
                flags="do" if option.ttl & _DO_FLAG else "",
            )
        )
        if not version_ok:
            return bytes(response.pack())
    if question.qclass not in (CLASS.IN, _CLASS_ANY) or question.qtype in _ZONE_TRANSFER_TYPES:
        response.header.rcode = RCODE.REFUSED
    elif question.qtype == QTYPE.OPT:
        response.header.rcode = RCODE.FORMERR
    else:
        result = zone._resolve(_wire_key(question.qname), question.qname, question.qtype)
        response.header.rcode = result.rcode
        response.header.aa = int(result.rcode != RCODE.SERVFAIL)
        response.add_answer(*result.answers)
        response.add_auth(*result.authority)
    wire = response.pack()
    if len(wire) > limit:
        response.rr = []
        response.auth = []
        response.ar = [record for record in response.ar if record.rtype == QTYPE.OPT]
        response.header.tc = 1
        wire = response.pack()
    return bytes(wire)


# --- the client ----------------------------------------------------------


def build_query(
    name: str,
    rtype: str | int,
    query_id: int,
    *,
    recursion_desired: bool = True,
    edns_payload_size: int | None = EDNS_PAYLOAD_SIZE,
) -> bytes:
    """A query for ``name`` and ``rtype`` (a mnemonic such as ``"AAAA"`` or a number).

    ``query_id`` should come from a seeded or secure random source: with the
    question it is what :func:`parse_response` checks.  ``edns_payload_size``
    adds an EDNS0 OPT record advertising that UDP payload size (RFC 6891);
    ``None`` sends a plain RFC 1035 query.  Raises ``ValueError`` for an
    invalid name, unknown type, ``query_id`` outside 0..65535 or a payload
    size outside 512..65535.
    """
    key = _normalise_name(name)
    code = _type_code(rtype)
    if isinstance(query_id, bool) or not isinstance(query_id, int) or not 0 <= query_id <= 0xFFFF:
        raise ValueError(f"query_id is 0..65535, got {query_id!r}")
    record = DNSRecord(
        DNSHeader(id=query_id, bitmap=0, rd=int(recursion_desired)),
        q=DNSQuestion(_to_label(key), code, CLASS.IN),
    )
    if edns_payload_size is not None:
        if not CLASSIC_UDP_SIZE <= edns_payload_size <= MAX_MESSAGE_SIZE:
            raise ValueError(
                f"edns_payload_size is {CLASSIC_UDP_SIZE}..{MAX_MESSAGE_SIZE} or None, "
                f"got {edns_payload_size}"
            )
        record.add_ar(EDNS0(udp_len=edns_payload_size))
    return bytes(record.pack())


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """One record of an answer section.

    ``name`` is the owner without the trailing dot, as sent (case kept);
    ``rtype`` the type mnemonic (``"TYPE65280"`` for one without a name);
    ``value`` the rdata as zone-file text, which :meth:`Zone.add` reads back:
    addresses in their canonical form, names absolute with a trailing dot,
    strings quoted with ``\\DDD`` escapes.
    """

    name: str
    rtype: str
    ttl: int
    value: str


@dataclass(frozen=True, slots=True)
class DnsResponse:
    """A response that :func:`parse_response` has matched to its query.

    ``rcode`` includes the extended bits of an OPT record (16 is BADVERS).
    ``canonical_name`` is where the CNAMEs in the answer lead from the name
    asked, or that name (lower-cased, without the trailing dot) when there
    are none.  ``min_ttl`` is how long the response may be cached: the
    smallest TTL of the answer section, or for an answer without records the
    negative TTL of the authority section's SOA (RFC 2308 section 5), or
    ``None`` when there is neither.
    """

    rcode: int
    truncated: bool
    answers: tuple[DnsAnswer, ...]
    canonical_name: str
    min_ttl: int | None

    def addresses(self) -> list[str]:
        """The A and AAAA values owned by the canonical name, in answer order."""
        canonical = self.canonical_name.lower()
        return [
            answer.value
            for answer in self.answers
            if answer.rtype in ("A", "AAAA") and answer.name.lower() == canonical
        ]


def parse_response(data: bytes, *, query_id: int, name: str, rtype: str | int) -> DnsResponse:
    """Check ``data`` against the query sent and read its answer.

    ``query_id``, ``name`` and ``rtype`` are those given to
    :func:`build_query`.  Raises :class:`RemoteProtocolError` when ``data`` is
    not a well-formed DNS message, is a query, has another id or opcode,
    answers another question, or has more than one OPT record.  A response
    without a question section is accepted only when it is an error or
    truncated, as some servers send those bare.  Raises ``ValueError`` for an
    invalid ``name`` or ``rtype``, as :func:`build_query` does.
    """
    key = _normalise_name(name)
    code = _type_code(rtype)
    if len(data) < HEADER_SIZE:
        raise RemoteProtocolError(
            f"DNS response of {len(data)} bytes is shorter than the {HEADER_SIZE}-byte header"
        )
    response_id, flags = struct.unpack_from("!HH", data)
    if not flags & _QR:
        raise RemoteProtocolError("DNS message is a query, not a response (QR bit clear)")
    if response_id != query_id:
        raise RemoteProtocolError(
            f"DNS response id {response_id} does not match query id {query_id}"
        )
    opcode = flags >> 11 & 0xF
    if opcode != OPCODE.QUERY:
        raise RemoteProtocolError(f"DNS response has opcode {opcode}, not QUERY (0)")
    try:
        record = DNSRecord.parse(data)
    # As in answer_query: dnslib's parsers fail with more than DNSError.
    except Exception as exc:
        raise RemoteProtocolError(f"malformed DNS response: {exc}") from None
    options = [rr for rr in record.ar if rr.rtype == QTYPE.OPT]
    if len(options) > 1:
        raise RemoteProtocolError(
            f"DNS response has {len(options)} OPT records, at most 1 is allowed"
        )
    rcode = record.header.rcode | (options[0].edns_rcode << 4 if options else 0)
    truncated = bool(record.header.tc)
    if record.questions:
        question = record.questions[0]
        if (
            len(record.questions) != 1
            or _wire_key(question.qname) != key
            or question.qtype != code
            or question.qclass != CLASS.IN
        ):
            asked = ", ".join(
                f"{_name_text(q.qname)} {_type_name(q.qtype)}" for q in record.questions
            )
            raise RemoteProtocolError(
                f"DNS response answers {asked}, not the question asked: {key} {_type_name(code)}"
            )
    elif rcode == RCODE.NOERROR and not truncated:
        raise RemoteProtocolError("DNS response has no question section")
    answers: list[DnsAnswer] = []
    cnames: dict[str, DNSLabel] = {}
    for rr in record.rr:
        rdata = rr.rdata
        if not isinstance(rdata, RD):
            raise RemoteProtocolError("DNS response has an OPT record in its answer section")
        try:
            value = _rdata_text(rdata)
        # dnslib's own text for the types a zone does not hold can fail on odd data.
        except Exception as exc:
            raise RemoteProtocolError(
                f"DNS response has an undecodable {_type_name(rr.rtype)} record: {exc}"
            ) from None
        answers.append(DnsAnswer(_name_text(rr.rname), _type_name(rr.rtype), rr.ttl, value))
        if isinstance(rdata, CNAME) and rr.rtype == QTYPE.CNAME:
            cnames.setdefault(_wire_key(rr.rname), rdata.label)
    canonical_name, current = key, key
    seen = {key}
    while current in cnames:
        target = cnames[current]
        canonical_name, current = _name_text(target), _wire_key(target)
        if current in seen:
            break
        seen.add(current)
    if answers:
        min_ttl: int | None = min(answer.ttl for answer in answers)
    else:
        negative = [
            min(rr.ttl, rr.rdata.times[4]) for rr in record.auth if isinstance(rr.rdata, SOA)
        ]
        min_ttl = min(negative) if negative else None
    return DnsResponse(rcode, truncated, tuple(answers), canonical_name, min_ttl)


# --- TCP framing ---------------------------------------------------------


class DnsTcpFramer:
    """DNS messages out of a TCP byte stream, and back (RFC 1035 section 4.2.2).

    Each message travels behind a two-byte big-endian length.  Feed what the
    socket reads to :meth:`receive_data` (``b""`` at EOF, so ``recv()``'s
    result passes straight through), then call :meth:`next_message` until it
    returns ``None``; :meth:`frame` prefixes a message for sending.  Pipelined
    messages (RFC 7766 section 6.2.1.1) come out one per call.

    The peer breaks the protocol, and :class:`RemoteProtocolError` is raised,
    when a length is below the 12-byte DNS header, when it makes the framer
    hold more than ``max_buffered`` bytes, or when EOF cuts a message short.
    After that every call raises again.
    """

    def __init__(self, max_buffered: int = DEFAULT_MAX_BUFFERED) -> None:
        if max_buffered < 2 + HEADER_SIZE:
            raise ValueError(f"max_buffered must be at least {2 + HEADER_SIZE}, got {max_buffered}")
        self.max_buffered = max_buffered
        self._buffer = bytearray()
        self._eof = False
        self._error: str | None = None

    @property
    def at_eof(self) -> bool:
        """True once the peer's EOF is received and every message before it returned."""
        return self._eof and not self._buffer

    def receive_data(self, data: bytes) -> None:
        """Add bytes read from the stream; ``b""`` means the peer sent EOF.

        Raises :class:`RemoteProtocolError` when the bytes held would exceed
        ``max_buffered``, and ``RuntimeError`` for data after EOF.
        """
        self._check()
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RuntimeError("received data after EOF")
        self._buffer += data
        if len(self._buffer) > self.max_buffered:
            self._fail(
                f"peer sent {len(self._buffer)} bytes of DNS messages ahead of those read, "
                f"more than max_buffered={self.max_buffered}"
            )

    def next_message(self) -> bytes | None:
        """The next whole message, or ``None`` until more data (or, at EOF, for good).

        Raises :class:`RemoteProtocolError` for a length below the header or
        beyond ``max_buffered``, and at EOF in the middle of a message.
        """
        self._check()
        if len(self._buffer) < 2:
            if self._eof and self._buffer:
                self._fail("connection closed inside the length prefix of a DNS message")
            return None
        (length,) = struct.unpack_from("!H", self._buffer)
        if length < HEADER_SIZE:
            self._fail(
                f"DNS over TCP length {length} is shorter than the {HEADER_SIZE}-byte header"
            )
        if 2 + length > self.max_buffered:
            self._fail(
                f"DNS over TCP message of {length} bytes is more than "
                f"max_buffered={self.max_buffered} allows"
            )
        if len(self._buffer) < 2 + length:
            if self._eof:
                self._fail(
                    f"connection closed after {len(self._buffer) - 2} of the {length} bytes "
                    "of a DNS message"
                )
            return None
        message = bytes(self._buffer[2 : 2 + length])
        del self._buffer[: 2 + length]
        return message

    @staticmethod
    def frame(message: bytes) -> bytes:
        """``message`` with its length prefix, ready to send.

        Raises :class:`LocalProtocolError` for a message shorter than the DNS
        header or longer than 65535 bytes, which no length prefix can carry.
        """
        if not HEADER_SIZE <= len(message) <= MAX_MESSAGE_SIZE:
            raise LocalProtocolError(
                f"a DNS message over TCP is {HEADER_SIZE}..{MAX_MESSAGE_SIZE} bytes, "
                f"got {len(message)}"
            )
        return struct.pack("!H", len(message)) + bytes(message)

    def __repr__(self) -> str:
        state = "ERROR" if self._error else "EOF" if self._eof else "OPEN"
        return f"<DnsTcpFramer {state}, {len(self._buffer)} bytes buffered>"

    def _check(self) -> None:
        if self._error is not None:
            raise RemoteProtocolError(f"DNS over TCP stream already failed: {self._error}")

    def _fail(self, reason: str) -> NoReturn:
        self._error = reason
        raise RemoteProtocolError(reason)
