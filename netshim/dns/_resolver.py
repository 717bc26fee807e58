"""The DNS stub resolver behind :mod:`netshim.dns`: real DNS messages over any stack.

A :class:`Resolver` asks its servers in turn, ``tries`` rounds at most,
waiting ``timeout`` seconds for each answer:

* over UDP, from a fresh socket and with a random query id each time, so an
  answer is matched by id, question and source (RFC 5452's defences against
  spoofing, short of port randomisation, which the stack's ephemeral ports
  give); an answer with TC set is asked again over TCP (RFC 7766), and
  ``transport="tcp"`` asks over TCP only;
* with an EDNS0 OPT record advertising 1232 bytes (RFC 6891, the DNS Flag Day
  2020 size), so large answers fit in one datagram without IP fragmentation;
* over DNS-over-HTTPS (RFC 8484) with ``transport="https"``, for stacks that
  have TCP but no UDP (tunnels): see :mod:`netshim.dns._doh`.

SERVFAIL, REFUSED and NOTIMP move on to the next server, as c-ares does; an
answer that does not parse counts as no answer.  Answers are cached for their
smallest TTL, negative ones for the SOA's negative TTL (RFC 2308), in a cache
bounded by entry count.  A CNAME chain that the server did not follow to the
end is chased with further queries, at most :data:`MAX_CNAME_CHAIN` links.
"""

from __future__ import annotations

import ipaddress
import math
import random
import socket
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import anyio

from .._addresses import IPAddress, parse_ip
from .._errors import (
    RemoteProtocolError,
    name_not_known,
    name_temporarily_unresolvable,
    no_address_for_name,
)
from ..protocols.dns import (
    EDNS_PAYLOAD_SIZE,
    MAX_CNAME_CHAIN,
    DnsAnswer,
    DnsResponse,
    DnsTcpFramer,
    build_query,
    check_name,
    parse_response,
    reverse_name,
    split_rdata,
)
from ..stack import Stack, current_stack
from ._errors import (
    BADFAMILY,
    BADRESP,
    CANCELLED,
    CONNREFUSED,
    NODATA,
    NOTFOUND,
    RCODE_ERRORS,
    TIMEOUT,
    DnsError,
    DnsNameError,
)

__all__ = [
    "AddressRecord",
    "CaaRecord",
    "LookupAddress",
    "MxRecord",
    "NaptrRecord",
    "Resolver",
    "SoaRecord",
    "SrvRecord",
    "Transport",
]

DNS_PORT: Final = 53
# Node's Resolver default: 4 tries.  The per-try wait is glibc's 5 seconds;
# Node leaves it to c-ares, which starts lower but backs off to similar totals.
DEFAULT_TIMEOUT: Final = 5.0
DEFAULT_TRIES: Final = 4
# Entries, not bytes: each holds one parsed response of at most 64 KiB, and a
# stub resolver rarely asks for more than a few hundred names in a TTL.
DEFAULT_CACHE_SIZE: Final = 1024

Transport = Literal["udp", "tcp", "https"]


@dataclass(frozen=True, slots=True)
class AddressRecord:
    """An A or AAAA answer with its TTL (``resolve4(name, ttl=True)``)."""

    address: str
    ttl: int


@dataclass(frozen=True, slots=True)
class MxRecord:
    priority: int
    exchange: str


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    name: str


@dataclass(frozen=True, slots=True)
class SoaRecord:
    nsname: str
    hostmaster: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minttl: int


@dataclass(frozen=True, slots=True)
class CaaRecord:
    """``critical`` is the flags byte (128 for the critical flag), as Node reports it."""

    critical: int
    tag: str
    value: str


@dataclass(frozen=True, slots=True)
class NaptrRecord:
    order: int
    preference: int
    flags: str
    service: str
    regexp: str
    replacement: str


@dataclass(frozen=True, slots=True)
class LookupAddress:
    """One result of :func:`lookup`: an address and its family, 4 or 6."""

    address: str
    family: int


def _host_name(text: str) -> str:
    """A name from rdata text as Node gives it: no trailing dot (the root stays "")."""
    return text[:-1] if text.endswith(".") else text


