"""Where statistics are kept: the `Store` protocol every backend implements."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from sensorstats.core.idempotency import IdempotencyKey
from sensorstats.core.stats import Stats
from sensorstats.store.ahead import ReadAhead, Ready, WriteAhead


class Store(Protocol):
    """A keeper of per-sensor statistics.

    Implementations raise `sensorstats.core.errors.StoreUnavailable` when they
    cannot answer now; every other exception is a bug.
    """

    description: str  # for the start-up log line: what and where
    # Whether `read_ahead` and `write_ahead` may ever start a call: if not,
    # the server does not prepare them (a write ahead parses the body).
    calls_ahead: bool

    def apply(self, deltas: Mapping[str, Stats], key: IdempotencyKey | None = None) -> None:
        """Merge each sensor's delta into its statistics, all or nothing where possible.

        When this returns, every later `get` on any instance sees the result.
        With an idempotency `key`, a batch already applied under that key (same
        fingerprint, within the idempotency window) is not applied again, and
        one applied with another fingerprint raises `IdempotencyKeyReused`.

        While `sensorstats.store.ahead.AHEAD` holds a settled write of these very
        `deltas` (the same object), started by `write_ahead` for the same
        request, its outcome: the batch is never written twice.
        """

    def get(self, sensor: str) -> Stats:
        """The sensor's current statistics (`stats.EMPTY` if none), linearizable.

        While `sensorstats.store.ahead.AHEAD` holds a settled read of this
        sensor's, started by `read_ahead` for the same request, its answer.
        """

    def read_ahead(self, sensor: str, ready: Ready) -> ReadAhead[Any] | None:
        """Start reading `sensor` for the `get` its request will make; None if pointless.

        The read calls ``ready(read)`` once settled, from any thread, and is used by
        the `get` made while `AHEAD` holds it. None: the store reads from
        memory, or should not be asked now; the `get` then reads by itself.
        """

    def write_ahead(self, deltas: Mapping[str, Stats], ready: Ready) -> WriteAhead | None:
        """Start applying `deltas` (no idempotency key) for its request's `apply`; None: not now.

        The write calls ``ready(write)`` once settled, from any thread; the
        `apply` of the same `deltas` made while `AHEAD` holds it takes its
        outcome. Never blocks. None: the store writes to memory, the batch
        is too large for one transaction, or the store should not be asked
        now; the `apply` then writes by itself.
        """

    def delete(self, sensor: str) -> None:
        """Forget the sensor's statistics; a no-op for an unknown sensor."""

    def check(self) -> None:
        """Return if the store answers now, quickly; raise StoreUnavailable otherwise."""

    def close(self) -> None:
        """Release connections and threads; the store is not used afterwards."""
