"""What the store's internals report as they work, for whoever observes them.

The etcd store is assembled from parts built several layers deep (the
client, the committer, the breaker); threading an observer through every
constructor would touch each of them for a concern that is not theirs. So
each part reports an event with one call on `STORE_EVENTS`, which passes it
on to the observers subscribed (in the service: its `Metrics`), and costs a
method call and an empty loop when nobody listens. A process has one
registry of metrics, so one fan-out for the process is no loss.

Label values are bounded: etcd methods and gRPC status names are fixed
sets, outcomes are the few named here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from sensorstats.core.errors import StoreUnavailable

# How one write of a batch ended (`StoreObserver.writes_decided`).
APPLIED = "applied"
NOT_APPLIED = "not_applied"
UNKNOWN = "unknown"
REJECTED = "rejected"  # its Idempotency-Key was used with another payload

# How one transaction attempt of a batch ended (`StoreObserver.write_attempt`).
COMMITTED = "committed"
CONFLICT = "conflict"  # a compared revision had moved on: another writer won
# A marker already existed: an attempt whose answer was lost had committed,
# or a request with the same Idempotency-Key had been applied.
MARKER_FOUND = "marker_found"
FAILED = "failed"  # the call failed; etcd_call says how


class StoreObserver(Protocol):
    """Receives the store's events; each method must be quick and never raise."""

    def etcd_call(self, method: str, code: str, seconds: float) -> None:
        """One gRPC call to etcd: its method (``Txn``), status (``OK``, ``UNAVAILABLE``)."""

    def etcd_failover(self) -> None:
        """The client set a member aside after a failure and moved to the next one."""

    def write_attempt(self, outcome: str, retry: bool) -> None:
        """One transaction of a batch of writes, the first or a retry."""

    def writes_decided(self, outcomes: Sequence[str]) -> None:
        """A batch of writes (one per request chunk) shared a transaction and is decided."""

    def breaker_state(self, state: str) -> None:
        """The circuit breaker in front of the store opened or closed."""


class _Decided(Protocol):
    error: Exception | None


class StoreEvents:
    """The fan-out: every event goes to each subscribed observer."""

    def __init__(self) -> None:
        self._observers: tuple[StoreObserver, ...] = ()
        self._lock = threading.Lock()  # serialises subscribers; reporters read a tuple

    def subscribe(self, observer: StoreObserver) -> None:
        """Pass every later event to `observer`."""
        with self._lock:
            self._observers = (*self._observers, observer)

    def unsubscribe(self, observer: StoreObserver) -> None:
        """Stop passing events to `observer`."""
        with self._lock:
            self._observers = tuple(o for o in self._observers if o is not observer)

    def etcd_call(self, request: Any, code: str, started: float) -> None:
        """A call with `request` (a gRPC message) that began at monotonic `started` ended."""
        if not self._observers:
            return
        seconds = time.monotonic() - started
        method = type(request).__name__.removesuffix("Request")
        for observer in self._observers:
            observer.etcd_call(method, code, seconds)

    def etcd_failover(self) -> None:
        for observer in self._observers:
            observer.etcd_failover()

    def write_attempt(self, outcome: str, retry: bool) -> None:
        for observer in self._observers:
            observer.write_attempt(outcome, retry)

    def writes_decided(self, batch: Sequence[_Decided], outcome_unknown: bool) -> None:
        """Each write of `batch` is done: applied, or failed with its own error.

        A write failed by the store's unavailability has an unknown outcome if
        any attempt's answer was lost (`outcome_unknown`), else it was not applied.
        """
        if not self._observers:
            return
        outcomes = [_outcome(write.error, outcome_unknown) for write in batch]
        for observer in self._observers:
            observer.writes_decided(outcomes)

    def breaker_state(self, state: str) -> None:
        for observer in self._observers:
            observer.breaker_state(state)


def _outcome(error: Exception | None, outcome_unknown: bool) -> str:
    if error is None:
        return APPLIED
    if isinstance(error, StoreUnavailable):
        return UNKNOWN if outcome_unknown else NOT_APPLIED
    return REJECTED


# The one fan-out of the process.
STORE_EVENTS = StoreEvents()