def _text(field: bytes) -> str:
    # TXT and friends are bytes on the wire; Node decodes them as UTF-8 too.
    return field.decode("utf-8", errors="replace")


def convert(answer: DnsAnswer) -> Any:
    """The Node-shaped value of one answer record (see :meth:`Resolver.resolve`)."""
    rtype = answer.rtype
    if rtype in ("A", "AAAA"):
        return answer.value
    if rtype in ("CNAME", "NS", "PTR"):
        return _host_name(answer.value)
    fields = split_rdata(answer.value)
    if rtype == "MX":
        return MxRecord(int(fields[0]), _host_name(_text(fields[1])))
    if rtype == "TXT":
        return [_text(field) for field in fields]
    if rtype == "SRV":
        return SrvRecord(
            int(fields[0]), int(fields[1]), int(fields[2]), _host_name(_text(fields[3]))
        )
    if rtype == "SOA":
        times = [int(field) for field in fields[2:7]]
        return SoaRecord(_host_name(_text(fields[0])), _host_name(_text(fields[1])), *times)
    if rtype == "CAA":
        return CaaRecord(int(fields[0]), _text(fields[1]), _text(fields[2]))
    if rtype == "NAPTR":
        return NaptrRecord(
            int(fields[0]),
            int(fields[1]),
            _text(fields[2]),
            _text(fields[3]),
            _text(fields[4]),
            _host_name(_text(fields[5])),
        )
    return answer.value


def _any_entry(answer: DnsAnswer) -> dict[str, Any]:
    """One entry of :meth:`Resolver.resolve_any`, shaped as Node's ``resolveAny`` gives it."""
    value = convert(answer)
    entry: dict[str, Any] = {"type": answer.rtype}
    if answer.rtype in ("A", "AAAA"):
        entry.update(address=value, ttl=answer.ttl)
    elif answer.rtype in ("CNAME", "NS", "PTR"):
        entry["value"] = value
    elif answer.rtype == "TXT":
        entry["entries"] = value
    elif answer.rtype == "SOA":
        entry.update(
            nsname=value.nsname,
            hostmaster=value.hostmaster,
            serial=value.serial,
            refresh=value.refresh,
            retry=value.retry,
            expire=value.expire,
            minttl=value.minttl,
        )
    elif hasattr(value, "__dataclass_fields__"):
        entry.update({name: getattr(value, name) for name in value.__dataclass_fields__})
    else:
        entry["value"] = value
    return entry


def parse_server(text: str) -> tuple[str, int]:
    """``"1.2.3.4"``, ``"1.2.3.4:5353"``, ``"::1"`` or ``"[::1]:5353"`` as ``(ip, port)``.

    Raises ``ValueError`` for anything else: servers are addresses, not names.
    """
    if not isinstance(text, str):
        raise TypeError(f"a DNS server is a string, not {type(text).__name__}")
    host, port = text, DNS_PORT
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"invalid DNS server {text!r}")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if not port_text.isdigit():
            raise ValueError(f"invalid DNS server {text!r}")
        port = int(port_text)
    if parse_ip(host) is None or not 0 < port <= 65535:
        raise ValueError(f"invalid DNS server {text!r}: expected an IP address and optional port")
    return str(parse_ip(host)), port


def format_server(server: tuple[str, int]) -> str:
    """The inverse of :func:`parse_server`, as Node's ``getServers()`` writes them."""
    host, port = server
    if port == DNS_PORT:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def system_servers(stack: Stack) -> list[tuple[str, int]]:
    """The servers a stack's own programs would ask.

    A stack that knows its DNS servers says so with a ``resolvers`` list of
    addresses (virtual hosts do); otherwise the machine's ``/etc/resolv.conf``
    applies, and without one the local host, as glibc assumes.
    """
    configured = getattr(stack, "resolvers", None)
    if isinstance(configured, list) and configured:
        return [(str(address), DNS_PORT) for address in configured]
    servers: list[tuple[str, int]] = []
    try:
        with open("/etc/resolv.conf", encoding="utf-8", errors="replace") as conf:
            for line in conf:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver" and parse_ip(parts[1]):
                    servers.append((parts[1].split("%")[0], DNS_PORT))
    except OSError:
        pass
    return servers or [("127.0.0.1", DNS_PORT)]


