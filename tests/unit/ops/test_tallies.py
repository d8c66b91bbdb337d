"""Lock-free request tallies: exact under threads, exposed as prometheus_client would."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from sensorstats.ops.metrics import LATENCY_BUCKETS
from sensorstats.ops.tallies import RequestTallies, ThreadTallies


def test_rows_added_by_many_threads_sum_exactly():
    tallies = ThreadTallies(2)
    start = threading.Barrier(8)

    def add(n: int) -> None:
        start.wait()
        for _ in range(10_000):
            row = tallies.row(("k", n % 2))
            row[0] += 1
            row[1] += n

    threads = [threading.Thread(target=add, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert tallies.totals() == {("k", 0): [40_000, 120_000], ("k", 1): [40_000, 160_000]}


def test_a_threads_rows_still_count_after_it_ended():
    tallies = ThreadTallies(1)
    thread = threading.Thread(target=lambda: tallies.row("k").__setitem__(0, 5))
    thread.start()
    thread.join()
    tallies.row("k")[0] += 1
    assert tallies.totals() == {"k": [6]}


def _reference(observations):
    """The same requests through prometheus_client's own metrics."""
    registry = CollectorRegistry()
    requests = Counter(
        "sensorstats_http_requests",
        "Requests answered, by method, route template and status code.",
        ["method", "route", "status"],
        registry=registry,
    )
    latency = Histogram(
        "sensorstats_http_request_duration_seconds",
        "Time from the app receiving a request to its answer, by method and route template.",
        ["method", "route"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    received = Counter(
        "sensorstats_http_request_body_bytes",
        "Request body bytes received, by route template.",
        ["route"],
        registry=registry,
    )
    sent = Counter(
        "sensorstats_http_response_body_bytes",
        "Response body bytes sent, by route template.",
        ["route"],
        registry=registry,
    )
    for method, route, status, seconds, bytes_in, bytes_out in observations:
        requests.labels(method, route, str(status)).inc()
        latency.labels(method, route).observe(seconds)
        received.labels(route).inc(bytes_in)
        sent.labels(route).inc(bytes_out)
    return registry


def _lines(registry) -> list[str]:
    return sorted(generate_latest(registry).decode().splitlines())


observation = st.tuples(
    st.sampled_from(["GET", "POST"]),
    st.sampled_from(["/data", "/statistics/{sensor_id}", "unmatched"]),
    st.sampled_from([200, 204, 400, 503]),
    # Multiples of 1/1024 s: their sums are exact in any order of addition.
    st.integers(0, 20 * 1024).map(lambda n: n / 1024),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
)


@given(st.lists(observation, max_size=30))
def test_exposed_exactly_as_prometheus_clients_own_metrics(observations):
    registry = CollectorRegistry()
    tallies = RequestTallies(LATENCY_BUCKETS)
    registry.register(tallies)
    for each in observations:
        tallies.count(*each)
    assert _lines(registry) == _lines(_reference(observations))


@pytest.mark.parametrize("seconds", [*LATENCY_BUCKETS, 0.0, 10.5])
def test_a_request_on_a_bucket_bound_counts_in_that_bucket(seconds):
    registry = CollectorRegistry()
    tallies = RequestTallies(LATENCY_BUCKETS)
    registry.register(tallies)
    tallies.count("GET", "/data", 200, seconds, 0, 0)
    assert _lines(registry) == _lines(_reference([("GET", "/data", 200, seconds, 0, 0)]))
