"""Logging: JSON lines or text, request ids, and floods of one warning summarised."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sensorstats.ops.logs import (
    ACCESS_LOGGER,
    CONNECTIONS_LOGGER,
    FIELDS,
    QUEUE_LOGGER,
    REQUEST_ID,
    SUMMARISED_LOGGERS,
    UNAVAILABLE_LOGGER,
    AccessEntry,
    JsonFormatter,
    LineHandler,
    RepeatSummary,
    configure_logging,
    log_access,
)
from tests.support.logs import service_logging_as
from tests.support.service import start_service


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


# --- formats ---------------------------------------------------------------------------


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def configured(log_format: str, stream: io.StringIO, level: str = "INFO") -> str:
    return configure_logging(level, log_format, stream)


def json_lines(stream: io.StringIO) -> list[dict]:
    """Every line of `stream` parsed: fails unless each is one JSON object."""
    parsed = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert all(isinstance(line, dict) for line in parsed)
    return parsed


@pytest.mark.usefixtures("restored_logging")
@pytest.mark.parametrize(
    ("asked", "stream", "chosen"),
    [
        ("auto", io.StringIO(), "json"),  # a pipe, a file, a container's log
        ("auto", Terminal(), "text"),  # a person at a shell
        ("json", Terminal(), "json"),
        ("text", io.StringIO(), "text"),
    ],
)
def test_auto_writes_json_unless_the_stream_is_a_terminal(asked, stream, chosen):
    assert configured(asked, stream) == chosen
    logging.getLogger("sensorstats.test").info("hello")
    line = stream.getvalue().strip()
    if chosen == "json":
        assert json.loads(line)["msg"] == "hello"
    else:
        assert line.endswith("INFO sensorstats.test: hello")


@pytest.mark.usefixtures("restored_logging")
def test_a_json_line_has_the_documented_members():
    stream = io.StringIO()
    configured("json", stream)
    logging.getLogger("sensorstats.test").warning("store: %s", "etcd at http://e:2379")
    (line,) = json_lines(stream)
    assert set(line) == {"ts", "level", "logger", "msg"}
    assert (line["level"], line["logger"]) == ("WARNING", "sensorstats.test")
    assert line["msg"] == "store: etcd at http://e:2379"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])


@pytest.mark.usefixtures("restored_logging")
def test_an_error_keeps_its_traceback_on_one_line():
    stream = io.StringIO()
    configured("json", stream)
    try:
        raise ValueError("multi\nline")
    except ValueError:
        logging.getLogger("sensorstats.test").exception("it broke:\n%s", "badly")
    (line,) = json_lines(stream)
    assert line["msg"] == "it broke:\nbadly"
    assert line["exc"].startswith("Traceback (most recent call last):")
    assert "ValueError: multi\nline" in line["exc"]


@pytest.mark.usefixtures("restored_logging")
def test_awkward_text_cannot_break_a_line():
    stream = io.StringIO()
    configured("json", stream)
    log = logging.getLogger("sensorstats.test")
    log.warning("GET %s", '/statistics/\ud800\n"}{')  # a lone surrogate, a newline, JSON
    log.info("%s", object())  # whatever an argument is
    first, second = json_lines(stream)
    assert first["msg"] == 'GET /statistics/\ud800\n"}{'
    assert second["msg"].startswith("<object object at")
    assert stream.getvalue().isascii()


@pytest.mark.usefixtures("restored_logging")
def test_structured_fields_and_the_request_id_join_the_line():
    stream = io.StringIO()
    configured("json", stream)
    token = REQUEST_ID.set("req-1")
    try:
        logging.getLogger("sensorstats.test").info(
            "GET /x 200", extra={FIELDS: {"status": 200, "route": "/x"}}
        )
    finally:
        REQUEST_ID.reset(token)
    logging.getLogger("sensorstats.test").info("after")
    inside, after = json_lines(stream)
    assert (inside["request_id"], inside["status"], inside["route"]) == ("req-1", 200, "/x")
    assert "request_id" not in after


@pytest.mark.usefixtures("restored_logging")
def test_text_lines_show_the_request_id():
    stream = io.StringIO()
    configured("text", stream)
    token = REQUEST_ID.set("req-2")
    try:
        logging.getLogger("sensorstats.test").info("hello")
    finally:
        REQUEST_ID.reset(token)
    assert stream.getvalue().strip().endswith("INFO sensorstats.test [req-2]: hello")


@pytest.mark.usefixtures("restored_logging")
def test_waitress_logs_through_the_same_handler():
    stream = io.StringIO()
    configured("json", stream)
    logging.getLogger("waitress").error("Exception while serving /data")
    (line,) = json_lines(stream)
    assert (line["logger"], line["level"]) == ("waitress", "ERROR")


@pytest.mark.usefixtures("restored_logging")
def test_a_flood_is_still_summarised_in_json():
    stream = io.StringIO()
    queue = logging.getLogger(QUEUE_LOGGER)
    queue.filters[:] = []  # a fresh filter, which has let nothing through yet
    configured("json", stream)
    for depth in range(1, 501):
        warn(logging.getLogger(QUEUE_LOGGER), depth)
    (line,) = json_lines(stream)
    assert line["msg"] == "Task queue depth is 1"


# --- the real process -------------------------------------------------------------------


def test_every_line_of_a_running_service_is_one_json_object(tmp_path):
    with start_service(log_dir=tmp_path) as service:
        service.post("/data", '[{"sensor": "a", "timestamp": "2021-11-09T21:38:09Z", "value": 1}]')
        service.get("/statistics/a")
        service.get("/nowhere")
        service.terminate()
        assert service.wait(20) == 0
        text = service.log()
    lines = [json.loads(line) for line in text.splitlines()]
    events = [line.get("event") for line in lines if "event" in line]
    assert events == ["starting", "ready", "listening", "draining", "drained", "stopped"] or (
        events == ["starting", "listening", "ready", "draining", "drained", "stopped"]
    )
    (starting,) = [line for line in lines if line.get("event") == "starting"]
    assert starting["settings"]["port"] == service.port
    assert starting["settings"]["api_tokens"] == "(unset)"
    access = [
        line
        for line in lines
        if line["logger"] == "sensorstats.access" and line["route"] != "/livez"  # start-up polls
    ]
    assert [(a["method"], a["route"], a["status"]) for a in access] == [
        ("POST", "/data", 204),
        ("GET", "/statistics/{sensor_id}", 200),
        ("GET", "unmatched", 404),
    ]
    for line in access:
        assert line["request_id"]
        assert line["client"] == "127.0.0.1"
        assert line["duration_ms"] >= 0
    assert access[0]["bytes_in"] > 0
    assert access[1]["bytes_out"] > 0


def test_text_format_on_request(tmp_path):
    with start_service(env={"SENSORSTATS_LOG_FORMAT": "text"}, log_dir=tmp_path) as service:
        service.get("/livez")
        text = service.log()
    assert "INFO sensorstats: starting sensorstats" in text
    assert not any(line.startswith("{") for line in text.splitlines())


def test_secrets_never_reach_the_start_up_line(tmp_path):
    token = "s3cret-token-0123456789"
    with start_service(env={"SENSORSTATS_API_TOKENS": f"ci:{token}"}, log_dir=tmp_path) as service:
        service.get("/livez")
        text = service.log()
    assert token not in text
    (starting,) = [json.loads(line) for line in text.splitlines() if '"starting"' in line]
    assert starting["settings"]["api_tokens"] == "(set)"


# --- access lines in batches ----------------------------------------------------------


class CountingStream(io.StringIO):
    """Counts the writes that reach the stream (each one a system call on a real file)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def record(name: str, message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 0, message, (), None)


