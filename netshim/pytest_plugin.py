"""netshim's pytest plugin: virtual networks, real-network blocking and traffic evidence.

Installed with netshim and registered through the ``pytest11`` entry point,
it changes nothing until a test suite opts in:

* the ``netshim_network`` fixture gives a test a fresh virtual network,
  installed with :func:`netshim.install` as the host ``client`` for the
  test's duration (sync tests, anyio, pytest-asyncio and pytest-trio alike);
  ``netshim_options`` (a fixture to override) and the ``netshim`` marker
  configure it;
* ``--netshim-block`` (or ``netshim_block = true`` in the ini file, or
  ``@pytest.mark.netshim(block=True)`` on a test) makes real destinations
  fail the test with one line naming the destination, the test and the allow
  rule; ``--netshim-allow``, ``netshim_allow`` and the marker's ``allow``
  list what may be reached;
* a failed test using ``netshim_network`` gets a "netshim traffic" section
  in its report; ``--netshim-pcap=DIR`` writes one pcap file per test.

See docs/pytest.md for the guide.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from . import shim
from ._pytest._block import BlockingStack, NetworkBlockedError, parse_rules
from ._pytest._network import TestNetwork
from .pcap import PcapCapture
from .policy import Rule
from .stacks.host import HostStack

__all__ = ["BlockingStack", "NetworkBlockedError", "TestNetwork", "blocked_network"]

_NETWORK_OPTIONS = frozenset(
    {"seed", "client", "connect_timeout", "dns_timeout", "dns_attempts"}
    | {"ipv4_subnet", "ipv6_subnet"}
)
_CONFIGURE_OPTIONS = frozenset({"hosts", "records", "links"})
_BLOCK_OPTIONS = frozenset({"block", "allow"})
MARKER_OPTIONS = _NETWORK_OPTIONS | _CONFIGURE_OPTIONS | _BLOCK_OPTIONS

_network_key = pytest.StashKey[TestNetwork]()
_blocker_key = pytest.StashKey[BlockingStack]()
_reported_key = pytest.StashKey[bool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("netshim", "netshim: virtual networks and real-network blocking")
    group.addoption(
        "--netshim-block",
        action="store_true",
        default=None,
        help="fail tests that reach a real network destination not allowed "
        "(ini: netshim_block; per test: @pytest.mark.netshim(block=...))",
    )
    group.addoption(
        "--netshim-allow",
        action="append",
        default=[],
        metavar="RULE",
        help="a destination blocked tests may reach: IP, CIDR or name pattern, "
        "optionally :PORTS (127.0.0.1, 10.0.0.0/8, *.example.com:443); repeatable",
    )
    group.addoption(
        "--netshim-pcap",
        default=None,
        metavar="DIR",
        help="write the virtual traffic of each test using netshim_network to DIR/<test>.pcap",
    )
    parser.addini("netshim_block", "block the real network in every test", type="bool")
    parser.addini(
        "netshim_allow", "destinations blocked tests may reach, one per line", type="linelist"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "netshim(block=None, allow=(), seed=0, hosts=(), records={}, links={}, client='client', "
        "connect_timeout=..., dns_timeout=..., dns_attempts=...): configure netshim's "
        "real-network blocking and the netshim_network fixture for this test",
    )


# -- options from markers --------------------------------------------------------------


def marker_options(item: pytest.Item) -> dict[str, Any]:
    """The ``netshim`` markers' keyword arguments, the closest marker winning."""
    options: dict[str, Any] = {}
    for marker in reversed(list(item.iter_markers("netshim"))):
        if marker.args:
            pytest.fail(
                f"@pytest.mark.netshim takes keyword arguments only, got {marker.args!r}",
                pytrace=False,
            )
        unknown = set(marker.kwargs) - MARKER_OPTIONS
        if unknown:
            pytest.fail(
                f"unknown @pytest.mark.netshim option(s) {sorted(unknown)}; "
                f"known: {', '.join(sorted(MARKER_OPTIONS))}",
                pytrace=False,
            )
        options.update(marker.kwargs)
    return options


def _allow_rules(item: pytest.Item, options: dict[str, Any]) -> list[Rule]:
    config = item.config
    allow = list(config.getini("netshim_allow")) + list(config.getoption("netshim_allow"))
    extra = options.get("allow", ())
    if isinstance(extra, str):
        extra = [extra]
    try:
        return parse_rules([*allow, *extra])
    except (TypeError, ValueError) as exc:
        pytest.fail(str(exc), pytrace=False)


