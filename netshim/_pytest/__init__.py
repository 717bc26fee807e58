"""The parts of netshim's pytest plugin (:mod:`netshim.pytest_plugin` is the plugin itself).

They import nothing from pytest, so they can be used and tested on their own:
:mod:`._network` (the test's network), :mod:`._serve` and :mod:`._asgi`
(servers as virtual hosts), :mod:`._block` (blocking the real network) and
:mod:`._summary` (the traffic summary of a failed test).
"""

from ._block import BlockingStack as BlockingStack
from ._block import NetworkBlockedError as NetworkBlockedError
from ._network import TestNetwork as TestNetwork
from ._serve import Server as Server
from ._summary import TrafficSummary as TrafficSummary

__all__ = ["BlockingStack", "NetworkBlockedError", "Server", "TestNetwork", "TrafficSummary"]
