"""The statistics value: exact means, merge laws, latest timestamps, the stored record.

The oracle for every mean is the contract's own (§3): the mean of the real
numbers, rounded once, ``float(sum(map(Fraction, values)) / len(values))``.
Equality of `Stats` is always the whole value, bit for bit: count, exact sum
and latest timestamp.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensorstats.core.stats import (
    EMPTY,
    MAX_TIMESTAMP_LENGTH,
    Stats,
    Timestamp,
    UnknownRecordVersion,
    exact_double_sum,
    exact_sum,
    instant_of,
    order_as_text,
)
from tests.support.examples import examples

# The greatest integer `float()` accepts: it rounds down to the greatest double.
# One more, 2**1024 - 2**970, is the halfway point and rounds up to infinity.
LARGEST_INT = 2**1024 - 2**970 - 1
MAX_DOUBLE = 1.7976931348623157e308
SMALLEST_SUBNORMAL = 5e-324

EDGE_VALUES = [
    0,
    -0.0,
    SMALLEST_SUBNORMAL,
    -SMALLEST_SUBNORMAL,
    MAX_DOUBLE,
    -MAX_DOUBLE,
    2**1023,
    -(2**1023),
    2**53 + 1,
    -(2**53 + 1),
    LARGEST_INT,
    -LARGEST_INT,
    1e308,
    1.7e308,
]

values_ = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-LARGEST_INT, max_value=LARGEST_INT),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from(EDGE_VALUES),
)
# Readings as sensors send them: few significant digits, a narrow range.
readings = st.decimals(min_value=-50, max_value=150, places=2).map(float)
any_values = st.one_of(values_, readings)


def oracle_mean(values: list[float | int]) -> float:
    return float(sum(map(Fraction, values)) / len(values))


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    """ISO 8601 texts `fromisoformat` accepts: any offset, naive, ``Z``, any precision."""
    moment = draw(st.datetimes())
    offset = draw(
        st.one_of(
            st.none(),
            st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timedelta(minutes=m)),
            st.integers(-(86_400 * 10**6 - 1), 86_400 * 10**6 - 1).map(
                lambda us: timedelta(microseconds=us)
            ),
        )
    )
    spec = draw(st.sampled_from(["auto", "seconds", "milliseconds", "microseconds"]))
    if offset is None:
        return moment.isoformat(timespec=spec)
    text = moment.replace(tzinfo=timezone(offset)).isoformat(timespec=spec)
    if offset == timedelta(0) and draw(st.booleans()):
        text = text.removesuffix("+00:00") + "Z"
    return text


# One instant written five ways: ties between different texts are common here.
TIED_TEXTS = [
    "2021-11-09T20:38:09Z",
    "2021-11-09T20:38:09+00:00",
    "2021-11-09T20:38:09",
    "2021-11-09T21:38:09+01:00",
    "2021-11-09T15:08:09.000-05:30",
]
any_timestamps = st.one_of(timestamps(), st.sampled_from(TIED_TEXTS))
measurements = st.tuples(any_values, any_timestamps)


def sort_key(text: str) -> tuple[timedelta, str]:
    """The contract's order, computed without `sensorstats`: instant, then text."""
    moment = datetime.fromisoformat(text)
    since_origin = moment.replace(tzinfo=None) - datetime.min
    return since_origin - (moment.utcoffset() or timedelta(0)), text


def one(value: float | int, text: str) -> Stats:
    return Stats.of([value], Timestamp.parse(text))


def batch_of(items: list[tuple[float | int, str]]) -> Stats:
    """The statistics of one batch, built as `parse_batch` builds them."""
    return Stats.of([v for v, _ in items], max(Timestamp.parse(t) for _, t in items))


def fold(parts: Iterable[Stats]) -> Stats:
    total = EMPTY
    for part in parts:
        total = total.merge(part)
    return total


def merge_tree(data: st.DataObject, parts: list[Stats]) -> Stats:
    """Merge `parts` in their order but in a tree shape Hypothesis chooses."""
    if not parts:
        return EMPTY
    if len(parts) == 1:
        return parts[0]
    cut = data.draw(st.integers(1, len(parts) - 1))
    return merge_tree(data, parts[:cut]).merge(merge_tree(data, parts[cut:]))


