"""Installs netshim at interpreter start-up, for ``netshim run -- PROGRAM``.

``netshim run`` puts this directory first on ``PYTHONPATH``, so every Python
process the program starts (itself, and any Python it spawns with the same
environment) imports this module before ``__main__`` and calls
``netshim.install()``, which builds the stack from ``NETSHIM_STACK`` (or
``ALL_PROXY`` / ``NO_PROXY``).

The directory holds nothing else, and it leaves ``sys.path`` as it found it,
so it shadows no module of the program's.  It does shadow any other
``sitecustomize`` (Debian ships one), so it runs that one afterwards.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _same(entry: str) -> bool:
    try:
        return os.path.samefile(entry or ".", _HERE)
    except OSError:
        return False


def _install() -> None:
    sys.path[:] = [entry for entry in sys.path if not _same(entry)]
    try:
        import netshim
    except ImportError:
        # An interpreter that does not have netshim installed (a different
        # venv) still gets this copy, appended so that it shadows nothing.
        sys.path.append(os.path.dirname(os.path.dirname(_HERE)))
        import netshim
    netshim.install()


def _chain() -> None:
    """Run the ``sitecustomize`` this one hides, as ``site`` would have."""
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", sys.path)
    if (
        spec is None
        or spec.loader is None
        or spec.origin is None
        or _same(os.path.dirname(spec.origin))
    ):
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


try:
    _install()
except Exception as exc:
    # ``site`` would print a warning and go on, and the program would then
    # reach the network directly, which is what the user asked not to happen.
    sys.stderr.write(f"netshim run: cannot install netshim: {type(exc).__name__}: {exc}\n")
    sys.stderr.flush()
    os._exit(1)
_chain()
