"""The socket module under netshim.install(): ShimSocket behaves as the stdlib socket does."""

from __future__ import annotations

import _socket
import errno
import select
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import trustme
from shim_support import Installed

import netshim
from netshim.shim import acting_as


@contextmanager
def server_thread(target: Callable[[], None]) -> Iterator[None]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # the test thread re-raises it
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield
    thread.join(10)
    assert not thread.is_alive(), "the server thread did not finish"
    if errors:
        raise errors[0]


def listening(net: Installed, port: int, family: int = socket.AF_INET) -> socket.socket:
    with acting_as(net.web):
        server = socket.socket(family, socket.SOCK_STREAM)
        server.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        server.listen()
    server.settimeout(5)
    return server


def test_install_patches_and_uninstall_restores_by_identity() -> None:
    names = [
        "socket",
        "getaddrinfo",
        "gethostbyname",
        "gethostbyname_ex",
        "gethostbyaddr",
        "getnameinfo",
        "gethostname",
        "sethostname",
    ]
    before = {name: getattr(socket, name) for name in names}
    sslsocket_class = ssl.SSLContext.sslsocket_class
    wrap_socket = ssl.SSLContext.wrap_socket
    net = netshim.VirtualNetwork()
    host = net.add_host("solo")
    netshim.install(host)
    netshim.install(host)  # twice is harmless
    assert all(getattr(socket, name) is not before[name] for name in names)
    assert ssl.SSLContext.sslsocket_class is not sslsocket_class
    assert netshim.is_installed()
    # CPython's test_socket: SocketType is the C type, and shim sockets are its instances.
    assert socket.SocketType is _socket.socket
    with socket.socket() as shim:
        assert isinstance(shim, socket.SocketType)
    netshim.uninstall()
    netshim.uninstall()
    assert {name: getattr(socket, name) for name in names} == before
    assert all(getattr(socket, name) is before[name] for name in names)
    assert ssl.SSLContext.sslsocket_class is sslsocket_class
    assert ssl.SSLContext.wrap_socket is wrap_socket
    assert not netshim.is_installed()


def test_sockets_made_before_install_keep_working() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    net = netshim.VirtualNetwork()
    with netshim.installed(net.add_host("solo")):
        assert isinstance(client, socket.socket)
        client.sendall(b"still real")
        assert peer.recv(100) == b"still real"
        unix_a, unix_b = socket.socketpair()
        unix_a.sendall(b"unix untouched")
        assert unix_b.recv(100) == b"unix untouched"
        assert unix_a.family == socket.AF_UNIX
    for sock in (client, peer, server, unix_a, unix_b):
        sock.close()


def test_blocking_echo_with_virtual_addresses(installed: Installed) -> None:
    server = listening(installed, 8080)

    def serve() -> None:
        conn, address = server.accept()
        with conn:
            assert address == ("10.0.0.3", conn.getpeername()[1])
            assert conn.getsockname() == ("10.0.0.2", 8080)
            conn.sendall(conn.recv(100).upper())

    with server_thread(serve):
        client = socket.create_connection(("web.internal", 8080), timeout=5)
        assert client.family == socket.AF_INET
        assert client.type == socket.SOCK_STREAM
        assert client.getpeername() == ("10.0.0.2", 8080)
        assert client.getsockname()[0] == "10.0.0.3"
        client.sendall(b"hello")
        assert client.recv(100) == b"HELLO"
        assert client.recv(100) == b""
        client.close()
    server.close()


def test_ipv6_sockets_report_four_tuples(installed: Installed) -> None:
    server = listening(installed, 443, socket.AF_INET6)

    def serve() -> None:
        conn, address = server.accept()
        assert address[0] == "fd00::3"
        assert len(address) == 4
        conn.close()

    with server_thread(serve):
        client = socket.socket(socket.AF_INET6)
        client.settimeout(5)
        client.connect(("fd00::2", 443))
        assert client.family == socket.AF_INET6
        assert client.getpeername() == ("fd00::2", 443, 0, 0)
        client.close()
    server.close()


def test_refused_and_connect_ex(installed: Installed) -> None:
    client = socket.socket()
    client.settimeout(5)
    assert client.connect_ex(("10.0.0.2", 9)) == errno.ECONNREFUSED
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("10.0.0.2", 9), timeout=5)
    with pytest.raises(OSError) as caught:
        socket.create_connection(("10.0.0.99", 9), timeout=5)
    assert caught.value.errno == errno.EHOSTUNREACH
    with pytest.raises(socket.gaierror):
        socket.create_connection(("nowhere.example", 80), timeout=5)
    client.close()


def test_connect_timeout_is_socket_timeout(installed: Installed) -> None:
    installed.net.partition(installed.web, installed.client)
    with pytest.raises(TimeoutError, match="timed out"):
        socket.create_connection(("10.0.0.2", 80), timeout=0.2)