class _Cache:
    """Responses by (name, type) until their TTL runs out; least recently added goes first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[str, str], tuple[float, DnsResponse]] = OrderedDict()

    def get(self, key: tuple[str, str], now: float) -> DnsResponse | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, response = entry
        if now >= expires:
            del self._entries[key]
            return None
        # Hand out the TTL that is left, as a caching resolver does.
        left = math.ceil(expires - now)
        answers = tuple(
            DnsAnswer(a.name, a.rtype, min(a.ttl, left), a.value) for a in response.answers
        )
        return DnsResponse(
            response.rcode, response.truncated, answers, response.canonical_name, left
        )

    def put(self, key: tuple[str, str], response: DnsResponse, now: float) -> None:
        if self.size <= 0 or not response.min_ttl:
            return
        self._entries[key] = (now + response.min_ttl, response)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class _UnansweredError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class Resolver:
    """An independent DNS resolver (``dns.Resolver``) over a stack.

    ``timeout`` is seconds per try (Node's is milliseconds), ``tries`` how
    many rounds over the servers.  ``stack`` defaults to the current stack at
    each query.  ``servers`` defaults to the stack's own (see
    :meth:`set_servers`).  ``transport`` is ``"udp"`` (with TCP after a
    truncated answer), ``"tcp"`` or ``"https"`` (then ``doh_url`` says where,
    and ``ssl_context`` may carry the trust anchors).  ``cache_size`` 0 turns
    the cache off; ``edns=False`` sends plain RFC 1035 queries.
    """

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        tries: int = DEFAULT_TRIES,
        stack: Stack | None = None,
        servers: Sequence[str] | None = None,
        transport: Transport = "udp",
        doh_url: str | None = None,
        ssl_context: Any = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        edns: bool = True,
        local_address: str | None = None,
        seed: int | None = None,
    ) -> None:
        if timeout is None or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if isinstance(tries, bool) or not isinstance(tries, int) or tries < 1:
            raise ValueError(f"tries must be a positive integer, got {tries!r}")
        if transport not in ("udp", "tcp", "https"):
            raise ValueError(f"transport is 'udp', 'tcp' or 'https', got {transport!r}")
        if transport == "https" and not doh_url:
            raise ValueError("transport='https' needs doh_url='https://host[:port]/dns-query'")
        self.timeout = float(timeout)
        self.tries = tries
        self.stack = stack
        self.transport: Transport = transport
        self.doh_url = doh_url
        self.ssl_context = ssl_context
        self.edns = edns
        self.local_address = local_address
        self._servers: list[tuple[str, int]] | None = None
        self._cache = _Cache(cache_size)
        if servers is not None:
            self.set_servers(servers)
        # Query ids must be unpredictable to off-path attackers (RFC 5452);
        # a seed makes them reproducible for tests instead.
        self._rng: random.Random = random.SystemRandom() if seed is None else random.Random(seed)
        self._scopes: set[anyio.CancelScope] = set()

    def __repr__(self) -> str:
        servers = ", ".join(self.get_servers()) if self._servers is not None else "stack default"
        return (
            f"<dns.Resolver {self.transport} [{servers}] timeout={self.timeout} tries={self.tries}>"
        )

    # -- servers ----------------------------------------------------------------

    def set_servers(self, servers: Sequence[str]) -> None:
        """Use ``servers`` (``"1.2.3.4"``, ``"[::1]:5353"``...) in this order.

        Raises ``ValueError`` for an entry that is not an IP address with an
        optional port; the list is unchanged then.
        """
        if isinstance(servers, str):
            raise TypeError("set_servers() takes a list of addresses, not one string")
        self._servers = [parse_server(text) for text in servers]
        self._cache.clear()

    def get_servers(self) -> list[str]:
        """The servers in use, formatted as :meth:`set_servers` takes them."""
        return [format_server(server) for server in self._current_servers()]

    def _current_stack(self) -> Stack:
        return self.stack or current_stack()

    def _current_servers(self) -> list[tuple[str, int]]:
        if self._servers is not None:
            return list(self._servers)
        return system_servers(self._current_stack())

    def clear_cache(self) -> None:
        self._cache.clear()

    @property
    def cache_entries(self) -> int:
        return len(self._cache)

    # -- cancellation -------------------------------------------------------------

    def cancel(self) -> None:
        """Fail every outstanding query of this resolver with ``ECANCELLED``."""
        for scope in list(self._scopes):
            scope.cancel()

    # -- one query ----------------------------------------------------------------

    async def query(self, name: str, rtype: str, syscall: str | None = None) -> DnsResponse:
        """Ask for ``name``/``rtype``, chasing CNAMEs, and return the merged response.

        Raises :class:`DnsError`: ``ENOTFOUND`` for NXDOMAIN, ``ESERVFAIL`` /
        ``EREFUSED`` / ``ENOTIMP`` / ``EFORMERR`` when every server said so,
        ``ETIMEOUT``, ``ECONNREFUSED`` or ``EBADRESP`` when none answered,
        ``ECANCELLED`` after :meth:`cancel`, and :class:`DnsNameError`
        (``EBADNAME``) for a name beyond RFC 1035's limits.  A response
        without records of the type is returned as it is; callers decide
        whether that is ``ENODATA``.
        """
        syscall = syscall or f"query{rtype.capitalize() if len(rtype) > 1 else rtype}"
        try:
            key_name = check_name(name)
        except ValueError as exc:
            raise DnsNameError("EBADNAME", syscall, name, str(exc)) from None
        scope = anyio.CancelScope()
        self._scopes.add(scope)
        try:
            with scope:
                return await self._chase(key_name, rtype.upper(), syscall, name)
            raise DnsError(CANCELLED, syscall, name, "the query was cancelled")
        finally:
            self._scopes.discard(scope)

    async def _chase(self, name: str, rtype: str, syscall: str, asked: str) -> DnsResponse:
        response = await self._query_once(name, rtype, syscall, asked)
        answers = list(response.answers)
        seen = {name}
        while (
            rtype not in ("CNAME", "ANY")
            and response.rcode == 0
            and response.canonical_name.lower() not in seen
            and not _owned(response, rtype)
        ):
            # The server stopped at a CNAME that points outside its data.
            if len(seen) > MAX_CNAME_CHAIN:
                raise DnsError(BADRESP, syscall, asked, "CNAME chain too long or looping")
            target = check_name(response.canonical_name)
            seen.add(target)
            response = await self._query_once(target, rtype, syscall, asked)
            answers.extend(response.answers)
        if len(answers) == len(response.answers):
            return response
        return DnsResponse(
            response.rcode,
            response.truncated,
            tuple(answers),
            response.canonical_name,
            min((a.ttl for a in answers), default=response.min_ttl),
        )

    async def _query_once(self, name: str, rtype: str, syscall: str, asked: str) -> DnsResponse:
        key = (name, rtype)
        now = anyio.current_time()
        cached = self._cache.get(key, now)
        if cached is not None:
            return cached
        failure = _UnansweredError(TIMEOUT, "no server answered")
        for _ in range(self.tries):
            for server in self._current_servers():
                try:
                    response = await self._exchange(server, name, rtype)
                except _UnansweredError as exc:
                    failure = exc
                    continue
                code = RCODE_ERRORS.get(response.rcode)
                if code is not None and code != NOTFOUND:
                    failure = _UnansweredError(code, f"{format_server(server)} answered {code}")
                    continue
                self._cache.put(key, response, anyio.current_time())
                if code == NOTFOUND:
                    raise DnsError(NOTFOUND, syscall, asked)
                return response
            if failure.code not in (TIMEOUT, CONNREFUSED, BADRESP):
                break  # Every server answered with an error: asking again changes nothing.
        raise DnsError(failure.code, syscall, asked, str(failure))

    async def _exchange(self, server: tuple[str, int], name: str, rtype: str) -> DnsResponse:
        query_id = self._rng.randrange(65536)
        payload = build_query(
            name, rtype, query_id, edns_payload_size=EDNS_PAYLOAD_SIZE if self.edns else None
        )
        if self.transport == "https":
            from ._doh import DohError, doh_exchange

            assert self.doh_url is not None
            try:
                with anyio.fail_after(self.timeout):
                    data = await doh_exchange(
                        self._current_stack(), self.doh_url, payload, self.ssl_context
                    )
            except TimeoutError:
                raise _UnansweredError(TIMEOUT, f"{self.doh_url} did not answer") from None
            except DohError as exc:
                raise _UnansweredError(BADRESP, str(exc)) from None
            except OSError as exc:
                raise _UnansweredError(CONNREFUSED, f"{self.doh_url}: {exc}") from None
            return self._parse(data, query_id, name, rtype)
        if self.transport == "udp":
            response = await self._udp(server, payload, query_id, name, rtype)
            if not response.truncated:
                return response
        return await self._tcp(server, payload, query_id, name, rtype)

    def _parse(self, data: bytes, query_id: int, name: str, rtype: str) -> DnsResponse:
        try:
            return parse_response(data, query_id=query_id, name=name, rtype=rtype)
        except RemoteProtocolError as exc:
            raise _UnansweredError(BADRESP, str(exc)) from None

    async def _udp(
        self, server: tuple[str, int], payload: bytes, query_id: int, name: str, rtype: str
    ) -> DnsResponse:
        stack = self._current_stack()
        local = self.local_address or ("::" if ":" in server[0] else "0.0.0.0")
        try:
            sock = await stack.open_udp(local, 0, remote=server)
        except OSError as exc:
            raise _UnansweredError(
                CONNREFUSED, f"cannot reach {format_server(server)}: {exc}"
            ) from None
        async with sock:
            try:
                await sock.send(payload)
                with anyio.move_on_after(self.timeout):
                    while True:
                        data, _ = await sock.receive()
                        try:
                            return parse_response(data, query_id=query_id, name=name, rtype=rtype)
                        except RemoteProtocolError:
                            # Not the answer to this query (or garbage): keep waiting,
                            # so a forged or stray datagram cannot end the exchange.
                            continue
            except ConnectionRefusedError:
                raise _UnansweredError(CONNREFUSED, f"{format_server(server)} refused") from None
            except OSError as exc:
                raise _UnansweredError(CONNREFUSED, f"{format_server(server)}: {exc}") from None
        raise _UnansweredError(
            TIMEOUT, f"{format_server(server)} did not answer in {self.timeout}s"
        )

    async def _tcp(
        self, server: tuple[str, int], payload: bytes, query_id: int, name: str, rtype: str
    ) -> DnsResponse:
        stack = self._current_stack()
        with anyio.move_on_after(self.timeout):
            try:
                stream = await stack.connect_tcp(server[0], server[1])
            except OSError as exc:
                raise _UnansweredError(CONNREFUSED, f"{format_server(server)}: {exc}") from None
            async with stream:
                framer = DnsTcpFramer()
                try:
                    await stream.send(DnsTcpFramer.frame(payload))
                    while True:
                        try:
                            data = await stream.receive()
                        except anyio.EndOfStream:
                            data = b""
                        framer.receive_data(data)
                        message = framer.next_message()
                        if message is not None:
                            return self._parse(message, query_id, name, rtype)
                        if framer.at_eof:
                            raise _UnansweredError(BADRESP, "connection closed without an answer")
                except RemoteProtocolError as exc:
                    raise _UnansweredError(BADRESP, str(exc)) from None
                except OSError as exc:
                    raise _UnansweredError(CONNREFUSED, f"{format_server(server)}: {exc}") from None
        raise _UnansweredError(
            TIMEOUT, f"{format_server(server)} did not answer in {self.timeout}s"
        )

    # -- Node's methods -------------------------------------------------------------

    async def _records(self, name: str, rtype: str, syscall: str) -> list[DnsAnswer]:
        response = await self.query(name, rtype, syscall)
        if rtype == "ANY":
            records = list(response.answers)
        elif rtype == "CNAME":
            records = [a for a in response.answers if a.rtype == "CNAME"][:1]
        else:
            canonical = response.canonical_name.lower()
            records = [
                a for a in response.answers if a.rtype == rtype and a.name.lower() == canonical
            ]
        if not records:
            raise DnsError(NODATA, syscall, name)
        return records

    async def resolve(self, hostname: str, rrtype: str = "A") -> list[Any]:
        """Records of ``rrtype`` for ``hostname``, shaped as :meth:`resolve4` and friends do."""
        methods: dict[str, Callable[[str], Awaitable[Any]]] = {
            "A": self.resolve4,
            "AAAA": self.resolve6,
            "ANY": self.resolve_any,
            "CAA": self.resolve_caa,
            "CNAME": self.resolve_cname,
            "MX": self.resolve_mx,
            "NAPTR": self.resolve_naptr,
            "NS": self.resolve_ns,
            "PTR": self.resolve_ptr,
            "SRV": self.resolve_srv,
            "TXT": self.resolve_txt,
        }
        upper = rrtype.upper() if isinstance(rrtype, str) else rrtype
        if upper == "SOA":
            return [await self.resolve_soa(hostname)]
        method = methods.get(upper)
        if method is None:
            raise ValueError(f"unknown rrtype {rrtype!r}: one of {', '.join([*methods, 'SOA'])}")
        result: list[Any] = await method(hostname)
        return result

    async def resolve4(self, hostname: str, *, ttl: bool = False) -> list[Any]:
        """IPv4 addresses; with ``ttl=True`` as :class:`AddressRecord` objects."""
        records = await self._records(hostname, "A", "queryA")
        if ttl:
            return [AddressRecord(r.value, r.ttl) for r in records]
        return [r.value for r in records]

    async def resolve6(self, hostname: str, *, ttl: bool = False) -> list[Any]:
        """IPv6 addresses; with ``ttl=True`` as :class:`AddressRecord` objects."""
        records = await self._records(hostname, "AAAA", "queryAaaa")
        if ttl:
            return [AddressRecord(r.value, r.ttl) for r in records]
        return [r.value for r in records]

    async def resolve_any(self, hostname: str) -> list[dict[str, Any]]:
        """Every record (QTYPE ANY) as dicts with a ``"type"`` key, as Node's ``resolveAny``."""
        return [_any_entry(r) for r in await self._records(hostname, "ANY", "queryAny")]

    async def resolve_caa(self, hostname: str) -> list[CaaRecord]:
        return [convert(r) for r in await self._records(hostname, "CAA", "queryCaa")]

    async def resolve_cname(self, hostname: str) -> list[str]:
        return [convert(r) for r in await self._records(hostname, "CNAME", "queryCname")]

    async def resolve_mx(self, hostname: str) -> list[MxRecord]:
        return [convert(r) for r in await self._records(hostname, "MX", "queryMx")]

    async def resolve_naptr(self, hostname: str) -> list[NaptrRecord]:
        return [convert(r) for r in await self._records(hostname, "NAPTR", "queryNaptr")]

    async def resolve_ns(self, hostname: str) -> list[str]:
        return [convert(r) for r in await self._records(hostname, "NS", "queryNs")]

    async def resolve_ptr(self, hostname: str) -> list[str]:
        return [convert(r) for r in await self._records(hostname, "PTR", "queryPtr")]

    async def resolve_soa(self, hostname: str) -> SoaRecord:
        records = await self._records(hostname, "SOA", "querySoa")
        result: SoaRecord = convert(records[0])
        return result

    async def resolve_srv(self, hostname: str) -> list[SrvRecord]:
        return [convert(r) for r in await self._records(hostname, "SRV", "querySrv")]

    async def resolve_txt(self, hostname: str) -> list[list[str]]:
        """Each TXT record as the list of its strings (Node's chunks)."""
        return [convert(r) for r in await self._records(hostname, "TXT", "queryTxt")]

    async def reverse(self, ip: str) -> list[str]:
        """The names of ``ip`` from its PTR records (``dns.reverse``)."""
        try:
            name = reverse_name(ip)
        except ValueError:
            raise DnsError("EINVAL", "getHostByAddr", ip, "not an IP address") from None
        return [convert(r) for r in await self._records(name, "PTR", "getHostByAddr")]


