"""Where statistics are kept: the `Store` protocol every backend implements."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from sensorstats.idempotency import IdempotencyKey
from sensorstats.read_ahead import ReadAhead, Ready
from sensorstats.stats import Stats


class Store(Protocol):
    """A keeper of per-sensor statistics.

    Implementations raise `sensorstats.errors.StoreUnavailable` when they
    cannot answer now; every other exception is a bug.
    """

    description: str  # for the start-up log line: what and where

    def apply(self, deltas: Mapping[str, Stats], key: IdempotencyKey | None = None) -> None:
        """Merge each sensor's delta into its statistics, all or nothing where possible.

        When this returns, every later `get` on any instance sees the result.
        With an idempotency `key`, a batch already applied under that key (same
        fingerprint, within the idempotency window) is not applied again, and
        one applied with another fingerprint raises `IdempotencyKeyReused`.
        """

    def get(self, sensor: str) -> Stats:
        """The sensor's current statistics (`stats.EMPTY` if none), linearizable.

        While `sensorstats.read_ahead.READ_AHEAD` holds a settled read of this
        sensor's, started by `read_ahead` for the same request, its answer.
        """

    def read_ahead(self, sensor: str, ready: Ready) -> ReadAhead[Any] | None:
        """Start reading `sensor` for the `get` its request will make; None if pointless.

        The read calls ``ready(read)`` once settled, from any thread, and is used by
        the `get` made while `READ_AHEAD` holds it. None: the store reads from
        memory, or should not be asked now; the `get` then reads by itself.
        """

    def delete(self, sensor: str) -> None:
        """Forget the sensor's statistics; a no-op for an unknown sensor."""

    def check(self) -> None:
        """Return if the store answers now, quickly; raise StoreUnavailable otherwise."""

    def close(self) -> None:
        """Release connections and threads; the store is not used afterwards."""
