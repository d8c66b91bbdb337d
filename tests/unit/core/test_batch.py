"""Reading a POST body: every bad input the HTTP contract names, and exact grouping by sensor.

The bad inputs are those of "The batch", "Sensor ids", "Values" and
"Timestamps" in sensorstats/web/README.md.

The tables `BAD_DOCUMENTS` and `BAD_FIELDS` are driven through `parse_batch`
here and through the HTTP app in test_app.py.
"""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import math
import re
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone, tzinfo
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensorstats.core.batch import (
    MAX_REPORTED_ERRORS,
    Limits,
    _decode,
    _parse_plain_batch,
    parse_batch,
    sensor_id_problem,
)
from sensorstats.core.errors import FieldError, InvalidBatch, PayloadTooLarge
from sensorstats.core.stats import EMPTY, Stats, Timestamp
from sensorstats.core.timestamps import parse_datetime
from tests.support.examples import examples

GOOD = {"sensor": "abc", "timestamp": "2021-11-09T21:38:09+01:00", "value": 3.14}
DEFAULT_LIMITS = Limits()
LARGEST_INT = 2**1024 - 2**970 - 1  # rounds down to the greatest double


class Raw(str):
    """JSON text put into a body as is: for literals `json.dumps` cannot write."""


MISSING = object()


def encode(value: object) -> str:
    return value if isinstance(value, Raw) else json.dumps(value)


def item_json(item: object) -> str:
    if not isinstance(item, dict):
        return encode(item)
    members = (f"{json.dumps(k)}:{encode(v)}" for k, v in item.items() if v is not MISSING)
    return "{" + ",".join(members) + "}"


def body(*items: object) -> bytes:
    """A JSON array of `items`; dict members may be `Raw` or `MISSING`."""
    return ("[" + ",".join(item_json(i) for i in items) + "]").encode()


def measurement(**fields: object) -> dict[str, object]:
    """`GOOD` with some fields replaced (or `MISSING`)."""
    return {**GOOD, **fields}


# Bodies that are not a batch at all: 400, and no item can be named.
BAD_DOCUMENTS = [
    pytest.param(b"", id="empty-body"),
    pytest.param(b"[{", id="malformed-json"),
    pytest.param(b"[1,]", id="trailing-comma"),
    pytest.param(b"\xff[]", id="not-utf-8"),
    pytest.param(b"{}", id="top-level-object"),
    pytest.param(json.dumps(GOOD).encode(), id="top-level-measurement"),
    pytest.param(b"42", id="top-level-number"),
    pytest.param(b'"[]"', id="top-level-string"),
    pytest.param(b"null", id="top-level-null"),
    pytest.param(b"true", id="top-level-true"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="nested-too-deeply"),
    pytest.param(b"[" + b"1" * 5_000 + b"]", id="integer-with-5000-digits"),
]

# One bad field in an otherwise good item: (item, field reported). `None` is the item itself.
BAD_FIELDS = [
    pytest.param(42, None, id="item-number"),
    pytest.param([GOOD], None, id="item-list"),
    pytest.param(None, None, id="item-null"),
    pytest.param("abc", None, id="item-string"),
    pytest.param(True, None, id="item-true"),
    pytest.param(measurement(sensor=MISSING), "sensor", id="sensor-missing"),
    pytest.param(measurement(sensor=None), "sensor", id="sensor-null"),
    pytest.param(measurement(sensor=42), "sensor", id="sensor-number"),
    pytest.param(measurement(sensor=["abc"]), "sensor", id="sensor-list"),
    pytest.param(measurement(sensor=""), "sensor", id="sensor-empty"),
    pytest.param(measurement(sensor="x" * 257), "sensor", id="sensor-257-chars"),
    pytest.param(measurement(sensor="a\u0000b"), "sensor", id="sensor-nul"),
    pytest.param(measurement(sensor="a\u001f"), "sensor", id="sensor-u001f"),
    pytest.param(measurement(sensor="\u007f"), "sensor", id="sensor-del"),
    pytest.param(measurement(sensor="a\nb"), "sensor", id="sensor-newline"),
    pytest.param(measurement(sensor="\t"), "sensor", id="sensor-tab"),
    pytest.param(measurement(sensor="\ud800"), "sensor", id="sensor-lone-surrogate"),
    pytest.param(measurement(sensor=Raw('"a\\udc00"')), "sensor", id="sensor-lone-low-surrogate"),
    pytest.param(measurement(timestamp=MISSING), "timestamp", id="timestamp-missing"),
    pytest.param(measurement(timestamp=None), "timestamp", id="timestamp-null"),
    pytest.param(measurement(timestamp=1636490289), "timestamp", id="timestamp-number"),
    pytest.param(measurement(timestamp="yesterday"), "timestamp", id="timestamp-yesterday"),
    pytest.param(measurement(timestamp=""), "timestamp", id="timestamp-empty"),
    pytest.param(
        measurement(timestamp="2021-13-09T21:38:09"), "timestamp", id="timestamp-month-13"
    ),
    pytest.param(measurement(timestamp="2021-02-30"), "timestamp", id="timestamp-february-30"),
    pytest.param(
        measurement(timestamp="2021-11-09T21:38:09+25:00"), "timestamp", id="timestamp-offset"
    ),
    pytest.param(
        measurement(timestamp="2021-11-09T21:38:09." + "1" * 45),
        "timestamp",
        id="timestamp-65-chars",
    ),
    pytest.param(measurement(timestamp="\ud800"), "timestamp", id="timestamp-lone-surrogate"),
    pytest.param(measurement(value=MISSING), "value", id="value-missing"),
    pytest.param(measurement(value=True), "value", id="value-true"),
    pytest.param(measurement(value=False), "value", id="value-false"),
    pytest.param(measurement(value="3.14"), "value", id="value-string"),
    pytest.param(measurement(value=None), "value", id="value-null"),
    pytest.param(measurement(value=[3.14]), "value", id="value-list"),
    pytest.param(measurement(value={"value": 3.14}), "value", id="value-object"),
    pytest.param(measurement(value=Raw("NaN")), "value", id="value-NaN"),
    pytest.param(measurement(value=Raw("Infinity")), "value", id="value-Infinity"),
    pytest.param(measurement(value=Raw("-Infinity")), "value", id="value-minus-Infinity"),
    pytest.param(measurement(value=Raw("1e400")), "value", id="value-1e400"),
    pytest.param(measurement(value=Raw("-1e400")), "value", id="value-minus-1e400"),
    pytest.param(measurement(value=10**400), "value", id="value-10**400"),
    pytest.param(measurement(value=LARGEST_INT + 1), "value", id="value-rounds-to-infinity"),
    pytest.param(measurement(value=-(2**1024 - 2**970)), "value", id="value-rounds-to-minus-inf"),
]