def test_recv_timeout_and_nonblocking(installed: Installed) -> None:
    server = listening(installed, 80)
    client = socket.create_connection(("10.0.0.2", 80), timeout=5)
    conn, _ = server.accept()
    client.settimeout(0.05)
    with pytest.raises(TimeoutError):
        client.recv(10)
    client.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.recv(10)
    for sock in (client, conn, server):
        sock.close()


def test_nonblocking_connect_is_writable_only_when_connected(installed: Installed) -> None:
    installed.net.set_link(installed.web, installed.client, latency=0.1)
    server = listening(installed, 80)
    client = socket.socket()
    client.setblocking(False)
    with pytest.raises(BlockingIOError) as caught:
        client.connect(("10.0.0.2", 80))
    assert caught.value.errno == errno.EINPROGRESS
    assert client.connect_ex(("10.0.0.2", 80)) == errno.EALREADY
    _, writable, _ = select.select([], [client], [], 0.05)
    assert writable == [], "writable before the handshake completed"
    _, writable, _ = select.select([], [client], [], 2)
    assert writable == [client]
    assert client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    assert client.getpeername() == ("10.0.0.2", 80)
    client.sendall(b"after connect")
    conn, _ = server.accept()
    conn.settimeout(5)
    assert conn.recv(100) == b"after connect"
    for sock in (client, conn, server):
        sock.close()


def test_nonblocking_connect_failure_sets_so_error(installed: Installed) -> None:
    client = socket.socket()
    client.setblocking(False)
    assert client.connect_ex(("10.0.0.2", 81)) == errno.EINPROGRESS
    _, writable, _ = select.select([], [client], [], 2)
    assert writable == [client]
    assert client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED
    assert client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    client.close()


def test_listener_is_readable_only_with_a_pending_connection(installed: Installed) -> None:
    server = listening(installed, 80)
    readable, _, _ = select.select([server], [], [], 0.05)
    assert readable == []
    client = socket.create_connection(("10.0.0.2", 80), timeout=5)
    readable, _, _ = select.select([server], [], [], 2)
    assert readable == [server]
    conn, _ = server.accept()
    readable, _, _ = select.select([server], [], [], 0.05)
    assert readable == []
    server.setblocking(False)
    with pytest.raises(BlockingIOError):
        server.accept()
    for sock in (client, conn, server):
        sock.close()


def test_half_close_reaches_the_peer(installed: Installed) -> None:
    server = listening(installed, 80)
    client = socket.create_connection(("10.0.0.2", 80), timeout=5)
    conn, _ = server.accept()
    conn.settimeout(5)
    client.sendall(b"request")
    client.shutdown(socket.SHUT_WR)
    assert conn.recv(100) == b"request"
    assert conn.recv(100) == b""
    conn.sendall(b"response after half-close")
    conn.close()
    data = b""
    while chunk := client.recv(100):
        data += chunk
    assert data == b"response after half-close"
    client.close()
    server.close()


def test_linger_zero_close_resets_the_peer(installed: Installed) -> None:
    server = listening(installed, 80)
    client = socket.create_connection(("10.0.0.2", 80), timeout=5)
    conn, _ = server.accept()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    with pytest.raises(ConnectionResetError):
        client.recv(100)
    client.close()
    server.close()


def test_network_reset_reaches_the_program(installed: Installed) -> None:
    installed.net.reset_after(installed.web, installed.client, 10)
    server = listening(installed, 80)
    client = socket.create_connection(("10.0.0.2", 80), timeout=5)
    conn, _ = server.accept()
    conn.sendall(b"0123456789 and more")
    assert client.recv(100) == b"0123456789"
    with pytest.raises(ConnectionResetError):
        client.recv(100)
    for sock in (client, conn, server):
        sock.close()


def test_makefile_and_sendfile(installed: Installed, tmp_path: object) -> None:
    import pathlib

    path = pathlib.Path(str(tmp_path)) / "payload.txt"
    path.write_bytes(b"line one\nline two\n" * 1000)
    server = listening(installed, 80)
    client = socket.create_connection(("10.0.0.2", 80), timeout=5)
    conn, _ = server.accept()
    with path.open("rb") as file:
        assert client.sendfile(file) == 18000
    client.shutdown(socket.SHUT_WR)
    reader = conn.makefile("rb")
    assert reader.readline() == b"line one\n"
    assert len(reader.read()) == 18000 - 9
    reader.close()
    for sock in (client, conn, server):
        sock.close()


def test_options_are_reported_back(installed: Installed) -> None:
    sock = socket.socket()
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 131072
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN) == socket.AF_INET
    with pytest.raises(OSError) as caught:
        sock.setsockopt(socket.SOL_SOCKET, 9999, 1)
    assert caught.value.errno == errno.ENOPROTOOPT
    sock.close()


def test_an_unconnected_tls_socket_raises_enotconn_on_every_read(installed: Installed) -> None:
    # CPython's test_ssl BasicSocketTests.test_wrapped_unconnected: a read must
    # not wait on the (connected) pair under the shim socket.
    context = ssl.create_default_context()
    with context.wrap_socket(socket.socket(), server_hostname="example.com") as sock:
        for read in (lambda: sock.recv(1), lambda: sock.recv_into(bytearray(1))):
            with pytest.raises(OSError) as caught:
                read()
            assert caught.value.errno == errno.ENOTCONN
        with pytest.raises(ValueError, match="Read on closed or unwrapped SSL socket"):
            sock.read(1)