def split(data: st.DataObject, items: list[tuple[float | int, str]]) -> list[list]:
    """`items` cut into non-empty runs at points Hypothesis chooses."""
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(items) - 1)))))
    bounds = [0, *(c for c in cuts if c < len(items)), len(items)]
    return [items[a:b] for a, b in itertools.pairwise(bounds) if a < b]


stats_values = st.lists(measurements, min_size=1, max_size=4).map(batch_of)
any_stats = st.one_of(st.just(EMPTY), stats_values)


# --- the mean ----------------------------------------------------------------


@given(st.lists(any_values, min_size=1, max_size=40))
@settings(max_examples=examples(200), deadline=None)
def test_mean_is_the_exact_mean_rounded_once(values):
    assert Stats.of(values, Timestamp.parse("2021-01-01T00:00:00Z")).mean == oracle_mean(values)


@given(st.lists(any_values, min_size=1, max_size=40))
@settings(max_examples=examples(100), deadline=None)
def test_mean_of_merged_single_measurements_is_exact(values):
    stats = fold([one(v, "2021-01-01T00:00:00Z") for v in values])
    assert stats.mean == oracle_mean(values)


@pytest.mark.parametrize(
    ("values", "mean"),
    [
        pytest.param([3.14], 3.14, id="one"),
        pytest.param([0.1, 0.2, 0.3], 0.2, id="naive-sum-says-0.20000000000000004"),
        pytest.param([1.0, 1e100, -1e100], 1 / 3, id="cancellation"),
        pytest.param([1.7e308, 1.7e308], 1.7e308, id="huge-twice-no-overflow"),
        pytest.param([MAX_DOUBLE] * 5, MAX_DOUBLE, id="greatest-double-five-times"),
        pytest.param([-MAX_DOUBLE, -MAX_DOUBLE], -MAX_DOUBLE, id="least-double-twice"),
        pytest.param([LARGEST_INT, LARGEST_INT], MAX_DOUBLE, id="largest-int-twice"),
        pytest.param([2**1023, 2**1023, 2**1023], 2.0**1023, id="2**1023-ints"),
        pytest.param([2**53 + 1], 2.0**53, id="2**53+1-rounds-to-even"),
        pytest.param([2**53 + 1, 2**53 + 3], 2.0**53 + 2, id="2**53+1-kept-exactly"),
        pytest.param([SMALLEST_SUBNORMAL] * 3, SMALLEST_SUBNORMAL, id="subnormals"),
        pytest.param([1e308, SMALLEST_SUBNORMAL, -1e308], 0.0, id="subnormal-among-giants"),
        pytest.param([1, 2], 1.5, id="integers"),
        pytest.param([-0.0], 0.0, id="negative-zero"),
    ],
)
def test_mean_examples(values, mean):
    stats = Stats.of(values, Timestamp.parse("2021-01-01T00:00:00Z"))
    assert stats.mean == mean == oracle_mean(values)


def test_typical_readings_average_exactly():
    readings = [21.37, 21.38, 21.36] * 1000
    stats = fold(one(v, "2021-11-09T21:38:09+01:00") for v in readings)
    assert stats.mean == 21.37
    assert stats.count == 3000


def test_empty_statistics_are_the_exercise_sample():
    assert EMPTY.mean == 0.0
    assert EMPTY.as_json() == {"last_measurement": None, "count": 0, "avg": 0.0}


def test_as_json_serves_count_mean_and_timestamp_text():
    stats = Stats.of([3.14], Timestamp.parse("2021-11-09T21:38:09+01:00"))
    assert stats.as_json() == {
        "last_measurement": "2021-11-09T21:38:09+01:00",
        "count": 1,
        "avg": 3.14,
    }


@given(st.lists(any_values, max_size=40))
@settings(max_examples=examples(200), deadline=None)
def test_exact_sum_is_the_exact_normalised_sum(values):
    mantissa, exponent = exact_sum(values)
    assert Fraction(mantissa) * Fraction(2) ** exponent == sum(map(Fraction, values))
    assert mantissa % 2 == 1 or (mantissa, exponent) == (0, 0)


# What `exact_double_sum` takes: finite doubles, and integers a double holds exactly.
doubles = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.sampled_from([v for v in EDGE_VALUES if type(v) is float or abs(v) <= 2**53]),
    readings,
)


