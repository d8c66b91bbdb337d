"""The etcd store: statistics in an etcd cluster shared by every instance.

Layout (see `etcd_keys`): one key per sensor, ``<prefix>sensors/<quoted id>``,
holding `Stats.encode()`.

Writes are optimistic compare-and-swap transactions. For each chunk of a
batch one transaction says: *if* every sensor key still has the
mod-revision this instance last saw (0 for a key believed absent) *and* the
chunk's request marker does not exist, *then* put each merged record and the
marker, *else* read every one of those keys. A lost race therefore costs one
round trip, which also brings the current values for the next attempt.
Instances keep the last seen (revision, statistics) of recently written
sensors, so the first attempt usually commits; a stale entry costs one extra
round trip, never correctness.

Retries: the first conflict retries at once with the values just read; from
the second failed attempt on the store sleeps a random time in
``[0, min(BACKOFF_CAP, BACKOFF_BASE * 2**n))`` (capped exponential backoff,
full jitter), never past the request's deadline (``write_timeout`` from the
start of `apply`).

Lost answers: a timeout or UNAVAILABLE may hide a commit. The request marker
(``<prefix>requests/<random 128-bit id>/<chunk>``, on a lease that outlives
the deadline) tells: every attempt requires the marker to be absent, writes
it when it commits, and reads it when it does not, so after a lost answer the
next attempt either commits (the first did not) or finds the marker (it did)
and stops. At most one attempt of a chunk can ever commit. A batch is never
re-applied on a guess; if the deadline passes before the outcome is known,
the error says the outcome is unknown.

Atomicity: etcd allows ``--max-txn-ops`` (128) operations per list of a
transaction, and a request at most ``--max-request-bytes`` (1.5 MiB). A batch
that needs more is split into chunks of at most ``max_txn_ops - 1`` sensors
(the marker takes one operation) and about 1 MiB, in sorted key order (two
instances updating overlapping large batches take the keys in the same order
and cannot starve each other). Each chunk is atomic; the batch as a whole is
not: a reader may see some chunks before others, and when a later chunk
fails the earlier ones stay applied, which the error detail says. Retrying
the whole request then counts the applied chunks twice.
"""

from __future__ import annotations

import math
import random
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import etcd3.etcdrpc as rpc

from sensorstats.errors import StoreUnavailable
from sensorstats.settings import Settings
from sensorstats.stats import EMPTY, Stats
from sensorstats.store.etcd_client import EtcdClient, EtcdFailure
from sensorstats.store.etcd_keys import health_key, marker_key, sensor_key

MAX_TXN_OPS = 128  # etcd's default --max-txn-ops
MAX_TXN_BYTES = 1 << 20  # below etcd's default --max-request-bytes (1.5 MiB)
RECORD_BYTES = 1024  # an upper bound of one encoded record plus framing
CACHE_SIZE = 10_000
BACKOFF_BASE = 0.01
BACKOFF_CAP = 0.25
CHECK_TIMEOUT = 0.5
# A marker lease is used for this long, then replaced by a fresh one. Each
# lease lives this long plus the write deadline plus a margin, so a marker
# outlives every attempt that may look for it, and markers do not pile up:
# renewing one lease forever would keep every marker ever written.
MARKER_LEASE_ROTATION = 30.0
MARKER_LEASE_MARGIN = 30.0


@dataclass(frozen=True, slots=True)
class Seen:
    """A sensor record as last seen: its mod-revision (0: absent) and value."""

    revision: int
    stats: Stats


ABSENT = Seen(0, EMPTY)