def test_a_programs_own_sslsocket_class_keeps_the_shim_state(installed: Installed) -> None:
    # CPython's test_ssl ContextTests.test_context_custom_class hung: a plain
    # SSLSocket subclass saw the pair under an unconnected socket as connected
    # and started a server handshake that waited forever.
    class MySSLSocket(ssl.SSLSocket):
        pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.sslsocket_class = MySSLSocket
    with context.wrap_socket(socket.socket(), server_side=True) as sock:
        assert isinstance(sock, MySSLSocket)
        assert sock.family == socket.AF_INET
        with pytest.raises(OSError) as caught:
            sock.getpeername()
        assert caught.value.errno == errno.ENOTCONN


def test_scope_ids_host_names_and_argument_checks_as_cpython(installed: Installed) -> None:
    # From CPython's test_socket GeneralModuleTests, each once different here.
    index, interface = socket.if_nameindex()[0]
    ((*_, address),) = socket.getaddrinfo(
        "ff02::1de:c0:face:8D%" + interface, 1234, socket.AF_INET6, socket.SOCK_DGRAM
    )
    assert address == ("ff02::1de:c0:face:8d", 1234, 0, index)
    assert socket.getaddrinfo("fe80::1%7", 80, socket.AF_INET6)[0][4] == ("fe80::1", 80, 0, 7)
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("fe80::1%no-such-interface", 80)
    numeric = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
    assert socket.getnameinfo(("ff02::1de:c0:face:8D", 1234, 0, index), numeric) == (
        "ff02::1de:c0:face:8d%" + interface,
        "1234",
    )
    assert socket.getnameinfo(("fd00::2", 1, 0, 77), numeric) == ("fd00::2%77", "1")
    # sethostname() names the acting host; the machine's name is left alone.
    machine = _socket.gethostname()
    socket.sethostname("new")
    assert socket.gethostname() == "new"
    socket.sethostname(b"bar")
    assert socket.gethostname() == "bar"
    assert _socket.gethostname() == machine
    socket.sethostname("client")
    with acting_as(installed.web):
        assert socket.gethostname() == "web.internal"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with pytest.raises(TypeError, match=r"\(1 given\)"):
        sock.sendto(b"foo")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"\(4 given\)"):
        sock.sendto(b"foo", 0, ("10.0.0.2", 9), 4)  # type: ignore[call-overload]
    sock.close()
    # A descriptor closed behind the socket's back: EBADF, as the kernel says.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    socket.close(sock.fileno())
    with pytest.raises(OSError) as caught:
        sock.listen(1)
    assert caught.value.errno == errno.EBADF
    with pytest.raises(OSError):
        sock.close()


def test_bad_input_fails_as_the_stdlib_does(installed: Installed) -> None:
    sock = socket.socket()
    with pytest.raises(socket.gaierror) as caught:
        sock.connect(("::1", 80))
    assert caught.value.errno == socket.EAI_ADDRFAMILY
    with pytest.raises(TypeError, match="AF_INET address must be tuple, not str"):
        sock.connect("1.2.3.4")  # type: ignore[arg-type]
    with pytest.raises(OverflowError, match=r"connect\(\): port must be 0-65535"):
        sock.connect(("1.2.3.4", 70000))
    with pytest.raises(TypeError, match="'str' object cannot be interpreted as an integer"):
        sock.connect(("1.2.3.4", "x"))  # type: ignore[arg-type]
    with pytest.raises(OSError) as caught:
        sock.recv(1)
    assert caught.value.errno == errno.ENOTCONN
    with pytest.raises(OSError) as caught:
        sock.getpeername()
    assert caught.value.errno == errno.ENOTCONN
    assert sock.getsockname() == ("0.0.0.0", 0)
    sock.close()
    with pytest.raises(OSError) as caught:
        sock.send(b"x")
    assert caught.value.errno == errno.EBADF


def test_udp_round_trip_and_refusal(installed: Installed) -> None:
    with acting_as(installed.web):
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind(("0.0.0.0", 5353))
    server.settimeout(5)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(5)
    client.sendto(b"query", ("10.0.0.2", 5353))
    data, address = server.recvfrom(100)
    assert data == b"query"
    assert address == ("10.0.0.3", client.getsockname()[1])
    server.sendto(b"answer", address)
    assert client.recvfrom(100) == (b"answer", ("10.0.0.2", 5353))
    connected = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    connected.settimeout(5)
    connected.connect(("10.0.0.2", 9))
    connected.send(b"anyone?")
    with pytest.raises(ConnectionRefusedError):
        connected.recv(100)
    with pytest.raises(PermissionError):
        client.sendto(b"all", ("10.0.0.255", 5353))
    client.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    client.sendto(b"all", ("10.0.0.255", 5353))
    assert server.recvfrom(100)[0] == b"all"
    with pytest.raises(OSError) as caught:
        client.sendto(b"x" * 65508, ("10.0.0.2", 5353))
    assert caught.value.errno == errno.EMSGSIZE
    for sock in (server, client, connected):
        sock.close()


