"""Turning a POST body into per-sensor deltas, validating the batch as a whole."""

from __future__ import annotations

import json
import math
import operator
import re
import sys
from dataclasses import dataclass
from typing import Annotated

import msgspec

from sensorstats.core.errors import FieldError, InvalidBatch, PayloadTooLarge
from sensorstats.core.stats import Stats, Timestamp, exact_double_sum, instant_of, order_as_text

# A rejected batch lists at most this many errors; the detail gives the total.
MAX_REPORTED_ERRORS = 100

# Control characters, and lone surrogates (which "\ud800" in JSON produces):
# neither can be part of an id that round-trips through a URL.
_FORBIDDEN_IN_SENSOR_ID = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds a batch must respect."""

    max_batch: int = 10_000
    max_sensor_id: int = 256


_NOT_AN_OBJECT = "must be an object with sensor, timestamp and value"


class _NonFinite:
    """Stands in for NaN and Infinity literals, so they fail as values, by index."""

    def __init__(self, literal: str) -> None:
        self.literal = literal


def sensor_id_problem(sensor: str, limits: Limits) -> str | None:
    """Why `sensor` cannot be a sensor id, or None if it can."""
    if not sensor:
        return "must not be empty"
    if len(sensor) > limits.max_sensor_id:
        return f"must be at most {limits.max_sensor_id} characters"
    if _FORBIDDEN_IN_SENSOR_ID.search(sensor):
        return "must not contain control characters or unpaired surrogates"
    return None


def _value_problem(value: object) -> str | None:
    if type(value) is float:
        return None if math.isfinite(value) else "must be finite"
    if type(value) is int:
        try:
            float(value)
        except OverflowError:
            return "must be finite as an IEEE double"
        return None
    if isinstance(value, _NonFinite):
        return f"must be finite, got {value.literal}"
    return "must be a number"


# What a client should send, ending every message about the body as a whole.
_SEND = "send a JSON array of measurements"
# `json`'s reasons, in words for a person who has not read its source.
_JSON_REASONS = {
    "Expecting value": "a value is missing or malformed",
    "Extra data": "something follows the array",
    "Unterminated string starting at": "a string is not closed",
    "Invalid control character at": "a string holds a raw control character (escape it)",
    "Expecting property name enclosed in double quotes": "a key is not a string in double quotes",
    "Expecting ',' delimiter": "a comma is missing",
    "Expecting ':' delimiter": "a colon is missing",
    "Invalid \\escape": "a string holds an invalid backslash escape",
    "Invalid \\uXXXX escape": "a string holds an invalid \\u escape",
}
_JSON_TYPES = {dict: "an object", str: "a string", bool: "true or false", type(None): "null"}
_GZIP_MAGIC = b"\x1f\x8b"


def _decode(body: bytes) -> list[object]:
    if not body.strip(b" \t\r\n"):
        raise InvalidBatch(f"the body is empty; {_SEND}")
    try:
        document = json.loads(body, parse_constant=_NonFinite)
    except RecursionError:
        raise InvalidBatch(f"the body is nested too deeply; {_SEND}, each a flat object") from None
    except json.JSONDecodeError as error:
        raise InvalidBatch(_json_problem(error)) from None
    except UnicodeDecodeError as error:
        raise InvalidBatch(_encoding_problem(body, error)) from None
    except ValueError:  # the only other: an integer of more digits than Python reads
        digits = sys.get_int_max_str_digits()
        raise InvalidBatch(
            f"the body holds a number of more than {digits} digits; {_SEND}"
        ) from None
    if not isinstance(document, list):
        kind = _JSON_TYPES.get(type(document), "a number")
        raise InvalidBatch(f"the body is {kind}, not an array; {_SEND} (one in [ ] too)")
    return document


def _json_problem(error: json.JSONDecodeError) -> str:
    reason = _JSON_REASONS.get(error.msg, "it is malformed")
    where = f"line {error.lineno}, column {error.colno}"
    return f"the body is not valid JSON: {reason} at {where}; {_SEND}"


def _encoding_problem(body: bytes, error: UnicodeDecodeError) -> str:
    if body.startswith(_GZIP_MAGIC):
        return (
            "the body is gzip-compressed but says nothing of it; send it with "
            "Content-Encoding: gzip, or uncompressed"
        )
    return (
        f"the body is not UTF-8: byte {error.object[error.start]:#04x} at offset "
        f"{error.start} is not valid there; {_SEND} in UTF-8"
    )


class _Accumulator:
    """One sensor's values and latest timestamp while a batch is read."""

    __slots__ = ("instant", "text", "values")

    def __init__(self, instant: int, text: str) -> None:
        self.values: list[float | int] = []
        self.instant = instant
        self.text = text

    def add(self, value: float | int, instant: int, text: str) -> None:
        self.values.append(value)
        # The same order as `Timestamp`: instant first, then text.
        if instant > self.instant or (instant == self.instant and text > self.text):
            self.instant = instant
            self.text = text

    def stats(self) -> Stats:
        return Stats.of(self.values, Timestamp(self.instant, self.text))


def parse_batch(body: bytes, limits: Limits) -> dict[str, Stats]:
    """The per-sensor statistics of a valid batch, keyed by sensor id.

    Raises InvalidBatch naming every bad item by index and field (up to
    `MAX_REPORTED_ERRORS`), or PayloadTooLarge for too many items.
    """
    deltas = _parse_plain_batch(body, limits)
    if deltas is not None:
        return deltas
    return _parse_any_batch(body, limits)