# Legal, if awkward: each is stored under exactly the id sent.
AWKWARD_SENSOR_IDS = [
    pytest.param("/", id="slash"),
    pytest.param("..", id="dot-dot"),
    pytest.param(".", id="dot"),
    pytest.param("%", id="percent"),
    pytest.param("%2F", id="percent-2F-literally"),
    pytest.param("a b", id="space"),
    pytest.param(" ", id="only-space"),
    pytest.param("?", id="question-mark"),
    pytest.param("#", id="hash"),
    pytest.param("a/b", id="a-slash-b"),
    pytest.param("/a/", id="slashes-around"),
    pytest.param("a//b", id="double-slash"),
    pytest.param("a/../b", id="dot-segment"),
    pytest.param("+", id="plus"),
    pytest.param("\\", id="backslash"),
    pytest.param("温度", id="chinese"),
    pytest.param("é", id="e-acute-nfc"),
    pytest.param("e\u0301", id="e-acute-nfd"),
    pytest.param("\U0001f321\ufe0f", id="emoji"),
    pytest.param("\ufffd", id="replacement-character"),
    pytest.param("\u00a0\u2028\u0085", id="unicode-spaces"),
    pytest.param("x" * 256, id="256-chars"),
    pytest.param("温" * 256, id="256-wide-chars"),
]


def rejected(data: bytes, limits: Limits = DEFAULT_LIMITS) -> InvalidBatch:
    with pytest.raises(InvalidBatch) as caught:
        parse_batch(data, limits)
    return caught.value


def reported(error: InvalidBatch) -> list[tuple[int, str | None]]:
    """(index, field) of each listed error; each message must say something."""
    assert all(isinstance(e, FieldError) and e.message for e in error.errors)
    return [(e.index, e.field) for e in error.errors]


def stats(values: list[float | int], latest: str) -> Stats:
    return Stats.of(values, Timestamp.parse(latest))


# --- what is rejected ----------------------------------------------------------


@pytest.mark.parametrize("data", BAD_DOCUMENTS)
def test_a_body_that_is_not_an_array_is_rejected_as_a_whole(data):
    error = rejected(data)
    assert error.errors == ()
    assert error.detail


@pytest.mark.parametrize(("item", "field"), BAD_FIELDS)
def test_a_bad_item_is_named_by_index_and_field(item, field):
    error = rejected(body(GOOD, item, GOOD))
    assert reported(error) == [(1, field)]
    assert "nothing was stored" in error.detail


def test_every_bad_item_and_field_is_listed():
    data = body(
        measurement(sensor=""),
        GOOD,
        measurement(timestamp="yesterday", value=True),
        "not an object",
        {},
    )
    assert reported(rejected(data)) == [
        (0, "sensor"),
        (2, "timestamp"),
        (2, "value"),
        (3, None),
        (4, "sensor"),
        (4, "timestamp"),
        (4, "value"),
    ]


def test_errors_say_what_is_wrong():
    messages = {e.field: e.message for e in rejected(body({"sensor": 1, "value": "1"})).errors}
    assert messages == {
        "sensor": "must be a string",
        "timestamp": "is required",
        "value": "must be a number",
    }


def test_a_repeated_bad_sensor_id_is_reported_at_each_index():
    bad = measurement(sensor="a\nb")
    assert reported(rejected(body(bad, GOOD, bad))) == [(0, "sensor"), (2, "sensor")]


def test_a_flood_of_errors_is_listed_up_to_the_limit_and_counted():
    error = rejected(body(*[measurement(value=None)] * (MAX_REPORTED_ERRORS + 50)))
    assert reported(error) == [(i, "value") for i in range(MAX_REPORTED_ERRORS)]
    assert f"{MAX_REPORTED_ERRORS + 50} invalid" in error.detail
    assert f"the first {MAX_REPORTED_ERRORS} listed" in error.detail


def test_a_batch_over_the_item_limit_is_too_large():
    limits = Limits(max_batch=3)
    assert parse_batch(body(GOOD, GOOD, GOOD), limits)["abc"].count == 3
    with pytest.raises(PayloadTooLarge, match="4 measurements; the limit is 3"):
        parse_batch(body(GOOD, GOOD, GOOD, GOOD), limits)


def test_the_item_limit_is_checked_before_the_items():
    with pytest.raises(PayloadTooLarge):
        parse_batch(body(None, None), Limits(max_batch=1))


def test_the_sensor_id_limit_is_configurable():
    limits = Limits(max_sensor_id=5)
    assert list(parse_batch(body(measurement(sensor="12345")), limits)) == ["12345"]
    assert reported(rejected(body(measurement(sensor="123456")), limits)) == [(0, "sensor")]


@pytest.mark.parametrize("sign", [1, -1], ids=["positive", "negative"])
def test_integers_are_accepted_exactly_up_to_the_edge_of_the_double_range(sign):
    # 2**1024 - 2**970 is halfway between the greatest double and 2**1024: it rounds up.
    edge, beyond = sign * LARGEST_INT, sign * (2**1024 - 2**970)
    assert (
        parse_batch(body(measurement(value=edge)), Limits())["abc"].mean
        == sign * 1.7976931348623157e308
    )
    assert reported(rejected(body(measurement(value=beyond)))) == [(0, "value")]


def test_raw_utf_8_bodies_are_read():
    data = json.dumps([measurement(sensor="温度 é")], ensure_ascii=False).encode()
    assert list(parse_batch(data, Limits())) == ["温度 é"]


# --- what is accepted ------------------------------------------------------------


def test_the_exercise_sample_is_read():
    assert parse_batch(body(GOOD), Limits()) == {"abc": stats([3.14], GOOD["timestamp"])}


def test_an_empty_array_is_a_batch_of_nothing():
    assert parse_batch(b"[]", Limits()) == {}
    assert parse_batch(b" \n[ ]\n", Limits()) == {}


def test_unknown_keys_are_ignored():
    item = measurement(unit="celsius", sensor_id="other", extra={"nested": [1, None]})
    assert parse_batch(body(item), Limits()) == parse_batch(body(GOOD), Limits())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(0, 0.0, id="zero"),
        pytest.param(-0.0, 0.0, id="negative-zero"),
        pytest.param(Raw("1e-400"), 0.0, id="underflow-to-zero"),
        pytest.param(5e-324, 5e-324, id="smallest-subnormal"),
        pytest.param(1.7976931348623157e308, 1.7976931348623157e308, id="greatest-double"),
        pytest.param(Raw("1E2"), 100.0, id="exponent"),
        pytest.param(2**53 + 1, 2.0**53, id="integer-beyond-2**53"),
        pytest.param(-(2**1023), -(2.0**1023), id="negative-2**1023"),
    ],
)
def test_every_finite_json_number_is_a_value(value, expected):
    assert parse_batch(body(measurement(value=value)), Limits())["abc"].mean == expected


