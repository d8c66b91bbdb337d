"""Idempotency keys on a real etcd: once per key, across instances, resumable, forgotten in time."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from sensorstats.core.errors import StoreUnavailable
from sensorstats.core.idempotency import IdempotencyKey, IdempotencyKeyReused, fingerprint
from sensorstats.core.stats import Stats
from sensorstats.store.etcd.client import EtcdClient
from sensorstats.store.etcd.keyed import legacy_fingerprint
from sensorstats.store.etcd.keys import sensor_key
from sensorstats.store.etcd.store import EtcdStore
from tests.integration.test_etcd_combining import merged, run_threads
from tests.integration.test_etcd_store import (
    ScriptedClient,
    endpoints,
    lose_answer,
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


def wide(n: int, value: float = 1.0) -> dict[str, Stats]:
    return {f"s{i:03d}": measured(value + i) for i in range(n)}


def test_a_changed_last_chunk_after_a_partial_first_attempt_is_refused_and_stores_nothing(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess
) -> None:
    """The first attempt applied its first transaction only; the retry carries another payload."""
    partial = make_store(ScriptedClient(endpoints(etcd), faults=[None, refuse]))
    batch = wide(200)
    with pytest.raises(StoreUnavailable, match="the first 1 \\(63 of 200 sensors\\)"):
        partial.apply(batch, keyed("k", batch))
    changed = {**batch, "s199": measured(1000)}
    for ops in (128, 64, 16):
        with pytest.raises(IdempotencyKeyReused, match="nothing of this request was stored"):
            make_store(max_txn_ops=ops).apply(changed, keyed("k", changed))
    reader = make_store()
    assert sum(reader.get(sensor).count for sensor in batch) == 63
    make_store(max_txn_ops=16).apply(batch, keyed("k", batch))  # the true retry completes it
    assert [reader.get(sensor) for sensor in batch] == list(batch.values())


def test_a_keyed_attempt_whose_answer_was_lost_is_found_applied_by_its_sensor_markers(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess
) -> None:
    client = ScriptedClient(endpoints(etcd), faults=[None, lose_answer])
    store = make_store(client, max_txn_ops=16)
    batch = wide(20)
    store.apply(batch, keyed("lost", batch))  # the lost commit is found within the attempt
    make_store(max_txn_ops=64).apply(batch, keyed("lost", batch))
    assert [store.get(sensor) for sensor in batch] == list(batch.values())


def test_concurrent_copies_through_instances_that_split_differently_count_once(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess
) -> None:
    instances = [make_store(EtcdClient(endpoints(etcd)), max_txn_ops=ops) for ops in (128, 64, 16)]
    batch = wide(150)

    def post(thread: int) -> None:
        instances[thread % 3].apply(batch, keyed("hedged", batch))

    assert run_threads(6, post) == []
    assert [instances[0].get(sensor) for sensor in batch] == list(batch.values())


def test_markers_are_per_sensor_and_one_per_key(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess, etcd_prefix: str
) -> None:
    """What a keyed POST leaves in etcd for the window: one marker per sensor and the key's."""
    batch = wide(70)
    key = keyed("count-me", batch)
    make_store(max_txn_ops=16).apply(batch, key)
    with raw_client(etcd) as raw:
        markers = {
            meta.key.decode(): value for value, meta in raw.get_prefix(etcd_prefix + "keys/")
        }
    base = f"{etcd_prefix}keys/{key.digest}"
    assert markers == {
        base: key.fingerprint.encode(),
        **{f"{base}/sensors/{sensor}": key.fingerprint.encode() for sensor in batch},
    }


# --- markers of the previous release ------------------------------------------


def write_as_the_previous_release(
    etcd: EtcdProcess, prefix: str, batch: dict[str, Stats], key: IdempotencyKey, chunks: int
) -> None:
    """What the previous release left after applying the first `chunks` chunks of 127.

    Its markers were keys/<digest>/<chunk> holding `legacy_fingerprint`.
    """
    sensors = sorted(batch, key=lambda s: sensor_key(prefix, s))
    with raw_client(etcd) as raw:
        lease = raw.lease(600)
        for chunk in range(chunks):
            for sensor in sensors[chunk * 127 : (chunk + 1) * 127]:
                raw.put(sensor_key(prefix, sensor), batch[sensor].encode())
            raw.put(
                f"{prefix}keys/{key.digest}/{chunk}",
                legacy_fingerprint(batch).encode(),
                lease=lease,
            )