@given(st.lists(doubles, max_size=40))
@settings(max_examples=examples(300), deadline=None)
def test_exact_double_sum_is_exact_sum(values):
    assert exact_double_sum(values) == exact_sum(values)


@pytest.mark.parametrize(
    "values",
    [
        pytest.param([], id="nothing"),
        pytest.param([-0.0], id="negative-zero"),
        pytest.param([2**53, 1, 1], id="2**53-and-ones"),
        pytest.param([0.1] * 10, id="tenths"),
        pytest.param([21.37, 21.38, 21.36] * 333, id="readings"),
        pytest.param([1e308, SMALLEST_SUBNORMAL, -1e308], id="subnormal-among-giants"),
        pytest.param([MAX_DOUBLE, MAX_DOUBLE], id="beyond-the-double-range"),
        pytest.param([MAX_DOUBLE, MAX_DOUBLE, -MAX_DOUBLE], id="overflowing-on-the-way"),
        # Bits 60 apart: each round of fsum settles one, more rounds than it is given.
        pytest.param([2.0 ** (1000 - 60 * k) for k in range(34)], id="many-rounds"),
        pytest.param([2.0 ** (1000 - 60 * k) for k in range(5)], id="a-few-rounds"),
    ],
)
def test_exact_double_sum_examples(values):
    mantissa, exponent = exact_double_sum(values)
    assert Fraction(mantissa) * Fraction(2) ** exponent == sum(map(Fraction, values))
    assert (mantissa, exponent) == exact_sum(values)


# --- order, batching and merge laws ------------------------------------------


@given(st.lists(measurements, min_size=1, max_size=30), st.data())
@settings(max_examples=examples(100), deadline=None)
def test_statistics_do_not_depend_on_order_batching_or_merge_shape(items, data):
    one_by_one = fold([one(v, t) for v, t in items])
    shuffled = data.draw(st.permutations(items))
    batched = merge_tree(data, [batch_of(part) for part in split(data, shuffled)])
    assert batched == one_by_one
    assert batched == batch_of(items)
    assert batched.count == len(items)
    assert batched.mean == oracle_mean([v for v, _ in items])


@given(any_stats, any_stats)
@settings(max_examples=examples(100), deadline=None)
def test_merge_is_commutative(a, b):
    assert a.merge(b) == b.merge(a)


@given(any_stats, any_stats, any_stats)
@settings(max_examples=examples(100), deadline=None)
def test_merge_is_associative(a, b, c):
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@given(any_stats)
@settings(max_examples=examples(50), deadline=None)
def test_empty_is_the_identity_of_merge(a):
    assert a.merge(EMPTY) == a
    assert EMPTY.merge(a) == a


def test_sums_that_cancel_merge_like_any_other():
    at = "2021-01-01T00:00:00Z"
    zero = batch_of([(1.5, at), (-1.5, at)])
    huge = one(2**1023, at)
    assert zero.mean == 0.0
    assert zero.merge(huge) == huge.merge(zero) == batch_of([(1.5, at), (-1.5, at), (2**1023, at)])
    assert zero.merge(one(SMALLEST_SUBNORMAL, at)).mean == 0.0  # 5e-324 / 3 rounds to zero
    assert zero.merge(one(SMALLEST_SUBNORMAL, at)).count == 3


# --- the latest timestamp ------------------------------------------------------


