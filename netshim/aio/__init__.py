"""asyncio on a stack without file descriptors: loop hooks and pure-Python transports.

Where there is no socketpair (Pyodide) or no wish for one, netshim reaches
asyncio through the event loop's own network methods instead of through
sockets (DESIGN decision 4).  :func:`install_loop_hooks` (or
``netshim.install(stack, mode="loop")``, the default in Pyodide) makes
``loop.create_connection``, ``create_server``, ``create_datagram_endpoint``,
``getaddrinfo`` and ``getnameinfo`` answer from the stack, with transports
that are plain Python objects over the stack's streams.
``asyncio.open_connection`` / ``start_server``, anyio's ``connect_tcp`` and
UDP sockets, and the libraries built on them follow.  In Pyodide,
:class:`StackSocket` also serves the synchronous ``socket`` API.
"""

from ._hooks import install_loop_hooks as install_loop_hooks
from ._hooks import loop_hooks_installed as loop_hooks_installed
from ._hooks import uninstall_loop_hooks as uninstall_loop_hooks
from ._server import StackServer as StackServer
from ._sync import CannotBlockError as CannotBlockError
from ._sync import StackSocket as StackSocket
from ._sync import can_block as can_block
from ._transports import StackDatagramTransport as StackDatagramTransport
from ._transports import StackSocketView as StackSocketView
from ._transports import StackStreamTransport as StackStreamTransport

__all__ = [
    "CannotBlockError",
    "StackDatagramTransport",
    "StackServer",
    "StackSocket",
    "StackSocketView",
    "StackStreamTransport",
    "can_block",
    "install_loop_hooks",
    "loop_hooks_installed",
    "uninstall_loop_hooks",
]
