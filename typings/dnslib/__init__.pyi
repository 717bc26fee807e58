# dnslib's package namespace is ``from dnslib.dns import *`` plus ``version``.
from dnslib.dns import *  # noqa: F403

version: str
