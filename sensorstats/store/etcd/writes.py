"""Committing one batch of writes to etcd: retries, lost answers, honest outcomes.

A batch (see `combining`) is committed as one transaction (`txn`): the
merged deltas of all its writes, and each write's own request marker (with
an Idempotency-Key, its markers and guards, and only the sensors no marker
shows applied: see `keyed`).

Retries: a refused compare retries at once with the values the refusal read,
up to `CONFLICT_RETRIES_AT_ONCE` times in a row (a failed call, once); after
that the batch sleeps a random time in
``[0, min(BACKOFF_CAP, BACKOFF_BASE * 2**n))`` (capped exponential backoff,
full jitter) and then reads the sensors afresh, so that a retry never
compares against values older than its back-off (which another writer
would almost surely have moved on during the sleep). Retrying at once is
what keeps two instances on one hot sensor fair: the winner sends its next
transaction the moment its commit is answered, and a loser that read the
same revision in its refusal and retries at once races it as an equal,
where one that sleeps and reads again almost always loses once more. Nothing is sent past
the batch's deadline, the earliest of its writes', and no attempt is sent
with less than `MIN_ATTEMPT_SECONDS` left.

Lost answers: a timeout or UNAVAILABLE may hide a commit. Every attempt
requires the markers to be absent and writes them when it commits, so after a
lost answer the next attempt either commits (the lost one did not) or finds
the markers (it did) and stops; at most one attempt of a write ever commits.
Once an answer was lost, the outcome stays unknown until an attempt commits or
finds the markers: a later refused compare does not prove the lost attempt
cannot still commit (it may sit in a member's queue and commit once a DELETE
makes a compared key absent again). A write whose marker is found is
reported applied, whichever attempt wrote it. If the deadline passes first,
the 503 says the outcome is unknown: such a request may still land later,
but only once.

Markers expire by themselves: request markers sit on a lease used for
`MARKER_LEASE_ROTATION` seconds and living that plus the write deadline plus
`MARKER_LEASE_MARGIN`, so a marker outlives every attempt that may look for
it; keyed markers on a lease replaced every tenth of the idempotency window
(at most every minute), so they live between the window and 1.1 times it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping, Sequence

from sensorstats.core.errors import StoreUnavailable
from sensorstats.core.stats import EMPTY, Stats
from sensorstats.store.etcd.cache import MarkerLease, SeenCache
from sensorstats.store.etcd.client import EtcdClient, EtcdFailure
from sensorstats.store.etcd.combining import MIN_ATTEMPT_SECONDS, PendingWrite
from sensorstats.store.etcd.txn import (
    Guard,
    Marker,
    Seen,
    Update,
    read_answer,
    read_failure_branch,
    read_txn,
    write_txn,
)
from sensorstats.store.events import COMMITTED, CONFLICT, FAILED, MARKER_FOUND, STORE_EVENTS

# Measured side by side with 16 clients on one sensor through two instances
# (`tox -e bench -- --only contention`): one retry at once and a 0.25 s cap
# gave a p99 of 0.5-0.75 s, these 0.2-0.3 s, at the same or a higher rate.
CONFLICT_RETRIES_AT_ONCE = 3
BACKOFF_BASE = 0.01
BACKOFF_CAP = 0.1
# A marker lease is used for this long, then replaced by a fresh one. Each
# lease lives this long plus the write deadline plus a margin, so a marker
# outlives every attempt that may look for it.
MARKER_LEASE_ROTATION = 30.0
MARKER_LEASE_MARGIN = 30.0
# Keyed markers must live for the idempotency window: their lease is replaced
# every tenth of it (at most every minute), so about ten leases are alive
# whatever the traffic, and a marker lives between the window and 1.1 times it.
KEYED_LEASE_ROTATION_SHARE = 0.1
KEYED_LEASE_ROTATION_MAX = 60.0

CONTENTION = (
    "etcd kept refusing the update because other writers changed the same sensors (contention)"
)


class BatchCommitter:
    """Runs a batch of `PendingWrite`s as compare-and-swap transactions until decided."""

    def __init__(
        self,
        client: EtcdClient,
        cache: SeenCache,
        *,
        call_timeout: float,
        write_timeout: float,
        idempotency_ttl: float,
    ) -> None:
        self.client = client
        self.cache = cache
        self.call_timeout = call_timeout
        self.write_timeout = write_timeout
        ttl = math.ceil(MARKER_LEASE_ROTATION + write_timeout + MARKER_LEASE_MARGIN)
        rotation = min(KEYED_LEASE_ROTATION_MAX, idempotency_ttl * KEYED_LEASE_ROTATION_SHARE)
        keyed_ttl = math.ceil(idempotency_ttl + rotation + write_timeout)
        # By whether the write is keyed: its markers live for the idempotency window.
        self.leases = {
            False: MarkerLease(client, ttl, MARKER_LEASE_ROTATION),
            True: MarkerLease(client, keyed_ttl, rotation),
        }

    def __call__(self, batch: list[PendingWrite]) -> None:
        """Decide every write of `batch`: `succeed()` or `fail(...)` each one."""
        attempts = _Attempts(self, batch)
        attempts.run()
        STORE_EVENTS.writes_decided(batch, attempts.outcome_unknown)


class _Attempts:
    """The state of committing one batch: what is pending, seen, and known."""

    def __init__(self, committer: BatchCommitter, batch: list[PendingWrite]) -> None:
        self.c = committer
        self.pending = list(batch)
        self.deadline = min(write.deadline for write in batch)
        keys = sorted({update.key for write in batch for update in _to_apply(write)})
        self.seen = {key: committer.cache.get(key) for key in keys}
        self.outcome_unknown = False
        self.last_failure: StoreUnavailable | None = None
        self.failures = 0

    def run(self) -> None:
        while self.pending:
            timeout = self._timeout()
            if timeout < MIN_ATTEMPT_SECONDS:
                self._fail_all(self._deadline_passed())
                return
            if not self._attempt(timeout):
                return
            self.failures += 1
            if self.failures > self._retries_at_once():
                self._back_off()

    def _attempt(self, timeout: float) -> bool:
        """One transaction; False once every write is decided."""
        leases: dict[bool, int] = {}
        merged = self._merged()
        sent = False
        try:
            for keyed in {write.keyed is not None for write in self.pending}:
                leases[keyed] = self.c.leases[keyed].current(timeout)
            markers: list[Marker] = []
            guards: list[Guard] = []
            for write in self.pending:
                if write.keyed is None:
                    markers.append(Marker(write.marker, b"", leases[False]))
                else:
                    markers += write.keyed.markers(write.updates, leases[True])
                    guards += write.keyed.guards()
            request = write_txn(self.seen, merged, markers, guards)
            timeout = self._timeout()
            if timeout < MIN_ATTEMPT_SECONDS:  # the lease grant took the time
                self._fail_all(self._deadline_passed())
                return False
            sent = True
            response = self.c.client.txn(request, timeout)
        except EtcdFailure as failure:
            return self._failed(failure, sent=sent, leases=leases)
        if response.succeeded:
            STORE_EVENTS.write_attempt(COMMITTED, self.failures > 0)
            revision = response.header.revision
            self.c.cache.update((key, Seen(revision, merged[key])) for key in self.seen)
            for write in self.pending:
                if write.keyed is not None:
                    write.keyed.committed()
            self._succeed(self.pending)
            return False
        keys = list(self.seen)
        current, found, guarded = read_failure_branch(keys, markers, response, guards)
        STORE_EVENTS.write_attempt(MARKER_FOUND if found else CONFLICT, self.failures > 0)
        self.c.cache.update(current.items())
        for write in self.pending:
            if write.keyed is None:
                if write.marker in found:
                    write.succeed()  # an attempt whose answer was lost did commit it
                continue
            # Keyed: markers say which sensors an earlier attempt, or a copy of
            # this request, applied; another fingerprint refuses it (see `keyed`).
            error = write.keyed.learn(write.updates, found, guarded)
            if error is not None:
                write.fail(error)
            elif not write.keyed.uncovered(write.updates):
                write.succeed()
        self.pending = [write for write in self.pending if not write.done]
        if not self.pending:
            return False
        self.seen = {key: current[key] for key in self._keys()}
        # Contention is not an outage: a circuit breaker must not open on it.
        self.last_failure = StoreUnavailable(CONTENTION, outage=False)
        return True

    def _failed(self, failure: EtcdFailure, *, sent: bool, leases: Mapping[bool, int]) -> bool:
        """Take in a failed call; False once every write is decided."""
        STORE_EVENTS.write_attempt(FAILED, self.failures > 0)
        # Only a transaction that was sent can have committed; a failed
        # lease grant leaves nothing in doubt.
        self.outcome_unknown = self.outcome_unknown or (sent and failure.outcome_unknown)
        self.last_failure = failure
        if failure.lease_missing and sent:
            for remember, lease in leases.items():  # which one, etcd does not say
                self.c.leases[remember].forget(lease)
            return True
        if not failure.transient:
            if self.outcome_unknown:
                failure = EtcdFailure(
                    f"{failure.detail}; an earlier attempt's outcome is unknown",
                    retry_after=failure.retry_after,
                    transient=False,
                )
            self._fail_all(failure)
            return False
        return True

    def _retries_at_once(self) -> int:
        """How many failed attempts in a row are retried without a pause.

        A refusal brings fresh values; a failed call brings nothing new.
        """
        return 1 if isinstance(self.last_failure, EtcdFailure) else CONFLICT_RETRIES_AT_ONCE

    def _merged(self) -> dict[str, Stats]:
        """Each key's record as seen, merged with the deltas of every pending write."""
        merged = {key: seen.stats for key, seen in self.seen.items()}
        for write in self.pending:
            for update in _to_apply(write):
                merged[update.key] = merged.get(update.key, EMPTY).merge(update.delta)
        return merged

    def _keys(self) -> list[str]:
        return sorted({update.key for write in self.pending for update in _to_apply(write)})

    def _succeed(self, writes: Sequence[PendingWrite]) -> None:
        for write in writes:
            write.succeed()
        self.pending = [write for write in self.pending if not write.done]

    def _fail_all(self, error: StoreUnavailable) -> None:
        for write in self.pending:
            write.fail(error)
        self.pending = []

    def _timeout(self) -> float:
        """One call's timeout: the configured one, cut to what is left of the deadline."""
        return min(self.c.call_timeout, self.deadline - time.monotonic())

    def _back_off(self) -> None:
        cap = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (self.failures - 1))
        delay = random.uniform(0, cap)  # noqa: S311
        time.sleep(max(0.0, min(delay, self.deadline - time.monotonic() - MIN_ATTEMPT_SECONDS)))
        if isinstance(self.last_failure, EtcdFailure):
            return  # nothing was compared: the values seen are not the problem
        timeout = self._timeout()
        if timeout < MIN_ATTEMPT_SECONDS:
            return
        keys = list(self.seen)
        try:
            response = self.c.client.txn(read_txn(keys), timeout)
        except EtcdFailure:
            return  # the next attempt finds out, and reads in its failure branch
        current = read_answer(keys, response)
        self.c.cache.update(current.items())
        self.seen = current

    def _deadline_passed(self) -> StoreUnavailable:
        failure = self.last_failure
        reason = failure.detail if failure else "no attempt could start"
        retry_after = failure.retry_after if failure else 1
        timeout = self.c.write_timeout
        outage = failure.outage if failure else True
        if self.outcome_unknown:
            return StoreUnavailable(
                f"the outcome is unknown: etcd did not confirm within the write deadline "
                f"({timeout:g} s) whether the update was applied ({reason})",
                retry_after,
                outage=outage,
            )
        return StoreUnavailable(
            f"the update was not applied within the write deadline ({timeout:g} s): {reason}",
            retry_after,
            outage=outage,
        )


def _to_apply(write: PendingWrite) -> Sequence[Update]:
    """The updates of `write` still to apply: a keyed write's covered sensors are not."""
    return write.updates if write.keyed is None else write.keyed.uncovered(write.updates)