def test_udp_recvmsg_into_msg_trunc_and_sendmsg_checks(installed: Installed) -> None:
    # recvmsg_into once handed back netshim's own framing inside the payload.
    with acting_as(installed.web):
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind(("0.0.0.0", 5354))
    server.settimeout(5)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(5)
    client.sendmsg([b"scatter", bytearray(b"-"), memoryview(b"gather")], [], 0, ("10.0.0.2", 5354))
    first, second = bytearray(4), bytearray(20)
    nbytes, ancdata, flags, address = server.recvmsg_into([first, second])
    assert (nbytes, ancdata, flags) == (14, [], 0)
    assert bytes(first) + bytes(second[:10]) == b"scatter-gather"
    assert address == ("10.0.0.3", client.getsockname()[1])
    client.sendto(b"0123456789", ("10.0.0.2", 5354))
    data, ancdata, flags, _ = server.recvmsg(4)
    assert (data, ancdata, flags) == (b"0123", [], socket.MSG_TRUNC)
    client.sendto(b"abcdef", ("10.0.0.2", 5354))
    small = bytearray(3)
    assert server.recvmsg_into([small])[:3] == (3, [], socket.MSG_TRUNC)
    assert small == b"abc"
    with pytest.raises(TypeError, match="a bytes-like object is required, not 'int'"):
        client.sendmsg([5], [], 0, ("10.0.0.2", 5354))
    with pytest.raises(TypeError, match="sequence of length 3, not 2"):
        client.sendmsg([b"x"], [(1, 2)], 0, ("10.0.0.2", 5354))
    with pytest.raises(TypeError, match="single-segment read-write buffers"):
        server.recvmsg_into([b"read-only"])
    for sock in (server, client):
        sock.close()


def test_udp_ancillary_hop_limit_and_traffic_class(installed: Installed) -> None:
    # IPV6_RECVHOPLIMIT and friends were ENOPROTOOPT; datagrams carried no IP header.
    int_size = struct.calcsize("i")
    with acting_as(installed.web):
        server = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        server.bind(("::", 5355))
    server.settimeout(5)
    server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
    server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVTCLASS, 1)
    assert server.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT) == 1
    client = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    assert client.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS) == 64
    destination = ("fd00::2", 5355)
    client.sendto(b"plain", destination)
    data, ancdata, flags, _ = server.recvmsg(100, 1024)
    assert (data, flags) == (b"plain", 0)
    assert ancdata == [
        (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT, struct.pack("i", 64)),
        (socket.IPPROTO_IPV6, socket.IPV6_TCLASS, struct.pack("i", 0)),
    ]
    # Per message, then per socket.
    client.sendmsg(
        [b"marked"],
        [
            (socket.IPPROTO_IPV6, socket.IPV6_TCLASS, struct.pack("i", 42)),
            (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT, struct.pack("i", 2)),
        ],
        0,
        destination,
    )
    data, ancdata, flags, _ = server.recvmsg(100, 1024)
    assert [struct.unpack("i", item[2])[0] for item in ancdata] == [2, 42]
    client.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 7)
    client.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, 0x20)
    client.sendto(b"set", destination)
    buffer = bytearray(10)
    nbytes, ancdata, flags, _ = server.recvmsg_into([buffer], 1024)
    assert (nbytes, buffer[:3]) == (3, b"set")
    assert [struct.unpack("i", item[2])[0] for item in ancdata] == [7, 0x20]
    # Truncation as Linux's put_cmsg: no room for a header drops the message,
    # room for part of its data keeps that part; MSG_CTRUNC either way.
    for room, expected in [
        (0, []),
        (socket.CMSG_LEN(0) - 1, []),
        (socket.CMSG_LEN(int_size) - 1, [int_size - 1]),
        (socket.CMSG_SPACE(int_size) + 1, [int_size]),
        (socket.CMSG_SPACE(int_size) + socket.CMSG_LEN(int_size) - 1, [int_size, int_size - 1]),
    ]:
        client.sendto(b"x", destination)
        _, ancdata, flags, _ = server.recvmsg(10, room)
        assert [len(item[2]) for item in ancdata] == expected
        assert flags == socket.MSG_CTRUNC
    client.sendto(b"x", destination)
    assert server.recvmsg(10, socket.CMSG_SPACE(int_size) * 2)[2] == 0
    with pytest.raises(OSError) as caught:
        client.sendmsg(
            [b"odd"], [(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, b"\0" * 5)], 0, destination
        )
    assert caught.value.errno == errno.EINVAL
    with pytest.raises(OSError) as caught:
        client.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, 256)
    assert caught.value.errno == errno.EINVAL
    # IPv4: IP_RECVTTL gives an int, IP_RECVTOS the TOS byte itself.
    with acting_as(installed.web):
        server4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server4.bind(("0.0.0.0", 5356))
    server4.settimeout(5)
    server4.setsockopt(socket.IPPROTO_IP, 12, 1)  # IP_RECVTTL
    server4.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
    client4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client4.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x10)
    client4.sendmsg(
        [b"v4"], [(socket.IPPROTO_IP, socket.IP_TTL, struct.pack("i", 9))], 0, ("10.0.0.2", 5356)
    )
    assert server4.recvmsg(10, 1024)[1] == [
        (socket.IPPROTO_IP, socket.IP_TTL, struct.pack("i", 9)),
        (socket.IPPROTO_IP, socket.IP_TOS, b"\x10"),
    ]
    for sock in (server, client, server4, client4):
        sock.close()


