"""Reads started on the event loop, before a GET reaches a worker thread.

A ``GET /statistics/{id}`` needs one thing from a shared store: a
linearizable read of one key. The server starts that read as soon as the
request is complete, on the event loop, and hands the request to a worker
thread only once the answer is in; the worker then runs the app as usual,
and the store's `get` takes the answer that was read for this request
(`READ_AHEAD`) instead of reading again. So no worker thread sits waiting
for etcd: while etcd is slow, GETs wait as connections, not as threads, and
POSTs and DELETEs keep the workers; and a GET costs no more thread hand-offs
than one on the embedded store.

The read was sent after the request arrived, so it sees every write
acknowledged before that: the answer is exactly as fresh as one read by the
worker itself. A store that reads from memory starts no reads ahead.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Generic, TypeVar

V = TypeVar("V")


class ReadAhead(Generic[V]):
    """The read of one store key for one request; settled once, by the store."""

    __slots__ = ("_error", "_ready", "_settled", "_value", "deadline", "key")

    def __init__(self, key: str, deadline: float, ready: Callable[[ReadAhead[V]], None]) -> None:
        self.key = key
        self.deadline = deadline  # monotonic; the store fails it if it cannot be sent by then
        self._ready = ready
        self._value: V | None = None
        self._error: BaseException | None = None
        self._settled = False

    def settle(self, value: V | None, error: BaseException | None) -> None:
        """Record the read's outcome, then let the request go on: ``ready(self)``."""
        self._value = value
        self._error = error
        self._settled = True
        self._ready(self)

    def result(self) -> V:
        """The value read; raises the read's error if it failed."""
        if not self._settled:
            raise RuntimeError(f"the read ahead of {self.key!r} was used before it settled")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # settled without error: a value


# What a read calls once settled, with itself: lets its request go on.
Ready = Callable[[ReadAhead[Any]], None]

# The read started for the request this thread is serving, if any: set by
# the server's task around the app, read by the store's `get`.
READ_AHEAD: ContextVar[ReadAhead[Any] | None] = ContextVar("read_ahead", default=None)
