"""The gateway server: Wisp, wsproxy and websockify on one HTTP port, SOCKS5 on another.

Every destination goes through one :class:`~netshim.policy.Policy` and one
upstream :class:`~netshim.Stack`; clients are accepted from a second stack
(the host network unless told otherwise), so the whole gateway can also run
inside a :class:`~netshim.VirtualNetwork`.

Data paths and why they are shaped so:

* Download (destination to client): each stream's task reads its upstream
  only after :meth:`WebSocket.send` accepted the previous chunk, and that
  waits while the WebSocket's output is over its high-water mark.  A slow
  client therefore stops the reads, the kernel window closes, and the
  destination slows down: memory stays bounded and no tail is dropped.  A
  stream ends with all its bytes and then ``CLOSE``, in that order, because
  one task sends both.
* Upload (client to destination): the WebSocket reader never waits for a
  destination.  It queues DATA on its stream (bounded by Wisp credits: a
  client that ignores them is throttled by the core) and the stream's own
  task writes upstream and releases credits, so one stalled destination never
  stalls the other streams.
* Under asyncio and uvloop a host destination's download needs no task at
  all: its reads are framed into the client's WebSocket transport from the
  read callback (:class:`_DownloadSplice`), which stops reading while the
  client's output is over its high-water mark, with the same bound and the
  same order (the ``CLOSE`` leaves from the callback that saw the end).  A
  ``CONNECT`` stream and its upload run as bare asyncio tasks that the
  session ends as a task group would (:meth:`_WispSession._spawn`,
  :class:`_BareTaskGroup`): anyio's task spawns, task groups and their
  cancel scopes were a good part of a connect's CPU time.  Trio keeps
  anyio's tasks throughout.
* Under asyncio and uvloop a host destination's upload needs no task either
  while it keeps up: the reader writes the DATA of one read into the
  destination's transport itself (:class:`_DirectUpload`), and gives the
  credits back once the socket took the bytes.  Only when the socket does
  not take everything do later packets queue for the stream's task, as
  above, with the same credits and budgets.

A wall around every connection and every stream (DESIGN 11): whatever one
client's bytes provoke, an exception in its handling ends that connection
(or, inside a Wisp session, that stream) with one logged line and a count in
``netshim_gateway_internal_errors``, never the process and never another
client's streams.  The accept loop itself outlives a failing ``accept()``
(no file descriptors left, say): it logs, waits a moment and goes on.

LANs (``docs/lan.md``, :mod:`._lan`): a Wisp client that joined one is a
host on the LAN's virtual network.  Its listeners are that host's, and each
connection they accept is offered to the client as a stream the server
opens, which then runs exactly as a ``CONNECT`` stream does (the same
:meth:`_WispSession._pump`, credits, budgets, idle timeout, limits and
logs) with the virtual connection as its upstream: the virtual TCP window
and the WebSocket's output bound are the backpressure, whichever side reads
slowly.  Between two members of this gateway that upstream is a
:class:`~._lan.SplicedStream`, whose bytes the writer's task frames for the
reader's WebSocket (its output bound is then the backpressure).  Port
forwards splice a connection on the gateway's machine to a member's
listener as SOCKS5 splices to a destination.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import functools
import hmac
import ipaddress
import socket
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from .._addresses import Address, InvalidHostNameError, format_address, parse_ip
from .._errors import LocalProtocolError, RemoteProtocolError, os_error
from ..policy import DestinationBlockedError, Policy, TokenBucket
from ..protocols import socks5, wisp
from ..stack import Stack, TcpListener, TcpStream, UdpSocket
from ._cluster import RELAY_ADDRESS, RELAY_LAN, RELAY_NAME, ClusterConfig, GatewayCluster
from ._lan import (
    DEFAULT_LAN_LISTENERS,
    Forward,
    LanHub,
    LanMember,
    LanSpec,
    MemberRecord,
    NameInUseError,
    SplicedStream,
)
from ._observe import CONTENT_TYPE_LATEST, Metrics, StreamRecord, logger
from ._websocket import DEFAULT_HIGH_WATER, SocketTransport, WebSocket, socket_transport

__all__ = ["Gateway", "GatewayConfig", "Page", "load_token_file", "serve"]

T = TypeVar("T")

#: What a gateway's ``pages`` function answers for a plain GET of a path:
#: status, content type and body (``None``: not a page, the usual 404).
Page = tuple[int, str, bytes]

# The v2 drafts give the peer five seconds to send its INFO; the same bound
# keeps a silent client from holding a half-open connection.
HANDSHAKE_TIMEOUT = 5.0
# What one upstream read asks for, and so the largest DATA packet (and message)
# sent to a client: what asyncio's and uvloop's transports read at once.  Per
# packet the gateway pays a task switch, a frame and a write; against 64 KiB
# reads this took a fifth off the CPU per downloaded byte and doubled 16
# parallel downloads (benchmarks/gateway.py).  Clients take messages up to
# 1 MiB (websockets' default, the Wisp drafts set no limit).
DEFAULT_READ_SIZE = 1 << 18
# An HTTP request line and headers in front of an upgrade fit in a few KiB;
# nginx's default large_client_header_buffers is 4 x 8 KiB.
MAX_REQUEST_SIZE = 32 * 1024
CLOSE_WAIT = 2.0
# What the gateway reads after its close frame while it waits for the client's.
CLOSE_DRAIN = 1 << 20
# Clients tracked with no stream open (for their rate buckets) before the idle
# ones are forgotten: an IPv6 client has addresses enough to grow the table.
MAX_TRACKED_CLIENTS = 10_000
# Destinations a SOCKS5 UDP association remembers as checked.
MAX_CHECKED_DATAGRAM_DESTINATIONS = 1024
# How long the accept loop waits after accept() failed (out of descriptors):
# long enough not to spin, short enough that clients barely notice.
ACCEPT_RETRY_DELAY = 0.1
# Upload bytes one client (by IP) may have queued at the gateway across all its
# Wisp streams and connections before its WebSocket readers pause.  Credits
# count packets, not bytes, so without it a client obeying them could park
# credits x largest message on every stream (see docs/gateway.md).
DEFAULT_UPLOAD_BUFFER = 32 << 20
# The same across all clients: what every client's parked uploads may add up to.
DEFAULT_TOTAL_UPLOAD_BUFFER = 256 << 20
# A session paused on a full budget this long, while some of its streams'
# destinations took nothing, closes those streams (TRANSFER_TIMEOUT): their
# queued bytes go, the budget frees, and the reader reads on and sees whether
# the client is still there.  Without it a client that filled its budget
# towards destinations that never read, then left, was never noticed to have
# gone (its goodbye sits behind the unread bytes) and held its budget, and
# every later connection from its address, until the idle timeout.
DEFAULT_UPLOAD_STALL_TIMEOUT = 30.0


def _page_response(status: int, content_type: str, body: bytes) -> Response:
    import http

    headers = Headers()
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    headers["Cache-Control"] = "no-store"
    headers["Connection"] = "close"
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


def load_token_file(path: str | Path) -> dict[str, tuple[str, int]]:
    """Read a websockify token file: ``token: host:port`` per line, ``#`` comments."""
    targets: dict[str, tuple[str, int]] = {}
    for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        token, sep, target = line.partition(":")
        host, sep2, port = target.strip().rpartition(":")
        if not sep or not sep2 or not _is_digits(port):
            raise ValueError(f"{path}:{number}: expected 'token: host:port', got {raw!r}")
        targets[token.strip()] = (host.strip("[]"), int(port))
    return targets


