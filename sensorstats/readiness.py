"""Whether this instance should receive traffic: store reachable, not draining."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sensorstats.errors import StoreUnavailable
from sensorstats.store import Store

# How long one store check is trusted: /healthz may be probed by many clients,
# and the store should see at most about one check a second from each instance.
CHECK_TTL_SECONDS = 1.0

_log = logging.getLogger(__name__)


class Readiness:
    """A cached store check plus the draining flag that SIGTERM sets."""

    def __init__(
        self,
        store: Store,
        ttl: float = CHECK_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._clock = clock
        self._draining = threading.Event()
        self._lock = threading.Lock()
        self._checked_at = -float("inf")
        self._store_ok = False

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def start_draining(self) -> None:
        """From now on the instance reports not ready, for good."""
        self._draining.set()

    def is_ready(self) -> bool:
        """True while the store answered within the last `ttl` and not draining."""
        if self._draining.is_set():
            return False
        # One thread checks; the others use the last answer meanwhile rather
        # than piling up on a store that may be hanging.
        if self._clock() - self._checked_at >= self._ttl and self._lock.acquire(blocking=False):
            try:
                self._store_ok = self._check_store()
                self._checked_at = self._clock()
            finally:
                self._lock.release()
        return self._store_ok and not self._draining.is_set()

    def _check_store(self) -> bool:
        try:
            self._store.check()
        except StoreUnavailable:
            return False
        except Exception:
            # A probe must answer 503, not 500, whatever the store did.
            _log.exception("store check failed unexpectedly")
            return False
        return True
