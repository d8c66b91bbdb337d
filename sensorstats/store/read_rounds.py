"""Linearizable reads shared by concurrent GETs, without giving up linearizability.

A GET joins the next *unsent* round of reads; when no more than
`max_in_flight - 1` rounds are in flight, one of the round's own readers
sends it as one read of all its keys and wakes the others with the answer.
A read may serve a GET only if it was sent after the GET arrived: joining
only rounds not yet sent guarantees exactly that, as etcd's own ReadIndex
loop swaps in a fresh notifier before it sends. (Sharing a read already in
flight, as Go's singleflight does, could answer with a state older than a
write acknowledged before the GET arrived.)

Every reader waits at most `timeout` seconds for its round; a round whose
readers all gave up is dropped unsent. A round's keys are bounded by
`max_keys` (etcd's operations per transaction). Readers sleep on their
round's own condition, so an answer wakes only the readers it serves. Under
load, a reader that finds no round in flight or waiting waits
`GATHER_SECONDS` for company before it sends.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Generic, TypeVar

from sensorstats.errors import StoreUnavailable
from sensorstats.store.gathering import Gathering

# While GETs keep arriving, a reader that finds no round in flight or waiting
# waits this long for others before it sends (see `gathering`).
GATHER_SECONDS = 0.003

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Round(Generic[K, V]):
    __slots__ = ("done", "error", "keys", "readers", "results", "wakeup")

    def __init__(self, lock: threading.Lock) -> None:
        self.keys: dict[K, None] = {}  # insertion-ordered set
        self.readers = 0  # still waiting for it
        self.results: Mapping[K, V] = {}
        self.error: BaseException | None = None
        self.done = False
        # Its readers wait here, on the lock shared by every round: one of
        # them is woken to send it, all of them when it is answered.
        self.wakeup = threading.Condition(lock)


class ReadRounds(Generic[K, V]):
    """Reads keys in shared rounds; see the module docstring."""

    def __init__(
        self,
        read: Callable[[Sequence[K]], Mapping[K, V]],
        *,
        max_keys: int,
        max_in_flight: int,
        timeout: float,
        gather: float = GATHER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._gathering = Gathering(gather, clock=clock)
        self._max_keys = max_keys
        self._max_in_flight = max_in_flight
        self._timeout = timeout
        self._clock = clock
        # Guards the unsent rounds, the in-flight count and every round's state.
        self._lock = threading.Lock()
        self._unsent: deque[_Round[K, V]] = deque()
        self._in_flight = 0

    def get(self, key: K) -> V:
        """The value of `key` as read by a round sent after this call began."""
        deadline = self._clock() + self._timeout
        with self._lock:
            joined = self._join(key)
            gather = self._gathering.arrive(
                alone=joined.readers == 1 and len(self._unsent) == 1 and not self._in_flight
            )
        if gather:
            try:
                time.sleep(gather)
            finally:  # never leave the others waiting for a sender that is gone
                with self._lock:
                    self._gathering.active = False
                    self._wake_next_sender()
        with self._lock:
            while not joined.done:
                if (
                    self._in_flight < self._max_in_flight
                    and not self._gathering.active
                    and self._unsent
                    and self._unsent[0] is joined
                ):
                    self._unsent.popleft()
                    self._in_flight += 1
                    self._wake_next_sender()
                    break
                remaining = deadline - self._clock()
                if remaining <= 0:
                    self._leave(joined)
                    raise StoreUnavailable(
                        f"etcd did not answer the read within {self._timeout:g} s", retry_after=2
                    )
                joined.wakeup.wait(remaining)
        if not joined.done:
            self._send(joined)
        if joined.error is not None:
            raise joined.error
        return joined.results[key]

    def _join(self, key: K) -> _Round[K, V]:
        """The unsent round that will read `key` (lock held)."""
        for waiting in self._unsent:
            if key in waiting.keys:
                waiting.readers += 1
                return waiting
        if not self._unsent or len(self._unsent[-1].keys) >= self._max_keys:
            self._unsent.append(_Round(self._lock))
        joined = self._unsent[-1]
        joined.keys[key] = None
        joined.readers += 1
        return joined

    def _leave(self, joined: _Round[K, V]) -> None:
        """A reader gives up; a round nobody waits for is not sent (lock held)."""
        joined.readers -= 1
        if not joined.readers and joined in self._unsent:
            self._unsent.remove(joined)
            self._wake_next_sender()

    def _wake_next_sender(self) -> None:
        """Wake one reader of the oldest unsent round if it may be sent now (lock held)."""
        if self._unsent and self._in_flight < self._max_in_flight:
            self._unsent[0].wakeup.notify()

    def _send(self, leading: _Round[K, V]) -> None:
        try:
            leading.results = self._read(list(leading.keys))
        except BaseException as error:  # every reader of the round learns it
            leading.error = error
        finally:
            with self._lock:
                leading.done = True
                self._in_flight -= 1
                leading.wakeup.notify_all()
                self._wake_next_sender()
