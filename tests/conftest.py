"""Shared test setup: the anyio backends every async test runs on.

Tests that need a real peer program call ``netshim.testing.require_peer``.
"""

from __future__ import annotations

import os

import anyio
import pytest

from netshim.testing import REQUIRE_PEERS_VARIABLE, require_peer

__all__ = ["REQUIRE_PEERS", "require_peer"]

# The pytest plugin's tests (tests/plugin) run inner sessions; pytest allows
# pytest_plugins only in the top-level conftest.
pytest_plugins = ["pytester"]

#: Whether CI demands every peer program (see netshim.testing.require_peer).
REQUIRE_PEERS = os.environ.get(REQUIRE_PEERS_VARIABLE) == "1"

# anyio imports its submodules on first use, and pytest rewrites them as it
# imports them (anyio is a pytest plugin).  CPython 3.11.7 can fail such a
# compile deep in a call stack ("AST constructor recursion depth mismatch",
# fixed in 3.11.8), which happened mid-test for anyio.open_process.  Loading
# every lazy name now does that work at a shallow depth, once.
for _name in dir(anyio):
    if not _name.startswith("_"):
        getattr(anyio, _name)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
