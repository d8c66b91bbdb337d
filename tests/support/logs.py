"""Logging configured as the service does, for a test, and put back afterwards."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator

from sensorstats.ops.logs import SUMMARISED_LOGGERS, configure_logging


@contextlib.contextmanager
def service_logging_as(log_format: str, stream: io.StringIO) -> Iterator[None]:
    """Logging configured as the service does; the handlers, level and flood filters restored."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    summarised = [logging.getLogger(name) for name in SUMMARISED_LOGGERS]
    filters = [logger.filters[:] for logger in summarised]
    configure_logging("INFO", log_format, stream)
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
            handler.close()
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        # The flood filters remember what they let through: leave none behind.
        for logger, kept in zip(summarised, filters, strict=True):
            logger.filters[:] = kept
