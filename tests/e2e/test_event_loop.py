"""The event loop as hostile clients meet it: nothing one client sends may hang an instance.

Real `python -m sensorstats` processes and raw sockets, except the one test
of the poll loop itself, which drives it in-process with real sockets so
that the rare interleaving it guards against happens every time. Bounds on
waiting are generous and only tell an answer from a hang.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from waitress import wasyncore

from sensorstats.server.serving import poll_once
from tests.support.service import Service, read_response, start_service

HANG_BOUND_SECONDS = 10.0
METRICS_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
ROUTES = ("/data", "/statistics/a", "/healthz", "/livez", "/metrics", "/openapi.json", "/x")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def connect(service: Service) -> socket.socket:
    return socket.create_connection(("127.0.0.1", service.port), timeout=HANG_BOUND_SECONDS)


def answers_livez(service: Service) -> bool:
    """Whether /livez answers on a new connection before the hang bound."""
    try:
        return service.get("/livez", timeout=HANG_BOUND_SECONDS).status == 204
    except OSError:
        return False


def grow_metrics(service: Service) -> int:
    """Request every method on every route once, as a scrape's history would; the /metrics size."""
    for method in METHODS:
        for path in ROUTES:
            with connect(service) as sock:
                head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                sock.sendall(head.encode())
                read_response(sock, head=method == "HEAD")
    return len(service.get("/metrics").body)


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Service]:
    # A short shutdown timeout: a flood never read is abandoned when it ends.
    with start_service(args=["--shutdown-timeout", "3"], log_dir=tmp_path) as running:
        yield running


def test_a_pipelined_flood_that_is_never_read_leaves_the_instance_serving(
    fresh: Service,
) -> None:
    # One 8 KiB segment of pipelined scrapes whose answers add up to well
    # past waitress's 16 MiB output high-water mark, from a client that
    # never reads a byte.
    size = grow_metrics(fresh)
    count = 8192 // len(METRICS_REQUEST)
    assert size * count > 16 << 20, "the flood would not reach the high-water mark"
    with connect(fresh) as flood:
        flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        flood.sendall(METRICS_REQUEST * count)
        assert answers_livez(fresh)
        assert fresh.get("/healthz").status == 204
        measurement = {"sensor": "a", "timestamp": "2021-01-01T00:00:00Z", "value": 1}
        assert fresh.post("/data", [measurement]).status == 204
        assert fresh.get("/statistics/a").json["count"] == 1
        # And it still stops: the answers nobody reads hold it only until
        # the shutdown timeout.
        fresh.terminate()
        assert fresh.wait(timeout=HANG_BOUND_SECONDS) == 0


def test_a_pipelined_flood_shares_the_loop_with_other_clients(fresh: Service) -> None:
    grow_metrics(fresh)
    head = b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    count = 8192 // len(head)
    answered = 0
    done = threading.Event()

    def read_flood(sock: socket.socket) -> None:
        nonlocal answered
        buffer = b""
        while answered < count:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer += chunk
            answered = buffer.count(b"HTTP/1.1 200 OK")
        done.set()

    with connect(fresh) as flood:
        reader = threading.Thread(target=read_flood, args=(flood,), daemon=True)
        reader.start()
        flood.sendall(head * count)
        assert answers_livez(fresh)
        # Served in turns: the probe did not wait for the whole flood.
        answered_before_probe = answered
        assert done.wait(HANG_BOUND_SECONDS * 3)
    assert answered == count
    assert answered_before_probe < count // 2


class _Recorder(wasyncore.dispatcher):  # type: ignore[misc]
    """A connection that records the events the loop hands it."""

    def __init__(self, sock: socket.socket, map: dict[int, Any]) -> None:
        super().__init__(sock, map=map)
        self.connected = True  # a socket pair: connected from the start
        self.events: list[str] = []

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def handle_read(self) -> None:
        self.events.append("read")

    def handle_close(self) -> None:
        self.events.append("close")
        self.close()


def _registered_first(socket_map: dict[int, Any], first: _Recorder, then: _Recorder) -> None:
    socket_map.clear()
    socket_map[first.socket.fileno()] = first
    socket_map[then.socket.fileno()] = then


class _Displacer(_Recorder):
    """Like the listener at its limit: serving its event closes `victim` and reuses its fd."""

    def __init__(self, sock: socket.socket, map: dict[int, Any], victim: _Recorder) -> None:
        super().__init__(sock, map)
        self.victim = victim
        self.newcomer: _Recorder | None = None
        self.newcomer_peer: socket.socket | None = None

    def handle_read(self) -> None:
        self.recv(1)
        fd = self.victim.socket.fileno()
        self.victim.close()
        ours, theirs = socket.socketpair()
        # As accept() would, the newcomer takes the lowest free descriptor:
        # the victim's.
        if ours.fileno() != fd:
            os.dup2(ours.fileno(), fd)
            ours.close()
            ours = socket.socket(fileno=fd)
        self.newcomer = _Recorder(ours, self._map)
        self.newcomer_peer = theirs


def test_an_event_is_delivered_only_to_the_connection_it_was_polled_for() -> None:
    socket_map: dict[int, Any] = {}
    listener_ours, listener_peer = socket.socketpair()
    victim_ours, victim_peer = socket.socketpair()
    victim = _Recorder(victim_ours, socket_map)
    listener = _Displacer(listener_ours, socket_map, victim)
    # The "listener" first in the map, so that its event is served first.
    _registered_first(socket_map, listener, victim)
    try:
        victim_peer.close()  # the victim has an event (hang-up) in the same poll
        listener_peer.sendall(b"x")
        poll_once(socket_map, timeout=1.0)
        assert listener.newcomer is not None
        # The hang-up was the victim's; the newcomer on its reused fd never saw it.
        assert listener.newcomer.events == []
        assert listener.newcomer.connected
    finally:
        for sock in (listener_peer, victim_peer, listener.newcomer_peer):
            if sock is not None:
                sock.close()
        wasyncore.close_all(socket_map)
        victim_ours.close()


def test_a_half_sent_request_does_not_hold_the_drain(tmp_path: Path) -> None:
    args = ["--receive-timeout", "30", "--shutdown-timeout", "20", "--drain-delay", "0"]
    with start_service(args=args, log_dir=tmp_path) as service:
        with connect(service) as half_sent:
            half_sent.sendall(b"POST /data HTTP/1.1\r\nHost: x\r\nContent-Len")
            assert answers_livez(service)  # the head fragment has been read by now
            service.process.send_signal(signal.SIGTERM)
            # Exits well before its 20 s shutdown timeout: nothing was received to answer.
            assert service.wait(timeout=HANG_BOUND_SECONDS) == 0
        assert "all requests answered" in service.log()
