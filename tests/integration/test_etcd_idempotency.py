"""Idempotency keys on a real etcd: once per key, across instances, resumable, forgotten in time."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from sensorstats.core.errors import StoreUnavailable
from sensorstats.core.idempotency import IdempotencyKey, IdempotencyKeyReused, fingerprint
from sensorstats.core.stats import Stats
from sensorstats.store.etcd.client import EtcdClient
from sensorstats.store.etcd.store import EtcdStore
from tests.integration.test_etcd_combining import merged, run_threads
from tests.integration.test_etcd_store import (
    ScriptedClient,
    endpoints,
    make_store,
    measured,
    raw_client,
    refuse,
)
from tests.support.etcd_process import EtcdProcess

__all__ = ["make_store"]  # the fixture, shared with test_etcd_store

pytestmark = pytest.mark.usefixtures("etcd_available")


def keyed(key: str, deltas: dict[str, Stats], scope: str = "") -> IdempotencyKey:
    return IdempotencyKey(scope, key, fingerprint(deltas))


def test_a_replay_through_another_instance_counts_once(
    make_store: Callable[..., EtcdStore],
) -> None:
    first, second = make_store(), make_store()
    batch = {"a": measured(1), "b": measured(2)}
    first.apply(batch, keyed("k1", batch))
    second.apply(batch, keyed("k1", batch))
    first.apply(batch, keyed("k1", batch))
    assert second.get("a") == measured(1)
    assert first.get("b") == measured(2)


def test_the_same_key_with_another_payload_is_refused_and_stores_nothing(
    make_store: Callable[..., EtcdStore],
) -> None:
    first, second = make_store(), make_store()
    batch, other = {"a": measured(1)}, {"a": measured(5), "c": measured(6)}
    first.apply(batch, keyed("k1", batch))
    with pytest.raises(IdempotencyKeyReused, match="different payload"):
        second.apply(other, keyed("k1", other))
    assert first.get("a") == measured(1)
    assert first.get("c").count == 0


def test_keys_are_scoped_by_client(make_store: Callable[..., EtcdStore]) -> None:
    store = make_store()
    batch = {"a": measured(1)}
    store.apply(batch, keyed("k1", batch, scope="client-1"))
    store.apply(batch, keyed("k1", batch, scope="client-2"))
    assert store.get("a") == measured(1, 1)


def test_concurrent_duplicates_through_two_instances_count_once(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess
) -> None:
    instances = [make_store(EtcdClient(endpoints(etcd))) for _ in range(2)]
    batch = {"dup": measured(7), "dup2": measured(8)}

    def post(thread: int) -> None:
        instances[thread % 2].apply(batch, keyed("same", batch))

    assert run_threads(8, post) == []
    assert instances[0].get("dup") == measured(7)
    assert instances[1].get("dup2") == measured(8)


def test_a_large_batch_that_failed_midway_is_completed_by_its_retry(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess
) -> None:
    client = ScriptedClient(endpoints(etcd), faults=[None, refuse])
    store = make_store(client, max_txn_ops=8)
    batch = {f"s{i:02d}": measured(i) for i in range(30)}
    with pytest.raises(StoreUnavailable) as raised:
        store.apply(batch, keyed("big", batch))
    # Keyed, 8 operations hold 3 sensors: each with its marker, and two guards.
    assert "the first 1 (3 of 30 sensors) were applied" in raised.value.detail
    assert "same Idempotency-Key applies exactly the rest" in raised.value.detail
    store.apply(batch, keyed("big", batch))  # the retry
    store.apply(batch, keyed("big", batch))  # and a late duplicate
    assert [store.get(f"s{i:02d}") for i in range(30)] == [measured(i) for i in range(30)]


def test_a_duplicate_queued_behind_its_original_in_one_instance_counts_once(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess
) -> None:
    def slow(call: Callable[[], object]) -> object:
        time.sleep(0.2)
        return call()

    store = make_store(ScriptedClient(endpoints(etcd), then=slow))
    batch = {"q": measured(3)}

    def post(thread: int) -> None:
        store.apply(batch, keyed("queued", batch))

    assert run_threads(6, post) == []
    assert store.get("q") == merged([3])


def test_a_key_is_forgotten_after_the_window(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess, etcd_prefix: str
) -> None:
    store = make_store(call_timeout=1.0, write_timeout=1.0, idempotency_ttl=1.0)
    batch = {"w": measured(1)}
    store.apply(batch, keyed("short", batch))
    with raw_client(etcd) as raw:
        deadline = time.monotonic() + 15
        while list(raw.get_prefix(etcd_prefix + "keys/")):
            assert time.monotonic() < deadline, "the keyed marker never expired"
            time.sleep(0.2)
    store.apply(batch, keyed("short", batch))  # a new request after the window
    assert store.get("w") == measured(1, 1)


def test_a_replay_through_instances_that_chunk_differently_counts_every_sensor_once(
    make_store: Callable[..., EtcdStore],
) -> None:
    """The reproduced defect: 128 ops, then 64, then 16 for one keyed batch of 200 sensors.

    Chunked by the instance that serves it, the batch meets markers written by
    attempts that chunked it otherwise: coarser (128 then 64), finer (16 then
    128) and alike; every sensor must count exactly once.
    """
    coarse, middle, fine = (make_store(max_txn_ops=ops) for ops in (128, 64, 16))
    batch = {f"s{i:03d}": measured(i) for i in range(200)}
    for store in (coarse, coarse, middle, fine, coarse, middle):
        store.apply(batch, keyed("batch-42", batch))
    counts = [coarse.get(sensor).count for sensor in batch]
    assert sum(counts) == 200, sum(counts)
    assert [fine.get(sensor) for sensor in batch] == list(batch.values())
