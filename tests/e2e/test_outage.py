"""An etcd outage as clients see it: probes keep answering, writes fail fast, all recovers.

A real etcd is frozen with SIGSTOP (connections stay open, nothing answers,
as with a hung node or a partition) while real clients post to a real
`python -m sensorstats`. Timing bounds show the absence of a hang; they are
seconds, not milliseconds.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.etcd_process import EtcdProcess, start_etcd
from tests.support.service import Response, Service, request, start_service

PROBE_BOUND_SECONDS = 2.0
FAIL_FAST_SECONDS = 0.5
# Longer than the probe bound: a probe queued behind the posts would miss it.
WRITE_TIMEOUT = 3.0
BATCH = json.dumps([{"sensor": "outage", "timestamp": "2021-11-09T21:38:09Z", "value": 1}])


@pytest.fixture(scope="module")
def member(etcd_available: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    with start_etcd(tmp_path_factory.mktemp("etcd")) as running:
        yield running


@pytest.fixture(scope="module")
def service(member: EtcdProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with start_service(
        env={"SENSORSTATS_ETCD_ENDPOINTS": member.url},
        args=[
            *("--etcd-timeout", "1"),
            *("--write-timeout", str(WRITE_TIMEOUT)),
            *("--etcd-prefix", "/outage/"),
        ],
        log_dir=tmp_path_factory.mktemp("logs"),
    ) as running:
        yield running


@pytest.fixture
def paused(member: EtcdProcess, service: Service) -> Iterator[EtcdProcess]:
    """etcd frozen for the test's duration; the service healthy before and after."""
    wait_until(lambda: service.get("/healthz").status == 204, within=15)
    member.pause()
    try:
        yield member
    finally:
        member.resume()
    wait_until(lambda: service.get("/healthz").status == 204, within=15)


