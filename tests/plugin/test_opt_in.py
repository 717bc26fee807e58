"""Installing netshim changes nothing for a test suite until it opts in."""

from __future__ import annotations

import pytest


def test_a_suite_that_does_not_opt_in_keeps_real_sockets(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import socket
        import ssl

        import pytest

        import netshim
        from netshim.shim._socket import ORIGINAL_SOCKET


        def test_real_loopback():
            assert not netshim.is_installed()
            assert socket.socket is ORIGINAL_SOCKET
            with socket.create_server(("127.0.0.1", 0)) as server:
                with socket.create_connection(server.getsockname()) as client:
                    peer, _ = server.accept()
                    with peer:
                        client.sendall(b"real")
                        assert peer.recv(4) == b"real"


        @pytest.mark.anyio
        async def test_anyio_still_works():
            assert not netshim.is_installed()
        """
    )
    result = pytester.runpytest("-v", "-W", "error")
    result.stdout.fnmatch_lines(
        ["*::test_real_loopback PASSED*", "*::test_anyio_still_works*PASSED*"]
    )
    assert result.parseoutcomes().get("failed", 0) == 0


def test_options_marker_and_fixtures_are_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        [
            "netshim: virtual networks and real-network blocking:",
            "*--netshim-block*",
            "*--netshim-allow=RULE*",
            "*--netshim-pcap=DIR*",
            "*netshim_block (bool):*",
            "*netshim_allow (linelist):*",
        ]
    )
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.netshim(block=None, allow=(), *"])
    result = pytester.runpytest("--fixtures")
    result.stdout.fnmatch_lines(["netshim_options -- *", "netshim_network -- *"])


def test_unknown_marker_option_fails_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.netshim(recrods={})
        def test_typo(netshim_network):
            pass
        """
    )
    result = pytester.runpytest("--strict-markers")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*unknown @pytest.mark.netshim option(s) ?'recrods'?; known: *"])
