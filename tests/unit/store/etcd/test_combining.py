"""Group commit with real threads and scripted batches: who shares what, and who learns what."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from sensorstats.core.errors import StoreUnavailable
from sensorstats.core.idempotency import IdempotencyKey
from sensorstats.core.stats import Stats, Timestamp
from sensorstats.store.etcd.combining import PendingWrite, RunBatch, WakeUp, WriteCombiner
from sensorstats.store.etcd.keyed import KeyedRequest
from sensorstats.store.etcd.keys import marker_key, sensor_key
from sensorstats.store.etcd.txn import Marker, Seen, Update, write_txn
from tests.unit.store.etcd.test_txn import LARGEST

ONE = Stats.of([1], Timestamp.parse("2021-11-09T21:38:09Z"))


def write(*keys: str, marker: str, within: float = 10.0) -> PendingWrite:
    return PendingWrite([Update(k, ONE) for k in keys], marker, time.monotonic() + within)


class ScriptedBatches:
    """Records every batch; the first `hold` batches wait until released."""

    def __init__(self, hold: int = 0, decide: Callable[[PendingWrite], None] | None = None):
        self.batches: list[list[str]] = []
        self.started = threading.Semaphore(0)
        self.releases = [threading.Event() for _ in range(hold)]
        self.release = self.releases[0] if hold else threading.Event()
        self._hold = hold
        self._decide = decide or PendingWrite.succeed
        self._lock = threading.Lock()

    def __call__(self, batch: list[PendingWrite]) -> None:
        with self._lock:
            self.batches.append([w.marker for w in batch])
            number = len(self.batches)
        self.started.release()
        if number <= self._hold:
            assert self.releases[number - 1].wait(10)
        for pending in batch:
            self._decide(pending)


@contextmanager
def writers(combiner: WriteCombiner, *pending: PendingWrite) -> Iterator[dict[str, object]]:
    """Runs each write in its own thread; yields marker -> None or the exception raised."""
    outcomes: dict[str, object] = {}

    def run(p: PendingWrite) -> None:
        try:
            combiner.write(p)
            outcomes[p.marker] = None
        except Exception as error:
            outcomes[p.marker] = error

    threads = [threading.Thread(target=run, args=(p,)) for p in pending]
    for thread in threads:
        thread.start()
    try:
        yield outcomes
    finally:
        for thread in threads:
            thread.join(15)


def wait_until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def combiner_for(batches: RunBatch, **options: object) -> WriteCombiner:
    settings: dict[str, object] = {"max_ops": 128, "max_bytes": 1 << 20, "max_in_flight": 1}
    settings.update(options)
    return WriteCombiner(batches, **settings)  # type: ignore[arg-type]


@contextmanager
def committing(batches: RunBatch, **options: object) -> Iterator[WriteCombiner]:
    """`combiner_for`, closed afterwards, so that its committer thread (if any) stops."""
    combiner = combiner_for(batches, **options)
    try:
        yield combiner
    finally:
        combiner.close(5)


def refuse_bad(pending: PendingWrite) -> None:
    """Decides a write: refused if its marker starts with "bad", else applied."""
    if pending.marker.startswith("bad"):
        pending.fail(StoreUnavailable(f"{pending.marker} refused"))
    else:
        pending.succeed()


def queued(combiner: WriteCombiner) -> int:
    return len(combiner._queue)


def test_a_lone_write_is_its_own_batch() -> None:
    batches = ScriptedBatches()
    combiner_for(batches).write(write("k", marker="m1"))
    assert batches.batches == [["m1"]]


def test_writes_queued_behind_a_transaction_share_the_next_one() -> None:
    batches = ScriptedBatches(hold=1)
    combiner = combiner_for(batches)
    first = write("hot", marker="first")
    followers = [write("hot", marker=f"f{i}") for i in range(10)]
    with writers(combiner, first) as outcomes:
        assert batches.started.acquire(timeout=5)
        with writers(combiner, *followers) as more:
            wait_until(lambda: queued(combiner) == 10)
            batches.release.set()
        assert more == {f"f{i}": None for i in range(10)}
    assert outcomes == {"first": None}
    assert batches.batches[0] == ["first"]
    assert sorted(batches.batches[1]) == sorted(f"f{i}" for i in range(10))
    assert len(batches.batches) == 2


def test_each_write_learns_its_own_outcome() -> None:
    batches = ScriptedBatches(hold=1, decide=refuse_bad)
    combiner = combiner_for(batches)
    with writers(combiner, write("k", marker="first")):
        assert batches.started.acquire(timeout=5)
        pending = [write("k", marker=m) for m in ("good1", "bad1", "good2", "bad2")]
        with writers(combiner, *pending) as outcomes:
            wait_until(lambda: queued(combiner) == 4)
            batches.release.set()
    assert len(batches.batches) == 2
    assert outcomes["good1"] is None
    assert outcomes["good2"] is None
    for bad in ("bad1", "bad2"):
        error = outcomes[bad]
        assert isinstance(error, StoreUnavailable)
        assert error.detail == f"{bad} refused"


def test_disjoint_writes_run_side_by_side_and_a_busy_key_waits() -> None:
    batches = ScriptedBatches(hold=2)
    combiner = combiner_for(batches, max_in_flight=3)
    with writers(combiner, write("a", marker="a1"), write("b", marker="b1")):
        assert batches.started.acquire(timeout=5)
        assert batches.started.acquire(timeout=5)
        with writers(combiner, write("a", "c", marker="a2")):
            # "a" is in flight: the write waits although a slot is free.
            wait_until(lambda: queued(combiner) == 1)
            time.sleep(0.05)
            assert len(batches.batches) == 2
            for release in batches.releases:
                release.set()
    assert sorted(map(tuple, batches.batches)) == [("a1",), ("a2",), ("b1",)]
    assert batches.batches[-1] == ["a2"]


def test_a_batch_holds_no_more_operations_than_a_transaction_may() -> None:
    batches = ScriptedBatches(hold=1)
    combiner = combiner_for(batches, max_ops=8)
    with writers(combiner, write("x", marker="first")):
        assert batches.started.acquire(timeout=5)
        # Each write takes 2 keys and its marker: 3 operations.
        pending = [write(f"k{i}a", f"k{i}b", marker=f"w{i}") for i in range(5)]
        with writers(combiner, *pending) as outcomes:
            wait_until(lambda: queued(combiner) == 5)
            batches.release.set()
    assert all(outcome is None for outcome in outcomes.values())
    assert [len(batch) for batch in batches.batches[1:]] == [2, 2, 1]


def test_a_write_whose_deadline_passes_in_the_queue_is_never_sent() -> None:
    batches = ScriptedBatches(hold=1)
    combiner = combiner_for(batches)
    with writers(combiner, write("k", marker="first")):
        assert batches.started.acquire(timeout=5)
        with writers(combiner, write("k", marker="late", within=0.3)) as outcomes:
            wait_until(lambda: "late" in outcomes)
        batches.release.set()
    error = outcomes["late"]
    assert isinstance(error, StoreUnavailable)
    assert "was not applied" in error.detail
    assert all("late" not in batch for batch in batches.batches)
    assert queued(combiner) == 0


def test_a_write_whose_batch_outlives_its_deadline_reports_an_unknown_outcome() -> None:
    batches = ScriptedBatches(hold=2)
    combiner = combiner_for(batches, outcome_grace=0.1)
    with writers(combiner, write("k", marker="first")):
        assert batches.started.acquire(timeout=5)
        # The oldest queued write leads the next batch; the other only waits.
        with writers(combiner, write("k", marker="leader")):
            wait_until(lambda: queued(combiner) == 1)
            with writers(combiner, write("k", marker="stuck", within=1.0)) as outcomes:
                wait_until(lambda: queued(combiner) == 2)
                batches.releases[0].set()
                assert batches.started.acquire(timeout=5)
                wait_until(lambda: "stuck" in outcomes)
            batches.releases[1].set()
    assert batches.batches[1] == ["leader", "stuck"]
    error = outcomes["stuck"]
    assert isinstance(error, StoreUnavailable)
    assert "outcome is unknown" in error.detail


def test_a_crashing_batch_fails_every_write_with_an_unknown_outcome() -> None:
    def crash(pending: PendingWrite) -> None:
        raise RuntimeError("bug")

    batches = ScriptedBatches(hold=1, decide=crash)
    combiner = combiner_for(batches)
    with writers(combiner, write("k", marker="first")) as leader:
        assert batches.started.acquire(timeout=5)
        with writers(combiner, write("k", marker="f1"), write("k", marker="f2")) as outcomes:
            wait_until(lambda: queued(combiner) == 2)
            batches.release.set()
    assert isinstance(leader["first"], RuntimeError)
    # The second batch's leader sees the bug itself; every other write
    # learns that its outcome is unknown, and nobody hangs.
    errors = list(outcomes.values())
    assert sum(isinstance(e, RuntimeError) for e in errors) == 1
    unknown = [e for e in errors if isinstance(e, StoreUnavailable)]
    assert len(unknown) == 1
    assert "outcome is unknown" in unknown[0].detail
    assert queued(combiner) == 0
    assert combiner._in_flight == 0
    assert not combiner._busy


def test_a_batch_that_leaves_a_write_undecided_is_a_bug_not_a_hang() -> None:
    batches = ScriptedBatches(decide=lambda pending: None)
    combiner = combiner_for(batches)
    with pytest.raises(AssertionError, match="undecided"):
        combiner.write(write("k", marker="m"))


class FrozenClock:
    """A monotonic clock that moves only when told: arrivals are 'recent' or not at will."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