@given(st.lists(measurements, min_size=1, max_size=30), st.data())
@settings(max_examples=examples(100), deadline=None)
def test_last_measurement_is_the_latest_instant_whatever_the_arrival_order(items, data):
    latest = max((t for _, t in items), key=sort_key)
    shuffled = data.draw(st.permutations(items))
    stats = merge_tree(data, [batch_of(part) for part in split(data, shuffled)])
    assert stats.as_json()["last_measurement"] == latest


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        pytest.param("2021-11-09T10:00:00+05:00", "2021-11-09T06:00:00+00:00", id="offsets"),
        pytest.param("2021-11-09T23:00:00-01:00", "2021-11-10T00:30:00Z", id="across-midnight"),
        pytest.param("2021-11-09T06:00:00", "2021-11-09T06:00:00.000001Z", id="naive-is-utc"),
        pytest.param("2021-11-09T06:00:00.5Z", "2021-11-09T06:00:00.6Z", id="fractions"),
        pytest.param("0001-01-01T00:30:00+01:00", "0001-01-01T00:00:00Z", id="year-one"),
        pytest.param("0002-01-01T00:00:00", "9999-12-31T00:00:00+23:59", id="years"),
        pytest.param("2021-11-09T06:00:00+00:00", "2021-11-09T06:00:00Z", id="tie-Z-wins"),
        pytest.param("2021-11-09T06:00:00", "2021-11-09T06:00:00+00:00", id="tie-naive-loses"),
        pytest.param("2021-11-09T11:00:00+05:00", "2021-11-09T11:00:00.0+05:00", id="tie-longer"),
    ],
)
def test_last_measurement_examples(earlier, later):
    first, second = one(1, earlier), one(2, later)
    assert first.merge(second).as_json()["last_measurement"] == later
    assert second.merge(first).as_json()["last_measurement"] == later


def test_statistics_and_timestamps_are_values_nobody_can_change():
    # Merges share them: a change through one would change every statistic holding it.
    stats = one(1.5, "2021-11-09T21:38:09Z")
    assert hash(stats) == hash(one(1.5, "2021-11-09T21:38:09Z"))
    assert hash(stats.latest) == hash(Timestamp.parse("2021-11-09T21:38:09Z"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.latest.text = "2000-01-01T00:00:00Z"  # type: ignore[misc,union-attr]
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.count = 2  # type: ignore[misc]


def test_equal_instants_written_differently_resolve_to_the_greater_text():
    texts = TIED_TEXTS
    assert len({instant_of(t) for t in texts}) == 1
    for order in (texts, texts[::-1], sorted(texts), sorted(texts, reverse=True)):
        assert fold([one(1, t) for t in order]).latest.text == max(texts)


@given(timestamps())
@settings(max_examples=examples(200))
def test_instants_follow_utc_time(text):
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    reference = datetime.fromisoformat("2021-11-09T21:38:09.123456+01:00")
    difference = (moment - reference) // timedelta(microseconds=1)
    assert instant_of(text) - instant_of(reference.isoformat()) == difference


def test_many_distinct_offsets_keep_their_instants():
    # Past the parser's cache of offsets, every instant is still computed exactly.
    base = instant_of("2021-11-09T12:00:00Z")
    for seconds in range(0, 86_400, 60):
        offset = timezone(timedelta(seconds=seconds - 43_200))
        text = datetime(2021, 11, 9, 12, tzinfo=UTC).astimezone(offset).isoformat()
        assert instant_of(text) == base, text


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("yesterday", id="words"),
        pytest.param("", id="empty"),
        pytest.param("2021-13-01T00:00:00", id="month-13"),
        pytest.param("2021-02-30T00:00:00", id="february-30"),
        pytest.param("2021-11-09T24:00:00", id="hour-24"),
        pytest.param("2021-11-09T21:38:09+24:00", id="offset-24h"),
        pytest.param("2021-11-09T21:38:09." + "1" * 50, id="over-long"),
    ],
)
def test_timestamps_that_are_not_iso_8601_are_rejected(text):
    with pytest.raises(ValueError, match=r"."):
        Timestamp.parse(text)


def test_timestamp_length_limit_is_inclusive():
    longest = "2021-11-09T21:38:09." + "1" * (MAX_TIMESTAMP_LENGTH - 20)
    assert len(longest) == MAX_TIMESTAMP_LENGTH
    assert Timestamp.parse(longest).text == longest
    with pytest.raises(ValueError, match="must be at most 64 characters"):
        Timestamp.parse(longest + "1")


@st.composite
def one_layout_timestamps(draw: st.DrawFn) -> list[str]:
    """Readings' timestamps as a device writes them: one format, one offset."""
    start = draw(st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 1, 1)))
    steps = draw(st.lists(st.integers(0, 10**12), min_size=2, max_size=20))
    spec = draw(st.sampled_from(["minutes", "seconds", "milliseconds", "microseconds"]))
    # Digits past microseconds: fromisoformat drops them, so equal instants get apart.
    extra = draw(st.sampled_from(["", "0", "999"])) if spec == "microseconds" else ""
    offset = draw(st.sampled_from(["", "Z", "+00:00", "-05:30", "+14:00"]))
    separator = draw(st.sampled_from("T "))
    return [
        (start + timedelta(microseconds=step)).isoformat(separator, spec) + extra + offset
        for step in steps
    ]


