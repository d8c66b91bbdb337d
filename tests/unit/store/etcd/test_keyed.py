"""The keyed request's markers: their names, their cost, the previous release's fingerprint."""

from __future__ import annotations

from sensorstats.core.batch import Limits, parse_batch
from sensorstats.core.idempotency import fingerprint
from sensorstats.core.stats import EMPTY
from sensorstats.store.etcd.keyed import keyed_chunk_sensors, legacy_fingerprint
from sensorstats.store.etcd.keys import (
    key_marker_key,
    legacy_chunk_of,
    legacy_marker_key,
    legacy_marker_range,
    sensor_key,
    sensor_marker_key,
)
from tests.unit.core.test_idempotency import LITERAL_BATCH

PREFIX = "/sensorstats/"
DIGEST = "0123456789abcdef0123456789abcdef"


def test_the_previous_release_fingerprint_is_what_it_wrote() -> None:
    deltas = parse_batch(LITERAL_BATCH.encode(), Limits())
    # Computed by the previous release's `idempotency.fingerprint` for this batch.
    assert legacy_fingerprint(deltas) == "211a127a667463e7cbf07aebfadbb18f"
    assert legacy_fingerprint(deltas) != fingerprint(deltas)
    assert legacy_fingerprint({**deltas, "empty": EMPTY}) == legacy_fingerprint(deltas)


def test_a_keyed_chunk_leaves_room_for_each_marker_and_both_guards() -> None:
    assert [keyed_chunk_sensors(ops) for ops in (4, 5, 16, 64, 128)] == [1, 1, 7, 31, 63]
    for ops in range(4, 300):
        sensors = keyed_chunk_sensors(ops)
        assert 2 * sensors + 2 <= ops < 2 * (sensors + 1) + 2


def test_sensor_markers_never_fall_in_the_previous_release_range() -> None:
    start, end = legacy_marker_range(PREFIX, DIGEST)
    for sensor in ("0", "9", "00", ":", "sensors", "a/b", "ü"):
        marker = sensor_marker_key(PREFIX, DIGEST, sensor_key(PREFIX, sensor))
        assert not start <= marker < end, marker
        assert legacy_chunk_of(PREFIX, DIGEST, marker) is None
    assert not start <= key_marker_key(PREFIX, DIGEST) < end
    for chunk in (0, 9, 10, 1234):
        marker = legacy_marker_key(PREFIX, DIGEST, chunk)
        assert start <= marker < end
        assert legacy_chunk_of(PREFIX, DIGEST, marker) == chunk


def test_a_sensor_marker_names_the_key_and_the_sensor() -> None:
    marker = sensor_marker_key(PREFIX, DIGEST, sensor_key(PREFIX, "room 1/temp"))
    assert marker == f"/sensorstats/keys/{DIGEST}/sensors/room%201%2Ftemp"