def _owned(response: DnsResponse, rtype: str) -> bool:
    canonical = response.canonical_name.lower()
    return any(a.rtype == rtype and a.name.lower() == canonical for a in response.answers)


# --- lookup: getaddrinfo on the stack ---------------------------------------------


async def lookup(
    hostname: str,
    family: int = 0,
    *,
    all: bool = False,
    order: Literal["verbatim", "ipv4first", "ipv6first"] = "verbatim",
    hints: int = 0,
    stack: Stack | None = None,
) -> Any:
    """Resolve as the stack's ``getaddrinfo`` does (``dns.lookup``), not with DNS queries.

    ``family`` is 0, 4 or 6.  Returns a :class:`LookupAddress`, or with
    ``all=True`` the list of them (duplicates removed), ordered as the stack
    gave them (``"verbatim"``, Node's default since 17) or with one family
    first.  Raises :class:`DnsError` with code ``ENOTFOUND`` (or
    ``EAI_AGAIN``) and syscall ``"getaddrinfo"``.
    """
    if family not in (0, 4, 6):
        raise DnsError(
            BADFAMILY, "getaddrinfo", hostname, f"family must be 0, 4 or 6, not {family}"
        )
    if order not in ("verbatim", "ipv4first", "ipv6first"):
        raise ValueError(f"order is 'verbatim', 'ipv4first' or 'ipv6first', got {order!r}")
    socket_family = {0: 0, 4: socket.AF_INET, 6: socket.AF_INET6}[family]
    chosen = stack or current_stack()
    try:
        infos = await chosen.getaddrinfo(hostname, 0, socket_family, socket.SOCK_STREAM, 0, hints)
    except socket.gaierror as exc:
        code = "EAI_AGAIN" if exc.errno == socket.EAI_AGAIN else NOTFOUND
        raise DnsError(code, "getaddrinfo", hostname, str(exc.strerror)) from exc
    except (UnicodeError, ValueError) as exc:
        raise DnsNameError("EBADNAME", "getaddrinfo", hostname, str(exc)) from None
    results: list[LookupAddress] = []
    for info_family, _, _, _, sockaddr in infos:
        entry = LookupAddress(str(sockaddr[0]), 6 if info_family == socket.AF_INET6 else 4)
        if entry not in results:
            results.append(entry)
    if order != "verbatim":
        first = 4 if order == "ipv4first" else 6
        results.sort(key=lambda entry: entry.family != first)
    if not results:
        raise DnsError(NOTFOUND, "getaddrinfo", hostname)
    return results if all else results[0]


