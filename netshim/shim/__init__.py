"""The socket shim: unmodified code on any stack through ``netshim.install()``."""

import contextlib

from ._patch import acting_as as acting_as
from ._patch import install as install
from ._patch import installed as installed
from ._patch import is_installed as is_installed
from ._patch import uninstall as uninstall
from ._socket import ShimSocket as ShimSocket

# Pyodide ships no ssl module; the loop hooks need none.
with contextlib.suppress(ImportError):
    from ._ssl import ShimSSLSocket as ShimSSLSocket

__all__ = [
    "ShimSSLSocket",
    "ShimSocket",
    "acting_as",
    "install",
    "installed",
    "is_installed",
    "uninstall",
]
