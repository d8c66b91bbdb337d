"""The etcd key layout: one key per sensor, never overlapping another's."""

from __future__ import annotations

import string
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sensorstats.store.etcd.keys import (
    health_key,
    key_marker_key,
    legacy_chunk_of,
    legacy_marker_key,
    legacy_marker_range,
    marker_key,
    sensor_id_of,
    sensor_key,
    sensor_marker_key,
    sensor_of,
)

PREFIX = "/sensorstats/"

# Every legal sensor id: no control characters, valid Unicode (no lone surrogates).
sensor_ids = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\x7f", min_codepoint=0x20),
    min_size=1,
    max_size=256,
)


@given(sensor_ids)
def test_a_sensor_key_is_printable_ascii_without_slash_after_the_prefix(sensor: str) -> None:
    key = sensor_key(PREFIX, sensor)
    encoded = key.removeprefix(PREFIX + "sensors/")
    assert key.startswith(PREFIX + "sensors/")
    assert encoded.isascii()
    assert encoded.isprintable()
    assert "/" not in encoded


@given(sensor_ids)
def test_a_sensor_key_names_exactly_one_sensor(sensor: str) -> None:
    assert sensor_of(PREFIX, sensor_key(PREFIX, sensor)) == sensor


@given(sensor_ids, sensor_ids)
def test_no_sensor_key_or_its_subtree_covers_another(a: str, b: str) -> None:
    if a != b:
        key_a, key_b = sensor_key(PREFIX, a), sensor_key(PREFIX, b)
        assert key_a != key_b
        assert not key_b.startswith(key_a + "/")


def test_keys_read_well_with_etcdctl() -> None:
    assert sensor_key(PREFIX, "room 1/temp") == "/sensorstats/sensors/room%201%2Ftemp"
    assert sensor_key(PREFIX, "a%2Fb") == "/sensorstats/sensors/a%252Fb"
    assert sensor_key(PREFIX, "température") == "/sensorstats/sensors/temp%C3%A9rature"
    assert sensor_key(PREFIX, "..") == "/sensorstats/sensors/.."
    assert sensor_key(PREFIX, string.ascii_letters) == PREFIX + "sensors/" + string.ascii_letters


def test_markers_and_the_probe_live_beside_the_sensors() -> None:
    assert marker_key(PREFIX, "ab12", 3) == "/sensorstats/requests/ab12/3"
    assert health_key(PREFIX) == "/sensorstats/healthz"
    assert not health_key(PREFIX).startswith(PREFIX + "sensors/")


@pytest.mark.parametrize("key", ["/other/sensors/a", "/sensorstats/requests/a", "/sensorstats/"])
def test_only_sensor_keys_name_a_sensor(key: str) -> None:
    with pytest.raises(ValueError, match="not a sensor key"):
        sensor_of(PREFIX, key)


@given(st.text())
def test_a_sensor_key_is_the_prefix_and_the_percent_encoded_id(sensor: str) -> None:
    assert sensor_key(PREFIX, sensor) == PREFIX + "sensors/" + quote(sensor, safe="")


DIGEST = "0123456789abcdef0123456789abcdef"


def test_a_key_of_another_prefix_is_refused_in_words() -> None:
    with pytest.raises(ValueError, match="not a sensor key") as caught:
        sensor_of(PREFIX, "/other/sensors/a")
    assert str(caught.value) == "'/other/sensors/a' is not a sensor key under '/sensorstats/'"


def test_a_sensor_key_whose_id_is_not_utf_8_names_no_sensor() -> None:
    # Not written by `sensor_key`: refused rather than read as a replacement character.
    with pytest.raises(UnicodeDecodeError):
        sensor_of(PREFIX, "/sensorstats/sensors/%FF")


def test_the_keyed_request_markers_live_under_keys() -> None:
    """Markers already in etcd are read by the next release: their names are fixed."""
    sensor = sensor_key(PREFIX, "room 1/temp")
    assert key_marker_key(PREFIX, DIGEST) == f"/sensorstats/keys/{DIGEST}"
    assert sensor_marker_key(PREFIX, DIGEST, sensor) == (
        f"/sensorstats/keys/{DIGEST}/sensors/room%201%2Ftemp"
    )
    assert legacy_marker_key(PREFIX, DIGEST, 12) == f"/sensorstats/keys/{DIGEST}/12"
    assert legacy_marker_range(PREFIX, DIGEST) == (
        f"/sensorstats/keys/{DIGEST}/0",
        f"/sensorstats/keys/{DIGEST}/:",
    )


@pytest.mark.parametrize(
    ("suffix", "chunk"),
    [
        pytest.param("0", 0, id="first"),
        pytest.param("12", 12, id="two-digits"),
        pytest.param("sensors/a", None, id="a-sensor-marker"),
        pytest.param("1a", None, id="not-all-digits"),
        # str.isdigit and int() take these digits; the previous release never wrote them.
        pytest.param("\u0661", None, id="arabic-indic-digit"),
        pytest.param("", None, id="nothing"),
    ],
)
def test_the_chunk_of_a_legacy_marker_is_its_decimal_number(suffix: str, chunk: int | None) -> None:
    assert legacy_chunk_of(PREFIX, DIGEST, f"/sensorstats/keys/{DIGEST}/{suffix}") == chunk


@pytest.mark.parametrize("sensor", ["a", "room 1/temp", "température", "%2F"])
def test_a_message_names_the_sensor_of_a_key_whatever_the_prefix(sensor: str) -> None:
    assert sensor_id_of(sensor_key(PREFIX, sensor)) == sensor
    assert sensor_id_of(sensor_key("/a/b/", sensor)) == sensor
