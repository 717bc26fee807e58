"""``netshim gateway``: run the gateway from flags and an optional TOML config file.

Flags override the file.  The file's keys are the long flag names with
underscores (``socks_port = 1080``, ``allow = ["10.0.0.0/8:5432"]``), plus a
``[users]`` table of username = password.  SIGINT or SIGTERM stops accepting
and lets open streams drain for ``shutdown_grace`` seconds; a second signal
cuts them at once.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import signal
import sys
import tomllib
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "config_from", "run"]


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    add = parser.add_argument
    add("--config", type=Path, help="TOML file with the same keys as these flags")
    add("--host", help="address to listen on (default 127.0.0.1)")
    add("--port", type=int, help="HTTP/WebSocket port for Wisp, wsproxy, websockify (default 8080)")
    add("--socks-port", type=int, help="also serve SOCKS5 on this port")
    add("--allow", action="append", metavar="RULE", help="allow a CIDR, IP or name[:ports]")
    add("--deny", action="append", metavar="RULE", help="deny a CIDR, IP or name[:ports]")
    add("--ports", help="only these destination ports, e.g. 80,443,1024-65535")
    add("--allow-private", action="store_true", default=None, help="reach private ranges too")
    add("--no-udp", action="store_true", default=None, help="refuse UDP streams")
    add("--user", action="append", metavar="NAME:PASSWORD", help="require this login")
    add("--url-token", action="append", metavar="TOKEN", help="require ?token= on WebSocket URLs")
    add("--token-file", type=Path, help="websockify token file (token: host:port per line)")
    add("--motd", help="message of the day for Wisp v2 clients")
    add("--trusted-proxy", action="append", metavar="CIDR", help="trust X-Forwarded-For from here")
    add("--max-streams-per-client", type=int)
    add("--max-streams", type=int, help="total stream limit")
    add("--max-connections-per-client", type=int, help="client connections per IP (default 64)")
    add("--max-connections", type=int, help="client connections in total (default 4096)")
    add("--lookups-per-client", type=int, help="name lookups one client may run at once (4)")
    add("--new-streams-per-second", type=float, help="per-client rate of new streams")
    add("--bandwidth", type=float, help="per-client bytes per second, both ways")
    add("--idle-timeout", type=float, help="seconds a stream may move nothing")
    add(
        "--wisp-buffer-size",
        type=int,
        help="Wisp credits per TCP stream, in packets (default 128)",
    )
    add(
        "--upload-buffer",
        type=int,
        help="upload bytes one client may have queued before its reads pause (default 32 MiB)",
    )
    add(
        "--total-upload-buffer",
        type=int,
        help="upload bytes all clients together may have queued (default 256 MiB)",
    )
    add(
        "--upload-stall-timeout",
        type=float,
        help="seconds a paused upload may wait on a destination that reads nothing (default 30)",
    )
    add(
        "--read-size",
        type=int,
        help="bytes one read from a destination takes, the largest DATA sent (default 256 KiB)",
    )
    add(
        "--max-message-size",
        type=int,
        help="largest WebSocket message accepted, in bytes (default 1 MiB)",
    )
    add(
        "--wireguard-port",
        type=int,
        help="also serve WireGuard clients on this UDP port (needs --wireguard-config)",
    )
    add(
        "--wireguard-config",
        type=Path,
        help="the WireGuard server's wg-quick file: its key and address, one [Peer] per client",
    )
    add(
        "--lan",
        action="append",
        metavar="NAME[:CIDR]",
        help="a LAN Wisp clients may join (default CIDRs 10.77.0.0/24, 10.77.1.0/24, ...)",
    )
    add(
        "--lan-token-file",
        type=Path,
        help="'NAME TOKEN' per line; a LAN without a token gets a random one, shown at start",
    )
    add(
        "--forward",
        action="append",
        metavar="[HOST:]PORT=LAN/MEMBER:PORT",
        help="expose a LAN member's listener on this machine (HOST defaults to 127.0.0.1)",
    )
    add("--lan-listeners", type=int, help="listeners one LAN member may hold (default 16)")
    add(
        "--cluster-redis",
        metavar="URL",
        help="share the LANs with other gateways through this Redis (redis://host:port/db)",
    )
    add(
        "--cluster-url",
        metavar="URL",
        help="how the other gateways reach this one's WebSocket (default ws://HOST:PORT/)",
    )
    add(
        "--cluster-secret-file",
        type=Path,
        help="the cluster's shared secret (first line, 16+ characters) for relays",
    )
    add(
        "--cluster-refresh",
        type=float,
        help="seconds between renewals of this gateway's members in Redis (default 5)",
    )
    add("--shutdown-grace", type=float, help="seconds to drain on SIGTERM (default 10)")
    add("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    add(
        "--event-loop",
        choices=EVENT_LOOPS,
        help="auto (the default: uvloop when installed, else asyncio), asyncio, uvloop or trio",
    )


EVENT_LOOPS = ("auto", "asyncio", "uvloop", "trio")


def backend_for(event_loop: str) -> tuple[str, dict[str, Any]]:
    """The anyio backend and options for ``--event-loop``.

    uvloop's transports read and write in C: on loopback the gateway then
    spends about an eighth less CPU per byte.  ``auto`` takes it when it is
    installed (the ``gateway`` extra installs it where it builds).
    """
    if event_loop == "trio":
        return "trio", {}
    if event_loop == "asyncio":
        return "asyncio", {}
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if event_loop == "uvloop":
            raise SystemExit("--event-loop uvloop: uvloop is not installed") from None
        return "asyncio", {}
    return "asyncio", {"use_uvloop": True}


def _pick(arguments: argparse.Namespace, file: dict[str, Any], name: str, default: Any) -> Any:
    value = getattr(arguments, name, None)
    if value is not None:
        return value
    return file.get(name, default)


def config_from(arguments: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The :class:`GatewayConfig` and the run options (listen addresses, event loop)."""
    from .gateway import GatewayConfig, load_token_file
    from .gateway._lan import (
        DEFAULT_LAN_LISTENERS,
        Forward,
        lan_specs,
        load_lan_tokens,
        parse_lan_flags,
    )
    from .gateway._server import (
        DEFAULT_READ_SIZE,
        DEFAULT_TOTAL_UPLOAD_BUFFER,
        DEFAULT_UPLOAD_BUFFER,
        DEFAULT_UPLOAD_STALL_TIMEOUT,
    )
    from .policy import Limits, Policy
    from .protocols import wisp

    file: dict[str, Any] = {}
    if arguments.config is not None:
        file = tomllib.loads(arguments.config.read_text())
    defaults = Limits()
    limits = Limits(
        max_streams_per_client=_pick(
            arguments, file, "max_streams_per_client", defaults.max_streams_per_client
        ),
        max_streams_total=_pick(arguments, file, "max_streams", defaults.max_streams_total),
        new_streams_per_second=_pick(arguments, file, "new_streams_per_second", None),
        bandwidth=_pick(arguments, file, "bandwidth", None),
        idle_timeout=_pick(arguments, file, "idle_timeout", defaults.idle_timeout),
        max_connections_per_client=_pick(
            arguments, file, "max_connections_per_client", defaults.max_connections_per_client
        ),
        max_connections_total=_pick(
            arguments, file, "max_connections", defaults.max_connections_total
        ),
        lookups_per_client=int(
            _pick(arguments, file, "lookups_per_client", defaults.lookups_per_client)
        ),
    )
    policy = Policy(
        allow=[*file.get("allow", []), *(arguments.allow or [])],
        deny=[*file.get("deny", []), *(arguments.deny or [])],
        ports=_pick(arguments, file, "ports", None),
        allow_private=bool(_pick(arguments, file, "allow_private", False)),
        allow_udp=not bool(_pick(arguments, file, "no_udp", False)),
        limits=limits,
    )
    users = dict(file.get("users", {}))
    for entry in arguments.user or []:
        name, sep, password = entry.partition(":")
        if not sep:
            raise ValueError(f"--user expects NAME:PASSWORD, got {entry!r}")
        users[name] = password
    token_file = _pick(arguments, file, "token_file", None)
    lans = parse_lan_flags(str(entry) for entry in [*file.get("lan", []), *(arguments.lan or [])])
    lan_token_file = _pick(arguments, file, "lan_token_file", None)
    lan_tokens = load_lan_tokens(lan_token_file) if lan_token_file else {}
    specs, made_tokens = lan_specs(lans, lan_tokens, lambda: secrets.token_urlsafe(18))
    forwards = [
        Forward.parse(str(entry))
        for entry in [*file.get("forward", []), *(arguments.forward or [])]
    ]
    lan_listeners = int(_pick(arguments, file, "lan_listeners", DEFAULT_LAN_LISTENERS))
    cluster = _cluster_config(arguments, file, made_tokens)
    config = GatewayConfig(
        policy=policy,
        users=users,
        url_tokens=frozenset([*file.get("url_tokens", []), *(arguments.url_token or [])]),
        targets=load_token_file(token_file) if token_file else {},
        motd=_pick(arguments, file, "motd", None),
        trusted_proxies=tuple([*file.get("trusted_proxies", []), *(arguments.trusted_proxy or [])]),
        shutdown_grace=float(_pick(arguments, file, "shutdown_grace", 10.0)),
        wisp_buffer_size=int(_pick(arguments, file, "wisp_buffer_size", wisp.DEFAULT_BUFFER_SIZE)),
        max_message_size=int(
            _pick(arguments, file, "max_message_size", wisp.DEFAULT_MAX_MESSAGE_SIZE)
        ),
        upload_buffer=int(_pick(arguments, file, "upload_buffer", DEFAULT_UPLOAD_BUFFER)),
        read_size=int(_pick(arguments, file, "read_size", DEFAULT_READ_SIZE)),
        total_upload_buffer=int(
            _pick(arguments, file, "total_upload_buffer", DEFAULT_TOTAL_UPLOAD_BUFFER)
        ),
        upload_stall_timeout=float(
            _pick(arguments, file, "upload_stall_timeout", DEFAULT_UPLOAD_STALL_TIMEOUT)
        ),
        lans=tuple(specs),
        forwards=tuple(forwards),
        lan_listeners=lan_listeners,
        cluster=cluster,
    )
    listen = {
        "host": _pick(arguments, file, "host", "127.0.0.1"),
        "port": int(_pick(arguments, file, "port", 8080)),
        "socks_port": _pick(arguments, file, "socks_port", None),
        "event_loop": _pick(arguments, file, "event_loop", "auto"),
    }
    wireguard_port = _pick(arguments, file, "wireguard_port", None)
    wireguard_config = _pick(arguments, file, "wireguard_config", None)
    if (wireguard_port is None) != (wireguard_config is None):
        raise ValueError("--wireguard-port and --wireguard-config go together")
    if wireguard_port is not None:
        listen["wireguard_port"] = int(wireguard_port)
        listen["wireguard_config"] = wireguard_config
    if made_tokens:
        listen["lan_tokens_made"] = made_tokens
    if listen["event_loop"] not in EVENT_LOOPS:
        raise ValueError(
            f"event_loop must be one of {', '.join(EVENT_LOOPS)}, got {listen['event_loop']!r}"
        )
    if cluster is not None and listen["event_loop"] == "trio":
        raise ValueError("--cluster-redis needs asyncio or uvloop (redis-py's client), not trio")
    return config, listen