def test_under_load_a_lone_write_waits_for_company_before_it_sends() -> None:
    batches = ScriptedBatches()
    clock = FrozenClock()
    combiner = combiner_for(batches, gather=0.3, clock=clock)
    combiner.write(write("k", marker="earlier"))  # the first arrival never waits
    with writers(combiner, write("a", marker="lone")):
        wait_until(lambda: combiner._gathering.active)
        with writers(combiner, write("b", marker="company")) as outcomes:
            pass
    assert outcomes == {"company": None}
    assert batches.batches == [["earlier"], ["lone", "company"]]


def test_a_write_after_a_quiet_spell_does_not_wait() -> None:
    batches = ScriptedBatches(hold=2)
    clock = FrozenClock()
    combiner = combiner_for(batches, gather=30.0, clock=clock)
    with writers(combiner, write("k", marker="first")):
        assert batches.started.acquire(timeout=5)
        batches.releases[0].set()
    clock.now += 1.0  # nothing arrived for a second
    with writers(combiner, write("k", marker="later")):
        # Sent at once: a 30 s wait for company would fail this.
        assert batches.started.acquire(timeout=5)
        batches.releases[1].set()
    assert not combiner._gathering.active


# --- the wake-up call ----------------------------------------------------------------


def test_a_wake_up_call_made_before_the_wait_is_not_lost() -> None:
    wake = WakeUp()
    wake.call()
    wake.call()  # a second call before the wait adds nothing (and does not fail)
    started = time.monotonic()
    wake.wait(10)
    assert time.monotonic() - started < 5