class _SeenCache:
    """The last `Seen` of recently used keys, least recently used evicted."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[str, Seen] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Seen:
        with self._lock:
            seen = self._entries.get(key)
            if seen is not None:
                self._entries.move_to_end(key)
            return seen or ABSENT

    def update(self, entries: Iterable[tuple[str, Seen]]) -> None:
        with self._lock:
            for key, seen in entries:
                self._entries[key] = seen
                self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def discard(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)


class _MarkerLease:
    """The lease request markers are written with, granted lazily and rotated."""

    def __init__(self, client: EtcdClient, ttl: int, rotation: float) -> None:
        self._client = client
        self._ttl = ttl
        self._rotation = rotation
        self._id: int | None = None
        self._granted_at = 0.0
        self._lock = threading.Lock()

    def current(self, timeout: float) -> int:
        """The lease to use now, granting one if needed within `timeout` seconds."""
        started = time.monotonic()
        # Held during a grant, so that concurrent writers wait for that one
        # grant rather than each making their own; but never past their own
        # deadline, should etcd be slow to grant.
        if not self._lock.acquire(timeout=timeout):
            raise EtcdFailure("etcd did not grant a request-marker lease in time", retry_after=2)
        try:
            now = time.monotonic()
            if self._id is None or now - self._granted_at >= self._rotation:
                self._id = self._client.grant_lease(self._ttl, timeout - (now - started))
                self._granted_at = now
            return self._id
        finally:
            self._lock.release()

    def forget(self, lease: int) -> None:
        """etcd says `lease` is gone: the next marker gets a new one."""
        with self._lock:
            if self._id == lease:
                self._id = None


@dataclass(frozen=True, slots=True)
class _Update:
    key: str
    delta: Stats


def split_batch(
    updates: Sequence[_Update], max_sensors: int, max_bytes: int = MAX_TXN_BYTES
) -> list[list[_Update]]:
    """Consecutive runs of `updates` that each fit one transaction."""
    chunks: list[list[_Update]] = []
    size = 0
    for update in updates:
        # The key travels three times: in the compare, the put and the read.
        cost = 3 * len(update.key.encode()) + RECORD_BYTES
        if not chunks or len(chunks[-1]) >= max_sensors or size + cost > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(update)
        size += cost
    return chunks


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
    ) -> None:
        if max_txn_ops < 2:
            raise ValueError("max_txn_ops must leave room for a sensor and the marker")
        self.description = (
            f"etcd at {','.join(str(e) for e in client.endpoints)} under prefix {prefix!r}"
        )
        self._client = client
        self._prefix = prefix
        self._call_timeout = call_timeout
        self._write_timeout = write_timeout
        self._chunk_sensors = max_txn_ops - 1
        self._cache = _SeenCache(cache_size)
        ttl = math.ceil(MARKER_LEASE_ROTATION + write_timeout + MARKER_LEASE_MARGIN)
        self._lease = _MarkerLease(client, ttl, MARKER_LEASE_ROTATION)

    @classmethod
    def from_settings(cls, settings: Settings) -> EtcdStore:
        """A store on the configured cluster; connects lazily, so etcd may be down now."""
        return cls(
            EtcdClient(settings.etcd_endpoints),
            prefix=settings.etcd_prefix,
            call_timeout=settings.etcd_timeout,
            write_timeout=settings.write_timeout,
            max_txn_ops=settings.etcd_max_txn_ops,
        )

    # --- the Store protocol ------------------------------------------------

    def apply(self, deltas: Mapping[str, Stats]) -> None:
        """Merge `deltas` in one transaction per chunk (see the module docstring)."""
        deadline = time.monotonic() + self._write_timeout
        updates = sorted(
            (
                _Update(sensor_key(self._prefix, sensor), delta)
                for sensor, delta in deltas.items()
                if delta.count
            ),
            key=lambda update: update.key,
        )
        chunks = split_batch(updates, self._chunk_sensors)
        request_id = secrets.token_hex(16)
        for index, chunk in enumerate(chunks):
            try:
                self._commit(chunk, marker_key(self._prefix, request_id, index), deadline)
            except StoreUnavailable as failure:
                if index == 0:
                    raise
                applied = sum(len(c) for c in chunks[:index])
                raise StoreUnavailable(
                    f"{failure.detail}; the batch was split into {len(chunks)} transactions "
                    f"and the first {index} ({applied} of {len(updates)} sensors) were applied "
                    f"and stay applied: retrying the whole batch would count them twice",
                    failure.retry_after,
                ) from None

    def get(self, sensor: str) -> Stats:
        key = sensor_key(self._prefix, sensor)
        request = rpc.RangeRequest(key=key.encode())
        response = self._failing_over(
            lambda: self._client.range(request, self._call_timeout), repeatable=True
        )
        if not response.kvs:
            self._cache.discard(key)
            return EMPTY
        seen = self._seen(response.kvs[0])
        self._cache.update([(key, seen)])
        return seen.stats

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
        self._client.close()

    # --- writing -----------------------------------------------------------

    def _commit(self, chunk: Sequence[_Update], marker: str, deadline: float) -> None:
        """Apply one chunk atomically, exactly once, or raise StoreUnavailable."""
        seen = {update.key: self._cache.get(update.key) for update in chunk}
        failed_attempts = 0
        outcome_unknown = False
        last_failure: StoreUnavailable | None = None
        while True:
            if time.monotonic() >= deadline:
                raise self._deadline_passed(last_failure, outcome_unknown)
            lease: int | None = None
            try:
                lease = self._lease.current(self._timeout(deadline))
                merged = {u.key: seen[u.key].stats.merge(u.delta) for u in chunk}
                request = self._transaction(chunk, seen, merged, marker, lease)
                response = self._client.txn(request, self._timeout(deadline))
            except EtcdFailure as failure:
                last_failure = failure
                # Only a transaction that was sent can have committed; a
                # failed lease grant leaves `lease` unset.
                if lease is not None:
                    outcome_unknown = outcome_unknown or failure.outcome_unknown
                if failure.lease_missing and lease is not None:
                    self._lease.forget(lease)
                    continue
                if not failure.transient:
                    if outcome_unknown:
                        raise StoreUnavailable(
                            f"{failure.detail}; an earlier attempt's outcome is unknown",
                            failure.retry_after,
                        ) from None
                    raise
            else:
                if response.succeeded:
                    revision = response.header.revision
                    self._cache.update((key, Seen(revision, merged[key])) for key in merged)
                    return
                current, committed = self._read_failure_branch(chunk, response)
                self._cache.update(current.items())
                if committed:  # an attempt whose answer was lost did commit
                    return
                # A data key moved on and revisions only grow, so no earlier
                # attempt (same revisions) can commit any more, bar one held
                # inside etcd until a delete makes a key absent again; the
                # marker compare stops that one once any attempt has committed.
                seen = current
                outcome_unknown = False
                last_failure = StoreUnavailable(
                    "etcd kept refusing the update because other writers changed "
                    "the same sensors (contention)"
                )
            failed_attempts += 1
            if failed_attempts >= 2:
                self._back_off(failed_attempts - 1, deadline)

    def _transaction(
        self,
        chunk: Sequence[_Update],
        seen: Mapping[str, Seen],
        merged: Mapping[str, Stats],
        marker: str,
        lease: int,
    ) -> Any:
        compare = [
            rpc.Compare(
                key=u.key.encode(),
                target=rpc.Compare.MOD,
                result=rpc.Compare.EQUAL,
                mod_revision=seen[u.key].revision,
            )
            for u in chunk
        ]
        compare.append(
            rpc.Compare(
                key=marker.encode(), target=rpc.Compare.VERSION, result=rpc.Compare.EQUAL, version=0
            )
        )
        success = [
            rpc.RequestOp(
                request_put=rpc.PutRequest(key=u.key.encode(), value=merged[u.key].encode())
            )
            for u in chunk
        ]
        success.append(
            rpc.RequestOp(request_put=rpc.PutRequest(key=marker.encode(), value=b"", lease=lease))
        )
        failure = [rpc.RequestOp(request_range=rpc.RangeRequest(key=u.key.encode())) for u in chunk]
        failure.append(
            rpc.RequestOp(request_range=rpc.RangeRequest(key=marker.encode(), count_only=True))
        )
        return rpc.TxnRequest(compare=compare, success=success, failure=failure)

    def _read_failure_branch(
        self, chunk: Sequence[_Update], response: Any
    ) -> tuple[dict[str, Seen], bool]:
        """The current records of the chunk's keys, and whether its marker exists."""
        ranges = [op.response_range for op in response.responses]
        current = {
            update.key: self._seen(found.kvs[0]) if found.kvs else ABSENT
            for update, found in zip(chunk, ranges, strict=False)
        }
        return current, ranges[-1].count > 0

    def _timeout(self, deadline: float) -> float:
        """One call's timeout: the configured one, cut to what is left of the deadline."""
        return max(0.001, min(self._call_timeout, deadline - time.monotonic()))

    def _back_off(self, failures: int, deadline: float) -> None:
        delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**failures))  # noqa: S311
        time.sleep(max(0.0, min(delay, deadline - time.monotonic())))

    def _deadline_passed(
        self, last_failure: StoreUnavailable | None, outcome_unknown: bool
    ) -> StoreUnavailable:
        reason = last_failure.detail if last_failure else "no attempt could start"
        retry_after = last_failure.retry_after if last_failure else 1
        if outcome_unknown:
            return StoreUnavailable(
                f"the outcome is unknown: etcd did not confirm within the write deadline "
                f"({self._write_timeout:g} s) whether the update was applied ({reason})",
                retry_after,
            )
        return StoreUnavailable(
            f"the update was not applied within the write deadline "
            f"({self._write_timeout:g} s): {reason}",
            retry_after,
        )

    # --- reading and failover ----------------------------------------------

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

    def _seen(self, kv: Any) -> Seen:
        try:
            return Seen(kv.mod_revision, Stats.decode(kv.value))
        except ValueError as error:
            raise StoreUnavailable(
                f"etcd key {kv.key.decode(errors='replace')!r} holds a record this "
                f"version cannot read: {error}",
                retry_after=5,
            ) from None