def by_timestamp(texts: list[str]) -> list[str]:
    return sorted(texts, key=Timestamp.parse)


@given(one_layout_timestamps() | st.lists(any_timestamps, max_size=8))
@settings(max_examples=examples(300), deadline=None)
def test_texts_said_to_order_as_timestamps_do(texts):
    if order_as_text(texts):
        assert sorted(texts) == by_timestamp(texts)


@given(one_layout_timestamps())
@settings(max_examples=examples(100), deadline=None)
def test_a_devices_timestamps_order_as_text(texts):
    assert order_as_text(texts)
    assert sorted(texts) == by_timestamp(texts)


@pytest.mark.parametrize(
    "texts",
    [
        pytest.param(["2021-11-09T21:38:09+01:00", "2021-11-09T20:38:10+02:00"], id="offsets"),
        pytest.param(["2021-11-09T20:38:09Z", "2021-11-09T20:38:08+00:00"], id="Z-and-+00:00"),
        pytest.param(["2021-11-09T20:38:09", "2021-11-09T20:38:08.5"], id="precisions"),
        # fromisoformat takes any character between date and time, digits too.
        pytest.param(["2021-11-09713:00:00", "2021-11-09812:00:00"], id="digit-separators"),
        pytest.param(["2021-W45-2T10:00", "2021-W46-1T09:00"], id="week-dates"),
        pytest.param(["20211109T213809", "20211110T000000"], id="basic-format"),
        pytest.param(["2021-11-09é21:38:09", "2021-11-09é21:38:08"], id="not-ascii"),
    ],
)
def test_texts_that_need_their_instants(texts):
    assert not order_as_text(texts)
    assert not order_as_text(texts[::-1])


def test_one_text_orders_as_text_whatever_its_layout():
    assert order_as_text(["20211109T213809"])
    assert order_as_text([])


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("yesterday", id="not-a-timestamp"),
        pytest.param("2021-11-09T21:38:09." + "1" * 45, id="too-long"),
        pytest.param("2021-11-09\ud80021:38:09", id="surrogate"),
    ],
)
def test_order_as_text_checks_every_text(bad):
    good = ["2021-11-09T21:38:09Z", "2021-11-09T21:38:10Z"]
    with pytest.raises(ValueError, match=r"."):
        Timestamp.parse(bad)
    for texts in ([bad], [*good, bad], [bad, *good]):
        with pytest.raises(ValueError, match=r"."):
            order_as_text(texts)


# --- the stored record ---------------------------------------------------------

# The mantissa has at most ~2,100 + log2(count) bits (module docstring): with
# count < 2**64 that is < 2,170 bits, 543 hex digits. Add the sign, count (20
# digits), exponent (-1074), a timestamp of 64 characters (up to 67 UTF-8 bytes:
# `fromisoformat` takes any character as the date-time separator) and the JSON
# punctuation: about 650 bytes.
MAX_RECORD_BYTES = 700
LONGEST_TIMESTAMP = "2021-11-09\U0001f60021:38:09." + "9" * 38 + "+01:00"


@given(any_stats.filter(lambda s: s.count > 0))
@settings(max_examples=examples(100), deadline=None)
def test_records_round_trip(stats):
    assert Stats.decode(stats.encode()) == stats


def test_a_typical_sensors_record_is_small():
    stats = fold(one(21.37, "2021-11-09T21:38:09.123+01:00") for _ in range(1000))
    record = stats.encode()
    assert len(record) < 100, record
    assert Stats.decode(record) == stats


@given(st.lists(readings, min_size=1, max_size=50))
@settings(max_examples=examples(50), deadline=None)
def test_records_of_everyday_readings_are_small(values):
    thousand = (values * 1000)[:1000]
    record = Stats.of(thousand, Timestamp.parse("2021-11-09T21:38:09.123+01:00")).encode()
    assert len(record) < 100, record