# Integers up to 2**53 in magnitude are exactly doubles, so `exact_double_sum`
# may add them; larger ones take the general path, which sums them exactly.
_DoubleInt = Annotated[int, msgspec.Meta(ge=-(2**53), le=2**53)]


class _PlainMeasurement(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """An item of the common shape: exactly the three fields, of the right types."""

    sensor: str
    timestamp: str
    value: _DoubleInt | float


_PLAIN_BATCH = msgspec.json.Decoder(list[_PlainMeasurement])
_TIMESTAMP = operator.attrgetter("timestamp")
_VALUE = operator.attrgetter("value")


def _parse_plain_batch(body: bytes, limits: Limits) -> dict[str, Stats] | None:
    """`parse_batch` for a valid batch of plain items; None for anything else.

    msgspec decodes and type-checks the whole body in C, several times faster
    than `json.loads` builds dicts, and everything it accepts here `json.loads`
    reads the same way: strict UTF-8 with no BOM, no NaN or Infinity, no
    lone surrogates, floats correctly rounded and never beyond the double
    range, duplicate keys resolved to the last one. Unknown keys are refused
    rather than skipped, since msgspec does not check skipped values as
    `json.loads` does (its integer digit limit, its nesting depth). Whatever
    this cannot settle, an invalid batch included, returns None, and the
    general path decides, with its messages and indexes.
    """
    try:
        measurements = _PLAIN_BATCH.decode(body)
    except (ValueError, RecursionError):  # msgspec's errors are ValueErrors
        return None
    _check_batch_size(len(measurements), limits)
    texts = set(map(_TIMESTAMP, measurements))  # one per batch, or one per reading
    try:
        as_text = order_as_text(texts)
    except ValueError:
        return None
    # When texts order as timestamps do, only each sensor's latest needs an instant.
    latest_of: dict[str, Timestamp] = {}
    only = next(iter(texts)) if len(texts) == 1 else None
    instants = {} if as_text else {text: instant_of(text) for text in texts}
    by_sensor: dict[str, list[_PlainMeasurement]] = {}
    for measurement in measurements:
        group = by_sensor.get(measurement.sensor)
        if group is None:
            by_sensor[measurement.sensor] = [measurement]
        else:
            group.append(measurement)
    deltas: dict[str, Stats] = {}
    for sensor, group in by_sensor.items():
        if sensor_id_problem(sensor, limits) is not None:
            return None
        if as_text:
            text = max(map(_TIMESTAMP, group)) if only is None else only
            latest = latest_of.get(text)
            if latest is None:
                latest = latest_of[text] = Timestamp(instant_of(text), text)
        else:
            # The same order as `Timestamp`: instant first, then text.
            mine = set(map(_TIMESTAMP, group))
            latest = Timestamp(*max(zip(map(instants.__getitem__, mine), mine, strict=True)))
        values = list(map(_VALUE, group))
        deltas[sensor] = Stats(len(values), *exact_double_sum(values), latest)
    return deltas


def _parse_any_batch(body: bytes, limits: Limits) -> dict[str, Stats]:
    """`parse_batch` for any body: the stdlib decoder, every error by index and field."""
    items = _decode(body)
    _check_batch_size(len(items), limits)
    errors: list[FieldError] = []
    sensors: dict[str, _Accumulator] = {}
    valid_ids: set[str] = set()  # ids repeat within a batch; check each once
    for index, item in enumerate(items):
        if type(item) is not dict:
            errors.append(FieldError(index, None, _NOT_AN_OBJECT))
            continue
        sensor = item.get("sensor")
        if type(sensor) is not str:
            errors.append(FieldError(index, "sensor", _type_problem(item, "sensor", "string")))
        elif sensor not in valid_ids:
            problem = sensor_id_problem(sensor, limits)
            if problem:
                errors.append(FieldError(index, "sensor", problem))
            else:
                valid_ids.add(sensor)

        text = item.get("timestamp")
        instant = 0
        if type(text) is not str:
            errors.append(
                FieldError(index, "timestamp", _type_problem(item, "timestamp", "string"))
            )
        else:
            try:
                instant = instant_of(text)
            except ValueError as error:  # its message says what is wrong, with an example
                errors.append(FieldError(index, "timestamp", str(error)))

        value = item.get("value")
        problem = _value_problem(value) if "value" in item else "is required"
        if problem:
            errors.append(FieldError(index, "value", problem))

        if errors:  # the batch is rejected; only keep collecting errors
            continue
        assert type(sensor) is str
        assert type(text) is str
        accumulator = sensors.get(sensor)
        if accumulator is None:
            accumulator = sensors[sensor] = _Accumulator(instant, text)
        accumulator.add(value, instant, text)  # type: ignore[arg-type]

    if errors:
        shown = errors[:MAX_REPORTED_ERRORS]
        listed = f"the first {len(shown)} listed" if len(errors) > len(shown) else "listed"
        raise InvalidBatch(
            f"{len(errors)} invalid field(s), {listed} in errors; nothing was stored: "
            "correct them and send the whole batch again",
            tuple(shown),
        )
    return {sensor: accumulator.stats() for sensor, accumulator in sensors.items()}


def _check_batch_size(size: int, limits: Limits) -> None:
    if size > limits.max_batch:
        raise PayloadTooLarge(
            f"the batch has {size} measurements; the limit is {limits.max_batch}: "
            "send them in smaller batches"
        )


def _type_problem(item: dict[str, object], field: str, kind: str) -> str:
    return f"must be a {kind}" if field in item else "is required"
