"""Network namespaces with a TUN or TAP device whose descriptor the test holds.

A process inside the namespace opens the device there (``TUNSETIFF`` acts in
the opener's namespace) and hands the descriptor back over a Unix socket,
which :meth:`netshim.ip.links.TapLink.from_fd` adopts.  The ``netns`` fixture
(conftest.py) makes and removes the namespace.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv6Address

import anyio

__all__ = [
    "DEVICE",
    "KERNEL_V4",
    "KERNEL_V6",
    "configure_kernel_side",
    "in_namespace",
    "namespace",
    "open_device",
    "run",
]

KERNEL_V4 = IPv4Address("10.77.0.1")
KERNEL_V6 = IPv6Address("2001:db8:77::1")
DEVICE = "nstest0"

# Run inside the namespace: open the device there and pass the descriptor back.
_OPENER = """
import fcntl, os, socket, struct, sys
flags = int(sys.argv[2]) | 0x1000 | 0x4000  # IFF_NO_PI | IFF_VNET_HDR
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", sys.argv[1].encode(), flags))
channel = socket.socket(fileno=int(sys.argv[3]))
socket.send_fds(channel, [b"fd"], [fd])
"""


def run(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


@contextmanager
def namespace(prefix: str) -> Iterator[str]:
    """A new network namespace named after ``prefix``, loopback up; deleted on exit."""
    name = f"{prefix}-{os.getpid()}-{random.randrange(1 << 30)}"
    run("ip", "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def open_device(namespace: str, mode: int) -> int:
    """A ``/dev/net/tun`` descriptor attached to a new device in ``namespace``."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        subprocess.run(
            ["ip", "netns", "exec", namespace, sys.executable, "-c", _OPENER,
             DEVICE, str(mode), str(theirs.fileno())],
            check=True, pass_fds=[theirs.fileno()], capture_output=True,
        )  # fmt: skip
        _message, fds, _flags, _address = socket.recv_fds(ours, 16, 1)
    return fds[0]


def configure_kernel_side(namespace: str) -> None:
    ip = ("ip", "-n", namespace)
    run(*ip, "addr", "add", f"{KERNEL_V4}/24", "dev", DEVICE)
    run(*ip, "-6", "addr", "add", f"{KERNEL_V6}/64", "dev", DEVICE, "nodad")
    run(*ip, "link", "set", DEVICE, "up")


async def in_namespace(namespace: str, *command: str, stdin: bytes | None = None) -> str:
    result = await anyio.run_process(
        ["ip", "netns", "exec", namespace, *command], input=stdin, check=False
    )
    assert result.returncode == 0, (command, result.stdout, result.stderr)
    return result.stdout.decode()
