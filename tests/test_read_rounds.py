"""Shared read rounds: a read serves only the readers that arrived before it was sent."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import pytest

from sensorstats.errors import StoreUnavailable
from sensorstats.store.read_rounds import ReadRounds


class Versioned:
    """A fake store: every key reads as the current version; reads can be held."""

    def __init__(self, hold: int = 0) -> None:
        self.version = 0
        self.rounds: list[list[str]] = []
        self.sent = threading.Semaphore(0)
        self.release = threading.Event()
        self.fail_with: Exception | None = None
        self._hold = hold

    def __call__(self, keys: Sequence[str]) -> Mapping[str, int]:
        version = self.version  # what etcd would read at the moment it is asked
        self.rounds.append(list(keys))
        self.sent.release()
        if len(self.rounds) <= self._hold:
            assert self.release.wait(10)
        if self.fail_with:
            raise self.fail_with
        return dict.fromkeys(keys, version)


@contextmanager
def readers(rounds: ReadRounds[str, int], *keys: str) -> Iterator[list[object]]:
    results: list[object] = [None] * len(keys)

    def run(index: int, key: str) -> None:
        try:
            results[index] = rounds.get(key)
        except Exception as error:
            results[index] = error

    threads = [threading.Thread(target=run, args=item) for item in enumerate(keys)]
    for thread in threads:
        thread.start()
    try:
        yield results
    finally:
        for thread in threads:
            thread.join(15)


def waiting(rounds: ReadRounds[str, int]) -> int:
    return sum(len(r.keys) for r in rounds._unsent)


def wait_until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def rounds_for(store: Versioned, **options: float) -> ReadRounds[str, int]:
    settings = {"max_keys": 128, "max_in_flight": 1, "timeout": 10.0}
    settings.update(options)
    return ReadRounds(store, **settings)  # type: ignore[arg-type]


def test_readers_waiting_behind_a_round_share_the_next_one() -> None:
    store = Versioned(hold=1)
    rounds = rounds_for(store)
    with readers(rounds, "first"):
        assert store.sent.acquire(timeout=5)
        with readers(rounds, *[f"k{i % 3}" for i in range(12)]) as results:
            wait_until(lambda: waiting(rounds) == 3)  # 12 readers, 3 distinct keys
            store.release.set()
    assert results == [0] * 12
    assert store.rounds[0] == ["first"]
    assert sorted(store.rounds[1]) == ["k0", "k1", "k2"]
    assert len(store.rounds) == 2


def test_a_read_already_sent_never_answers_a_reader_that_came_after_a_write() -> None:
    store = Versioned(hold=1)
    rounds = rounds_for(store, max_in_flight=2)
    with readers(rounds, "k") as early:
        assert store.sent.acquire(timeout=5)  # round 1 is out, reading version 0
        store.version = 1  # a write is acknowledged...
        with readers(rounds, "k") as late:  # ...then this GET arrives
            assert store.sent.acquire(timeout=5)
        store.release.set()
    assert early == [0]
    assert late == [1]  # a fresh round, not the one in flight
    assert store.rounds == [["k"], ["k"]]


def test_a_failed_round_fails_each_of_its_readers() -> None:
    store = Versioned(hold=1)
    rounds = rounds_for(store)
    store.fail_with = StoreUnavailable("etcd has no leader")
    with readers(rounds, "first"):
        assert store.sent.acquire(timeout=5)
        with readers(rounds, "a", "b", "a") as results:
            wait_until(lambda: waiting(rounds) == 2)
            store.release.set()
    assert all(isinstance(r, StoreUnavailable) for r in results)
    assert {r.detail for r in results if isinstance(r, StoreUnavailable)} == {"etcd has no leader"}


def test_a_reader_gives_up_at_its_deadline_and_a_round_nobody_waits_for_is_dropped() -> None:
    store = Versioned(hold=1)
    rounds = rounds_for(store, timeout=0.3)
    with readers(rounds, "first"):
        assert store.sent.acquire(timeout=5)
        with readers(rounds, "abandoned") as gave_up:
            pass
        assert isinstance(gave_up[0], StoreUnavailable)
        assert "did not answer the read within 0.3 s" in gave_up[0].detail
        store.release.set()
    assert rounds.get("next") == 0
    assert store.rounds[1:] == [["next"]]
    assert not rounds._unsent


def test_a_round_reads_at_most_max_keys() -> None:
    store = Versioned(hold=1)
    rounds = rounds_for(store, max_keys=4)
    with readers(rounds, "first"):
        assert store.sent.acquire(timeout=5)
        with readers(rounds, *[f"k{i}" for i in range(10)]) as results:
            wait_until(lambda: waiting(rounds) == 10)
            store.release.set()
    assert results == [0] * 10
    assert [len(r) for r in store.rounds[1:]] == [4, 4, 2]


def test_an_unexpected_error_reaches_the_readers_too() -> None:
    store = Versioned()
    store.fail_with = ValueError("bug")
    with pytest.raises(ValueError, match="bug"):
        rounds_for(store).get("k")


class FrozenClock:
    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


def test_under_load_a_lone_reader_waits_for_company_before_it_sends() -> None:
    store = Versioned()
    clock = FrozenClock()
    rounds = ReadRounds(store, max_keys=128, max_in_flight=1, timeout=10.0, gather=0.3, clock=clock)
    assert rounds.get("earlier") == 0  # the first arrival never waits
    with readers(rounds, "lone") as lone:
        wait_until(lambda: rounds._gathering.active)
        with readers(rounds, "company") as company:
            pass
    assert lone == [0]
    assert company == [0]
    assert store.rounds == [["earlier"], ["lone", "company"]]
