"""LANs that span several gateway processes: membership in Redis, streams relayed.

Behind a load balancer the members of one LAN land on different gateway
processes.  What they must agree on lives in one Redis server (the
``cluster`` extra installs redis-py; a real ``redis-server`` is the peer):

* **Names and addresses.**  A member's name and its LAN address are two keys,
  ``netshim:lan:<LAN>:n:<name>`` (``<offset>|<gateway>``) and
  ``netshim:lan:<LAN>:a:<offset>`` (the name), where ``<offset>`` is the
  address's distance from the LAN's network address and ``<gateway>`` is the
  owning gateway's cluster URL.  One Lua script checks the name and takes the
  next free address, so two gateways claiming at once never hand out one name
  or one address twice (Redis runs a script alone).  Offsets, not address
  strings, keep the script free of address arithmetic and the same for IPv6.
* **Expiry, not goodbyes.**  Both keys carry a TTL (``ttl``, three refresh
  periods by default) that the owning gateway renews every ``refresh``
  seconds for the members it still serves.  A gateway that dies or loses its
  Redis connection stops renewing, and its members' keys disappear within
  the TTL; nothing has to notice the death.  A renewal that finds its key
  gone re-creates it when it is still free (Redis restarted, or the gateway
  was paused past the TTL) and reports the member lost when somebody else
  took it meanwhile; that member's session must end.
* **An index for listing.**  ``netshim:lan:<LAN>:m``, a sorted set of
  ``<name>|<offset>|<gateway>`` scored by expiry time (Redis's own clock, so
  gateways' clocks never matter), lists a LAN's members without scanning
  the keyspace.  Expired entries are dropped by whichever script looks.
* **Listeners.**  ``netshim:lan:<LAN>:l:<offset>``, a set of ``tcp:<port>``
  and ``udp:<port>``, expires with its member.  A gateway asks it before it
  relays, so a connection to a port nobody listens on is refused without a
  round trip to the owner.
* **News.**  Joins and departures are published on ``netshim:lan:news`` as
  they happen; every ``refresh`` seconds each gateway also reads the index
  of each LAN and compares it with what it believes, which is how the
  departure of a dead gateway's members (which nobody announces) is seen.
  Both paths feed one view per LAN, so a member is reported joined or left
  once; a read of the index never undoes news that arrived after it was
  asked for.

Only one Redis server (or a primary with replicas) is supported: the scripts
touch keys they do not declare, which Redis Cluster would refuse.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

__all__ = [
    "DEFAULT_REFRESH",
    "ClusterMember",
    "LanExhaustedError",
    "MemberNews",
    "NameTakenError",
    "RedisLanDirectory",
    "import_redis",
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
# Addresses one claim looks at before giving up.  The scan starts after the
# last address handed out, so on a LAN that is not nearly full it finds one at
# once; a huge IPv6 prefix is not walked end to end inside one script (Redis
# runs nothing else meanwhile).
MAX_SCAN = 4096
# Offsets are Lua numbers (doubles): exact below 2**53.  More addresses than
# this per LAN are never used.
MAX_ADDRESSES = 1 << 32

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
# positions (0-based) of members somebody else owns now.
_RENEW = """
local gw, ttl = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lost = {}
for i = 3, #ARGV, 3 do
  local p, name, off = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local mine = off .. '|' .. gw
  local held = redis.call('GET', p .. 'n:' .. name)
  local addr = redis.call('GET', p .. 'a:' .. off)
  if (held == mine or not held) and (addr == name or not addr) then
    redis.call('SET', p .. 'n:' .. name, mine, 'PX', ttl)
    redis.call('SET', p .. 'a:' .. off, name, 'PX', ttl)
    redis.call('PEXPIRE', p .. 'l:' .. off, ttl)
    redis.call('ZADD', p .. 'm', now + ttl, name .. '|' .. mine)
  else
    table.insert(lost, (i - 3) / 3)
  end
end
return lost
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
if redis.call('GET', p .. 'n:' .. name) ~= off .. '|' .. gw then return 0 end
if op == 'add' then
  redis.call('SADD', p .. 'l:' .. off, entry)
  redis.call('PEXPIRE', p .. 'l:' .. off, redis.call('PTTL', p .. 'n:' .. name))
else
  redis.call('SREM', p .. 'l:' .. off, entry)
