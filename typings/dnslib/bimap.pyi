from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

class BimapError(Exception): ...

# Called as error(name, key, forward) for a missing key: returns the value to
# use or raises.  dnslib's QTYPE uses one to map unknown codes to "TYPEnnn".
_ErrorHandler: TypeAlias = Callable[[str, Any, bool], Any]

class Bimap:
    """Code <-> mnemonic map: ``bimap[1] == "A"`` forward, ``bimap.A == 1`` reverse.

    Item access is the forward (code to text) direction only; ``bimap["A"]``
    raises.  Use attribute access, ``getattr(bimap, text)`` or ``bimap.reverse``
    for text to code.
    """

    name: str
    error: type[Exception] | _ErrorHandler
    forward: dict[int, str]
    reverse: dict[str, int]
    def __init__(
        self,
        name: str,
        forward: Mapping[int, str],
        error: type[Exception] | _ErrorHandler = ...,
    ) -> None: ...
    def get(self, k: int, default: str | None = None) -> str: ...
    def __getitem__(self, k: int) -> str: ...
    def __getattr__(self, k: str) -> int: ...
