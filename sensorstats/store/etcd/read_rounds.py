"""Linearizable reads shared by concurrent GETs, without giving up linearizability.

Every read joins the next *unsent* round; one sender thread sends the rounds
one after the other, each as one read of all its keys, and hands every
reader of a round its answer. While a round is in flight the next one
gathers everybody who arrives meanwhile, so under load a round carries many
reads and an idle store sends each at once.

A read may serve a GET only if it was sent after the GET arrived: joining
only rounds not yet sent guarantees exactly that, as etcd's own ReadIndex
loop swaps in a fresh notifier before it sends. (Sharing a read already in
flight, as Go's singleflight does, could answer with a state older than a
write acknowledged before the GET arrived.)

Two kinds of readers: a thread calling `get`, which waits for its round,
and a `StartedRead` (see `sensorstats.store.calls`), which waits for nothing:
the sender settles it, and it tells its request to go on. Every reader has a
deadline, `timeout` seconds after it joined: a thread gives up waiting then,
and a read ahead still unsent then is failed instead of sent. A round all
of whose readers gave up is not sent. A round's keys are bounded by
`max_keys` (etcd's operations per transaction).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from sensorstats.core.errors import StoreUnavailable
from sensorstats.store.calls import StartedCall, StartedRead

# How long `close` waits for a round in flight to be answered.
CLOSE_SECONDS = 1.0

V = TypeVar("V")

_log = logging.getLogger(__name__)


class _Round(Generic[V]):
    __slots__ = ("ahead", "done", "error", "keys", "readers", "results", "wakeup")

    def __init__(self, lock: threading.Lock) -> None:
        self.keys: dict[str, None] = {}  # insertion-ordered set
        self.readers = 0  # threads still waiting for it in `get`
        self.ahead: list[StartedRead[Any]] = []  # reads started early, waiting for it
        self.results: Mapping[str, V] = {}
        self.error: BaseException | None = None
        self.done = False
        # Its threads wait here, on the lock shared by every round, so an
        # answer wakes only the readers it serves.
        self.wakeup = threading.Condition(lock)

    def wanted(self) -> bool:
        return bool(self.readers or self.ahead)


class ReadRounds(Generic[V]):
    """Reads keys in shared rounds; see the module docstring."""

    def __init__(
        self,
        read: Callable[[Sequence[str]], Mapping[str, V]],
        *,
        max_keys: int,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        name: str = "store-reads",
    ) -> None:
        self._read = read
        self._max_keys = max_keys
        self._timeout = timeout
        self._clock = clock
        # Guards the unsent rounds, every round's state and `_closed`.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the sender waits here for a round
        self._unsent: deque[_Round[V]] = deque()
        self._closed = False
        self._sender = threading.Thread(target=self._send_rounds, name=name, daemon=True)
        self._sender.start()

    def get(self, key: str) -> V:
        """The value of `key` as read by a round sent after this call began."""
        deadline = self._clock() + self._timeout
        with self._lock:
            joined = self._join(key)
            joined.readers += 1
            while not joined.done:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    joined.readers -= 1
                    self._drop_if_unwanted(joined)
                    raise self._timed_out()
                joined.wakeup.wait(remaining)
        if joined.error is not None:
            raise joined.error
        return joined.results[key]

    def start_read(
        self,
        sensor: str,
        key: str,
        ready: Callable[[StartedCall[Any]], None],
        convert: Callable[[V], Any],
    ) -> StartedRead[Any]:
        """Read `key` in the next round; the sender settles the result, then calls `ready`.

        The call's value is ``convert(value read)``. Once the rounds are
        closed the read fails at once, `ready` called here.
        """
        ahead: StartedRead[Any] = StartedRead(
            sensor, key, self._clock() + self._timeout, ready, convert
        )
        try:
            with self._lock:
                self._join(key).ahead.append(ahead)
        except StoreUnavailable as closed:
            _settle(ahead, None, closed)
        return ahead

    def close(self) -> None:
        """Stop the sender; readers of rounds not sent learn that the store closed."""
        with self._lock:
            self._closed = True
            self._work.notify()
        self._sender.join(CLOSE_SECONDS)

    def _join(self, key: str) -> _Round[V]:
        """The unsent round that will read `key`, the sender told (lock held)."""
        if self._closed:
            raise StoreUnavailable("the store is closed", retry_after=1)
        for waiting in self._unsent:
            if key in waiting.keys:
                return waiting
        if not self._unsent or len(self._unsent[-1].keys) >= self._max_keys:
            self._unsent.append(_Round(self._lock))
            self._work.notify()
        joined = self._unsent[-1]
        joined.keys[key] = None
        return joined

    def _drop_if_unwanted(self, joined: _Round[V]) -> None:
        """A round nobody waits for any more is not sent (lock held)."""
        if not joined.wanted() and joined in self._unsent:
            self._unsent.remove(joined)

    def _timed_out(self) -> StoreUnavailable:
        return StoreUnavailable(
            f"etcd did not answer the read within {self._timeout:g} s", retry_after=2
        )

    # --- the sender thread -------------------------------------------------

    def _send_rounds(self) -> None:
        while True:
            with self._lock:
                while not self._unsent and not self._closed:
                    self._work.wait()
                if self._closed:
                    break
                leading = self._unsent.popleft()
                now = self._clock()
                expired = [ahead for ahead in leading.ahead if ahead.deadline <= now]
                leading.ahead = [ahead for ahead in leading.ahead if ahead.deadline > now]
            for ahead in expired:
                _settle(ahead, None, self._timed_out())
            self._send(leading)
        self._fail_unsent(StoreUnavailable("the store is closed", retry_after=1))

    def _send(self, leading: _Round[V]) -> None:
        results: Mapping[str, V] = {}
        error: BaseException | None = None
        with self._lock:
            wanted = leading.wanted()
        if wanted:
            try:
                results = self._read(list(leading.keys))
            except Exception as failure:  # every reader of the round learns it
                error = failure
        self._answer(leading, results, error)

    def _answer(
        self, leading: _Round[V], results: Mapping[str, V], error: BaseException | None
    ) -> None:
        with self._lock:
            leading.results = results
            leading.error = error
            leading.done = True
            leading.wakeup.notify_all()
            ahead = leading.ahead
        for each in ahead:
            _settle(each, None if error else results[each.key], error)

    def _fail_unsent(self, error: StoreUnavailable) -> None:
        with self._lock:
            unsent = list(self._unsent)
            self._unsent.clear()
        for leading in unsent:
            self._answer(leading, {}, error)


def _settle(ahead: StartedRead[Any], value: V | None, error: BaseException | None) -> None:
    try:
        ahead.settle(value, error)
    except Exception:  # the sender serves every other reader whatever one of them does
        _log.exception("a read ahead could not go on with its request")
