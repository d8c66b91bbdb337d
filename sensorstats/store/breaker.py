"""A circuit breaker in front of a store: fail fast while the store is known to be down.

Without it, every request during an etcd outage holds a worker thread for
the whole write deadline, and requests queue behind those. The breaker is a
`Store` wrapping a `Store`:

- **closed**: calls go through. `THRESHOLD` consecutive outage failures
  (`StoreUnavailable` with ``outage`` set) open it; any success, or a
  refusal that shows the store answered, resets the count.
- **open**: calls fail at once with `CircuitOpen` (a 503 with Retry-After)
  for a random interval of `OPEN_SECONDS` to twice that, so the instances
  behind one load balancer do not all probe the store at the same moment.
- **half-open**: once the interval is over, the next call is the trial and
  goes through; calls meanwhile still fail fast. The trial's success closes
  the breaker; its failure opens it again for a new interval.

Each change between "available" (closed) and "not" (open) is logged once;
the trials of a long outage are logged at DEBUG only.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from sensorstats.core.errors import StoreUnavailable
from sensorstats.core.idempotency import IdempotencyKey
from sensorstats.core.stats import Stats
from sensorstats.store import Store
from sensorstats.store.calls import Ready, StartedCall, StartedRead, StartedWrite
from sensorstats.store.events import STORE_EVENTS

THRESHOLD = 5
OPEN_SECONDS = 1.0

_log = logging.getLogger(__name__)

T = TypeVar("T")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


class CircuitOpen(StoreUnavailable):
    """The breaker refused the call without asking the store."""


class BreakerStore:
    """`store`, failing fast after `threshold` consecutive outage failures."""

    def __init__(
        self,
        store: Store,
        *,
        threshold: int = THRESHOLD,
        open_seconds: float = OPEN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._store = store
        self._threshold = threshold
        self._open_seconds = open_seconds
        self._clock = clock
        self._jitter = jitter
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0  # consecutive outage failures, trials included
        self._last_failure = ""
        self._opened_at = 0.0
        self._retry_at = 0.0  # while open: when the next trial may start
        self._trial_running = False
        self.description = f"{store.description}, behind a circuit breaker"
        self.starts_calls = store.starts_calls

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open`` (open, with a trial call allowed now)."""
        with self._lock:
            if self._state == OPEN and (self._trial_running or self._clock() >= self._retry_at):
                return HALF_OPEN
            return self._state

    # --- the Store protocol ------------------------------------------------

    def apply(self, deltas: Mapping[str, Stats], key: IdempotencyKey | None = None) -> None:
        self._call(lambda: self._store.apply(deltas, key))

    def get(self, sensor: str) -> Stats:
        return self._call(lambda: self._store.get(sensor))

    # Calls start early only while the breaker is closed (else the caller's
    # own `get` or `apply` fails fast or makes the trial). A started call
    # was sent while closed: its outcome stands whatever the state when it
    # settles, and is counted like any other.

    def start_get(self, sensor: str, ready: Ready) -> StartedRead[Stats] | None:
        if self._state != CLOSED:
            return None
        return self._store.start_get(sensor, self._counted(ready))

    def start_apply(self, deltas: Mapping[str, Stats], ready: Ready) -> StartedWrite | None:
        if self._state != CLOSED:
            return None
        return self._store.start_apply(deltas, self._counted(ready))

    def _counted(self, ready: Ready) -> Ready:
        def settled(call: StartedCall[Any]) -> None:
            error = call.error
            if isinstance(error, StoreUnavailable) and error.outage:
                self._failed(error, trial=False)
            elif error is None or isinstance(error, StoreUnavailable):
                self._answered(trial=False)
            ready(call)

        return settled

    def delete(self, sensor: str) -> None:
        self._call(lambda: self._store.delete(sensor))

    def check(self) -> None:
        self._call(self._store.check)

    def close(self) -> None:
        self._store.close()

    # --- the state machine -------------------------------------------------

    def _call(self, call: Callable[[], T]) -> T:
        """`call`, if the breaker admits it, its outcome counted."""
        trial = self._admit()
        try:
            result = call()
        except StoreUnavailable as error:
            if not error.outage:
                self._answered(trial)
                raise
            note = self._failed(error, trial)
            if note is None:
                raise
            # The breaker is open (now, or again): say so.
            raise StoreUnavailable(f"{error.detail}; {note}", error.retry_after) from error
        except BaseException:
            # Not the store's availability (a bug, a full embedded store):
            # no evidence either way, so let the next call be the trial.
            if trial:
                with self._lock:
                    self._trial_running = False
            raise
        self._answered(trial)
        return result

    def _admit(self) -> bool:
        """Whether the call is the trial; raises CircuitOpen if it may not run."""
        with self._lock:
            if self._state == CLOSED:
                return False
            now = self._clock()
            if self._trial_running:
                raise CircuitOpen(
                    f"not sent to the store: one trial call is checking whether it is back "
                    f"(circuit breaker half-open); {self._summary()}",
                    retry_after=1,
                )
            if now < self._retry_at:
                wait = self._retry_at - now
                raise CircuitOpen(
                    f"not sent to the store: not calling it for another {wait:.1f} s "
                    f"(circuit breaker open); {self._summary()}",
                    retry_after=max(1, math.ceil(wait)),
                )
            self._trial_running = True
            _log.debug("circuit breaker half-open: trying the store once")
            return True

    def _failed(self, error: StoreUnavailable, trial: bool) -> str | None:
        """Count an outage; a note for the caller if the breaker (re)opened."""
        with self._lock:
            if trial:
                self._trial_running = False
            if self._state == CLOSED:
                self._failures += 1
                self._last_failure = error.detail
                if self._failures < self._threshold:
                    return None
                self._state = OPEN
                STORE_EVENTS.breaker_state(OPEN)
                self._opened_at = self._clock()
                interval = self._schedule_trial()
                _log.warning(
                    "circuit breaker open: %d consecutive store failures, the last: %s; "
                    "requests fail fast until a trial call succeeds",
                    self._failures,
                    error.detail,
                )
                return (
                    f"{self._failures} failures in a row: circuit breaker open, "
                    f"calls fail fast for {interval:.1f} s"
                )
            if trial:
                self._failures += 1
                self._last_failure = error.detail
                interval = self._schedule_trial()
                _log.debug("circuit breaker trial failed: %s", error.detail)
                return f"the trial call failed: circuit breaker open for another {interval:.1f} s"
            # A call that started before the breaker opened: stale news, but
            # its caller should know that the breaker is open now.
            return "circuit breaker open"

    def _answered(self, trial: bool) -> None:
        with self._lock:
            if trial:
                self._trial_running = False
            if self._state != CLOSED:
                # Any answer shows the store is back, the trial's or a late one's.
                _log.info(
                    "circuit breaker closed: the store answers again (it was open for %.1f s)",
                    self._clock() - self._opened_at,
                )
                self._state = CLOSED
                STORE_EVENTS.breaker_state(CLOSED)
            self._failures = 0

    def _schedule_trial(self) -> float:
        interval = self._open_seconds * (1.0 + self._jitter())
        self._retry_at = self._clock() + interval
        return interval

    def _summary(self) -> str:
        # Leads with what happened to *this* request: it was never sent, so a
        # client must not read the quoted failure as its own outcome.
        return (
            f"the store failed {self._failures} times in a row, most recently: {self._last_failure}"
        )
