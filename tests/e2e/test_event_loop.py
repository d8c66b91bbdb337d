"""The event loop as hostile clients meet it: nothing one client sends may hang an instance.

Real `python -m sensorstats` processes and raw sockets (the poll set itself
is driven turn by turn in ``tests/unit/server/test_polling.py``). Bounds on
waiting are generous and only tell an answer from a hang.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.service import Service, closed_by_server, read_response, start_service

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


def test_hundreds_of_idle_and_slow_connections_expiring_at_once_leave_it_serving(
    tmp_path: Path,
) -> None:
    # Idle connections are left out of the loop's turns until they have an
    # event (`sensorstats.server.polling`); their deadlines must still reach
    # every one of them, all in the same moment, while others are served.
    args = ["--idle-timeout", "2", "--receive-timeout", "2"]
    with start_service(args=args, log_dir=tmp_path) as service, ExitStack() as held:
        idle = []
        for _ in range(150):
            sock = held.enter_context(connect(service))
            sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            idle.append(sock)
        for sock in idle:
            assert read_response(sock)[0] == b"HTTP/1.1 204 No Content"
        slow = []
        for _ in range(150):
            sock = held.enter_context(connect(service))
            sock.sendall(b"GET /statistics/abc HTTP/1.1\r\nHost: x\r\n")  # never finished
            slow.append(sock)
        with connect(service) as busy:
            # Served on one keep-alive connection throughout, each request
            # within the idle timeout: it never expires.
            for _ in range(30):
                busy.sendall(METRICS_REQUEST)
                assert read_response(busy)[0] == b"HTTP/1.1 200 OK"
                time.sleep(0.1)
            assert all(closed_by_server(sock, HANG_BOUND_SECONDS) for sock in idle)
            statuses = {read_response(sock)[0].split()[1] for sock in slow}
            assert statuses == {b"408"}
            assert all(closed_by_server(sock, HANG_BOUND_SECONDS) for sock in slow)
            busy.sendall(METRICS_REQUEST)
            assert read_response(busy)[0] == b"HTTP/1.1 200 OK"
        assert answers_livez(service)


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