@pytest.mark.parametrize(
    "timestamp",
    [
        "2021-11-09T21:38:09+01:00",
        "2021-11-09T21:38:09Z",
        "2021-11-09T21:38:09.123456789Z",
        "2021-11-09T21:38:09,5+05:30",
        "2021-11-09 21:38:09",
        "2021-11-09",
        "20211109T213809",
        "2021-11-09T21:38:09-23:59:59.999999",
        "0001-01-01T00:00:00+00:01",
        "9999-12-31T23:59:59.999999-23:59",
        "2021-11-09T21:38:09." + "1" * 44,  # 64 characters
    ],
)
def test_timestamps_are_kept_as_sent(timestamp):
    result = parse_batch(body(measurement(timestamp=timestamp)), Limits())
    assert result["abc"].as_json()["last_measurement"] == timestamp


@pytest.mark.parametrize("sensor", AWKWARD_SENSOR_IDS)
def test_awkward_sensor_ids_are_legal_and_kept_exactly(sensor):
    assert sensor_id_problem(sensor, Limits()) is None
    assert list(parse_batch(body(measurement(sensor=sensor)), Limits())) == [sensor]


def test_sensor_id_problems_say_what_is_wrong():
    limits = Limits(max_sensor_id=3)
    assert sensor_id_problem("", limits) == "must not be empty"
    assert sensor_id_problem("abcd", limits) == "must be at most 3 characters"
    assert "control characters" in sensor_id_problem("a\x00", limits)
    assert "surrogates" in sensor_id_problem("\udfff", limits)
    assert sensor_id_problem("abc", limits) is None


def test_measurements_are_grouped_by_exact_sensor_id():
    batch = body(
        measurement(sensor="a", value=1),
        measurement(sensor="ab", value=2),
        measurement(sensor="a/", value=3),
        measurement(sensor="A", value=4),
        measurement(sensor="é", value=5),
        measurement(sensor="e\u0301", value=6),
        measurement(sensor="a", value=7, timestamp="2021-11-09T21:38:10+01:00"),
    )
    assert parse_batch(batch, Limits()) == {
        "a": stats([1, 7], "2021-11-09T21:38:10+01:00"),
        "ab": stats([2], GOOD["timestamp"]),
        "a/": stats([3], GOOD["timestamp"]),
        "A": stats([4], GOOD["timestamp"]),
        "é": stats([5], GOOD["timestamp"]),
        "e\u0301": stats([6], GOOD["timestamp"]),
    }


def test_the_latest_timestamp_of_a_batch_respects_offsets_and_ties():
    batch = body(
        measurement(timestamp="2021-11-09T06:00:00+00:00"),
        measurement(timestamp="2021-11-09T10:00:00+05:00"),
        measurement(timestamp="2021-11-09T06:00:00Z"),
        measurement(timestamp="2021-11-09T06:00:00"),
    )
    assert parse_batch(batch, Limits())["abc"].latest.text == "2021-11-09T06:00:00Z"


# --- batching does not matter ------------------------------------------------------

sensors = st.sampled_from(["a", "ab", "a/", "温度"])
values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-LARGEST_INT, LARGEST_INT),
    st.sampled_from([2**1023, -LARGEST_INT, 2**53 + 1, 5e-324, 1.7e308]),
)
timestamp_texts = st.sampled_from(
    [
        "2021-11-09T06:00:00Z",
        "2021-11-09T06:00:00+00:00",
        "2021-11-09T06:00:00",
        "2021-11-09T10:00:00+05:00",
        "2021-11-09T11:00:00+05:00",
        "2021-11-09T05:59:59.999999-00:00",
        "2021-11-09T00:00:00-06:00",
    ]
)
items = st.lists(
    st.fixed_dictionaries({"sensor": sensors, "timestamp": timestamp_texts, "value": values}),
    max_size=25,
)


def merged(results: list[dict[str, Stats]]) -> dict[str, Stats]:
    total: dict[str, Stats] = {}
    for result in results:
        for sensor, delta in result.items():
            total[sensor] = total.get(sensor, EMPTY).merge(delta)
    return total


@given(items, st.data())
@settings(max_examples=examples(100), deadline=None)
def test_statistics_do_not_depend_on_order_or_on_how_a_batch_is_split(measurements, data):
    whole = parse_batch(body(*measurements), Limits())
    shuffled = data.draw(st.permutations(measurements))
    cuts = sorted(data.draw(st.sets(st.integers(0, len(shuffled)), max_size=6)))
    bounds = [0, *cuts, len(shuffled)]
    parts = [shuffled[a:b] for a, b in itertools.pairwise(bounds)]
    assert merged([parse_batch(body(*part), Limits()) for part in parts]) == whole
    for sensor, result in whole.items():
        mine = [m["value"] for m in measurements if m["sensor"] == sensor]
        assert result.count == len(mine)
        assert result.mean == float(sum(map(Fraction, mine)) / len(mine))


# --- the fast path reads exactly what the general path reads ---------------------
#
# `parse_batch` decodes batches of plain items with msgspec and leaves everything
# else to the stdlib path. The oracle below is `parse_batch` as it was before that
# (with the `instant_of` and `exact_sum` it used), unchanged but for names and comments,
# a lowercase z read as Z, and its words for a refusal, which are the general path's:
# for any body and limits, both must give the same `Stats`, bit for bit, in the
# same order, or the same exception with the same detail and errors.

ORACLE_SURROGATE = re.compile("[\ud800-\udfff]")
ORACLE_NOT_AN_OBJECT = "must be an object with sensor, timestamp and value"
ORACLE_FORBIDDEN_IN_SENSOR_ID = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
oracle_offsets: dict[tzinfo, int] = {}


def oracle_instant_of(text: str) -> int:
    if len(text) > 64 or (not text.isascii() and ORACLE_SURROGATE.search(text)):
        parse_datetime(text)  # raises, in its words
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        if not text.endswith("z"):
            parse_datetime(text)
        try:
            moment = datetime.fromisoformat(text[:-1] + "Z")
        except ValueError:
            parse_datetime(text)
            raise
    local = (
        moment.toordinal() * 86_400_000_000
        + ((moment.hour * 60 + moment.minute) * 60 + moment.second) * 1_000_000
        + moment.microsecond
    )
    zone = moment.tzinfo
    if zone is None:
        return local
    offset = oracle_offsets.get(zone)
    if offset is None:
        offset = moment.utcoffset() // timedelta(microseconds=1)
        if len(oracle_offsets) < 1024:
            oracle_offsets[zone] = offset
    return local - offset


