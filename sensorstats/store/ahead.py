"""Store calls started on the event loop, before the app serves their request.

Two requests need exactly one thing from a shared store, known from the
request alone:

- ``GET /statistics/{id}``: a linearizable read of one key (`ReadAhead`);
- ``POST /data`` with a small batch: one compare-and-swap transaction,
  shared with the other posts in flight (`WriteAhead`).

The server starts that call as soon as the request is complete, on the event
loop, and serves the request (on the loop too) only once the call is
settled; the app then runs as usual, and the store's `get` or `apply` takes
the outcome settled for this request (`AHEAD`) instead of calling again. So
no worker thread sits waiting for etcd, or is even woken: while etcd is
slow, these requests wait as connections, not as threads.

A read was sent after its request arrived, so it sees every write
acknowledged before that: the answer is exactly as fresh as one read by a
worker. A write is made at most once: the `apply` that finds a write ahead
in `AHEAD` takes its outcome and never writes again. What starts a call
ahead must refuse exactly what the app would refuse before its store call,
or not start it (`sensorstats.web.resources`). A store that keeps its data in
memory starts nothing ahead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from sensorstats.core.stats import Stats

V = TypeVar("V")


class Ahead(Generic[V]):
    """One store call made for one request; settled once, by the store."""

    __slots__ = ("_error", "_ready", "_settled", "_value", "deadline")

    def __init__(self, deadline: float, ready: Callable[[Ahead[V]], None]) -> None:
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

    def result(self) -> V:
        """The call's value; raises the call's error if it failed."""
        if not self._settled:
            raise RuntimeError(f"{self!r} was used before it settled")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # settled without error: a value


class ReadAhead(Ahead[V]):
    """The read of one store key for one ``GET``."""

    __slots__ = ("key",)

    def __init__(self, key: str, deadline: float, ready: Callable[[Ahead[V]], None]) -> None:
        super().__init__(deadline, ready)
        self.key = key

    def __repr__(self) -> str:
        return f"<read ahead of {self.key!r}>"


class WriteAhead(Ahead[None]):
    """The write of one ``POST``'s batch, as `parse_batch` made it; its value is None."""

    __slots__ = ("batch",)

    def __init__(
        self, batch: Mapping[str, Stats], deadline: float, ready: Callable[[Ahead[None]], None]
    ) -> None:
        super().__init__(deadline, ready)
        self.batch = batch

    def __repr__(self) -> str:
        return f"<write ahead of {len(self.batch)} sensor(s)>"


# What a call calls once settled, with itself: lets its request go on.
Ready = Callable[[Ahead[Any]], None]

# The call started for the request this thread is serving, if any: set by
# the server's task around the app, taken by the store's `get` or `apply`.
AHEAD: ContextVar[Ahead[Any] | None] = ContextVar("ahead", default=None)


class ReceivedRequest(Protocol):
    """A request completely received by the server, as an `AheadRoute` sees it."""

    command: str  # the method
    path: str  # decoded, as WSGI's PATH_INFO
    headers: Mapping[str, str]  # names upper-cased, "-" as "_" (CGI style): "IDEMPOTENCY_KEY"

    @property
    def body_length(self) -> int:
        """The length of the body as received (de-chunked)."""

    def body(self) -> bytes:
        """The whole body, read without consuming it: the app can still read it."""


class AheadRoute(Protocol):
    """Which requests get their store call started on the event loop."""

    def start(self, request: ReceivedRequest, ready: Ready) -> bool:
        """Start the call for `request` if it is one of this route's; False: none started.

        Runs on the event loop: must not block. ``ready`` may be called
        before this returns (a call that fails at once).
        """
