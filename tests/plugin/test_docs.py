"""The examples in docs/pytest.md are complete test modules: run each one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

GUIDE = Path(__file__).parents[2] / "docs" / "pytest.md"


def examples() -> dict[str, str]:
    """``{file name: source}`` of the guide's code blocks that open with ``# test_*.py``."""
    blocks = re.findall(r"```python\n(# (test_\w+\.py)\n.*?)```", GUIDE.read_text(), re.S)
    return {name: source for source, name in blocks}


def test_the_guide_has_the_promised_examples() -> None:
    assert sorted(examples()) == [
        "test_dns_failover.py",
        "test_flaky_upstream.py",
        "test_httpx_aiohttp.py",
        "test_udp_loss.py",
    ]


@pytest.mark.parametrize("name", sorted(examples()))
def test_example_passes(pytester: pytest.Pytester, name: str) -> None:
    pytester.makepyfile(**{name[:-3]: examples()[name]})
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(params=["asyncio", "trio"])
        def anyio_backend(request):
            return request.param
        """
    )
    result = pytester.runpytest("-v")
    assert result.ret == 0, result.stdout.str()
    assert result.parseoutcomes()["passed"] >= 1