def oracle_exact_sum(values: list[float | int]) -> tuple[int, int]:
    by_denominator: dict[int, int] = {}
    for value in values:
        numerator, denominator = value.as_integer_ratio()
        by_denominator[denominator] = by_denominator.get(denominator, 0) + numerator
    if not by_denominator:
        return 0, 0
    common = max(by_denominator)
    total = sum(n * (common // d) for d, n in by_denominator.items())
    mantissa, exponent = total, 1 - common.bit_length()
    if mantissa == 0:
        return 0, 0
    trailing_zeros = (mantissa & -mantissa).bit_length() - 1
    return mantissa >> trailing_zeros, exponent + trailing_zeros


class OracleNonFinite:
    def __init__(self, literal: str) -> None:
        self.literal = literal


def oracle_sensor_id_problem(sensor: str, limits: Limits) -> str | None:
    if not sensor:
        return "must not be empty"
    if len(sensor) > limits.max_sensor_id:
        return f"must be at most {limits.max_sensor_id} characters"
    if ORACLE_FORBIDDEN_IN_SENSOR_ID.search(sensor):
        return "must not contain control characters or unpaired surrogates"
    return None


def oracle_value_problem(value: object) -> str | None:
    if type(value) is float:
        return None if math.isfinite(value) else "must be finite"
    if type(value) is int:
        try:
            float(value)
        except OverflowError:
            return "must be finite as an IEEE double"
        return None
    if isinstance(value, OracleNonFinite):
        return f"must be finite, got {value.literal}"
    return "must be a number"


def oracle_decode(body: bytes) -> list[object]:
    try:
        document = json.loads(body, parse_constant=OracleNonFinite)
    except (RecursionError, ValueError):
        _decode(body)  # raises, in its words
        raise
    if not isinstance(document, list):
        _decode(body)
    return document


class OracleAccumulator:
    def __init__(self, instant: int, text: str) -> None:
        self.values: list[float | int] = []
        self.instant = instant
        self.text = text

    def add(self, value: float | int, instant: int, text: str) -> None:
        self.values.append(value)
        if instant > self.instant or (instant == self.instant and text > self.text):
            self.instant = instant
            self.text = text

    def stats(self) -> Stats:
        return Stats(
            len(self.values),
            *oracle_exact_sum(self.values),
            Timestamp(self.instant, self.text),
        )


def oracle_type_problem(item: dict[str, object], field: str, kind: str) -> str:
    return f"must be a {kind}" if field in item else "is required"


def oracle_parse_batch(body: bytes, limits: Limits) -> dict[str, Stats]:
    items = oracle_decode(body)
    if len(items) > limits.max_batch:
        raise PayloadTooLarge(
            f"the batch has {len(items)} measurements; the limit is {limits.max_batch}: "
            "send them in smaller batches"
        )
    errors: list[FieldError] = []
    sensors: dict[str, OracleAccumulator] = {}
    valid_ids: set[str] = set()
    for index, item in enumerate(items):
        if type(item) is not dict:
            errors.append(FieldError(index, None, ORACLE_NOT_AN_OBJECT))
            continue
        sensor = item.get("sensor")
        if type(sensor) is not str:
            errors.append(
                FieldError(index, "sensor", oracle_type_problem(item, "sensor", "string"))
            )
        elif sensor not in valid_ids:
            problem = oracle_sensor_id_problem(sensor, limits)
            if problem:
                errors.append(FieldError(index, "sensor", problem))
            else:
                valid_ids.add(sensor)

        text = item.get("timestamp")
        instant = 0
        if type(text) is not str:
            errors.append(
                FieldError(index, "timestamp", oracle_type_problem(item, "timestamp", "string"))
            )
        else:
            try:
                instant = oracle_instant_of(text)
            except ValueError as error:
                errors.append(FieldError(index, "timestamp", str(error)))

        value = item.get("value")
        problem = oracle_value_problem(value) if "value" in item else "is required"
        if problem:
            errors.append(FieldError(index, "value", problem))

        if errors:
            continue
        accumulator = sensors.get(sensor)
        if accumulator is None:
            accumulator = sensors[sensor] = OracleAccumulator(instant, text)
        accumulator.add(value, instant, text)

    if errors:
        shown = errors[:MAX_REPORTED_ERRORS]
        listed = f"the first {len(shown)} listed" if len(errors) > len(shown) else "listed"
        raise InvalidBatch(
            f"{len(errors)} invalid field(s), {listed} in errors; nothing was stored: "
            "correct them and send the whole batch again",
            tuple(shown),
        )
    return {sensor: accumulator.stats() for sensor, accumulator in sensors.items()}


def outcome(parse: Callable[[bytes, Limits], dict[str, Stats]], data: bytes, limits: Limits):
    """What a client would see of `parse`: every delta in order, or the whole error."""
    try:
        return "stored", list(parse(data, limits).items())
    except InvalidBatch as error:
        return "invalid", error.detail, error.errors
    except PayloadTooLarge as error:
        return "too large", error.detail


def assert_same_as_oracle(data: bytes, limits: Limits = DEFAULT_LIMITS) -> None:
    assert outcome(parse_batch, data, limits) == outcome(oracle_parse_batch, data, limits)


ITEM = '{"sensor":"a","timestamp":"2021-11-09T21:38:09+01:00","value":%s}'
PLAIN = ITEM % "1"

# Each names a way the two decoders could part; the oracle says what is right.
NASTY_BODIES = [
    pytest.param(f"[{PLAIN},{ITEM % 'NaN'}]", id="NaN-by-index"),
    pytest.param(f"[{ITEM % 'Infinity'},{PLAIN},{ITEM % '-Infinity'}]", id="Infinity-by-index"),
    pytest.param(f"[{PLAIN},{ITEM % '1e400'}]", id="1e400"),
    pytest.param(f"[{ITEM % '1e-400'}]", id="1e-400-is-zero"),
    pytest.param(f"[{ITEM % '-0'},{ITEM % '-0.0'}]", id="negative-zeros"),
    pytest.param(f"[{ITEM % (2**53)},{ITEM % '1'}]", id="2**53-plus-1-exactly"),
    pytest.param(f"[{ITEM % (2**53 + 1)},{ITEM % '1'}]", id="int-beyond-2**53"),
    pytest.param(f"[{ITEM % (2**64)},{ITEM % -(2**63 + 1)}]", id="ints-beyond-64-bits"),
    pytest.param(f"[{ITEM % LARGEST_INT},{ITEM % -LARGEST_INT}]", id="largest-ints"),
    pytest.param(f"[{ITEM % (LARGEST_INT + 1)}]", id="int-rounding-to-infinity"),
    pytest.param(f"[{ITEM % ('1' * 4301)}]", id="int-over-the-digit-limit"),
    pytest.param(f"[{ITEM % '9007199254740993.0'}]", id="float-rounded-at-parse"),
    pytest.param(f"[{ITEM % '1.7976931348623159e308'}]", id="float-rounding-to-max"),
    pytest.param(f"[{ITEM % '2.4703282292062328e-324'}]", id="float-rounding-to-subnormal"),
    pytest.param(
        '[{"sensor":"a","sensor":"b","timestamp":"2021-11-09","value":1,"value":2}]',
        id="duplicate-keys-last-wins",
    ),
    pytest.param(
        '[{"sensor":"a","timestamp":"2021-11-09","value":"x","value":2}]',
        id="duplicate-key-bad-then-good",
    ),
    pytest.param(
        '[{"sensor":"a","timestamp":"2021-11-09","value":2,"value":null}]',
        id="duplicate-key-good-then-bad",
    ),
    pytest.param(
        '[{"\\u0073ensor":"a","timestamp":"2021-11-09","valu\\u0065":1}]', id="escaped-keys"
    ),
    pytest.param(
        '[{"sensor":"\\ud800","timestamp":"2021-11-09","value":1}]', id="lone-surrogate-id"
    ),
    pytest.param(
        '[{"sensor":"a","timestamp":"2021-11-09\\udfff21:38","value":1}]', id="lone-surrogate-ts"
    ),
    pytest.param(
        '[{"sensor":"\\ud83c\\udf21","timestamp":"2021-11-09","value":1}]', id="surrogate-pair"
    ),
    pytest.param(b'[{"sensor":"\xed\xa0\x80","timestamp":"2021-11-09","value":1}]', id="cesu-8"),
    pytest.param(b'[{"sensor":"\xff","timestamp":"2021-11-09","value":1}]', id="not-utf-8"),
    pytest.param(b"\xef\xbb\xbf[" + PLAIN.encode() + b"]", id="utf-8-bom"),
    pytest.param(f"[{PLAIN}]".encode("utf-16"), id="utf-16"),
    pytest.param(f"[{PLAIN}]".encode("utf-32-le"), id="utf-32-no-bom"),
    pytest.param(f"\x0c[{PLAIN}]", id="form-feed-is-not-whitespace"),
    pytest.param(f" \t\r\n[ {PLAIN} ]\n", id="json-whitespace"),
    pytest.param(f"[{PLAIN}] x", id="trailing-data"),
    pytest.param(f"[{PLAIN}]\x00", id="trailing-nul"),
    pytest.param(f'[{PLAIN[:-1]},"unit":"C"}}]', id="unknown-key"),
    pytest.param(f'[{PLAIN[:-1]},"x":NaN}}]', id="NaN-in-an-unknown-key"),
    pytest.param(f'[{PLAIN[:-1]},"x":1e400}}]', id="1e400-in-an-unknown-key"),
    pytest.param(f'[{PLAIN[:-1]},"x":{"1" * 4301}}}]', id="long-int-in-an-unknown-key"),
    pytest.param(f'[{PLAIN[:-1]},"x":"\\ud800"}}]', id="surrogate-in-an-unknown-key"),
    pytest.param(f'[{PLAIN[:-1]},"x":{"[" * 5000}{"]" * 5000}}}]', id="deep-unknown-key"),
    pytest.param(f'[{PLAIN[:-1]},"x":"\x01"}}]', id="control-character"),
    pytest.param('[{"sensor":"a","timestamp":"2021-11-09","value":true}]', id="value-true"),
    pytest.param('[{"sensor":"","timestamp":"2021-11-09","value":1}]', id="empty-id"),
    pytest.param('[{"sensor":"a","timestamp":"2021-02-30","value":1}]', id="february-30"),
    pytest.param('[{"sensor":"a","timestamp":"2021-11-09","value":1}, 5]', id="item-not-object"),
    pytest.param('[{"sensor":"a","value":1}]', id="timestamp-missing"),
    pytest.param("[" + ",".join([PLAIN] * 4) + "]", id="over-the-item-limit"),
    pytest.param("[" + ",".join([PLAIN, "5"] * 2) + "]", id="over-the-limit-and-invalid"),
    pytest.param("[]", id="empty-array"),
    pytest.param("", id="empty-body"),
]


@pytest.mark.parametrize("data", NASTY_BODIES)
def test_nasty_bodies_are_read_exactly_as_before(data):
    data = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    assert_same_as_oracle(data, Limits(max_batch=3))
    assert_same_as_oracle(data)


def test_integers_a_double_cannot_hold_are_summed_exactly():
    # A sum in doubles would give 2**53 for the first and drop the 1s in the second.
    # Negative ones alike: doubles would make -(2**53 + 1) + 2**53 zero, not -1.
    for values in ([2**53, 1], [2**53, 1, 2**64 + 1, -(2**64)], [-(2**53 + 1), 2**53]):
        result = parse_batch(body(*(measurement(value=v) for v in values)), Limits())["abc"]
        assert Fraction(result.mantissa) * Fraction(2) ** result.exponent == sum(values)
        assert result.count == len(values)


def test_many_timestamps_in_a_batch_give_each_sensor_its_latest():
    texts = [f"2021-11-09T21:38:{s:02}+01:00" for s in range(60)]
    items = [measurement(sensor=f"s{i % 7}", timestamp=t) for i, t in enumerate(texts)]
    # The same instant as s0's latest, 21:38:56+01:00, and the greater text.
    items.insert(3, measurement(sensor="s0", timestamp="2021-11-09T20:38:56.0Z"))
    items.insert(5, measurement(sensor="s0", timestamp="2021-11-09T21:38:56.0+01:00"))
    result = parse_batch(body(*items), Limits())
    assert {sensor: stats.latest.text for sensor, stats in result.items()} == {
        "s0": "2021-11-09T21:38:56.0+01:00",
        **{f"s{k}": max(texts[k::7]) for k in range(1, 7)},
    }
    assert [stats.count for stats in result.values()] == [11, 9, 9, 9, 8, 8, 8]


# JSON texts, not Python values: most of what matters here (NaN, 1e400, duplicate
# keys, lone surrogates, odd whitespace, bad bytes) cannot come out of `json.dumps`.

EDGE_NUMBERS = [
    "0", "-0", "-0.0", "0e0", "0E+0", "1E2", "1e-400", "-1e-400", "1e400", "-1e400",
    "NaN", "Infinity", "-Infinity", "5e-324", "2.4703282292062327e-324",
    "2.4703282292062328e-324", "2.2250738585072011e-308", "2.2250738585072014e-308",
    "1.7976931348623157e308", "1.7976931348623158e308", "1.7976931348623159e308",
    "-1.7976931348623157e308", "1e99999999999999999999", "1e-99999999999999999999",
    "0." + "0" * 400 + "1e400", "0.1" + "1" * 800, "9007199254740991", "9007199254740992",
    "9007199254740993", "-9007199254740992", "-9007199254740993", "9007199254740993.0",
    str(2**63 - 1), str(2**63), str(2**64), str(-(2**63) - 1), str(LARGEST_INT),
    str(LARGEST_INT + 1), str(-LARGEST_INT), str(10**400), "1" * 4300, "1" * 4301,
    "01", "1.", ".5", "+1", "1e", "--1", "0x10", "1_000",
    # Decimal texts on, just under and just over a halfway point between two doubles.
    "1.00000000000000011102230246251565404236316680908203125",
    "1.00000000000000011102230246251565404236316680908203124",
    "1.00000000000000011102230246251565404236316680908203126",
    "9007199254740993", "9007199254740993.0000000000000000000001", "7.038531e-26",
    "2.2250738585072012e-308", "4.9406564584124654e-324", "1.4e-45",
]  # fmt: skip


@st.composite
def number_grammar(draw: st.DrawFn) -> str:
    """Numbers as JSON's grammar writes them, with every part at random lengths."""
    sign = draw(st.sampled_from(["", "-"]))
    digits = draw(st.sampled_from(["0", "1"]) | st.from_regex(r"[1-9][0-9]{0,40}", fullmatch=True))
    fraction = draw(st.just("") | st.from_regex(r"\.[0-9]{1,40}", fullmatch=True))
    exponent = draw(
        st.just("")
        | st.builds(
            "{}{}{}".format,
            st.sampled_from("eE"),
            st.sampled_from(["", "+", "-"]),
            st.integers(0, 400),
        )
    )
    return sign + digits + fraction + exponent


# Numbers the fast path takes: doubles, and integers a double holds exactly.
double_numbers = st.one_of(
    st.integers(-100, 100).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.decimals(min_value=-50, max_value=150, places=2).map(str),
    st.integers(-(2**53), 2**53).map(str),
)
numbers = st.one_of(
    double_numbers,
    st.integers(2**53 - 4, 2**53 + 4).map(str),
    st.integers(-(2**80), 2**80).map(str),
    st.integers(-2 * LARGEST_INT, 2 * LARGEST_INT).map(str),
    st.sampled_from(EDGE_NUMBERS),
    number_grammar(),
)

LONE_SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff"]
odd_texts = st.text(
    st.characters(codec=None, categories=["L", "N", "P", "S", "Z", "Cc", "Cf", "Co"])
    | st.sampled_from(LONE_SURROGATES),
    max_size=8,
)


def clean_strings(texts: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """JSON strings of `texts` as `json.dumps` writes them, escaped or raw."""
    return st.builds(json.dumps, texts, ensure_ascii=st.booleans())


@st.composite
def broken_strings(draw: st.DrawFn, texts: st.SearchStrategy[str]) -> str:
    """JSON strings with a bad escape, a raw control character or a stray quote."""
    inner = json.dumps(draw(texts))[1:-1]
    cut = draw(st.integers(0, len(inner)))
    spoiler = draw(st.sampled_from(["\\x", "\\u12", "\x01", "\t", "\\", '"']))
    return '"' + inner[:cut] + spoiler + inner[cut:] + '"'


VALID_SENSOR_IDS = ["a", "s-1", "s-2", "ab", "a/", "温度", "e\u0301", "x" * 256]
SENSOR_IDS = [*VALID_SENSOR_IDS, "x" * 257, "", "a\nb", "a\x7f", "\ud800"]
VALID_TIMESTAMPS = [
    "2021-11-09T21:38:09+01:00",
    "2021-11-09T20:38:09Z",
    "2021-11-09T20:38:09+00:00",
    "2021-11-09T20:38:09",
    "2021-11-09T20:38:09.000001Z",
    "2021-11-09T21:38:09.123456789+01:00",
    "2021-11-09",
]
TIMESTAMPS = [
    *VALID_TIMESTAMPS,
    "2021-13-09T21:38:09",
    "2021-02-30",
    "yesterday",
    "",
    "2021-11-09T21:38:09." + "1" * 44,
    "2021-11-09T21:38:09." + "1" * 45,
    "2021-11-09\ud80021:38:09",
]
offsets = st.none() | st.one_of(
    st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timedelta(minutes=m)),
    st.integers(-(86_400 * 10**6 - 1), 86_400 * 10**6 - 1).map(
        lambda us: timedelta(microseconds=us)
    ),
).map(timezone)


def generated_timestamps(valid: bool) -> st.SearchStrategy[str]:
    """What `datetime.isoformat` writes, any separator, precision and offset; if not
    `valid`, also with an unpaired surrogate as the separator, or too long."""
    separators = ["T", " ", "é"] if valid else ["T", " ", "é", "\ud800"]
    texts = st.builds(
        datetime.isoformat,
        st.builds(datetime.replace, st.datetimes(), tzinfo=offsets),
        sep=st.sampled_from(separators),
        timespec=st.sampled_from(["auto", "seconds", "milliseconds", "microseconds"]),
    )
    if valid:
        return texts | texts.map(lambda t: t[:-6] + "Z" if t.endswith("+00:00") else t)
    return texts | texts.map(lambda t: t + "1" * 30)


valid_timestamps = st.sampled_from(VALID_TIMESTAMPS) | generated_timestamps(valid=True)

json_scalars = st.one_of(
    st.sampled_from(["null", "true", "false", "[]", "{}"]),
    numbers,
    clean_strings(odd_texts),
)


def json_containers(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Arrays and objects of `inner` texts."""
    arrays = st.lists(inner, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]")
    members = st.lists(st.tuples(clean_strings(odd_texts), inner), max_size=3)
    objects = members.map(lambda kvs: "{" + ",".join(f"{k}:{v}" for k, v in kvs) + "}")
    return arrays | objects


json_values = st.recursive(json_scalars, json_containers, max_leaves=6)
# Nesting well inside and well beyond the recursion limit (the depth at which
# `json.loads` gives up depends on how deep the caller's stack already is).
deeply_nested = st.sampled_from([1, 2, 30, 3_000]).map(lambda d: "[" * d + "]" * d)

VALID_FIELDS = {
    "sensor": clean_strings(st.sampled_from(VALID_SENSOR_IDS)),
    "timestamp": clean_strings(valid_timestamps),
    "value": double_numbers,
}
ANY_FIELDS = {
    "sensor": st.one_of(
        clean_strings(st.sampled_from(SENSOR_IDS) | odd_texts),
        broken_strings(odd_texts),
        json_values,
    ),
    "timestamp": st.one_of(
        clean_strings(st.sampled_from(TIMESTAMPS) | generated_timestamps(valid=False)),
        broken_strings(st.sampled_from(VALID_TIMESTAMPS)),
        json_values,
    ),
    "value": st.one_of(numbers, numbers, json_values),
}
# Mostly right, sometimes anything: so that one bad field hides among good ones.
MIXED_FIELDS = {key: st.one_of(*[VALID_FIELDS[key]] * 4, ANY_FIELDS[key]) for key in ANY_FIELDS}
KEY_SPELLINGS = {
    "sensor": ['"sensor"', '"\\u0073ensor"'],
    "timestamp": ['"timestamp"'],
    "value": ['"value"', '"valu\\u0065"'],
}
OTHER_KEYS = ['"unit"', '"Sensor"', '""', '"values"']
json_whitespace = st.sampled_from(["", "", "", " ", "\n", "\t", "\r\n"])
any_whitespace = st.one_of(json_whitespace, st.sampled_from(["\x0c", "\u00a0", "\x0b"]))


@st.composite
def items(
    draw: st.DrawFn,
    fields: dict[str, st.SearchStrategy[str]],
    others: bool,
    whitespace: st.SearchStrategy[str] = any_whitespace,
) -> str:
    """An object with the three fields in any order, some repeated (the last counts),
    some missing if `others`, and then other keys too."""
    keys = list(fields)
    if others:
        keys = draw(st.lists(st.sampled_from(keys), max_size=4))
    keys += draw(st.lists(st.sampled_from(list(fields)), max_size=2))
    members = [(draw(st.sampled_from(KEY_SPELLINGS[k])), draw(fields[k])) for k in keys]
    if others:
        members += draw(
            st.lists(
                st.tuples(st.sampled_from(OTHER_KEYS), json_values | deeply_nested), max_size=2
            )
        )
    members = draw(st.permutations(members))
    return "{" + ",".join(f"{draw(whitespace)}{k}:{v}" for k, v in members) + "}"


any_items = st.one_of(items(ANY_FIELDS, others=True), json_values, deeply_nested)


@st.composite
def documents(
    draw: st.DrawFn,
    elements: st.SearchStrategy[list[str]],
    damage: bool = True,
    whitespace: st.SearchStrategy[str] = any_whitespace,
) -> bytes:
    """A body: an array of `elements`, then, if `damage`, maybe not an array or not UTF-8."""
    text = "[" + ",".join(draw(whitespace) + e + draw(whitespace) for e in draw(elements)) + "]"
    if not damage:
        return text.encode()
    text = draw(st.sampled_from([text] * 6 + [f" {text}\n", text + " x", "{" + text[1:-1] + "}"]))
    data = text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes 3 bytes json reads
    harm = draw(st.sampled_from(["none"] * 8 + ["bom", "utf-16", "bad byte", "truncated"]))
    if harm == "bom":
        data = b"\xef\xbb\xbf" + data
    elif harm == "utf-16":
        data = text.encode("utf-16", "surrogatepass")
    elif harm == "bad byte":
        at = draw(st.integers(0, len(data)))
        bad = draw(st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\x00"]))
        data = data[:at] + bad + data[at:]
    elif harm == "truncated":
        data = data[: draw(st.integers(0, len(data)))]
    return data


limits_any = st.builds(
    Limits,
    max_batch=st.sampled_from([10_000, 10_000, 0, 1, 3, 8]),
    max_sensor_id=st.sampled_from([256, 256, 1, 5, 300]),
)


@given(
    documents(st.lists(st.one_of(items(MIXED_FIELDS, others=False), any_items), max_size=12)),
    limits_any,
)
@settings(max_examples=examples(400), deadline=None)
def test_any_body_is_read_exactly_as_before(data, limits):
    assert_same_as_oracle(data, limits)


@given(
    documents(
        st.lists(items(VALID_FIELDS, others=False, whitespace=json_whitespace), max_size=20),
        damage=False,
        whitespace=json_whitespace,
    )
)
@settings(max_examples=examples(200), deadline=None)
def test_valid_plain_batches_take_the_fast_path_and_read_exactly_as_before(data):
    assert _parse_plain_batch(data, DEFAULT_LIMITS) is not None
    assert_same_as_oracle(data)


@st.composite
def device_batches(draw: st.DrawFn) -> bytes:
    """Batches as devices send them: every timestamp in one format and one offset."""
    start = draw(st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 1, 1)))
    spec = draw(st.sampled_from(["minutes", "seconds", "milliseconds", "microseconds"]))
    offset = draw(st.sampled_from(["", "Z", "+00:00", "-05:30", "+14:00"]))
    # Digits past microseconds, which fromisoformat drops: equal instants, other texts.
    extras = st.sampled_from(["0", "9"]) if spec == "microseconds" else st.just("")
    readings = st.tuples(
        st.sampled_from(VALID_SENSOR_IDS[:4]), st.integers(0, 10**9), extras, double_numbers
    )
    members = []
    for sensor, step, extra, value in draw(st.lists(readings, max_size=40)):
        stamp = (start + timedelta(microseconds=step)).isoformat("T", spec) + extra + offset
        members.append(f'{{"sensor":{json.dumps(sensor)},"timestamp":"{stamp}","value":{value}}}')
    return ("[" + ",".join(members) + "]").encode()


@given(device_batches())
@settings(max_examples=examples(200), deadline=None)
def test_device_batches_take_the_fast_path_and_read_exactly_as_before(data):
    assert _parse_plain_batch(data, DEFAULT_LIMITS) is not None
    assert_same_as_oracle(data)


NOT_AN_OBJECT = "must be an object with sensor, timestamp and value"


@pytest.mark.parametrize(
    ("item", "field", "message"),
    [
        pytest.param(measurement(sensor=MISSING), "sensor", "is required", id="sensor-missing"),
        pytest.param(measurement(sensor=None), "sensor", "must be a string", id="sensor-null"),
        pytest.param(measurement(sensor=7), "sensor", "must be a string", id="sensor-number"),
        pytest.param(measurement(sensor=""), "sensor", "must not be empty", id="sensor-empty"),
        pytest.param(
            measurement(sensor="a" * 257),
            "sensor",
            "must be at most 256 characters",
            id="sensor-too-long",
        ),
        pytest.param(
            measurement(sensor="a\x7fb"),
            "sensor",
            "must not contain control characters or unpaired surrogates",
            id="sensor-control",
        ),
        pytest.param(
            measurement(timestamp=MISSING), "timestamp", "is required", id="timestamp-missing"
        ),
        pytest.param(
            measurement(timestamp=None), "timestamp", "must be a string", id="timestamp-null"
        ),
        pytest.param(
            measurement(timestamp=1636490289),
            "timestamp",
            "must be a string",
            id="timestamp-number",
        ),
        pytest.param(
            measurement(timestamp=["2021-11-09T21:38:09Z"]),
            "timestamp",
            "must be a string",
            id="timestamp-list",
        ),
        pytest.param(measurement(value=MISSING), "value", "is required", id="value-missing"),
        pytest.param(measurement(value=None), "value", "must be a number", id="value-null"),
        pytest.param(measurement(value="1"), "value", "must be a number", id="value-string"),
        pytest.param(measurement(value=True), "value", "must be a number", id="value-true"),
        pytest.param(
            measurement(value=Raw("NaN")), "value", "must be finite, got NaN", id="value-NaN"
        ),
        pytest.param(
            measurement(value=Raw("-Infinity")),
            "value",
            "must be finite, got -Infinity",
            id="value-minus-Infinity",
        ),
        pytest.param(
            measurement(value=Raw("1e400")), "value", "must be finite", id="value-overflows"
        ),
        pytest.param(
            measurement(value=Raw("1" + "0" * 309)),
            "value",
            "must be finite as an IEEE double",
            id="value-integer-too-large",
        ),
        pytest.param("not an object", None, NOT_AN_OBJECT, id="string-item"),
        pytest.param(Raw("[1]"), None, NOT_AN_OBJECT, id="list-item"),
    ],
)
def test_each_field_refusal_has_its_exact_words(item, field, message):
    error = rejected(body(GOOD, item))
    assert [(e.index, e.field, e.message) for e in error.errors] == [(1, field, message)]
    assert error.detail == (
        "1 invalid field(s), listed in errors; nothing was stored: "
        "correct them and send the whole batch again"
    )


def test_a_truncated_list_of_refusals_says_how_many_it_shows():
    error = rejected(body(*[measurement(value=None)] * (MAX_REPORTED_ERRORS + 1)))
    assert error.detail == (
        f"{MAX_REPORTED_ERRORS + 1} invalid field(s), the first {MAX_REPORTED_ERRORS} "
        "listed in errors; nothing was stored: correct them and send the whole batch again"
    )


def test_the_limits_are_the_documented_defaults():
    # README, settings: 10,000 measurements, ids of 256 characters, 100 errors listed.
    assert (DEFAULT_LIMITS.max_batch, DEFAULT_LIMITS.max_sensor_id) == (10_000, 256)
    assert MAX_REPORTED_ERRORS == 100
    assert {DEFAULT_LIMITS: 1}[Limits(10_000, 256)] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_LIMITS.max_batch = 1  # type: ignore[misc]


SEND = "send a JSON array of measurements"


def not_json(reason: str, column: int, line: int = 1) -> str:
    return f"the body is not valid JSON: {reason} at line {line}, column {column}; {SEND}"


def not_an_array(kind: str) -> str:
    return f"the body is {kind}, not an array; {SEND} (one in [ ] too)"


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        pytest.param(b"", f"the body is empty; {SEND}", id="empty"),
        pytest.param(b" \t\r\n", f"the body is empty; {SEND}", id="blank"),
        pytest.param(b"X", not_json("a value is missing or malformed", 1), id="a-letter"),
        pytest.param(b"[1,]", not_json("a value is missing or malformed", 4), id="value"),
        pytest.param(b"[] x", not_json("something follows the array", 4), id="extra-data"),
        pytest.param(b'["abc', not_json("a string is not closed", 2), id="unterminated"),
        pytest.param(
            b'["a\nb"]',
            not_json("a string holds a raw control character (escape it)", 4),
            id="control-character",
        ),
        pytest.param(b"[{a:1}]", not_json("a key is not a string in double quotes", 3), id="key"),
        pytest.param(b"[1 2]", not_json("a comma is missing", 4), id="comma"),
        pytest.param(b'[{"a" 1}]', not_json("a colon is missing", 7), id="colon"),
        pytest.param(
            b'["\\q"]', not_json("a string holds an invalid backslash escape", 3), id="escape"
        ),
        pytest.param(
            b'["\\u12"]', not_json("a string holds an invalid \\u escape", 4), id="u-escape"
        ),
        pytest.param(b"[\n1 2]", not_json("a comma is missing", 3, line=2), id="line"),
        pytest.param(
            b"[" + b"1" * 5000 + b"]",
            f"the body holds a number of more than {sys.get_int_max_str_digits()} digits; {SEND}",
            id="long-number",
        ),
        pytest.param(
            b"[" * 100_000, f"the body is nested too deeply; {SEND}, each a flat object", id="deep"
        ),
        pytest.param(b"{}", not_an_array("an object"), id="object"),
        pytest.param(b'"s"', not_an_array("a string"), id="string"),
        pytest.param(b"true", not_an_array("true or false"), id="boolean"),
        pytest.param(b"null", not_an_array("null"), id="null"),
        pytest.param(b"5.5", not_an_array("a number"), id="number"),
        pytest.param(
            gzip.compress(b"[]"),
            "the body is gzip-compressed but says nothing of it; send it with "
            "Content-Encoding: gzip, or uncompressed",
            id="gzip",
        ),
        pytest.param(
            b'["\xff"]',
            f"the body is not UTF-8: byte 0xff at offset 2 is not valid there; {SEND} in UTF-8",
            id="not-utf-8",
        ),
    ],
)
def test_each_body_refusal_has_its_exact_words(data, detail):
    error = rejected(data)
    assert (error.detail, error.errors) == (detail, ())


def test_the_later_instant_wins_over_a_greater_text_on_either_path():
    # 13:00+02:00 is earlier than 12:00Z but the greater text: only the instant counts.
    earlier, later = "2021-11-09T13:00:00+02:00", "2021-11-09T12:00:00Z"
    for extra in ({}, {"note": "forces the general path"}):
        batch = body(measurement(timestamp=later, **extra), measurement(timestamp=earlier))
        assert parse_batch(batch, Limits())["abc"].latest.text == later
