"""The embedded store: one process's memory, for a single instance.

What a sensor costs here, and what the Deployment's memory limit leaves room
for, is in kube/README.md, "Capacity".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from sensorstats.core.errors import StoreFull
from sensorstats.core.idempotency import (
    DEFAULT_WINDOW_SECONDS,
    IdempotencyKey,
    IdempotencyKeyReused,
)
from sensorstats.core.stats import EMPTY, Stats
from sensorstats.store.calls import Ready, StartedRead, StartedWrite

# Idempotency keys remembered at most: about 200 bytes each, so 20 MB.
MAX_REMEMBERED_KEYS = 100_000


class MemoryStore:
    """A dict behind a lock: every `apply` is atomic and immediately visible.

    At most `max_sensors` sensors are kept (None: no limit). A batch that
    would add more is refused whole with `StoreFull`; sensors already kept go
    on accumulating, and a delete makes room again. Idempotency keys are
    remembered for `idempotency_ttl` seconds, at most `max_keys` at once.
    """

    def __init__(
        self,
        max_sensors: int | None = None,
        *,
        idempotency_ttl: float = DEFAULT_WINDOW_SECONDS,
        max_keys: int = MAX_REMEMBERED_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stats: dict[str, Stats] = {}
        # Idempotency key digest -> (payload fingerprint, forgotten at), in
        # the order remembered, which is also the order they expire in.
        self._keys: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._max_sensors = max_sensors
        self._idempotency_ttl = idempotency_ttl
        self._max_keys = max_keys
        self._clock = clock
        limit = "no limit" if max_sensors is None else f"at most {max_sensors} sensors"
        self.starts_calls = False  # a call to memory costs no wait worth starting early
        self.description = (
            f"embedded in-memory store ({limit}; single instance only; data is lost on exit)"
        )

    def apply(self, deltas: Mapping[str, Stats], key: IdempotencyKey | None = None) -> None:
        with self._lock:
            if key is not None and self._seen_before(key):
                return
            self._check_room(deltas, keyed=key is not None)
            for sensor, delta in deltas.items():
                self._stats[sensor] = self._stats.get(sensor, EMPTY).merge(delta)
            if key is not None:
                self._keys[key.digest] = (key.fingerprint, self._clock() + self._idempotency_ttl)

    def get(self, sensor: str) -> Stats:
        # No lock: values are immutable and one dict lookup is atomic, so a
        # reader sees a sensor before or after an `apply`, never between.
        return self._stats.get(sensor, EMPTY)

    def start_get(self, sensor: str, ready: Ready) -> StartedRead[Stats] | None:
        return None  # a read from memory costs no wait worth starting early

    def start_apply(self, deltas: Mapping[str, Stats], ready: Ready) -> StartedWrite | None:
        return None  # a write to memory costs no wait worth starting early

    def delete(self, sensor: str) -> None:
        with self._lock:
            self._stats.pop(sensor, None)

    def check(self) -> None:
        return None

    def close(self) -> None:
        return None

    def _seen_before(self, key: IdempotencyKey) -> bool:
        """True if `key` was applied with this payload; raises if with another (lock held)."""
        now = self._clock()
        while self._keys:
            digest, (_, forget_at) = next(iter(self._keys.items()))
            if forget_at > now:
                break
            del self._keys[digest]
        remembered = self._keys.get(key.digest)
        if remembered is None:
            return False
        if remembered[0] != key.fingerprint:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was already used with a different payload; "
                "nothing of this request was stored"
            )
        return True

    def _check_room(self, deltas: Mapping[str, Stats], *, keyed: bool) -> None:
        """Raise StoreFull if `deltas` would take the store past a limit (lock held)."""
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
        if keyed and len(self._keys) >= self._max_keys:
            raise StoreFull(
                f"the store remembers at most {self._max_keys} idempotency keys at once "
                f"(each for SENSORSTATS_IDEMPOTENCY_TTL, {self._idempotency_ttl:g} s); "
                f"nothing of this request was stored; retry later or without a key",
                self._max_keys,
            )
