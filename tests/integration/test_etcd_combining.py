"""Combined commits on a real etcd: exact counts, true outcomes per request, no starvation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from functools import reduce
from typing import Any

import pytest

from sensorstats.core.errors import StoreUnavailable
from sensorstats.core.stats import EMPTY, Stats
from sensorstats.store.etcd.client import EtcdClient
from sensorstats.store.etcd.store import EtcdStore
from tests.integration.test_etcd_store import (
    ScriptedClient,
    endpoints,
    lose_answer,
    make_store,
    measured,
    refuse,
)
from tests.support.etcd_process import EtcdProcess

__all__ = ["make_store"]  # the fixture, shared with test_etcd_store

pytestmark = pytest.mark.usefixtures("etcd_available")


def slow(seconds: float) -> Callable[[Callable[[], Any]], Any]:
    """A fault that delays a transaction, so that other writers queue behind it."""

    def delayed(call: Callable[[], Any]) -> Any:
        time.sleep(seconds)
        return call()

    return delayed


def run_threads(count: int, work: Callable[[int], None]) -> list[BaseException]:
    """Runs `work(i)` in `count` threads started together; returns what they raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(index: int) -> None:
        start.wait()
        try:
            work(index)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return errors


def merged(values: Sequence[float]) -> Stats:
    return reduce(Stats.merge, (measured(v) for v in values), EMPTY)


def test_many_threads_on_one_sensor_share_transactions_and_count_exactly(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess
) -> None:
    client = ScriptedClient(endpoints(etcd), then=slow(0.01))
    store = make_store(client)
    threads, posts = 16, 10

    def post(thread: int) -> None:
        for i in range(posts):
            store.apply({"hot": measured(thread * 1000 + i + 0.25)})

    assert run_threads(threads, post) == []
    expected = [t * 1000 + i + 0.25 for t in range(threads) for i in range(posts)]
    assert store.get("hot") == merged(expected)
    assert client.txn_calls <= threads * posts // 2  # requests shared transactions


def test_many_threads_on_overlapping_sensors_count_exactly(
    make_store: Callable[..., EtcdStore],
) -> None:
    store = make_store()
    sent: dict[str, list[float]] = {f"s{k}": [] for k in range(10)}
    lock = threading.Lock()

    def post(thread: int) -> None:
        for i in range(15):
            sensors = [f"s{(thread + i + j) % 10}" for j in range(3)]
            value = thread * 100 + i
            store.apply({sensor: measured(value) for sensor in sensors})
            with lock:
                for sensor in sensors:
                    sent[sensor].append(value)

    assert run_threads(12, post) == []
    for sensor, values in sent.items():
        assert store.get(sensor) == merged(values), sensor


def test_a_delete_racing_combined_posts_leaves_a_serial_order(
    make_store: Callable[..., EtcdStore],
) -> None:
    store = make_store()
    windows: dict[int, tuple[float, float]] = {}  # post -> (started, acknowledged)
    deleted: list[float] = []

    def work(thread: int) -> None:
        if thread == 0:
            time.sleep(0.02)
            started = time.monotonic()
            store.delete("racy")
            deleted.extend((started, time.monotonic()))
            return
        for i in range(4):
            post = (thread - 1) * 4 + i  # its value, 2**post, names it in the sum
            started = time.monotonic()
            store.apply({"racy": measured(2.0**post)})
            windows[post] = (started, time.monotonic())

    assert run_threads(9, work) == []
    final = store.get("racy")
    survivors = {p for p in windows if (final.mantissa << final.exponent) >> p & 1}
    assert final.count == len(survivors)
    assert final == merged([2.0**p for p in sorted(survivors)])
    delete_started, delete_acknowledged = deleted
    for post, (started, acknowledged) in windows.items():
        if acknowledged < delete_started:
            assert post not in survivors  # it came before the delete
        if started > delete_acknowledged:
            assert post in survivors  # it came after the delete


