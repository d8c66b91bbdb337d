"""Where statistics are kept: the `Store` protocol every backend implements."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from sensorstats.core.idempotency import IdempotencyKey
from sensorstats.core.stats import Stats
from sensorstats.store.calls import Ready, StartedRead, StartedWrite


class Store(Protocol):
    """A keeper of per-sensor statistics.

    Implementations raise `sensorstats.core.errors.StoreUnavailable` when they
    cannot answer now; every other exception is a bug.
    """

    description: str  # for the start-up log line: what and where
    # Whether `start_get` and `start_apply` may ever start a call: if not,
    # the server does not prepare them (starting a write parses the body).
    starts_calls: bool

    def apply(self, deltas: Mapping[str, Stats], key: IdempotencyKey | None = None) -> None:
        """Merge each sensor's delta into its statistics, all or nothing where possible.

        When this returns, every later `get` on any instance sees the result.
        With an idempotency `key`, a batch already applied under that key (same
        fingerprint, within the idempotency window) is not applied again, and
        one applied with another fingerprint raises `IdempotencyKeyReused`.
        """

    def get(self, sensor: str) -> Stats:
        """The sensor's current statistics (`stats.EMPTY` if none), linearizable."""

    def start_get(self, sensor: str, ready: Ready) -> StartedRead[Stats] | None:
        """Start the `get` of `sensor` without waiting for it; None: not worth it, or not now.

        The call calls ``ready(call)`` once settled, from any thread (or
        before this returns); its `result` is what `get` would return. None:
        the store reads from memory, or should not be asked now; the caller
        then calls `get`. Never blocks.
        """

    def start_apply(self, deltas: Mapping[str, Stats], ready: Ready) -> StartedWrite | None:
        """Start the `apply` of `deltas` (no idempotency key) without waiting; None: not now.

        As `start_get`. None: the store writes to memory, the batch needs
        more than one transaction, or the store should not be asked now;
        the caller then calls `apply`. Never blocks.
        """

    def delete(self, sensor: str) -> None:
        """Forget the sensor's statistics; a no-op for an unknown sensor."""

    def check(self) -> None:
        """Return if the store answers now, quickly; raise StoreUnavailable otherwise."""

    def close(self) -> None:
        """Release connections and threads; the store is not used afterwards."""