def wait_until(condition, within: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s")
        time.sleep(0.1)


def timed(call) -> tuple[Response, float]:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    answer = call()
    return answer, time.monotonic() - started


def test_probes_answer_while_every_worker_waits_on_a_paused_etcd(
    service: Service, paused: EtcdProcess
) -> None:
    # 48 clients posting with idempotency keys (settled by a worker, never
    # written ahead): 16 hold every worker thread for the write deadline,
    # the others queue behind them.
    posting = ThreadPoolExecutor(max_workers=48)
    started = threading.Event()

    def post(n: int) -> int:
        started.set()
        keyed = {"Idempotency-Key": f"outage-probes-{n}"}
        return service.post("/data", BATCH, headers=keyed, timeout=30).status

    try:
        posts = [posting.submit(post, n) for n in range(48)]
        started.wait(5)
        time.sleep(0.5)  # let them reach the workers and the queue
        live, live_took = timed(lambda: service.get("/livez", timeout=10))
        health, health_took = timed(lambda: service.get("/healthz", timeout=10))
        head, head_took = timed(lambda: request(service.url, "HEAD", "/livez", timeout=10))
        statuses = [p.result(timeout=30) for p in posts]
    finally:
        posting.shutdown(wait=True)
    assert (live.status, head.status) == (204, 204)
    assert live_took < PROBE_BOUND_SECONDS
    assert head_took < PROBE_BOUND_SECONDS
    # Readiness is as old as the last check (about a second), so it may not
    # have noticed yet; but it answers at once, and notices soon.
    assert health.status in (204, 503)
    assert health_took < PROBE_BOUND_SECONDS
    wait_until(lambda: service.get("/healthz", timeout=PROBE_BOUND_SECONDS).status == 503, 10)
    assert set(statuses) == {503}


def gauge(exposition: bytes, name: str) -> float:
    """The value of an unlabelled gauge in a Prometheus text exposition."""
    for line in exposition.decode().splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exposed")


def test_gets_waiting_on_a_paused_etcd_hold_no_worker_thread(
    service: Service, paused: EtcdProcess
) -> None:
    # Twice as many GETs as worker threads. Their reads wait in the store's
    # rounds, started on the event loop; no worker is given a GET before
    # its read is in, so the pool stays free for everything else.
    with ThreadPoolExecutor(max_workers=32) as getting:
        gets = [
            getting.submit(service.get, f"/statistics/outage-{n % 4}", timeout=30)
            for n in range(32)
        ]
        time.sleep(0.5)  # they are all in, waiting on etcd
        scraped = service.get("/metrics").body
        refused = service.post("/data", "not json")  # needs a worker, not the store
        statuses = {get.result(timeout=30).status for get in gets}
    assert gauge(scraped, "sensorstats_http_requests_in_flight") == 0
    assert gauge(scraped, "sensorstats_http_requests_waiting") == 0
    assert refused.status == 400
    assert statuses == {503}


def access_lines(service: Service, request_id: str) -> list[dict[str, object]]:
    """The access lines logged so far for `request_id`."""
    lines = [json.loads(line) for line in service.log().splitlines() if request_id in line]
    return [line for line in lines if line["logger"] == "sensorstats.access"]


def awaiting(exposition: bytes) -> float:
    return gauge(exposition, "sensorstats_http_requests_awaiting_store")


def test_posts_waiting_on_a_paused_etcd_hold_no_worker_thread(
    service: Service, paused: EtcdProcess
) -> None:
    # Twice as many POSTs as worker threads. Each is written ahead: its
    # write waits in the store's queue, started on the event loop, and no
    # worker is given the request before its outcome is in.
    with ThreadPoolExecutor(max_workers=32) as posting:
        traced = {"X-Request-ID": "outage-post-1"}
        posts = [
            posting.submit(
                service.post, "/data", BATCH, headers=traced if n == 0 else {}, timeout=30
            )
            for n in range(32)
        ]
        # They are all in, waiting on etcd as connections.
        wait_until(lambda: awaiting(service.get("/metrics").body) == 32, within=WRITE_TIMEOUT - 1)
        scraped = service.get("/metrics").body
        refused, took = timed(lambda: service.post("/data", "not json"))  # a worker's
        statuses = {post.result(timeout=30).status for post in posts}
    assert awaiting(service.get("/metrics").body) == 0  # all answered
    # The first one's duration runs from its arrival, the wait for its write included.
    # Access lines are written in batches; other lines may carry its id first.
    wait_until(lambda: access_lines(service, "outage-post-1"), within=10)
    (access,) = access_lines(service, "outage-post-1")
    assert access["duration_ms"] >= 500  # it waited out at least one etcd call
    assert gauge(scraped, "sensorstats_http_requests_in_flight") == 0
    assert gauge(scraped, "sensorstats_http_requests_waiting") == 0
    assert refused.status == 400
    assert took < PROBE_BOUND_SECONDS
    assert statuses == {503}


def test_the_breaker_opens_fails_fast_and_closes_again(
    service: Service, paused: EtcdProcess
) -> None:
    earlier_log = len(service.log())
    # Consecutive failures open the breaker: a burst of posts that each wait
    # out the write deadline...
    with ThreadPoolExecutor(max_workers=8) as posting:
        burst = list(posting.map(lambda _: service.post("/data", BATCH, timeout=30), range(8)))
    assert {answer.status for answer in burst} == {503}
    # ...then requests fail at once, without waiting for the store.
    answer, took = timed(lambda: service.post("/data", BATCH))
    assert (answer.status, took < FAIL_FAST_SECONDS) == (503, True)
    assert "circuit breaker" in answer.json["detail"]
    assert int(answer.headers["retry-after"]) >= 1
    for call in (
        lambda: service.post("/data", BATCH),
        lambda: service.get("/statistics/outage"),
        lambda: service.delete("/statistics/outage"),
    ):
        refused, took = timed(call)
        assert refused.status == 503
        assert took < FAIL_FAST_SECONDS
    # Readiness shows it once its cached answer (about a second old) is renewed.
    wait_until(lambda: "circuit breaker" in service.get("/healthz").json["detail"], within=5)

    paused.resume()
    # A trial call closes it within a few of its short intervals.
    wait_until(lambda: service.post("/data", BATCH).status == 204, within=15)
    wait_until(lambda: service.get("/healthz").status == 204, within=15)
    log = service.log()[earlier_log:]
    assert log.count("circuit breaker open:") == 1
    assert log.count("circuit breaker closed:") == 1


@pytest.fixture(scope="module")
def small(member: EtcdProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """An instance that takes 4 connections at most."""
    with start_service(
        env={"SENSORSTATS_ETCD_ENDPOINTS": member.url},
        args=[
            *("--connection-limit", "4"),
            *("--etcd-timeout", "1"),
            *("--write-timeout", str(WRITE_TIMEOUT)),
            *("--etcd-prefix", "/outage-small/"),
        ],
        log_dir=tmp_path_factory.mktemp("logs"),
    ) as running:
        yield running


def test_when_every_connection_is_busy_a_newcomer_is_closed_at_once(
    small: Service, paused: EtcdProcess
) -> None:
    with ThreadPoolExecutor(max_workers=4) as posting:
        posts = [posting.submit(small.post, "/data", BATCH, timeout=30) for _ in range(4)]
        time.sleep(0.5)  # all four wait on etcd now
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", small.port), timeout=5) as newcomer:
            try:
                newcomer.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = newcomer.recv(64)
            except (ConnectionResetError, BrokenPipeError):
                answer = b""
        # Closed, not left waiting in a queue nobody reads.
        assert answer == b""
        assert time.monotonic() - started < PROBE_BOUND_SECONDS
        assert {p.result(timeout=30).status for p in posts} == {503}
    # (Logged as one of the summarised connection-limit warnings.)
    assert "connection limit (4) reached" in small.log()