def queue_behind_a_slow_first_commit(
    store: EtcdStore, followers: int
) -> tuple[list[BaseException], list[str]]:
    """One post that commits slowly, then `followers` posts that queue behind it."""
    acknowledged: list[str] = []

    def post(index: int) -> None:
        if index:
            time.sleep(0.1)  # the first is in flight by now
        store.apply({"shared": measured(index)})
        acknowledged.append(f"p{index}")

    return run_threads(followers + 1, post), acknowledged


def test_a_lost_answer_of_a_combined_commit_counts_each_request_once(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess
) -> None:
    client = ScriptedClient(endpoints(etcd), faults=[slow(0.4), lose_answer])
    store = make_store(client)
    errors, acknowledged = queue_behind_a_slow_first_commit(store, followers=6)
    assert errors == []
    assert len(acknowledged) == 7
    # The first alone, the six together (answer lost), and one retry that
    # found all six markers.
    assert client.txn_calls == 3
    assert store.get("shared") == merged(range(7))


def test_a_refused_combined_commit_fails_exactly_the_requests_it_carried(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess
) -> None:
    client = ScriptedClient(endpoints(etcd), faults=[slow(0.4), refuse])
    store = make_store(client)
    errors, acknowledged = queue_behind_a_slow_first_commit(store, followers=6)
    assert acknowledged == ["p0"]
    assert len(errors) == 6
    assert all(isinstance(e, StoreUnavailable) and e.detail == "injected: refused" for e in errors)
    assert store.get("shared") == merged([0])


def test_a_request_whose_deadline_passes_in_the_queue_is_not_applied(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess
) -> None:
    client = ScriptedClient(endpoints(etcd), faults=[slow(1.5)])
    store = make_store(client, call_timeout=1.0, write_timeout=1.0)
    errors, acknowledged = queue_behind_a_slow_first_commit(store, followers=1)
    assert acknowledged == ["p0"]  # its call was sent in time, only answered late
    (error,) = errors
    assert isinstance(error, StoreUnavailable)
    assert "was not applied" in error.detail
    assert client.txn_calls == 1  # the late request was never sent
    assert store.get("shared") == merged([0])


def test_two_instances_contending_on_one_sensor_lose_no_request(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess
) -> None:
    instances = [make_store(EtcdClient(endpoints(etcd))) for _ in range(2)]

    def post(thread: int) -> None:
        for i in range(40):
            instances[thread % 2].apply({"contended": measured(thread + i / 64)})

    assert run_threads(16, post) == []
    expected = [t + i / 64 for t in range(16) for i in range(40)]
    for instance in instances:
        assert instance.get("contended") == merged(expected)


def test_contention_that_outlasts_the_deadline_is_not_an_outage(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess
) -> None:
    other = make_store()

    def lose_the_race(call: Callable[[], Any]) -> Any:
        other.apply({"raced": measured(1)})  # someone else always writes first
        return call()

    store = make_store(ScriptedClient(endpoints(etcd), then=lose_the_race), write_timeout=0.5)
    with pytest.raises(StoreUnavailable) as raised:
        store.apply({"raced": measured(2)})
    assert "was not applied" in raised.value.detail
    assert "contention" in raised.value.detail
    # A circuit breaker must not stop calling a healthy etcd because of it.
    assert raised.value.outage is False


# --- writes started on the server's event loop, their outcome taken by the resource --


def post_ahead(store: EtcdStore, deltas: dict[str, Stats]) -> BaseException | None:
    """What the server does for a POST whose write starts early: start, wait, take the outcome.

    Returns what the outcome raised, if anything; the write must be started.
    """
    settled = threading.Event()
    ahead = store.start_apply(deltas, lambda call: settled.set())
    assert ahead is not None
    assert settled.wait(30), "the started write never settled"
    try:
        ahead.result()
    except BaseException as error:
        return error
    return None


def test_writes_ahead_and_waiting_writes_on_one_sensor_count_exactly(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess
) -> None:
    client = ScriptedClient(endpoints(etcd), then=slow(0.01))
    store = make_store(client)
    threads, posts = 12, 10

    def post(thread: int) -> None:
        for i in range(posts):
            deltas = {"hot": measured(thread * 1000 + i + 0.5)}
            if thread % 3:
                assert post_ahead(store, deltas) is None
            else:
                store.apply(deltas)

    assert run_threads(threads, post) == []
    expected = [t * 1000 + i + 0.5 for t in range(threads) for i in range(posts)]
    assert store.get("hot") == merged(expected)
    assert client.txn_calls <= threads * posts // 2  # requests shared transactions


