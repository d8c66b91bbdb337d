"""Linearizable reads shared by concurrent GETs, without giving up linearizability.

A GET joins the next *unsent* round of reads; when no more than
`max_in_flight - 1` rounds are in flight, one of the round's own readers
sends it as one read of all its keys and wakes the others with the answer.
A read may serve a GET only if it was sent after the GET arrived: joining
only rounds not yet sent guarantees exactly that, as etcd's own ReadIndex
loop swaps in a fresh notifier before it sends. (Sharing a read already in
flight, as Go's singleflight does, could answer with a state older than a
write acknowledged before the GET arrived.)

Every reader waits at most `timeout` seconds for its round; a round's keys
are bounded by `max_keys` (etcd's operations per transaction).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Generic, TypeVar

from sensorstats.errors import StoreUnavailable

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Round(Generic[K, V]):
    __slots__ = ("done", "error", "keys", "results")

    def __init__(self) -> None:
        self.keys: dict[K, None] = {}  # insertion-ordered set
        self.results: Mapping[K, V] = {}
        self.error: BaseException | None = None
        self.done = False


class ReadRounds(Generic[K, V]):
    """Reads keys in shared rounds; see the module docstring."""

    def __init__(
        self,
        read: Callable[[Sequence[K]], Mapping[K, V]],
        *,
        max_keys: int,
        max_in_flight: int,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._max_keys = max_keys
        self._max_in_flight = max_in_flight
        self._timeout = timeout
        self._clock = clock
        self._unsent: deque[_Round[K, V]] = deque()
        self._in_flight = 0
        # Guards the unsent rounds and the in-flight count; readers are woken
        # whenever a round is decided.
        self._changed = threading.Condition(threading.Lock())

    def get(self, key: K) -> V:
        """The value of `key` as read by a round sent after this call began."""
        deadline = self._clock() + self._timeout
        with self._changed:
            joined = self._join(key)
        while not joined.done:
            leading = self._lead_or_wait(joined, deadline)
            if leading is not None:
                self._send(leading)
        if joined.error is not None:
            raise joined.error
        return joined.results[key]

    def _lead_or_wait(self, joined: _Round[K, V], deadline: float) -> _Round[K, V] | None:
        """The oldest unsent round, for this thread to send, or None after a wait."""
        with self._changed:
            if joined.done:
                return None
            if self._in_flight < self._max_in_flight and self._unsent:
                # The oldest first, even if it is not this reader's own: its
                # readers may have given up, and rounds go out in order.
                self._in_flight += 1
                return self._unsent.popleft()
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise StoreUnavailable(
                    f"etcd did not answer the read within {self._timeout:g} s", retry_after=2
                )
            self._changed.wait(remaining)
            return None

    def _join(self, key: K) -> _Round[K, V]:
        """The unsent round that will read `key` (lock held)."""
        for waiting in self._unsent:
            if key in waiting.keys:
                return waiting
        if not self._unsent or len(self._unsent[-1].keys) >= self._max_keys:
            self._unsent.append(_Round())
        joined = self._unsent[-1]
        joined.keys[key] = None
        return joined

    def _send(self, leading: _Round[K, V]) -> None:
        try:
            leading.results = self._read(list(leading.keys))
        except BaseException as error:  # every reader of the round learns it
            leading.error = error
        finally:
            with self._changed:
                leading.done = True
                self._in_flight -= 1
                self._changed.notify_all()
