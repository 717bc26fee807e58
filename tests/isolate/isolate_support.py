"""What the ``--isolate`` tests share: the check that the machine can confine, and a runner."""

from __future__ import annotations

import os
import sys

import pytest

from netshim.isolate import run
from netshim.testing import REQUIRE_PEERS_VARIABLE

__all__ = ["confined", "isolation_available"]


@pytest.fixture
def isolation_available() -> None:
    """Skip where the machine cannot confine (fail instead when peers are required)."""
    problem = None
    if not sys.platform.startswith("linux"):
        problem = "not Linux"
    elif not os.path.exists("/dev/net/tun"):
        problem = "no /dev/net/tun"
    if problem is not None:
        if os.environ.get(REQUIRE_PEERS_VARIABLE) == "1":
            pytest.fail(f"network namespaces unavailable: {problem}")
        pytest.skip(problem)


async def confined(argv: list[str], **options: object) -> tuple[int, str]:
    """Run ``argv`` confined; its exit status and standard output."""
    read_end, write_end = os.pipe()
    try:
        status = await run(argv, stdout=write_end, **options)  # type: ignore[arg-type]
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        return status, reader.read().decode()