def _block_wanted(item: pytest.Item, options: dict[str, Any]) -> bool:
    if options.get("block") is not None:
        return bool(options["block"])
    if item.config.getoption("netshim_block"):
        return True
    return bool(item.config.getini("netshim_block"))


# -- blocking ------------------------------------------------------------------------


@contextmanager
def blocked_network(allow: Sequence[str] = (), *, test: str = "") -> Iterator[BlockingStack]:
    """Block the real network in the ``with`` block, except for ``allow``.

    For code outside a test's own run (a session fixture, a conftest):
    destinations not allowed raise :class:`NetworkBlockedError`.
    """
    stack = BlockingStack(HostStack(), parse_rules(allow), test=test)
    with shim.installed(stack):
        yield stack


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Any:
    # Raising before the yield would skip the other plugins' setup (and
    # break their teardown), so a bad marker is reported after it.
    error: BaseException | None = None
    try:
        options = marker_options(item)
        # A suite that installed a stack of its own chose its network already.
        if _block_wanted(item, options) and not shim.is_installed():
            stack = BlockingStack(HostStack(), _allow_rules(item, options), test=item.nodeid)
            shim.install(stack)
            item.stash[_blocker_key] = stack
    except pytest.fail.Exception as exc:
        error = exc
    result = yield
    if error is not None:
        raise error
    return result


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    try:
        return (yield)
    finally:
        if item.stash.get(_blocker_key, None) is not None:
            shim.uninstall()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report: pytest.TestReport = yield
    blocker = item.stash.get(_blocker_key, None)
    if blocker is not None and blocker.blocked and not item.stash.get(_reported_key, False):
        # One line, whatever the program made of the exception: it may have
        # caught it, wrapped it, or failed later for want of the connection.
        item.stash[_reported_key] = True
        report.outcome = "failed"
        report.longrepr = blocker.blocked[0].message
    network = item.stash.get(_network_key, None)
    if network is not None and report.failed:
        text = network.traffic.render() or "nothing crossed the virtual network"
        report.sections.append(("netshim traffic", text))
    return report


# -- the virtual network ------------------------------------------------------------------


@pytest.fixture
def netshim_options() -> dict[str, Any]:
    """Options for ``netshim_network``; override it in a conftest or module.

    Same keys as the ``netshim`` marker (``seed``, ``hosts``, ``records``,
    ``links``, ``client``, ``connect_timeout``, ``dns_timeout``,
    ``dns_attempts``); a marker on the test wins over it.
    """
    return {}


def _pcap_path(config: pytest.Config, nodeid: str) -> Path | None:
    directory = config.getoption("netshim_pcap")
    if not directory:
        return None
    root = Path(directory)
    if not root.is_absolute():
        root = config.invocation_params.dir / root
    root.mkdir(parents=True, exist_ok=True)
    # One file per test, named after its node id so that xdist workers
    # sharing the directory never write the same file.
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")[:200]
    return root / f"{name}.pcap"


@pytest.fixture
def netshim_network(
    request: pytest.FixtureRequest, netshim_options: dict[str, Any]
) -> Iterator[TestNetwork]:
    """A fresh virtual network, installed for this test as its host ``client``.

    Every socket the test (and the code it calls) opens goes through the
    network; servers run on other hosts with ``netshim_network.serve()``.
    Torn down after the test: servers stopped, the socket module restored.
    """
    options = {**netshim_options, **marker_options(request.node)}
    unknown = set(options) - MARKER_OPTIONS
    if unknown:
        pytest.fail(f"unknown netshim_options key(s) {sorted(unknown)}", pytrace=False)
    network = TestNetwork(**{k: v for k, v in options.items() if k in _NETWORK_OPTIONS})
    network.configure(**{k: v for k, v in options.items() if k in _CONFIGURE_OPTIONS})
    path = _pcap_path(request.config, request.node.nodeid)
    capture: PcapCapture | None = network.capture(path) if path is not None else None
    request.node.stash[_network_key] = network
    try:
        with shim.installed(network.client):
            try:
                yield network
            finally:
                network.stop_servers()
    finally:
        if capture is not None:
            capture.close()
