"""The embedded store's bound: at most `max_sensors` sensors, batches refused whole.

The rest of its behaviour is the contract every store meets (test_contract.py).
"""

from __future__ import annotations

import threading

import pytest

from sensorstats.core.errors import StoreFull
from sensorstats.core.stats import Stats, Timestamp
from sensorstats.store.memory import MemoryStore

WHEN = Timestamp.parse("2021-11-09T21:38:09+01:00")


def one(value: float = 1.0) -> Stats:
    return Stats.of([value], WHEN)


def test_without_a_limit_any_number_of_sensors_is_kept():
    store = MemoryStore()
    store.apply({f"s{i}": one() for i in range(1000)})
    assert store.get("s999").count == 1
    assert "no limit" in store.description


def test_up_to_the_limit_new_sensors_are_kept():
    store = MemoryStore(max_sensors=3)
    store.apply({"a": one(), "b": one()})
    store.apply({"c": one()})
    assert [store.get(s).count for s in "abc"] == [1, 1, 1]
    assert "at most 3 sensors" in store.description


def test_a_batch_past_the_limit_is_refused_whole():
    store = MemoryStore(max_sensors=3)
    store.apply({"a": one(), "b": one()})
    with pytest.raises(StoreFull) as refused:
        store.apply({"a": one(5), "c": one(), "d": one()})
    assert refused.value.limit == 3
    assert "holds 2" in refused.value.detail
    assert "would add 2 new" in refused.value.detail
    assert store.get("a").count == 1  # not even the known sensor was updated
    assert store.get("c").count == 0


def test_known_sensors_accept_measurements_when_full():
    store = MemoryStore(max_sensors=1)
    store.apply({"a": one()})
    store.apply({"a": one(3)})
    assert store.get("a").count == 2
    assert store.get("a").mean == 2.0


def test_a_delete_makes_room():
    store = MemoryStore(max_sensors=1)
    store.apply({"a": one()})
    with pytest.raises(StoreFull):
        store.apply({"b": one()})
    store.delete("a")
    store.apply({"b": one()})
    assert store.get("b").count == 1


def test_concurrent_writers_never_exceed_the_limit():
    store = MemoryStore(max_sensors=100)
    refused = []
    start = threading.Barrier(8)

    def write(worker: int) -> None:
        start.wait()
        for i in range(50):
            try:
                store.apply({f"w{worker}-{i}": one()})
            except StoreFull:
                refused.append((worker, i))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    kept = sum(store.get(f"w{w}-{i}").count for w in range(8) for i in range(50))
    assert kept == 100
    assert len(refused) == 8 * 50 - 100