def test_name_functions(installed: Installed) -> None:
    assert socket.gethostname() == "client"
    assert socket.gethostbyname("web.internal") == "10.0.0.2"
    installed.net.add_record("www.example.com", "CNAME", "web.internal.")
    assert socket.gethostbyname_ex("www.example.com") == (
        "web.internal",
        ["www.example.com"],
        ["10.0.0.2"],
    )
    assert socket.gethostbyaddr("10.0.0.2") == ("web.internal", [], ["10.0.0.2"])
    assert socket.getnameinfo(("10.0.0.2", 80), 0) == ("web.internal", "http")
    assert socket.getnameinfo(("10.0.0.2", 80), socket.NI_NUMERICHOST) == ("10.0.0.2", "http")
    assert socket.getfqdn("10.0.0.2") == "web.internal"
    assert socket.has_dualstack_ipv6()
    with pytest.raises(socket.gaierror) as caught:
        socket.gethostbyname("missing.example")
    assert caught.value.errno == socket.EAI_NONAME
    with pytest.raises(socket.herror):
        socket.gethostbyaddr("10.0.0.77")


def test_other_threads_see_the_patch(installed: Installed) -> None:
    seen: list[str] = []
    thread = threading.Thread(target=lambda: seen.append(socket.gethostname()))
    thread.start()
    thread.join()
    assert seen == ["client"]


def test_tls_end_to_end(installed: Installed) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("web.internal")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    server = listening(installed, 443)

    def serve() -> None:
        conn, _ = server.accept()
        with server_context.wrap_socket(conn, server_side=True) as tls:
            assert tls.getpeername()[0] == "10.0.0.3"
            tls.sendall(tls.recv(100)[::-1])

    with server_thread(serve):
        raw = socket.create_connection(("web.internal", 443), timeout=5)
        with client_context.wrap_socket(raw, server_hostname="web.internal") as tls:
            assert tls.getpeername() == ("10.0.0.2", 443)
            assert tls.family == socket.AF_INET
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            tls.sendall(b"secret")
            assert tls.recv(100) == b"terces"
    server.close()


def read_to_the_end(sock: socket.socket) -> None:
    """Read the descriptor itself (under any TLS layer) until it ends."""
    while _socket.socket.recv(sock, 4096):
        pass


def test_closing_a_tls_socket_closes_the_shim_connection(installed: Installed) -> None:
    # Wrapping detached the shim socket, which then let go of the connection:
    # a TLS socket's close() skipped the shim (no reset with SO_LINGER 0, no
    # FIN held for a joined peer, whose first send then failed with EPIPE).
    authority = trustme.CA()
    certificate = authority.issue_cert("web.internal")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    server = listening(installed, 443)
    closed = threading.Event()

    def serve() -> None:
        for linger in (False, True):
            conn, _ = server.accept()
            tls = server_context.wrap_socket(conn, server_side=True)
            tls.recv(100)
            if linger:
                tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            tls.close()
            closed.set()

    with server_thread(serve):
        for linger in (False, True):
            closed.clear()
            raw = socket.create_connection(("web.internal", 443), timeout=5)
            tls = client_context.wrap_socket(raw, server_hostname="web.internal")
            tls.sendall(b"bye")
            assert closed.wait(5)
            if linger:
                # Under the TLS layer (which reads a reset after unread
                # session tickets as a ragged end): the tickets, then the reset.
                with pytest.raises(ConnectionResetError):
                    read_to_the_end(tls)
            else:
                # As on TCP: the peer's FIN, then a send that still succeeds.
                assert _socket.socket.send(tls, b"") == 0
            tls.close()
    server.close()


@pytest.mark.parametrize("joined", [True, False])
def test_a_reset_peer_is_not_connected_but_its_data_is_readable(
    installed: Installed, joined: bool
) -> None:
    # As on Linux, whose socket is CLOSED after a reset: getpeername() is
    # ENOTCONN, data that came before the reset is still read, then the reset.
    # ssl relies on it to refuse data that arrived before a handshake (CPython's
    # test_ssl TestPreHandshakeClose).
    if not joined:
        installed.net.set_link(installed.client, installed.web, latency=0.0001)
    server = listening(installed, 7400)
    for wrap in (False, True):
        client = socket.create_connection(("10.0.0.2", 7400), timeout=5)
        conn, _ = server.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.sendall(b"HTTP/1.0 307 Temporary Redirect\r\n\r\n")
        conn.close()
        for _ in range(50):  # the reset crosses the engine (and the link)
            try:
                client.getpeername()
            except OSError:
                break
            threading.Event().wait(0.01)
        with pytest.raises(OSError) as caught:
            client.getpeername()
        assert caught.value.errno == errno.ENOTCONN
        if wrap:
            with pytest.raises(ssl.SSLError, match="before TLS handshake with data"):
                ssl.create_default_context().wrap_socket(client, server_hostname="web.internal")
        else:
            assert client.recv(100).startswith(b"HTTP/1.0 307")
            with pytest.raises(ConnectionResetError):
                client.recv(100)
        client.close()
    server.close()


