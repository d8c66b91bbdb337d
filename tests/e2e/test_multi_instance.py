"""Several real `python -m sensorstats` processes on one etcd, spoken to over HTTP."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import etcd3
import pytest

from tests.support.etcd_process import EtcdProcess
from tests.support.service import Response, Service, start_service, statistics_path

PROBLEM_JSON = "application/problem+json"


def etcd_env(member: EtcdProcess, prefix: str, **extra: str) -> dict[str, str]:
    return {"SENSORSTATS_ETCD_ENDPOINTS": member.url, "SENSORSTATS_ETCD_PREFIX": prefix, **extra}


def wait_for(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within} s")
        time.sleep(0.05)


def oracle(measurements: list[dict[str, Any]]) -> dict[str, Any]:
    """What GET must answer for these measurements, computed independently."""
    if not measurements:
        return {"last_measurement": None, "count": 0, "avg": 0.0}
    # Ties between equal instants go to the greater string (sensorstats/web/README.md).
    latest = max(
        measurements, key=lambda m: (datetime.fromisoformat(m["timestamp"]), m["timestamp"])
    )
    return {
        "last_measurement": latest["timestamp"],
        "count": len(measurements),
        "avg": float(sum(Fraction(m["value"]) for m in measurements) / len(measurements)),
    }


@pytest.fixture
def instances(
    etcd: EtcdProcess, etcd_prefix: str, tmp_path: Path
) -> Iterator[tuple[Service, Service]]:
    env = etcd_env(etcd, etcd_prefix, SENSORSTATS_THREADS="8")
    with (
        start_service(env, log_dir=tmp_path) as first,
        start_service(env, log_dir=tmp_path) as second,
    ):
        yield first, second


def test_instances_share_state_and_read_their_writes(instances: tuple[Service, Service]) -> None:
    first, second = instances
    assert "etcd at" in first.log()
    posted: list[dict[str, Any]] = []
    for i in range(10):
        writer, reader = (first, second) if i % 2 else (second, first)
        item = {"sensor": "room 1/temp", "timestamp": f"2021-11-09T21:38:{i:02d}Z", "value": i}
        assert writer.post("/data", [item]).status == 204
        posted.append(item)
        # Acknowledged by one instance: visible at once on the other.
        assert reader.get(statistics_path("room 1/temp")).json == oracle(posted)
    assert second.delete(statistics_path("room 1/temp")).status == 204
    assert first.get(statistics_path("room 1/temp")).json == oracle([])


def test_concurrent_posts_and_deletes_through_both_instances_count_exactly(
    instances: tuple[Service, Service],
) -> None:
    threads, posts = 6, 15
    counted = ["m-1", "m/2", "m 3"]  # never deleted: exact statistics expected
    accepted: list[dict[str, Any]] = []
    raced: list[tuple[float, float]] = []  # (began, ended) of each post to "raced"
    deleted: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    halfway = threading.Event()

    def poster(thread: int) -> None:
        rng = random.Random(thread)
        for i in range(posts):
            batch = [
                {
                    "sensor": rng.choice(counted),
                    "timestamp": f"2021-11-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}"
                    f":{rng.randint(0, 59):02d}:{thread:02d}.{i:06d}+0{rng.randint(0, 9)}:00",
                    "value": rng.choice([rng.uniform(-1e6, 1e6), rng.randint(-9, 9), 1e-300]),
                }
                for _ in range(5)
            ]
            batch.append({"sensor": "raced", "timestamp": "2021-01-01T00:00:00Z", "value": 1})
            began = time.monotonic()
            answer = instances[(thread + i) % 2].post("/data", batch)
            ended = time.monotonic()
            with lock:
                if answer.status != 204:
                    failures.append(f"{answer.status} {answer.body!r}")
                    continue
                accepted.extend(batch[:-1])
                raced.append((began, ended))
                if len(raced) >= threads * posts // 2:
                    halfway.set()

    def deleter() -> None:
        halfway.wait(60)
        began = time.monotonic()
        answer = instances[1].delete(statistics_path("raced"))
        deleted.extend([began, time.monotonic()])
        if answer.status != 204:
            failures.append(f"DELETE {answer.status} {answer.body!r}")

    workers = [threading.Thread(target=poster, args=(t,)) for t in range(threads)]
    workers.append(threading.Thread(target=deleter))
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert failures == []

    for sensor in counted:
        expected = oracle([m for m in accepted if m["sensor"] == sensor])
        for instance in instances:
            assert instance.get(statistics_path(sensor)).json == expected

    # In some serial order the delete falls between the posts it raced with.
    delete_began, delete_ended = deleted
    surely_kept = sum(1 for began, _ in raced if began > delete_ended)
    maybe_kept = sum(1 for _, ended in raced if ended >= delete_began)
    left = instances[0].get(statistics_path("raced")).json
    assert surely_kept <= left["count"] <= maybe_kept
    assert left["avg"] == (1.0 if left["count"] else 0.0)


def assert_problem(answer: Response, status: int, type_suffix: str) -> None:
    assert answer.status == status
    assert answer.headers["content-type"] == PROBLEM_JSON
    assert answer.json["type"].endswith(type_suffix)
    assert int(answer.headers["retry-after"]) >= 1


def test_an_etcd_outage_is_503_and_the_service_recovers_by_itself(
    own_etcd: EtcdProcess, tmp_path: Path
) -> None:
    env = etcd_env(
        own_etcd, "/outage/", SENSORSTATS_ETCD_TIMEOUT="0.5", SENSORSTATS_WRITE_TIMEOUT="1.5"
    )
    item = {"sensor": "s", "timestamp": "2021-11-09T21:38:09Z", "value": 2}
    with start_service(env, log_dir=tmp_path) as service:
        wait_for(lambda: service.get("/healthz").status == 204, 15, "ready")
        assert service.post("/data", [item]).status == 204
        acknowledged, unknown = 1, 0

        own_etcd.pause()
        try:
            wait_for(lambda: service.get("/healthz").status == 503, 10, "/healthz turns 503")
            assert_problem(service.get("/healthz"), 503, "not-ready")
            refused = service.post("/data", [item])
            assert_problem(refused, 503, "store-unavailable")
            unknown += "outcome is unknown" in refused.json["detail"]
            assert_problem(service.get(statistics_path("s")), 503, "store-unavailable")
            assert service.get("/livez").status == 204
        finally:
            own_etcd.resume()

        wait_for(lambda: service.get("/healthz").status == 204, 15, "/healthz back to 204")
        assert service.post("/data", [item]).status == 204
        acknowledged += 1
        count = service.get(statistics_path("s")).json["count"]
        # Nothing acknowledged is lost; a refused post whose outcome was unknown
        # may have landed, but at most once.
        assert acknowledged <= count <= acknowledged + unknown


def test_keyed_replays_across_instances_that_chunk_differently_count_every_sensor_once(
    etcd: EtcdProcess, etcd_prefix: str, tmp_path: Path
) -> None:
    """Instances with 128, 64 and 16 etcd operations per transaction, one keyed batch.

    As an operator raising `SENSORSTATS_ETCD_MAX_TXN_OPS` rolls it out: the
    same 200-sensor batch and key through all three, in turn and at once,
    counts every sensor once; the key with a payload changed in its last
    chunk is refused with 422 and stores nothing.
    """
    sensors = [f"wide-{i:03d}" for i in range(200)]
    batch = [
        {"sensor": sensor, "timestamp": f"2021-11-09T21:{i // 60:02d}:{i % 60:02d}Z", "value": i}
        for i, sensor in enumerate(sensors)
    ]

    def total() -> int:
        return sum(services[0].get(statistics_path(s)).json["count"] for s in sensors)

    def post(service: Service, key: str, items: list[dict[str, Any]]) -> Response:
        return service.post("/data", items, headers={"Idempotency-Key": key})

    with contextlib.ExitStack() as stack:
        services = [
            stack.enter_context(
                start_service(
                    etcd_env(etcd, etcd_prefix, SENSORSTATS_ETCD_MAX_TXN_OPS=str(ops)),
                    log_dir=tmp_path,
                )
            )
            for ops in (128, 64, 16)
        ]
        coarse, middle, fine = services
        for service in (coarse, coarse, middle, fine, middle, coarse):
            assert post(service, "batch-42", batch).status == 204
            assert total() == 200
        expected = oracle(batch[-1:])
        assert fine.get(statistics_path(sensors[-1])).json == expected

        changed = [*batch[:-1], {**batch[-1], "value": 1000}]
        for service in services:
            refused = post(service, "batch-42", changed)
            assert refused.status == 422
            assert refused.headers["content-type"] == PROBLEM_JSON
        assert total() == 200
        assert coarse.get(statistics_path(sensors[-1])).json == expected

        # Concurrent copies of a fresh keyed batch through all three at once.
        answers: list[int] = []
        barrier = threading.Barrier(6)

        def send(service: Service) -> None:
            barrier.wait(10)
            answers.append(post(service, "batch-43", batch).status)

        threads = [threading.Thread(target=send, args=(s,)) for s in services * 2]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert answers == [204] * 6
        assert total() == 400


def test_a_record_of_a_newer_release_is_503_with_a_clear_detail_and_left_as_it_is(
    etcd: EtcdProcess, etcd_prefix: str, tmp_path: Path
) -> None:
    """During a rolling upgrade, as an instance of the older release meets a newer record."""
    key = f"{etcd_prefix}sensors/newer"
    newer = b'[9,2,"3",0,"2021-11-09T21:38:09Z",{"min":1,"max":2}]'
    raw = etcd3.client(host="127.0.0.1", port=etcd.client_port, timeout=5)
    try:
        raw.put(key, newer)
        with start_service(etcd_env(etcd, etcd_prefix), log_dir=tmp_path) as service:
            item = {"sensor": "newer", "timestamp": "2021-11-09T21:38:10Z", "value": 1}
            for answer in (
                service.post("/data", [item]),
                service.post("/data", [item], headers={"Idempotency-Key": "newer-1"}),
                service.get(statistics_path("newer")),
            ):
                assert_problem(answer, 503, "store-unavailable")
                assert answer.json["detail"] == (
                    "the record of sensor 'newer' has version 9, which this release cannot "
                    "read; upgrade every instance to the release that wrote it (the record "
                    "is left as it is)"
                )
        assert raw.get(key)[0] == newer
    finally:
        raw.close()
