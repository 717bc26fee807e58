"""Helpers for the tests of netshim.net, dgram and dns.

``require_peer`` is the one in ``tests/conftest.py``, loaded by path: with
several ``conftest.py`` files under ``tests/`` (compat/, shim/), the module
named ``conftest`` is whichever pytest imported last, so ``from conftest
import require_peer`` works or fails depending on collection order.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def _root_conftest() -> ModuleType:
    name = "netshim_tests_root_conftest"
    module = sys.modules.get(name)
    if module is None:
        path = Path(__file__).resolve().parent.parent / "conftest.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


def require_peer(program: str) -> str:
    """Path of ``program``; skip when missing, fail under ``NETSHIM_REQUIRE_PEERS=1``."""
    found: str = _root_conftest().require_peer(program)
    return found