def test_a_wait_without_a_call_ends_at_its_timeout_and_a_later_call_still_counts() -> None:
    wake = WakeUp()
    wake.wait(0.05)  # nobody called
    woken = threading.Event()

    def waiter() -> None:
        wake.wait(10)
        woken.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    wake.call()
    assert woken.wait(5)
    thread.join(5)


# --- writes ahead: queued without waiting, led by the committer thread ---------------


class Told:
    """The outcome a write ahead was told, once (`decided` called more than once is a bug)."""

    def __init__(self, pending: PendingWrite) -> None:
        self.pending = pending
        self.calls = 0
        self.event = threading.Event()
        self.thread: str | None = None

    def __call__(self) -> None:
        self.calls += 1
        self.thread = threading.current_thread().name
        self.event.set()

    def outcome(self, within: float = 5.0) -> Exception | None:
        assert self.event.wait(within), f"{self.pending.marker} was never told its outcome"
        assert self.calls == 1
        assert self.pending.done
        return self.pending.error


def ahead(combiner: WriteCombiner, pending: PendingWrite) -> Told:
    told = Told(pending)
    combiner.write_ahead(pending, told)
    return told


def test_a_write_ahead_returns_at_once_and_the_committer_sends_it() -> None:
    batches = ScriptedBatches(hold=1)
    with committing(batches) as combiner:
        told = ahead(combiner, write("k", marker="m1"))  # the batch is held: no wait here
        assert batches.started.acquire(timeout=5)
        assert not told.event.is_set()
        batches.release.set()
        assert told.outcome() is None
        assert told.thread == "etcd-writes"
        assert batches.batches == [["m1"]]