def _cluster_config(
    arguments: argparse.Namespace, file: dict[str, Any], made_tokens: dict[str, str]
) -> Any:
    """The ``ClusterConfig`` the ``--cluster-*`` flags ask for; ``None`` without a Redis."""
    from .gateway._cluster import DEFAULT_REFRESH, ClusterConfig, import_redis

    redis = _pick(arguments, file, "cluster_redis", None)
    url = _pick(arguments, file, "cluster_url", None)
    secret_file = _pick(arguments, file, "cluster_secret_file", None)
    refresh = _pick(arguments, file, "cluster_refresh", None)
    if redis is None:
        if url is not None or secret_file is not None or refresh is not None:
            raise ValueError(
                "--cluster-url, --cluster-secret-file and --cluster-refresh need --cluster-redis"
            )
        return None
    import_redis()
    if secret_file is None:
        raise ValueError(
            "--cluster-redis needs --cluster-secret-file (the gateways' shared secret)"
        )
    lines = Path(secret_file).read_text().splitlines()
    secret = lines[0].strip() if lines else ""
    if made_tokens:
        # A random token differs on every gateway: members could not move between them.
        raise ValueError(
            f"--cluster-redis: every LAN needs its token in --lan-token-file "
            f"(none for {', '.join(sorted(made_tokens))})"
        )
    if url is None:
        host = str(_pick(arguments, file, "host", "127.0.0.1"))
        port = int(_pick(arguments, file, "port", 8080))
        if host in ("", "0.0.0.0", "::") or port == 0:
            raise ValueError(
                "--cluster-url is needed when the gateway listens on every address or port 0"
            )
        url = f"ws://[{host}]:{port}/" if ":" in host else f"ws://{host}:{port}/"
    return ClusterConfig(
        str(redis),
        str(url),
        secret,
        refresh=DEFAULT_REFRESH if refresh is None else float(refresh),
    )


