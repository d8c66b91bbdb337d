"""The circuit breaker: opens after consecutive outages, fails fast, one trial closes it.

The store is a fake that fails on demand and counts its calls; time is a fake
clock; the jitter is fixed per test. The end-to-end version, with a real etcd
paused and resumed, is in test_outage.py.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import pytest

from sensorstats.core.errors import StoreFull, StoreUnavailable
from sensorstats.core.idempotency import IdempotencyKey
from sensorstats.core.stats import EMPTY, Stats
from sensorstats.store.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    THRESHOLD,
    BreakerStore,
    CircuitOpen,
)
from sensorstats.store.calls import Ready, StartedCall, StartedRead, StartedWrite

DOWN = StoreUnavailable("etcd did not answer within 2 s (deadline exceeded)", retry_after=2)
CONTENTION = StoreUnavailable("other writers changed the same sensors", outage=False)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FlakyStore:
    """Raises `failure` from every call while it is set; counts the calls that reach it."""

    description = "a flaky store"
    starts_calls = True

    def __init__(self) -> None:
        self.failure: Exception | None = None
        self.calls = 0
        self.closed = False
        self.reads_ahead: list[str] = []
        self.writes_ahead: list[Mapping[str, Stats]] = []

    def _call(self) -> None:
        self.calls += 1
        if self.failure is not None:
            raise self.failure

    def apply(self, deltas: Mapping[str, Stats], key: IdempotencyKey | None = None) -> None:
        self._call()

    def get(self, sensor: str) -> Stats:
        self._call()
        return EMPTY

    def delete(self, sensor: str) -> None:
        self._call()

    def start_get(self, sensor: str, ready: Ready) -> StartedRead[Any] | None:
        self.reads_ahead.append(sensor)
        return StartedRead(sensor, sensor, deadline=0.0, ready=ready)

    def start_apply(self, deltas: Mapping[str, Stats], ready: Ready) -> StartedWrite | None:
        self.writes_ahead.append(deltas)
        return StartedWrite(deltas, deadline=0.0, ready=ready)

    def check(self) -> None:
        self._call()

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def inner() -> FlakyStore:
    return FlakyStore()


@pytest.fixture
def breaker(inner: FlakyStore, clock: Clock) -> BreakerStore:
    # jitter 0.5: the open interval is 1.5 x 1 s.
    return BreakerStore(inner, threshold=3, open_seconds=1.0, clock=clock, jitter=lambda: 0.5)


def fail(breaker: BreakerStore, times: int) -> None:
    for _ in range(times):
        with pytest.raises(StoreUnavailable):
            breaker.get("s")


def test_calls_go_through_while_closed(breaker, inner):
    assert breaker.get("s") is EMPTY
    breaker.apply({})
    breaker.delete("s")
    breaker.check()
    assert inner.calls == 4
    assert breaker.state == CLOSED


def test_reads_are_started_early_only_while_closed(breaker, inner, clock):
    assert breaker.start_get("s", lambda read: None) is not None
    inner.failure = DOWN
    fail(breaker, 3)
    # Open, then half-open: the GET itself fails fast or makes the trial.
    assert breaker.start_get("s", lambda read: None) is None
    clock.now += 2.0
    assert breaker.state == HALF_OPEN
    assert breaker.start_get("s", lambda read: None) is None
    assert inner.reads_ahead == ["s"]


def test_writes_are_started_early_only_while_closed(breaker, inner, clock):
    assert breaker.start_apply({}, lambda write: None) is not None
    inner.failure = DOWN
    fail(breaker, 3)
    assert breaker.start_apply({}, lambda write: None) is None
    clock.now += 2.0
    assert breaker.state == HALF_OPEN
    assert breaker.start_apply({}, lambda write: None) is None
    assert len(inner.writes_ahead) == 1


def test_the_outcome_of_a_started_write_stands_and_counts_once_the_breaker_is_open(breaker, inner):
    taken: list[StartedCall[Any]] = []
    written = breaker.start_apply({}, taken.append)
    assert written is not None
    inner.failure = DOWN
    fail(breaker, 3)  # other requests open it meanwhile
    assert breaker.state == OPEN
    written.settle(None, None)  # sent while closed: its request gets its outcome
    assert taken == [written]
    written.result()
    assert breaker.state == CLOSED  # and it counts, as any answer does


def test_a_started_call_failing_for_an_outage_counts_towards_opening(breaker, inner):
    inner.failure = DOWN
    fail(breaker, 2)
    read = breaker.start_get("s", lambda call: None)
    assert read is not None
    read.settle(None, DOWN)
    assert breaker.state == OPEN


def test_it_opens_after_the_threshold_of_consecutive_outages(breaker, inner):
    inner.failure = DOWN
    fail(breaker, 2)
    assert breaker.state == CLOSED
    fail(breaker, 1)
    assert breaker.state == OPEN
    assert inner.calls == 3


def test_while_open_calls_fail_fast_with_retry_after(breaker, inner, clock):
    inner.failure = DOWN
    fail(breaker, 3)
    clock.now += 0.2
    for call in (lambda: breaker.apply({}), lambda: breaker.get("s"), breaker.check):
        with pytest.raises(CircuitOpen) as refused:
            call()
        assert refused.value.retry_after == 2  # 1.3 s left, rounded up
        assert "circuit breaker open" in refused.value.detail
        assert "deadline exceeded" in refused.value.detail  # what went wrong
    assert inner.calls == 3  # none of them reached the store


def test_a_success_resets_the_count(breaker, inner):
    inner.failure = DOWN
    fail(breaker, 2)
    inner.failure = None
    breaker.get("s")
    inner.failure = DOWN
    fail(breaker, 2)
    assert breaker.state == CLOSED


def test_refusals_that_are_not_outages_do_not_count(breaker, inner):
    inner.failure = CONTENTION
    fail(breaker, 10)
    assert breaker.state == CLOSED
    assert inner.calls == 10


def test_other_errors_pass_through_and_do_not_count(breaker, inner):
    inner.failure = StoreFull("full", limit=1)
    for _ in range(5):
        with pytest.raises(StoreFull):
            breaker.apply({})
    assert breaker.state == CLOSED


def test_after_the_interval_one_trial_call_closes_it(breaker, inner, clock):
    inner.failure = DOWN
    fail(breaker, 3)
    clock.now += 1.5
    assert breaker.state == HALF_OPEN
    inner.failure = None
    assert breaker.get("s") is EMPTY
    assert breaker.state == CLOSED
    assert inner.calls == 4
    breaker.get("s")
    assert inner.calls == 5


def test_a_failed_trial_opens_it_again_for_a_new_interval(breaker, inner, clock):
    inner.failure = DOWN
    fail(breaker, 3)
    clock.now += 1.5
    fail(breaker, 1)  # the trial
    assert inner.calls == 4
    assert breaker.state == OPEN
    clock.now += 1.4
    with pytest.raises(CircuitOpen):
        breaker.get("s")
    assert inner.calls == 4
    clock.now += 0.1
    fail(breaker, 1)  # the next trial
    assert inner.calls == 5


def test_only_one_trial_runs_at_a_time(inner, clock):
    entered, release = threading.Event(), threading.Event()

    class SlowStore(FlakyStore):
        def check(self) -> None:
            self.calls += 1
            entered.set()
            release.wait(10)

    slow = SlowStore()
    breaker = BreakerStore(slow, threshold=1, clock=clock, jitter=lambda: 0.0)
    slow.failure = DOWN
    fail(breaker, 1)
    slow.failure = None
    clock.now += 1.0
    trial = threading.Thread(target=breaker.check)
    trial.start()
    try:
        assert entered.wait(10)
        with pytest.raises(CircuitOpen) as refused:
            breaker.get("s")
        assert "half-open" in refused.value.detail
        assert refused.value.retry_after == 1
    finally:
        release.set()
        trial.join(10)
    assert breaker.state == CLOSED
    assert slow.calls == 2  # the failure and the trial; the refused call never reached it


def test_a_trial_ending_in_another_error_lets_the_next_call_try(breaker, inner, clock):
    inner.failure = DOWN
    fail(breaker, 3)
    clock.now += 1.5
    inner.failure = RuntimeError("a bug")
    with pytest.raises(RuntimeError):
        breaker.get("s")
    inner.failure = None
    breaker.get("s")  # not refused as "a trial is running"
    assert breaker.state == CLOSED


def test_the_interval_is_jittered_between_one_and_two_intervals(inner, clock):
    for jitter, open_for in ((0.0, 1.0), (0.999, 1.999)):
        breaker = BreakerStore(inner, threshold=1, clock=clock, jitter=lambda j=jitter: j)
        inner.failure = DOWN
        fail(breaker, 1)
        clock.now += open_for - 0.01
        assert breaker.state == OPEN
        clock.now += 0.01
        assert breaker.state == HALF_OPEN


def test_the_defaults(inner, clock):
    breaker = BreakerStore(inner, clock=clock)
    inner.failure = DOWN
    fail(breaker, THRESHOLD - 1)
    assert breaker.state == CLOSED
    fail(breaker, 1)
    assert breaker.state == OPEN


def test_each_change_is_logged_once(breaker, inner, clock, caplog):
    caplog.set_level(logging.INFO, logger="sensorstats.store.breaker")
    inner.failure = DOWN
    fail(breaker, 3)
    for _ in range(5):  # fast failures and failed trials: no new lines
        fail(breaker, 10)
        clock.now += 2.0
        fail(breaker, 1)
    inner.failure = None
    clock.now += 2.0
    breaker.get("s")
    breaker.get("s")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 2
    assert lines[0].startswith("circuit breaker open: 3 consecutive store failures")
    assert "deadline exceeded" in lines[0]
    assert lines[1].startswith("circuit breaker closed: the store answers again")


def test_it_describes_and_closes_the_store_it_wraps(breaker, inner):
    assert breaker.description == "a flaky store, behind a circuit breaker"
    breaker.close()
    assert inner.closed


def test_a_fast_failure_says_first_that_the_request_was_not_sent(breaker, inner):
    inner.failure = StoreUnavailable("the outcome is unknown: etcd did not confirm in time")
    fail(breaker, 3)
    with pytest.raises(CircuitOpen) as refused:
        breaker.apply({})
    # A client reading the detail learns its own outcome first, not the quoted one.
    assert refused.value.detail.startswith("not sent to the store")