def test_a_lost_answer_of_a_commit_of_writes_ahead_counts_each_once(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess
) -> None:
    client = ScriptedClient(endpoints(etcd), faults=[slow(0.4), lose_answer])
    store = make_store(client)

    def post(index: int) -> None:
        if index:
            time.sleep(0.1)  # the first is in flight by now
        error = post_ahead(store, {"shared": measured(index)})
        if error is not None:
            raise error

    assert run_threads(7, post) == []
    assert client.txn_calls == 3  # the first, the six together (answer lost), the retry
    assert store.get("shared") == merged(range(7))


def test_a_refused_commit_of_writes_ahead_fails_exactly_their_requests(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess
) -> None:
    client = ScriptedClient(endpoints(etcd), faults=[slow(0.4), refuse])
    store = make_store(client)
    errors: dict[int, BaseException | None] = {}

    def post(index: int) -> None:
        if index:
            time.sleep(0.1)
        errors[index] = post_ahead(store, {"shared": measured(index)})

    assert run_threads(5, post) == []
    assert errors[0] is None
    for index in range(1, 5):
        error = errors[index]
        assert isinstance(error, StoreUnavailable)
        assert error.detail == "injected: refused"
    assert store.get("shared") == merged([0])


def test_a_started_write_is_one_transaction_and_taking_its_outcome_writes_nothing(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess
) -> None:
    client = ScriptedClient(endpoints(etcd))
    store = make_store(client)
    assert post_ahead(store, {"mine": measured(1.0)}) is None
    assert client.txn_calls == 1
    assert store.get("mine") == measured(1.0)


def test_a_batch_of_several_transactions_is_not_written_ahead(
    make_store: Callable[..., EtcdStore],
) -> None:
    store = make_store(max_txn_ops=4)  # three sensors and the marker per transaction
    assert store.start_apply({f"s{i}": measured(i) for i in range(4)}, lambda call: None) is None
    assert post_ahead(store, {f"s{i}": measured(i) for i in range(3)}) is None
    assert [store.get(f"s{i}") for i in range(3)] == [measured(i) for i in range(3)]


def test_a_write_ahead_on_a_closed_store_fails_at_once_as_not_applied(
    make_store: Callable[..., EtcdStore],
) -> None:
    store = make_store()
    store.close()
    settled: list[object] = []
    ahead = store.start_apply({"s": measured(1.0)}, settled.append)
    assert ahead is not None
    assert settled == [ahead]
    with pytest.raises(StoreUnavailable, match="not applied"):
        ahead.result()


class InterferingClient(EtcdClient):
    """Lets `interfere()` write first before each of the next `times` write transactions."""

    def __init__(self, member: EtcdProcess, interfere: Callable[[], None], times: int) -> None:
        super().__init__(endpoints(member))
        self.kinds: list[str] = []  # "write" or "read", in order
        self._interfere = interfere
        self._left = times

    def txn(self, request: Any, timeout: float) -> Any:
        writes = any(op.HasField("request_put") for op in request.success)
        self.kinds.append("write" if writes else "read")
        if writes and self._left:
            self._left -= 1
            self._interfere()
        return super().txn(request, timeout)


def test_conflicts_are_retried_at_once_three_times_then_after_a_pause_and_a_fresh_read(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess
) -> None:
    other = make_store()
    client = InterferingClient(etcd, lambda: other.apply({"raced": measured(1.0)}), times=4)
    store = make_store(client)
    store.apply({"raced": measured(2.0)})
    # Four refusals: three retried at once with the values each refusal read,
    # the fourth after a back-off and a read of the values as they are now.
    assert client.kinds == ["write"] * 4 + ["read", "write"]
    assert store.get("raced") == merged([1.0] * 4 + [2.0])