def test_access_lines_wait_for_a_batch_and_other_lines_keep_their_order():
    stream = CountingStream()
    handler = LineHandler(stream, interval=3600)
    try:
        for n in range(3):
            handler.handle(record(ACCESS_LOGGER, f"GET /x {n}"))
        assert stream.getvalue() == ""  # waiting for the batch
        handler.handle(record("sensorstats.server.serving", "stop requested", logging.WARNING))
        assert stream.getvalue().splitlines() == [
            "GET /x 0",
            "GET /x 1",
            "GET /x 2",
            "stop requested",
        ]
        assert stream.writes == 1  # one system call for all four
    finally:
        handler.close()


def test_a_batch_is_written_within_the_interval():
    stream = io.StringIO()
    handler = LineHandler(stream, interval=0.05)
    try:
        handler.handle(record(ACCESS_LOGGER, "GET /x 200"))
        deadline = time.monotonic() + 5
        while not stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stream.getvalue() == "GET /x 200\n"
    finally:
        handler.close()


def test_a_full_batch_is_written_by_the_thread_that_filled_it():
    stream = CountingStream()
    handler = LineHandler(stream, interval=3600, max_lines=10)
    try:
        for n in range(25):
            handler.handle(record(ACCESS_LOGGER, f"line {n}"))
        assert len(stream.getvalue().splitlines()) == 20  # two full batches, 5 waiting
        assert stream.writes == 2
    finally:
        handler.close()
    assert len(stream.getvalue().splitlines()) == 25  # closing writes the rest


def test_a_queued_record_that_cannot_be_formatted_costs_only_its_own_line():
    stream = io.StringIO()
    handler = LineHandler(stream, interval=3600)
    handler.handleError = lambda record: None  # type: ignore[method-assign]  # keep stderr quiet
    broken = logging.LogRecord(ACCESS_LOGGER, logging.INFO, __file__, 0, "%d ms", ("x",), None)
    try:
        handler.handle(record(ACCESS_LOGGER, "GET /x 200"))
        handler.handle(broken)
        handler.handle(record(ACCESS_LOGGER, "GET /y 200"))
        handler.flush()
        assert stream.getvalue().splitlines() == ["GET /x 200", "GET /y 200"]
    finally:
        handler.close()