async def addresses_by_dns(
    name: str,
    qtypes: Sequence[str],
    query: Callable[[str, str], Awaitable[DnsResponse]],
) -> tuple[list[IPAddress], str]:
    """The addresses of ``name`` and its canonical name: getaddrinfo's DNS half.

    ``query(name, qtype)`` asks for one type (``"A"``, ``"AAAA"``) and returns
    the response, records of the type or none, or raises :class:`DnsError`
    (``ENOTFOUND`` for a name that does not exist).  The types are asked in
    the order given and their addresses merged in that order, each once.  One
    type failing does not spoil another's answer; a ``query`` that must end
    the lookup at once raises the ``socket.gaierror`` to end it with.

    With no address found, raises ``socket.gaierror`` as glibc's stub
    resolver does: ``EAI_NONAME`` when the name does not exist,
    ``EAI_AGAIN`` when a query failed, else ``EAI_NODATA``.
    """
    found: list[IPAddress] = []
    canonical = name
    not_found = failed = False
    for qtype in qtypes:
        try:
            response = await query(name, qtype)
        except DnsError as exc:
            if exc.code == NOTFOUND:
                not_found = True
            elif exc.code != NODATA:
                failed = True
            continue
        canonical = response.canonical_name or canonical
        for text in response.addresses():
            ip = parse_ip(text)
            if ip is not None and ip not in found:
                found.append(ip)
    if not found:
        if not_found:
            raise name_not_known(name)
        if failed:
            raise name_temporarily_unresolvable(name)
        raise no_address_for_name(name)
    return found, canonical.rstrip(".")


def is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