def test_a_listener_is_readable_once_connect_returns(installed: Installed) -> None:
    # As with a kernel's loopback, where the handshake is done when connect()
    # returns: the listener's announcement came a loop round later, now and then.
    server = listening(installed, 7500)
    for _ in range(100):
        client = socket.create_connection(("10.0.0.2", 7500), timeout=5)
        assert select.select([server], [], [], 0)[0] == [server]
        conn, _ = server.accept()
        client.close()
        conn.close()
    server.close()


def test_tls_wrap_before_connect(installed: Installed) -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("web.internal").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    server = listening(installed, 443)

    def serve() -> None:
        conn, _ = server.accept()
        with server_context.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(b"hello over tls")

    with server_thread(serve):
        tls = client_context.wrap_socket(socket.socket(), server_hostname="web.internal")
        tls.settimeout(5)
        tls.connect(("web.internal", 443))
        assert tls.recv(100) == b"hello over tls"
        tls.close()
    server.close()


def test_host_stack_installed_gives_real_sockets() -> None:
    with netshim.installed(netshim.HostStack()):
        server = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(server.getsockname(), timeout=5)
        conn, _ = server.accept()
        assert type(client) is socket.socket
        assert client.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN) == socket.AF_INET
        client.sendall(b"real loopback")
        assert conn.recv(100) == b"real loopback"
        assert socket.gethostbyname("localhost") == "127.0.0.1"
        for sock in (client, conn, server):
            sock.close()


def test_host_stack_keeps_working_while_a_virtual_network_is_installed(
    installed: Installed,
) -> None:
    import anyio

    from netshim.testing import CHECKS, StackPair

    host = netshim.HostStack()

    async def run() -> None:
        pair = StackPair(host, host, "127.0.0.1", "127.0.0.1")
        for name in ("tcp_echo_both_ways", "udp_round_trip", "getaddrinfo_numeric"):
            await CHECKS[name](pair)

    anyio.run(run)


def test_joined_sockets_still_behave_and_observed_ones_are_captured(
    installed: Installed, tmp_path: object
) -> None:
    import pathlib

    from netshim.pcap import PcapReader

    # Unobserved and undelayed: the two sockets are joined directly.
    server = listening(installed, 80)
    client = socket.create_connection(("10.0.0.2", 80), timeout=5)
    conn, _ = server.accept()
    assert conn._netshim.splice_partner is client._netshim  # type: ignore[attr-defined]
    client.sendall(b"unread")
    conn.close()  # closing with unread data resets the peer, as TCP does
    with pytest.raises(ConnectionResetError):
        client.recv(100)
    client.close()
    # With a capture running, traffic goes through the stack and is recorded.
    path = pathlib.Path(str(tmp_path)) / "shim.pcap"
    with installed.net.capture(path):
        client = socket.create_connection(("10.0.0.2", 80), timeout=5)
        conn, _ = server.accept()
        assert conn._netshim.splice_partner is None  # type: ignore[attr-defined]
        client.sendall(b"recorded bytes")
        conn.settimeout(5)
        assert conn.recv(100) == b"recorded bytes"
        client.close()
        conn.close()
    server.close()
    with PcapReader(path) as reader:
        frames = [record.data for record in reader]
    assert any(b"recorded bytes" in frame for frame in frames)


def test_socket_closed_by_a_finalizer_on_the_engine_thread_outside_any_task(
    installed: Installed,
) -> None:
    # A garbage collector pass can run a finalizer (urllib3's pool closing its
    # connections, say) in a plain event-loop callback of the engine thread,
    # where no task is current: closing a shim socket there must still close
    # it, with nothing left unawaited.
    import asyncio
    import contextvars

    from netshim.shim._engine import get_engine

    class Watch:
        """Any observer makes connections go through the engine (not joined)."""

        def __getattr__(self, name: str) -> Callable[..., None]:
            return lambda *args, **kwargs: None

    installed.net.add_observer(Watch())  # type: ignore[arg-type]
    server = socket.socket()
    server.bind(("10.0.0.2", 0))
    server.listen()
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    closed = threading.Event()

    async def close_in_a_callback() -> None:
        def callback() -> None:
            client.close()
            closed.set()

        # An empty context, as the loop's own callbacks may run in: no task,
        # no async library recorded in a context variable.
        asyncio.get_running_loop().call_soon(callback, context=contextvars.Context())

    get_engine().call(close_in_a_callback)
    assert closed.wait(5)
    accepted.settimeout(5)
    # The engine side was closed too: the peer sees the end of the stream.
    assert accepted.recv(10) == b""
    accepted.close()
    server.close()


