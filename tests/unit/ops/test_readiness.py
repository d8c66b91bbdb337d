"""Readiness: a store check cached for its TTL, and draining that always wins.

Time is a fake clock the tests move by hand; the store is a fake that counts
its checks and fails on demand. Without `start`, checks happen on demand;
with it, a background thread keeps the answer fresh and `status` never waits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping

import pytest

from sensorstats.core.errors import StoreUnavailable
from sensorstats.core.idempotency import IdempotencyKey
from sensorstats.core.stats import EMPTY, Stats
from sensorstats.ops.readiness import CHECK_TTL_SECONDS, STALE_AFTER_SECONDS, Readiness


class Clock:
    """Monotonic time that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CheckedStore:
    """A store that counts `check` calls and is down while `down` is set."""

    description = "a store for readiness tests"
    starts_calls = False

    def __init__(self) -> None:
        self.checks = 0
        self.down = False

    def check(self) -> None:
        self.checks += 1
        if self.down:
            raise StoreUnavailable("etcd is unreachable")

    def apply(self, deltas: Mapping[str, Stats], key: IdempotencyKey | None = None) -> None:
        raise AssertionError("readiness must not write")

    def get(self, sensor: str) -> Stats:
        return EMPTY

    def delete(self, sensor: str) -> None:
        raise AssertionError("readiness must not delete")

    def close(self) -> None:
        return None


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> CheckedStore:
    return CheckedStore()


@pytest.fixture
def readiness(store, clock) -> Readiness:
    return Readiness(store, ttl=1.0, clock=clock)


def test_ready_while_the_store_answers(readiness, store):
    assert readiness.is_ready()
    assert store.checks == 1
    assert not readiness.draining


def test_not_ready_while_the_store_is_down(readiness, store):
    store.down = True
    assert not readiness.is_ready()


def test_one_check_serves_every_probe_within_the_ttl(readiness, store, clock):
    for _ in range(50):
        assert readiness.is_ready()
        clock.advance(0.01)
    assert store.checks == 1


def test_the_store_is_checked_again_after_the_ttl(readiness, store, clock):
    readiness.is_ready()
    clock.advance(0.999)
    readiness.is_ready()
    assert store.checks == 1
    clock.advance(0.001)
    readiness.is_ready()
    assert store.checks == 2


def test_an_outage_shows_once_the_cached_answer_expires(readiness, store, clock):
    assert readiness.is_ready()
    store.down = True
    assert readiness.is_ready()  # still the cached answer
    clock.advance(1.0)
    assert not readiness.is_ready()


def test_readiness_recovers_when_the_store_does(readiness, store, clock):
    store.down = True
    assert not readiness.is_ready()
    store.down = False
    clock.advance(1.0)
    assert readiness.is_ready()
    assert store.checks == 2


def test_a_failed_check_is_cached_too(readiness, store, clock):
    store.down = True
    for _ in range(10):
        assert not readiness.is_ready()
    assert store.checks == 1


def test_draining_wins_over_a_healthy_store(readiness, store, clock):
    assert readiness.is_ready()
    readiness.start_draining()
    assert readiness.draining
    assert not readiness.is_ready()
    clock.advance(10.0)
    assert not readiness.is_ready()


def test_draining_does_not_need_the_store(readiness, store):
    readiness.start_draining()
    assert not readiness.is_ready()
    assert store.checks == 0


def test_draining_is_for_good(readiness):
    readiness.start_draining()
    readiness.start_draining()
    assert readiness.draining
    assert not readiness.is_ready()


def test_the_default_ttl_keeps_answers_about_a_second(store, clock):
    # The HTTP contract ("Readiness and liveness", sensorstats/web/README.md):
    # the store is checked about once a second.
    assert 0 < CHECK_TTL_SECONDS <= 1.0
    readiness = Readiness(store, clock=clock)
    readiness.is_ready()
    clock.advance(CHECK_TTL_SECONDS)
    readiness.is_ready()
    assert store.checks == 2


class BrokenStore(CheckedStore):
    """A store whose check fails with something other than StoreUnavailable."""

    def check(self) -> None:
        self.checks += 1
        raise RuntimeError("a bug in the store")


def test_a_store_check_that_raises_anything_means_not_ready(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    readiness = Readiness(BrokenStore(), clock=clock)
    assert readiness.is_ready() is False
    assert "store check failed unexpectedly" in caplog.text


def test_the_reason_names_the_store_failure(readiness, store):
    store.down = True
    assert readiness.status() == (False, "the store is unavailable: etcd is unreachable")
    readiness.start_draining()
    assert readiness.status() == (False, "draining for shutdown")


# --- kept fresh in the background ---------------------------------------------------


class HangingStore(CheckedStore):
    """A store whose check blocks until released, as a frozen etcd would."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def check(self) -> None:
        self.checks += 1
        self.entered.set()
        self.release.wait(10)


def wait_for(condition, within: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.01)


@pytest.fixture
def started(store) -> Iterator[Readiness]:
    readiness = Readiness(store, ttl=0.05)
    readiness.start()
    yield readiness
    readiness.stop()


def test_started_readiness_checks_in_the_background(started, store):
    wait_for(lambda: store.checks >= 3)
    assert started.is_ready()
    store.down = True
    wait_for(lambda: not started.is_ready())
    store.down = False
    wait_for(started.is_ready)


def test_started_readiness_never_waits_for_the_store(clock):
    store = HangingStore()
    readiness = Readiness(store, ttl=1.0, clock=clock)
    readiness.start()
    try:
        assert store.entered.wait(5)
        started = time.monotonic()
        assert readiness.status() == (False, "the store has not been checked yet")
        assert time.monotonic() - started < 0.5  # not the 10 s the check hangs
    finally:
        store.release.set()
        readiness.stop()


def test_a_check_that_hangs_makes_the_answer_stale(clock):
    store = HangingStore()
    store.release.set()  # the first check answers
    readiness = Readiness(store, ttl=0.05, clock=clock)
    readiness.start()
    try:
        wait_for(lambda: store.checks >= 1 and readiness.is_ready())
        store.release.clear()  # from now on checks hang
        store.entered.clear()
        assert store.entered.wait(5)
        clock.advance(STALE_AFTER_SECONDS - 0.1)
        assert readiness.is_ready()  # the last answer is still recent enough
        clock.advance(1.0)
        ready, reason = readiness.status()
        assert not ready
        assert "has not completed for" in reason
    finally:
        store.release.set()
        readiness.stop()


def test_stop_ends_the_background_checks(store):
    readiness = Readiness(store, ttl=0.01)
    readiness.start()
    wait_for(lambda: store.checks >= 2)
    readiness.stop()
    checks = store.checks
    time.sleep(0.1)
    assert store.checks == checks
