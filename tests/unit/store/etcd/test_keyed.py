"""The keyed request's markers: their names, their cost, the previous release's fingerprint."""

from __future__ import annotations

import pytest

from sensorstats.core.batch import Limits, parse_batch
from sensorstats.core.errors import StoreUnavailable
from sensorstats.core.idempotency import IdempotencyKey, IdempotencyKeyReused, fingerprint
from sensorstats.core.stats import EMPTY
from sensorstats.store.etcd.keyed import (
    REUSED,
    KeyedRequest,
    keyed_chunk_sensors,
    legacy_fingerprint,
)
from sensorstats.store.etcd.keys import (
    key_marker_key,
    legacy_chunk_of,
    legacy_marker_key,
    legacy_marker_range,
    sensor_key,
    sensor_marker_key,
)
from sensorstats.store.etcd.txn import Found, Guard, Marker, Update
from tests.unit.core.test_idempotency import LITERAL_BATCH

PREFIX = "/sensorstats/"
DIGEST = "0123456789abcdef0123456789abcdef"


def test_the_previous_release_fingerprint_is_what_it_wrote() -> None:
    deltas = parse_batch(LITERAL_BATCH.encode(), Limits())
    # Computed by the previous release's `idempotency.fingerprint` for this batch.
    assert legacy_fingerprint(deltas) == "211a127a667463e7cbf07aebfadbb18f"
    assert legacy_fingerprint(deltas) != fingerprint(deltas)
    # A sensor without measurements counts for nothing, wherever it sorts.
    assert legacy_fingerprint({**deltas, "0": EMPTY, "z": EMPTY}) == legacy_fingerprint(deltas)


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


FINGERPRINT = "0f" * 16
STATS = parse_batch(LITERAL_BATCH.encode(), Limits())
A, B, C = (sensor_key(PREFIX, sensor) for sensor in "abc")
UPDATES = [Update(key, STATS["a"]) for key in (A, B, C)]
LEASE = 77


def _request(*legacy_chunks: list[Update]) -> KeyedRequest:
    key = IdempotencyKey("client", "k-1", FINGERPRINT)
    return KeyedRequest.of(PREFIX, key, STATS, legacy_chunks or [UPDATES])


def test_a_keyed_request_is_named_by_its_digest_and_compares_its_fingerprints() -> None:
    key = IdempotencyKey("client", "k-1", FINGERPRINT)
    request = KeyedRequest.of(PREFIX, key, STATS, [UPDATES[:2], UPDATES[2:]])
    assert (request.prefix, request.digest) == (PREFIX, key.digest)
    assert request.key_marker == key_marker_key(PREFIX, key.digest)
    assert request.legacy_range == legacy_marker_range(PREFIX, key.digest)
    assert request.fingerprint == FINGERPRINT.encode()
    assert request.legacy_fingerprint == legacy_fingerprint(STATS).encode()
    assert request.legacy_chunks == [frozenset({A, B}), frozenset({C})]
    assert request.sensor_marker(B) == sensor_marker_key(PREFIX, key.digest, B)
    # Nothing learnt yet: the key marker is believed absent, no legacy marker exists.
    assert (request.key_marker_present, request.legacy_created_before) == (False, 1)
    assert request.covered == set()


def test_the_first_transaction_writes_every_sensor_marker_and_the_key_marker() -> None:
    request = _request()
    assert request.uncovered(UPDATES) == UPDATES
    assert request.markers(UPDATES[:2], LEASE) == [
        Marker(request.sensor_marker(A), FINGERPRINT.encode(), LEASE),
        Marker(request.sensor_marker(B), FINGERPRINT.encode(), LEASE),
        Marker(request.key_marker, FINGERPRINT.encode(), LEASE),
    ]
    start, end = request.legacy_range
    assert request.guards() == [Guard(start, range_end=end, created_before=1)]


def test_after_a_commit_the_key_marker_is_compared_and_not_written_again() -> None:
    request = _request()
    request.committed()
    assert request.key_marker_present
    assert request.markers(UPDATES[2:], LEASE) == [
        Marker(request.sensor_marker(C), FINGERPRINT.encode(), LEASE)
    ]
    start, end = request.legacy_range
    assert request.guards() == [
        Guard(start, range_end=end, created_before=1),
        Guard(request.key_marker, value=FINGERPRINT.encode()),
    ]