end
return 1
"""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
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


class NameTakenError(Exception):
    """The member name is in use on the LAN (by a member of any gateway)."""


class LanExhaustedError(OSError):
    """No address of the LAN is free."""


@dataclass(frozen=True, slots=True)
class ClusterMember:
    """A member of a LAN as Redis knows it: who serves it and where it is."""

    lan: str
    name: str
    address: IPAddress
    gateway: str


@dataclass(frozen=True, slots=True)
class MemberNews:
    """A member of a LAN joined (``joined=True``) or left, on this gateway or another."""

    joined: bool
    member: ClusterMember


@dataclass(slots=True)
class _Held:
    lan: str
    name: str
    offset: int


class RedisLanDirectory:
    """Members and listeners of LANs shared by gateways through one Redis server.

    ``redis`` is a ``redis://`` URL (or a ``redis.asyncio.Redis`` client, which
    the directory then does not close); ``gateway`` is this gateway's cluster
    URL, how the others reach it; ``lans`` maps each LAN's name to its
    network, the same on every gateway.  ``refresh`` is the period of the
    renewals and of the index readings, ``ttl`` how long a member outlives
    the last renewal of its gateway (three periods by default).  The first
    ``reserved`` addresses of each LAN (the network address and the
    gateway's own) and, for IPv4, the broadcast address are never handed out;
    a member that asks no name is called ``name_base`` + its offset.

    ``on_news`` is called with each :class:`MemberNews` about members of
    *other* gateways; ``on_lost`` with each member of this gateway whose name
    or address another gateway holds now (after this gateway could not renew
    it in time).

    Use it as an async context manager, which runs the renewals and the news
    in the background; the claims and lookups need Redis and raise redis-py's
    ``ConnectionError`` when it is down.
    """

    def __init__(
        self,
        redis: str | Redis,
        gateway: str,
        lans: Mapping[str, Network | str],
        *,
        refresh: float = DEFAULT_REFRESH,
        ttl: float | None = None,
        reserved: int = 2,
        name_base: str = "member-",
        prefix: str = DEFAULT_PREFIX,
        on_news: Callable[[MemberNews], None] | None = None,
        on_lost: Callable[[str, str], None] | None = None,
    ) -> None:
        if not refresh > 0:
            raise ValueError(f"refresh must be a positive number of seconds, got {refresh!r}")
        ttl = refresh * TTL_PERIODS if ttl is None else ttl
        if not ttl > refresh:
            raise ValueError(f"ttl ({ttl!r}) must be longer than the refresh period ({refresh!r})")
        if "|" in gateway or not gateway.strip() or gateway != gateway.strip():
            raise ValueError(f"a cluster URL has no '|' or spaces: {gateway!r}")
        self._client: Redis
        if isinstance(redis, str):
            self._client = import_redis().Redis.from_url(redis)
            self._owns_client = True
        else:
            self._client = redis
            self._owns_client = False
        self.gateway = gateway
        self.networks: dict[str, Network] = {
            lan: ipaddress.ip_network(net) if isinstance(net, str) else net
            for lan, net in lans.items()
        }
        self.refresh = refresh
        self.ttl = ttl
        self.reserved = reserved
        self.name_base = name_base
        self.prefix = prefix
        self.channel = prefix + "news"
        self.on_news = on_news
        self.on_lost = on_lost
        self._claim = self._client.register_script(_CLAIM)
        self._renew = self._client.register_script(_RENEW)
        self._release = self._client.register_script(_RELEASE)
        self._members = self._client.register_script(_MEMBERS)
        self._listener = self._client.register_script(_LISTENER)
        self._held: dict[tuple[str, str], _Held] = {}
        # What this gateway believes of other gateways' members, per LAN, and
        # when (in news counts) each entry was last changed by news.
        self._view: dict[str, dict[str, ClusterMember]] = {lan: {} for lan in self.networks}
        self._news_count = 0
        self._heard: dict[tuple[str, str, str], int] = {}
        self._sync_lock = anyio.Lock()
        #: Renewals done; :meth:`wait_renewals` waits for more.
        self.renewals = 0
        self._renewed = anyio.Event()
        self._group: anyio.abc.TaskGroup | None = None
        self._subscribed = anyio.Event()
        self._stopped = anyio.CancelScope()

    def __repr__(self) -> str:
        return f"RedisLanDirectory(gateway={self.gateway!r}, lans={sorted(self.networks)!r})"

    # -- lifetime

    async def __aenter__(self) -> RedisLanDirectory:
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group = group
        group.start_soon(self._background)
        # Joins published from now on are heard: an index reading taken after
        # this point and the news after it leave nothing out.
        with anyio.move_on_after(self.ttl):
            await self._subscribed.wait()
        await self.sync()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        group, self._group = self._group, None
        if group is not None:
            group.cancel_scope.cancel()
            await group.__aexit__(None, None, None)
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.refresh):
            for held in list(self._held.values()):
                with contextlib.suppress(Exception):
                    await self.release(held.lan, held.name)
        if self._owns_client:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.refresh):
                await self._client.aclose()

    async def _background(self) -> None:
        with self._stopped:
            async with anyio.create_task_group() as group:
                group.start_soon(self._renewals)
                group.start_soon(self._listen_news)

    async def stop_renewing(self) -> None:
        """Stop renewing (and forget) this gateway's members, and stop hearing news.

        As if the gateway had died: the members' keys stay in Redis until
        they expire.
        """
        self._held.clear()
        self._stopped.cancel()

    # -- addresses

    def _range(self, lan: str) -> tuple[int, int]:
        network = self.networks[lan]
        last = min(network.num_addresses, MAX_ADDRESSES)
        if network.version == 4 and network.num_addresses > 2:
            last -= 1
        return self.reserved, max(0, last - self.reserved)

    def address(self, lan: str, offset: int) -> IPAddress:
        return self.networks[lan].network_address + offset

    def offset(self, lan: str, address: IPAddress) -> int | None:
        """``address``'s place in ``lan``, if it is one the directory hands out."""
        network = self.networks[lan]
        if address.version != network.version or address not in network:
            return None
        offset = int(address) - int(network.network_address)
        lo, count = self._range(lan)
        return offset if lo <= offset < lo + count else None

    def _key(self, lan: str) -> str:
        return f"{self.prefix}{lan}:"

    # -- membership

    async def claim(self, lan: str, wanted: str = "") -> ClusterMember:
        """Take ``wanted`` (or a name made up from the address) and the next free address.

        Raises :class:`KeyError` for an unknown LAN, :class:`NameTakenError`,
        :class:`LanExhaustedError`.  The member stays until :meth:`release`
        or until this gateway stops renewing it.
        """
        if lan not in self.networks:
            raise KeyError(lan)
        lo, count = self._range(lan)
        if count <= 0:
            raise LanExhaustedError(f"LAN {lan!r} has no address to give")
        answer = await self._claim(
            args=[
                self._key(lan),
                wanted,
                self.gateway,
                _ms(self.ttl),
                lo,
                count,
                MAX_SCAN,
                self.name_base,
                self.channel,
                lan,
            ]
        )
        status = int(answer[0])
        if status == 0:
            raise NameTakenError(f"{wanted}.{lan} is taken")
        if status == 2:
            raise LanExhaustedError(f"LAN {lan!r} has no free address")
        name, offset = _text(answer[1]), int(answer[2])
        self._held[(lan, name)] = _Held(lan, name, offset)
        return ClusterMember(lan, name, self.address(lan, offset), self.gateway)

    async def release(self, lan: str, name: str) -> None:
        """Give ``name`` and its address back (only if this gateway still holds them)."""
        held = self._held.pop((lan, name), None)
        if held is None:
            return
        await self._release(
            args=[self._key(lan), name, held.offset, self.gateway, self.channel, lan]
        )

    async def members(self, lan: str) -> list[ClusterMember]:
        """Every member of ``lan`` whose keys have not expired, on every gateway."""
        entries = await self._members(args=[self._key(lan)])
        found = []
        for entry in entries:
            member = self._parse_entry(lan, _text(entry))
            if member is not None:
                found.append(member)
        return found

    def _parse_entry(self, lan: str, entry: str) -> ClusterMember | None:
        name, offset, gateway = entry.split("|", 2)
        try:
            return ClusterMember(lan, name, self.address(lan, int(offset)), gateway)
        except ValueError:
            return None

    async def lookup(self, lan: str, host: str) -> ClusterMember | None:
        """The member that ``host`` (an address, ``name`` or ``name.lan``) names, if any."""
        if lan not in self.networks:
            return None
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            name = host.rstrip(".").lower()
            suffix = "." + lan.lower()
            if name.endswith(suffix):
                name = name[: -len(suffix)]
            if not name or "." in name:
                return None
            value = await self._client.get(f"{self._key(lan)}n:{name}")
            if value is None:
                return None
            held_at, gateway = _text(value).split("|", 1)
            return ClusterMember(lan, name, self.address(lan, int(held_at)), gateway)
        offset = self.offset(lan, address)
        if offset is None:
            return None
        key = self._key(lan)
        owner = await self._client.get(f"{key}a:{offset}")
        if owner is None:
            return None
        value = await self._client.get(f"{key}n:{_text(owner)}")
        if value is None:
            return None
        held_at, gateway = _text(value).split("|", 1)
        if int(held_at) != offset:
            return None
        return ClusterMember(lan, _text(owner), address, gateway)

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
        await self._listener(
            args=[self._key(lan), name, held.offset, self.gateway, op, f"{transport}:{port}"]
        )

    async def is_listening(self, lan: str, address: IPAddress, transport: str, port: int) -> bool:
        """Whether the member at ``address`` listens on ``port`` (as its gateway recorded)."""
        offset = self.offset(lan, address)
        if offset is None:
            return False
        found = await self._client.sismember(f"{self._key(lan)}l:{offset}", f"{transport}:{port}")
        return bool(found)

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
        held = list(self._held.values())
        if not held:
            self._count_renewal()
            return
        args: list[str | int] = [self.gateway, _ms(self.ttl)]
        for item in held:
            args += [self._key(item.lan), item.name, item.offset]
        lost = await self._renew(args=args)
        for index in lost:
            item = held[int(index)]
            if self._held.get((item.lan, item.name)) is item:
                del self._held[(item.lan, item.name)]
                logger.warning(
                    "cluster-member-lost lan=%s member=%s address=%s",
                    item.lan,
                    item.name,
                    self.address(item.lan, item.offset),
                )
                if self.on_lost is not None:
                    self.on_lost(item.lan, item.name)
        self._count_renewal()

    def _count_renewal(self) -> None:
        self.renewals += 1
        self._renewed.set()
        self._renewed = anyio.Event()

    async def wait_renewals(self, count: int) -> None:
        """Wait until ``count`` more renewals are done (with or without members)."""
        target = self.renewals + count
        while self.renewals < target:
            await self._renewed.wait()

    async def sync(self) -> None:
        """Read every LAN's index and report the differences from the view as news."""
        async with self._sync_lock:
            started = self._news_count
            await self._sync()
            # Later readings are asked for after this one: older news cannot matter to them.
            self._heard = {k: v for k, v in self._heard.items() if v > started}

    async def _sync(self) -> None:
        for lan in self.networks:
            asked_at = self._news_count
            members = await self.members(lan)
            seen = {m.name: m for m in members if m.gateway != self.gateway}
            view = self._view[lan]
            for name, member in list(view.items()):
                if seen.get(name) != member and not self._heard_since(lan, name, asked_at):
                    del view[name]
                    self._tell(MemberNews(False, member))
            for name, member in seen.items():
                if name not in view and not self._heard_since(lan, name, asked_at):
                    view[name] = member
                    self._tell(MemberNews(True, member))

    def _heard_since(self, lan: str, name: str, count: int) -> bool:
        return any(self._heard.get((lan, name, kind), -1) >= count for kind in ("j", "l"))

    def _tell(self, news: MemberNews) -> None:
        if self.on_news is None:
            return
        try:
            self.on_news(news)
        except Exception:
            logger.exception("cluster-news-callback-failed news=%r", news)

    def _hear(self, payload: bytes | str) -> None:
        try:
            kind, lan, name, offset, gateway = json.loads(payload)
            member = ClusterMember(lan, name, self.address(lan, int(offset)), gateway)
        except (ValueError, TypeError, KeyError):
            logger.warning("cluster-news-malformed payload=%r", payload[:200])
            return
        if gateway == self.gateway:
            return
        self._news_count += 1
        view = self._view[lan]
        if kind == "joined":
            self._heard[(lan, name, "j")] = self._news_count
            old = view.get(name)
            if old == member:
                return
            if old is not None:
                self._tell(MemberNews(False, old))
            view[name] = member
            self._tell(MemberNews(True, member))
        elif kind == "left":
            self._heard[(lan, name, "l")] = self._news_count
            if view.get(name) == member:
                del view[name]
                self._tell(MemberNews(False, member))

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
                with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                    await pubsub.aclose()

    def known(self, lan: str) -> list[ClusterMember]:
        """Other gateways' members of ``lan`` as this gateway knows them now."""
        return list(self._view.get(lan, {}).values())


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
