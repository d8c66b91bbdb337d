"""Counting every request without a lock: per-thread tallies, summed at scrape time.

`prometheus_client` takes a lock for every increment and every histogram
observation: recording one request took about eight, on the event loop,
while the threads that commit to etcd wait for the interpreter lock it
holds. Here each thread counts into rows only it writes; a scrape sums
every thread's rows. A scrape may miss the request being counted at that
instant, never one counted before it, and no total ever goes down.

`RequestTallies` is the request family of `sensorstats.ops.metrics`: the
request counter, the latency histogram and the body byte counters, as one
collector in the registry, exposed exactly as the `prometheus_client`
metrics of the same names would be.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Hashable, Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

Row = list[float]
K = TypeVar("K", bound=Hashable)


class ThreadTallies(Generic[K]):
    """Rows of numbers by key, each thread adding into rows of its own."""

    def __init__(self, width: int) -> None:
        self._width = width
        self._local = threading.local()
        # Every thread's rows; the lock is taken once per thread, and at scrape.
        self._tables: list[dict[K, Row]] = []
        self._lock = threading.Lock()

    def row(self, key: K) -> Row:
        """This thread's row for `key`, to add into (only this thread writes it)."""
        try:
            rows: dict[K, Row] = self._local.rows
        except AttributeError:
            rows = self._local.rows = {}
            with self._lock:
                self._tables.append(rows)
        row = rows.get(key)
        if row is None:
            row = rows[key] = [0] * self._width
        return row

    def totals(self) -> dict[K, Row]:
        """Every key's row summed over the threads (a thread may be adding meanwhile)."""
        with self._lock:
            tables = list(self._tables)
        totals: dict[K, Row] = {}
        for rows in tables:
            # One C-level copy: safe while its thread adds a key.
            for key, row in list(rows.items()):
                total = totals.get(key)
                if total is None:
                    totals[key] = list(row)
                else:
                    for index, value in enumerate(row):
                        total[index] += value
        return totals


# A request's row: its count, seconds in total, body bytes in and out, then
# how many fell into each latency bucket (not cumulative; the last is +Inf).
_COUNT, _SECONDS, _RECEIVED, _SENT, _BUCKETS = range(5)


class RequestTallies(Collector):
    """Requests by (method, route, status): count, latency, body bytes; lock-free."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self._bounds = tuple(buckets)
        self._tallies: ThreadTallies[tuple[str, str, int]] = ThreadTallies(
            _BUCKETS + len(self._bounds) + 1
        )

    def count(
        self, method: str, route: str, status: int, seconds: float, received: int, sent: int
    ) -> None:
        """One answered request."""
        row = self._tallies.row((method, route, status))
        row[_COUNT] += 1
        row[_SECONDS] += seconds
        row[_RECEIVED] += received
        row[_SENT] += sent
        # The first bucket whose bound is >= seconds, as Prometheus's `le`.
        row[_BUCKETS + bisect_left(self._bounds, seconds)] += 1

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "sensorstats_http_requests",
            "Requests answered, by method, route template and status code.",
            labels=["method", "route", "status"],
        )
        received = CounterMetricFamily(
            "sensorstats_http_request_body_bytes",
            "Request body bytes received, by route template.",
            labels=["route"],
        )
        sent = CounterMetricFamily(
            "sensorstats_http_response_body_bytes",
            "Response body bytes sent, by route template.",
            labels=["route"],
        )
        latency: dict[tuple[str, str], Row] = {}
        received_by_route: dict[str, float] = {}
        sent_by_route: dict[str, float] = {}
        for key, row in sorted(self._tallies.totals().items()):
            method, route, status = key
            requests.add_metric([method, route, str(status)], row[_COUNT])
            received_by_route[route] = received_by_route.get(route, 0) + row[_RECEIVED]
            sent_by_route[route] = sent_by_route.get(route, 0) + row[_SENT]
            total = latency.setdefault((method, route), [0] * len(row))
            for index, value in enumerate(row):
                total[index] += value
        for route, value in received_by_route.items():
            received.add_metric([route], value)
        for route, value in sent_by_route.items():
            sent.add_metric([route], value)
        yield requests
        yield self._histogram(latency)
        yield received
        yield sent

    def _histogram(self, latency: dict[tuple[str, str], Row]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "sensorstats_http_request_duration_seconds",
            "Time from the app receiving a request to its answer, by method and route template.",
            labels=["method", "route"],
        )
        bounds = [*(floatToGoString(b) for b in self._bounds), "+Inf"]  # type: ignore[no-untyped-call]
        for (method, route), row in latency.items():
            cumulative = 0.0
            buckets = []
            for bound, value in zip(bounds, row[_BUCKETS:], strict=True):
                cumulative += value
                buckets.append((bound, cumulative))
            family.add_metric([method, route], buckets, row[_SECONDS])
        return family
