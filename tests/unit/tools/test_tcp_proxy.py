"""The fault suite's TCP proxy forwards, refuses and stalls as a client would notice."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.support.ports import free_ports
from tests.tools.tcp_proxy import TcpProxy

TIMEOUT = 5.0  # generous: only shows the absence of a hang


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A loopback server that echoes every byte back, one thread per connection."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)
    running = True
    threads = []

    def echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(4096):
                conn.sendall(data)

    def serve() -> None:
        while running:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=echo, args=(conn,), daemon=True)
            threads.append(thread)
            thread.start()

    acceptor = threading.Thread(target=serve, daemon=True)
    acceptor.start()
    try:
        yield server.getsockname()[1]
    finally:
        running = False
        acceptor.join(TIMEOUT)
        server.close()
        for thread in threads:
            thread.join(TIMEOUT)


@pytest.fixture
def proxy(echo_port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(echo_port).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def connect(proxy: TcpProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT)


def roundtrip(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    received = b""
    while len(received) < len(data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    return received


def cut_off(sock: socket.socket) -> bool:
    """Whether the connection is gone: reset, or closed before an answer."""
    try:
        sock.sendall(b"anyone?")
        return sock.recv(16) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def new_connection_cut_off(proxy: TcpProxy) -> bool:
    """Whether a new connection is reset, as soon as it is made or on first use."""
    try:
        sock = connect(proxy)
    except ConnectionResetError:
        return True
    with sock:
        return cut_off(sock)


def test_forwards_both_ways(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock, b"hello") == b"hello"
        assert roundtrip(sock, b"x" * 200_000) == b"x" * 200_000
    assert proxy.reset == 0


def test_refuse_resets_open_and_new_connections(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock, b"before") == b"before"
        proxy.refuse()
        assert cut_off(sock)
    assert new_connection_cut_off(proxy)
    assert proxy.reset >= 2
    proxy.restore()
    with connect(proxy) as sock:
        assert roundtrip(sock, b"back") == b"back"


def test_stall_delivers_nothing_until_restored_then_everything(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock, b"warm") == b"warm"
        proxy.stall()
        assert proxy.open_connections() == 1
        sock.sendall(b"late")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(16)
        proxy.restore()
        sock.settimeout(TIMEOUT)
        assert sock.recv(16) == b"late"  # held, not lost
    assert proxy.reset == 0


def test_a_server_that_is_down_looks_down() -> None:
    (nobody,) = free_ports(1)
    proxy = TcpProxy(nobody).start()
    try:
        assert new_connection_cut_off(proxy)
    finally:
        proxy.stop()
