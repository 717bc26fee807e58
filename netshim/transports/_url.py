"""WebSocket URLs for the tunnel stacks, parsed once and checked, with no dependencies.

Kept apart from :mod:`netshim.transports.websocket` so that building a
stack from a URL (and failing early on a bad one) does not need the
websockets library.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

__all__ = ["WebSocketEndpoint", "parse_websocket_url"]


@dataclass(frozen=True, slots=True)
class WebSocketEndpoint:
    """Where a WebSocket goes: parsed and checked once, at construction of a stack."""

    secure: bool
    host: str
    port: int
    path: str  # with the query string, as sent in the request line
    username: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        scheme = "wss" if self.secure else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{self.path}"

    def with_path(self, path: str) -> WebSocketEndpoint:
        return WebSocketEndpoint(
            self.secure, self.host, self.port, path, self.username, self.password
        )


def parse_websocket_url(
    url: str, *, schemes: dict[str, bool] | None = None, what: str = "WebSocket URL"
) -> WebSocketEndpoint:
    """Parse ``url``; ``schemes`` maps each accepted scheme to whether it means TLS.

    Raises ``ValueError`` naming the bad part (scheme, host, port).
    """
    schemes = schemes or {"ws": False, "wss": True}
    if not isinstance(url, str):
        raise TypeError(f"{what} must be a str, not {type(url).__name__}")
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise ValueError(
            f"{what} {url!r}: scheme {parts.scheme!r} is not one of "
            + ", ".join(f"{s}://" for s in schemes)
        )
    secure = schemes[scheme]
    host = parts.hostname
    if not host:
        raise ValueError(f"{what} {url!r}: no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{what} {url!r}: bad port {parts.netloc.rpartition(':')[2]!r}") from None
    if port == 0:
        raise ValueError(f"{what} {url!r}: bad port 0")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return WebSocketEndpoint(
        secure,
        host,
        port or (443 if secure else 80),
        path,
        urllib.parse.unquote(parts.username) if parts.username is not None else None,
        urllib.parse.unquote(parts.password) if parts.password is not None else None,
    )
