"""Reading a POST body: every bad-input class of CONTRACT §2, and exact grouping by sensor.

The tables `BAD_DOCUMENTS` and `BAD_FIELDS` are driven through `parse_batch`
here and through the HTTP app in test_app.py.
"""

from __future__ import annotations

import itertools
import json
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensorstats.batch import MAX_REPORTED_ERRORS, Limits, parse_batch, sensor_id_problem
from sensorstats.errors import FieldError, InvalidBatch, PayloadTooLarge
from sensorstats.stats import EMPTY, Stats, Timestamp

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
    assert f"the first {MAX_REPORTED_ERRORS} are listed" in error.detail


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
@settings(max_examples=100, deadline=None)
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
