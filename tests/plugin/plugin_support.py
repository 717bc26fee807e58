"""What the plugin's tests share: the inner sessions' ini file."""

from __future__ import annotations

#: pytest-asyncio warns at startup unless its fixture loop scope is set.
INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
"""
