"""Group commit: concurrent writes in one instance share transactions.

A writer queues its `PendingWrite` and then either leads or waits. A thread
leads when fewer than `max_in_flight` transactions are in flight and the
oldest queued writes whose keys no transaction in flight touches can start:
it takes them, oldest first, as many as one transaction holds (etcd's
operations per transaction, and about 1 MiB), runs them as one batch
outside the lock (`writes`, which merges their deltas per sensor), and
wakes everyone when the batch is decided. The store keeps one transaction
in flight: each gRPC call costs far more than one more write in it.
Writes to a key already in flight wait for that transaction to finish, so an
instance never races itself for a key: a hot sensor costs one round trip for
all the requests that queued behind the previous one.

Each write keeps its own marker and learns its own outcome: the batch sets
it per write (`PendingWrite.succeed` / `fail`): a failure, an unknown
outcome or a marker found reaches exactly the writes it concerns. Every wait
has a deadline: a write still queued when less than `MIN_ATTEMPT_SECONDS`
of its deadline is left fails as "not applied" without being sent (an
attempt with a shorter timeout could only turn a certain answer into an
unknown one); a write whose batch has not finished shortly after its
deadline reports its outcome as unknown.

A write may also be queued by a thread that must not wait, the server's
event loop (`write_ahead`, see `sensorstats.store.calls`): it is told its outcome
by a callback, and the combiner's own committer thread leads the batches
that such writes need, with the same rules. Queued with the others, these
writes share their transactions, whichever thread leads. The committer fails
a write ahead that is still queued when its deadline comes; while it leads a
batch itself, it looks when that batch ends, which is by the batch's
deadline: the earliest of its writes', all made with the same timeout
before the writes queued behind them.

Under load, a write that finds nothing queued or in flight waits
`GATHER_SECONDS` for company before it leads (PostgreSQL's commit_delay):
each transaction costs this instance and etcd far more CPU than one more
request in it. A write after a quiet spell never waits.

PostgreSQL's group commit and etcd's own proposal batching are the models:
the shared round stays small, and the waiting side holds one object and
reads its outcome from it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sensorstats.core.errors import StoreUnavailable
from sensorstats.store.etcd.gathering import Gathering
from sensorstats.store.etcd.keyed import KeyedRequest
from sensorstats.store.etcd.txn import Update, key_cost, marker_cost, range_guard_cost

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
# How long the committer thread sleeps when no write ahead is queued: it is
# woken for each one, so this only bounds how late it notices a close.
COMMITTER_IDLE_SECONDS = 1.0

_log = logging.getLogger(__name__)


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


@dataclass(eq=False, slots=True)
class PendingWrite:
    """One chunk of one request: its updates, its markers and, once known, its outcome.

    Unkeyed, its one marker is `marker`, unique to this request. Keyed, `marker`
    is the request's key marker and `keyed` adds one marker per sensor and
    the guards (see `keyed`); the markers then live for the idempotency window.
    """

    updates: Sequence[Update]
    marker: str
    deadline: float
    keyed: KeyedRequest | None = None
    sent: bool = False  # taken into a batch; only the batch decides it from then on
    done: bool = False
    error: Exception | None = None
    keys: frozenset[str] = field(init=False)
    markers: frozenset[str] = field(init=False)
    # Keys no other write may have in flight at the same time: the sensors,
    # and the markers, which two copies of a keyed request share.
    exclusive: frozenset[str] = field(init=False)
    # Operations per list of a transaction beyond the sensor keys, and their bytes.
    marker_ops: int = field(init=False)
    marker_size: int = field(init=False)
    ops: int = field(init=False)
    size: int = field(init=False)
    # Called to wake the writer's thread: its outcome is known, or it may lead.
    # Given when the write is queued: its own for `write`; a write ahead
    # shares the committer's, and is told its outcome by `decided`.
    wake: WakeUp = field(init=False)
    decided: Callable[[], None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.keys = frozenset(update.key for update in self.updates)
        markers = {self.marker}
        if self.keyed is not None:
            markers |= {self.keyed.sensor_marker(key) for key in self.keys}
        self.markers = frozenset(markers)
        self.exclusive = self.keys | self.markers
        # Each marker takes one operation; a keyed write's range guard one more.
        # (Its value guard, once the key marker exists, replaces that marker's put.)
        guards = 0 if self.keyed is None else 1
        self.marker_ops = len(self.markers) + guards
        guard_size = 0 if self.keyed is None else range_guard_cost(*self.keyed.legacy_range)
        self.marker_size = sum(map(marker_cost, self.markers)) + guard_size
        self.ops = len(self.keys) + self.marker_ops
        self.size = sum(key_cost(key) for key in self.keys) + self.marker_size

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
        # Leads for the writes ahead; started with the first of them.
        self._committer: threading.Thread | None = None
        self._committer_wake = WakeUp()
        self._closed = False

    def write(self, pending: PendingWrite) -> None:
        """Apply `pending` in some batch; raises StoreUnavailable with its own outcome."""
        pending.wake = WakeUp()
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

    def write_ahead(self, pending: PendingWrite, decided: Callable[[], None]) -> None:
        """Queue `pending` and return at once; `decided()` is called once it has its outcome.

        Never blocks, so the event loop may call it. The committer thread, or
        a writer leading meanwhile, sends it in a batch; the committer fails
        it as not sent when its deadline comes first. `decided` is called
        from the thread that decided it, or here if the combiner is closed.
        """
        pending.wake = self._committer_wake
        pending.decided = decided
        with self._lock:
            if not self._closed:
                self._queue.append(pending)
                if self._committer is None:
                    self._committer = threading.Thread(
                        target=self._commit_ahead, name="etcd-writes", daemon=True
                    )
                    self._committer.start()
                self._wake_next_leader(self._clock())
                return
        pending.fail(_closed())
        _tell(pending)

    def close(self, timeout: float) -> None:
        """Fail the writes ahead still queued and stop the committer, within `timeout` s.

        A batch in flight still ends by its own deadline, and its writes learn
        their outcome; writes not yet sent are failed as not applied.
        """
        with self._lock:
            self._closed = True
            self._committer_wake.call()
            committer = self._committer
            unsent = self._drop_ahead(lambda write: True, _closed())
        for write in unsent:
            _tell(write)
        if committer is not None:
            committer.join(timeout)

    def _commit_ahead(self) -> None:
        """The committer thread: leads batches while writes ahead are queued."""
        while True:
            batch, wait, decided = self._lead_ahead()
            for write in decided:
                _tell(write)
            if batch is None:
                return
            if batch:
                try:
                    self._run(batch)
                except Exception:  # its writes are failed; the committer goes on
                    _log.exception("a shared write transaction failed unexpectedly")
            else:
                self._committer_wake.wait(wait)

    def _lead_ahead(self) -> tuple[list[PendingWrite] | None, float, list[PendingWrite]]:
        """A batch for the committer (None: stop), how long to wait, and writes now decided."""
        with self._lock:
            if self._closed:
                return None, 0.0, []
            now = self._clock()
            decided = self._drop_ahead(lambda w: w.deadline - now < MIN_ATTEMPT_SECONDS, None)
            waiting = [write.deadline for write in self._queue if write.decided is not None]
            if not waiting:
                return [], COMMITTER_IDLE_SECONDS, decided
            return self._take_batch(now), min(waiting) - now - MIN_ATTEMPT_SECONDS, decided

    def _drop_ahead(
        self, which: Callable[[PendingWrite], bool], error: StoreUnavailable | None
    ) -> list[PendingWrite]:
        """Fail the queued writes ahead `which` picks, with `error` or as not sent (lock held).

        Returns them, to be told outside the lock.
        """
        dropped = [w for w in self._queue if w.decided is not None and which(w)]
        for write in dropped:
            self._queue.remove(write)
            write.fail(error or _not_sent(write))
        return dropped

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
            if not candidate.exclusive.isdisjoint(self._busy) or not candidate.markers.isdisjoint(
                keys
            ):
                continue
            new_keys = candidate.keys - keys
            extra_ops = len(new_keys) + candidate.marker_ops
            extra_size = sum(key_cost(k) for k in new_keys) + candidate.marker_size
            if batch and (ops + extra_ops > self._max_ops or size + extra_size > self._max_bytes):
                continue
            batch.append(candidate)
            keys |= new_keys | candidate.markers
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
                    if write.decided is None:
                        write.wake.call()
                self._in_flight -= 1
                self._wake_next_leader(self._clock())
            for write in batch:
                if write.decided is not None:
                    _tell(write)


def _tell(write: PendingWrite) -> None:
    """Let a write ahead's request go on with its outcome."""
    assert write.decided is not None
    try:
        write.decided()
    except Exception:  # every other write of the batch is told whatever this one does
        _log.exception("a write ahead could not go on with its request")


def _closed() -> StoreUnavailable:
    return StoreUnavailable(
        "the update was not applied: the instance is shutting down", retry_after=1
    )


def _not_sent(pending: PendingWrite) -> StoreUnavailable:
    return StoreUnavailable(
        "the update was not applied: it waited for other writes to the same sensors "
        "until too little of its deadline was left to send it",
        retry_after=1,
    )
