"""Group commit: concurrent writes in one instance share transactions.

A writer queues its `PendingWrite` and then either leads or waits. A thread
leads when fewer than `max_in_flight` transactions are in flight and the
oldest queued writes whose keys no transaction in flight touches can start:
it takes them, oldest first, as many as one transaction holds, runs them as
one batch outside the lock, and wakes everyone when the batch is decided.
Writes to a key already in flight wait for that transaction to finish, so an
instance never races itself for a key: a hot sensor costs one round trip for
all the requests that queued behind the previous one.

Each write keeps its own marker and learns its own outcome: the batch sets
it per write (`PendingWrite.succeed` / `fail`). Every wait has a deadline: a
write still queued when too little of its deadline is left to send an
attempt fails as "not applied" (nothing was sent); a write whose batch has
not finished shortly after its deadline reports its outcome as unknown.

Under load, a write that finds nothing queued or in flight waits
`GATHER_SECONDS` for company before it leads (PostgreSQL's commit_delay):
each transaction costs this instance and etcd far more CPU than one more
request in it. A write after a quiet spell never waits.

PostgreSQL's group commit and etcd's own proposal batching are the models:
the shared round stays small, and the waiting side holds one object and
reads its outcome from it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sensorstats.errors import StoreUnavailable
from sensorstats.store.etcd_txn import Update, key_cost, marker_cost
from sensorstats.store.gathering import Gathering

# An attempt that cannot be given this long is not sent: it could only time
# out and turn a request that was certainly not applied into an unknown one.
MIN_ATTEMPT_SECONDS = 0.05
# While writes keep arriving, a write that finds nothing queued or in flight
# waits this long for others before it sends (see `gathering`).
GATHER_SECONDS = 0.002
# How long past its deadline a write waits for the batch that carries it:
# every call of the batch ends by the batch's deadline, which is the
# earliest of its writes', so this only covers scheduling delays.
OUTCOME_GRACE_SECONDS = 1.0


class WakeUp:
    """A wake-up call for one waiting thread; `call` only under the combiner's lock.

    A plain lock, closed while nobody called: waiting is acquiring it, a
    call releases it. An `Event` would do the same with a condition and a
    second lock, which the woken thread must take again while the caller
    still holds it: on a busy machine one more context switch per wake-up.
    """

    __slots__ = ("_called", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._called = False  # released and not yet taken: a second call adds nothing

    def call(self) -> None:
        if not self._called:
            self._called = True
            self._lock.release()

    def wait(self, timeout: float) -> None:
        """Return when called (the call is then used up) or after `timeout` seconds.

        A call made between this return and the caller's next look at the
        shared state, under the lock, is lost; that look sees what it was
        about, so nothing is missed.
        """
        if self._lock.acquire(timeout=timeout):
            self._called = False


@dataclass(eq=False)
class PendingWrite:
    """One chunk of one request: its updates, its marker and, once known, its outcome."""

    updates: Sequence[Update]
    marker: str
    deadline: float
    # What the marker holds: the payload's fingerprint for a keyed request,
    # so that a retry with another payload is told apart; else nothing.
    fingerprint: bytes = b""
    remember: bool = False  # keyed: the marker lives for the idempotency window
    sent: bool = False  # taken into a batch; only the batch decides it from then on
    done: bool = False
    error: Exception | None = None
    keys: frozenset[str] = field(init=False)
    # Keys no other write may have in flight at the same time: the sensors,
    # and the marker, which two copies of a keyed request share.
    exclusive: frozenset[str] = field(init=False)
    ops: int = field(init=False)
    size: int = field(init=False)
    # Called to wake the writer's thread: its outcome is known, or it may lead.
    wake: WakeUp = field(init=False, default_factory=WakeUp)

    def __post_init__(self) -> None:
        self.keys = frozenset(update.key for update in self.updates)
        self.exclusive = self.keys | {self.marker}
        self.ops = len(self.keys) + 1  # the marker takes one operation
        self.size = sum(key_cost(key) for key in self.keys) + marker_cost(self.marker)

    def succeed(self) -> None:
        self.done = True

    def fail(self, error: Exception) -> None:
        if not self.done:
            self.error = error
            self.done = True


RunBatch = Callable[[list[PendingWrite]], None]


class WriteCombiner:
    """Queues writes and runs them in shared batches; see the module docstring."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_ops: int,
        max_bytes: int,
        max_in_flight: int,
        outcome_grace: float = OUTCOME_GRACE_SECONDS,
        gather: float = GATHER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run_batch = run_batch
        self._outcome_grace = outcome_grace
        self._gathering = Gathering(gather, clock=clock)
        self._max_ops = max_ops
        self._max_bytes = max_bytes
        self._max_in_flight = max_in_flight
        self._clock = clock
        self._queue: list[PendingWrite] = []  # oldest first
        self._busy: set[str] = set()  # keys of the batches in flight
        self._in_flight = 0
        # Guards the queue, the busy keys and the in-flight count. Waiters
        # sleep on their own `wake` event, so that a decided batch wakes its
        # own writers and one writer that can lead next, not every thread.
        self._lock = threading.Lock()

    def write(self, pending: PendingWrite) -> None:
        """Apply `pending` in some batch; raises StoreUnavailable with its own outcome."""
        with self._lock:
            self._queue.append(pending)
            gather = self._gathering.arrive(
                alone=len(self._queue) == 1 and not self._in_flight,
                room=pending.deadline - self._clock() - MIN_ATTEMPT_SECONDS,
            )
        if gather:
            try:
                time.sleep(gather)
            finally:  # never leave the others waiting for a leader that is gone
                with self._lock:
                    self._gathering.active = False
                    self._wake_next_leader(self._clock())
        while not pending.done:
            batch, wait = self._lead_or_wait(pending)
            if batch:
                self._run(batch)
            elif wait > 0:
                pending.wake.wait(wait)  # the state is checked again under the lock
        if pending.error is not None:
            raise pending.error

    def _lead_or_wait(self, pending: PendingWrite) -> tuple[list[PendingWrite], float]:
        """A batch for this thread to run, or how long to wait for a wake-up."""
        with self._lock:
            if pending.done:
                return [], 0.0
            now = self._clock()
            if not pending.sent:
                if pending.deadline - now < MIN_ATTEMPT_SECONDS:
                    self._queue.remove(pending)
                    pending.fail(_not_sent(pending))
                    return [], 0.0
                batch = self._take_batch(now)
                return batch, pending.deadline - now - MIN_ATTEMPT_SECONDS
            remaining = pending.deadline + self._outcome_grace - now
            if remaining <= 0:
                pending.fail(
                    StoreUnavailable(
                        "the outcome is unknown: etcd did not confirm in time whether "
                        "the update was applied",
                        retry_after=2,
                    )
                )
                return [], 0.0
            return [], remaining

    def _wake_next_leader(self, now: float) -> None:
        """Wake the oldest queued writer that could start a batch now (lock held)."""
        if self._in_flight >= self._max_in_flight:
            return
        for candidate in self._queue:
            if candidate.deadline - now >= MIN_ATTEMPT_SECONDS and candidate.exclusive.isdisjoint(
                self._busy
            ):
                candidate.wake.call()
                return

    def _take_batch(self, now: float) -> list[PendingWrite]:
        """The oldest queued writes that can start together now (lock held)."""
        if self._in_flight >= self._max_in_flight or self._gathering.active:
            return []
        batch: list[PendingWrite] = []
        keys: set[str] = set()
        ops = size = 0
        for candidate in self._queue:
            if candidate.deadline - now < MIN_ATTEMPT_SECONDS:
                continue  # its own thread fails it as not sent
            if not candidate.exclusive.isdisjoint(self._busy) or candidate.marker in keys:
                continue
            new_keys = candidate.keys - keys
            extra_ops = len(new_keys) + 1
            extra_size = sum(key_cost(k) for k in new_keys) + marker_cost(candidate.marker)
            if batch and (ops + extra_ops > self._max_ops or size + extra_size > self._max_bytes):
                continue
            batch.append(candidate)
            keys |= new_keys | {candidate.marker}
            ops += extra_ops
            size += extra_size
        if not batch:
            return []
        for write in batch:
            write.sent = True
            self._queue.remove(write)
        self._busy |= keys
        self._in_flight += 1
        self._wake_next_leader(now)  # writes left out for size may start alongside
        return batch

    def _run(self, batch: list[PendingWrite]) -> None:
        try:
            self._run_batch(batch)
            undecided = [write for write in batch if not write.done]
            if undecided:
                raise AssertionError(f"{len(undecided)} write(s) left undecided by a batch")
        except StoreUnavailable as error:
            for write in batch:
                write.fail(error)
        except BaseException:
            failure = StoreUnavailable(
                "the outcome is unknown: the update failed unexpectedly", retry_after=2
            )
            for write in batch:
                write.fail(failure)
            raise
        finally:
            with self._lock:
                for write in batch:
                    self._busy -= write.exclusive
                    write.wake.call()
                self._in_flight -= 1
                self._wake_next_leader(self._clock())


def _not_sent(pending: PendingWrite) -> StoreUnavailable:
    return StoreUnavailable(
        "the update was not applied: it waited for other writes to the same sensors "
        "until too little of its deadline was left to send it",
        retry_after=1,
    )
