"""Whether this instance should receive traffic: store reachable, not draining.

`/healthz` is answered on the server's event loop (see `sensorstats.server`), so
asking for readiness must never wait on the store. Once `start` is called, a
background thread checks the store every `ttl` seconds and `status` only
reads the last result. An answer older than `stale_after` means the check
itself hangs, which is reported as not ready.

Without `start` (an app embedded in another server, or tests), `status`
checks on demand instead: at most one check per `ttl`, by one thread at a
time, the others using the last answer meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sensorstats.core.errors import StoreUnavailable
from sensorstats.ops.logs import FIELDS
from sensorstats.store import Store

# How long one store check is trusted: /healthz may be probed by many clients,
# and the store should see at most about one check a second from each instance.
CHECK_TTL_SECONDS = 1.0
# A check that has not completed for this long is hanging: not ready. Room
# for the store's own check timeout on each of a few members.
STALE_AFTER_SECONDS = 5.0

_log = logging.getLogger(__name__)


class Readiness:
    """A cached store check plus the draining flag that SIGTERM sets."""

    def __init__(
        self,
        store: Store,
        ttl: float = CHECK_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        stale_after: float = STALE_AFTER_SECONDS,
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._clock = clock
        self._stale_after = stale_after
        self._draining = threading.Event()
        self._lock = threading.Lock()
        self._checked_at = -float("inf")
        # One tuple, replaced whole, so a reader never pairs a new flag with an old reason.
        self._answer: tuple[bool, str] = (False, "the store has not been checked yet")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def start_draining(self) -> None:
        """From now on the instance reports not ready, for good."""
        self._draining.set()

    def start(self) -> None:
        """Check the store now and then every `ttl` seconds, in a background thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._refresh_loop, name="readiness", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the background checks (a check in progress finishes first)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout)

    def refresh(self) -> None:
        """Check the store once, now, and remember the answer."""
        with self._lock:
            self._check_and_record()

    def is_ready(self) -> bool:
        """True while the store answered lately and the instance is not draining."""
        return self.status()[0]

    def status(self) -> tuple[bool, str]:
        """(ready, why not): never waits for the store once `start` was called."""
        if self._draining.is_set():
            return False, "draining for shutdown"
        if self._thread is None:
            self._check_on_demand()
        elif self._clock() - self._checked_at > self._stale_after:
            # Also covers "never checked": _checked_at starts at minus infinity.
            if self._checked_at == -float("inf"):
                return self._answer
            return False, (
                f"the store check has not completed for {self._clock() - self._checked_at:.0f} s"
            )
        if self._draining.is_set():
            return False, "draining for shutdown"
        return self._answer

    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            started = self._clock()
            self.refresh()
            self._stop.wait(max(0.0, self._ttl - (self._clock() - started)))

    def _check_on_demand(self) -> None:
        # One thread checks; the others use the last answer meanwhile rather
        # than piling up on a store that may be hanging.
        if self._clock() - self._checked_at >= self._ttl and self._lock.acquire(blocking=False):
            try:
                self._check_and_record()
            finally:
                self._lock.release()

    def _check_and_record(self) -> None:
        # None before the first check: its answer is news either way.
        was_ready = None if self._checked_at == -float("inf") else self._answer[0]
        try:
            self._store.check()
        except StoreUnavailable as error:
            self._answer = (False, f"the store is unavailable: {error.detail}")
        except Exception:
            # A probe must answer 503, not 500, whatever the store did.
            _log.exception("store check failed unexpectedly")
            self._answer = (False, "the store check failed unexpectedly")
        else:
            self._answer = (True, "")
        self._checked_at = self._clock()
        if self._answer[0] != was_ready:
            self._log_change()

    def _log_change(self) -> None:
        """One line each time the store's answer turns readiness on or off."""
        ready, reason = self._answer
        if ready:
            _log.info("ready: the store answers", extra={FIELDS: {"event": "ready"}})
        elif not self._draining.is_set():
            _log.warning("not ready: %s", reason, extra={FIELDS: {"event": "not_ready"}})
