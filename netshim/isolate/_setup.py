"""The step between ``netshim run --isolate`` and the program: build the namespace, then exec.

Run as ``python -m netshim.isolate._setup CONFIG -- PROGRAM [ARGS]`` with a
Unix socket to the parent as the descriptor ``CONFIG["socket"]``.  In this
order, in a single-threaded process (``unshare(CLONE_NEWUSER)`` refuses
threaded callers):

1. ``unshare`` a new user, network and mount namespace; the parent writes the
   user namespace's maps (the caller to itself, or for root the whole identity
   range), so the program keeps its uid.  As the creator, this process holds
   every capability inside
   the new namespaces until it executes the program, which then has none
   (unless it is uid 0, whose capabilities reach only what the new user
   namespace owns: it cannot ``setns`` back into the machine's network).
2. Mount propagation private, and a ``resolv.conf`` naming the namespace's
   DNS address bind-mounted over ``/etc/resolv.conf`` (over its target, when
   it is a symlink), so the machine's file is untouched.
3. Loopback up; a TUN device (``IFF_TUN | IFF_NO_PI``, plus ``IFF_VNET_HDR``
   when asked) up with its MTU, addresses and default routes through the
   namespace's gateway addresses (rtnetlink, :mod:`._netlink`).
4. The TUN descriptor goes to the parent (``SCM_RIGHTS``) and is closed
   here; the parent answers once it is ready to carry the program's traffic.
5. ``execvp`` the program.

Any failure is reported to the parent as one line (and to stderr), and the
process exits with status 125, as ``env`` and ``unshare`` do for their own
failures; nothing of the program has run then.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import ipaddress
import json
import os
import socket
import struct
import sys
from pathlib import Path
from typing import Any

from ._netlink import Netlink

__all__ = ["SETUP_FAILED", "main"]

#: Exit status when the namespace could not be built.
SETUP_FAILED = 125

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000


class SetupError(Exception):
    """One step of building the namespace failed; the message says which and what to do."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _unshare(libc: ctypes.CDLL, channel: socket.socket) -> None:
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWNS) != 0:
        code = ctypes.get_errno()
        raise SetupError(
            f"cannot create a user namespace ({errno.errorcode.get(code, code)}: "
            f"{os.strerror(code)}); unprivileged user namespaces may be disabled here "
            "(sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone, "
            "kernel.apparmor_restrict_unprivileged_userns): allow them, or run as root"
        )
    # The parent writes the identity maps: it is still in the machine's user
    # namespace, where a map wider than one's own uid needs CAP_SETUID.
    _report(channel, {"unshared": True})
    if channel.recv(1) != b"m":
        raise SetupError("the parent could not map the namespace's user ids")


def _mount(libc: ctypes.CDLL, source: str | None, target: str, flags: int, what: str) -> None:
    result = libc.mount(
        source.encode() if source is not None else None, target.encode(), None, flags, None
    )
    if result != 0:
        code = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(code)}")


def _replace_resolv_conf(libc: ctypes.CDLL, replacement: str) -> None:
    _mount(libc, None, "/", _MS_REC | _MS_PRIVATE, "making mounts private")
    target = Path("/etc/resolv.conf")
    if target.is_symlink() or target.exists():
        # systemd-resolved's /etc/resolv.conf is a symlink; a bind mount
        # over a symlink would cover the link's target anyway.
        real = os.path.realpath(target)
        if not Path(real).exists():
            Path(real).parent.mkdir(parents=True, exist_ok=True)
            Path(real).touch()
        _mount(
            libc,
            replacement,
            real,
            _MS_BIND,
            f"bind-mounting the namespace's resolv.conf on {real}",
        )


def _open_tun(name: str, vnet_hdr: bool) -> int:
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SetupError(
            "no /dev/net/tun: load the tun module (modprobe tun), or in a container "
            "pass the device (docker run --device /dev/net/tun)"
        ) from None
    except OSError as exc:
        raise SetupError(f"cannot open /dev/net/tun: {exc.strerror}") from None
    flags = _IFF_TUN | _IFF_NO_PI | (_IFF_VNET_HDR if vnet_hdr else 0)
    request = struct.pack("16sH", name.encode(), flags).ljust(40, b"\0")
    try:
        fcntl.ioctl(fd, _TUNSETIFF, request)
    except OSError as exc:
        os.close(fd)
        raise SetupError(f"cannot create the TUN device {name}: {exc.strerror}") from None
    return fd


def _configure(config: dict[str, Any]) -> int:
    name = str(config["tun"])
    tun = _open_tun(name, bool(config.get("vnet_hdr", False)))
    with Netlink() as netlink:
        netlink.set_link(socket.if_nametoindex("lo"))
        index = socket.if_nametoindex(name)
        netlink.set_link(index, mtu=int(config["mtu"]))
        for key, gateway_key in (("ipv4", "gateway4"), ("ipv6", "gateway6")):
            if config.get(key):
                netlink.add_address(index, ipaddress.ip_interface(config[key]))
                netlink.add_default_route(index, ipaddress.ip_address(config[gateway_key]))
    return tun


def _report(channel: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode() + b"\n"
    if fds:
        socket.send_fds(channel, [data], fds)
    else:
        channel.sendall(data)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m netshim.isolate._setup CONFIG -- PROGRAM [ARGS]", file=sys.stderr)
        return 2
    config = json.loads(argv[0])
    program = argv[2:]
    channel = socket.socket(fileno=int(config["socket"]))
    try:
        libc = _libc()
        _unshare(libc, channel)
        if config.get("resolv_conf"):
            _replace_resolv_conf(libc, str(config["resolv_conf"]))
        tun = _configure(config)
    except (SetupError, OSError) as exc:
        message = str(exc) if isinstance(exc, SetupError) else f"setting up the namespace: {exc}"
        print(f"netshim run --isolate: {message}", file=sys.stderr)
        _report(channel, {"error": message})
        return SETUP_FAILED
    _report(channel, {"ready": True}, [tun])
    os.close(tun)
    # The parent's go: it holds the TUN device and carries traffic from now.
    answer = channel.recv(1)
    channel.close()
    if answer != b"g":
        return SETUP_FAILED
    try:
        os.execvp(program[0], program)
    except OSError as exc:
        print(f"netshim run --isolate: {program[0]}: {exc.strerror}", file=sys.stderr)
        return 127 if exc.errno == errno.ENOENT else 126
    return SETUP_FAILED  # not reached: execvp replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
