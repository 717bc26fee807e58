"""LANs that span several gateway processes: membership in Redis, streams relayed.

Behind a load balancer the members of one LAN land on different gateway
processes.  What they must agree on lives in one Redis server (the
``cluster`` extra installs redis-py; a real ``redis-server`` is the peer),
and :class:`RedisLanDirectory` replaces the in-process
:class:`~netshim.gateway._lan.LanDirectory` with the same methods:

* **Names and addresses.**  A member's name and its LAN address are two keys,
  ``netshim:lan:<LAN>:n:<name>`` (``<offset>|<gateway>``) and
  ``netshim:lan:<LAN>:a:<offset>`` (the name), where ``<offset>`` is the
  host number (the address's distance from the LAN's network address, the
  same for its IPv4 and IPv6 address) and ``<gateway>`` is the owning
  gateway's cluster URL.  One Lua script checks the name and takes the next
  free address, so two gateways claiming at once never hand out one name or
  one address twice (Redis runs a script alone).
* **Expiry, not goodbyes.**  Both keys carry a TTL (three refresh periods by
  default) that the owning gateway renews every ``refresh`` seconds for the
  members it still serves.  A gateway that dies or loses its Redis stops
  renewing, and its members' keys disappear within the TTL; nothing has to
  notice the death.  A renewal that finds its key gone re-creates it when it
  is still free (Redis restarted, or the gateway was paused past the TTL)
  and reports the member lost when somebody else took it meanwhile; the
  gateway then takes that member off its LAN.
* **An index for listing.**  ``netshim:lan:<LAN>:m``, a sorted set of
  ``<name>|<offset>|<gateway>`` scored by expiry time (Redis's own clock, so
  gateways' clocks never matter), lists a LAN's members without scanning
  the keyspace.  Expired entries are dropped by whichever script looks.
* **Listeners.**  ``netshim:lan:<LAN>:l:<offset>``, a set of ``tcp:<port>``
  and ``udp:<port>``, expires with its member; changes are published as
  news.  Before it relays, a gateway goes by what news told it of the
  destination (no round trip); when that says nothing of the port, it reads
  the owner and the set in one round trip, so a connection to a port nobody
  listens on is refused without asking the owner.
* **News.**  Joins and departures are published on ``netshim:lan:news`` as
  they happen; every ``refresh`` seconds each gateway also reads the index
  of each LAN and compares it with what it believes, which is how the
  departure of a dead gateway's members (which nobody announces) is seen.
  Both paths feed one view per LAN, so a member is reported joined or left
  once; a reading of the index never undoes news that arrived after it was
  asked for.

Relays.  A member's connection to an address that another gateway's member
holds goes to that gateway over Wisp (:class:`~netshim.WispStack`, one per
peer gateway, at the peer's cluster URL).  The relay session joins the
reserved LAN :data:`RELAY_LAN` with the cluster secret as its token (compared
in constant time; a LAN name never starts with ``-``, so no real LAN can be
asked for by mistake), and each stream's ``CONNECT`` names the LAN, the
source and the destination as ``<source>.<destination>.<lan>``, addresses
written as DNS labels (``10-77-0-5``; IPv6 in full with ``-`` for ``:``).
The receiving gateway connects to its member's listener from a stand-in
:class:`~netshim.stacks.virtual.VirtualHost` that holds the source's address
on its LAN's virtual network, so the listener sees the true source address,
and splices that connection as two members' are (:mod:`._lan`).
A stand-in goes when its member leaves or a local member gets its address.
A port forward to another gateway's member is relayed the same way, from
the gateways' own address on the LAN (``.1``, the same on all of them).
UDP is relayed for a member's unbound (connected) UDP socket to another
gateway's member's UDP listener: a Wisp UDP stream to the same relay host,
answered from a stand-in's UDP socket, so the replies come back the same
way.  A member's *bound* UDP socket (a LAN listener) reaches only the
members of its own gateway.

Only one Redis server (or a primary with replicas) is supported: the scripts
touch keys they do not declare, which Redis Cluster would refuse.  redis-py's
client is asyncio's, so a cluster gateway runs on asyncio or uvloop.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import ipaddress
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc

from .._errors import os_error
from ..protocols import wisp
from ._lan import (
    GATEWAY_NAME,
    Lan,
    LanDirectory,
    LanHub,
    LanMember,
    LanSpec,
    MemberRecord,
    NameInUseError,
    _check_label,
    _tell,
    ipv6_subnet_for,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

    from ..stack import TcpStream, UdpSocket
    from ..stacks.virtual import VirtualHost
    from ..stacks.wisp import WispStack

__all__ = [
    "DEFAULT_REFRESH",
    "RELAY_LAN",
    "ClusterConfig",
    "ClusterRecord",
    "ClusterUnavailableError",
    "GatewayCluster",
    "MemberNews",
    "RedisLanDirectory",
    "import_redis",
    "parse_relay_host",
    "relay_host",
]

logger = logging.getLogger("netshim.gateway.cluster")

#: Seconds between two renewals of a gateway's members in Redis.  The TTL is
#: three of these by default: one renewal may be late or lost without its
#: members vanishing, and a dead gateway's members are gone within 15 s.
DEFAULT_REFRESH = 5.0
#: Renewals one key may miss before it expires, by default.
TTL_PERIODS = 3
#: Key prefix and news channel.
DEFAULT_PREFIX = "netshim:lan:"
#: The LAN a relay session joins (see the module docstring).
RELAY_LAN: Final = "-relay"
#: What a relay session is told it joined as: no address (nor the wildcard a
#: client would take for "listen on my LAN address").
RELAY_ADDRESS: Final = ""
RELAY_NAME: Final = "relay.cluster"
# Host numbers below this are never handed out: the network's own and the
# gateway's (.1), as the in-process directory does.
FIRST_HOST = 2
# Addresses one claim looks at before giving up.  The scan starts after the
# last address handed out, so on a LAN that is not nearly full it finds one at
# once; a large LAN is not walked end to end inside one script (Redis runs
# nothing else meanwhile).
MAX_SCAN = 4096
# Shortest cluster secret accepted: it is the only thing between the
# internet and every LAN of the cluster.
MIN_SECRET_LENGTH = 16
# How long a relay waits for the peer gateway's WebSocket and handshake.
RELAY_OPEN_TIMEOUT = 5.0
# The least a Redis call is given before it counts as a failure (the TTL, if
# longer): a busy machine is not a dead Redis.
MIN_REDIS_WAIT = 5.0
# How long a stopping gateway gives Redis to take its goodbyes (the members it
# still had, its connections' close).
CLOSE_TIMEOUT = 5.0


_CLAIM = """
local p, wanted, gw = ARGV[1], ARGV[2], ARGV[3]
local ttl, lo, count = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local scan, base, channel, lan = tonumber(ARGV[7]), ARGV[8], ARGV[9], ARGV[10]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', p .. 'm', '-inf', now)
if wanted ~= '' and redis.call('EXISTS', p .. 'n:' .. wanted) == 1 then
  return {0}
