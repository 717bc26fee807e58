"""Evidence on failure: the traffic summary in the report, pcap files, and xdist workers."""

from __future__ import annotations

import subprocess

import pytest

from netshim.testing import require_peer

FAILING = """
import socket
import socketserver

import pytest

class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.readline())

def test_fails(netshim_network):
    netshim_network.serve("web.internal", 80, Echo)
    netshim_network.add_host("db")
    with socket.create_connection(("web.internal", 80), timeout=5) as sock:
        sock.sendall(b"hello\\n")
        assert sock.makefile("rb").readline() == b"hello\\n"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("db", 5432), timeout=5)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"metrics", ("db", 8125))
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("missing.internal", 80, socket.AF_INET)
    assert False, "the report shows the traffic"

def test_passes(netshim_network):
    netshim_network.serve("web.internal", 80, Echo)
    with socket.create_connection(("web.internal", 80), timeout=5) as sock:
        sock.sendall(b"quiet\\n")
        assert sock.makefile("rb").readline() == b"quiet\\n"
"""


def section(result: pytest.RunResult, title: str) -> list[str]:
    """The lines of the report section ``title`` (up to the next separator)."""
    lines = result.outlines
    start = next(i for i, line in enumerate(lines) if f" {title} " in line and "---" in line)
    end = start + 1
    while end < len(lines) and not lines[end].startswith(("---", "===", "___")):
        end += 1
    return lines[start + 1 : end]


def test_failed_test_report_carries_the_traffic_summary(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_traffic=FAILING)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    assert section(result, "netshim traffic") == [
        "DNS   web.internal AAAA -> fd00::3",
        "DNS   web.internal A -> 10.0.0.3",
        "DNS   db AAAA -> fd00::4",
        "DNS   db A -> 10.0.0.4",
        # sendto() on an AF_INET socket looks the name up again, A only.
        "DNS   db A -> 10.0.0.4",
        "DNS   missing.internal A -> NXDOMAIN",
        "TCP   [fd00::2]:57231 (client) -> [fd00::3]:80 (web.internal): "
        "6 B sent, 6 B received, closed",
        "TCP   [fd00::2]:57232 (client) -> [fd00::4]:5432 (db): refused (1 attempt)",
        "TCP   10.0.0.2:57233 (client) -> 10.0.0.4:5432 (db): refused (1 attempt)",
        "UDP   10.0.0.2:60965 (client) -> 10.0.0.4:8125 (db): 1 datagram, 7 B",
    ]
    # Only the failing test's report has the section.
    assert sum(" netshim traffic " in line for line in result.outlines) == 1


def test_a_reset_is_reported(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import socket

        async def chatty(reader, writer):
            writer.write(b"x" * 100)
            await writer.drain()

        def test_reset(netshim_network):
            netshim_network.serve("web", 80, chatty)
            netshim_network.reset_after("web", nbytes=10)
            with socket.create_connection(("10.0.0.3", 80), timeout=5) as sock:
                sock.recv(100)
            assert False
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    assert section(result, "netshim traffic") == [
        "TCP   10.0.0.2:57231 (client) -> 10.0.0.3:80 (web): 0 B sent, 10 B received, "
        "reset by server"
    ]


def test_one_pcap_per_test_that_tshark_reads(pytester: pytest.Pytester) -> None:
    tshark = require_peer("tshark")
    pytester.makepyfile(test_traffic=FAILING)
    result = pytester.runpytest("--netshim-pcap=captures")
    result.assert_outcomes(passed=1, failed=1)
    directory = pytester.path / "captures"
    files = sorted(path.name for path in directory.iterdir())
    assert files == ["test_traffic.py_test_fails.pcap", "test_traffic.py_test_passes.pcap"]
    fields = subprocess.run(
        [
            tshark,
            "-r",
            str(directory / files[1]),
            "-T",
            "fields",
            "-e",
            "tcp.payload",
            "-e",
            "dns.qry.name",
            "-Y",
            "tcp.len > 0 or dns",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    assert "web.internal" in fields
    assert b"quiet\n".hex() in fields


def test_workers_under_xdist_are_isolated(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os
        import socket
        import socketserver

        import pytest

        class Name(socketserver.StreamRequestHandler):
            def handle(self):
                self.wfile.write(os.environ["PYTEST_XDIST_WORKER"].encode())

        @pytest.mark.parametrize("number", range(8))
        def test_each(netshim_network, number):
            # Every test serves on the same virtual address and port.
            netshim_network.serve("web", 80, Name)
            with socket.create_connection(("web", 80), timeout=5) as sock:
                assert sock.recv(100).decode() == os.environ["PYTEST_XDIST_WORKER"]
            if number == 5:
                assert False
        """
    )
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:benchmark", "--netshim-pcap=caps")
    result.assert_outcomes(passed=7, failed=1)
    assert section(result, "netshim traffic")[-1].startswith("TCP   ")
    assert len(list((pytester.path / "caps").iterdir())) == 8
