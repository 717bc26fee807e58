"""The plugin's tests run inner pytest sessions with pytest's own ``pytester``."""

from __future__ import annotations

import pytest
from plugin_support import INI

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def _inner_ini(pytester: pytest.Pytester) -> None:
    # The inner sessions run with the outer warning filters (errors), so they
    # need the settings that keep their plugins quiet.
    pytester.makeini(INI)