end
local start = tonumber(redis.call('GET', p .. 'next') or lo)
if start < lo or start >= lo + count then start = lo end
for i = 0, math.min(count, scan) - 1 do
  local off = lo + (start - lo + i) % count
  local name = wanted
  if name == '' then name = base .. off end
  if redis.call('EXISTS', p .. 'a:' .. off) == 0
      and redis.call('EXISTS', p .. 'n:' .. name) == 0 then
    redis.call('SET', p .. 'a:' .. off, name, 'PX', ttl)
    redis.call('SET', p .. 'n:' .. name, off .. '|' .. gw, 'PX', ttl)
    redis.call('DEL', p .. 'l:' .. off)
    redis.call('ZADD', p .. 'm', now + ttl, name .. '|' .. off .. '|' .. gw)
    redis.call('SET', p .. 'next', off + 1)
    redis.call('PUBLISH', channel, cjson.encode({'joined', lan, name, off, gw}))
    return {1, name, off}
  end
end
return {2}
"""

# ARGV: gateway, ttl, then (prefix, name, offset) per member.  Returns the
# positions (0-based) of members somebody else owns now, and of those whose
# keys had expired and were made again (their listener sets went with them).
_RENEW = """
local gw, ttl = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lost, made = {}, {}
for i = 3, #ARGV, 3 do
  local p, name, off = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local mine = off .. '|' .. gw
  local held = redis.call('GET', p .. 'n:' .. name)
  local addr = redis.call('GET', p .. 'a:' .. off)
  if (held == mine or not held) and (addr == name or not addr) then
    if not held or not addr then table.insert(made, (i - 3) / 3) end
    redis.call('SET', p .. 'n:' .. name, mine, 'PX', ttl)
    redis.call('SET', p .. 'a:' .. off, name, 'PX', ttl)
    redis.call('PEXPIRE', p .. 'l:' .. off, ttl)
    redis.call('ZADD', p .. 'm', now + ttl, name .. '|' .. mine)
  else
    table.insert(lost, (i - 3) / 3)
  end
end
return {lost, made}
"""

_RELEASE = """
local p, name, off, gw, channel, lan = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local mine = off .. '|' .. gw
redis.call('ZREM', p .. 'm', name .. '|' .. mine)
if redis.call('GET', p .. 'n:' .. name) ~= mine then return 0 end
redis.call('DEL', p .. 'n:' .. name)
if redis.call('GET', p .. 'a:' .. off) == name then
  redis.call('DEL', p .. 'a:' .. off, p .. 'l:' .. off)
end
redis.call('PUBLISH', channel, cjson.encode({'left', lan, name, tonumber(off), gw}))
return 1
"""

_MEMBERS = """
local p = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', p .. 'm', '-inf', now)
return redis.call('ZRANGE', p .. 'm', 0, -1)
"""

# ARGV: prefix, name, offset, gateway, 'add' or 'remove', the port entry.
# Only the member's owner changes its listeners, and only while it owns it.
_LISTENER = """
local p, name, off, gw, op, entry = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local channel, lan = ARGV[7], ARGV[8]
if redis.call('GET', p .. 'n:' .. name) ~= off .. '|' .. gw then return 0 end
if op == 'add' then
  redis.call('SADD', p .. 'l:' .. off, entry)
  redis.call('PEXPIRE', p .. 'l:' .. off, redis.call('PTTL', p .. 'n:' .. name))
else
  redis.call('SREM', p .. 'l:' .. off, entry)
