"""The etcd store: the `Store` assembled from this package's parts.

The design is the package's docstring (`sensorstats.store.etcd`). The parts:

- `client`: calls to any member, failover, one deadline per call;
- `txn`: the compare-and-swap and read transactions, built and read;
- `combining`: concurrent POSTs in this instance share transactions, each
  keeping its own marker and outcome (group commit);
- `writes`: committing one shared batch, retries and lost answers;
- `keyed`: the markers that make a keyed POST count exactly once;
- `read_rounds`: concurrent GETs share linearizable reads sent after they
  arrived, by one sender thread;
- `cache`: the last seen records, and the marker lease.

A GET's read may be started ahead, on the server's event loop
(`sensorstats.store.calls`), and its `get` then takes that answer; so may a
POST's write of one chunk, and its `apply` then takes that outcome.
"""

from __future__ import annotations

import itertools
import operator
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import etcd3.etcdrpc as rpc

from sensorstats.core.errors import StoreUnavailable
from sensorstats.core.idempotency import (
    DEFAULT_WINDOW_SECONDS,
    IdempotencyKey,
    IdempotencyKeyReused,
)
from sensorstats.core.stats import Stats
from sensorstats.settings import Settings
from sensorstats.store.calls import Ready, StartedRead, StartedWrite
from sensorstats.store.etcd.cache import SeenCache
from sensorstats.store.etcd.client import EtcdAccess, EtcdClient, EtcdFailure
from sensorstats.store.etcd.combining import PendingWrite, WriteCombiner
from sensorstats.store.etcd.keyed import KeyedRequest, keyed_chunk_sensors
from sensorstats.store.etcd.keys import health_key, marker_key, sensor_key
from sensorstats.store.etcd.read_rounds import ReadRounds
from sensorstats.store.etcd.txn import (
    MAX_TXN_BYTES,
    MAX_TXN_OPS,
    MIN_TXN_OPS,
    Seen,
    Update,
    marker_cost,
    read_answer,
    read_txn,
    seen_of,
    split_batch,
)
from sensorstats.store.etcd.writes import BatchCommitter

CACHE_SIZE = 10_000
# How long closing waits for the batch of writes ahead in flight, if any.
CLOSE_SECONDS = 2.0
CHECK_TIMEOUT = 0.5
# Transactions one instance keeps in flight at once, each carrying every
# write that queued meanwhile. A gRPC call costs this instance about 0.3 ms
# of CPU and etcd its own, so one large transaction beats several small ones;
# measured side by side with the benchmark (`tox -e bench`), a second one in
# flight gained nothing.
MAX_WRITES_IN_FLIGHT = 1


