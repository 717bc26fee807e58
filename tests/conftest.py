"""Shared test helpers: real peers, and the anyio backends every async test runs on."""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRE_PEERS = os.environ.get("NETSHIM_REQUIRE_PEERS") == "1"


def require_peer(program: str) -> str:
    """Path of ``program``; skip the test when it is missing, or fail under CI.

    CI sets ``NETSHIM_REQUIRE_PEERS=1`` after installing every peer, so a peer
    that is missing there is a broken install, not a reason to skip.
    """
    path = shutil.which(program)
    if path is None:
        message = f"peer program {program!r} is not installed"
        if REQUIRE_PEERS:
            pytest.fail(f"{message} (NETSHIM_REQUIRE_PEERS=1)")
        pytest.skip(message)
    return path


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