end
redis.call('PUBLISH', channel, cjson.encode({op, lan, name, tonumber(off), gw, entry}))
return 1
"""

# ARGV: prefix, offset, port entry.  The member at that address (name and
# ``offset|gateway``) and whether it listens there, in one round trip.
_ROUTE = """
local p, off, entry = ARGV[1], ARGV[2], ARGV[3]
local name = redis.call('GET', p .. 'a:' .. off)
if not name then return {} end
local held = redis.call('GET', p .. 'n:' .. name)
if not held then return {} end
return {name, held, redis.call('SISMEMBER', p .. 'l:' .. off, entry)}
"""


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def import_redis() -> Any:
    """``redis.asyncio``, or ``SystemExit`` with the one line that says how to get it."""
    try:
        import redis.asyncio
    except ImportError:
        raise SystemExit(
            "a gateway cluster needs redis-py: pip install 'netshim[cluster]'"
        ) from None
    return redis.asyncio


@dataclass(frozen=True)
class ClusterConfig:
    """How a gateway joins a cluster (``netshim gateway --cluster-redis ...``).

    ``redis`` is the ``redis://`` URL every gateway of the cluster shares;
    ``url`` is how the other gateways reach this one's WebSocket (its Wisp
    endpoint, ``ws://`` or ``wss://``); ``secret`` authenticates the relays
    between gateways (the same on all of them, at least 16 characters).
    ``refresh`` and ``ttl`` are as in :class:`RedisLanDirectory`.
    """

    # Not in the repr: a Redis URL may carry a password.
    redis: str = field(repr=False)
    url: str
    secret: str = field(repr=False)
    refresh: float = DEFAULT_REFRESH
    ttl: float | None = None
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.redis.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"the cluster's Redis is a redis:// URL, got {self.redis!r}")
        if not self.url.startswith(("ws://", "wss://", "wisp://", "wisps://")):
            raise ValueError(f"a gateway's cluster URL is a ws:// or wss:// URL, got {self.url!r}")
        if "|" in self.url or any(c.isspace() for c in self.url):
            raise ValueError(f"a cluster URL has no '|' or spaces: {self.url!r}")
        if len(self.secret) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"the cluster secret must have at least {MIN_SECRET_LENGTH} characters"
            )
        if not self.refresh > 0:
            raise ValueError(f"refresh must be a positive number of seconds, got {self.refresh!r}")
        if self.ttl is not None and not self.ttl > self.refresh:
            raise ValueError(f"ttl ({self.ttl!r}) must be longer than refresh ({self.refresh!r})")


class ClusterUnavailableError(OSError):
    """The cluster's Redis could not be reached (or did not answer in time)."""


@dataclass(frozen=True, slots=True)
class ClusterRecord(MemberRecord):
    """A member as the cluster knows it: its record and the gateway that serves it."""

    gateway: str = ""


@dataclass(frozen=True, slots=True)
class MemberNews:
    """A member of a LAN joined (``joined=True``) or left, on another gateway."""

    joined: bool
    member: ClusterRecord


@dataclass(frozen=True, slots=True)
class _Lan:
    network: ipaddress.IPv4Network
    network6: ipaddress.IPv6Network
    first: int
    count: int