def test_a_retry_of_a_request_the_previous_release_applied_in_part_counts_once(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess, etcd_prefix: str
) -> None:
    batch = wide(300)
    key = keyed("upgrade", batch)
    write_as_the_previous_release(etcd, etcd_prefix, batch, key, chunks=1)
    store = make_store()  # the default 128 operations, as the previous release had
    store.apply(batch, key)
    store.apply(batch, key)
    assert [store.get(sensor) for sensor in batch] == list(batch.values())
    changed = {**batch, "s000": measured(-1)}
    with pytest.raises(IdempotencyKeyReused):
        store.apply(changed, keyed("upgrade", changed))


def test_a_request_the_previous_release_split_otherwise_is_refused_not_guessed(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess, etcd_prefix: str
) -> None:
    """Its chunk 2 proves it split more finely than this instance would: 503, nothing stored."""
    batch = wide(200)
    key = keyed("finer", batch)
    write_as_the_previous_release(etcd, etcd_prefix, batch, key, chunks=1)
    with raw_client(etcd) as raw:
        raw.put(f"{etcd_prefix}keys/{key.digest}/2", legacy_fingerprint(batch).encode())
    store = make_store()
    with pytest.raises(StoreUnavailable, match="previous release that split the batch"):
        store.apply(batch, key)
    assert sum(store.get(sensor).count for sensor in batch) == 127


# --- a record of a newer release ---------------------------------------------


def test_a_record_of_a_newer_version_is_503_and_never_overwritten(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess, etcd_prefix: str
) -> None:
    newer = b'[9,2,"3",0,"2021-11-09T21:38:09Z",{"min":1,"max":2}]'
    with raw_client(etcd) as raw:
        raw.put(sensor_key(etcd_prefix, "newer"), newer)
    store = make_store()
    detail = (
        "the record of sensor 'newer' has version 9, which this release cannot read; "
        "upgrade every instance"
    )
    for batch, key in (({"newer": measured(1)}, None), (wide(3) | {"newer": measured(1)}, "k9")):
        with pytest.raises(StoreUnavailable, match=detail):
            store.apply(batch, None if key is None else keyed(key, batch))
    with pytest.raises(StoreUnavailable, match=detail):
        store.get("newer")
    with raw_client(etcd) as raw:
        assert raw.get(sensor_key(etcd_prefix, "newer"))[0] == newer


# --- the end of the window, during a request ---------------------------------


def before(action: Callable[[], object]) -> Callable[[Callable[[], object]], object]:
    """A fault that does `action` behind the store's back, then lets the call through."""

    def fault(call: Callable[[], object]) -> object:
        action()
        return call()

    return fault


def test_a_key_marker_that_expires_between_two_chunks_is_written_again(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess, etcd_prefix: str
) -> None:
    batch = wide(10)
    key = keyed("expiring", batch)
    with raw_client(etcd) as raw:
        expire = before(lambda: raw.delete(f"{etcd_prefix}keys/{key.digest}"))
        store = make_store(ScriptedClient(endpoints(etcd), faults=[None, expire]), max_txn_ops=8)
        store.apply(batch, key)
        assert raw.get(f"{etcd_prefix}keys/{key.digest}")[0] == key.fingerprint.encode()
    assert [store.get(sensor) for sensor in batch] == list(batch.values())


def test_another_payload_taking_the_key_between_two_chunks_is_422_saying_what_stayed(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess, etcd_prefix: str
) -> None:
    """The one way a mismatch meets a request after its first chunk: the window ended."""
    batch = wide(10)
    key = keyed("taken", batch)
    with raw_client(etcd) as raw:
        taken = before(lambda: raw.put(f"{etcd_prefix}keys/{key.digest}", b"another payload"))
        store = make_store(ScriptedClient(endpoints(etcd), faults=[None, taken]), max_txn_ops=8)
        with pytest.raises(IdempotencyKeyReused) as raised:
            store.apply(batch, key)
    assert "the first 1 (3 of 10 sensors) were applied and stay applied" in raised.value.detail
    assert "nothing of the rest was stored" in raised.value.detail
    assert sum(store.get(sensor).count for sensor in batch) == 3


def test_a_sensor_marker_of_another_payload_refuses_the_request(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess, etcd_prefix: str
) -> None:
    """Left by another payload whose key marker expired a lease earlier: 422, nothing stored."""
    batch = wide(5)
    key = keyed("skewed", batch)
    with raw_client(etcd) as raw:
        marker = (
            f"{etcd_prefix}keys/{key.digest}/{sensor_key(etcd_prefix, 's004')[len(etcd_prefix) :]}"
        )
        raw.put(marker, b"another payload")
    store = make_store()
    with pytest.raises(IdempotencyKeyReused, match="nothing of this request was stored"):
        store.apply(batch, key)
    assert sum(store.get(sensor).count for sensor in batch) == 0
