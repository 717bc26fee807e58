"""Stacks from URLs and from the environment: ``stack_from_url`` and ``stack_from_environment``.

URL schemes:

* ``host:`` (or ``direct:``): the machine's own network;
* ``wisp://host:port/path/``, ``wisps://``: :class:`~netshim.WispStack`
  (``ws://`` and ``wss://`` URLs whose path ends in ``/`` too, the
  convention of Wisp servers and of our gateway); ``?lan=L&member=M&token=T``
  joins LAN ``L`` of a netshim gateway (see ``docs/lan.md``);
* ``ws://proxy/prefix``, ``ws://proxy/path?token=T``, ``websockify://``:
  :class:`~netshim.WebsockifyStack`;
* ``socks5://``, ``socks5h://``, with ``+ws`` / ``+wss``:
  :class:`~netshim.Socks5Stack`.
* ``fetch:`` (in Pyodide): :class:`~netshim.stacks.fetch.FetchStack`, HTTP(S)
  through the browser's or Node's ``fetch``, no gateway;
* ``wireguard:///path/to/wg0.conf`` (a ``wg-quick`` file):
  :class:`~netshim.stacks.wireguard.WireGuardStack`, its UDP on the host
  network.

:func:`stack_from_environment` reads ``NETSHIM_STACK`` first, then the
variables libcurl users already set: ``ALL_PROXY`` (or ``all_proxy``) for
the stack and ``NO_PROXY`` (or ``no_proxy``) for destinations that go
direct, as curl reads them (``localhost,.example.com,10.0.0.0/8``; ``*``
means everything).  With none of them set it is the host network.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping

from .stack import Stack

__all__ = ["stack_from_environment", "stack_from_url"]


def stack_from_url(url: str) -> Stack:
    """The stack ``url`` describes (see the module documentation).

    Raises ``ValueError`` naming the bad part (scheme, host, port, path) of
    a malformed URL, at once.
    """
    from .stacks import HostStack, Socks5Stack, WebsockifyStack, WispStack

    if not isinstance(url, str):
        raise TypeError(f"a stack URL must be a str, not {type(url).__name__}")
    text = url.strip()
    scheme = urllib.parse.urlsplit(text).scheme.lower() if "://" in text else ""
    if not scheme:
        bare = text.rstrip(":/").lower()
        if bare in ("host", "direct"):
            return HostStack()
        if bare == "fetch":
            from .stacks.fetch import FetchStack

            return FetchStack()
        raise ValueError(
            f"stack URL {url!r} has no scheme: use host:, fetch:, wisp://, wisps://, ws://, "
            "wss://, socks5://, socks5h://, websockify:// or wireguard://"
        )
    if scheme in ("host", "direct"):
        return HostStack()
    if scheme == "fetch":
        from .stacks.fetch import FetchStack

        return FetchStack()
    if scheme in ("wisp", "wisps"):
        return WispStack(text)
    if scheme.startswith(("socks5", "socks5h")):
        return Socks5Stack(text)
    if scheme in ("websockify", "websockifys"):
        return WebsockifyStack(text)
    if scheme == "wireguard":
        from .stacks.wireguard import WireGuardStack

        parts = urllib.parse.urlsplit(text)
        path = urllib.parse.unquote(parts.netloc + parts.path)
        if not path:
            raise ValueError(f"stack URL {url!r}: wireguard:// needs a wg-quick file's path")
        return WireGuardStack.from_config(path)
    if scheme in ("ws", "wss"):
        parts = urllib.parse.urlsplit(text)
        path = parts.path or "/"
        keys = {key for key, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)}
        # A LAN to join (?lan=...&token=...) is Wisp's; a token alone is websockify's.
        if path.endswith("/") and ("token" not in keys or "lan" in keys):
            return WispStack(text)
        return WebsockifyStack(text)
    raise ValueError(
        f"stack URL {url!r}: scheme {scheme!r} is not one of host, fetch, wisp, wisps, ws, wss, "
        "websockify, socks5, socks5h, wireguard"
    )


def _no_proxy_rules(value: str) -> list[str] | None:
    """curl's NO_PROXY as policy rules; ``None`` when it says "everything"."""
    rules: list[str] = []
    for raw in value.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return None
        if entry.startswith("."):
            rules += [entry[1:], "*" + entry]
        elif "/" in entry or entry.replace(".", "").isdigit() or ":" in entry:
            rules.append(f"[{entry}]" if ":" in entry and "/" not in entry else entry)
        else:
            rules += [entry, "*." + entry]
    return rules


def stack_from_environment(environ: Mapping[str, str] | None = None) -> Stack:
    """The stack the environment asks for (see the module documentation)."""
    from .stacks import HostStack
    from .stacks.policed import RouterStack

    env = os.environ if environ is None else environ
    chosen = env.get("NETSHIM_STACK", "").strip()
    if chosen:
        return stack_from_url(chosen)
    proxy = (env.get("ALL_PROXY") or env.get("all_proxy") or "").strip()
    if not proxy:
        return HostStack()
    stack = stack_from_url(proxy)
    no_proxy = (env.get("NO_PROXY") or env.get("no_proxy") or "").strip()
    if not no_proxy:
        return stack
    rules = _no_proxy_rules(no_proxy)
    if rules is None:
        return HostStack()
    direct = HostStack()
    return RouterStack([(rule, direct) for rule in rules], default=stack)