class RedisLanDirectory(LanDirectory):
    """Members and listeners of LANs shared by gateways through one Redis server.

    The same methods as the in-process directory (:meth:`claim`,
    :meth:`release`, :meth:`members`, :meth:`route`), plus the listener
    registry.  ``redis`` is a ``redis://`` URL (or a ``redis.asyncio.Redis``
    client, which the directory then does not close); ``gateway`` is this
    gateway's cluster URL; ``specs`` are the LANs, the same on every gateway.
    ``refresh`` is the period of the renewals and of the index readings,
    ``ttl`` how long a member outlives the last renewal of its gateway
    (three periods by default).

    ``on_news`` is called with each :class:`MemberNews` about members of
    *other* gateways; ``on_lost`` with each member of this gateway whose name
    or address another gateway holds now (after this gateway could not renew
    it in time); ``on_claimed`` with each address (IPv4 and IPv6) this
    gateway just claimed, before :meth:`claim` returns.

    Use it as an async context manager, which runs the renewals and the news
    in the background.  Claims and lookups that need Redis raise
    :class:`ClusterUnavailableError` (an ``OSError``) when it fails or does
    not answer in time; :meth:`release` only logs it.
    """

    def __init__(
        self,
        redis: str | Redis,
        gateway: str,
        specs: Iterable[LanSpec],
        *,
        refresh: float = DEFAULT_REFRESH,
        ttl: float | None = None,
        prefix: str = DEFAULT_PREFIX,
        on_news: Callable[[MemberNews], None] | None = None,
        on_lost: Callable[[str, str], None] | None = None,
        on_claimed: Callable[[str, str], None] | None = None,
    ) -> None:
        if not refresh > 0:
            raise ValueError(f"refresh must be a positive number of seconds, got {refresh!r}")
        ttl = refresh * TTL_PERIODS if ttl is None else ttl
        if not ttl > refresh:
            raise ValueError(f"ttl ({ttl!r}) must be longer than the refresh period ({refresh!r})")
        if "|" in gateway or not gateway or any(c.isspace() for c in gateway):
            raise ValueError(f"a cluster URL has no '|' or spaces: {gateway!r}")
        specs = list(specs)
        super().__init__(specs)
        self._client: Redis
        if isinstance(redis, str):
            self._client = import_redis().Redis.from_url(redis)
            self._owns_client = True
        else:
            self._client = redis
            self._owns_client = False
        self.gateway = gateway
        self._lans: dict[str, _Lan] = {}
        for spec in specs:
            network = spec.network
            # Host numbers 2 .. last-but-one: not the network, the gateway or broadcast.
            self._lans[spec.name] = _Lan(
                network, ipv6_subnet_for(spec.name), FIRST_HOST, network.num_addresses - 3
            )
        self.refresh = refresh
        self.ttl = ttl
        self.prefix = prefix
        self.channel = prefix + "news"
        self.on_news = on_news
        self.on_lost = on_lost
        self.on_claimed = on_claimed
        self._claim = self._client.register_script(_CLAIM)
        self._renew = self._client.register_script(_RENEW)
        self._release = self._client.register_script(_RELEASE)
        self._index = self._client.register_script(_MEMBERS)
        self._listener = self._client.register_script(_LISTENER)
        self._route = self._client.register_script(_ROUTE)
        # This gateway's members, by (LAN, name), and their listeners.
        self._held: dict[tuple[str, str], ClusterRecord] = {}
        self._own_listeners: dict[tuple[str, str], set[str]] = {}
        # What this gateway believes of other gateways' members, per LAN, and
        # when (in news counts) each name was last changed by news.
        self._view: dict[str, dict[str, ClusterRecord]] = {lan: {} for lan in self._lans}
        # The same by address (IPv4 and IPv6), and the listeners news told of
        # (``tcp:PORT``), by (LAN, name): what a connect can go by without
        # asking Redis (see :meth:`cached`).
        self._by_address: dict[tuple[str, str], ClusterRecord] = {}
        self._listening: dict[tuple[str, str], set[str]] = {}
        self._news_count = 0
        self._heard: dict[tuple[str, str], int] = {}
        self._group: anyio.abc.TaskGroup | None = None
        #: Renewals done; :meth:`wait_renewals` waits for more.
        self.renewals = 0
        # Made in __aenter__: a gateway builds its directory before its event loop runs.
        self._sync_lock: anyio.Lock
        self._renew_lock: anyio.Lock
        self._subscribed: anyio.Event
        self._stopped: anyio.CancelScope
        self._renewed: anyio.Event

    def __repr__(self) -> str:
        return f"RedisLanDirectory(gateway={self.gateway!r}, lans={sorted(self._lans)!r})"

    # -- lifetime

    async def __aenter__(self) -> RedisLanDirectory:
        self._sync_lock = anyio.Lock()
        self._renew_lock = anyio.Lock()
        self._subscribed = anyio.Event()
        self._stopped = anyio.CancelScope()
        self._renewed = anyio.Event()
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group = group
        group.start_soon(self._background)
        try:
            # Joins published from now on are heard: an index reading taken
            # after this point and the news after it leave nothing out.
            with anyio.move_on_after(self.ttl):
                await self._subscribed.wait()
            await self.sync()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        group, self._group = self._group, None
        try:
            if group is not None:
                group.cancel_scope.cancel()
                # Raises the cancellation of a caller that is being cancelled.
                await group.__aexit__(None, None, None)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
                for held in list(self._held.values()):
                    with contextlib.suppress(Exception):
                        await self.release(held.lan, held.name)
                if self._owns_client:
                    await self._client.aclose()

    async def _background(self) -> None:
        with self._stopped:
            async with anyio.create_task_group() as group:
                group.start_soon(self._renewals)
                group.start_soon(self._listen_news)

    async def stop_renewing(self) -> None:
        """Stop renewing (and forget) this gateway's members, and stop hearing news.

        As if the gateway had died: the members' keys stay in Redis until
        they expire.  A renewal under way finishes first (cut off, it could
        still reach Redis after this returned).
        """
        async with self._renew_lock:
            self._held.clear()
            self._own_listeners.clear()
            self._stopped.cancel()

    # -- addresses

    def _record(self, lan: str, name: str, offset: int, gateway: str) -> ClusterRecord:
        where = self._lans[lan]
        return ClusterRecord(
            name,
            lan,
            str(where.network.network_address + offset),
            str(where.network6.network_address + offset),
            gateway,
        )

    def _host_number(self, record: MemberRecord) -> int:
        network = self._lans[record.lan].network
        return int(ipaddress.IPv4Address(record.address)) - int(network.network_address)

    def offset(self, lan: str, address: IPAddress) -> int | None:
        """``address``'s host number on ``lan``, if it is one the directory hands out."""
        where = self._lans[lan]
        network = where.network if address.version == 4 else where.network6
        if address not in network:
            return None
        offset = int(address) - int(network.network_address)
        return offset if where.first <= offset < where.first + where.count else None

    def _key(self, lan: str) -> str:
        return f"{self.prefix}{lan}:"

    @contextlib.contextmanager
    def _redis(self, action: str) -> Iterator[None]:
        """Redis's failures (or silence past the TTL) as :class:`ClusterUnavailableError`."""
        errors = import_redis().RedisError
        try:
            with anyio.fail_after(max(self.ttl, MIN_REDIS_WAIT)):
                yield
        except (errors, TimeoutError) as exc:
            raise ClusterUnavailableError(
                errno.EAGAIN, f"the cluster's Redis failed ({action}): {exc or type(exc).__name__}"
            ) from exc

    # -- membership

    async def claim(self, lan: str, wanted: str) -> ClusterRecord:
        """Take ``wanted`` (empty: ``member-N``) and the next free address on ``lan``.

        Raises ``KeyError`` for an unknown LAN, ``ValueError`` for a name that
        is not a DNS label, :class:`~netshim.gateway._lan.NameInUseError` for
        a name taken on any gateway, ``OSError(EADDRNOTAVAIL)`` when the LAN
        is full.  The member stays until :meth:`release` or until this
        gateway stops renewing it.
        """
        where = self._lans[lan]
        if wanted:
            wanted = _check_label(wanted, "member name")
            if wanted == GATEWAY_NAME:
                raise NameInUseError(f"{wanted}.{lan} is taken")
        with self._redis("claim"):
            answer = await self._claim(
                args=[
                    self._key(lan),
                    wanted,
                    self.gateway,
                    _ms(self.ttl),
                    where.first,
                    where.count,
                    MAX_SCAN,
                    "member-",
                    self.channel,
                    lan,
                ]
            )
        status = int(answer[0])
        if status == 0:
            raise NameInUseError(f"{wanted}.{lan} is taken")
        if status == 2:
            raise os_error(errno.EADDRNOTAVAIL, f"LAN {lan} ({where.network}) has no free address")
        record = self._record(lan, _text(answer[1]), int(answer[2]), self.gateway)
        self._held[(lan, record.name)] = record
        if self.on_claimed is not None:
            self.on_claimed(lan, record.address)
            self.on_claimed(lan, record.address6)
        return record

    async def release(self, lan: str, name: str) -> None:
        """Give ``name`` and its address back (only if this gateway still holds them).

        Never raises for Redis: a member it could not release expires with
        its TTL, since nobody renews it any more.
        """
        held = self._held.pop((lan, name), None)
        self._own_listeners.pop((lan, name), None)
        if held is None:
            return
        offset = self._host_number(held)
        try:
            with self._redis("release"):
                await self._release(
                    args=[self._key(lan), name, offset, self.gateway, self.channel, lan]
                )
        except ClusterUnavailableError as exc:
            logger.warning("cluster-redis-error action=release lan=%s member=%s %s", lan, name, exc)

    async def members(self, lan: str) -> list[MemberRecord]:
        """The members of ``lan`` as this gateway knows them: its own and the others'.

        Answered from memory, with no wait: a member that joins hears of
        every other member either here or in later news, never in both and
        never in neither.
        """
        own = [record for (where, _), record in self._held.items() if where == lan]
        return [*own, *self._view.get(lan, {}).values()]

    async def read_members(self, lan: str) -> list[ClusterRecord]:
        """Every member of ``lan`` whose keys have not expired, as Redis has them now."""
        with self._redis("members"):
            entries = await self._index(args=[self._key(lan)])
        found = []
        for entry in entries:
            name, offset, gateway = _text(entry).split("|", 2)
            found.append(self._record(lan, name, int(offset), gateway))
        return found

    async def route(self, lan: str, host: str) -> ClusterRecord | None:
        """The member ``host`` (``name.lan`` or an address) names on ``lan``, or ``None``.

        A member this gateway serves or has heard of is answered from memory;
        any other is looked up in Redis (one that joined a moment ago, whose
        news is still on its way).
        """
        if lan not in self._lans:
            return None
        text = host.lower().rstrip(".")
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            suffix = "." + lan
            if not text.endswith(suffix):
                return None
            name = text[: -len(suffix)]
            if not name or "." in name:
                return None
            known = self._held.get((lan, name)) or self._view[lan].get(name)
            if known is not None:
                return known
            with self._redis("route"):
                value = await self._client.get(f"{self._key(lan)}n:{name}")
            if value is None:
                return None
            offset, gateway = _text(value).split("|", 1)
            return self._record(lan, name, int(offset), gateway)
        found = self.cached(lan, str(address))
        if found is None:
            found, _ = await self.route_port(lan, address, "tcp", 0)
        return found

    async def route_port(
        self, lan: str, address: IPAddress, transport: str, port: int
    ) -> tuple[ClusterRecord | None, bool]:
        """The member at ``address`` and whether it listens on ``transport`` ``port``."""
        offset = self.offset(lan, address)
        if offset is None:
            return None, False
        with self._redis("route"):
            answer = await self._route(args=[self._key(lan), offset, f"{transport}:{port}"])
        if not answer:
            return None, False
        held_at, gateway = _text(answer[1]).split("|", 1)
        if int(held_at) != offset:
            return None, False
        return self._record(lan, _text(answer[0]), offset, gateway), bool(int(answer[2]))

    # -- listeners

    async def add_listener(self, lan: str, name: str, transport: str, port: int) -> None:
        """Record that this gateway's member ``name`` listens on ``transport`` ``port``."""
        await self._change_listener(lan, name, "add", transport, port)

    async def remove_listener(self, lan: str, name: str, transport: str, port: int) -> None:
        await self._change_listener(lan, name, "remove", transport, port)

    async def _change_listener(
        self, lan: str, name: str, op: str, transport: str, port: int
    ) -> None:
        held = self._held.get((lan, name))
        if held is None:
            return
        own = self._own_listeners.setdefault((lan, name), set())
        if op == "add":
            own.add(f"{transport}:{port}")
        else:
            own.discard(f"{transport}:{port}")
        offset = self._host_number(held)
        args: list[str | int] = [
            self._key(lan),
            name,
            offset,
            self.gateway,
            op,
            f"{transport}:{port}",
            self.channel,
            lan,
        ]
        # The listener works here whatever Redis says; without the record,
        # other gateways' members are refused it until Redis is back.
        try:
            with anyio.fail_after(max(self.ttl, MIN_REDIS_WAIT)):
                await self._listener(args=args)
        except Exception as exc:
            logger.warning(
                "cluster-redis-error action=listener-%s lan=%s member=%s port=%s:%d error=%r",
                op,
                lan,
                name,
                transport,
                port,
                exc,
            )

    async def is_listening(self, lan: str, address: IPAddress, transport: str, port: int) -> bool:
        """Whether the member at ``address`` listens on ``port`` (as its gateway recorded)."""
        _, listening = await self.route_port(lan, address, transport, port)
        return listening

    # -- renewals and news

    async def _renewals(self) -> None:
        while True:
            await anyio.sleep(self.refresh)
            try:
                await self.renew()
                await self.sync()
            except Exception as exc:
                # Redis unreachable: the members live on until their TTL; the
                # next period tries again.
                logger.warning("cluster-redis-error action=renew error=%r", exc)

    async def renew(self) -> None:
        """Renew this gateway's members now; report those another gateway took."""
        async with self._renew_lock:
            await self._renew_held()
        self.renewals += 1
        self._renewed.set()
        self._renewed = anyio.Event()

    async def _renew_held(self) -> None:
        held = list(self._held.values())
        if held:
            args: list[str | int] = [self.gateway, _ms(self.ttl)]
            for record in held:
                args += [self._key(record.lan), record.name, self._host_number(record)]
            with self._redis("renew"):
                lost, made = await self._renew(args=args)
            for index in made:
                # Back after its keys expired: its listeners must be told again.
                record = held[int(index)]
                for entry in list(self._own_listeners.get((record.lan, record.name), ())):
                    transport, _, port = entry.partition(":")
                    await self._change_listener(
                        record.lan, record.name, "add", transport, int(port)
                    )
            for index in lost:
                record = held[int(index)]
                if self._held.get((record.lan, record.name)) is record:
                    del self._held[(record.lan, record.name)]
                    self._own_listeners.pop((record.lan, record.name), None)
                    logger.warning(
                        "cluster-member-lost lan=%s member=%s address=%s",
                        record.lan,
                        record.name,
                        record.address,
                    )
                    if self.on_lost is not None:
                        self.on_lost(record.lan, record.name)

    async def wait_renewals(self, count: int) -> None:
        """Wait until ``count`` more renewals are done (with or without members)."""
        target = self.renewals + count
        while self.renewals < target:
            await self._renewed.wait()

    async def sync(self) -> None:
        """Read every LAN's index and report the differences from the view as news."""
        async with self._sync_lock:
            started = self._news_count
            for lan in self._lans:
                asked_at = self._news_count
                members = await self.read_members(lan)
                seen = {m.name: m for m in members if m.gateway != self.gateway}
                view = self._view[lan]
                for name, member in list(view.items()):
                    if seen.get(name) != member and not self._heard_after(lan, name, asked_at):
                        self._forget(member)
                        self._tell(MemberNews(False, member))
                for name, member in seen.items():
                    if name not in view and not self._heard_after(lan, name, asked_at):
                        self._learn(member)
                        self._tell(MemberNews(True, member))
            # Later readings are asked for after this one: older news cannot matter to them.
            self._heard = {k: v for k, v in self._heard.items() if v > started}

    def _heard_after(self, lan: str, name: str, count: int) -> bool:
        """Whether news of ``name`` came after the ``count``-th news (and so is newer)."""
        return self._heard.get((lan, name), 0) > count

    def _tell(self, news: MemberNews) -> None:
        if self.on_news is None:
            return
        try:
            self.on_news(news)
        except Exception:
            logger.exception("cluster-news-callback-failed news=%r", news)

    def _learn(self, member: ClusterRecord) -> None:
        self._view[member.lan][member.name] = member
        for address in (member.address, member.address6):
            self._by_address[(member.lan, address)] = member

    def _forget(self, member: ClusterRecord) -> None:
        if self._view[member.lan].get(member.name) == member:
            del self._view[member.lan][member.name]
        for address in (member.address, member.address6):
            if self._by_address.get((member.lan, address)) == member:
                del self._by_address[(member.lan, address)]
        self._listening.pop((member.lan, member.name), None)

    def _hear(self, payload: bytes | str) -> None:
        try:
            kind, lan, name, offset, gateway, *rest = json.loads(payload)
            member = self._record(lan, name, int(offset), gateway)
        except (ValueError, TypeError, KeyError):
            logger.warning("cluster-news-malformed payload=%r", payload[:200])
            return
        if gateway == self.gateway:
            return
        view = self._view[lan]
        if kind in ("add", "remove") and rest and view.get(name) == member:
            ports = self._listening.setdefault((lan, name), set())
            if kind == "add":
                ports.add(str(rest[0]))
            else:
                ports.discard(str(rest[0]))
            return
        self._news_count += 1
        self._heard[(lan, name)] = self._news_count
        if kind == "joined":
            old = view.get(name)
            if old == member:
                return
            if old is not None:
                self._forget(old)
                self._tell(MemberNews(False, old))
            self._learn(member)
            self._tell(MemberNews(True, member))
        elif kind == "left" and view.get(name) == member:
            self._forget(member)
            self._tell(MemberNews(False, member))

    def cached(self, lan: str, address: str) -> ClusterRecord | None:
        """The member at ``address`` as this gateway knows it now (its own or heard of).

        No Redis round trip: news keeps it current within the time news
        takes.  :meth:`route_port` is the authority.
        """
        found = self._by_address.get((lan, address))
        if found is not None:
            return found
        return next(
            (
                r
                for (where, _), r in self._held.items()
                if where == lan and address in (r.address, r.address6)
            ),
            None,
        )

    def listens(self, member: ClusterRecord, transport: str, port: int) -> bool:
        """Whether news (or an earlier :meth:`route_port`) said ``member`` listens there."""
        return f"{transport}:{port}" in self._listening.get((member.lan, member.name), ())

    def note_listening(self, member: ClusterRecord, transport: str, port: int) -> None:
        """Remember what :meth:`route_port` found, for the next connects."""
        if self._view.get(member.lan, {}).get(member.name) == member:
            self._listening.setdefault((member.lan, member.name), set()).add(f"{transport}:{port}")

    async def _listen_news(self) -> None:
        while True:
            pubsub: PubSub = self._client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self._subscribed.set()
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self.refresh
                    )
                    if message is not None and message.get("type") == "message":
                        self._hear(message["data"])
            except Exception as exc:
                logger.warning("cluster-redis-error action=news error=%r", exc)
                await anyio.sleep(self.refresh)
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
                    await pubsub.aclose()

    def known(self, lan: str) -> list[ClusterRecord]:
        """Other gateways' members of ``lan`` as this gateway knows them now."""
        return list(self._view.get(lan, {}).values())