adversarial = st.lists(
    st.sampled_from([1e308, -1e308, SMALLEST_SUBNORMAL, MAX_DOUBLE, LARGEST_INT, -LARGEST_INT])
    | values_,
    min_size=1,
    max_size=20,
)


def grow(base: Stats, times: int) -> Stats:
    """`base` merged with itself about 2**times times, without that many merges."""
    stats = base
    for _ in range(times):  # the sum becomes (2**k - 1) * base's: its mantissa grows too
        stats = stats.merge(stats).merge(base)
    return stats


@given(adversarial, st.integers(0, 62))
@settings(max_examples=examples(100), deadline=None)
def test_records_stay_bounded_for_adversarial_values(values, doublings):
    stats = grow(Stats.of(values, Timestamp.parse(LONGEST_TIMESTAMP)), doublings)
    record = stats.encode()
    assert len(record) < MAX_RECORD_BYTES, len(record)
    assert Stats.decode(record) == stats


def test_the_extreme_record_is_within_the_bound():
    # The widest sum: the largest integer and the smallest subnormal, about 2**63 times.
    base = Stats.of([-LARGEST_INT, -SMALLEST_SUBNORMAL], Timestamp.parse(LONGEST_TIMESTAMP))
    stats = grow(base, 62)
    assert len(LONGEST_TIMESTAMP) == MAX_TIMESTAMP_LENGTH
    assert stats.count > 2**63
    assert stats.mantissa.bit_length() > 2_150
    assert len(stats.encode()) < MAX_RECORD_BYTES
    assert Stats.decode(stats.encode()) == stats


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"[\xff]", id="not-utf-8"),
        pytest.param(b"[]", id="empty-list"),
        pytest.param(b"5", id="number"),
        pytest.param(b'{"count": 1}', id="object"),
        pytest.param(b'[2,1,"1",0,"2021-11-09T21:38:09Z"]', id="future-version"),
        pytest.param(b'["1",1,"1",0,"2021-11-09T21:38:09Z"]', id="version-not-an-integer"),
        pytest.param(b'[1,1,"1",0,"2021-11-09T21:38:09Z",0]', id="extra-field"),
        pytest.param(b'[1,1,"xyz",0,"2021-11-09T21:38:09Z"]', id="mantissa-not-hex"),
        pytest.param(b'[1,1,"1",0,"yesterday"]', id="timestamp-not-iso"),
        pytest.param(b'[1,1,1,0,"2021-11-09T21:38:09Z"]', id="mantissa-not-a-string"),
        pytest.param(b'[1,1,"1",0,1636490289]', id="timestamp-not-a-string"),
    ],
)
def test_decode_rejects_records_it_did_not_write(record):
    # The etcd store turns ValueError into a 503 naming the key; anything else is a 500.
    with pytest.raises(ValueError, match=r"."):
        Stats.decode(record)


def test_records_keep_non_ascii_timestamps_readable():
    stats = one(1, "2021-11-09\u00e921:38:09")
    assert json.loads(stats.encode())[-1] == "2021-11-09\u00e921:38:09"


@pytest.mark.parametrize(
    "record",
    [b'[9,1,"1",0,"2021-11-09T21:38:09Z"]', b'[9,{"count":1,"min":0}]', b"[2]"],
)
def test_a_record_of_a_newer_version_is_told_apart_whatever_its_shape(record):
    # A newer release may add fields or change their layout: only the version is read.
    with pytest.raises(UnknownRecordVersion) as raised:
        Stats.decode(record)
    assert raised.value.version == json.loads(record)[0]
    assert "cannot read" in str(raised.value)


@pytest.mark.parametrize(
    ("stats", "record"),
    [
        pytest.param(
            Stats(3, 0xABCDEF, -4, Timestamp.parse("2021-11-09T21:38:09Z")),
            b'[1,3,"abcdef",-4,"2021-11-09T21:38:09Z"]',
            id="lowercase-hex-no-spaces",
        ),
        pytest.param(
            Stats(1, -255, 2, Timestamp.parse("2021-11-09T21:38:09.5+01:00")),
            b'[1,1,"-ff",2,"2021-11-09T21:38:09.5+01:00"]',
            id="negative-sum",
        ),
        pytest.param(
            Stats(2, 0, 0, Timestamp.parse("2021-11-09\u00e921:38:09")),
            '[1,2,"0",0,"2021-11-09\u00e921:38:09"]'.encode(),
            id="utf-8-not-escaped",
        ),
    ],
)
def test_records_are_these_literal_bytes(stats, record):
    """Records already in etcd are read by every later release, and written by this one."""
    assert stats.encode() == record
    assert Stats.decode(record) == stats


