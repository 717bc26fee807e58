"""Fixtures of the ip engine's tests against the kernel."""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterator

import pytest
from namespaces import run

from netshim.testing import require_peer


@pytest.fixture
def netns() -> Iterator[str]:
    require_peer("ip")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    name = f"netshim-test-{os.getpid()}-{random.randrange(1 << 30)}"
    run("ip", "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