def test_sensor_markers_of_this_fingerprint_cover_their_sensors() -> None:
    request = _request()
    found = {
        request.sensor_marker(B): FINGERPRINT.encode(),
        request.key_marker: FINGERPRINT.encode(),
    }
    assert request.learn(UPDATES, found, {}) is None
    assert request.covered == {B}
    assert request.key_marker_present
    assert request.uncovered(UPDATES) == [UPDATES[0], UPDATES[2]]
    assert [m.key for m in request.markers(UPDATES, LEASE)] == [
        request.sensor_marker(A),
        request.sensor_marker(C),
    ]
    # A sensor marker of a sensor outside this transaction is not read as covering.
    other = _request()
    assert other.learn(UPDATES[:1], {other.sensor_marker(B): FINGERPRINT.encode()}, {}) is None
    assert (other.covered, other.key_marker_present) == (set(), False)


@pytest.mark.parametrize("marker", ["key", "sensor", "key-guard", "legacy"])
def test_a_marker_of_another_payload_refuses_the_request(marker: str) -> None:
    request = _request()
    request.committed()
    start, end = request.legacy_range
    found: dict[str, bytes] = {}
    guarded: dict[Guard, list[Found]] = {}
    other = b"another fingerprint"
    if marker == "key":
        found[request.key_marker] = other
    elif marker == "sensor":
        found[request.sensor_marker(A)] = other
    elif marker == "key-guard":
        guarded[Guard(request.key_marker, value=request.fingerprint)] = [
            Found(request.key_marker, other, 3)
        ]
    else:
        guarded[Guard(start, range_end=end, created_before=1)] = [Found(start, other, 3)]
    error = request.learn(UPDATES, found, guarded)
    assert type(error) is IdempotencyKeyReused
    assert error.detail == REUSED
    assert REUSED == (
        "this Idempotency-Key was already used with a different payload; "
        "nothing of this request was stored"
    )
    assert request.covered == set()


def test_a_key_marker_that_expired_is_written_again() -> None:
    request = _request()
    request.committed()
    guard = Guard(request.key_marker, value=request.fingerprint)
    assert request.learn(UPDATES, {}, {guard: []}) is None
    assert not request.key_marker_present
    assert request.markers([], LEASE) == [Marker(request.key_marker, FINGERPRINT.encode(), LEASE)]
    # Still there, with this fingerprint: still compared.
    request.committed()
    assert request.learn(UPDATES, {}, {guard: [Found(guard.key, request.fingerprint, 4)]}) is None
    assert request.key_marker_present


def _legacy(request: KeyedRequest, *found: tuple[int, int]) -> dict[Guard, list[Found]]:
    start, end = request.legacy_range
    guard = Guard(start, range_end=end, created_before=request.legacy_created_before)
    return {
        guard: [
            Found(legacy_marker_key(PREFIX, request.digest, chunk), request.legacy_fingerprint, at)
            for chunk, at in found
        ]
    }


def test_legacy_markers_cover_their_chunks_as_this_instance_splits() -> None:
    request = _request(UPDATES[:1], UPDATES[1:2], UPDATES[2:])
    assert request.learn(UPDATES, {}, _legacy(request, (0, 40), (2, 45))) is None
    assert request.covered == {A, C}
    # From now on only markers created after the newest one seen refuse the compare.
    assert request.legacy_created_before == 46
    assert request.guards()[0].created_before == 46
    # An empty range changes nothing.
    assert request.learn(UPDATES, {}, _legacy(request)) is None
    assert (request.covered, request.legacy_created_before) == ({A, C}, 46)


@pytest.mark.parametrize(
    "chunk",
    [pytest.param(2, id="past-this-split"), pytest.param(None, id="not-a-chunk-number")],
)
def test_a_legacy_marker_this_split_cannot_place_refuses_without_a_guess(chunk: int | None) -> None:
    request = _request(UPDATES[:2], UPDATES[2:])
    guarded = _legacy(request, (0, 40))
    [answer] = guarded.values()
    key = legacy_marker_key(PREFIX, request.digest, 2) if chunk else request.legacy_range[0] + "x"
    answer.append(Found(key, request.legacy_fingerprint, 41))
    error = request.learn(UPDATES, {}, guarded)
    assert type(error) is StoreUnavailable
    assert error.detail == (
        "this Idempotency-Key was first used through an instance of the previous release "
        "that split the batch into more transactions than this instance would (its "
        "SENSORSTATS_ETCD_MAX_TXN_OPS differs from this one's, 3 sensors in 2 transactions "
        "here): which sensors it applied cannot be told, so nothing of this request was "
        "stored; retry through an instance of the previous release, or after the "
        "idempotency window, when the request counts as new"
    )
    assert (error.retry_after, error.outage) == (5, False)
    # Chunk 0 is not taken as covered either: the request ends here.
    assert request.covered == set()
    assert request.legacy_created_before == 1
