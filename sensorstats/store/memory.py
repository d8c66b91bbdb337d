"""The embedded store: one process's memory, for a single instance."""

from __future__ import annotations

import threading
from collections.abc import Mapping

from sensorstats.errors import StoreFull
from sensorstats.stats import EMPTY, Stats


class MemoryStore:
    """A dict behind a lock: every `apply` is atomic and immediately visible.

    At most `max_sensors` sensors are kept (None: no limit). A batch that
    would add more is refused whole with `StoreFull`; sensors already kept go
    on accumulating, and a delete makes room again.
    """

    def __init__(self, max_sensors: int | None = None) -> None:
        self._stats: dict[str, Stats] = {}
        self._lock = threading.Lock()
        self._max_sensors = max_sensors
        limit = "no limit" if max_sensors is None else f"at most {max_sensors} sensors"
        self.description = (
            f"embedded in-memory store ({limit}; single instance only; data is lost on exit)"
        )

    def apply(self, deltas: Mapping[str, Stats]) -> None:
        with self._lock:
            if self._max_sensors is not None:
                added = sum(1 for sensor in deltas if sensor not in self._stats)
                if added and len(self._stats) + added > self._max_sensors:
                    raise StoreFull(
                        f"the store keeps at most {self._max_sensors} sensors "
                        f"(SENSORSTATS_MAX_SENSORS) and holds {len(self._stats)}; this batch "
                        f"would add {added} new ones, so nothing of it was stored; "
                        f"existing sensors still accept measurements, and deleting "
                        f"sensors makes room",
                        self._max_sensors,
                    )
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