class EtcdStore:
    """Per-sensor statistics in etcd, safe for many threads and many instances."""

    def __init__(
        self,
        client: EtcdClient,
        *,
        prefix: str,
        call_timeout: float,
        write_timeout: float,
        max_txn_ops: int = MAX_TXN_OPS,
        cache_size: int = CACHE_SIZE,
        max_writes_in_flight: int = MAX_WRITES_IN_FLIGHT,
        idempotency_ttl: float = DEFAULT_WINDOW_SECONDS,
    ) -> None:
        if max_txn_ops < MIN_TXN_OPS:
            raise ValueError(
                "max_txn_ops must leave room for a sensor, its marker and a keyed "
                f"request's two guards: at least {MIN_TXN_OPS}"
            )
        self.starts_calls = True
        self.description = (
            f"etcd at {','.join(str(e) for e in client.endpoints)} under prefix {prefix!r}"
        )
        self._client = client
        self._prefix = prefix
        self._call_timeout = call_timeout
        self._write_timeout = write_timeout
        self._chunk_sensors = max_txn_ops - 1
        self._keyed_chunk_sensors = keyed_chunk_sensors(max_txn_ops)
        self._cache = SeenCache(cache_size)
        self._instance = secrets.token_hex(8)
        self._sequence = itertools.count()
        committer = BatchCommitter(
            client,
            self._cache,
            call_timeout=call_timeout,
            write_timeout=write_timeout,
            idempotency_ttl=idempotency_ttl,
        )
        self._writes = WriteCombiner(
            committer,
            max_ops=max_txn_ops,
            max_bytes=MAX_TXN_BYTES,
            max_in_flight=max_writes_in_flight,
        )
        self._reads: ReadRounds[Seen] = ReadRounds(
            self._read, max_keys=max_txn_ops, timeout=write_timeout, name="etcd-reads"
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> EtcdStore:
        """A store on the configured cluster; connects lazily, so etcd may be down now."""
        return cls(
            EtcdClient(settings.etcd_endpoints, access=EtcdAccess.from_settings(settings)),
            prefix=settings.etcd_prefix,
            call_timeout=settings.etcd_timeout,
            write_timeout=settings.write_timeout,
            max_txn_ops=settings.etcd_max_txn_ops,
            idempotency_ttl=settings.idempotency_ttl,
        )

    # --- the Store protocol ------------------------------------------------

    def apply(self, deltas: Mapping[str, Stats], key: IdempotencyKey | None = None) -> None:
        """Merge `deltas`, one chunk after the other, each in a shared transaction.

        With an idempotency `key`, each sensor's delta is written with a marker
        naming the key and the sensor, and a sensor whose marker exists is not
        applied again: a retry applies exactly the sensors no attempt applied,
        however either attempt was split (see `keyed`).
        """
        deadline = time.monotonic() + self._write_timeout
        updates = self._updates(deltas)
        if key is None:
            chunks = split_batch(updates, self._chunk_sensors)
            request_id = self._request_id()
            writes = [
                PendingWrite(chunk, marker_key(self._prefix, request_id, index), deadline)
                for index, chunk in enumerate(chunks)
            ]
        else:
            # As the previous release split it, to read the markers it wrote.
            legacy_chunks = split_batch(updates, self._chunk_sensors)
            request = KeyedRequest.of(self._prefix, key, deltas, legacy_chunks)
            chunks = split_batch(
                updates,
                self._keyed_chunk_sensors,
                extra_cost=lambda update: marker_cost(request.sensor_marker(update.key)),
            )
            writes = [
                PendingWrite(chunk, request.key_marker, deadline, keyed=request) for chunk in chunks
            ]
        for index, pending in enumerate(writes):
            if pending.keyed is not None and not pending.keyed.uncovered(pending.updates):
                continue  # an earlier chunk's refusal showed these applied already
            try:
                self._writes.write(pending)
            except IdempotencyKeyReused as refused:
                if index == 0:
                    raise
                applied = sum(len(c) for c in chunks[:index])
                raise IdempotencyKeyReused(
                    f"{refused.detail.partition(';')[0]} meanwhile (its idempotency window "
                    f"ended during this request, or an instance of the previous release took "
                    f"it); the batch was split into {len(chunks)} "
                    f"transactions and the first {index} ({applied} of {len(updates)} sensors) "
                    f"were applied and stay applied; nothing of the rest was stored"
                ) from None
            except StoreUnavailable as failure:
                if index == 0:
                    raise
                applied = sum(len(c) for c in chunks[:index])
                retry = (
                    "retrying with the same Idempotency-Key applies exactly the rest"
                    if key
                    else "retrying the whole batch would count them twice"
                )
                raise StoreUnavailable(
                    f"{failure.detail}; the batch was split into {len(chunks)} transactions "
                    f"and the first {index} ({applied} of {len(updates)} sensors) were applied "
                    f"and stay applied: {retry}",
                    failure.retry_after,
                ) from None

    def start_apply(self, deltas: Mapping[str, Stats], ready: Ready) -> StartedWrite | None:
        """Queue `deltas` as one shared transaction; None if they need more than one."""
        updates = self._updates(deltas)
        chunks = split_batch(updates, self._chunk_sensors)
        if len(chunks) != 1:
            return None  # several chunks: `apply` tells which were applied if one fails
        deadline = time.monotonic() + self._write_timeout
        pending = PendingWrite(chunks[0], marker_key(self._prefix, self._request_id(), 0), deadline)
        ahead = StartedWrite(deltas, deadline, ready)
        self._writes.write_ahead(pending, lambda: ahead.settle(None, pending.error))
        return ahead

    def get(self, sensor: str) -> Stats:
        return self._reads.get(sensor_key(self._prefix, sensor)).stats

    def start_get(self, sensor: str, ready: Ready) -> StartedRead[Stats]:
        key = sensor_key(self._prefix, sensor)
        return self._reads.start_read(sensor, key, ready, _stats_of)

    def delete(self, sensor: str) -> None:
        key = sensor_key(self._prefix, sensor)
        request = rpc.DeleteRangeRequest(key=key.encode())
        # Not repeated after a lost answer: a second delete could also remove
        # measurements acknowledged in between. The caller may retry.
        self._failing_over(
            lambda: self._client.delete_range(request, self._call_timeout), repeatable=False
        )
        self._cache.discard(key)

    def check(self) -> None:
        # A linearizable read needs the leader to confirm it still has a
        # quorum, unlike Status, which any live member answers alone.
        request = rpc.RangeRequest(key=health_key(self._prefix).encode(), count_only=True)
        timeout = min(self._call_timeout, CHECK_TIMEOUT)
        self._failing_over(lambda: self._client.range(request, timeout), repeatable=True)

    def close(self) -> None:
        self._writes.close(CLOSE_SECONDS)
        self._reads.close()
        self._client.close()

    # --- writing, reading and failover -------------------------------------

    def _updates(self, deltas: Mapping[str, Stats]) -> list[Update]:
        """The updates of `deltas`, in sorted key order (see "Chunking" in the package)."""
        updates = [
            Update(sensor_key(self._prefix, sensor), delta)
            for sensor, delta in deltas.items()
            if delta.count
        ]
        if len(updates) > 1:
            updates.sort(key=_KEY_OF)
        return updates

    def _request_id(self) -> str:
        """Unique to this store object, then a counter: far cheaper than 128 random bits."""
        return f"{self._instance}-{next(self._sequence):x}"

    def _read(self, keys: Sequence[str]) -> dict[str, Seen]:
        """One linearizable read of `keys` (a round of `ReadRounds`)."""
        if len(keys) == 1:
            request = rpc.RangeRequest(key=keys[0].encode())
            response = self._failing_over(
                lambda: self._client.range(request, self._call_timeout), repeatable=True
            )
            found = {keys[0]: seen_of(response.kvs)}
        else:
            transaction = read_txn(keys)
            response = self._failing_over(
                lambda: self._client.txn(transaction, self._call_timeout), repeatable=True
            )
            found = read_answer(keys, response)
        for key, seen in found.items():
            if seen.revision:
                self._cache.update([(key, seen)])
            else:
                self._cache.discard(key)
        return found

    def _failing_over(self, call: Callable[[], Any], *, repeatable: bool) -> Any:
        """`call`, moved to the next member while its failures are the member's fault.

        A call that may have taken effect is repeated only if `repeatable`.
        """
        for _ in range(self._client.member_count - 1):
            try:
                return call()
            except EtcdFailure as failure:
                fail_over = failure.transient and failure.suspect_member
                if not fail_over or (failure.outcome_unknown and not repeatable):
                    raise
        return call()


_KEY_OF = operator.attrgetter("key")


def _stats_of(seen: Seen) -> Stats:
    return seen.stats
