"""Whole programs in a network namespace whose only way out is netshim: ``--isolate``.

``netshim.install()`` reroutes what goes through Python's ``socket`` module; C
extensions (libpq, grpc, libcurl) and child processes go around it.  This
package confines everything a program and its children do, as slirp4netns and
pasta do: the program runs in a new network namespace (inside a new user
namespace, so no privilege is needed where the kernel allows unprivileged
user namespaces) whose interfaces are ``lo`` and a TUN device.  netshim holds
the TUN device's other end in the parent process and terminates every flow
with its own TCP/IP (:mod:`netshim.ip`) onto a stack and a policy.

Addressing follows slirp4netns, so existing habits carry over
(:class:`Addressing`): the program is 10.0.2.100/24 and fd00::100/64, the
gateway 10.0.2.2 and fd00::2, DNS 10.0.2.3, and the namespace's
``/etc/resolv.conf`` (bind-mounted in a private mount namespace; the
machine's file is untouched) names it.

:func:`run` confines a command and returns its exit status, its traffic carried
onto a stack through a policy (:class:`~netshim.isolate._terminate.Terminator`);
``netshim run --isolate`` is its command line.  :func:`spawn` is the low-level
step: it builds the namespace and hands back the TUN descriptor and the (not
yet started) program.  Where confinement
cannot be had (no ``/dev/net/tun``, user namespaces disabled, not Linux) it
raises :class:`IsolationUnavailableError` with one line saying what is
missing; it never falls back to running the program on the real network.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = ["Addressing", "IsolatedProgram", "IsolationUnavailableError", "run", "spawn"]


# slirp4netns's addressing, so that habits and documentation carry over.
_PROGRAM4 = ipaddress.IPv4Interface("10.0.2.100/24")
_GATEWAY4 = ipaddress.IPv4Address("10.0.2.2")
_DNS4 = ipaddress.IPv4Address("10.0.2.3")
_PROGRAM6 = ipaddress.IPv6Interface("fd00::100/64")
_GATEWAY6 = ipaddress.IPv6Address("fd00::2")
_DNS6 = ipaddress.IPv6Address("fd00::3")


class IsolationUnavailableError(OSError):
    """The machine cannot confine a program (the message says what is missing)."""


@dataclass(frozen=True)
class Addressing:
    """The namespace's addresses: the program's, the gateway's and the DNS server's."""

    program4: ipaddress.IPv4Interface = _PROGRAM4
    gateway4: ipaddress.IPv4Address = _GATEWAY4
    dns4: ipaddress.IPv4Address = _DNS4
    program6: ipaddress.IPv6Interface | None = _PROGRAM6
    gateway6: ipaddress.IPv6Address = _GATEWAY6
    dns6: ipaddress.IPv6Address = _DNS6
    mtu: int = 1500
    tun_name: str = "tun0"

    def __post_init__(self) -> None:
        if self.gateway4 not in self.program4.network or self.dns4 not in self.program4.network:
            raise ValueError(f"gateway and DNS addresses must be inside {self.program4.network}")
        if self.program6 is not None and self.gateway6 not in self.program6.network:
            raise ValueError(f"the IPv6 gateway must be inside {self.program6.network}")
        if not 576 <= self.mtu <= 65521:
            raise ValueError(f"mtu must be in 576..65521, got {self.mtu}")
        if not 1 <= len(self.tun_name) <= 15:
            raise ValueError("tun_name must be 1 to 15 characters")


@dataclass
class IsolatedProgram:
    """A program inside its namespace, waiting for :meth:`start`; its TUN device's descriptor."""

    process: subprocess.Popen[bytes]
    tun_fd: int
    addressing: Addressing
    _channel: socket.socket
    _directory: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    def take_tun_fd(self) -> int:
        """The TUN descriptor, now the caller's to close (a link adopts it)."""
        fd, self.tun_fd = self.tun_fd, -1
        return fd

    def start(self) -> None:
        """Let the program run (its traffic must be carried from now on)."""
        with contextlib.suppress(OSError):
            self._channel.send(b"g")
        self._channel.close()

    def close(self) -> None:
        """Kill the program if it still runs, and release the descriptor and files."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()
        self._channel.close()
        if self.tun_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.tun_fd)
            self.tun_fd = -1
        if self._directory is not None:
            self._directory.cleanup()
            self._directory = None


def _check_platform() -> None:
    if not sys.platform.startswith("linux"):
        raise IsolationUnavailableError(
            "--isolate needs Linux network namespaces; this is " + sys.platform
        )
    if not Path("/dev/net/tun").exists():
        raise IsolationUnavailableError(
            "no /dev/net/tun: load the tun module (modprobe tun), or in a container "
            "pass the device (docker run --device /dev/net/tun)"
        )


def _write_id_maps(pid: int) -> None:
    """Map the new user namespace's ids: the caller to itself, or for root every id."""
    uid, gid = os.geteuid(), os.getegid()
    proc = Path(f"/proc/{pid}")
    if uid == 0:
        (proc / "uid_map").write_text("0 0 4294967295")
        (proc / "gid_map").write_text("0 0 4294967295")
    else:
        # Without privilege a process maps only its own ids, and only once
        # setgroups is refused in the namespace (user_namespaces(7)).
        (proc / "setgroups").write_text("deny")
        (proc / "uid_map").write_text(f"{uid} {uid} 1")
        (proc / "gid_map").write_text(f"{gid} {gid} 1")


