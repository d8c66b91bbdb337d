"""Logging set-up, including a brake on waitress's queue-depth warnings."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable

# Waitress warns "Task queue depth is N" for every request queued behind busy
# threads: under load that is thousands of lines a second saying one thing.
QUEUE_LOGGER = "waitress.queue"
QUEUE_REPORT_INTERVAL_SECONDS = 10.0


class QueueDepthSummary(logging.Filter):
    """Lets one queue-depth warning through per interval, with what it hid."""

    def __init__(
        self,
        interval: float = QUEUE_REPORT_INTERVAL_SECONDS,
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
    """Plain text lines on stderr at `level`; waitress's queue warnings summarised."""
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    queue_logger = logging.getLogger(QUEUE_LOGGER)
    if not any(isinstance(f, QueueDepthSummary) for f in queue_logger.filters):
        queue_logger.addFilter(QueueDepthSummary())
