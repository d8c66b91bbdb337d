"""Logging set-up, including a brake on warnings that come in floods."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable

# Waitress warns "Task queue depth is N" for every request queued behind busy
# threads: under load that is thousands of lines a second saying one thing.
QUEUE_LOGGER = "waitress.queue"
# One warning per request answered 503 because the store is unavailable: the
# same flood during an etcd outage.
UNAVAILABLE_LOGGER = "sensorstats.unavailable"
# One warning per connection displaced or refused at the connection limit:
# a flood exactly when someone opens connections by the thousand.
CONNECTIONS_LOGGER = "sensorstats.connections"
SUMMARISED_LOGGERS = (QUEUE_LOGGER, UNAVAILABLE_LOGGER, CONNECTIONS_LOGGER)
REPORT_INTERVAL_SECONDS = 10.0


class RepeatSummary(logging.Filter):
    """Lets one record through per interval, noting how many it held back."""

    def __init__(
        self,
        interval: float = REPORT_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._next_report = -float("inf")
        self._suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            now = self._clock()
            if now < self._next_report:
                self._suppressed += 1
                return False
            if self._suppressed:
                record.msg = f"{record.msg} (and {self._suppressed} similar warnings since last)"
            self._next_report = now + self._interval
            self._suppressed = 0
            return True


def configure_logging(level: str) -> None:
    """Plain text lines on stderr at `level`; floods of warnings summarised."""
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    for name in SUMMARISED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatSummary) for f in logger.filters):
            logger.addFilter(RepeatSummary())
