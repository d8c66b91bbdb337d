"""The timestamp rules: what is read, how it orders, and what a refusal says."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sensorstats.core.batch import Limits, parse_batch
from sensorstats.core.errors import InvalidBatch
from sensorstats.core.stats import Timestamp, instant_of
from sensorstats.core.timestamps import TIMESTAMP_EXAMPLE, TIMESTAMP_RULES, parse_datetime
from tests.unit.core.test_batch import body, measurement

# What a person should never read in a detail: Python's own words and names.
PYTHON_INTERNALS = re.compile(r"timedelta|isoformat|datetime\.|Invalid isoformat|\bstr\b|\bint\b")


def latest(*stamps: str) -> str | None:
    stats = parse_batch(body(*(measurement(timestamp=s) for s in stamps)), Limits())["abc"]
    return stats.latest.text if stats.latest else None


def refusal(stamp: str) -> str:
    with pytest.raises(InvalidBatch) as refused:
        parse_batch(body(measurement(timestamp=stamp)), Limits())
    (error,) = refused.value.errors
    assert error.field == "timestamp"
    return error.message


def test_the_example_is_valid_and_the_rules_state_it():
    assert parse_datetime(TIMESTAMP_EXAMPLE).utcoffset() == timedelta(hours=1)
    assert TIMESTAMP_EXAMPLE in TIMESTAMP_RULES


@pytest.mark.parametrize(
    "stamp", ["2021-01-01t00:00:00z", "2021-01-01T00:00:00z", "2021-01-01t00:00:00Z"]
)
def test_lowercase_t_and_z_are_read_and_kept_as_sent(stamp):
    assert instant_of(stamp) == instant_of("2021-01-01T00:00:00Z")
    assert latest(stamp) == stamp


def test_lowercase_z_orders_by_its_instant_among_others():
    assert latest("2021-01-01t10:00:00z", "2021-01-01T09:00:00Z") == "2021-01-01t10:00:00z"
    assert latest("2021-01-01t08:00:00z", "2021-01-01T09:00:00Z") == "2021-01-01T09:00:00Z"


@pytest.mark.parametrize("offset", ["+23:59", "-23:59", "+2359", "-23", "+00:00", "-00:00"])
def test_offsets_up_to_23_59_either_way_are_read(offset):
    parse_datetime(f"2021-01-01T00:00:00{offset}")


@pytest.mark.parametrize("offset", ["+24:00", "-24:00", "+25:00", "+2500", "-99", "+24"])
def test_offsets_of_24_hours_or_more_are_refused_in_plain_words(offset):
    message = refusal(f"2021-01-01T00:00:00{offset}")
    assert message == (
        "has an offset of 24 hours or more: the offset from UTC must be between -23:59 and "
        f"+23:59, as in {TIMESTAMP_EXAMPLE}"
    )


def test_a_timestamp_without_an_offset_is_utc():
    assert instant_of("2021-11-09T21:38:09") == instant_of("2021-11-09T21:38:09Z")
    # So an offset east of UTC is earlier than the same wall time without one.
    assert latest("2021-11-09T21:38:09", "2021-11-09T21:38:09+01:00") == "2021-11-09T21:38:09"


def test_a_date_alone_is_its_midnight_utc():
    assert instant_of("2021-11-09") == instant_of("2021-11-09T00:00:00Z")
    assert latest("2021-11-09", "2021-11-08T23:59:59Z") == "2021-11-09"


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))
def test_naive_and_utc_timestamps_are_the_same_instant(moment):
    naive = moment.isoformat()
    assert instant_of(naive) == instant_of(moment.replace(tzinfo=UTC).isoformat())


@given(
    st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 1, 1)),
    st.integers(-(24 * 60 - 1), 24 * 60 - 1),
)
def test_every_offset_the_rules_allow_orders_by_its_instant(moment, minutes):
    zone = timezone(timedelta(minutes=minutes))
    stamp = moment.replace(tzinfo=zone).isoformat()
    expected = moment.replace(tzinfo=zone).astimezone(UTC).replace(tzinfo=None)
    assert instant_of(stamp) == instant_of(expected.isoformat())


@pytest.mark.parametrize(
    ("stamp", "message"),
    [
        ("yesterday", f"must be an ISO 8601 date-time such as {TIMESTAMP_EXAMPLE}"),
        (
            "2021-11-09T21:38:09+01:00Z",
            f"must be an ISO 8601 date-time such as {TIMESTAMP_EXAMPLE}",
        ),
        (
            "2021-13-01T00:00:00Z",
            f"is not a valid date-time (month must be in 1..12); send one such as "
            f"{TIMESTAMP_EXAMPLE}",
        ),
        (
            "2021-13-01t00:00:00z",
            f"is not a valid date-time (month must be in 1..12); send one such as "
            f"{TIMESTAMP_EXAMPLE}",
        ),
        (
            "2021-02-30",
            "is not a valid date-time (day is out of range for month); send one such as "
            f"{TIMESTAMP_EXAMPLE}",
        ),
        (
            "2021-01-01T24:00:00",
            f"is not a valid date-time (hour must be in 0..23); send one such as "
            f"{TIMESTAMP_EXAMPLE}",
        ),
        (
            "2021-11-09T21:38:09." + "1" * 60,
            f"must be at most 64 characters, such as {TIMESTAMP_EXAMPLE}",
        ),
        (
            "2021-11-09\ud80021:38",
            f"must not contain unpaired surrogates; send a date-time such as {TIMESTAMP_EXAMPLE}",
        ),
    ],
)
def test_every_refusal_says_what_is_wrong_with_a_valid_example(stamp, message):
    assert refusal(stamp) == message
    assert TIMESTAMP_EXAMPLE in message
    assert not PYTHON_INTERNALS.search(message)


@given(st.text(max_size=40))
def test_no_refusal_ever_shows_python_internals(text):
    message = ""
    try:
        parse_datetime(text)
    except ValueError as error:
        message = str(error)
    if message:
        assert TIMESTAMP_EXAMPLE in message
        assert not PYTHON_INTERNALS.search(message)


def test_stored_timestamps_read_back_as_before():
    # Nothing accepted before is refused now: records hold such texts.
    for stamp in ("2021-11-09T21:38:09+23:59:59.999999", "2021-W45-2", "20211109T213809Z"):
        assert Timestamp.parse(stamp).text == stamp