LONG = b'[1,1,"' + b"f" * 200 + b'",0,"2021-11-09T21:38:09Z"]'


@pytest.mark.parametrize(
    ("record", "detail"),
    [
        pytest.param(b"not json", "not a statistics record: b'not json'", id="not-json"),
        pytest.param(b"[\xff]", "not a statistics record: b'[\\xff]'", id="not-utf-8"),
        pytest.param(b"[]", "not a statistics record: b'[]'", id="empty-list"),
        pytest.param(b"5", "not a statistics record: b'5'", id="number"),
        pytest.param(
            b'[1,1,"1",0,"2021-11-09T21:38:09Z",0]',
            'not a statistics record: b\'[1,1,"1",0,"2021-11-09T21:38:09Z",0]\'',
            id="extra-field",
        ),
        pytest.param(
            b'["1",1,"1",0,"2021-11-09T21:38:09Z"]',
            "unknown statistics record version '1'",
            id="version-a-string",
        ),
        pytest.param(
            b'[true,1,"1",0,"2021-11-09T21:38:09Z"]',
            "unknown statistics record version True",
            id="version-a-boolean",
        ),
        pytest.param(
            b'[1,0,"1",0,"2021-11-09T21:38:09Z"]',
            'malformed statistics record: b\'[1,0,"1",0,"2021-11-09T21:38:09Z"]\'',
            id="count-zero",
        ),
        pytest.param(
            b'[1,-1,"1",0,"2021-11-09T21:38:09Z"]',
            'malformed statistics record: b\'[1,-1,"1",0,"2021-11-09T21:38:09Z"]\'',
            id="count-negative",
        ),
        pytest.param(
            b'[1,true,"1",0,"2021-11-09T21:38:09Z"]',
            'malformed statistics record: b\'[1,true,"1",0,"2021-11-09T21:38:09Z"]\'',
            id="count-a-boolean",
        ),
        pytest.param(
            b'[1,1,1,0,"2021-11-09T21:38:09Z"]',
            "malformed statistics record: b'[1,1,1,0,\"2021-11-09T21:38:09Z\"]'",
            id="mantissa-not-a-string",
        ),
        pytest.param(
            b'[1,1,"1",0.0,"2021-11-09T21:38:09Z"]',
            'malformed statistics record: b\'[1,1,"1",0.0,"2021-11-09T21:38:09Z"]\'',
            id="exponent-a-float",
        ),
        pytest.param(
            b'[1,1,"1",0,1636490289]',
            "malformed statistics record: b'[1,1,\"1\",0,1636490289]'",
            id="timestamp-not-a-string",
        ),
        pytest.param(
            b"x" * 100,
            f"not a statistics record: {b'x' * 80!r}",
            id="not-json-quoted-to-80-bytes",
        ),
        pytest.param(
            LONG.replace(b"[1,1,", b"[1,1,1,"),
            f"not a statistics record: {LONG.replace(b'[1,1,', b'[1,1,1,')[:80]!r}",
            id="extra-field-quoted-to-80-bytes",
        ),
        pytest.param(
            LONG.replace(b"[1,1,", b"[1,0,"),
            f"malformed statistics record: {LONG.replace(b'[1,1,', b'[1,0,')[:80]!r}",
            id="quoted-to-80-bytes",
        ),
    ],
)
def test_each_decode_failure_says_what_is_wrong(record, detail):
    with pytest.raises(ValueError, match=r".") as raised:
        Stats.decode(record)
    assert type(raised.value) is ValueError
    assert str(raised.value) == detail


def test_a_newer_version_names_itself():
    with pytest.raises(UnknownRecordVersion) as raised:
        Stats.decode(b'[2,1,"1",0,"2021-11-09T21:38:09Z"]')
    assert str(raised.value) == "statistics record version 2, which this release cannot read"
    assert raised.value.version == 2
