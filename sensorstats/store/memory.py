"""The embedded store: one process's memory, for a single instance."""

from __future__ import annotations

import threading
from collections.abc import Mapping

from sensorstats.stats import EMPTY, Stats


class MemoryStore:
    """A dict behind a lock: every `apply` is atomic and immediately visible."""

    description = "embedded in-memory store (single instance only; data is lost on exit)"

    def __init__(self) -> None:
        self._stats: dict[str, Stats] = {}
        self._lock = threading.Lock()

    def apply(self, deltas: Mapping[str, Stats]) -> None:
        with self._lock:
            for sensor, delta in deltas.items():
                self._stats[sensor] = self._stats.get(sensor, EMPTY).merge(delta)

    def get(self, sensor: str) -> Stats:
        # No lock: values are immutable and one dict lookup is atomic, so a
        # reader sees a sensor before or after an `apply`, never between.
        return self._stats.get(sensor, EMPTY)

    def delete(self, sensor: str) -> None:
        with self._lock:
            self._stats.pop(sensor, None)

    def check(self) -> None:
        return None

    def close(self) -> None:
        return None
