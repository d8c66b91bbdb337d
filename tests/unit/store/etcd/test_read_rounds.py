"""Shared read rounds: a read serves only the readers that arrived before it was sent."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import pytest

from sensorstats.core.errors import StoreUnavailable
from sensorstats.store.calls import StartedRead
from sensorstats.store.etcd.read_rounds import ReadRounds


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
def readers(rounds: ReadRounds[int], *keys: str) -> Iterator[list[object]]:
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


def waiting(rounds: ReadRounds[int]) -> int:
    return sum(len(r.keys) for r in rounds._unsent)


def wait_until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


@pytest.fixture
def made() -> Iterator[list[ReadRounds[int]]]:
    """Every ReadRounds a test makes, closed after it (their sender threads stop)."""
    made: list[ReadRounds[int]] = []
    yield made
    for rounds in made:
        rounds.close()


@pytest.fixture
def rounds_for(made: list[ReadRounds[int]]) -> Callable[..., ReadRounds[int]]:
    def make(store: Versioned, **options: float) -> ReadRounds[int]:
        settings = {"max_keys": 128, "timeout": 10.0}
        settings.update(options)
        rounds: ReadRounds[int] = ReadRounds(store, **settings)  # type: ignore[arg-type]
        made.append(rounds)
        return rounds

    return make


class Settled:
    """Collects the reads ahead as their `ready` is called, in order."""

    def __init__(self) -> None:
        self.reads: list[StartedRead[int]] = []
        self.event = threading.Event()

    def __call__(self, read: StartedRead[int]) -> None:
        self.reads.append(read)
        self.event.set()

    def wait_for(self, count: int) -> None:
        wait_until(lambda: len(self.reads) >= count)


def test_readers_waiting_behind_a_round_share_the_next_one(
    rounds_for: Callable[..., ReadRounds[int]],
) -> None:
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


def test_a_read_already_sent_never_answers_a_reader_that_came_after_a_write(
    rounds_for: Callable[..., ReadRounds[int]],
) -> None:
    store = Versioned(hold=1)
    rounds = rounds_for(store)
    with readers(rounds, "k") as early:
        assert store.sent.acquire(timeout=5)  # round 1 is out, reading version 0
        store.version = 1  # a write is acknowledged...
        with readers(rounds, "k") as late:  # ...then this GET arrives
            wait_until(lambda: waiting(rounds) == 1)
            store.release.set()
    assert early == [0]
    assert late == [1]  # a fresh round, not the one in flight
    assert store.rounds == [["k"], ["k"]]


def test_a_failed_round_fails_each_of_its_readers(
    rounds_for: Callable[..., ReadRounds[int]],
) -> None:
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


def test_a_reader_gives_up_at_its_deadline_and_a_round_nobody_waits_for_is_dropped(
    rounds_for: Callable[..., ReadRounds[int]],
) -> None:
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


def test_a_round_reads_at_most_max_keys(rounds_for: Callable[..., ReadRounds[int]]) -> None:
    store = Versioned(hold=1)
    rounds = rounds_for(store, max_keys=4)
    with readers(rounds, "first"):
        assert store.sent.acquire(timeout=5)
        with readers(rounds, *[f"k{i}" for i in range(10)]) as results:
            wait_until(lambda: waiting(rounds) == 10)
            store.release.set()
    assert results == [0] * 10
    assert [len(r) for r in store.rounds[1:]] == [4, 4, 2]


def test_an_unexpected_error_reaches_the_readers_too(
    rounds_for: Callable[..., ReadRounds[int]],
) -> None:
    store = Versioned()
    store.fail_with = ValueError("bug")
    with pytest.raises(ValueError, match="bug"):
        rounds_for(store).get("k")


# --- reads ahead: settled by the sender, nobody waiting ------------------------------


def test_a_read_ahead_is_settled_by_a_round_sent_after_it_joined(
    rounds_for: Callable[..., ReadRounds[int]],
) -> None:
    store = Versioned(hold=1)
    rounds = rounds_for(store)
    settled = Settled()
    with readers(rounds, "k") as early:
        assert store.sent.acquire(timeout=5)  # round 1 is out, reading version 0
        store.version = 1  # a write is acknowledged, then the GET arrives
        read = rounds.start_read("k", "k", settled, _same)
        assert not settled.reads  # no answer yet: its round is not even sent
        store.release.set()
        settled.wait_for(1)
    assert early == [0]
    assert settled.reads == [read]
    assert read.result() == 1
    assert store.rounds == [["k"], ["k"]]


def test_reads_ahead_and_waiting_threads_share_a_round(
    rounds_for: Callable[..., ReadRounds[int]],
) -> None:
    store = Versioned(hold=1)
    rounds = rounds_for(store)
    settled = Settled()
    with readers(rounds, "first"):
        assert store.sent.acquire(timeout=5)
        reads = [rounds.start_read(key, key, settled, _same) for key in ("a", "b", "a")]
        with readers(rounds, "b", "c") as waited:
            wait_until(lambda: waiting(rounds) == 3)
            store.release.set()
        settled.wait_for(3)
    assert waited == [0, 0]
    assert [read.result() for read in reads] == [0, 0, 0]
    assert sorted(store.rounds[1]) == ["a", "b", "c"]
    assert len(store.rounds) == 2


def test_a_failed_round_settles_its_reads_ahead_with_the_failure(
    rounds_for: Callable[..., ReadRounds[int]],
) -> None:
    store = Versioned()
    store.fail_with = StoreUnavailable("etcd has no leader")
    settled = Settled()
    read = rounds_for(store).start_read("k", "k", settled, _same)
    settled.wait_for(1)
    with pytest.raises(StoreUnavailable, match="etcd has no leader"):
        read.result()


def test_a_read_ahead_not_sent_by_its_deadline_fails_unsent(
    rounds_for: Callable[..., ReadRounds[int]],
) -> None:
    store = Versioned(hold=1)
    rounds = rounds_for(store, timeout=0.3)
    settled = Settled()
    with readers(rounds, "first"):
        assert store.sent.acquire(timeout=5)
        read = rounds.start_read("late", "late", settled, _same)
        time.sleep(0.5)  # the round in flight outlasts the read's deadline
        store.release.set()
        settled.wait_for(1)
    with pytest.raises(StoreUnavailable, match=r"did not answer the read within 0\.3 s"):
        read.result()
    assert store.rounds == [["first"]]  # nobody left to send it for


def test_a_read_ahead_used_before_it_settles_is_a_bug(
    rounds_for: Callable[..., ReadRounds[int]],
) -> None:
    store = Versioned(hold=1)
    rounds = rounds_for(store)
    read = rounds.start_read("k", "k", Settled(), _same)
    assert store.sent.acquire(timeout=5)
    with pytest.raises(RuntimeError, match="before it settled"):
        read.result()
    store.release.set()


def test_a_failing_ready_callback_does_not_stop_the_others(
    rounds_for: Callable[..., ReadRounds[int]],
) -> None:
    store = Versioned(hold=1)
    rounds = rounds_for(store)
    settled = Settled()

    def broken(read: StartedRead[int]) -> None:
        raise OSError("the connection is gone")

    with readers(rounds, "first"):
        assert store.sent.acquire(timeout=5)
        rounds.start_read("a", "a", broken, _same)
        rounds.start_read("b", "b", settled, _same)
        store.release.set()
        settled.wait_for(1)
    assert settled.reads[0].result() == 0
    assert rounds.get("c") == 0  # the sender is still there


def test_closing_fails_what_was_not_sent_and_every_later_read(
    rounds_for: Callable[..., ReadRounds[int]],
) -> None:
    store = Versioned(hold=1)
    rounds = rounds_for(store)
    settled = Settled()
    with readers(rounds, "first") as first:
        assert store.sent.acquire(timeout=5)
        unsent = rounds.start_read("unsent", "unsent", settled, _same)
        closing = threading.Thread(target=rounds.close)
        closing.start()
        store.release.set()
        closing.join(5)
        settled.wait_for(1)
    assert first == [0]  # the round in flight is answered
    with pytest.raises(StoreUnavailable, match="closed"):
        unsent.result()
    after = rounds.start_read(
        "after", "after", settled, _same
    )  # settled at once, `ready` called here
    assert settled.reads[-1] is after
    with pytest.raises(StoreUnavailable, match="closed"):
        after.result()
    with pytest.raises(StoreUnavailable, match="closed"):
        rounds.get("after")
    assert store.rounds == [["first"]]


def _same(value: int) -> int:
    return value
