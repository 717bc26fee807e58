"""CPython's own ``test_socket`` cases, run unmodified against shim sockets.

The standard library's test package ships ``test.test_socket``; the classes
chosen here exercise AF_INET stream and datagram sockets: sending and
receiving, timeouts, non-blocking mode, ``makefile`` in every buffering
mode, ``create_connection`` and ``create_server``, ``sendfile``, closing
and the errors of closed sockets.  Each runs with netshim installed on a
virtual host (``localhost`` is its loopback) with in-process connections
joined on one socketpair, and a few classes again with every byte pumped
through the virtual TCP.  Classes about other
families, ancillary data or the module's constants are left out: they do
not go through the shim.
"""

from __future__ import annotations

import importlib
import io
import socket
import unittest
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from compat_helpers import Traffic

import netshim
from netshim import VirtualNetwork

test_socket = importlib.import_module("test.test_socket")

QUICK = [
    "BasicTCPTest",
    "BasicTCPTest2",
    "BasicUDPTest",
    "NonBlockingTCPTests",
    "FileObjectClassTestCase",
    "UnbufferedFileObjectClassTestCase",
    "LineBufferedFileObjectClassTestCase",
    "SmallBufferedFileObjectClassTestCase",
    "UnicodeReadFileObjectClassTestCase",
    "UnicodeWriteFileObjectClassTestCase",
    "UnicodeReadWriteFileObjectClassTestCase",
    "NetworkConnectionNoServer",
    "NetworkConnectionAttributesTest",
    "TestExceptions",
    "BufferIOTest",
    "ContextManagersTest",
    "CreateServerTest",
    "CreateServerFunctionalTest",
    "SendfileUsingSendTest",
    "SendfileUsingSendfileTest",
]
# These wait on purpose (timeouts, sleeps in the server).
SLOW = ["TCPCloserTest", "NetworkConnectionBehaviourTest", "TCPTimeoutTest", "UDPTimeoutTest"]
# Also run with every byte through the virtual TCP (the suite's time allows a few).
PUMPED = [
    "BasicTCPTest",
    "BasicUDPTest",
    "NonBlockingTCPTests",
    "FileObjectClassTestCase",
    "SendfileUsingSendTest",
]
CASES = [("joined", name) for name in QUICK + SLOW] + [("pumped", name) for name in PUMPED]


@contextmanager
def installed(mode: str) -> Iterator[None]:
    net = VirtualNetwork(seed=0, connect_timeout=2)
    host = net.add_host("client", ["10.0.0.3", "fd00::3"])
    traffic = Traffic()
    if mode == "pumped":
        net.add_observer(traffic)
    netshim.install(host)
    try:
        # Start the engine thread now: test_socket counts threads per test.
        socket.getaddrinfo("localhost", 0)
        yield
    finally:
        netshim.uninstall()
    if mode == "pumped":
        assert traffic.tcp_bytes or traffic.datagrams


def run_cases(name: str) -> unittest.TestResult:
    suite = unittest.TestLoader().loadTestsFromTestCase(getattr(test_socket, name))
    result = unittest.TextTestRunner(stream=io.StringIO(), verbosity=0).run(suite)
    assert result.testsRun > 0
    return result


def check(result: unittest.TestResult) -> None:
    problems = [
        f"{test.id()}: {trace.strip().splitlines()[-1]}"
        for test, trace in result.failures + result.errors
    ]
    assert not problems, "\n".join(problems)
    assert not result.skipped, result.skipped


@pytest.mark.parametrize(("mode", "name"), CASES)
def test_cpython_socket_cases(mode: str, name: str) -> None:
    with installed(mode):
        result = run_cases(name)
    check(result)
