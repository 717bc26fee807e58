"""Fixtures of the ip engine's tests against the kernel."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from namespaces import namespace

from netshim.testing import require_peer


@pytest.fixture
def netns() -> Iterator[str]:
    require_peer("ip")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    with namespace("netshim-test") as name:
        yield name