def test_writes_ahead_and_waiting_writes_share_the_next_transaction() -> None:
    batches = ScriptedBatches(hold=1)
    with committing(batches) as combiner:
        first = ahead(combiner, write("hot", marker="first"))
        assert batches.started.acquire(timeout=5)
        told = [ahead(combiner, write("hot", marker=f"a{i}")) for i in range(5)]
        with writers(combiner, *[write("hot", marker=f"w{i}") for i in range(5)]) as outcomes:
            wait_until(lambda: queued(combiner) == 10)
            batches.release.set()
        assert outcomes == {f"w{i}": None for i in range(5)}
        assert all(t.outcome() is None for t in [first, *told])
        assert len(batches.batches) == 2
        assert sorted(batches.batches[1]) == sorted([*(f"a{i}" for i in range(5)), *outcomes])


def test_each_write_ahead_is_told_its_own_outcome() -> None:
    batches = ScriptedBatches(hold=1, decide=refuse_bad)
    with committing(batches) as combiner:
        ahead(combiner, write("k", marker="first"))
        assert batches.started.acquire(timeout=5)
        told = {m: ahead(combiner, write("k", marker=m)) for m in ("good1", "bad1", "good2")}
        batches.release.set()
        assert told["good1"].outcome() is None
        assert told["good2"].outcome() is None
        error = told["bad1"].outcome()
        assert isinstance(error, StoreUnavailable)
        assert error.detail == "bad1 refused"
        assert len(batches.batches) == 2


def test_a_write_ahead_whose_deadline_passes_in_the_queue_is_never_sent() -> None:
    batches = ScriptedBatches(hold=1)
    with committing(batches) as combiner:
        # A writer's thread leads the batch held; the committer is free to
        # notice the deadline. (A batch it leads itself ends by its own
        # deadline, the earliest of its writes', before that of any write
        # queued after them.)
        with writers(combiner, write("k", marker="first")):
            assert batches.started.acquire(timeout=5)
            late = ahead(combiner, write("k", marker="late", within=0.3))
            error = late.outcome()
            assert isinstance(error, StoreUnavailable)
            assert "was not applied" in error.detail
            batches.release.set()
        # The committer goes on with what comes next.
        assert ahead(combiner, write("k", marker="next")).outcome() is None
        assert all("late" not in batch for batch in batches.batches)
        assert queued(combiner) == 0


def test_a_crashing_batch_tells_its_writes_ahead_the_outcome_is_unknown_and_the_committer_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    crashed: list[str] = []

    def crash_once(pending: PendingWrite) -> None:
        if not crashed:
            crashed.append(pending.marker)
            raise RuntimeError("bug")
        pending.succeed()

    batches = ScriptedBatches(decide=crash_once)
    with committing(batches) as combiner:
        error = ahead(combiner, write("k", marker="doomed")).outcome()
        assert isinstance(error, StoreUnavailable)
        assert "outcome is unknown" in error.detail
        assert ahead(combiner, write("k", marker="after")).outcome() is None
        assert "failed unexpectedly" in caplog.text
        assert combiner._in_flight == 0
        assert not combiner._busy