def spawn(
    argv: Sequence[str],
    *,
    addressing: Addressing | None = None,
    vnet_hdr: bool = False,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stdin: int | IO[Any] | None = None,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
) -> IsolatedProgram:
    """Build a namespace for ``argv`` and return it unstarted, with its TUN descriptor.

    ``vnet_hdr`` creates the device with ``IFF_VNET_HDR`` (every packet read
    or written carries a virtio-net header: what checksum and segmentation
    offloads need).  Raises :class:`IsolationUnavailableError` when the
    namespace cannot be built.
    """
    if not argv:
        raise ValueError("no program to run")
    _check_platform()
    addressing = addressing or Addressing()
    directory = tempfile.TemporaryDirectory(prefix="netshim-isolate-")
    resolv_conf = Path(directory.name) / "resolv.conf"
    resolv_conf.write_text(
        "# netshim run --isolate: the namespace's resolver, answered by netshim\n"
        f"nameserver {addressing.dns4}\n"
    )
    resolv_conf.chmod(0o644)
    Path(directory.name).chmod(0o755)
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    config = {
        "socket": child_end.fileno(),
        "tun": addressing.tun_name,
        "mtu": addressing.mtu,
        "vnet_hdr": vnet_hdr,
        "ipv4": str(addressing.program4),
        "gateway4": str(addressing.gateway4),
        "ipv6": str(addressing.program6) if addressing.program6 is not None else None,
        "gateway6": str(addressing.gateway6),
        "resolv_conf": str(resolv_conf),
    }
    command = [sys.executable, "-m", "netshim.isolate._setup", json.dumps(config), "--", *argv]
    try:
        process = subprocess.Popen(
            command,
            pass_fds=[child_end.fileno()],
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
        )
    except BaseException:
        parent_end.close()
        directory.cleanup()
        raise
    finally:
        child_end.close()
    error = ""
    message, fds = b"", list[int]()
    try:
        with parent_end.makefile("rb") as reader:
            first = reader.readline()
        if json.loads(first.decode() or "{}").get("unshared"):
            _write_id_maps(process.pid)
            parent_end.send(b"m")
            message, fds, _, _ = socket.recv_fds(parent_end, 4096, 1)
        else:
            message = first
    except (OSError, ValueError) as exc:
        error = f"the namespace's set-up step failed: {exc}"
    report: dict[str, Any] = {}
    with contextlib.suppress(ValueError):
        report = json.loads(message.decode() or "{}")
    if not fds or not report.get("ready"):
        for fd in fds:
            os.close(fd)
        parent_end.close()
        process.wait()
        directory.cleanup()
        raise IsolationUnavailableError(
            report.get("error")
            or error
            or f"the namespace's set-up step exited with {process.returncode}"
        )
    return IsolatedProgram(process, fds[0], addressing, parent_end, directory)


async def run(
    argv: Sequence[str],
    *,
    stack: Any = None,
    policy: Any = None,
    addressing: Addressing | None = None,
    refusal: str = "reset",
    connect_timeout: float = 30.0,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stdin: int | IO[Any] | None = None,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
) -> int:
    """Run ``argv`` confined, its every flow carried onto ``stack`` through ``policy``.

    ``stack`` defaults to the host network (:class:`netshim.HostStack`),
    ``policy`` to :class:`netshim.policy.Policy`'s defaults (private,
    loopback and metadata destinations refused).  ``refusal`` is how a
    refused connection reaches the program: ``"reset"`` or ``"icmp"``.
    ``connect_timeout`` is how long a destination has to answer a
    connection before the program gets an ICMP host unreachable
    (``EHOSTUNREACH``).  Returns the exit status as a shell reports it (``128 + N`` after signal
    N); cancelled, the program is killed.
    """
    import anyio

    from ..ip.links import TunLink
    from ..policy import Policy
    from ..stacks.host import HostStack
    from ._terminate import Terminator

    addressing = addressing or Addressing()
    program = spawn(
        argv,
        addressing=addressing,
        vnet_hdr=True,
        env=env,
        cwd=cwd,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
    )
    try:
        link = TunLink.from_fd(program.take_tun_fd(), offload=True)
        terminator = Terminator(
            link,
            stack if stack is not None else HostStack(),
            policy=policy if policy is not None else Policy(),
            addressing=addressing,
            refusal="icmp" if refusal == "icmp" else "reset",
            connect_timeout=connect_timeout,
        )
        async with anyio.create_task_group() as group:
            await group.start(terminator.run)
            program.start()
            status = await anyio.to_thread.run_sync(program.process.wait, abandon_on_cancel=True)
            group.cancel_scope.cancel()
        return status if status >= 0 else 128 - status
    finally:
        program.close()