def test_bound_but_not_listening_refuses_until_listen(installed: Installed) -> None:
    server = socket.socket()
    server.bind(("10.0.0.2", 0))
    address = server.getsockname()
    # Linux refuses a connection to a socket that is bound but not listening.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5)
    server.listen()
    with socket.create_connection(address, timeout=5) as client:
        accepted, peer = server.accept()
        with accepted:
            assert peer == client.getsockname()
            client.sendall(b"after listen")
            assert accepted.recv(100) == b"after listen"
    server.close()


def test_threads_started_inside_acting_as_act_as_that_host(installed: Installed) -> None:
    seen: list[tuple[str, str]] = []

    def work() -> None:
        # The host's name, and its address as its own resolver answers.
        name = socket.gethostname()
        seen.append((name, socket.gethostbyname(name)))

    with acting_as(installed.web):
        thread = threading.Thread(target=work)
        thread.start()
        thread.join(10)
    # Outside the block a new thread is the installed host (client) again.
    thread = threading.Thread(target=work)
    thread.start()
    thread.join(10)
    assert seen == [("web.internal", "10.0.0.2"), ("client", "10.0.0.3")]


def test_uninstall_gives_thread_start_back() -> None:
    original = threading.Thread.start
    netshim.install(netshim.VirtualNetwork().add_host("solo"))
    try:
        assert threading.Thread.start is not original
    finally:
        netshim.uninstall()
    assert threading.Thread.start is original


def test_connected_udp_socket_reports_its_source_address(installed: Installed) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 0))
        port = sock.getsockname()[1]
        sock.connect(("10.0.0.2", 53))
        # As Linux: the wildcard becomes the address the route picks.
        assert sock.getsockname() == ("10.0.0.3", port)


def test_proto_is_reported_as_asked_and_asyncio_sets_nodelay(installed: Installed) -> None:
    import asyncio

    with socket.socket() as plain:
        assert plain.proto == 0  # as CPython reports a socket made with 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as tcp:
        assert tcp.proto == socket.IPPROTO_TCP
    listener = listening(installed, 7300)

    async def main() -> int:
        # getaddrinfo gives proto 6: asyncio then turns TCP_NODELAY on.
        _, writer = await asyncio.open_connection("web.internal", 7300)
        sock = writer.get_extra_info("socket")
        nodelay = int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()
        await writer.wait_closed()
        return nodelay

    assert asyncio.run(main()) == 1
    listener.close()


def test_getaddrinfo_flags_and_getnameinfo_as_glibc(installed: Installed) -> None:
    # AI_NUMERICSERV: a service name is EAI_NONAME (trio's lookups rely on it).
    with pytest.raises(socket.gaierror) as caught:
        socket.getaddrinfo("web.internal", "http", 0, 0, 0, socket.AI_NUMERICSERV)
    assert caught.value.errno == socket.EAI_NONAME
    # AI_V4MAPPED: IPv4 answers as IPv4-mapped IPv6, written as glibc writes them.
    mapped = socket.getaddrinfo(
        "web.internal", 80, socket.AF_INET6, socket.SOCK_STREAM, 0, socket.AI_V4MAPPED
    )
    assert [info[4] for info in mapped] == [("fd00::2", 80, 0, 0)]
    installed.net.add_record("legacy.internal", "A", "10.0.0.2")
    mapped = socket.getaddrinfo(
        "legacy.internal", 80, socket.AF_INET6, socket.SOCK_STREAM, 0, socket.AI_V4MAPPED
    )
    assert [info[4] for info in mapped] == [("::ffff:10.0.0.2", 80, 0, 0)]
    literal = socket.getaddrinfo("10.0.0.2", 80, socket.AF_INET6, 0, 0, socket.AI_V4MAPPED)
    assert literal[0][4] == ("::ffff:10.0.0.2", 80, 0, 0)
    # Flags are integers, as the C function's arguments.
    with pytest.raises(TypeError, match="'float' object cannot be interpreted as an integer"):
        socket.getaddrinfo("10.0.0.2", 80, 0, 0, 0, 1.5)  # type: ignore[arg-type]
    assert socket.getaddrinfo("10.0.0.2", 80, 0, socket.SOCK_STREAM, 0, True)
    # getnameinfo takes numeric addresses only.
    with pytest.raises(socket.gaierror) as caught:
        socket.getnameinfo(("web.internal", 80), 0)
    assert caught.value.errno == socket.EAI_NONAME
    assert socket.getnameinfo(("10.0.0.2", 80), 0) == ("web.internal", "http")


