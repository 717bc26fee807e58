"""Blocking the real network: one-line failures, allow rules, and what stays allowed."""

from __future__ import annotations

import pytest
from plugin_support import INI

from netshim._pytest import BlockingStack, NetworkBlockedError
from netshim.stacks.host import HostStack

MODULE = "test_blocking.py"


def outcome_lines(result: pytest.RunResult) -> list[str]:
    """The failure sections' bodies: lines that are neither separators nor summaries."""
    return [line for line in result.outlines if line.startswith("netshim blocked")]


def test_each_kind_of_destination_fails_with_one_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_blocking="""
        import asyncio
        import socket

        def test_tcp():
            socket.create_connection(("127.0.0.1", 9), timeout=1)

        def test_udp():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(b"x", ("192.0.2.1", 53))

        def test_name():
            socket.getaddrinfo("example.com", 443)

        def test_ipv6():
            socket.create_connection(("::1", 8080), timeout=1)

        def test_asyncio():
            asyncio.run(asyncio.open_connection("10.1.2.3", 5432))
        """
    )
    result = pytester.runpytest("--netshim-block")
    result.assert_outcomes(failed=5)
    allow = "to allow it, mark the test @pytest.mark.netshim(allow="
    expected = [
        ("a TCP connection to 127.0.0.1:9", "test_tcp", "127.0.0.1:9"),
        ("a UDP datagram to 192.0.2.1:53", "test_udp", "192.0.2.1:53"),
        ("a DNS lookup of example.com", "test_name", "example.com"),
        ("a TCP connection to [::1]:8080", "test_ipv6", "[::1]:8080"),
        ("a TCP connection to 10.1.2.3:5432", "test_asyncio", "10.1.2.3:5432"),
    ]
    assert outcome_lines(result) == [
        f'netshim blocked {what} in {MODULE}::{test}; {allow}["{rule}"])'
        for what, test, rule in expected
    ]
    # Each failure is that one line: no traceback around it.
    result.stdout.no_fnmatch_line("*Traceback*")
    result.stdout.no_fnmatch_line("E  *")


def test_the_error_is_not_an_oserror_and_swallowing_it_does_not_help(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_blocking="""
        import socket

        import httpx
        import pytest

        from netshim.pytest_plugin import NetworkBlockedError

        def test_retry_loop_cannot_swallow_it():
            for attempt in range(3):
                try:
                    socket.create_connection(("203.0.113.7", 80), timeout=1)
                except OSError:
                    continue
            raise AssertionError("not reached: the error is not an OSError")

        def test_library_passes_it_through():
            with pytest.raises(NetworkBlockedError) as caught:
                httpx.get("http://203.0.113.7:8080/")
            assert caught.value.destination == "203.0.113.7:8080"

        def test_caught_by_a_broad_except():
            try:
                socket.create_connection(("203.0.113.8", 80), timeout=1)
            except Exception:
                pass
        """
    )
    result = pytester.runpytest("--netshim-block")
    result.assert_outcomes(failed=3)
    assert [line.split(" in ")[0] for line in outcome_lines(result)] == [
        "netshim blocked a TCP connection to 203.0.113.7:80",
        "netshim blocked a TCP connection to 203.0.113.7:8080",
        "netshim blocked a TCP connection to 203.0.113.8:80",
    ]


def test_allow_rules_from_marker_option_and_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI + "netshim_block = true\nnetshim_allow =\n    127.0.0.2\n")
    pytester.makepyfile(
        test_blocking="""
        import socket

        import pytest

        def echo_once(host):
            with socket.create_server((host, 0)) as server:
                with socket.create_connection(server.getsockname(), timeout=2) as client:
                    peer, _ = server.accept()
                    with peer:
                        client.sendall(b"ok")
                        assert peer.recv(2) == b"ok"

        @pytest.mark.netshim(allow=["127.0.0.0/8"])
        def test_network_rule():
            echo_once("127.0.0.1")

        @pytest.mark.netshim(allow=["localhost"])
        def test_name_rule_covers_its_addresses():
            with socket.create_server(("127.0.0.1", 0)) as server:
                port = server.getsockname()[1]
                with socket.socket(socket.AF_INET) as client:
                    client.connect(("localhost", port))

        def test_ini_rule():
            echo_once("127.0.0.2")

        def test_option_rule():
            echo_once("127.0.0.3")

        @pytest.mark.netshim(allow=["127.0.0.1:1-1000"])
        def test_port_rule_blocks_other_ports():
            echo_once("127.0.0.1")

        @pytest.mark.netshim(block=False)
        def test_marker_turns_blocking_off():
            import netshim
            assert not netshim.is_installed()
            echo_once("127.0.0.1")

        def test_unix_sockets_stay_allowed(tmp_path):
            path = str(tmp_path / "sock")
            with socket.socket(socket.AF_UNIX) as server:
                server.bind(path)
                server.listen()
                with socket.socket(socket.AF_UNIX) as client:
                    client.connect(path)
                a, b = socket.socketpair()
                a.close()
                b.close()
        """
    )
    result = pytester.runpytest("--netshim-allow=127.0.0.3", "-v")
    result.assert_outcomes(passed=6, failed=1)
    result.stdout.fnmatch_lines(["*test_port_rule_blocks_other_ports FAILED*"])
    [line] = outcome_lines(result)
    assert line.startswith("netshim blocked a TCP connection to 127.0.0.1:")


def test_a_marker_blocks_one_test_in_a_suite_that_does_not(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_blocking="""
        import socket

        import pytest

        import netshim

        @pytest.mark.netshim(block=True)
        def test_blocked():
            socket.create_connection(("127.0.0.1", 9), timeout=1)

        def test_free():
            assert not netshim.is_installed()
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    assert outcome_lines(result) == [
        f"netshim blocked a TCP connection to 127.0.0.1:9 in {MODULE}::test_blocked; "
        'to allow it, mark the test @pytest.mark.netshim(allow=["127.0.0.1:9"])'
    ]


def test_the_virtual_network_is_never_blocked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_blocking="""
        import socket
        import socketserver

        class Echo(socketserver.StreamRequestHandler):
            def handle(self):
                self.wfile.write(self.rfile.readline())

        def test_virtual(netshim_network):
            netshim_network.serve("web.internal", 7, Echo)
            with socket.create_connection(("web.internal", 7), timeout=5) as sock:
                sock.sendall(b"virtual\\n")
                assert sock.makefile("rb").readline() == b"virtual\\n"
        """
    )
    result = pytester.runpytest("--netshim-block")
    result.assert_outcomes(passed=1)


def test_bad_allow_rule_is_reported(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_blocking="""
        import pytest

        @pytest.mark.netshim(block=True, allow=["10.0.0.0/33"])
        def test_bad():
            pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*bad netshim allow rule '10.0.0.0/33': *"])


@pytest.mark.anyio
async def test_blocking_stack_on_its_own() -> None:
    stack = BlockingStack(HostStack(), ["127.0.0.1:1-1024"], test="t")
    stack.check_destination("127.0.0.1", 80, "tcp")
    with pytest.raises(NetworkBlockedError) as caught:
        stack.check_destination("127.0.0.1", 8080, "tcp")
    assert not isinstance(caught.value, OSError)
    assert (caught.value.transport, caught.value.rule) == ("tcp", "127.0.0.1:8080")
    with pytest.raises(NetworkBlockedError):
        await stack.connect_tcp("192.0.2.1", 80)
    assert [error.destination for error in stack.blocked] == ["127.0.0.1:8080", "192.0.2.1:80"]
