"""The gateway: serve any Stack to remote clients over Wisp, wsproxy, websockify and SOCKS5.

``await netshim.gateway.serve(stack, port=8080, socks_port=1080)`` serves
``stack`` (the host network by default) behind a :class:`~netshim.policy.Policy`;
``netshim gateway`` runs the same from the command line.  See ``docs/gateway.md``.
"""

from ._server import Gateway as Gateway
from ._server import GatewayConfig as GatewayConfig
from ._server import load_token_file as load_token_file
from ._server import serve as serve

__all__ = ["Gateway", "GatewayConfig", "load_token_file", "serve"]
