"""Which Docker engine the image check uses: one already running before one of its own."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tools import image_check


@pytest.fixture
def sockets() -> Iterator[Path]:
    """A folder for unix sockets, short enough for their 108-byte path limit."""
    directory = Path(tempfile.mkdtemp(prefix="sensorstats-engine-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


@pytest.fixture
def engine_socket(sockets: Path) -> Iterator[Path]:
    """A unix socket answering every request as a Docker engine answers its ping."""
    path = sockets / "docker.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def answer() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:  # closed: the test is over
                return
            with connection:
                connection.recv(1024)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.shutdown(socket.SHUT_RDWR)  # wakes the accept(), as close() alone does not
        server.close()
        thread.join(5)


def test_an_engine_answering_on_the_socket_is_used(
    engine_socket: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(image_check, "DEFAULT_SOCKET", engine_socket)
    assert image_check.running_engine() == f"unix://{engine_socket}"


def test_docker_host_names_the_engine_to_use(
    engine_socket: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/user/1000/docker.sock")
    monkeypatch.setattr(image_check, "DEFAULT_SOCKET", engine_socket)
    assert image_check.running_engine() == "unix:///run/user/1000/docker.sock"


def test_a_socket_nobody_answers_on_is_no_engine(
    sockets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    stale = sockets / "docker.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as left_behind:
        left_behind.bind(str(stale))  # bound, never listening: as after a crashed dockerd
    monkeypatch.setattr(image_check, "DEFAULT_SOCKET", stale)
    assert image_check.running_engine() is None
    monkeypatch.setattr(image_check, "DEFAULT_SOCKET", sockets / "absent.sock")
    assert image_check.running_engine() is None
