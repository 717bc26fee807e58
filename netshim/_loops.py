"""Which event loop runs the caller, asked of asyncio and trio themselves.

sniffio answers the same question, but it is not among netshim's dependencies
(recent anyio does without it) and netshim's Pyodide install does not carry
it, so code that needs the answer on a hot path or in Pyodide asks here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import anyio

__all__ = ["loop_clock", "running_library"]


def running_library() -> str | None:
    """``"asyncio"``, ``"trio"`` or ``None`` (no event loop runs in this thread)."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return "asyncio"
    trio = sys.modules.get("trio")
    if trio is not None and trio.lowlevel.in_trio_run():
        return "trio"
    return None


def loop_clock() -> Callable[[], float]:
    """The running loop's clock: the values of ``anyio.current_time()``, without its lookup.

    asyncio's is the loop's ``time()`` and trio's ``trio.current_time()``;
    ``anyio.current_time`` itself elsewhere.
    """
    library = running_library()
    if library == "asyncio":
        import asyncio

        return asyncio.get_running_loop().time
    if library == "trio":
        import trio

        return trio.current_time
    return anyio.current_time
