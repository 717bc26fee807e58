"""``dns.promises``: the same coroutines as :mod:`netshim.dns`, under Node's other name.

Node has callback and promise flavours; in Python every function here is
already a coroutine, so this module re-exports :mod:`netshim.dns` for code
ported from ``require("dns").promises``.
"""

from . import (
    Resolver as Resolver,
)
from . import (
    get_servers as get_servers,
)
from . import (
    lookup as lookup,
)
from . import (
    lookup_service as lookup_service,
)
from . import (
    resolve as resolve,
)
from . import (
    resolve4 as resolve4,
)
from . import (
    resolve6 as resolve6,
)
from . import (
    resolve_any as resolve_any,
)
from . import (
    resolve_caa as resolve_caa,
)
from . import (
    resolve_cname as resolve_cname,
)
from . import (
    resolve_mx as resolve_mx,
)
from . import (
    resolve_naptr as resolve_naptr,
)
from . import (
    resolve_ns as resolve_ns,
)
from . import (
    resolve_ptr as resolve_ptr,
)
from . import (
    resolve_soa as resolve_soa,
)
from . import (
    resolve_srv as resolve_srv,
)
from . import (
    resolve_txt as resolve_txt,
)
from . import (
    reverse as reverse,
)
from . import (
    set_servers as set_servers,
)

__all__ = [
    "Resolver",
    "get_servers",
    "lookup",
    "lookup_service",
    "resolve",
    "resolve4",
    "resolve6",
    "resolve_any",
    "resolve_caa",
    "resolve_cname",
    "resolve_mx",
    "resolve_naptr",
    "resolve_ns",
    "resolve_ptr",
    "resolve_soa",
    "resolve_srv",
    "resolve_txt",
    "reverse",
    "set_servers",
]
