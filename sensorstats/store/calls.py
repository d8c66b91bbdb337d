"""Store calls started early: a value the caller holds, settled once by the store.

Two requests need exactly one thing from a shared store, known from the
request alone: ``GET /statistics/{id}`` a linearizable read of one key
(`StartedRead`), and a small ``POST /data`` one compare-and-swap transaction
shared with the other posts in flight (`StartedWrite`). The server starts
that call on its event loop as soon as the request is in (`Store.start_get`,
`Store.start_apply`), hands the call to the app in the WSGI environ once it
is settled, and the resource takes the outcome from it (`result`) instead
of calling the store. No worker thread waits for etcd: while etcd is slow,
these requests wait as connections, not as threads.

A read sent after its request arrived sees every write acknowledged before
that: it is exactly as fresh as a read made by a worker. A write is made at
most once: the resource that holds a started write never writes again.
Wrappers (the circuit breaker, the metrics) observe a call by wrapping the
``ready`` callback it is started with, so its outcome is counted once, when
it settles, whoever takes it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from sensorstats.core.stats import Stats

V = TypeVar("V")


class StartedCall(Generic[V]):
    """One store call made for one request; settled once, by the store."""

    __slots__ = ("_error", "_ready", "_settled", "_value", "deadline")

    def __init__(self, deadline: float, ready: Callable[[StartedCall[V]], None]) -> None:
        self.deadline = deadline  # monotonic; the store fails it if it cannot be sent by then
        self._ready = ready
        self._value: V | None = None
        self._error: BaseException | None = None
        self._settled = False

    def settle(self, value: V | None, error: BaseException | None) -> None:
        """Record the call's outcome, then let the request go on: ``ready(self)``."""
        self._value = value
        self._error = error
        self._settled = True
        self._ready(self)

    @property
    def error(self) -> BaseException | None:
        """The error the call failed with; None if it succeeded (or has not settled)."""
        return self._error

    def result(self) -> V:
        """The call's value; raises the call's error if it failed."""
        if not self._settled:
            raise RuntimeError(f"{self!r} was used before it settled")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # settled without error: a value


class StartedRead(StartedCall[V]):
    """The read of one sensor's record for one ``GET``; `result` is its `Stats`."""

    __slots__ = ("_convert", "key", "sensor")

    def __init__(
        self,
        sensor: str,
        key: str,
        deadline: float,
        ready: Callable[[StartedCall[V]], None],
        convert: Callable[[Any], V] | None = None,
    ) -> None:
        super().__init__(deadline, ready)
        self.sensor = sensor  # as the request named it
        self.key = key  # as the store keeps it
        self._convert = convert

    def settle(self, value: Any, error: BaseException | None) -> None:
        if error is None and self._convert is not None:
            value = self._convert(value)
        super().settle(value, error)

    def __repr__(self) -> str:
        return f"<started read of {self.key!r}>"


class StartedWrite(StartedCall[None]):
    """The write of one ``POST``'s batch, as `parse_batch` made it; its value is None."""

    __slots__ = ("batch",)

    def __init__(
        self,
        batch: Mapping[str, Stats],
        deadline: float,
        ready: Callable[[StartedCall[None]], None],
    ) -> None:
        super().__init__(deadline, ready)
        self.batch = batch

    def __repr__(self) -> str:
        return f"<started write of {len(self.batch)} sensor(s)>"


# What a call calls once settled, with itself: lets its request go on.
Ready = Callable[[StartedCall[Any]], None]
