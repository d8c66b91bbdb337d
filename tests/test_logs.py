"""Logging: floods of one warning (queue depth, outages, the connection limit) are summarised."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from sensorstats.logs import (
    CONNECTIONS_LOGGER,
    QUEUE_LOGGER,
    SUMMARISED_LOGGERS,
    UNAVAILABLE_LOGGER,
    RepeatSummary,
    configure_logging,
)


class Clock:
    """Monotonic time that moves only when told."""

    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    """Keeps the message of each record that gets through."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def lines() -> Lines:
    return Lines()


@pytest.fixture
def queue(clock, lines) -> logging.Logger:
    """A logger with the summary filter, outside logging's registry."""
    logger = logging.Logger("tests.waitress.queue")
    logger.addHandler(lines)
    logger.addFilter(RepeatSummary(interval=10.0, clock=clock))
    return logger


def warn(logger: logging.Logger, depth: int) -> None:
    logger.warning("Task queue depth is %d", depth)  # as waitress words it


def test_the_first_warning_gets_through_as_it_is(queue, lines):
    warn(queue, 3)
    assert lines.lines == ["Task queue depth is 3"]


def test_warnings_within_the_interval_are_held_back(queue, lines, clock):
    for depth in range(1, 101):
        warn(queue, depth)
        clock.now += 0.05
    assert lines.lines == ["Task queue depth is 1"]


def test_the_next_warning_reports_how_many_were_held_back(queue, lines, clock):
    for depth in (1, 2, 3, 4):
        warn(queue, depth)
    clock.now += 10.0
    warn(queue, 9)
    assert lines.lines == [
        "Task queue depth is 1",
        "Task queue depth is 9 (and 3 similar warnings since last)",
    ]


def test_one_warning_per_interval_under_a_steady_flood(queue, lines, clock):
    for _ in range(300):  # 30 seconds at 10 warnings a second
        warn(queue, 5)
        clock.now += 0.1
    assert len(lines.lines) == 3
    assert lines.lines[1] == "Task queue depth is 5 (and 99 similar warnings since last)"


def test_the_count_starts_again_after_each_report(queue, lines, clock):
    warn(queue, 1)
    warn(queue, 1)
    clock.now += 10.0
    warn(queue, 2)
    clock.now += 10.0
    warn(queue, 3)
    assert lines.lines == [
        "Task queue depth is 1",
        "Task queue depth is 2 (and 1 similar warnings since last)",
        "Task queue depth is 3",
    ]


def test_a_quiet_spell_lets_the_next_warning_through(queue, lines, clock):
    warn(queue, 1)
    clock.now += 3600.0
    warn(queue, 2)
    assert lines.lines == ["Task queue depth is 1", "Task queue depth is 2"]


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """Put back what `configure_logging` changes globally."""
    root = logging.getLogger()
    summarised = [logging.getLogger(name) for name in SUMMARISED_LOGGERS]
    handlers, level = root.handlers[:], root.level
    filters = [logger.filters[:] for logger in summarised]
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
    for logger, kept in zip(summarised, filters, strict=True):
        logger.filters[:] = kept


@pytest.mark.usefixtures("restored_logging")
@pytest.mark.parametrize("name", [QUEUE_LOGGER, UNAVAILABLE_LOGGER, CONNECTIONS_LOGGER])
def test_configure_logging_sets_the_level_and_summarises_floods_once(lines, name):
    configure_logging("WARNING")
    configure_logging("DEBUG")
    assert logging.getLogger().level == logging.DEBUG
    flooded = logging.getLogger(name)
    assert sum(isinstance(f, RepeatSummary) for f in flooded.filters) == 1
    flooded.addHandler(lines)
    try:
        warn(flooded, 1)
        warn(flooded, 2)
    finally:
        flooded.removeHandler(lines)
    assert lines.lines == ["Task queue depth is 1"]
