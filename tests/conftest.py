"""Shared test setup: the anyio backends every async test runs on.

Tests that need a real peer program call ``netshim.testing.require_peer``.
"""

from __future__ import annotations

import pytest

from netshim.testing import require_peer

__all__ = ["require_peer"]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