@dataclass(slots=True)
class GatewayConfig:
    """Everything the gateway can be told (the CLI and config file map onto it).

    ``users`` makes a login required on every path: Wisp v2 in band (the
    password extension) or HTTP Basic on the upgrade request; Wisp v1,
    wsproxy and websockify by HTTP Basic only (they have no way of their
    own); SOCKS5 by username/password.  ``url_tokens`` requires a valid
    ``?token=`` on every WebSocket URL and, when there are no ``users``, a
    token as the SOCKS5 password (any username).  ``targets`` maps websockify
    tokens to destinations (see :func:`load_token_file`); such a token picks
    a destination but is no credential: where tokens are required a second
    ``token=`` value carries one (``?token=vnc1&token=SECRET``).  Every
    secret is compared in constant time.
    ``trusted_proxies`` are networks whose ``X-Forwarded-For`` /
    ``X-Real-IP`` headers name the real client.
    ``lans`` are the LANs Wisp clients may join (``docs/lan.md``), each
    member holding at most ``lan_listeners`` listeners; ``forwards`` expose
    members' listeners on the gateway's machine.  ``cluster`` shares the LANs
    with other gateway processes through Redis (``docs/lan.md``, "More than
    one gateway").
    """

    policy: Policy = field(default_factory=Policy)
    users: dict[str, str] = field(default_factory=dict)
    url_tokens: frozenset[str] = frozenset()
    targets: dict[str, tuple[str, int]] = field(default_factory=dict)
    motd: str | None = None
    wisp_v2: bool = True
    wisp_buffer_size: int = wisp.DEFAULT_BUFFER_SIZE
    max_message_size: int = wisp.DEFAULT_MAX_MESSAGE_SIZE
    high_water: int = DEFAULT_HIGH_WATER
    read_size: int = DEFAULT_READ_SIZE
    trusted_proxies: tuple[str, ...] = ()
    shutdown_grace: float = 10.0
    upload_buffer: int = DEFAULT_UPLOAD_BUFFER
    total_upload_buffer: int = DEFAULT_TOTAL_UPLOAD_BUFFER
    upload_stall_timeout: float = DEFAULT_UPLOAD_STALL_TIMEOUT
    lans: tuple[LanSpec, ...] = ()
    forwards: tuple[Forward, ...] = ()
    lan_listeners: int = DEFAULT_LAN_LISTENERS
    cluster: ClusterConfig | None = None

    def __post_init__(self) -> None:
        self.lans = tuple(self.lans)
        self.forwards = tuple(self.forwards)
        if self.lan_listeners < 1:
            raise ValueError(f"lan_listeners must be at least 1, got {self.lan_listeners}")
        declared = {lan.name for lan in self.lans}
        if len(declared) != len(self.lans):
            raise ValueError("a LAN is declared twice")
        for index, lan in enumerate(self.lans):
            for other in self.lans[index + 1 :]:
                if lan.network.overlaps(other.network):
                    raise ValueError(f"LANs {lan.name} ({lan.cidr}) and {other.name} overlap")
        if self.cluster is not None and not self.lans:
            raise ValueError("a cluster shares LANs: declare at least one")
        for forward in self.forwards:
            if forward.lan not in declared:
                raise ValueError(
                    f"forward to {forward.lan}/{forward.member}: no LAN {forward.lan} is declared"
                )
        if not 1 <= self.wisp_buffer_size <= 0xFFFF_FFFF:
            raise ValueError(f"wisp_buffer_size must be 1..2**32-1, got {self.wisp_buffer_size}")
        # A Wisp CONNECT naming a 253-byte host needs 261 bytes.
        if self.max_message_size < 1024:
            raise ValueError(f"max_message_size must be at least 1024, got {self.max_message_size}")
        for name in ("high_water", "read_size", "upload_buffer", "total_upload_buffer"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.upload_stall_timeout <= 0:
            raise ValueError(
                f"upload_stall_timeout must be positive, got {self.upload_stall_timeout}"
            )
        if self.shutdown_grace < 0:
            raise ValueError(f"shutdown_grace must not be negative, got {self.shutdown_grace}")


def _close_reason_for(exc: BaseException) -> int:
    if isinstance(exc, DestinationBlockedError):
        return wisp.CloseReason.BLOCKED
    if isinstance(exc, InvalidHostNameError):
        return wisp.CloseReason.INVALID_INFO
    if isinstance(exc, socket.gaierror):
        return wisp.CloseReason.UNREACHABLE
    if isinstance(exc, ConnectionRefusedError):
        return wisp.CloseReason.REFUSED
    if isinstance(exc, TimeoutError):
        return wisp.CloseReason.TIMEOUT
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return wisp.CloseReason.UNREACHABLE
    return wisp.CloseReason.NETWORK_ERROR


def _http_status_for(exc: BaseException) -> int:
    """The HTTP answer to a wsproxy upgrade whose destination could not be reached."""
    if isinstance(exc, DestinationBlockedError):
        return 403
    if isinstance(exc, TimeoutError):
        return 504
    return 502


@dataclass(slots=True)
class _WsproxyUpstream:
    """A wsproxy stream's connected destination, admitted and counted."""

    stream: TcpStream
    client: _Client
    record: StreamRecord


def _socks_reply_for(exc: BaseException) -> int:
    if isinstance(exc, DestinationBlockedError | _ThrottledError):
        return socks5.ReplyCode.NOT_ALLOWED
    if isinstance(exc, ConnectionRefusedError):
        return socks5.ReplyCode.CONNECTION_REFUSED
    if isinstance(exc, OSError) and exc.errno == errno.ENETUNREACH:
        return socks5.ReplyCode.NETWORK_UNREACHABLE
    if isinstance(exc, socket.gaierror | TimeoutError | OSError):
        return socks5.ReplyCode.HOST_UNREACHABLE
    return socks5.ReplyCode.GENERAL_FAILURE


class _ThrottledError(Exception):
    """A per-client or total limit refused a new stream."""


class _Client:
    """What the gateway tracks per client IP: open streams, rates."""

    __slots__ = ("bandwidth", "lookups", "new_streams", "streams")

    def __init__(self, policy: Policy, now: float) -> None:
        limits = policy.limits
        self.streams = 0
        self.lookups = anyio.CapacityLimiter(limits.lookups_per_client)
        self.new_streams = (
            TokenBucket(limits.new_streams_per_second, limits.new_streams_burst, now)
            if limits.new_streams_per_second
            else None
        )
        self.bandwidth = (
            TokenBucket(limits.bandwidth, max(limits.bandwidth, DEFAULT_READ_SIZE), now)
            if limits.bandwidth
            else None
        )


class Gateway:
    """Serves ``stack`` to remote clients (see the module documentation).

    ``await gateway.serve(...)`` listens and serves until cancelled or until
    :meth:`shutdown` was called and every connection drained.
    """

    def __init__(
        self,
        stack: Stack | None = None,
        config: GatewayConfig | None = None,
        *,
        pages: Callable[[str], Page | None] | None = None,
    ) -> None:
        """``pages``, if given, answers plain GET requests (not WebSocket
        upgrades) by path, so that a page and the gateway it talks to share
        one origin (``netshim pyodide serve``); ``/healthz`` and ``/metrics``
        stay the gateway's.
        """
        self.pages = pages
        if stack is None:
            from ..stacks.host import HostStack

            stack = HostStack()
        self.stack = stack
        self.config = config or GatewayConfig()
        self.policy = self.config.policy
        self.metrics = Metrics()
        self.addresses: dict[str, Address] = {}
        self._clients: dict[str, _Client] = {}
        self._budgets: dict[str, _UploadBudget] = {}
        self._total_upload = _UploadBudget(self.config.total_upload_buffer)
        self._total_streams = 0
        self._listeners: list[TcpListener] = []
        self._listen_stack: Stack | None = None
        self._connections = 0
        self._connections_by_client: dict[str, int] = {}
        self._idle = anyio.Event()
        self._idle.set()
        self._shutting_down = False
        self._trusted = tuple(
            ipaddress.ip_network(n, strict=False) for n in self.config.trusted_proxies
        )
        #: The LANs clients may join (``None``: none configured).
        self.lans: LanHub | None = None
        #: This gateway's part of a cluster of gateways (``None``: on its own).
        self.cluster: GatewayCluster | None = None
        if self.config.lans:
            directory = None
            if self.config.cluster is not None:
                self.cluster = GatewayCluster(self.config.cluster)
                directory = self.cluster.directory_for(self.config.lans)
            self.lans = LanHub(
                self.config.lans,
                listeners_per_member=self.config.lan_listeners,
                directory=directory,
            )
            if self.cluster is not None:
                self.cluster.attach(self.lans)
        #: Where each of ``config.forwards`` listens, in their order (once serving).
        self.forward_addresses: list[Address] = []
        # A member's listener is checked against the policy's port rules and
        # deny rules only: its address is a LAN's, private by nature.
        policy = self.policy
        self._listen_policy = Policy(
            deny=policy.deny,
            ports=policy.ports,
            allow_private=True,
            allow_tcp=policy.allow_tcp,
            allow_udp=policy.allow_udp,
        )

    # -- lifecycle

    async def serve(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = 8080,
        socks_port: int | None = None,
        listen_stack: Stack | None = None,
        task_status: anyio.abc.TaskStatus[dict[str, Address]] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen for WebSocket/HTTP clients on ``host:port`` and SOCKS5 on ``socks_port``.

        ``port=0`` picks a free port; the addresses are in :attr:`addresses`
        (and given to ``task_status.started``).  ``port=None`` serves SOCKS5 only.
        """
        if listen_stack is None:
            from ..stacks.host import HostStack

            listen_stack = HostStack()
        try:
            async with contextlib.AsyncExitStack() as cluster:
                if self.cluster is not None:
                    await cluster.enter_async_context(self.cluster)
                await self._listen_and_accept(host, port, socks_port, listen_stack, task_status)
        finally:
            with anyio.CancelScope(shield=True):
                for listener in self._listeners:
                    await listener.aclose()

    async def _listen_and_accept(
        self,
        host: str,
        port: int | None,
        socks_port: int | None,
        listen_stack: Stack,
        task_status: anyio.abc.TaskStatus[dict[str, Address]],
    ) -> None:
        async with anyio.create_task_group() as group:
            if port is not None:
                http = await listen_stack.listen_tcp(host, port)
                self._listeners.append(http)
                self.addresses["http"] = http.local_address
                group.start_soon(self._accept, http, self._serve_http, "http")
            if socks_port is not None:
                socks = await listen_stack.listen_tcp(host, socks_port)
                self._listeners.append(socks)
                self.addresses["socks5"] = socks.local_address
                self._listen_stack = listen_stack
                group.start_soon(self._accept, socks, self._serve_socks5, "socks5")
            for name, address in self.addresses.items():
                logger.info("listening protocol=%s address=%s", name, format_address(address))
            for forward in self.config.forwards:
                listener = await listen_stack.listen_tcp(forward.host, forward.port)
                self._listeners.append(listener)
                self.forward_addresses.append(listener.local_address)
                logger.info(
                    "listening protocol=forward address=%s to=%s/%s:%d",
                    format_address(listener.local_address),
                    forward.lan,
                    forward.member,
                    forward.member_port,
                )
                group.start_soon(
                    self._accept,
                    listener,
                    functools.partial(self._serve_forward, forward),
                    "forward",
                )
            task_status.started(dict(self.addresses))

    async def _accept(
        self, listener: TcpListener, handler: Callable[[TcpStream], Awaitable[None]], front: str
    ) -> None:
        async with anyio.create_task_group() as group:
            while True:
                try:
                    stream = await listener.accept()
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return
                except OSError as exc:
                    if self._shutting_down:
                        return
                    # EMFILE, ENFILE, ENOBUFS: the listener itself is fine;
                    # connections will be accepted again once resources free up.
                    self.metrics.internal_errors.labels(front).inc()
                    logger.error("accept-failed front=%s error=%r", front, exc)
                    await anyio.sleep(ACCEPT_RETRY_DELAY)
                    continue
                group.start_soon(self._run_connection, stream, handler, front)

    async def _run_connection(
        self, stream: TcpStream, handler: Callable[[TcpStream], Awaitable[None]], front: str
    ) -> None:
        self._connections += 1
        self._idle = anyio.Event() if self._idle.is_set() else self._idle
        counted: str | None = None
        try:
            peer = stream.remote_address
        except OSError:
            peer = ("-", 0)
        try:
            async with stream:
                # A trusted proxy's connections are counted per real client
                # once its headers named one (_serve_http).
                if not self._is_trusted(peer[0]):
                    refusal = self._take_connection_slot(peer[0])
                    if refusal is not None:
                        await self._refuse_connection(stream, front, peer, refusal)
                        return
                    counted = peer[0]
                await handler(stream)
        except Exception as exc:
            self._contain(exc, front, peer)
        finally:
            if counted is not None:
                self._give_back_connection_slot(counted)
            self._connections -= 1
            if self._connections == 0:
                self._idle.set()

    def _is_trusted(self, ip: str) -> bool:
        if not self._trusted:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self._trusted)

    def _take_connection_slot(self, client_ip: str) -> str | None:
        """Count a client connection; ``None``, or why it is one too many."""
        limits = self.policy.limits
        total = limits.max_connections_total
        if total is not None and self._connections > total:
            return f"{self._connections - 1} connections open in total"
        count = self._connections_by_client.get(client_ip, 0)
        per_client = limits.max_connections_per_client
        if per_client is not None and count >= per_client:
            return f"{count} connections open from {client_ip}"
        self._connections_by_client[client_ip] = count + 1
        return None

    def _give_back_connection_slot(self, client_ip: str) -> None:
        count = self._connections_by_client[client_ip] - 1
        if count:
            self._connections_by_client[client_ip] = count
        else:
            del self._connections_by_client[client_ip]

    async def _refuse_connection(
        self, stream: TcpStream, front: str, peer: Address, why: str
    ) -> None:
        self.metrics.refused_connections.labels(front).inc()
        logger.info(
            "connection-refused front=%s client=%s reason=%r", front, format_address(peer), why
        )
        if front == "http":
            # A few bytes into a fresh connection's empty send buffer: never blocks.
            with anyio.move_on_after(1):
                await stream.send(
                    ServerProtocol().reject(429, f"too many connections: {why}\n").serialize()
                )

    def _contain(self, exc: BaseException, where: str, peer: Address, stream_id: int = 0) -> None:
        """Account for an exception that ended one connection or stream (see the module docs).

        A connection the client or the network broke is ordinary; anything
        else is a bug or an input nobody foresaw: logged as an error (one
        line; the traceback at debug level) and counted.  Cancellation never
        arrives here: it is a ``BaseException``, not an ``Exception``.
        """
        if _only_connection_loss(exc):
            return
        self.metrics.internal_errors.labels(where).inc()
        detail = f" stream={stream_id}" if stream_id else ""
        logger.error(
            "internal-error front=%s client=%s%s error=%s",
            where,
            format_address(peer),
            detail,
            _describe(exc),
        )
        logger.debug("traceback of the internal error above", exc_info=exc)

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting, let open connections finish for ``grace`` seconds, then return.

        Connections still open after the grace period are cut when the
        caller cancels :meth:`serve` (the CLI does so on the second signal
        or at the deadline).
        """
        self._shutting_down = True
        for listener in self._listeners:
            await listener.aclose()
        with anyio.move_on_after(self.config.shutdown_grace if grace is None else grace):
            await self._idle.wait()

    # -- limits

    def _admit(self, client_ip: str) -> _Client:
        limits = self.policy.limits
        now = time.monotonic()
        client = self._clients.get(client_ip)
        if client is None:
            if len(self._clients) >= MAX_TRACKED_CLIENTS:
                # Clients kept only for their rate buckets: forget the idle
                # ones rather than grow with every address a client can use.
                idle = [ip for ip, known in self._clients.items() if known.streams == 0]
                for ip in idle:
                    del self._clients[ip]
            client = self._clients[client_ip] = _Client(self.policy, now)
        if self._shutting_down:
            raise _ThrottledError("the gateway is shutting down")
        if limits.max_streams_total is not None and self._total_streams >= limits.max_streams_total:
            raise _ThrottledError(f"{self._total_streams} streams open in total")
        if (
            limits.max_streams_per_client is not None
            and client.streams >= limits.max_streams_per_client
        ):
            raise _ThrottledError(f"{client.streams} streams open for {client_ip}")
        if client.new_streams is not None and not client.new_streams.try_take(1, now):
            raise _ThrottledError(f"new-stream rate of {client_ip}")
        client.streams += 1
        self._total_streams += 1
        return client

    def _upload_budget(self, client_ip: str) -> _SessionUploads:
        """A new session's uploads, counted against its client's budget and the total one.

        The client's budget is shared by its Wisp sessions (see :meth:`_end_session`).
        """
        budget = self._budgets.get(client_ip)
        if budget is None:
            budget = self._budgets[client_ip] = _UploadBudget(self.config.upload_buffer)
        budget.sessions += 1
        return _SessionUploads((budget, self._total_upload))

    def _end_session(self, client_ip: str) -> None:
        budget = self._budgets.get(client_ip)
        if budget is not None:
            budget.sessions -= 1
            if budget.sessions == 0:
                del self._budgets[client_ip]

    def _release(self, client_ip: str) -> None:
        client = self._clients.get(client_ip)
        self._total_streams -= 1
        if client is not None:
            client.streams -= 1
            if client.streams == 0 and client.new_streams is None and client.bandwidth is None:
                del self._clients[client_ip]

    async def _throttle(self, client: _Client, nbytes: int) -> None:
        if client.bandwidth is not None:
            delay = client.bandwidth.take(nbytes, time.monotonic())
            if delay > 0:
                await anyio.sleep(delay)

    # -- HTTP and WebSocket

    def _real_client(self, peer: Address, headers: Headers) -> Address:
        if not self._is_trusted(peer[0]):
            return peer
        hops = [h.strip() for h in _header(headers, "X-Forwarded-For").split(",") if h.strip()]
        # The rightmost hop that is not one of our proxies is the client.
        for hop in reversed(hops):
            try:
                hop_ip = ipaddress.ip_address(hop)
            except ValueError:
                break
            if not any(hop_ip in network for network in self._trusted):
                return (str(hop_ip), 0)
        real = headers.get_all("X-Real-IP")
        if len(real) == 1:
            try:
                return (str(ipaddress.ip_address(real[0].strip())), 0)
            except ValueError:
                pass
        return peer

    async def _serve_http(self, stream: TcpStream) -> None:
        chosen: dict[str, str | None] = {"subprotocol": None}

        def select(_: ServerProtocol, offered: object) -> str | None:
            return chosen["subprotocol"]

        protocol = ServerProtocol(
            select_subprotocol=select,  # type: ignore[arg-type]
            max_size=self.config.max_message_size,
        )
        head = await self._read_request_head(stream)
        if head is None:
            return
        request_bytes, leftover = head
        # Only the request head goes to the protocol: bytes behind it are
        # either WebSocket frames sent right behind the upgrade (they go to
        # the WebSocket) or a pipelined second request, which would otherwise
        # be parsed as frames and fail the protocol before we answered.
        protocol.receive_data(request_bytes)
        request = next(
            (event for event in protocol.events_received() if isinstance(event, Request)), None
        )
        if request is None:
            reason = protocol.handshake_exc or "malformed request"
            await self._send_plain(stream, 400, f"bad request: {_short_text(str(reason))}\n")
            return
        try:
            parsed = urllib.parse.urlsplit(request.path)
        except ValueError as exc:
            await self._send_plain(stream, 400, f"bad request path: {exc}\n")
            return
        path, query = parsed.path, urllib.parse.parse_qs(parsed.query)
        peer = self._real_client(stream.remote_address, request.headers)
        if self._is_trusted(stream.remote_address[0]):
            refusal = self._take_connection_slot(peer[0])
            if refusal is not None:
                await self._refuse_connection(stream, "http", peer, refusal)
                return
            try:
                await self._serve_request(
                    stream, protocol, request, leftover, path, query, peer, chosen
                )
            finally:
                self._give_back_connection_slot(peer[0])
        else:
            await self._serve_request(
                stream, protocol, request, leftover, path, query, peer, chosen
            )

    async def _serve_request(
        self,
        stream: TcpStream,
        protocol: ServerProtocol,
        request: Request,
        leftover: bytes,
        path: str,
        query: dict[str, list[str]],
        peer: Address,
        chosen: dict[str, str | None],
    ) -> None:
        offered = [
            p.strip()
            for value in request.headers.get_all("Sec-WebSocket-Protocol")
            for p in value.split(",")
            if p.strip()
        ]
        upgrade = "websocket" in _header(request.headers, "Upgrade").lower()
        kind = "wisp" if path.endswith("/") else "wsproxy"
        response: Response
        target: tuple[str, int] | None = None
        upstream: _WsproxyUpstream | None = None
        logged_in = False
        if not upgrade and path == "/healthz":
            response = self._plain(protocol, 200, "ok\n")
        elif not upgrade and path == "/metrics":
            response = self._plain(protocol, 200, self.metrics.render().decode())
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        elif not upgrade and self.pages is not None and (page := self.pages(path)) is not None:
            response = _page_response(*page)
        elif not upgrade:
            response = self._plain(protocol, 404, "not found: Wisp lives on paths ending in '/'\n")
        elif self._shutting_down:
            response = self._plain(protocol, 503, "shutting down\n")
        else:
            tokens = query.get("token", [])
            if kind == "wsproxy":
                target = self._wsproxy_target(path, tokens)
                if "binary" in offered:
                    chosen["subprotocol"] = "binary"
                elif offered:
                    chosen["subprotocol"] = offered[0]
            elif offered and self.config.wisp_v2:
                # wisp-js asks for "wisp-v2"; the drafts only need the header.
                chosen["subprotocol"] = offered[0]
            logged_in = self._basic_login(request.headers)
            in_band = kind == "wisp" and chosen["subprotocol"] is not None
            refusal = self._http_auth_refusal(tokens, logged_in, in_band)
            if refusal is not None:
                self.metrics.auth_failures.labels(kind).inc()
                logger.info(
                    "auth-failed protocol=%s client=%s reason=%r",
                    kind,
                    format_address(peer),
                    refusal,
                )
                response = self._plain(protocol, 401, refusal + "\n")
                if self.config.users:
                    response.headers["WWW-Authenticate"] = 'Basic realm="netshim gateway"'
            elif kind == "wsproxy" and target is None:
                response = self._plain(protocol, 400, "expected /host:port or ?token=\n")
            elif kind == "wsproxy":
                assert target is not None
                # Connected before the upgrade is answered, so that a refusal
                # is the answer (an HTTP error naming it) and the client's
                # connect fails as a socket's would, instead of a 101 followed
                # by a close that reads like a clean end of stream.
                response = protocol.accept(request)
                if response.status_code == 101:
                    # (Only a valid upgrade costs a connect.)
                    opened = await self._wsproxy_connect(protocol, peer, target)
                    if isinstance(opened, Response):
                        response = opened
                    else:
                        upstream = opened
            else:
                response = protocol.accept(request)
        if response.status_code != 101:
            # Written directly (the protocol would also end the connection,
            # which the wall does anyway); pipelined requests behind it go
            # unanswered and the connection closes, as Connection: close says.
            await stream.send(response.serialize())
            return
        try:
            protocol.send_response(response)
            for chunk in protocol.data_to_send():
                if chunk:
                    await stream.send(chunk)
        except BaseException:
            if upstream is not None:
                with anyio.CancelScope(shield=True):
                    await self._wsproxy_end(upstream)
            raise
        websocket = WebSocket(
            stream,
            protocol,
            max_message_size=self.config.max_message_size,
            high_water=self.config.high_water,
            leftover=leftover,
        )
        self.metrics.connections.labels(kind).inc()
        self.metrics.connections_total.labels(kind).inc()
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(websocket.run_writer)
                try:
                    if kind == "wisp":
                        version = 2 if chosen["subprotocol"] is not None else 1
                        await _WispSession(
                            self, websocket, peer, version, logged_in=logged_in
                        ).run()
                    else:
                        assert upstream is not None
                        await self._serve_wsproxy(websocket, upstream)
                finally:
                    await websocket.close()
                    # Wait a moment for the client's close frame, reading
                    # (and dropping) at most CLOSE_DRAIN more bytes.
                    drain_until = websocket.bytes_in + CLOSE_DRAIN
                    with anyio.move_on_after(CLOSE_WAIT):
                        while websocket.bytes_in < drain_until:
                            if await websocket.receive() is None:
                                break
                    # The last frames (the close frame, a Wisp CLOSE) leave
                    # before the writer is cancelled.
                    with anyio.move_on_after(CLOSE_WAIT):
                        await websocket.flush()
                    group.cancel_scope.cancel()
        finally:
            self.metrics.connections.labels(kind).dec()

    @staticmethod
    def _plain(protocol: ServerProtocol, status: int, text: str) -> Response:
        """A short text response with ``Connection: close`` (what ``reject`` builds)."""
        return protocol.reject(status, text)

    async def _send_plain(self, stream: TcpStream, status: int, text: str) -> None:
        """Answer a request the protocol could not take, then let the connection end."""
        self.metrics.bad_requests.inc()
        response = ServerProtocol().reject(status, text)
        await stream.send(response.serialize())

    async def _read_request_head(self, stream: TcpStream) -> tuple[bytes, bytes] | None:
        """The request line and headers (up to the blank line) and what came behind them.

        ``None`` when the client went away or was too slow or too large; the
        last two get a 408 or 431 answer first.
        """
        buffer = bytearray()
        with anyio.move_on_after(HANDSHAKE_TIMEOUT):
            while True:
                try:
                    data = await stream.receive(DEFAULT_READ_SIZE)
                except anyio.EndOfStream:
                    return None
                # Only the new bytes (and the three before them) can complete
                # the blank line: a slow client is not rescanned from the start.
                start = max(0, len(buffer) - 3)
                buffer += data
                end = buffer.find(b"\r\n\r\n", start)
                if end >= 0 and end + 4 <= MAX_REQUEST_SIZE:
                    return bytes(buffer[: end + 4]), bytes(buffer[end + 4 :])
                if len(buffer) > MAX_REQUEST_SIZE:
                    await self._send_plain(stream, 431, "request header fields too large\n")
                    return None
        await self._send_plain(stream, 408, "request timeout\n")
        return None

    def _wsproxy_target(self, path: str, tokens: list[str]) -> tuple[str, int] | None:
        for token in tokens:
            target = _find_secret(token, self.config.targets)
            if target is not None:
                return target
        last = urllib.parse.unquote(path.rsplit("/", 1)[-1])
        host, sep, port = last.rpartition(":")
        if not sep or not _is_digits(port) or not host or not 1 <= int(port) <= 65535:
            return None
        return host.strip("[]"), int(port)

    def _basic_login(self, headers: Headers) -> bool:
        """Whether the request carries HTTP Basic credentials of a configured user."""
        if not self.config.users:
            return False
        values = headers.get_all("Authorization")
        if len(values) != 1:
            return False
        scheme, _, encoded = values[0].strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return False
        name, sep, password = decoded.partition(":")
        return bool(sep) and _login_ok(self.config.users, name, password)

    def _http_auth_refusal(self, tokens: list[str], logged_in: bool, in_band: bool) -> str | None:
        """Why a WebSocket upgrade is refused for authentication, or ``None``.

        ``in_band``: a Wisp v2 session, which can still log in with the
        password extension (checked in its handshake).
        """
        config = self.config
        if config.url_tokens and not any(_secret_in(t, config.url_tokens) for t in tokens):
            return "a valid ?token= is required"
        if config.users and not logged_in and not in_band:
            return (
                "a login is required: HTTP Basic credentials on the upgrade request "
                "(or Wisp v2 with the password extension)"
            )
        return None

    async def _wsproxy_connect(
        self, protocol: ServerProtocol, peer: Address, target: tuple[str, int]
    ) -> _WsproxyUpstream | Response:
        """Admit and connect a wsproxy stream; the HTTP answer when that fails."""
        record = StreamRecord("wsproxy", peer, target[0], target[1])
        try:
            client = self._admit(peer[0])
        except _ThrottledError as exc:
            record.reason = "throttled"
            logger.info("%s detail=%r", record.line(), str(exc))
            return self._plain(protocol, 429, f"throttled: {exc}\n")
        self.metrics.stream_opened(record)
        try:
            with anyio.fail_after(self.policy.limits.connect_timeout):
                stream, checked = await self.policy.connect_tcp(
                    self.stack, *target, lookups=client.lookups
                )
        except (OSError, TimeoutError) as exc:
            if isinstance(exc, DestinationBlockedError):
                self.metrics.refusals.labels("wsproxy").inc()
            record.reason = type(exc).__name__
            self._release(peer[0])
            self.metrics.stream_ended(record)
            if isinstance(exc, TimeoutError) and not exc.errno:
                exc = os_error(errno.ETIMEDOUT, format_address(target))
            return self._plain(protocol, _http_status_for(exc), f"{exc}\n")
        except BaseException:
            self._release(peer[0])
            self.metrics.stream_ended(record)
            raise
        record.ip = checked.ip
        return _WsproxyUpstream(stream, client, record)

    async def _wsproxy_end(self, upstream: _WsproxyUpstream) -> None:
        """Close a wsproxy stream's destination and account for the stream. Call once."""
        try:
            await upstream.stream.aclose()
        finally:
            self._release(upstream.record.client[0])
            self.metrics.stream_ended(upstream.record)

    async def _serve_wsproxy(self, websocket: WebSocket, opened: _WsproxyUpstream) -> None:
        upstream, client, record = opened.stream, opened.client, opened.record
        try:
            async with anyio.create_task_group() as group:
                idle = _IdleTimer(group.cancel_scope, self.policy.limits.idle_timeout)

                async def download() -> None:
                    while True:
                        try:
                            data = await upstream.receive(self.config.read_size)
                        except (anyio.EndOfStream, OSError):
                            break
                        idle.touch()
                        await self._throttle(client, len(data))
                        record.down += len(data)
                        await websocket.send(data)
                    record.reason = record.reason if record.reason != "-" else "upstream-closed"
                    group.cancel_scope.cancel()

                group.start_soon(download)
                while True:
                    message = await websocket.receive()
                    if message is None:
                        record.reason = "client-closed"
                        break
                    data = message.encode() if isinstance(message, str) else message
                    idle.touch()
                    await self._throttle(client, len(data))
                    record.up += len(data)
                    try:
                        # As for SOCKS5: a destination that takes nothing this
                        # long ends the stream (the client may be gone).
                        with anyio.fail_after(self.config.upload_stall_timeout):
                            await upstream.send(data)
                    except TimeoutError:
                        record.reason = "upload-stalled"
                        break
                    except OSError:
                        record.reason = "upstream-error"
                        break
                # Let the destination see the end of the upload and answer.
                try:
                    await upstream.send_eof()
                except OSError:
                    group.cancel_scope.cancel()
            if group.cancel_scope.cancelled_caught and record.reason == "-":
                record.reason = "idle-timeout"
        finally:
            with anyio.CancelScope(shield=True):
                await self._wsproxy_end(opened)

    # -- port forwards to LAN members

    async def _serve_forward(self, forward: Forward, stream: TcpStream) -> None:
        """Carry one connection from the gateway's machine to a member's listener."""
        assert self.lans is not None
        peer = stream.remote_address
        record = StreamRecord(
            "forward", peer, f"{forward.member}.{forward.lan}", forward.member_port
        )
        try:
            client = self._admit(peer[0])
        except _ThrottledError as exc:
            record.reason = "throttled"
            logger.info("%s detail=%r", record.line(), str(exc))
            await stream.abort()
            return
        self.metrics.stream_opened(record)
        try:
            try:
                with anyio.fail_after(self.policy.limits.connect_timeout):
                    upstream = await self.lans.connect_forward(
                        forward.lan, forward.member, forward.member_port
                    )
            except (OSError, TimeoutError) as exc:
                # Refused as the member's own machine would: a reset.
                record.reason = type(exc).__name__
                logger.info(
                    "forward-refused client=%s to=%s/%s:%d error=%r",
                    format_address(peer),
                    forward.lan,
                    forward.member,
                    forward.member_port,
                    str(exc),
                )
                await stream.abort()
                return
            record.ip = upstream.remote_address[0]
            async with upstream:
                record.reason = await self._splice(stream, upstream, client, record)
        finally:
            self._release(peer[0])
            self.metrics.stream_ended(record)

    # -- SOCKS5

    async def _serve_socks5(self, stream: TcpStream) -> None:
        peer = stream.remote_address
        conn = socks5.Socks5Connection(socks5.Role.SERVER)
        users = self.config.users

        async def next_event() -> socks5.Event:
            while True:
                event = conn.next_event()
                if isinstance(event, socks5.Event):
                    return event
                try:
                    conn.receive_data(await stream.receive(4096))
                except anyio.EndOfStream:
                    conn.receive_data(b"")

        try:
            with anyio.fail_after(HANDSHAKE_TIMEOUT):
                greeting = await next_event()
                if not isinstance(greeting, socks5.Greeting):
                    return
                # With URL tokens but no users, a token is the password.
                tokens_only = not users and bool(self.config.url_tokens)
                wanted = (
                    socks5.AuthMethod.USERNAME_PASSWORD
                    if users or tokens_only
                    else socks5.AuthMethod.NO_AUTHENTICATION
                )
                method = wanted if wanted in greeting.methods else socks5.AuthMethod.NO_ACCEPTABLE
                await stream.send(conn.send(socks5.MethodChoice(method)))
                if method == socks5.AuthMethod.NO_ACCEPTABLE:
                    self.metrics.auth_failures.labels("socks5").inc()
                    return
                if method == socks5.AuthMethod.USERNAME_PASSWORD:
                    credentials = await next_event()
                    if not isinstance(credentials, socks5.Credentials):
                        return
                    if tokens_only:
                        ok = _secret_in(credentials.password, self.config.url_tokens)
                    else:
                        ok = _login_ok(users, credentials.username, credentials.password)
                    await stream.send(conn.send(socks5.AuthResult(ok)))
                    if not ok:
                        self.metrics.auth_failures.labels("socks5").inc()
                        return
                request = await next_event()
        except TimeoutError:
            return
        except RemoteProtocolError as exc:
            if exc.hint is not None and conn.state is socks5.State.ERROR:
                await stream.send(conn.send(socks5.Reply(exc.hint)))
            return
        if not isinstance(request, socks5.Request):
            return
        if request.command is socks5.Command.CONNECT:
            await self._socks5_connect(stream, conn, request, peer)
        elif request.command is socks5.Command.UDP_ASSOCIATE:
            await self._socks5_associate(stream, conn, request, peer)
        else:
            await stream.send(conn.send(socks5.Reply(socks5.ReplyCode.COMMAND_NOT_SUPPORTED)))

    async def _socks5_connect(
        self,
        stream: TcpStream,
        conn: socks5.Socks5Connection,
        request: socks5.Request,
        peer: Address,
    ) -> None:
        record = StreamRecord("socks5", peer, request.host, request.port)
        try:
            client = self._admit(peer[0])
        except _ThrottledError as exc:
            await stream.send(conn.send(socks5.Reply(_socks_reply_for(exc))))
            record.reason = "throttled"
            logger.info(record.line())
            return
        self.metrics.stream_opened(record)
        try:
            try:
                with anyio.fail_after(self.policy.limits.connect_timeout):
                    upstream, checked = await self.policy.connect_tcp(
                        self.stack, request.host, request.port, lookups=client.lookups
                    )
            except (OSError, TimeoutError) as exc:
                if isinstance(exc, DestinationBlockedError):
                    self.metrics.refusals.labels("socks5").inc()
                    logger.info("refused protocol=socks5 client=%s %s", format_address(peer), exc)
                record.reason = type(exc).__name__
                await stream.send(conn.send(socks5.Reply(_socks_reply_for(exc))))
                return
            record.ip = checked.ip
            async with upstream:
                bound = upstream.local_address
                await stream.send(conn.send(socks5.Reply(socks5.ReplyCode.SUCCEEDED, *bound)))
                early = conn.trailing_data()
                if early:
                    record.up += len(early)
                    await upstream.send(early)
                record.reason = await self._splice(stream, upstream, client, record)
        finally:
            self._release(peer[0])
            self.metrics.stream_ended(record)

    async def _splice(
        self, a: TcpStream, b: TcpStream, client: _Client, record: StreamRecord
    ) -> str:
        """Copy both ways with half-close, until both directions ended."""
        reasons: list[str] = []
        idle = self.policy.limits.idle_timeout
        stall = self.config.upload_stall_timeout

        async with anyio.create_task_group() as group:
            scope = group.cancel_scope
            touch = _IdleTimer(scope, idle).touch

            async def copy(source: TcpStream, sink: TcpStream, up: bool) -> None:
                while True:
                    try:
                        data = await source.receive(self.config.read_size)
                    except anyio.EndOfStream:
                        with contextlib.suppress(OSError):
                            await sink.send_eof()
                        return
                    except OSError:
                        reasons.append("reset")
                        scope.cancel()
                        return
                    touch()
                    await self._throttle(client, len(data))
                    if up:
                        record.up += len(data)
                    else:
                        record.down += len(data)
                    try:
                        if up:
                            # A destination that takes nothing for this long
                            # ends the stream: the client may be long gone
                            # (nobody reads its socket while this waits).
                            with anyio.fail_after(stall):
                                await sink.send(data)
                        else:
                            await sink.send(data)
                    except TimeoutError:
                        reasons.append("upload-stalled")
                        scope.cancel()
                        return
                    except OSError:
                        reasons.append("reset")
                        scope.cancel()
                        return

            group.start_soon(copy, a, b, True)
            group.start_soon(copy, b, a, False)
        if scope.cancelled_caught and not reasons:
            return "idle-timeout"
        return reasons[0] if reasons else "closed"

    async def _socks5_associate(
        self,
        stream: TcpStream,
        conn: socks5.Socks5Connection,
        request: socks5.Request,
        peer: Address,
    ) -> None:
        record = StreamRecord("socks5", peer, request.host, request.port, transport="udp")
        try:
            client = self._admit(peer[0])
        except _ThrottledError as exc:
            await stream.send(conn.send(socks5.Reply(_socks_reply_for(exc))))
            return
        relay_ip = stream.local_address[0]
        assert self._listen_stack is not None
        relay = await self._listen_stack.open_udp(relay_ip, 0)
        upstream = await self.stack.open_udp("0.0.0.0", 0)
        upstream6: UdpSocket | None = None
        self.metrics.stream_opened(record)
        # The client may name its UDP source in the request; else the first
        # datagram from the TCP client's IP fixes it (RFC 1928 section 6).
        client_udp: Address | None = None
        if request.port and request.host not in ("0.0.0.0", "::"):
            client_udp = (request.host, request.port)
        checked: dict[tuple[str, int], str] = {}
        try:
            async with relay, upstream:
                await stream.send(
                    conn.send(socks5.Reply(socks5.ReplyCode.SUCCEEDED, *relay.local_address))
                )
                async with anyio.create_task_group() as group:

                    async def from_client() -> None:
                        nonlocal client_udp, upstream6
                        async for packet, source in relay:
                            if _plain_ip(source[0]) != _plain_ip(peer[0]):
                                continue
                            if client_udp is None:
                                client_udp = source
                            elif source != client_udp:
                                continue
                            try:
                                datagram = socks5.UdpDatagram.parse(packet)
                            except RemoteProtocolError:
                                continue
                            if datagram.fragment:
                                continue
                            key = (datagram.host, datagram.port)
                            ip = checked.get(key)
                            if ip is None:
                                try:
                                    with anyio.fail_after(self.policy.limits.connect_timeout):
                                        targets = await self.policy.resolve(
                                            self.stack,
                                            datagram.host,
                                            datagram.port,
                                            "udp",
                                            lookups=client.lookups,
                                        )
                                except (OSError, TimeoutError) as exc:
                                    if isinstance(exc, DestinationBlockedError):
                                        self.metrics.refusals.labels("socks5").inc()
                                    continue
                                if len(checked) >= MAX_CHECKED_DATAGRAM_DESTINATIONS:
                                    # Forget the oldest: a client naming ever new
                                    # destinations costs lookups, not memory.
                                    del checked[next(iter(checked))]
                                ip = checked[key] = targets[0].ip
                            await self._throttle(client, len(datagram.data))
                            record.up += len(datagram.data)
                            sock = upstream
                            if ":" in ip:
                                if upstream6 is None:
                                    upstream6 = await self.stack.open_udp("::", 0)
                                    group.start_soon(to_client, upstream6)
                                sock = upstream6
                            try:
                                await sock.send(datagram.data, (ip, datagram.port))
                            except OSError:
                                continue

                    async def to_client(sock: UdpSocket) -> None:
                        while True:
                            try:
                                data, source = await sock.receive()
                            except anyio.ClosedResourceError:
                                return
                            except OSError:
                                continue
                            if client_udp is None:
                                continue
                            record.down += len(data)
                            header = socks5.UdpDatagram(source[0], source[1], data).emit()
                            try:
                                await relay.send(header, client_udp)
                            except OSError:
                                continue

                    async def control() -> None:
                        # The association lives as long as its TCP connection.
                        while True:
                            try:
                                await stream.receive(4096)
                            except (anyio.EndOfStream, OSError):
                                break
                        group.cancel_scope.cancel()

                    group.start_soon(from_client)
                    group.start_soon(to_client, upstream)
                    group.start_soon(control)
        finally:
            if upstream6 is not None:
                await upstream6.aclose()
            record.reason = "closed"
            self._release(peer[0])
            self.metrics.stream_ended(record)


class _IdleTimer:
    """Cancels a scope once no data moved for ``idle`` seconds (``None``: never).

    Moving a cancel scope's deadline reschedules a timer in the event loop;
    doing it for every packet cost a tenth of a Wisp upload's CPU time.
    :meth:`touch` moves it only once a tenth of the idle time has passed,
    which keeps the timeout within 10 % of what was asked for.
    """

    __slots__ = ("clock", "idle", "last", "scope", "step")

    def __init__(
        self,
        scope: anyio.CancelScope,
        idle: float | None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.scope = scope
        self.idle = idle
        self.step = idle / 10 if idle is not None else 0.0
        # anyio's clock is the loop's under asyncio; read there directly it
        # also works from the loop's callbacks (see _DownloadSplice).
        self.clock: Callable[[], float] = anyio.current_time if loop is None else loop.time
        self.last = self.clock()
        if idle is not None:
            scope.deadline = self.last + idle

    def touch(self) -> None:
        if self.idle is not None:
            now = self.clock()
            if now - self.last >= self.step:
                self.last = now
                self.scope.deadline = now + self.idle


class _UploadBudget:
    """Upload bytes queued at the gateway against a limit: one per client IP, one in total.

    Sessions over a budget wait in :attr:`waiting` and are woken together once
    half of it is free again (not one packet at a time).
    """

    __slots__ = ("limit", "queued", "sessions", "waiting")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.queued = 0
        self.sessions = 0
        self.waiting: set[_SessionUploads] = set()

    @property
    def over(self) -> bool:
        return self.queued > self.limit

    def remove(self, nbytes: int) -> None:
        self.queued -= nbytes
        if self.waiting and self.queued <= self.limit // 2:
            waiting, self.waiting = self.waiting, set()
            for session in waiting:
                session.wake()


class _SessionUploads:
    """One Wisp session's queued upload bytes, counted against its client's and the total budget.

    A session pauses its reader only while a budget is over *and* it has
    bytes of its own queued: a client's new connection is never held up by
    what its earlier connections parked (it may read until it has queued
    something itself), so one read's worth per session is the overdraft.
    """

    __slots__ = ("budgets", "partial", "queued", "room")

    def __init__(self, budgets: tuple[_UploadBudget, ...]) -> None:
        self.budgets = budgets
        self.queued = 0
        # Received bytes of a message not yet whole (held by the frame reader).
        self.partial = 0
        self.room: anyio.Event | None = None

    def hold_partial(self, nbytes: int) -> None:
        """Count ``nbytes`` of an incomplete message instead of what was counted before."""
        if nbytes > self.partial:
            self.add(nbytes - self.partial)
        elif nbytes < self.partial:
            self.remove(self.partial - nbytes)
        self.partial = nbytes

    @property
    def blocked(self) -> bool:
        if self.queued > 0:
            for budget in self.budgets:
                if budget.queued > budget.limit:
                    return True
        return False

    def add(self, nbytes: int) -> None:
        self.queued += nbytes
        for budget in self.budgets:
            budget.queued += nbytes

    def remove(self, nbytes: int) -> None:
        self.queued -= nbytes
        for budget in self.budgets:
            budget.remove(nbytes)
        if self.queued == 0:
            self.wake()

    def wake(self) -> None:
        if self.room is not None:
            self.room.set()
            self.room = None

    async def wait_for_room(self) -> None:
        """Return once :attr:`blocked` is false; cancellable."""
        while self.blocked:
            self.room = room = anyio.Event()
            for budget in self.budgets:
                if budget.over:
                    budget.waiting.add(self)
            try:
                await room.wait()
            finally:
                for budget in self.budgets:
                    budget.waiting.discard(self)


class _WispStream:
    """One Wisp stream on the gateway: its upload queue and its task."""

    __slots__ = (
        "aborted_by_client",
        "budget",
        "client",
        "closed_by_client",
        "direct_failed",
        "forward",
        "held_packets",
        "in_transport",
        "kind",
        "listen",
        "progress_at",
        "queue",
        "queued_bytes",
        "record",
        "release_listener",
        "room",
        "scope",
        "stopping",
        "stream_id",
        "waiting",
        "wake",
    )

    def __init__(
        self, stream_id: int, kind: wisp.StreamType, record: StreamRecord, budget: _SessionUploads
    ) -> None:
        self.budget = budget
        # When the destination last took upload bytes (see _WispSession._wait_for_budget).
        self.progress_at = anyio.current_time()
        self.stream_id = stream_id
        self.kind = kind
        self.record = record
        # Payloads as they arrived: views into their WebSocket messages
        # (DATA on TCP streams, see WispConnection.take_data) or bytes.
        self.queue: deque[bytes | memoryview] = deque()
        self.queued_bytes = 0
        self.wake = anyio.Event()
        # Set while the stream's task waits on ``wake``: setting an Event
        # nobody waits on is wasted work on every DATA packet.
        self.waiting = False
        self.closed_by_client = False
        # The client's CLOSE said its side failed (NETWORK_ERROR): the
        # destination gets a reset, as a socket's abort gives, not an end.
        self.aborted_by_client = False
        # Set when the destination's side ended: the upload stops too.
        self.stopping = False
        # Set by the WebSocket reader while it waits for this queue to drain.
        self.room: anyio.Event | None = None
        self.scope = anyio.CancelScope()
        self.client: _Client | None = None
        # A LAN listener's request (its stream carries no bytes of its own).
        self.listen: wisp.Listen | None = None
        # Set while that listener is open: closes it and gives the member's
        # place back at once (see _WispSession._listener_body).
        self.release_listener: Callable[[], None] | None = None
        # Set while the upstream can take a packet at once, from the reader,
        # with nothing queued before it (a spliced LAN stream or a host
        # socket's transport, see _pump).
        self.forward: Callable[[bytes | memoryview], bool] | None = None
        # Bytes the reader wrote straight into the destination's transport
        # (_DirectUpload) that its socket did not take at once: counted in
        # ``queued_bytes`` and the budget, their packets' credits held back,
        # until the stream's task saw the transport drain.
        self.in_transport = 0
        self.held_packets = 0
        # Such a write found the transport gone: the stream's task ends it.
        self.direct_failed = False

    def push(self, data: bytes | memoryview) -> None:
        self.queue.append(data)
        self.queued_bytes += len(data)
        self.budget.add(len(data))
        if self.waiting:
            self.wake.set()

    def take_batch(self, limit: int) -> tuple[bytes, int]:
        """Dequeue packets up to ``limit`` bytes (at least one); their bytes and count.

        The bytes stay counted (in :attr:`queued_bytes` and the budget) until
        :meth:`sent`: while a write waits, the transport holds them.
        """
        parts, _ = self.take_parts(limit)
        if len(parts) == 1:
            first = parts[0]
            return first if isinstance(first, bytes) else bytes(first), 1
        return b"".join(parts), len(parts)

    def take_parts(self, limit: int) -> tuple[list[bytes | memoryview], int]:
        """Dequeue packets up to ``limit`` bytes (at least one), not joined; their size.

        For a transport that writes several buffers at once (``writev``): no
        copy of the batch.  Counted as with :meth:`take_batch`.
        """
        queue = self.queue
        first = queue.popleft()
        parts = [first]
        size = len(first)
        while queue and size + len(queue[0]) <= limit:
            part = queue.popleft()
            parts.append(part)
            size += len(part)
        return parts, size

    def sent(self, nbytes: int) -> None:
        """A batch from :meth:`take_batch` is written (or dropped): its bytes leave the budget."""
        nbytes = min(nbytes, self.queued_bytes)
        self.queued_bytes -= nbytes
        self.budget.remove(nbytes)

    def discard(self) -> None:
        """Drop what is still queued or being written: its bytes leave the budget. Idempotent."""
        self.queue.clear()
        if self.queued_bytes:
            self.budget.remove(self.queued_bytes)
            self.queued_bytes = 0

    def client_closed(self) -> None:
        self.closed_by_client = True
        self.wake.set()

    def make_room(self, low: int) -> None:
        """Let a waiting reader go on once at most ``low`` packets are queued (or always)."""
        if self.room is not None and len(self.queue) <= low:
            self.room.set()
            self.room = None


# One upstream write of a Wisp stream joins queued DATA packets up to this
# size: one system call and one await per 256 KiB cost less than the copy
# into the batch (measured with 64 KiB packets: 64 KiB batches, i.e. one
# write per packet, took 15 % more CPU per byte).
MAX_UPLOAD_BATCH = 256 * 1024

# Credits alone do not bound a stream's queue (see the flow-control notes in
# protocols/wisp.py): past this many windows the WebSocket reader stops until
# the stream drained one window.  Obedient clients get there only when refills
# cross DATA on the wire, so this rarely pauses the other streams; with
# DEFAULT_MAX_MESSAGE_SIZE packets it bounds a stream to 2 x 128 MiB at worst
# and to 2 x 8 MiB with wisp-js's 64 KiB packets.
QUEUE_BOUND_FACTOR = 2

# What _pump returns when it already sent the stream's CLOSE.
ALREADY_CLOSED = -1

# A UDP stream's queue drops datagrams past this many, as a full socket buffer would.
MAX_QUEUED_DATAGRAMS = 256


class _WispSession:
    """One Wisp connection: its handshake (and LAN join), its streams and listeners."""

    def __init__(
        self,
        gateway: Gateway,
        websocket: WebSocket,
        peer: Address,
        version: int,
        *,
        logged_in: bool = False,
    ) -> None:
        self.gateway = gateway
        self.config = gateway.config
        self.ws = websocket
        self.peer = peer
        # Logged in by HTTP Basic already: the Wisp handshake asks no password.
        self.login_required = bool(self.config.users) and not logged_in
        extensions: list[wisp.Extension] = []
        if gateway.policy.allow_udp:
            extensions.append(wisp.UdpExtension())
        if self.login_required:
            extensions.append(wisp.PasswordAuthExtension(required=True))
        if self.config.motd:
            extensions.append(wisp.MotdExtension(self.config.motd))
        extensions.append(wisp.StreamConfirmationExtension())
        self.hub = gateway.lans
        if self.hub is not None:
            extensions.append(wisp.LanExtension())
        # The LAN member this client became in its handshake, if it joined one.
        self.member: LanMember | None = None
        # Set when the client is another gateway of the cluster relaying streams.
        self.relay: GatewayCluster | None = None
        self.group: anyio.abc.TaskGroup | None = None
        self._next_server_stream = wisp.SERVER_STREAM_BASE
        self.conn = wisp.WispConnection(
            wisp.Role.SERVER,
            version=version,
            extensions=extensions,
            buffer_size=self.config.wisp_buffer_size,
            udp=gateway.policy.allow_udp,
        )
        self.streams: dict[int, _WispStream] = {}
        # Every stream whose queue still counts against the budget, including
        # those already gone from ``streams`` but still finishing.
        self.holding: set[_WispStream] = set()
        self.budget = gateway._upload_budget(peer[0])
        # A stream whose queue went past QUEUE_BOUND_FACTOR windows; the reader
        # waits for it to drain back to one window before reading on.
        self.full: _WispStream | None = None
        # Under asyncio (and uvloop) a CONNECT stream runs as a bare task of
        # this loop, its upload as another (see _spawn); under trio both are
        # children of the session's task group, as everything else is.
        self.loop = _running_asyncio_loop()
        self.tasks: set[asyncio.Task[None]] = set()
        # Spliced LAN streams whose packets the reader passed on (_forwarder)
        # and whose reading sessions hold them until _flush_forwarded.
        # Host destinations the reader wrote to (_DirectUpload), the same way.
        self.flushing: list[SplicedStream | _DirectUpload] = []

    async def _wait_for_room(self) -> None:
        stream = self.full
        self.full = None
        window = self.conn.buffer_size
        if stream is None or len(stream.queue) <= window:
            return
        if self.streams.get(stream.stream_id) is not stream:
            return
        stream.room = anyio.Event()
        await stream.room.wait()

    async def _wait_for_budget(self) -> None:
        """Wait for upload room; close streams whose destinations stall meanwhile (see above)."""
        timeout = self.config.upload_stall_timeout
        while self.budget.blocked:
            paused_at = anyio.current_time()
            with anyio.move_on_after(timeout):
                await self.budget.wait_for_room()
                return
            for stream in list(self.streams.values()):
                if stream.queued_bytes and stream.progress_at <= paused_at:
                    logger.info(
                        "upload-stalled protocol=wisp client=%s stream=%s queued=%d seconds=%.0f",
                        format_address(self.peer),
                        stream.stream_id,
                        stream.queued_bytes,
                        timeout,
                    )
                    stream.record.reason = "upload-stalled"
                    self._finish(stream, wisp.CloseReason.TRANSFER_TIMEOUT)
                    stream.discard()
                    stream.scope.cancel()

    def _send_event(self, event: wisp.Event) -> None:
        # LocalProtocolError: the stream was already closed; nothing to say.
        with contextlib.suppress(LocalProtocolError):
            self.ws.send_nowait(self.conn.send(event))

    def _credit_written(self, stream_id: int, packets: int) -> None:
        """``packets`` DATA packets of the stream left for its destination: CONTINUE if due."""
        refill = self.conn.release(stream_id, packets)
        if refill is not None:
            self._send_event(refill)

    async def _handshake(self) -> bool:
        self.ws.send_nowait(self.conn.initiate())
        if self.conn.version == 1:
            return True
        with anyio.move_on_after(HANDSHAKE_TIMEOUT):
            while self.conn.state is wisp.ConnectionState.INFO_SENT:
                message = await self.ws.receive()
                if message is None:
                    return False
                if isinstance(message, str):
                    continue
                self.conn.receive_data(message)
                try:
                    list(self.conn.events())
                except RemoteProtocolError as exc:
                    reason = exc.hint or wisp.CloseReason.INCOMPATIBLE_EXTENSIONS
                    self.ws.send_nowait(_close0(reason))
                    return False
        if self.conn.state is not wisp.ConnectionState.INFO_RECEIVED:
            return False
        if self.login_required:
            credentials = self.conn.credentials
            if credentials is None:
                reason = wisp.CloseReason.AUTH_MISSING_CREDENTIALS
            else:
                ok = _login_ok(self.config.users, credentials.username, credentials.password)
                reason = 0 if ok else wisp.CloseReason.AUTH_BAD_PASSWORD
            if reason:
                self.gateway.metrics.auth_failures.labels("wisp").inc()
                logger.info(
                    "auth-failed protocol=wisp client=%s reason=%s",
                    format_address(self.peer),
                    wisp.CloseReason(reason).name,
                )
                self.ws.send_nowait(self.conn.send(wisp.Close(0, reason)))
                return False
        others: list[MemberRecord] = []
        if self.hub is not None and self.conn.lan_enabled:
            refusal, others = await self._join_lan()
            if refusal:
                self.ws.send_nowait(self.conn.send(wisp.Close(0, refusal)))
                return False
        self.ws.send_nowait(self.conn.send(wisp.Continue(0, self.conn.buffer_size)))
        member = self.member
        if self.relay is not None:
            self._send_event(
                wisp.Membership(wisp.MembershipChange.JOINED, RELAY_ADDRESS, RELAY_NAME)
            )
        if member is not None:
            # Nothing awaited since the join: no news can have been lost or
            # sent before these.
            self._send_event(
                wisp.Membership(
                    wisp.MembershipChange.JOINED,
                    member.address,
                    member.dns_name,
                    member.lan.prefix_length,
                )
            )
            for other in others:
                self._send_event(
                    wisp.Membership(
                        wisp.MembershipChange.MEMBER_JOINED, other.address, other.dns_name
                    )
                )
        return True

    async def _join_lan(self) -> tuple[int, list[MemberRecord]]:
        """Join the LAN asked for: a CLOSE reason (0: joined, or none asked) and the others."""
        request = self.conn.lan_request
        hub = self.hub
        if hub is None or request is None or not request.lan:
            return 0, []
        lan = request.lan.lower()
        cluster = self.gateway.cluster
        if lan == RELAY_LAN and cluster is not None and cluster.secret_matches(request.token):
            self.relay = cluster
            logger.info("cluster-relay client=%s", format_address(self.peer))
            return 0, []
        expected = hub.token_of(lan)
        # An unknown LAN costs the same comparison as a known one, and both
        # get the same answer.
        same = _secret_in(
            request.token, [expected if expected is not None else request.token + "\x00"]
        )
        peer = format_address(self.peer)
        if expected is None or not same:
            self.gateway.metrics.auth_failures.labels("wisp").inc()
            logger.info("auth-failed protocol=wisp client=%s reason=lan-token lan=%r", peer, lan)
            return wisp.CloseReason.AUTH_BAD_PASSWORD, []
        try:
            self.member, others = await hub.join(lan, request.member, self._send_event)
        except NameInUseError as exc:
            logger.info("lan-refused client=%s reason=name-in-use detail=%r", peer, str(exc))
            return wisp.CloseReason.NAME_IN_USE, []
        except ValueError as exc:
            logger.info("lan-refused client=%s reason=bad-name detail=%r", peer, str(exc))
            return wisp.CloseReason.INVALID_INFO, []
        except OSError as exc:
            logger.info("lan-refused client=%s reason=full detail=%r", peer, str(exc))
            return wisp.CloseReason.THROTTLED, []
        logger.info(
            "lan-joined client=%s lan=%s name=%s address=%s",
            peer,
            lan,
            self.member.dns_name,
            self.member.address,
        )
        return 0, others

    async def _leave_lan(self) -> None:
        member, self.member = self.member, None
        if member is not None and self.hub is not None:
            with anyio.CancelScope(shield=True):
                await self.hub.leave(member)
            logger.info(
                "lan-left client=%s lan=%s name=%s",
                format_address(self.peer),
                member.lan.name,
                member.dns_name,
            )

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            await self._leave_lan()
            # Streams whose tasks never ran (or were cut) give their bytes back.
            for stream in self.holding:
                stream.discard()
            self.holding.clear()
            self.budget.hold_partial(0)
            self.gateway._end_session(self.peer[0])

    async def _run(self) -> None:
        if not await self._handshake():
            return
        idle = self.gateway.policy.limits.idle_timeout
        quiet_since = anyio.current_time()
        async with anyio.create_task_group() as group:
            self.group = group
            try:
                while True:
                    await self.ws.wait_output_room()
                    if self.full is not None:
                        await self._wait_for_room()
                    if self.budget.blocked:
                        await self._wait_for_budget()
                    if self.streams or idle is None:
                        message = await self.ws.receive()
                    else:
                        # A connection with no stream open lives as long as a
                        # stream that moves nothing would.
                        with anyio.CancelScope(deadline=quiet_since + idle) as waited:
                            message = await self.ws.receive()
                        if waited.cancelled_caught:
                            if self.streams:
                                continue
                            logger.info(
                                "idle-connection protocol=wisp client=%s seconds=%.0f",
                                format_address(self.peer),
                                idle,
                            )
                            break
                    if self.streams:
                        quiet_since = anyio.current_time()
                    self.budget.hold_partial(self.ws.buffered_bytes)
                    if message is None:
                        break
                    if isinstance(message, str):
                        continue
                    if self._take_data(message):
                        continue
                    self.conn.receive_data(message)
                    try:
                        for event in self.conn.events():
                            self._dispatch(event, group)
                    except RemoteProtocolError:
                        break
                    finally:
                        if self.flushing:
                            self._flush_forwarded()
                    if self.conn.state is wisp.ConnectionState.CLOSED:
                        break
            finally:
                for stream in list(self.streams.values()):
                    stream.client_closed()
                    if stream.listen is not None:
                        stream.scope.cancel()
                # Its listeners close and the other members hear of it now,
                # not after the streams' last bytes.
                try:
                    await self._leave_lan()
                finally:
                    # Streams finish their queued uploads and stop; downloads end now.
                    deadline = anyio.current_time() + CLOSE_WAIT
                    group.cancel_scope.deadline = deadline
                    await self._end_tasks(deadline)

    def _spawn(
        self,
        group: anyio.abc.TaskGroup,
        stream: _WispStream,
        body: Callable[[], Awaitable[None]],
        where: str,
    ) -> None:
        """Run a stream's ``body`` in its wall (:meth:`_walled`), in a task of its own.

        Under asyncio a bare task of the loop, which :meth:`_end_tasks` ends
        with the session: a spawn through anyio's task group cost several
        times as much (its cancel scope, its task state, a check of the
        running loop per step), a share of every connect's CPU time.
        """
        if self.loop is None:
            group.start_soon(self._walled, stream, body, where, name=where)
            return
        task = self.loop.create_task(self._walled(stream, body, where))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _end_tasks(self, deadline: float) -> None:
        """Give the bare stream tasks until ``deadline`` to finish, then cancel what is left.

        What the session's task group does for its children: the session
        ends only once every stream task has ended, so no stream outlives it.
        """
        tasks = self.tasks
        try:
            if tasks:
                with anyio.CancelScope(deadline=deadline):
                    await asyncio.wait(set(tasks))
        finally:
            # A cancellation of this task (pending, or arriving meanwhile)
            # does not cut the wait short: cancelled, they end at once.
            while tasks:
                for task in tasks:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait(set(tasks))

    def _dispatch(self, event: wisp.Event, group: anyio.abc.TaskGroup) -> None:
        if isinstance(event, wisp.Connect):
            transport = "udp" if event.stream_type is wisp.StreamType.UDP else "tcp"
            record = StreamRecord("wisp", self.peer, event.host, event.port, transport=transport)
            new = _WispStream(event.stream_id, event.stream_type, record, self.budget)
            self.streams[event.stream_id] = new
            self.holding.add(new)
            self._spawn(group, new, functools.partial(self._admitted_stream, new), "wisp-stream")
        elif isinstance(event, wisp.Listen):
            kind = "udp" if event.stream_type is wisp.StreamType.UDP else "tcp"
            record = StreamRecord(
                "lan", self.peer, event.host or "-", event.port, transport=f"{kind}-listener"
            )
            new = _WispStream(event.stream_id, event.stream_type, record, self.budget)
            new.listen = event
            self.streams[event.stream_id] = new
            self.holding.add(new)
            body = functools.partial(self._listener_body, new)
            group.start_soon(self._walled, new, body, "wisp-listener", name="wisp-listener")
        elif isinstance(event, wisp.Data):
            self._data(event.stream_id, event.data)
        elif isinstance(event, wisp.Close):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.record.reason = f"client:{_reason(event.reason)}"
                if event.reason == wisp.CloseReason.NETWORK_ERROR:
                    stream.aborted_by_client = True
                stream.client_closed()
                if stream.listen is not None:
                    if stream.release_listener is not None:
                        stream.release_listener()
                    stream.scope.cancel()
        elif isinstance(event, wisp.PacketRejected):
            logger.info(
                "rejected protocol=wisp client=%s stream=%s detail=%r",
                format_address(self.peer),
                event.stream_id,
                event.detail,
            )
            response = event.response()
            if event.stream_id is not None:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.record.reason = _reason(event.reason)
                    stream.scope.cancel()
            if response is not None:
                self.ws.send_nowait(_close_bytes(response))

    def _take_data(self, message: bytes) -> bool:
        """Queue ``message`` if it is DATA on a TCP stream, and the like messages behind it.

        The bulk of an upload: no event and no copy of the payload (see
        :meth:`WispConnection.take_data`), and the messages the WebSocket
        already holds go without a turn of the reading loop each, for as
        long as no limit the loop checks is reached.  False (nothing done)
        for any other message.
        """
        conn, ws, budget = self.conn, self.ws, self.budget
        taken = conn.take_data(message)
        if taken is None:
            return False
        self._data(*taken)
        while self.full is None and not budget.blocked:
            waiting = ws.ready_message()
            if not isinstance(waiting, bytes):
                break
            taken = conn.take_data(waiting)
            if taken is None:
                break
            ws.drop_message()
            self._data(*taken)
        if self.flushing:
            self._flush_forwarded()
        return True

    def _flush_forwarded(self) -> None:
        """Write out the packets passed on to other members (see :meth:`_forwarder`)."""
        flushing = self.flushing
        for upstream in flushing:
            upstream.flush()
        flushing.clear()

    def _data(self, stream_id: int, data: bytes | memoryview) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        # Nothing queued or being written (queued_bytes counts both): the
        # packet may overtake nothing.
        forward = stream.forward
        if forward is not None and not stream.queued_bytes and forward(data):
            return
        if stream.kind is wisp.StreamType.UDP:
            if len(stream.queue) >= MAX_QUEUED_DATAGRAMS:
                return
        elif len(stream.queue) >= QUEUE_BOUND_FACTOR * self.conn.buffer_size:
            self.full = stream
        stream.push(data)

    async def _walled(
        self, stream: _WispStream, body: Callable[[], Awaitable[None]], where: str
    ) -> None:
        """Run ``body``, a stream's or a listener's task, inside its wall (see the module docs).

        An exception ends that stream alone: counted as an internal error at
        ``where``, its ``CLOSE`` says ``NETWORK_ERROR``.  However it ends,
        whatever its queue still holds leaves the client's budget and the
        stream leaves the session.
        """
        try:
            await body()
        except Exception as exc:
            self.gateway._contain(exc, where, self.peer, stream.stream_id)
            if stream.record.reason == "-":
                stream.record.reason = "internal-error"
            self._finish(stream, wisp.CloseReason.NETWORK_ERROR)
        finally:
            stream.discard()
            self.holding.discard(stream)
            if self.streams.get(stream.stream_id) is stream:
                del self.streams[stream.stream_id]

    async def _admitted_stream(self, stream: _WispStream) -> None:
        gateway = self.gateway
        record = stream.record
        try:
            stream.client = gateway._admit(self.peer[0])
        except _ThrottledError as exc:
            record.reason = "THROTTLED"
            gateway.metrics.streams_closed.labels("wisp", record.reason).inc()
            logger.info("%s detail=%r", record.line(), str(exc))
            self._finish(stream, wisp.CloseReason.THROTTLED)
            return
        gateway.metrics.stream_opened(record)
        try:
            with stream.scope:
                await self._stream_body(stream)
        finally:
            gateway._release(self.peer[0])
            self.streams.pop(stream.stream_id, None)
            stream.make_room(len(stream.queue))
            gateway.metrics.stream_ended(record)

    def _finish(self, stream: _WispStream, reason: int) -> None:
        if not stream.closed_by_client:
            self._send_event(wisp.Close(stream.stream_id, reason))
        if stream.record.reason == "-":
            stream.record.reason = _reason(reason)
        self.streams.pop(stream.stream_id, None)

    async def _stream_body(self, stream: _WispStream) -> None:
        gateway, record = self.gateway, stream.record
        policy = gateway.policy
        assert stream.client is not None
        lookups = stream.client.lookups
        upstream: TcpStream | UdpSocket
        try:
            with anyio.fail_after(policy.limits.connect_timeout):
                lan_ip = None
                if self.member is not None and self.hub is not None:
                    # A member's own LAN is reached inside the gateway, not
                    # through the policy that guards the outside.
                    lan_ip = await self.hub.destination(self.member, record.host)
                if self.relay is not None:
                    # Another gateway's member to one of ours, and nothing else.
                    if stream.kind is wisp.StreamType.UDP:
                        upstream = await self.relay.accept_udp(record.host, record.port)
                    else:
                        upstream = await self.relay.accept(record.host, record.port)
                    target_ip = (upstream.remote_address or (record.host,))[0]
                elif lan_ip is not None:
                    upstream = await self._connect_lan(
                        self.member, stream.kind, lan_ip, record.port
                    )
                    target_ip = lan_ip
                elif stream.kind is wisp.StreamType.TCP:
                    upstream, target = await policy.connect_tcp(
                        gateway.stack, record.host, record.port, lookups=lookups
                    )
                    target_ip = target.ip
                else:
                    upstream, target = await policy.open_udp(
                        gateway.stack, record.host, record.port, lookups=lookups
                    )
                    target_ip = target.ip
        except (OSError, TimeoutError) as exc:
            reason = _close_reason_for(exc)
            if isinstance(exc, DestinationBlockedError):
                gateway.metrics.refusals.labels("wisp").inc()
                logger.info("refused protocol=wisp client=%s %s", format_address(self.peer), exc)
            self._finish(stream, reason)
            return
        record.ip = target_ip
        async with upstream:
            if stream.closed_by_client and not stream.queue:
                return
            confirmation = self.conn.confirm(stream.stream_id)
            if confirmation is not None:
                self._send_event(confirmation)
            end_reason = await self._pump(stream, upstream)
            if end_reason != ALREADY_CLOSED:
                self._finish(stream, end_reason)

    async def _connect_lan(
        self, member: LanMember | None, kind: wisp.StreamType, ip: str, port: int
    ) -> TcpStream | UdpSocket:
        assert member is not None
        if kind is wisp.StreamType.TCP:
            cluster = self.gateway.cluster
            # A member of another gateway of the cluster: relayed to it.
            relayed = None if cluster is None else await cluster.connect(member, ip, port)
            assert self.hub is not None
            return relayed or await self.hub.connect_member(member, ip, port)
        local = member.record.address6 if ":" in ip else member.address
        cluster = self.gateway.cluster
        relayed_udp = None if cluster is None else await cluster.open_udp(member, ip, port)
        return relayed_udp or await member.host.open_udp(local, 0, remote=(ip, port))

    # -- LAN listeners (docs/lan.md)

    def _listen_address(self, member: LanMember, host: str, port: int) -> str:
        """Where a member's listener binds: its own addresses (or all of them) only."""
        text = host.lower().rstrip(".")
        if not text:
            return member.address
        if text in ("0.0.0.0", "::"):
            return text
        if text == member.dns_name:
            return member.address
        ip = parse_ip(text)
        if ip is not None and member.owns(str(ip)):
            return str(ip)
        raise os_error(errno.EADDRNOTAVAIL, f"{format_address((host, port))} is not this member's")

    async def _listener_body(self, stream: _WispStream) -> None:
        gateway, record, listen = self.gateway, stream.record, stream.listen
        assert listen is not None
        member, hub = self.member, self.hub
        if member is None or hub is None:
            logger.info(
                "listen-refused client=%s stream=%s reason=not-a-member",
                format_address(self.peer),
                stream.stream_id,
            )
            self._finish(stream, wisp.CloseReason.NOT_A_MEMBER)
            return
        if member.listeners >= hub.listeners_per_member:
            logger.info(
                "listen-refused client=%s stream=%s reason=quota listeners=%d",
                format_address(self.peer),
                stream.stream_id,
                member.listeners,
            )
            self._finish(stream, wisp.CloseReason.LISTEN_QUOTA)
            return
        udp = listen.stream_type is wisp.StreamType.UDP
        socket_: TcpListener | UdpSocket
        try:
            address = self._listen_address(member, listen.host, listen.port)
            if udp:
                socket_ = await member.host.open_udp(address, listen.port)
            else:
                socket_ = await member.host.listen_tcp(address, listen.port)
        except OSError as exc:
            in_use = exc.errno == errno.EADDRINUSE
            record.reason = "EADDRINUSE" if in_use else type(exc).__name__
            logger.info(
                "listen-refused client=%s stream=%s error=%r",
                format_address(self.peer),
                stream.stream_id,
                str(exc),
            )
            self._finish(
                stream,
                wisp.CloseReason.ADDRESS_IN_USE if in_use else wisp.CloseReason.INVALID_INFO,
            )
            return
        member.listeners += 1
        released = False

        def release() -> None:
            # Called by the reader when the client's CLOSE arrives, before
            # this task ends: as close() on Linux, the port and the member's
            # place are free at once, so a listen that follows straight away
            # (a server restarting) is not refused.
            nonlocal released
            if released:
                return
            released = True
            stream.release_listener = None
            member.listeners -= 1
            close_now = getattr(socket_, "close_now", None)
            if close_now is not None:
                close_now()

        stream.release_listener = release
        gateway.metrics.stream_opened(record)
        registered: tuple[str, int] | None = None
        try:
            async with socket_:
                bound = socket_.local_address
                record.host, record.port, record.ip = member.dns_name, bound[1], bound[0]
                try:
                    gateway._listen_policy.check(
                        member.dns_name, bound[0], bound[1], "udp" if udp else "tcp"
                    )
                except DestinationBlockedError as exc:
                    gateway.metrics.refusals.labels("wisp").inc()
                    logger.info(
                        "listen-refused client=%s stream=%s %s",
                        format_address(self.peer),
                        stream.stream_id,
                        exc,
                    )
                    self._finish(stream, wisp.CloseReason.BLOCKED)
                    return
                # Known to the directory before the client hears it listens.
                registered = ("udp" if udp else "tcp", bound[1])
                await hub.directory.add_listener(member.lan.name, member.name, *registered)
                self._send_event(wisp.Listening(stream.stream_id, bound[0], bound[1]))
                reason: int = wisp.CloseReason.VOLUNTARY
                with stream.scope:
                    if isinstance(socket_, TcpListener):
                        await self._accept_loop(stream, socket_)
                    else:
                        reason = await self._udp_listener_pump(stream, socket_, member)
                # Cancelled: the client closed it, or its CLOSE is already out.
                if not stream.scope.cancel_called:
                    self._finish(stream, reason)
        finally:
            release()
            gateway.metrics.stream_ended(record)
            if registered is not None:
                with anyio.CancelScope(shield=True):
                    await hub.directory.remove_listener(member.lan.name, member.name, *registered)

    async def _accept_loop(self, stream: _WispStream, listener: TcpListener) -> None:
        """Offer each connection to the client as a server-opened stream, till the listener ends."""
        while True:
            # A client that reads nothing gets no more ACCEPTs than fit in
            # its control allowance: the connections wait in the backlog.
            await self.ws.wait_output_room()
            try:
                connection = await listener.accept()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            if self.hub is not None and self.member is not None:
                # Another member's stream is served spliced (docs/lan.md).
                connection = self.hub.accepted(self.member, connection)
            await self._accepted(stream, connection)

    def _new_server_stream_id(self) -> int:
        while True:
            stream_id = self._next_server_stream
            self._next_server_stream += 1
            if self._next_server_stream > wisp.MAX_STREAM_ID:
                self._next_server_stream = wisp.SERVER_STREAM_BASE
            if stream_id not in self.streams:
                return stream_id

    async def _accepted(self, listener: _WispStream, connection: TcpStream) -> None:
        gateway = self.gateway
        peer = connection.remote_address
        record = StreamRecord("lan", self.peer, peer[0], peer[1])
        record.ip = peer[0]
        try:
            client = gateway._admit(self.peer[0])
        except _ThrottledError as exc:
            record.reason = "THROTTLED"
            gateway.metrics.streams_closed.labels("lan", record.reason).inc()
            logger.info("%s detail=%r", record.line(), str(exc))
            await connection.abort()
            return
        stream_id = self._new_server_stream_id()
        try:
            packet = self.conn.send(wisp.Accept(stream_id, listener.stream_id, peer[0], peer[1]))
        except LocalProtocolError:
            # The client closed the listener a moment ago.
            gateway._release(self.peer[0])
            await connection.abort()
            return
        self.ws.send_nowait(packet)
        new = _WispStream(stream_id, wisp.StreamType.TCP, record, self.budget)
        new.client = client
        self.streams[stream_id] = new
        self.holding.add(new)
        assert self.group is not None
        body = functools.partial(self._run_accepted, new, connection)
        self.group.start_soon(self._walled, new, body, "wisp-stream", name="wisp-stream")

    async def _run_accepted(self, stream: _WispStream, connection: TcpStream) -> None:
        """An accepted connection works as a CONNECT stream does, in :meth:`_pump`."""
        gateway = self.gateway
        gateway.metrics.stream_opened(stream.record)
        try:
            with stream.scope:
                async with connection:
                    end_reason = await self._pump(stream, connection)
                    if end_reason != ALREADY_CLOSED:
                        self._finish(stream, end_reason)
        finally:
            gateway._release(self.peer[0])
            if self.streams.get(stream.stream_id) is stream:
                del self.streams[stream.stream_id]
            stream.make_room(len(stream.queue))
            gateway.metrics.stream_ended(stream.record)

    async def _udp_listener_pump(
        self, stream: _WispStream, sock: UdpSocket, member: LanMember
    ) -> int:
        """Addressed datagrams both ways between the client and a member's UDP socket.

        Datagrams go to LAN destinations only (others are dropped, as by a
        router with no route); a malformed one ends the stream with
        ``INVALID_INFO``.  Returns the CLOSE reason.
        """
        hub = self.hub
        assert hub is not None
        record = stream.record
        client = stream.client or self.gateway._clients.get(self.peer[0])
        outcome: list[int] = []
        header = wisp.data_header(stream.stream_id)

        async with anyio.create_task_group() as group:
            scope = group.cancel_scope

            async def upload() -> None:
                while True:
                    while not stream.queue:
                        if stream.closed_by_client:
                            scope.cancel()
                            return
                        stream.waiting = True
                        try:
                            await stream.wake.wait()
                        finally:
                            stream.waiting = False
                        stream.wake = anyio.Event()
                    data, _ = stream.take_batch(0)
                    stream.sent(len(data))
                    try:
                        host, port, payload = wisp.parse_datagram(data)
                    except ValueError as exc:
                        record.reason = "malformed-datagram"
                        logger.info(
                            "rejected protocol=wisp client=%s stream=%s detail=%r",
                            format_address(self.peer),
                            stream.stream_id,
                            str(exc),
                        )
                        outcome.append(wisp.CloseReason.INVALID_INFO)
                        scope.cancel()
                        return
                    try:
                        ip = await hub.destination(member, host)
                    except OSError:
                        continue
                    if ip is None:
                        continue
                    if client is not None:
                        await self.gateway._throttle(client, len(payload))
                    try:
                        await sock.send(payload, (ip, port))
                    except OSError:
                        continue
                    record.up += len(payload)

            async def download() -> None:
                while True:
                    try:
                        payload, source = await sock.receive()
                    except (anyio.ClosedResourceError, anyio.EndOfStream):
                        scope.cancel()
                        return
                    except OSError:
                        continue
                    if client is not None:
                        await self.gateway._throttle(client, len(payload))
                    address = wisp.pack_datagram(source[0], source[1], b"")
                    await self.ws.send(payload, prefix=header + address)
                    record.down += len(payload)

            group.start_soon(upload, name="wisp-upload")
            await download()
        return outcome[0] if outcome else wisp.CloseReason.VOLUNTARY

    async def _pump(self, stream: _WispStream, upstream: TcpStream | UdpSocket) -> int:
        """Move data both ways until one side ends; return the CLOSE reason to send.

        Returns :data:`ALREADY_CLOSED` when the destination ended the stream
        and its ``CLOSE`` was sent already.
        """
        record = stream.record
        idle = self.gateway.policy.limits.idle_timeout
        outcome: list[int] = []
        client = stream.client
        assert client is not None

        # Under asyncio the upload is a bare task (see _spawn).
        async with _task_group(self.loop) as group:
            scope = group.cancel_scope
            touch = _IdleTimer(scope, idle, self.loop).touch
            tcp = isinstance(upstream, TcpStream)
            # A host socket on asyncio: batches go to its transport as they
            # are, one writev on uvloop instead of a join and a write.
            direct = socket_transport(upstream) if tcp else None
            if isinstance(upstream, SplicedStream) and client.bandwidth is None:
                stream.forward = self._forwarder(stream, upstream, touch)
            elif direct is not None and self.loop is not None and client.bandwidth is None:
                # The reader writes DATA straight into the transport while
                # nothing is queued and the socket keeps up (_DirectUpload).
                writer = _DirectUpload(self, stream, *direct, touch)
                stream.forward = writer.forward
                # What the client sent before the connect completed (it did
                # not wait for the confirmation) leaves now, not a turn of
                # the loop later from the upload task.
                writer.write_queued()

            async def upload() -> None:
                while not stream.stopping:
                    while (
                        not stream.queue and not stream.in_transport
                    ) or stream.aborted_by_client:
                        if stream.stopping:
                            return
                        if stream.aborted_by_client and isinstance(upstream, TcpStream):
                            # What the client had not yet sent is dropped with the
                            # connection, as a reset drops a socket's unsent bytes.
                            stream.discard()
                            with contextlib.suppress(OSError):
                                await upstream.abort()
                            outcome.append(0)
                            scope.cancel()
                            return
                        if stream.closed_by_client:
                            # Everything the client sent before its CLOSE is delivered.
                            if isinstance(upstream, TcpStream):
                                with contextlib.suppress(OSError):
                                    await upstream.send_eof()
                            outcome.append(0)
                            scope.cancel()
                            return
                        stream.waiting = True
                        try:
                            await stream.wake.wait()
                        finally:
                            stream.waiting = False
                        stream.wake = anyio.Event()
                    if stream.in_transport:
                        assert direct is not None
                        # The reader's direct writes: their bytes leave the
                        # budget and their credits go back once the socket
                        # took them all, as a batch of this task's would.
                        protocol = direct[1]
                        if not stream.direct_failed and not protocol.write_event.is_set():
                            await protocol.write_event.wait()
                        size, packets = stream.in_transport, stream.held_packets
                        stream.in_transport = stream.held_packets = 0
                        stream.sent(size)
                        if stream.direct_failed or protocol.exception is not None:
                            outcome.append(wisp.CloseReason.NETWORK_ERROR)
                            scope.cancel()
                            return
                        stream.progress_at = anyio.current_time()
                        touch()
                        self._credit_written(stream.stream_id, packets)
                        continue
                    if direct is not None:
                        parts, size = stream.take_parts(MAX_UPLOAD_BATCH)
                        packets = len(parts)
                        stream.make_room(self.conn.buffer_size)
                        if client.bandwidth is not None:
                            await self.gateway._throttle(client, size)
                        try:
                            await _write_parts(*direct, parts)
                        except OSError:
                            stream.sent(size)
                            outcome.append(wisp.CloseReason.NETWORK_ERROR)
                            scope.cancel()
                            return
                    else:
                        if tcp:
                            # Everything queued goes upstream in one write: one
                            # await and one CONTINUE check per batch instead of
                            # per packet, which is what a fast client's queue holds.
                            data, packets = stream.take_batch(MAX_UPLOAD_BATCH)
                            stream.make_room(self.conn.buffer_size)
                        else:
                            # One datagram each: a limit of 0 takes exactly one.
                            data, packets = stream.take_batch(0)
                        size = len(data)
                        await self.gateway._throttle(client, size)
                        try:
                            await upstream.send(data)
                        except OSError:
                            stream.sent(size)
                            if tcp:
                                outcome.append(wisp.CloseReason.NETWORK_ERROR)
                                scope.cancel()
                                return
                            continue
                    stream.sent(size)
                    record.up += size
                    stream.progress_at = anyio.current_time()
                    touch()
                    self._credit_written(stream.stream_id, packets)

            async def download() -> None:
                # The hot path builds DATA directly (the core's checks were
                # done at CONNECT); the WebSocket joins it with the payload.
                data_header = wisp.data_header(stream.stream_id)
                # A host socket on asyncio is read from its protocol's queue
                # directly: the stream's receive adds a guard and, with a
                # chunk already queued, a trip round the event loop.
                direct = (
                    socket_transport(upstream)
                    if isinstance(upstream, TcpStream) and not isinstance(upstream, SplicedStream)
                    else None
                )
                read_size = self.config.read_size
                # Under asyncio the reads of a host destination go to the client
                # from the read callback (_DownloadSplice), unless a bandwidth
                # limit needs a task to wait in.
                splice = (
                    _DownloadSplice(
                        *direct,
                        self.ws,
                        data_header,
                        read_size,
                        record,
                        touch,
                        functools.partial(self._finish, stream, wisp.CloseReason.VOLUNTARY),
                    )
                    if direct is not None
                    and self.loop is not None
                    and self.ws.calls_when_room
                    and client.bandwidth is None
                    else None
                )

                async def deliver(data: bytes) -> None:
                    await self.gateway._throttle(client, len(data))
                    await self.ws.send(data, prefix=data_header)
                    record.down += len(data)
                    touch()

                ws = self.ws
                # Packets another member's reader passed on, held until its
                # flush so that they leave as one message (see _forwarder).
                held: list[bytes | memoryview] = []
                held_size = 0

                def flush_now() -> None:
                    nonlocal held_size
                    if held:
                        ws.send_parts_nowait(held, prefix=data_header)
                        record.down += held_size
                        held.clear()
                        held_size = 0
                        touch()

                def deliver_now(data: bytes | memoryview) -> bool:
                    # What ``deliver`` does when it would not wait.
                    nonlocal held_size
                    if client.bandwidth is not None or not ws.has_room:
                        return False
                    held.append(data)
                    held_size += len(data)
                    if held_size >= MAX_UPLOAD_BATCH:
                        flush_now()
                    return True

                while True:
                    try:
                        if splice is not None:
                            assert self.loop is not None
                            await splice.run(self.loop)
                        if isinstance(upstream, SplicedStream):
                            # Another member's uploads call ``deliver`` (or,
                            # from its session's reader, ``deliver_now``);
                            # this returns only at the end.
                            await upstream.deliver_to(deliver, deliver_now, flush_now)
                        if direct is not None:
                            data = await _read_chunk(*direct, read_size)
                        elif isinstance(upstream, TcpStream):
                            data = await upstream.receive(read_size)
                        else:
                            data, _ = await upstream.receive()
                    except anyio.EndOfStream:
                        # CLOSE goes out now, right behind the last DATA, not
                        # after the upload task has wound down.
                        if splice is None or not splice.ended_here:
                            self._finish(stream, wisp.CloseReason.VOLUNTARY)
                        outcome.append(ALREADY_CLOSED)
                        break
                    except OSError:
                        if isinstance(upstream, TcpStream):
                            outcome.append(wisp.CloseReason.NETWORK_ERROR)
                            break
                        continue
                    await deliver(data)
                stream.stopping = True
                if stream.waiting:
                    # The upload is idle: waking it is enough, and cheaper than
                    # cancelling (anyio formats the task's repr for that).
                    stream.wake.set()
                else:
                    scope.cancel()

            group.start_soon(upload, name="wisp-upload")
            # The download runs in this task: one task fewer per stream.
            try:
                await download()
            finally:
                stream.forward = None
        if not outcome:
            return wisp.CloseReason.TRANSFER_TIMEOUT if scope.cancelled_caught else 0
        return outcome[0]

    def _forwarder(
        self, stream: _WispStream, upstream: SplicedStream, touch: Callable[[], None]
    ) -> Callable[[bytes | memoryview], bool]:
        """What the reader calls to pass a DATA packet of ``stream`` on to another member.

        The packet goes to the other member's WebSocket output at once, as
        the upload task would have put it after a wake-up and a join, or not
        at all (False: it is queued as usual).  The other session holds the
        packets of one batch of reads until :meth:`_flush_forwarded` (before
        this session awaits anything), so several leave as one message.  Its credit is released as
        the upload task releases it once the other side took the bytes.
        """
        record = stream.record
        stream_id = stream.stream_id
        flushing = self.flushing

        def forward(data: bytes | memoryview) -> bool:
            if stream.stopping or not upstream.send_now(data):
                return False
            if upstream not in flushing:
                flushing.append(upstream)
            record.up += len(data)
            stream.progress_at = anyio.current_time()
            touch()
            self._credit_written(stream_id, 1)
            return True

        return forward


class _DirectUpload:
    """A Wisp stream's uploads written into its host destination's transport by the reader.

    Under asyncio (and uvloop) the WebSocket reader hands each DATA packet of
    the stream to :meth:`forward` while nothing of the stream is queued and
    the destination's socket took everything written before (anyio's
    protocol pauses writing at the first byte its transport keeps): the
    packets of one read are gathered and leave in one ``writelines`` when
    the reader flushes (:meth:`_WispSession._flush_forwarded`, before it
    awaits anything, so no packet can overtake another), with no queue and
    no wake-up of the stream's task.  Profiles of one fast upload had that
    task's wake-ups, its events and the budget's bookkeeping per batch at
    about a fifth of the gateway's samples.

    The bounds stay those of the queued path.  A write the socket took
    whole gives the packets' credits back at once, as the stream's task
    does after its write; what the transport keeps counts against the
    upload budget, and its packets' credits are held back, until the
    stream's task saw the transport drain (:attr:`_WispStream.in_transport`).
    Meanwhile :meth:`forward` declines, so later packets queue as usual
    behind those bytes: a destination that stops reading holds at most one
    read's worth in its transport, and the client runs out of credits and
    budget exactly as before (``--upload-buffer``, ``--total-upload-buffer``
    and ``--upload-stall-timeout`` keep their meaning).
    """

    __slots__ = (
        "clock",
        "listed",
        "parts",
        "protocol",
        "session",
        "size",
        "stream",
        "touch",
        "transport",
    )

    def __init__(
        self,
        session: _WispSession,
        stream: _WispStream,
        transport: SocketTransport,
        protocol: Any,
        touch: Callable[[], None],
    ) -> None:
        assert session.loop is not None
        self.session = session
        # anyio's clock under asyncio, which stream.progress_at is read against.
        self.clock = session.loop.time
        self.stream = stream
        self.transport = transport
        self.protocol = protocol
        self.touch = touch
        self.parts: list[bytes | memoryview] = []
        self.size = 0
        # In the session's ``flushing`` list since its last flush.
        self.listed = False

    def _declines(self) -> bool:
        """Whether the destination's socket may not take a write from the reader now."""
        return bool(
            self.stream.stopping
            or self.stream.in_transport
            or not self.protocol.write_event.is_set()
            or self.protocol.exception is not None
            or self.transport.is_closing()
        )

    def forward(self, data: bytes | memoryview) -> bool:
        """Take ``data`` for the next write, or decline it (False: it is queued)."""
        if self._declines():
            return False
        self.parts.append(data)
        self.size += len(data)
        if not self.listed:
            self.listed = True
            self.session.flushing.append(self)
        if self.size >= MAX_UPLOAD_BATCH:
            self._write()
        return True

    def write_queued(self) -> None:
        """Write what the stream queued before this writer existed, as :meth:`forward` would.

        Nothing is done if the client already aborted the stream (its bytes
        are dropped with the connection) or if this writer would decline.
        """
        stream = self.stream
        queue = stream.queue
        if not queue or stream.aborted_by_client or self.parts or self._declines():
            return
        size = stream.queued_bytes
        self.parts = list(queue)
        self.size = size
        queue.clear()
        # A reader waiting for this queue to drain (QUEUE_BOUND_FACTOR) goes on.
        stream.make_room(0)
        # Out of the budget now; _write counts again what the socket does not take.
        stream.sent(size)
        self._write()

    def flush(self) -> None:
        """Write what :meth:`forward` took (the reader calls it before it awaits anything)."""
        self.listed = False
        if self.parts:
            self._write()

    def _write(self) -> None:
        parts, size = self.parts, self.size
        self.parts = []
        self.size = 0
        stream, transport = self.stream, self.transport
        stream.record.up += size
        self.touch()
        try:
            transport.writelines(parts)
            left = transport.get_write_buffer_size()
        except RuntimeError:
            # uvloop's answer for a transport already closed: the stream's
            # task ends the stream, as its own write would have.
            stream.direct_failed = True
            left = size
        if left:
            stream.in_transport = left
            stream.held_packets = len(parts)
            stream.queued_bytes += left
            stream.budget.add(left)
            if stream.waiting:
                stream.wake.set()
            return
        stream.progress_at = self.clock()
        self.session._credit_written(stream.stream_id, len(parts))


class _BareTaskGroup:
    """What :func:`_task_group` gives under asyncio: a task group whose children are bare tasks.

    ``start_soon`` makes a bare asyncio task; ``cancel_scope`` is entered in
    the owner's task.  As in anyio's task group, cancelling the scope (from
    any task, or by its deadline) or leaving with an exception cancels the
    children, a child's exception cancels the scope, and leaving waits
    until every child ended, then raises the first exception, if any.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.cancel_scope = anyio.CancelScope()
        self.tasks: list[asyncio.Task[None]] = []
        self.failures: list[Exception] = []

    def start_soon(self, func: Callable[[], Awaitable[None]], *, name: str | None = None) -> None:
        self.tasks.append(self.loop.create_task(self._child(func), name=name))

    async def _child(self, func: Callable[[], Awaitable[None]]) -> None:
        try:
            await func()
        except Exception as exc:
            self.failures.append(exc)
            self.cancel_scope.cancel()

    async def __aenter__(self) -> _BareTaskGroup:
        self.cancel_scope.__enter__()
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        scope, tasks = self.cancel_scope, self.tasks
        caught: BaseException | None = None
        if exc is not None or scope.cancel_called:
            self._cancel_children()
        # As anyio's task group waits: a cancellation that arrives meanwhile
        # (or is already pending on this task) cancels the children, and the
        # scope is shielded from more while they end, which they do at once.
        while pending := [task for task in tasks if not task.done()]:
            try:
                await asyncio.wait(pending)
            except asyncio.CancelledError as error:
                if exc is None:
                    caught = exc = error
                scope.shield = True
                self._cancel_children()
        if exc is None:
            swallowed = scope.__exit__(None, None, None)
        else:
            swallowed = scope.__exit__(type(exc), exc, exc.__traceback__)
        if self.failures:
            raise self.failures[0]
        if caught is not None and not swallowed:
            raise caught
        return bool(swallowed)

    def _cancel_children(self) -> None:
        for task in self.tasks:
            if not task.done():
                task.cancel()


def _task_group(loop: asyncio.AbstractEventLoop | None) -> anyio.abc.TaskGroup | _BareTaskGroup:
    """A stream's task group: bare asyncio tasks under asyncio, anyio's under trio."""
    return anyio.create_task_group() if loop is None else _BareTaskGroup(loop)


class _DownloadSplice(asyncio.Protocol):
    """A host destination's protocol while its stream's download is spliced to the client.

    Under asyncio, with frames going straight into the client's transport
    (:attr:`WebSocket.calls_when_room`), each read of the destination is
    framed as ``DATA`` and written from the read callback itself: no task
    wakes up per read, and reading is not resumed and paused again around
    each one.  The bounds stay those of the task path: once the client's
    output is over its high-water mark the destination stops being read
    (its kernel buffer fills, its TCP window closes) until the output
    drained to half of it, so each stream adds at most one read beyond the
    mark.  anyio's protocol keeps what the upload uses (the write-side
    callbacks and the connection's loss are passed on to it); while the
    splice runs it gets no data, and it is the transport's protocol again
    once the splice ends.
    """

    def __init__(
        self,
        transport: SocketTransport,
        inner: Any,
        websocket: WebSocket,
        header: bytes,
        read_size: int,
        record: StreamRecord,
        touch: Callable[[], None],
        at_end: Callable[[], None],
    ) -> None:
        self.transport = transport
        self.inner = inner
        self.ws = websocket
        self.header = header
        self.read_size = read_size
        self.record = record
        self.touch = touch
        # Called at the destination's end, from its callback: the stream's
        # CLOSE leaves with its last DATA, in the same turn of the loop.
        self.at_end = at_end
        self.ended_here = False
        self.paused = False
        self.ended: asyncio.Future[Exception | None] | None = None

    async def run(self, loop: asyncio.AbstractEventLoop) -> None:
        """Splice until the destination's end: raise ``anyio.EndOfStream``, or its ``OSError``.

        Chunks anyio's protocol had already read go first.  Cancellable;
        however it ends, the destination is no longer read and anyio's
        protocol is the transport's again.
        """
        inner, transport = self.inner, self.transport
        queue = inner.read_queue
        while queue:
            self.data_received(queue.popleft())
        inner.read_event.clear()
        if not (inner.is_at_eof or inner.exception is not None or transport.is_closing()):
            self.ended = loop.create_future()
            transport.set_protocol(self)
            try:
                if not self.paused:
                    transport.resume_reading()
                await self.ended
            finally:
                self.ended = None
                self.ws.forget_room_callback(self._room)
                if not transport.is_closing():
                    transport.pause_reading()
                transport.set_protocol(inner)
        error = inner.exception
        if error is None:
            raise anyio.EndOfStream
        if isinstance(error, OSError):
            raise error
        raise os_error(errno.ECONNRESET, f"the connection was reset ({error})")

    def data_received(self, data: bytes) -> None:
        ws, size = self.ws, len(data)
        if size > self.read_size:
            view = memoryview(data)
            for offset in range(0, size, self.read_size):
                ws.send_nowait(view[offset : offset + self.read_size], self.header)
        else:
            ws.send_nowait(data, self.header)
        self.record.down += size
        self.touch()
        if ws.output_full and not self.paused:
            self.paused = True
            self.transport.pause_reading()
            ws.call_when_room(self._room)

    def _room(self) -> None:
        self.paused = False
        if self.ended is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def eof_received(self) -> bool | None:
        keep_open = self.inner.eof_received()
        if self.ended is not None and not self.ended.done():
            self.at_end()
            self.ended_here = True
        self._end()
        return keep_open  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)
        self._end()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def _end(self) -> None:
        ended = self.ended
        if ended is not None and not ended.done():
            ended.set_result(None)


async def _write_parts(
    transport: SocketTransport, protocol: Any, parts: list[bytes | memoryview]
) -> None:
    """Write ``parts`` to a host socket's transport and wait until the kernel took them.

    What the stream's ``send`` does (anyio's protocol pauses writing while
    anything is buffered), for several buffers at once and without its
    checkpoints; a connection already gone raises ``EPIPE``.
    """
    if protocol.exception is not None:
        raise os_error(errno.EPIPE, f"the connection was closed ({protocol.exception})")
    if transport.is_closing():
        raise os_error(errno.EPIPE, "the connection was closed")
    try:
        transport.writelines(parts)
    except RuntimeError as exc:
        raise os_error(errno.EPIPE, f"the connection was closed ({exc})") from None
    if not protocol.write_event.is_set():
        await protocol.write_event.wait()
        if protocol.exception is not None:
            raise os_error(errno.EPIPE, f"the connection was closed ({protocol.exception})")


async def _read_chunk(transport: SocketTransport, protocol: Any, max_bytes: int) -> bytes:
    """What the host socket's stream would ``receive(max_bytes)``, from its protocol's queue.

    Raises ``anyio.EndOfStream`` at the end and the connection's error (an
    ``OSError``) once the bytes before it were read, as the stream does.
    """
    queue = protocol.read_queue
    if (
        not queue
        and not protocol.is_at_eof
        and protocol.exception is None
        and not transport.is_closing()
    ):
        transport.resume_reading()
        try:
            await protocol.read_event.wait()
        finally:
            transport.pause_reading()
    if queue:
        chunk: bytes = queue.popleft()
        if len(chunk) > max_bytes:
            queue.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        if not queue:
            protocol.read_event.clear()
        return chunk
    error = protocol.exception
    if error is not None:
        if isinstance(error, OSError):
            raise error
        raise os_error(errno.ECONNRESET, f"the connection was reset ({error})")
    raise anyio.EndOfStream


def _running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio (or uvloop) event loop; ``None`` under trio."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _close_bytes(event: wisp.Close) -> bytes:
    return (
        bytes([wisp.PacketType.CLOSE])
        + event.stream_id.to_bytes(4, "little")
        + bytes([event.reason])
    )


def _close0(reason: int) -> bytes:
    return _close_bytes(wisp.Close(0, reason))


# What a client or the network ending a connection looks like from inside.
_CONNECTION_LOSS = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    OSError,
)


def _only_connection_loss(exc: BaseException) -> bool:
    """Whether ``exc`` (or every exception in a group) is an ordinary end of a connection."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_connection_loss(inner) for inner in exc.exceptions)
    return isinstance(exc, _CONNECTION_LOSS)


def _describe(exc: BaseException) -> str:
    """The first unexpected exception in ``exc`` as ``Type: message``, for one log line."""
    while isinstance(exc, BaseExceptionGroup):
        exc = next(
            (inner for inner in exc.exceptions if not _only_connection_loss(inner)),
            exc.exceptions[0],
        )
    return f"{type(exc).__name__}: {str(exc)[:200]!r}"


def _secret_in(candidate: str, secrets: Iterable[str]) -> bool:
    """Whether ``candidate`` is one of ``secrets``, in time that does not depend on which.

    Every secret is compared (no early exit), as bytes: ``hmac.compare_digest``
    refuses non-ASCII ``str``.
    """
    given = candidate.encode("utf-8", "surrogatepass")
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(given, secret.encode("utf-8", "surrogatepass"))
    return found


def _find_secret(candidate: str, table: Mapping[str, T]) -> T | None:
    """The value whose key is ``candidate``, comparing every key in constant time."""
    given = candidate.encode("utf-8", "surrogatepass")
    found: T | None = None
    for key, value in table.items():
        if hmac.compare_digest(given, key.encode("utf-8", "surrogatepass")):
            found = value
    return found


def _login_ok(users: Mapping[str, str], name: str, password: str) -> bool:
    """Whether ``name`` and ``password`` are a configured login (constant time, see above)."""
    expected = _find_secret(name, users)
    # An unknown name costs the same comparison as a known one.
    reference = expected if expected is not None else password + "\x00"
    same = hmac.compare_digest(
        password.encode("utf-8", "surrogatepass"), reference.encode("utf-8", "surrogatepass")
    )
    return expected is not None and same


def _header(headers: Headers, name: str) -> str:
    """Every value of header ``name`` joined by commas (``Headers.get`` raises on repeats)."""
    return ", ".join(headers.get_all(name))


def _is_digits(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also says yes to ``'²'``, which ``int`` refuses."""
    return text.isascii() and text.isdigit()


def _short_text(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _plain_ip(ip: str) -> str:
    return ip[7:] if ip.startswith("::ffff:") else ip


def _reason(reason: int) -> str:
    try:
        return wisp.CloseReason(reason).name
    except ValueError:
        return f"0x{reason:02x}"


async def serve(
    stack: Stack | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    socks_port: int | None = None,
    config: GatewayConfig | None = None,
    listen_stack: Stack | None = None,
    task_status: anyio.abc.TaskStatus[dict[str, Address]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``stack`` (the host network by default) until cancelled.

    Wisp, wsproxy and websockify on ``host:port``, SOCKS5 on ``socks_port``
    if given; see :class:`GatewayConfig` for the rest.
    """
    gateway = Gateway(stack, config)
    await gateway.serve(
        host=host,
        port=port,
        socks_port=socks_port,
        listen_stack=listen_stack,
        task_status=task_status,
    )