def test_tls_socket_wrapped_before_bind_listens_on_the_stack(installed: Installed) -> None:
    # ctx.wrap_socket(socket.socket(), server_side=True), then bind and listen:
    # a common standard-library server pattern (anyio's tests use it).
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("web.internal").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    with acting_as(installed.web):
        listener = server_context.wrap_socket(socket.socket(), server_side=True)
        listener.bind(("0.0.0.0", 8443))
        listener.listen()
    assert listener.getsockname() == ("0.0.0.0", 8443)
    listener.settimeout(10)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(conn.recv(100).upper())

    thread = threading.Thread(target=serve)
    thread.start()
    raw = socket.create_connection(("web.internal", 8443), timeout=10)
    with client_context.wrap_socket(raw, server_hostname="web.internal") as tls:
        tls.sendall(b"secret")
        assert tls.recv(100) == b"SECRET"
    thread.join(10)
    listener.close()
    # connect_ex on a TLS socket returns the errno, as on a plain one.
    with client_context.wrap_socket(socket.socket(), server_hostname="web.internal") as tls:
        assert tls.connect_ex(("10.0.0.2", 9)) == errno.ECONNREFUSED


def test_a_second_connect_after_a_nonblocking_connect_succeeds_once(installed: Installed) -> None:
    listener = listening(installed, 7301)
    sock = socket.socket()
    sock.setblocking(False)
    assert sock.connect_ex(("10.0.0.2", 7301)) == errno.EINPROGRESS
    _, writable, _ = select.select([], [sock], [], 5)
    assert writable == [sock]
    assert sock.connect_ex(("10.0.0.2", 7301)) == 0, "Linux reports success once"
    assert sock.connect_ex(("10.0.0.2", 7301)) == errno.EISCONN
    sock.close()
    listener.close()


def test_udp_msg_more_corks_and_linux_options_are_known(installed: Installed) -> None:
    with acting_as(installed.web):
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind(("0.0.0.0", 5355))
    server.settimeout(5)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    assert client.sendto(b"one ", socket.MSG_MORE, ("10.0.0.2", 5355)) == 4
    assert client.sendto(b"two ", socket.MSG_MORE, ("10.0.0.2", 5355)) == 4
    assert client.sendto(b"three", 0, ("10.0.0.2", 5355)) == 5
    assert server.recvfrom(100)[0] == b"one two three"
    client.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
    tcp = socket.socket()
    tcp.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24), 1)
    assert tcp.getsockopt(socket.IPPROTO_IP, getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)) == 1
    for sock in (server, client, tcp):
        sock.close()


def test_errors_read_as_the_standard_library_words_them(installed: Installed) -> None:
    listener = listening(installed, 7302)
    with acting_as(installed.web), socket.socket() as second, pytest.raises(OSError) as caught:
        second.bind(("0.0.0.0", 7302))
    assert caught.value.errno == errno.EADDRINUSE
    assert str(caught.value) == "[Errno 98] Address already in use"
    with pytest.raises(ConnectionRefusedError) as refused:
        socket.create_connection(("10.0.0.2", 9), timeout=5)
    assert str(refused.value) == "[Errno 111] Connection refused"
    listener.close()


def test_a_detached_descriptor_taken_as_another_family_lets_its_engine_end_go(
    installed: Installed,
) -> None:
    """Nothing would ever close the engine's end of a pair whose user end became another socket."""
    from netshim.shim._state import lookup_state

    fd = socket.socket().detach()
    state = lookup_state(fd)
    assert state is not None
    assert state.engine_end is not None
    engine_end = state.engine_end
    with socket.socket(family=43, type=socket.SOCK_STREAM, fileno=fd) as unknown:
        assert unknown.family == 43
        assert engine_end.fileno() == -1
        assert lookup_state(fd) is None
    # A socket still in use keeps its state when its descriptor is wrapped again.
    with socket.socket() as kept:
        kept.bind(("10.0.0.2", 0))
        held = lookup_state(kept.fileno())
        assert held is not None
        again = socket.socket(family=43, type=socket.SOCK_STREAM, fileno=kept.fileno())
        assert held.engine_end is not None
        assert held.engine_end.fileno() != -1
        again.detach()


def test_more_details_as_cpython_has_them(installed: Installed) -> None:
    # From CPython's test_socket and test_ssl, run under the shim.
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with pytest.raises(TypeError, match="a bytes-like object is required, not 'str'"):
        udp.sendto("text", ("10.0.0.2", 53))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not NoneType"):
        udp.sendto(b"x", 0, None)
    udp.close()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed.close()
    assert "laddr" not in repr(closed)
    with socket.socket(socket.AF_INET6) as six, pytest.raises(OverflowError, match="flowinfo"):
        six.bind(("::1", 0, 0xFFFFFFFF, 0))
    fd = socket.socket().detach()
    with socket.socket(family=43, type=socket.SOCK_STREAM, proto=23, fileno=fd) as unknown:
        assert unknown.family == 43
    context = ssl.create_default_context()
    with context.wrap_socket(socket.socket(), server_hostname="example.com") as tls:
        for send in (lambda: tls.send(b"x"), lambda: tls.sendall(b"x")):
            with pytest.raises(OSError) as caught:
                send()
            assert caught.value.errno == errno.ENOTCONN
