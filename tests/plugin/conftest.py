"""The plugin's tests run inner pytest sessions with pytest's own ``pytester``.

``pytester`` is enabled in tests/conftest.py: pytest accepts ``pytest_plugins``
only in the top-level conftest.
"""

from __future__ import annotations

import pytest
from plugin_support import INI


@pytest.fixture(autouse=True)
def _inner_ini(pytester: pytest.Pytester) -> None:
    # The inner sessions run with the outer warning filters (errors), so they
    # need the settings that keep their plugins quiet.
    pytester.makeini(INI)
