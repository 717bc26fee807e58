"""``netshim.isolate.spawn``: the namespace a confined program runs in, seen from both sides."""

from __future__ import annotations

import ipaddress
import json
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from isolate_support import isolation_available  # noqa: F401

from netshim.isolate import Addressing, IsolationUnavailableError, spawn
from netshim.protocols.ip import IpProtocol, Ipv4Repr, TcpFlags, TcpRepr

pytestmark = [pytest.mark.peer("netns"), pytest.mark.usefixtures("isolation_available")]


PROBE = r"""
import json, os, socket
report = {
    "interfaces": sorted(name for _, name in socket.if_nameindex()),
    "resolv_conf": open("/etc/resolv.conf").read(),
    "uid": os.getuid(),
}
probe = socket.socket()
try:
    probe.connect(("127.0.0.1", int(os.environ["HOST_PORT"])))
    report["host_loopback"] = "reached"
except OSError as exc:
    report["host_loopback"] = exc.errno
sender = socket.socket()
sender.setblocking(False)
try:
    sender.connect(("10.0.2.2", 8080))
except BlockingIOError:
    pass
print(json.dumps(report), flush=True)
import time; time.sleep(2)
"""


def read_packets(fd: int, seconds: float) -> list[bytes]:
    packets, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            packets.append(os.read(fd, 65536))
    return packets


def test_the_program_sees_loopback_and_the_tun_device_only_and_its_packets_reach_us() -> None:
    with socket.create_server(("127.0.0.1", 0)) as host_listener:
        env = dict(os.environ, HOST_PORT=str(host_listener.getsockname()[1]))
        program = spawn([sys.executable, "-c", PROBE], env=env, stdout=subprocess.PIPE)
        try:
            program.start()
            assert program.process.stdout is not None
            report = json.loads(program.process.stdout.readline())
            packets = read_packets(program.tun_fd, 1.0)
        finally:
            program.close()
        host_listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            host_listener.accept()
    assert report["interfaces"] == ["lo", "tun0"]
    assert "nameserver 10.0.2.3" in report["resolv_conf"]
    assert report["uid"] == os.getuid()
    # The machine's loopback is not the namespace's: nothing listens there.
    assert report["host_loopback"] == 111  # ECONNREFUSED
    syns = []
    for packet in packets:
        if packet[0] >> 4 != 4:
            continue
        ip = Ipv4Repr.parse(packet)
        if ip.protocol == IpProtocol.TCP:
            syns.append((ip, TcpRepr.parse(ip.payload, ip.src_addr, ip.dst_addr)))
    assert syns, f"no TCP packet on the TUN device among {len(packets)} packets"
    ip, segment = syns[0]
    assert (str(ip.src_addr), str(ip.dst_addr)) == ("10.0.2.100", "10.0.2.2")
    assert segment.dst_port == 8080
    assert segment.flags & TcpFlags.SYN


def test_the_machines_resolv_conf_is_untouched() -> None:
    before = Path("/etc/resolv.conf").read_text()
    program = spawn(
        [sys.executable, "-c", "print(open('/etc/resolv.conf').read())"], stdout=subprocess.PIPE
    )
    try:
        program.start()
        output, _ = program.process.communicate(timeout=30)
    finally:
        program.close()
    assert b"10.0.2.3" in output
    assert Path("/etc/resolv.conf").read_text() == before


def test_a_missing_program_is_exit_status_127_like_a_shell() -> None:
    program = spawn(["/nonexistent/program"], stderr=subprocess.PIPE)
    try:
        program.start()
        _, error = program.process.communicate(timeout=30)
    finally:
        program.close()
    assert program.process.returncode == 127
    assert b"/nonexistent/program" in error


def test_bad_addressing_is_refused_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="inside"):
        Addressing(gateway4=ipaddress.IPv4Address("192.168.0.1"))
    with pytest.raises(ValueError, match="mtu"):
        Addressing(mtu=100)


def test_a_failed_setup_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # A TUN device name the kernel refuses makes the set-up step fail after
    # the namespaces exist: the error names the step, and no program runs.
    with pytest.raises(IsolationUnavailableError, match="TUN device"):
        spawn(["true"], addressing=Addressing(tun_name="bad/name"))