def test_closing_fails_the_writes_ahead_not_sent_and_refuses_new_ones() -> None:
    batches = ScriptedBatches(hold=1)
    combiner = combiner_for(batches)
    in_flight = ahead(combiner, write("k", marker="in-flight"))
    assert batches.started.acquire(timeout=5)
    queued_write = ahead(combiner, write("k", marker="queued"))
    closing = threading.Thread(target=combiner.close, args=(5,))
    closing.start()
    error = queued_write.outcome()
    assert isinstance(error, StoreUnavailable)
    assert "not applied" in error.detail
    batches.release.set()  # the batch in flight still ends, and is told
    closing.join(10)
    assert in_flight.outcome() is None
    assert combiner._committer is not None
    assert not combiner._committer.is_alive()
    after = ahead(combiner, write("k", marker="after"))
    assert after.event.is_set()  # told before `write_ahead` returned
    assert isinstance(after.outcome(), StoreUnavailable)
    assert batches.batches == [["in-flight"]]


def test_many_writers_of_both_kinds_are_each_told_once_and_keys_never_overlap() -> None:
    in_flight: set[str] = set()
    overlaps: list[str] = []
    guard = threading.Lock()

    def run(batch: list[PendingWrite]) -> None:
        keys = set().union(*(w.keys for w in batch))
        with guard:
            overlaps.extend(keys & in_flight)
            in_flight.update(keys)
        time.sleep(0.001)
        with guard:
            in_flight.difference_update(keys)
        for pending in batch:
            pending.succeed()

    with committing(run, max_ops=16, max_in_flight=2) as combiner:
        told: list[Told] = []
        told_lock = threading.Lock()

        def post_ahead(thread: int) -> None:
            for i in range(50):
                one = ahead(combiner, write(f"s{i % 3}", marker=f"a{thread}-{i}"))
                with told_lock:
                    told.append(one)

        sync = [write(f"s{i % 3}", marker=f"w{i}") for i in range(40)]
        threads = [threading.Thread(target=post_ahead, args=(t,)) for t in range(4)]
        with writers(combiner, *sync) as outcomes:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(15)
        assert outcomes == {w.marker: None for w in sync}
        assert len(told) == 200
        assert all(t.outcome(within=15) is None for t in told)
        assert overlaps == []


LONGEST_LEASE = (1 << 63) - 1
LONG_PREFIX = "/" + "p" * 1000 + "/"


@pytest.mark.parametrize("prefix", ["/sensorstats/", LONG_PREFIX], ids=["short", "long"])
@pytest.mark.parametrize("committed", [False, True], ids=["first", "later"])
def test_a_keyed_writes_size_bounds_the_transaction_it_sends(prefix: str, committed: bool) -> None:
    # One sensor, so that the record bound's slack hides nothing; every number at its
    # longest: the lease id, the revision a range guard compares.
    key = IdempotencyKey("client", "k", "0f" * 16)
    updates = [Update(sensor_key(prefix, "a"), LARGEST)]
    request = KeyedRequest.of(prefix, key, {"a": LARGEST}, [updates])
    request.legacy_created_before = LONGEST_LEASE
    if committed:
        request.committed()
    pending = PendingWrite(updates, request.key_marker, 0.0, keyed=request)
    sent = write_txn(
        {u.key: Seen(1 << 40, LARGEST) for u in updates},
        {u.key: LARGEST for u in updates},
        request.markers(updates, LONGEST_LEASE),
        request.guards(),
    )
    assert len(sent.SerializeToString()) <= pending.size


@pytest.mark.parametrize("prefix", ["/sensorstats/", LONG_PREFIX], ids=["short", "long"])
def test_an_unkeyed_writes_size_bounds_the_transaction_it_sends(prefix: str) -> None:
    updates = [Update(sensor_key(prefix, "a"), LARGEST)]
    pending = PendingWrite(updates, marker_key(prefix, "f" * 32, 12), 0.0)
    sent = write_txn(
        {u.key: Seen(1 << 40, LARGEST) for u in updates},
        {u.key: LARGEST for u in updates},
        [Marker(pending.marker, b"", LONGEST_LEASE)],
    )
    assert len(sent.SerializeToString()) <= pending.size
