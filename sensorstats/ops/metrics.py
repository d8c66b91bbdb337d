"""Prometheus metrics: one registry per process, served at ``GET /metrics``.

Everything here is counted as it happens or read at scrape time from state
the process already holds (readiness, the worker pool, the connections), so
a scrape never asks the store and costs a few milliseconds however busy the
instance is. Label values are bounded: routes are templates (a sensor id
never becomes a label), methods outside HTTP's own are ``other``, store and
etcd outcomes are fixed sets.

A request is counted without a lock (`sensorstats.ops.tallies`); the store
path caches the labelled children (`labels()` costs a lock and a dict
lookup per call).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import version
from typing import Any, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder

from sensorstats import __version__
from sensorstats.core.errors import StoreFull, StoreUnavailable
from sensorstats.core.idempotency import IdempotencyKey, IdempotencyKeyReused
from sensorstats.core.stats import Stats
from sensorstats.ops.readiness import Readiness
from sensorstats.ops.tallies import RequestTallies
from sensorstats.store import Store
from sensorstats.store.breaker import CLOSED, CircuitOpen
from sensorstats.store.calls import Ready, StartedCall, StartedRead, StartedWrite
from sensorstats.store.events import (
    APPLIED,
    COMMITTED,
    CONFLICT,
    FAILED,
    MARKER_FOUND,
    NOT_APPLIED,
    STORE_EVENTS,
    UNKNOWN,
)
from sensorstats.store.events import REJECTED as WRITE_REJECTED

# Request latency: a GET on the embedded store takes well under a
# millisecond, a POST on etcd a few, a request waiting out an outage up to
# the write deadline (5 s by default).
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Writes sharing one etcd transaction (group commit): 1 up to what 128
# operations hold.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

# A client may send any token as a method: only these become label values.
# RFC 9110's, PATCH (RFC 5789) and QUERY, the HTTP working group's safe
# method with a body, which clients and falcon already know.
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "QUERY"}
)
OTHER_METHOD = "other"

# `route` of requests no route matched (404s, and answers the server gave
# before the app saw the request: malformed HTTP, timeouts, oversized heads).
UNMATCHED = "unmatched"

# Store operation outcomes.
OK = "ok"
UNAVAILABLE = "unavailable"
CIRCUIT_OPEN = "circuit_open"
FULL = "full"
REJECTED = "rejected"
ERROR = "error"

T = TypeVar("T")

# A `_created` series beside every counter and histogram doubles what a scrape
# carries for a timestamp Prometheus does not use (process-wide setting).
disable_created_metrics()  # type: ignore[no-untyped-call]


def method_label(method: str) -> str:
    """`method` if HTTP defines it, else ``other``."""
    return method if method in HTTP_METHODS else OTHER_METHOD


class Metrics:
    """The process's metrics, and what feeds them; thread-safe."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        Info(
            "sensorstats_build", "Versions of sensorstats and what it runs on.", registry=registry
        ).info(
            {
                "version": __version__,
                "python": platform.python_version(),
                "falcon": version("falcon"),
                "waitress": version("waitress"),
            }
        )

        # --- HTTP ---------------------------------------------------------------
        # Requests are counted without a lock per observation (`tallies`).
        self._requests = RequestTallies(LATENCY_BUCKETS)
        registry.register(self._requests)
        self._ingested = Counter(
            "sensorstats_measurements_ingested",
            "Measurements in batches the store acknowledged (a replay of an "
            "Idempotency-Key counts again).",
            registry=registry,
        )
        self._rejected = Counter(
            "sensorstats_batches_rejected",
            "POST /data requests refused before storing anything, by problem type.",
            ["reason"],
            registry=registry,
        )

        # --- the store, as the app calls it --------------------------------------
        self._store_operations = Counter(
            "sensorstats_store_operations",
            "Store calls (apply, get, delete, check), by outcome: ok, unavailable, "
            "circuit_open, full, rejected, error.",
            ["operation", "outcome"],
            registry=registry,
        )
        self._store_latency = Histogram(
            "sensorstats_store_operation_duration_seconds",
            "Time of one store call, by operation.",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._store_children: dict[tuple[str, str], Any] = {}
        self._store_latency_children: dict[str, Any] = {}

        # --- etcd, from the store's events ---------------------------------------
        self._etcd_calls = Counter(
            "sensorstats_etcd_calls",
            "gRPC calls to etcd, by method (Txn, Range, DeleteRange, LeaseGrant) and "
            "status code (OK, UNAVAILABLE, DEADLINE_EXCEEDED, ...).",
            ["method", "code"],
            registry=registry,
        )
        self._etcd_latency = Histogram(
            "sensorstats_etcd_call_duration_seconds",
            "Time of one gRPC call to etcd, by method.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._etcd_failovers = Counter(
            "sensorstats_etcd_failovers",
            "Times the client set a failing etcd member aside and moved to the next.",
            registry=registry,
        )
        self._write_attempts = Counter(
            "sensorstats_etcd_write_attempts",
            "Compare-and-swap transactions, by outcome (committed, conflict, "
            "marker_found, failed) and attempt (first, retry).",
            ["outcome", "attempt"],
            registry=registry,
        )
        self._writes = Counter(
            "sensorstats_etcd_writes",
            "Request chunks decided, by outcome (applied, not_applied, unknown, rejected).",
            ["outcome"],
            registry=registry,
        )
        # Every outcome is served from the start, at 0: a series that first
        # appears at 1 shows Prometheus no increase, and the first write with
        # its outcome unknown would never alert.
        for outcome in (COMMITTED, CONFLICT, MARKER_FOUND, FAILED):
            for attempt in ("first", "retry"):
                self._write_attempts.labels(outcome, attempt)
        for outcome in (APPLIED, NOT_APPLIED, UNKNOWN, WRITE_REJECTED):
            self._writes.labels(outcome)
        self._writes_per_transaction = Histogram(
            "sensorstats_etcd_writes_per_transaction",
            "Request chunks sharing one transaction (group commit).",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self._breaker_open = Gauge(
            "sensorstats_store_circuit_breaker_open",
            "1 while the circuit breaker in front of etcd fails calls fast, else 0.",
            registry=registry,
        )
        self._breaker_opened = Counter(
            "sensorstats_store_circuit_breaker_openings",
            "Times the circuit breaker in front of etcd opened.",
            registry=registry,
        )

        # --- read at scrape time --------------------------------------------------
        self._ready = Gauge(
            "sensorstats_ready",
            "1 while /healthz answers 204 (store reachable, not draining), else 0.",
            registry=registry,
        )
        self._draining = Gauge(
            "sensorstats_draining",
            "1 from SIGTERM on, while the instance drains, else 0.",
            registry=registry,
        )
        self._waiting = Gauge(
            "sensorstats_http_requests_waiting",
            "Requests received and queued for a worker thread, not yet started.",
            registry=registry,
        )
        self._in_flight = Gauge(
            "sensorstats_http_requests_in_flight",
            "Requests a worker thread is serving now (probes and scrapes, answered "
            "at once on the event loop, are not counted).",
            registry=registry,
        )
        self._awaiting_store = Gauge(
            "sensorstats_http_requests_awaiting_store",
            "Requests whose store call was started on the event loop (a GET's read or "
            "a POST's write ahead) and that are not answered yet; no worker holds them.",
            registry=registry,
        )
        self._threads = Gauge(
            "sensorstats_worker_threads",
            "Worker threads configured (SENSORSTATS_THREADS).",
            registry=registry,
        )
        self._connections = Gauge(
            "sensorstats_connections_open",
            "Client connections open now.",
            registry=registry,
        )

    # --- HTTP -------------------------------------------------------------------

    def request_answered(
        self,
        method: str,
        route: str,
        status: int,
        seconds: float,
        received: int,
        sent: int,
    ) -> None:
        """Count one answered request; `method` as `method_label` gives it."""
        self._requests.count(method, route, status, seconds, received, sent)

    def batch_rejected(self, reason: str) -> None:
        """A POST /data refused as `reason` (a problem type name, or a status code)."""
        self._rejected.labels(reason).inc()

    def measurements_ingested(self, count: int) -> None:
        self._ingested.inc(count)

    # --- the store --------------------------------------------------------------

    def measured(self, store: Store) -> Store:
        """`store`, with every call counted and timed here."""
        return MeasuredStore(store, self)

    def store_operation(self, operation: str, outcome: str, seconds: float) -> None:
        key = (operation, outcome)
        child = self._store_children.get(key)
        if child is None:
            child = self._store_children[key] = self._store_operations.labels(operation, outcome)
        child.inc()
        latency = self._store_latency_children.get(operation)
        if latency is None:
            latency = self._store_latency_children[operation] = self._store_latency.labels(
                operation
            )
        latency.observe(seconds)

    def observe_store_events(self) -> None:
        """Count what the store's internals report (etcd calls, attempts, the breaker)."""
        STORE_EVENTS.subscribe(self)

    def close(self) -> None:
        """Stop counting the store's events."""
        STORE_EVENTS.unsubscribe(self)

    # `StoreObserver`: called by the store's internals through `STORE_EVENTS`.

    def etcd_call(self, method: str, code: str, seconds: float) -> None:
        self._etcd_calls.labels(method, code).inc()
        self._etcd_latency.labels(method).observe(seconds)

    def etcd_failover(self) -> None:
        self._etcd_failovers.inc()

    def write_attempt(self, outcome: str, retry: bool) -> None:
        self._write_attempts.labels(outcome, "retry" if retry else "first").inc()

    def writes_decided(self, outcomes: Sequence[str]) -> None:
        self._writes_per_transaction.observe(len(outcomes))
        for outcome in outcomes:
            self._writes.labels(outcome).inc()

    def breaker_state(self, state: str) -> None:
        is_open = state != CLOSED
        self._breaker_open.set(1 if is_open else 0)
        if is_open:
            self._breaker_opened.inc()

    # --- read at scrape time ----------------------------------------------------

    def watch_readiness(self, readiness: Readiness) -> None:
        """Report `readiness` as /healthz does; it never waits for the store once started."""
        self._ready.set_function(lambda: 1.0 if readiness.status()[0] else 0.0)
        self._draining.set_function(lambda: 1.0 if readiness.draining else 0.0)

    def watch_workers(
        self,
        *,
        waiting: Callable[[], int],
        in_flight: Callable[[], int],
        threads: Callable[[], int],
        connections: Callable[[], int],
        awaiting_store: Callable[[], int] = lambda: 0,
    ) -> None:
        """Read the worker pool, the connections and the calls ahead at each scrape."""
        self._waiting.set_function(lambda: float(waiting()))
        self._in_flight.set_function(lambda: float(in_flight()))
        self._awaiting_store.set_function(lambda: float(awaiting_store()))
        self._threads.set_function(lambda: float(threads()))
        self._connections.set_function(lambda: float(connections()))

    # --- exposition -------------------------------------------------------------

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The metrics in the format `accept` asks for (OpenMetrics or Prometheus text)."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


class MeasuredStore:
    """A `Store` whose calls are counted and timed by `Metrics`."""

    def __init__(self, store: Store, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics
        self.description = store.description
        self.starts_calls = store.starts_calls

    def apply(self, deltas: Mapping[str, Stats], key: IdempotencyKey | None = None) -> None:
        self._measure("apply", lambda: self._store.apply(deltas, key))
        self._metrics.measurements_ingested(sum(delta.count for delta in deltas.values()))

    def get(self, sensor: str) -> Stats:
        return self._measure("get", lambda: self._store.get(sensor))

    def start_get(self, sensor: str, ready: Ready) -> StartedRead[Stats] | None:
        return self._store.start_get(sensor, self._measured("get", ready))

    def start_apply(self, deltas: Mapping[str, Stats], ready: Ready) -> StartedWrite | None:
        count = sum(delta.count for delta in deltas.values())
        return self._store.start_apply(deltas, self._measured("apply", ready, count))

    def _measured(self, operation: str, ready: Ready, ingested: int = 0) -> Ready:
        """`ready`, after the call it settles is measured as `operation`, from its start."""
        started = time.monotonic()

        def settled(call: StartedCall[Any]) -> None:
            error = call.error
            outcome = OK if error is None else _outcome_of(error)
            self._metrics.store_operation(operation, outcome, time.monotonic() - started)
            if error is None and ingested:
                self._metrics.measurements_ingested(ingested)
            ready(call)

        return settled

    def delete(self, sensor: str) -> None:
        self._measure("delete", lambda: self._store.delete(sensor))

    def check(self) -> None:
        self._measure("check", self._store.check)

    def close(self) -> None:
        self._store.close()

    def _measure(self, operation: str, call: Callable[[], T]) -> T:
        started = time.monotonic()
        outcome = ERROR
        try:
            result = call()
            outcome = OK
            return result
        except BaseException as error:
            outcome = _outcome_of(error)
            raise
        finally:
            self._metrics.store_operation(operation, outcome, time.monotonic() - started)


def _outcome_of(error: BaseException) -> str:
    """The outcome label of a store call that failed with `error`."""
    if isinstance(error, CircuitOpen):
        return CIRCUIT_OPEN
    if isinstance(error, StoreUnavailable):
        return UNAVAILABLE
    if isinstance(error, StoreFull):
        return FULL
    if isinstance(error, IdempotencyKeyReused):
        return REJECTED
    return ERROR
