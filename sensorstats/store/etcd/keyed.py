"""Exactly once for a POST with an ``Idempotency-Key``, however each attempt is split.

A keyed POST may be attempted several times, through any instance, each
with its own ``SENSORSTATS_ETCD_MAX_TXN_OPS`` and so its own split into
transactions (chunks), and within the idempotency window every sensor's
delta must be applied exactly once: none twice, none missed, and a payload
that differs from the one first applied refused (422) without storing any
of it. So what marks a delta as applied names the sensor, not the chunk:

``keys/<digest>`` — the key marker
    The payload's fingerprint (`IdempotencyKey.fingerprint`), written by
    the first transaction of the request that commits, on any instance.
``keys/<digest>/sensors/<id>`` — one sensor marker per sensor
    Written, with the same fingerprint, by the very transaction that puts
    that sensor's merged record. Its existence means "this delta is in the
    record".

Every transaction of a keyed chunk compares, besides each sensor's
mod-revision: every sensor marker of the chunk absent; the key marker
absent (then it is put) or holding this fingerprint (then it is not put
again); and the range of the previous release's markers unchanged (below).
When the compare fails, the failure branch reads them all, and the chunk
learns, before it writes anything: a marker holding another fingerprint
refuses the request (422); a sensor marker holding this one means that
sensor is covered, by an earlier attempt or a concurrent copy, and the next
attempt leaves it out; the key marker holding this fingerprint is compared
from then on. So a retry, split more finely, more coarsely or alike, applies
exactly the sensors no marker covers, and concurrent copies through several
instances race per sensor on the marker compare: one commits each sensor.

A mismatch is found before any write of the *request*: its first chunk
compares the key marker, which the first transaction of the first attempt
wrote. A mismatch in a later chunk, after this attempt applied earlier ones,
cannot happen for the same key and fingerprint: every marker under the
digest was written by a transaction that compared or wrote the key marker
with the fingerprint it holds, and the key marker changes only by expiring.
It can happen only when the window ends during the request (the key marker
of a first attempt about 600 s ago expires between two chunks) and another
payload takes the key at that moment; the 422 then says which chunks stayed
applied (`EtcdStore.apply`).

Markers live on the keyed lease (`writes.BatchCommitter`): between the
window and 1.1 times it. A retry after that counts again, as the window
says; since markers written by different transactions may sit on different
leases, a retry right at the end of the window may count again only part
of the batch.

**Cost.** A keyed chunk of ``n`` sensors takes ``2n + 2`` compares and
reads and at most ``2n + 1`` puts, so it holds ``(max_txn_ops - 2) // 2``
sensors (63 of etcd's default 128); an unkeyed chunk still takes ``n + 1``.
A keyed POST of ``n`` sensors leaves ``n + 1`` markers in etcd for the window.

**The previous release** wrote one marker per chunk, ``keys/<digest>/<i>``,
holding a fingerprint of the storage encoding (`legacy_fingerprint`), and
split with ``split_batch(updates, max_txn_ops - 1)``. During a rolling
upgrade a retry may meet such markers, and they do not say which sensors
they cover. This release assumes the previous one split as it would have
with this instance's setting (`legacy_chunks`): chunk ``i``'s marker covers
the sensors of that chunk. That is exact while both releases run with the
same ``SENSORSTATS_ETCD_MAX_TXN_OPS``, which the upgrade rule asks for
(kube/README.md, "Rolling upgrades"); a marker numbered past this split
proves another setting and is refused with 503, since guessing could count
sensors twice or miss them.
Every keyed transaction therefore also compares that no marker in the
range ``[keys/<digest>/0, keys/<digest>/:)`` was created at or after the
revision it last saw there (none yet: revision 1). The next release drops
the range and the legacy fingerprint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from sensorstats.core.errors import StoreUnavailable
from sensorstats.core.idempotency import IdempotencyKey, IdempotencyKeyReused
from sensorstats.core.stats import Stats
from sensorstats.store.etcd.keys import (
    key_marker_key,
    legacy_chunk_of,
    legacy_marker_range,
    sensor_marker_key,
)
from sensorstats.store.etcd.txn import Found, Guard, Marker, Update

REUSED = (
    "this Idempotency-Key was already used with a different payload; "
    "nothing of this request was stored"
)


def keyed_chunk_sensors(max_txn_ops: int) -> int:
    """Sensors in one keyed chunk: each takes two operations, the two guards one each."""
    return (max_txn_ops - 2) // 2


def legacy_fingerprint(deltas: Mapping[str, Stats]) -> str:
    """The previous release's fingerprint: a hash of each sensor's record (`Stats.encode`)."""
    digest = hashlib.sha256()
    for sensor in sorted(deltas):
        delta = deltas[sensor]
        if not delta.count:
            continue
        name = sensor.encode("utf-8", "surrogatepass")
        record = delta.encode()
        digest.update(len(name).to_bytes(4, "big") + name)
        digest.update(len(record).to_bytes(4, "big") + record)
    return digest.hexdigest()[:32]


@dataclass(eq=False)
class KeyedRequest:
    """One keyed POST as this instance applies it: what it compares, and what it learnt.

    Shared by the request's chunks, which run one after the other; each
    chunk's `PendingWrite` carries it.
    """

    prefix: str
    digest: str
    fingerprint: bytes
    legacy_fingerprint: bytes
    # The sensor keys of the previous release's chunk i, split with this setting.
    legacy_chunks: Sequence[frozenset[str]]
    key_marker: str = field(init=False)
    legacy_range: tuple[str, str] = field(init=False)
    key_marker_present: bool = False  # holds this fingerprint, as last seen
    legacy_created_before: int = 1  # no legacy marker created at or after this revision
    covered: set[str] = field(default_factory=set)  # sensor keys applied by some attempt

    def __post_init__(self) -> None:
        self.key_marker = key_marker_key(self.prefix, self.digest)
        self.legacy_range = legacy_marker_range(self.prefix, self.digest)

    @classmethod
    def of(
        cls,
        prefix: str,
        key: IdempotencyKey,
        deltas: Mapping[str, Stats],
        legacy_chunks: Iterable[Sequence[Update]],
    ) -> KeyedRequest:
        return cls(
            prefix,
            key.digest,
            key.fingerprint.encode(),
            legacy_fingerprint(deltas).encode(),
            [frozenset(update.key for update in chunk) for chunk in legacy_chunks],
        )

    def sensor_marker(self, sensor_key: str) -> str:
        return sensor_marker_key(self.prefix, self.digest, sensor_key)

    def uncovered(self, updates: Sequence[Update]) -> list[Update]:
        """The updates no marker found so far says were applied."""
        return [update for update in updates if update.key not in self.covered]

    def markers(self, updates: Sequence[Update], lease: int) -> list[Marker]:
        """The markers a transaction of `updates` requires absent and writes."""
        markers = [
            Marker(self.sensor_marker(update.key), self.fingerprint, lease)
            for update in self.uncovered(updates)
        ]
        if not self.key_marker_present:
            markers.append(Marker(self.key_marker, self.fingerprint, lease))
        return markers

    def guards(self) -> list[Guard]:
        """What a transaction of this request compares without writing."""
        start, end = self.legacy_range
        guards = [Guard(start, range_end=end, created_before=self.legacy_created_before)]
        if self.key_marker_present:
            guards.append(Guard(self.key_marker, value=self.fingerprint))
        return guards

    def committed(self) -> None:
        """A transaction of this request committed: the key marker holds its fingerprint."""
        self.key_marker_present = True

    def learn(
        self,
        updates: Sequence[Update],
        found: Mapping[str, bytes],
        guarded: Mapping[Guard, Sequence[Found]],
    ) -> Exception | None:
        """Take in what a refused transaction of `updates` read; the error that ends it, if any.

        `found`: the markers that exist, by key; `guarded`: what each guard read.
        """
        for guard, answer in guarded.items():
            if guard.key == self.key_marker:
                if not answer:
                    self.key_marker_present = False  # expired: the window ended
                elif answer[0].value != self.fingerprint:
                    return IdempotencyKeyReused(REUSED)
            elif guard.key == self.legacy_range[0]:
                error = self._learn_legacy(answer)
                if error is not None:
                    return error
        if self.key_marker in found:
            if found[self.key_marker] != self.fingerprint:
                return IdempotencyKeyReused(REUSED)
            self.key_marker_present = True
        for update in updates:
            value = found.get(self.sensor_marker(update.key))
            if value is None:
                continue
            if value != self.fingerprint:
                return IdempotencyKeyReused(REUSED)
            self.covered.add(update.key)
        return None

    def _learn_legacy(self, answer: Sequence[Found]) -> Exception | None:
        """Markers of the previous release: the chunks they cover, as it split."""
        chunks: list[int] = []
        for marker in answer:
            if marker.value != self.legacy_fingerprint:
                return IdempotencyKeyReused(REUSED)
            chunk = legacy_chunk_of(self.prefix, self.digest, marker.key)
            if chunk is None or chunk >= len(self.legacy_chunks):
                return StoreUnavailable(
                    f"this Idempotency-Key was first used through an instance of the previous "
                    f"release that split the batch into more transactions than this instance "
                    f"would (its SENSORSTATS_ETCD_MAX_TXN_OPS differs from this one's, "
                    f"{sum(map(len, self.legacy_chunks))} sensors in "
                    f"{len(self.legacy_chunks)} transactions here): which sensors it applied "
                    f"cannot be told, so nothing of this request was stored; retry through an "
                    f"instance of the previous release, or after the idempotency window, when "
                    f"the request counts as new",
                    retry_after=5,
                    outage=False,
                )
            chunks.append(chunk)
        for chunk in chunks:
            self.covered |= self.legacy_chunks[chunk]
        if answer:
            self.legacy_created_before = max(m.created for m in answer) + 1
        return None