# -- relays


def _label(address: IPAddress) -> str:
    if address.version == 4:
        return str(address).replace(".", "-")
    return address.exploded.replace(":", "-")


def _from_label(label: str) -> IPAddress:
    dashes = label.count("-")
    if dashes == 3:
        return ipaddress.IPv4Address(label.replace("-", "."))
    if dashes == 7:
        return ipaddress.IPv6Address(label.replace("-", ":"))
    raise ValueError(f"not an address label: {label!r}")


def relay_host(lan: str, source: str, destination: str) -> str:
    """The host a relay's ``CONNECT`` names: ``<source>.<destination>.<lan>``."""
    return ".".join(
        (_label(ipaddress.ip_address(source)), _label(ipaddress.ip_address(destination)), lan)
    )


def parse_relay_host(host: str) -> tuple[str, IPAddress, IPAddress]:
    """``(lan, source, destination)`` from :func:`relay_host`'s form; ``ValueError`` otherwise."""
    parts = host.lower().split(".")
    if len(parts) != 3:
        raise ValueError(f"not a relay destination: {host!r}")
    source, destination = _from_label(parts[0]), _from_label(parts[1])
    if source.version != destination.version:
        raise ValueError(f"a relay between address families: {host!r}")
    return parts[2], source, destination


class GatewayCluster:
    """This gateway's part of a cluster: the shared directory, news, relays both ways.

    Made from a :class:`ClusterConfig`; :meth:`directory_for` gives the
    :class:`~netshim.gateway._lan.LanHub` its directory and :meth:`attach`
    lets the cluster tell the hub's members of other gateways' members.  Run
    it as an async context manager around the gateway's service.
    """

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.url = config.url
        self.directory: RedisLanDirectory | None = None
        self.hub: LanHub | None = None
        self._peers: dict[str, WispStack] = {}
        # Stand-ins for other gateways' members, by (LAN, address).
        self._standins: dict[tuple[str, str], VirtualHost] = {}
        self._group: anyio.abc.TaskGroup | None = None
        self._exit = contextlib.AsyncExitStack()

    def __repr__(self) -> str:
        return f"GatewayCluster(url={self.url!r})"

    def directory_for(self, specs: Iterable[LanSpec]) -> RedisLanDirectory:
        """The shared directory for the LANs ``specs`` (made once)."""
        if self.directory is None:
            config = self.config
            self.directory = RedisLanDirectory(
                config.redis,
                config.url,
                specs,
                refresh=config.refresh,
                ttl=config.ttl,
                prefix=config.prefix,
                on_news=self._on_news,
                on_lost=self._on_lost,
                on_claimed=self._drop_standin,
            )
        return self.directory

    def attach(self, hub: LanHub) -> None:
        """Serve ``hub``'s members: news of other gateways' members, relays to them."""
        self.hub = hub
        hub.remote = self.connect_from

    async def __aenter__(self) -> GatewayCluster:
        if self.directory is None:
            raise RuntimeError("a cluster gateway needs LANs (directory_for was never called)")
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.directory)
            self._group = await stack.enter_async_context(anyio.create_task_group())
            self._exit = stack.pop_all()
        logger.info("cluster-joined url=%s", self.url)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with anyio.CancelScope(shield=True):
            peers, self._peers = list(self._peers.values()), {}
            for stack in peers:
                with contextlib.suppress(Exception), anyio.move_on_after(1):
                    await stack.aclose()
        if self._group is not None:
            self._group.cancel_scope.cancel()
            self._group = None
        await self._exit.aclose()

    # -- news for this gateway's members

    def _on_news(self, news: MemberNews) -> None:
        record = news.member
        if not news.joined:
            self._drop_standin(record.lan, record.address)
            self._drop_standin(record.lan, record.address6)
        lan = None if self.hub is None else self.hub.lans.get(record.lan)
        if lan is None:
            return
        change = (
            wisp.MembershipChange.MEMBER_JOINED
            if news.joined
            else wisp.MembershipChange.MEMBER_LEFT
        )
        _tell(lan.members.values(), wisp.Membership(change, record.address, record.dns_name))

    def _on_lost(self, lan: str, name: str) -> None:
        where = None if self.hub is None else self.hub.lans.get(lan)
        member = None if where is None else where.members.get(name)
        if member is None or self._group is None or self.hub is None:
            return
        self._group.start_soon(self._take_off, member)

    async def _take_off(self, member: LanMember) -> None:
        """Take a member this gateway lost off its LAN; the name's new holder stays known."""
        assert self.hub is not None
        assert self.directory is not None
        await self.hub.leave(member)
        # The others heard "left" for the name; the member that holds it now
        # (heard of before this) is still there.
        holder = next(
            (m for m in self.directory.known(member.lan.name) if m.name == member.name), None
        )
        if holder is not None:
            news = wisp.Membership(
                wisp.MembershipChange.MEMBER_JOINED, holder.address, holder.dns_name
            )
            _tell(member.lan.members.values(), news)

    # -- relays out: this gateway's member to another gateway's

    async def connect(self, member: LanMember, ip: str, port: int) -> TcpStream | None:
        """A relayed TCP stream from ``member`` to ``ip``:``port`` if another gateway holds ``ip``.

        ``None`` when the address is this gateway's business (one of its
        hosts, or nobody's).  Raises ``ConnectionRefusedError`` when the
        member there does not listen on ``port`` or the peer gateway cannot
        be reached, as the peer's refusal otherwise.
        """
        source = member.record.address6 if ":" in ip else member.address
        return await self.connect_from(member.lan, source, ip, port)

    async def connect_from(self, lan: Lan, source: str, ip: str, port: int) -> TcpStream | None:
        """As :meth:`connect`, from ``source`` on ``lan`` (a member's address or the gateway's)."""
        record = await self._relay_to(lan, ip, "tcp", port)
        if record is None:
            return None
        stack = self._peer(record.gateway)
        try:
            return await stack.connect_tcp(relay_host(lan.name, source, ip), port)
        except PermissionError as exc:
            raise self._refused_by_peer(record, ip, port, exc) from None

    async def open_udp(self, member: LanMember, ip: str, port: int) -> UdpSocket | None:
        """A relayed UDP socket from ``member`` to ``ip``:``port``, as :meth:`connect` for TCP.

        Only to a port the member there has a UDP listener on; the replies
        its listener sends come back through the same relay.
        """
        record = await self._relay_to(member.lan, ip, "udp", port)
        if record is None:
            return None
        source = member.record.address6 if ":" in ip else member.address
        stack = self._peer(record.gateway)
        try:
            return await stack.open_udp(remote=(relay_host(member.lan.name, source, ip), port))
        except PermissionError as exc:
            raise self._refused_by_peer(record, ip, port, exc) from None

    async def _relay_to(self, lan: Lan, ip: str, transport: str, port: int) -> ClusterRecord | None:
        """The other gateway's member to relay to at ``ip``, or ``None`` if it is ours to reach."""
        directory = self.directory
        address = ipaddress.ip_address(ip)
        owner = lan.network.owner_of(address)
        if directory is None or (owner is not None and not self._is_standin(lan.name, owner)):
            return None
        # What news told is enough to relay (the peer refuses if it is out
        # of date); anything else is asked of Redis, which has the last word.
        record = directory.cached(lan.name, str(address))
        if record is not None and record.gateway == self.url:
            return None
        if record is None or not directory.listens(record, transport, port):
            record, listening = await directory.route_port(lan.name, address, transport, port)
            if record is None or record.gateway == self.url:
                return None
            if not listening:
                raise os_error(errno.ECONNREFUSED, f"{ip}:{port} ({record.dns_name})")
            directory.note_listening(record, transport, port)
        return record

    @staticmethod
    def _refused_by_peer(record: ClusterRecord, ip: str, port: int, exc: OSError) -> OSError:
        logger.warning(
            "cluster-relay-refused peer=%s detail=%r (the gateways' cluster secrets differ)",
            record.gateway,
            str(exc),
        )
        return os_error(errno.ECONNREFUSED, f"{ip}:{port} ({record.dns_name})")

    def _peer(self, url: str) -> WispStack:
        stack = self._peers.get(url)
        if stack is None:
            from ..stacks.wisp import WispStack

            stack = self._peers[url] = WispStack(
                url,
                lan=RELAY_LAN,
                token=self.config.secret,
                open_timeout=RELAY_OPEN_TIMEOUT,
            )
        return stack

    # -- relays in: another gateway's member to this gateway's

    def secret_matches(self, token: str) -> bool:
        """Whether a relay session's ``token`` is the cluster secret (constant time)."""
        return hmac.compare_digest(token.encode(), self.config.secret.encode())

    async def accept(self, host: str, port: int) -> TcpStream:
        """Connect a relayed stream (``host`` as :func:`relay_host` makes it) to a member here.

        Raises ``ConnectionRefusedError`` when the destination is not a member
        of this gateway, or does not listen on ``port``.
        """
        lan, standin, _, destination = self._relayed(host, port)
        assert self.hub is not None
        return await self.hub.connect_relayed(lan, standin, str(destination), port)

    async def accept_udp(self, host: str, port: int) -> UdpSocket:
        """A UDP socket from the relay's source to a member's UDP port here, as :meth:`accept`."""
        _, standin, source, destination = self._relayed(host, port)
        return await standin.open_udp(str(source), 0, remote=(str(destination), port))

    def _relayed(self, host: str, port: int) -> tuple[Lan, VirtualHost, IPAddress, IPAddress]:
        """The LAN, the host to connect from (a stand-in for the source), source, destination."""
        try:
            lan_name, source, destination = parse_relay_host(host)
        except ValueError:
            raise os_error(errno.ECONNREFUSED, f"{host}: not a relay destination") from None
        lan = None if self.hub is None else self.hub.lans.get(lan_name)
        if lan is None:
            raise os_error(errno.ECONNREFUSED, f"{host}: no LAN {lan_name}")
        if not any(m.owns(str(destination)) for m in lan.members.values()):
            raise os_error(errno.ECONNREFUSED, f"{destination}:{port}: no such member here")
        return lan, self._standin(lan_name, source), source, destination

    def _is_standin(self, lan: str, host: VirtualHost) -> bool:
        return any(
            standin is host for (where, _), standin in self._standins.items() if where == lan
        )

    def _standin(self, lan_name: str, source: IPAddress) -> VirtualHost:
        key = (lan_name, str(source))
        standin = self._standins.get(key)
        if standin is not None:
            return standin
        assert self.hub is not None
        lan = self.hub.lans[lan_name]
        owner = lan.network.owner_of(source)
        if owner is lan.gateway_host:
            # A port forward of another gateway: from the gateways' own address.
            return owner
        if owner is not None:
            raise os_error(errno.ECONNREFUSED, f"a relay from {source}, a member of this gateway")
        prefix = lan.prefix_length if source.version == 4 else lan.network.ipv6_subnet.prefixlen
        standin = lan.network.add_host(f"_relay-{_label(source)}", [f"{source}/{prefix}"])
        self._standins[key] = standin
        return standin

    def _drop_standin(self, lan_name: str, address: str) -> None:
        standin = self._standins.pop((lan_name, address), None)
        if standin is not None and self.hub is not None:
            self.hub.lans[lan_name].network.remove_host(standin)


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