# --- access lines rendered from the values at hand ------------------------------------

TEXTS = st.text(max_size=20)  # any code point: lone surrogates, quotes, controls
ENTRIES = st.builds(
    AccessEntry,
    created=st.floats(0, 4e9),
    request_id=TEXTS,
    method=TEXTS,
    route=TEXTS,
    path=TEXTS,
    status=st.integers(100, 599),
    seconds=st.floats(0, 1e4),
    bytes_in=st.integers(0, 2**40),
    bytes_out=st.integers(0, 2**40),
    client=st.none() | TEXTS,
    user_agent=st.none() | TEXTS,
    by_server=st.booleans(),
)


@given(ENTRIES)
def test_an_access_line_is_what_the_json_formatter_makes_of_its_record(entry):
    formatter = JsonFormatter()
    assert formatter.format_access(entry) == formatter.format(entry.record())


def test_an_access_record_says_what_the_line_always_said():
    entry = AccessEntry(0.25, "rid-1", "GET", "/x/{id}", "/x/%41", 200, 0.01234, 0, 74, "::1", None)
    record = entry.record()
    assert (record.name, record.levelno, record.created) == (ACCESS_LOGGER, logging.INFO, 0.25)
    assert record.getMessage() == "GET /x/%41 200 12.3 ms"
    assert record.request_id == "rid-1"
    assert getattr(record, FIELDS) == {
        "method": "GET",
        "route": "/x/{id}",
        "path": "/x/%41",
        "status": 200,
        "duration_ms": 12.34,
        "bytes_in": 0,
        "bytes_out": 74,
        "client": "::1",
        "user_agent": None,
    }
    server = entry._replace(by_server=True).record()
    assert server.getMessage() == "GET /x/%41 200 12.3 ms (answered by the server)"


@pytest.fixture
def service_logging() -> Iterator[io.StringIO]:
    """Logging as the service sets it up (JSON), into a buffer; restored afterwards."""
    stream = io.StringIO()
    with service_logging_as("json", stream):
        yield stream


def written(stream: io.StringIO) -> list[str]:
    for handler in logging.getLogger().handlers:
        handler.flush()
    return stream.getvalue().splitlines()


ENTRY = AccessEntry(1.5, "rid", "POST", "/data", "/data", 204, 0.002, 80, 0, "127.0.0.1", "wrk")


@contextlib.contextmanager
def only_the_service_handler() -> Iterator[LineHandler]:
    """The root logger with the service's handler alone, as in a running service.

    Pytest adds its own capture handlers to the root logger for each test.
    """
    root = logging.getLogger()
    kept = root.handlers[:]
    (handler,) = [h for h in kept if isinstance(h, LineHandler)]
    root.handlers[:] = [handler]
    try:
        yield handler
    finally:
        root.handlers[:] = kept


def test_an_access_entry_is_queued_as_it_is_and_written_as_logging_would(service_logging):
    with only_the_service_handler() as handler:
        handler.queue = Spy(handler.queue)  # type: ignore[method-assign]
        log_access(ENTRY)
        assert handler.queue.calls == [ENTRY]  # no record made on the way
        (line,) = written(service_logging)
    assert line == handler.formatter.format(ENTRY.record())


class Spy:
    def __init__(self, function):
        self.function = function
        self.calls: list[object] = []

    def __call__(self, item):
        self.calls.append(item)
        return self.function(item)


def test_a_handler_of_its_own_still_hears_every_access_line(service_logging):
    own = Lines()
    logging.getLogger(ACCESS_LOGGER).addHandler(own)
    try:
        with only_the_service_handler():
            log_access(ENTRY)
    finally:
        logging.getLogger(ACCESS_LOGGER).removeHandler(own)
    assert own.lines == ["POST /data 204 2.0 ms"]
    assert len(written(service_logging)) == 1  # and the service's handler too


def test_a_filter_on_the_access_logger_still_applies(service_logging):
    drop_all = logging.Filter("nothing.matches")
    logging.getLogger(ACCESS_LOGGER).addFilter(drop_all)
    try:
        with only_the_service_handler():
            log_access(ENTRY)
    finally:
        logging.getLogger(ACCESS_LOGGER).removeFilter(drop_all)
    assert written(service_logging) == []


def test_access_lines_follow_the_level_of_their_logger(service_logging):
    access = logging.getLogger(ACCESS_LOGGER)
    access.setLevel(logging.WARNING)
    try:
        with only_the_service_handler():
            log_access(ENTRY)
    finally:
        access.setLevel(logging.NOTSET)
    assert written(service_logging) == []


def test_text_lines_of_access_entries_are_rendered_from_their_record():
    stream = io.StringIO()
    with service_logging_as("text", stream):
        with only_the_service_handler() as handler:
            log_access(ENTRY)
        (line,) = written(stream)
        assert line == handler.formatter.format(ENTRY.record())
    assert line.endswith(" INFO sensorstats.access [rid]: POST /data 204 2.0 ms")
