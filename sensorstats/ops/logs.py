"""Logging set-up: JSON lines or text, the request id on every line, floods summarised.

Every record goes through one handler on the root logger, waitress's own
loggers included, to stdout. `auto` (the default format) writes one JSON
object per line unless stdout is a terminal, so a container runtime,
Kubernetes or any redirect gets JSON and a person at a shell gets text.

While a request is served, `REQUEST_ID` holds its id (set by the
`telemetry` middleware, per thread through `contextvars`), and every line
logged meanwhile carries it: a store warning, an unexpected error's
traceback and the access line alike.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from json.encoder import encode_basestring_ascii
from typing import Any, NamedTuple, TextIO

# Waitress warns "Task queue depth is N" for every request queued behind busy
# threads: under load that is thousands of lines a second saying one thing.
QUEUE_LOGGER = "waitress.queue"
# One warning per request answered 503 because the store is unavailable: the
# same flood during an etcd outage.
UNAVAILABLE_LOGGER = "sensorstats.unavailable"
# One warning per connection displaced or refused at the connection limit:
# a flood exactly when someone opens connections by the thousand.
CONNECTIONS_LOGGER = "sensorstats.server.listener"
SUMMARISED_LOGGERS = (QUEUE_LOGGER, UNAVAILABLE_LOGGER, CONNECTIONS_LOGGER)
REPORT_INTERVAL_SECONDS = 10.0

# One line per request answered; see `telemetry`.
ACCESS_LOGGER = "sensorstats.access"
# Access lines wait at most this long, or for this many more, to be written
# together (see `LineHandler`).
BATCH_INTERVAL_SECONDS = 0.2
BATCH_MAX_LINES = 1000

FORMATS = ("auto", "json", "text")

# The id of the request being served by this thread, if any.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)

# ASCII only (the default): a line must be writable whatever the stream's
# encoding, lone surrogates from a client's path included. `default=str`
# keeps an odd argument from costing the line. Made once: json.dumps with
# options builds an encoder per call.
_ENCODER = json.JSONEncoder(default=str)

# Structured members of a line beyond its message, passed as
# ``extra={FIELDS: {...}}``: the access line's method, route, status and so on.
FIELDS = "fields"


class AccessEntry(NamedTuple):
    """What one access line says: values at hand when the request was answered.

    `log_access` queues it as it is, and the line is rendered from it
    later, by the thread that writes lines (see `LineHandler`).
    """

    created: float  # time.time() when answered
    request_id: str
    method: str
    route: str
    path: str
    status: int
    seconds: float
    bytes_in: int
    bytes_out: int
    client: str | None
    user_agent: str | None
    by_server: bool = False  # answered by the server itself, not the app

    def message(self) -> str:
        suffix = " (answered by the server)" if self.by_server else ""
        return f"{self.method} {self.path} {self.status} {self.seconds * 1000:.1f} ms{suffix}"

    def fields(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "route": self.route,
            "path": self.path,
            "status": self.status,
            "duration_ms": round(self.seconds * 1000, 3),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "client": self.client,
            "user_agent": self.user_agent,
        }

    def record(self) -> logging.LogRecord:
        """The record ``logging`` would have made for this line when it was answered."""
        record = _access_log.makeRecord(
            ACCESS_LOGGER,
            logging.INFO,
            "(unknown file)",
            0,
            self.message(),
            (),
            None,
            extra={FIELDS: self.fields(), "request_id": self.request_id},
        )
        record.created = self.created
        record.msecs = int((self.created - int(self.created)) * 1000) + 0.0
        return record


_access_log = logging.getLogger(ACCESS_LOGGER)
# The handler `configure_logging` installed, while it is the only one: access
# entries go straight to its queue (see `log_access`).
_access_sink: LineHandler | None = None


def log_access(entry: AccessEntry) -> None:
    """Log one access line, at INFO on `ACCESS_LOGGER`.

    While logging is as `configure_logging` set it up (its handler alone on
    the root logger, nothing of its own on the access logger), the entry is
    queued as it is: no record is made, no filter run, on the thread that
    served the request. The line written is the one logging would write;
    otherwise (a test's capture handler, an operator's own set-up) it goes
    through logging as any other line.
    """
    if not _access_log.isEnabledFor(logging.INFO):
        return
    sink = _access_sink
    if sink is not None and _reaches_only(sink):
        sink.queue(entry)
        return
    _access_log.handle(entry.record())


def _reaches_only(sink: LineHandler) -> bool:
    """Whether a record of the access logger would reach `sink` alone, and unfiltered."""
    if _access_log.filters or _access_log.disabled:
        return False
    logger: logging.Logger | None = _access_log
    while logger is not None and logger is not logging.root:
        if logger.handlers or not logger.propagate:
            return False
        logger = logger.parent
    handlers = logging.root.handlers
    return len(handlers) == 1 and handlers[0] is sink


def access_json(entry: AccessEntry, timestamp: Callable[[float], str]) -> str:
    """`JsonFormatter`'s line for `entry`'s record, rendered straight from the entry."""
    text = encode_basestring_ascii
    return (
        f'{{"ts": "{timestamp(entry.created)}", "level": "INFO", "logger": "{ACCESS_LOGGER}", '
        f'"msg": {text(entry.message())}, "request_id": {text(entry.request_id)}, '
        f'"method": {text(entry.method)}, "route": {text(entry.route)}, '
        f'"path": {text(entry.path)}, "status": {entry.status}, '
        f'"duration_ms": {float.__repr__(round(entry.seconds * 1000, 3))}, '
        f'"bytes_in": {entry.bytes_in}, "bytes_out": {entry.bytes_out}, '
        f'"client": {_json_or_null(entry.client)}, '
        f'"user_agent": {_json_or_null(entry.user_agent)}}}'
    )


def _json_or_null(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


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


class RequestIdFilter(logging.Filter):
    """Stamps each record with the id of the request its thread is serving, if any."""

    def filter(self, record: logging.LogRecord) -> bool:
        # A record may already carry an id (a line about another request).
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


class _Timestamps:
    """RFC 3339 in UTC with milliseconds (``2021-11-09T20:38:09.123Z``), cheaply.

    The date and time up to the second are formatted once a second, not once
    a line: the access line is written for every request.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            # Two threads may both format a new second: the same text either way.
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{int((created - second) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, fields, exc."""

    def __init__(self) -> None:
        super().__init__()
        self._timestamp = _Timestamps()

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            line["request_id"] = request_id
        fields = getattr(record, FIELDS, None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return _ENCODER.encode(line)

    def format_access(self, entry: AccessEntry) -> str:
        """What `format` makes of `entry`'s record, without making the record."""
        return access_json(entry, self._timestamp)


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger [request id]: msg`` for a person at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(rid)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        record.rid = f" [{request_id}]" if request_id else ""
        return super().formatMessage(record)


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record as a line; access lines are gathered and written in batches.

    A write per request costs more than it seems: the thread releases the
    GIL for the system call and then queues to get it back behind the event
    loop and the other threads. So a record of `batched` loggers is only
    queued, as it is: a background thread formats and writes the queue
    every `interval` seconds, or the emitting thread once `max_lines` are
    waiting (memory stays bounded whatever stdout's speed). The event loop,
    which emits most access lines, so pays neither the formatting nor the
    write. A queued record holds only values fixed when it was made (its
    arguments, its fields, the request id the filters stamped), so it
    formats later exactly as it would have at once. Access lines usually
    arrive as an `AccessEntry` (see `log_access`), not a record: the JSON
    line is rendered straight from its values, a text line from the record
    made from it then. Any other line
    (start-up, warnings, errors) is written at once, after the lines queued
    before it, so lines keep their order and what matters is never held back.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        batched: frozenset[str] = frozenset({ACCESS_LOGGER}),
        interval: float = BATCH_INTERVAL_SECONDS,
        max_lines: int = BATCH_MAX_LINES,
    ) -> None:
        super().__init__(stream)
        self._batched = batched
        self._interval = interval
        self._max_lines = max_lines
        # Appended to by any thread without a lock (deque appends are
        # atomic); emptied only under the handler's lock.
        self._pending: deque[logging.LogRecord | AccessEntry] = deque()
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._write_batches, name="log-lines", daemon=True)
        self._writer.start()

    def handle(self, record: logging.LogRecord) -> bool:
        # As `Handler.handle`, without taking the lock around `emit`: the
        # lock is taken only to write.
        passed = bool(self.filter(record))
        if passed:
            self.emit(record)
        return passed

    def emit(self, record: logging.LogRecord) -> None:
        if record.name in self._batched:
            self.queue(record)
            return
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        with self.lock:  # type: ignore[union-attr]  # made by Handler.__init__
            self._write_pending(line)

    def queue(self, item: logging.LogRecord | AccessEntry) -> None:
        """Write `item` with the next batch (a record that passed the filters, or an entry)."""
        self._pending.append(item)
        if len(self._pending) >= self._max_lines:
            self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()

    def close(self) -> None:
        # Not joined: logging.shutdown calls this holding the lock the
        # writer may be waiting for. It stops at its next turn.
        self._stop.set()
        self.flush()
        super().close()

    def _write_pending(self, last: str | None = None) -> None:
        """Format and write the queued records, then `last`, in one system call (lock held)."""
        lines = []
        pending = self._pending
        formatter = self.formatter
        while pending:
            item = pending.popleft()
            try:
                if isinstance(item, logging.LogRecord):
                    lines.append(self.format(item))
                elif isinstance(formatter, JsonFormatter):
                    lines.append(formatter.format_access(item))
                else:
                    lines.append(self.format(item.record()))
            except Exception:
                self.handleError(item if isinstance(item, logging.LogRecord) else item.record())
        if last is not None:
            lines.append(last)
        if lines and self.stream is not None:
            self.stream.write(self.terminator.join(lines) + self.terminator)
            self.stream.flush()

    def _write_batches(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.flush()
            except Exception:  # a closed or broken stream: nothing to report it to
                return


def resolve_format(log_format: str, stream: TextIO) -> str:
    """``json`` or ``text``: `auto` is JSON unless `stream` is a terminal."""
    if log_format != "auto":
        return log_format
    try:
        interactive = stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real file
        interactive = False
    return "text" if interactive else "json"


def configure_logging(level: str, log_format: str = "auto", stream: TextIO | None = None) -> str:
    """Log at `level` to `stream` (stdout) in `log_format`; floods of warnings summarised.

    Returns the format chosen (``json`` or ``text``).
    """
    stream = sys.stdout if stream is None else stream
    chosen = resolve_format(log_format, stream)
    handler = LineHandler(stream)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    # On the handler, not on loggers: records of every logger pass through
    # it, waitress's and those propagated from children alike.
    handler.addFilter(RequestIdFilter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    global _access_sink
    _access_sink = handler
    # Neither format shows the thread, the process or the caller's file and
    # line, and finding them costs every record (one per request) a stack
    # walk and several lookups: the optimisations logging's documentation
    # names for this.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    for name in SUMMARISED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatSummary) for f in logger.filters):
            logger.addFilter(RepeatSummary())
    return chosen
