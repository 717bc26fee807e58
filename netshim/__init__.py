"""netshim: run unmodified Python networking code on virtual, tunnelled or policed networks.

Everything goes through a :class:`Stack`: :class:`VirtualNetwork` hosts for
tests, :class:`HostStack` for the machine's own network.  :func:`install`
routes the whole process's sockets through a stack.  The module-level
:func:`connect_tcp`, :func:`listen_tcp`, :func:`open_udp` and
:func:`getaddrinfo` use the current stack (see :func:`use_stack`).
"""

import contextlib
from typing import TYPE_CHECKING, Any

# First: where Python has no ssl module (Pyodide), anyio's import needs one.
from . import _ssl_standin as _ssl_standin
from ._addresses import InvalidHostNameError as InvalidHostNameError
from ._config import stack_from_environment as stack_from_environment
from ._config import stack_from_url as stack_from_url
from ._errors import LocalProtocolError as LocalProtocolError
from ._errors import ProtocolError as ProtocolError
from ._errors import RemoteProtocolError as RemoteProtocolError
from .shim import acting_as as acting_as
from .shim import install as install
from .shim import installed as installed
from .shim import is_installed as is_installed
from .shim import uninstall as uninstall
from .stack import Stack as Stack
from .stack import TcpListener as TcpListener
from .stack import TcpStream as TcpStream
from .stack import UdpSocket as UdpSocket
from .stack import connect_tcp as connect_tcp
from .stack import current_stack as current_stack
from .stack import getaddrinfo as getaddrinfo
from .stack import listen_tcp as listen_tcp
from .stack import open_udp as open_udp
from .stack import set_default_stack as set_default_stack
from .stack import use_stack as use_stack
from .stacks import HostStack as HostStack

if TYPE_CHECKING:
    from .stacks.ip import IpStack as IpStack
from .stacks import LinkConditions as LinkConditions
from .stacks import PolicyStack as PolicyStack
from .stacks import RouterStack as RouterStack
from .stacks import Socks5Stack as Socks5Stack
from .stacks import TunnelEvent as TunnelEvent
from .stacks import TunnelEventKind as TunnelEventKind
from .stacks import VirtualHost as VirtualHost
from .stacks import VirtualNetwork as VirtualNetwork
from .stacks import WebsockifyStack as WebsockifyStack
from .stacks import WispStack as WispStack

__version__ = "0.1.0.dev0"

__all__ = [
    "HostStack",
    "IpStack",
    "InvalidHostNameError",
    "LinkConditions",
    "LocalProtocolError",
    "PolicyStack",
    "ProtocolError",
    "RemoteProtocolError",
    "RouterStack",
    "Stack",
    "TcpListener",
    "TcpStream",
    "TunnelEvent",
    "TunnelEventKind",
    "UdpSocket",
    "VirtualHost",
    "Socks5Stack",
    "VirtualNetwork",
    "WebsockifyStack",
    "WispStack",
    "acting_as",
    "connect_tcp",
    "current_stack",
    "getaddrinfo",
    "install",
    "installed",
    "is_installed",
    "listen_tcp",
    "open_udp",
    "set_default_stack",
    "stack_from_environment",
    "stack_from_url",
    "uninstall",
    "use_stack",
]


def _fix_module_names() -> None:
    # Show the public path in reprs and docs, as anyio's fix_package_names() does.
    for name in __all__:
        if name not in globals():
            continue  # imported on first use (see __getattr__)
        value = globals()[name]
        if isinstance(value, type) or callable(value):
            with contextlib.suppress(AttributeError, TypeError):
                value.__module__ = __name__


_fix_module_names()


def __getattr__(name: str) -> Any:
    # IpStack's engine takes a tenth of a second to import: only on first use.
    if name == "IpStack":
        from .stacks.ip import IpStack

        IpStack.__module__ = __name__
        return IpStack
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