def run(arguments: argparse.Namespace) -> int:
    import anyio

    try:
        from .gateway import Gateway
    except ImportError as exc:
        # The gateway's dependencies are an extra: say which, in one line.
        print(
            f"netshim gateway: {(exc.name or str(exc)).split('.')[0]} is not installed; "
            "install the gateway's dependencies with: pip install 'netshim[gateway]'",
            file=sys.stderr,
        )
        return 2

    logging.basicConfig(
        level=getattr(logging, str(arguments.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        config, listen = config_from(arguments)
    except (ValueError, OSError, tomllib.TOMLDecodeError) as exc:
        # A bad flag or config file: one line naming it, not a traceback.
        print(f"netshim gateway: {exc}", file=sys.stderr)
        return 2
    for name, token in listen.pop("lan_tokens_made", {}).items():
        # Shown once: whoever started the gateway hands it to the LAN's members.
        print(
            f"netshim gateway: LAN {name} has no token in a file; its token: {token}",
            file=sys.stderr,
        )
    gateway = Gateway(config=config)
    backend, options = backend_for(listen.pop("event_loop"))
    wireguard_port = listen.pop("wireguard_port", None)
    wireguard_config = listen.pop("wireguard_config", None)
    wireguard: Any = None
    if wireguard_port is not None:
        from .gateway._wireguard import WireGuardServer

        try:
            wireguard = WireGuardServer(
                wireguard_config,
                stack=gateway.stack,
                policy=gateway.policy,
                port=int(wireguard_port),
                host=listen["host"],
            )
        except (ValueError, OSError) as exc:
            print(f"netshim gateway: --wireguard-config: {exc}", file=sys.stderr)
            return 2
        wireguard.register_metrics(gateway.metrics.registry)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: gateway.serve(**listen))
            if wireguard is not None:
                await group.start(wireguard.run)
                logging.getLogger("netshim.gateway").info(
                    "WireGuard on udp %s:%s", listen["host"], wireguard_port
                )
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    logging.getLogger("netshim.gateway").info("shutting down: draining streams")
                    drain = anyio.CancelScope()

                    async def drain_then_stop(scope: anyio.CancelScope = drain) -> None:
                        with scope:
                            await gateway.shutdown()
                        group.cancel_scope.cancel()

                    group.start_soon(drain_then_stop)
                    async for _ in signals:
                        group.cancel_scope.cancel()
                        break
                    break

    from .gateway._cluster import ClusterUnavailableError

    unavailable: list[BaseException] = []
    try:
        anyio.run(main, backend=backend, backend_options=options)
    except* ClusterUnavailableError as failed:
        unavailable.extend(failed.exceptions)
    if unavailable:
        # The cluster's Redis is down or unreachable at start: one line, not a traceback.
        print(f"netshim gateway: {unavailable[0]}", file=sys.stderr)
        return 1
    return 0
