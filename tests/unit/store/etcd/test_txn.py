"""The transaction builder on its request objects, and its readers on made-up answers.

No etcd here: what etcd would do with these requests is the integration tests' part;
these pin what is sent (compares, branches, key order) and how an answer is read.
"""

from __future__ import annotations

import copy
import dataclasses

import etcd3.etcdrpc as rpc
import pytest
from etcd3.etcdrpc.kv_pb2 import KeyValue

from sensorstats.core.errors import StoreUnavailable
from sensorstats.core.stats import EMPTY, Stats, Timestamp
from sensorstats.store.etcd.keys import (
    key_marker_key,
    legacy_marker_range,
    sensor_key,
    sensor_marker_key,
)
from sensorstats.store.etcd.txn import (
    ABSENT,
    GUARD_BYTES,
    MARKER_BYTES,
    MAX_TXN_BYTES,
    MAX_TXN_OPS,
    MIN_TXN_OPS,
    RECORD_BYTES,
    Found,
    Guard,
    Marker,
    Seen,
    Update,
    key_cost,
    marker_cost,
    range_guard_cost,
    read_answer,
    read_failure_branch,
    read_txn,
    seen_of,
    split_batch,
    write_txn,
)

PREFIX = "/sensorstats/"
A = sensor_key(PREFIX, "a")
B = sensor_key(PREFIX, "b")
C = sensor_key(PREFIX, "c")
STATS_A = Stats(1, 3, 0, Timestamp.parse("2021-11-09T12:00:00Z"))
STATS_B = Stats(2, 5, -1, Timestamp.parse("2021-11-09T13:00:00Z"))
STATS_C = Stats(3, 7, 2, Timestamp.parse("2021-11-09T14:00:00Z"))
MARKER_1 = Marker("/sensorstats/requests/r1/0", b"m1", 7)
MARKER_2 = Marker("/sensorstats/requests/r1/1", b"m2", 8)
VALUE_GUARD = Guard(key_marker_key(PREFIX, "d" * 32), value=b"fingerprint")
RANGE_GUARD = Guard("/sensorstats/keys/dd/0", range_end="/sensorstats/keys/dd/:", created_before=42)


def _write() -> rpc.TxnRequest:
    # Deliberately not in key order: the request must follow `seen`'s order.
    seen = {B: Seen(11, STATS_B), A: ABSENT, C: Seen(13, STATS_C)}
    merged = {A: STATS_A, B: STATS_B.merge(STATS_A), C: STATS_C}
    return write_txn(seen, merged, [MARKER_1, MARKER_2], [VALUE_GUARD, RANGE_GUARD])


def test_write_compares_each_sensor_revision_then_markers_absent_then_guards() -> None:
    compare = list(_write().compare)
    assert [c.key for c in compare] == [
        B.encode(),
        A.encode(),
        C.encode(),
        MARKER_1.key.encode(),
        MARKER_2.key.encode(),
        VALUE_GUARD.key.encode(),
        RANGE_GUARD.key.encode(),
    ]
    sensors, markers, guards = compare[:3], compare[3:5], compare[5:]
    for c, revision in zip(sensors, [11, 0, 13], strict=True):
        assert c.target == rpc.Compare.MOD
        assert c.result == rpc.Compare.EQUAL
        assert c.WhichOneof("target_union") == "mod_revision"
        assert c.mod_revision == revision
        assert c.range_end == b""
    for c in markers:
        assert c.target == rpc.Compare.VERSION
        assert c.result == rpc.Compare.EQUAL
        assert c.WhichOneof("target_union") == "version"
        assert c.version == 0
        assert c.range_end == b""
    value, created = guards
    assert value.target == rpc.Compare.VALUE
    assert value.result == rpc.Compare.EQUAL
    assert value.WhichOneof("target_union") == "value"
    assert value.value == b"fingerprint"
    assert value.range_end == b""
    assert created.target == rpc.Compare.CREATE
    assert created.result == rpc.Compare.LESS
    assert created.WhichOneof("target_union") == "create_revision"
    assert created.create_revision == 42
    assert created.range_end == b"/sensorstats/keys/dd/:"


def test_write_success_puts_the_merged_records_then_the_markers_with_their_leases() -> None:
    success = list(_write().success)
    assert all(op.WhichOneof("request") == "request_put" for op in success)
    puts = [op.request_put for op in success]
    assert [(p.key, p.value, p.lease) for p in puts] == [
        (B.encode(), STATS_B.merge(STATS_A).encode(), 0),
        (A.encode(), STATS_A.encode(), 0),
        (C.encode(), STATS_C.encode(), 0),
        (MARKER_1.key.encode(), b"m1", 7),
        (MARKER_2.key.encode(), b"m2", 8),
    ]
    # A guard is checked, never written.
    assert not any(p.prev_kv or p.ignore_value or p.ignore_lease for p in puts)


def test_write_failure_reads_every_key_and_each_guard_range() -> None:
    failure = list(_write().failure)
    assert all(op.WhichOneof("request") == "request_range" for op in failure)
    ranges = [(op.request_range.key, op.request_range.range_end) for op in failure]
    assert ranges == [
        (B.encode(), b""),
        (A.encode(), b""),
        (C.encode(), b""),
        (MARKER_1.key.encode(), b""),
        (MARKER_2.key.encode(), b""),
        (VALUE_GUARD.key.encode(), b""),
        (RANGE_GUARD.key.encode(), b"/sensorstats/keys/dd/:"),
    ]
    # Whole values, no limit: a read that dropped values or keys would lose a race.
    for op in failure:
        r = op.request_range
        assert (r.limit, r.keys_only, r.count_only, r.revision, r.serializable) == (
            0,
            False,
            False,
            0,
            False,
        )


def test_write_without_markers_or_guards_has_only_the_sensors() -> None:
    request = write_txn({A: ABSENT}, {A: STATS_A}, [])
    assert [c.key for c in request.compare] == [A.encode()]
    assert [op.request_put.key for op in request.success] == [A.encode()]
    assert [op.request_range.key for op in request.failure] == [A.encode()]


@pytest.mark.parametrize(
    "value",
    [ABSENT, MARKER_1, VALUE_GUARD, RANGE_GUARD, Found(A, b"x", 3), Update(A, STATS_A)],
    ids=type,
)
def test_what_the_builder_takes_and_reads_are_values_nobody_can_change(value: object) -> None:
    # `ABSENT` is every absent key's `Seen`, and guards key what a refusal read.
    assert hash(value) == hash(copy.copy(value))
    for field in dataclasses.fields(value):  # type: ignore[arg-type]
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, field.name, None)


def _kv(key: str, value: bytes, mod: int = 0, create: int = 0) -> KeyValue:
    return KeyValue(key=key.encode(), value=value, mod_revision=mod, create_revision=create)


def _answer(*kvs: list[KeyValue], succeeded: bool = False) -> rpc.TxnResponse:
    return rpc.TxnResponse(
        succeeded=succeeded,
        responses=[
            rpc.ResponseOp(response_range=rpc.RangeResponse(kvs=k, count=len(k))) for k in kvs
        ],
    )


def test_read_failure_branch_reads_records_then_markers_then_guards() -> None:
    keys = [B, A, C]
    answer = _answer(
        [_kv(B, STATS_B.encode(), mod=21)],
        [],
        [_kv(C, STATS_C.encode(), mod=23)],
        [],
        [_kv(MARKER_2.key, b"held", mod=30)],
        [_kv(VALUE_GUARD.key, b"other", create=5)],
        [
            _kv("/sensorstats/keys/dd/0", b"x", create=50),
            _kv("/sensorstats/keys/dd/3", b"y", create=51),
        ],
    )
    current, found, guarded = read_failure_branch(
        keys, [MARKER_1, MARKER_2], answer, [VALUE_GUARD, RANGE_GUARD]
    )
    assert current == {B: Seen(21, STATS_B), A: ABSENT, C: Seen(23, STATS_C)}
    assert list(current) == keys
    assert found == {MARKER_2.key: b"held"}
    assert guarded == {
        VALUE_GUARD: [Found(VALUE_GUARD.key, b"other", 5)],
        RANGE_GUARD: [
            Found("/sensorstats/keys/dd/0", b"x", 50),
            Found("/sensorstats/keys/dd/3", b"y", 51),
        ],
    }


def test_read_failure_branch_without_guards_and_an_empty_guard_range() -> None:
    answer = _answer([], [_kv(MARKER_1.key, b"m", mod=3)], [])
    current, found, guarded = read_failure_branch([A], [MARKER_1], answer, [RANGE_GUARD])
    assert (current, found, guarded) == ({A: ABSENT}, {MARKER_1.key: b"m"}, {RANGE_GUARD: []})
    current, found, guarded = read_failure_branch([A], [], _answer([_kv(A, STATS_A.encode(), 9)]))
    assert (current, found, guarded) == ({A: Seen(9, STATS_A)}, {}, {})


def test_read_failure_branch_refuses_an_answer_of_another_shape() -> None:
    # One range too few for the markers, or one too many for the guards.
    with pytest.raises(ValueError, match=r"zip\(\) argument"):
        read_failure_branch([A], [MARKER_1, MARKER_2], _answer([], []))
    with pytest.raises(ValueError, match=r"zip\(\) argument"):
        read_failure_branch([A], [MARKER_1], _answer([], [], []))


def test_read_txn_is_one_plain_range_per_key_in_order_and_no_compare() -> None:
    request = read_txn(iter([C, A, B]))
    assert list(request.compare) == []
    assert list(request.failure) == []
    assert [op.WhichOneof("request") for op in request.success] == ["request_range"] * 3
    assert [(op.request_range.key, op.request_range.range_end) for op in request.success] == [
        (C.encode(), b""),
        (A.encode(), b""),
        (B.encode(), b""),
    ]
    assert read_txn([]) == rpc.TxnRequest()


def test_read_answer_pairs_keys_with_ranges_in_order() -> None:
    answer = _answer([_kv(C, STATS_C.encode(), mod=5)], [], [_kv(B, STATS_B.encode(), mod=6)])
    seen = read_answer([C, A, B], answer)
    assert seen == {C: Seen(5, STATS_C), A: ABSENT, B: Seen(6, STATS_B)}
    assert list(seen) == [C, A, B]
    with pytest.raises(ValueError, match=r"zip\(\) argument"):
        read_answer([C, A], answer)


def test_seen_of_reads_the_first_kv_and_its_mod_revision() -> None:
    assert seen_of([]) is ABSENT
    assert Seen(0, EMPTY) == ABSENT
    assert seen_of([_kv(A, STATS_A.encode(), mod=17, create=3)]) == Seen(17, STATS_A)


def test_seen_of_a_newer_release_record_is_a_contention_refusal_with_its_words() -> None:
    with pytest.raises(StoreUnavailable) as caught:
        seen_of([_kv(sensor_key(PREFIX, "s/1"), b'[2,1,"3",0,"2021-11-09T12:00:00Z",{}]', 4)])
    error = caught.value
    assert error.detail == (
        "the record of sensor 's/1' has version 2, which this release cannot read; "
        "upgrade every instance to the release that wrote it (the record is left as it is)"
    )
    assert (error.retry_after, error.outage) == (5, False)
    assert error.__cause__ is None
    assert error.__suppress_context__


def test_a_newer_release_record_under_a_key_not_utf_8_still_names_its_sensor() -> None:
    with pytest.raises(StoreUnavailable) as caught:
        seen_of([KeyValue(key=b"/sensorstats/sensors/\xff", value=b"[3]", mod_revision=1)])
    assert caught.value.detail.startswith(
        "the record of sensor '\ufffd' has version 3, which this release cannot read; "
    )


def test_seen_of_a_corrupt_record_is_an_outage_with_its_words() -> None:
    with pytest.raises(StoreUnavailable) as caught:
        seen_of([_kv(A, b'[1,0,"3",0,"2021-11-09T12:00:00Z"]', 4)])
    error = caught.value
    assert error.detail == (
        "etcd key '/sensorstats/sensors/a' holds a record this version cannot read: "
        'malformed statistics record: b\'[1,0,"3",0,"2021-11-09T12:00:00Z"]\''
    )
    assert (error.retry_after, error.outage) == (5, True)
    assert error.__cause__ is None
    assert error.__suppress_context__
    with pytest.raises(StoreUnavailable) as caught:
        seen_of([KeyValue(key=b"/sensorstats/sensors/\xff", value=b"nope", mod_revision=1)])
    assert caught.value.detail == (
        "etcd key '/sensorstats/sensors/\ufffd' holds a record this version cannot read: "
        "not a statistics record: b'nope'"
    )


def test_the_limits_and_costs_are_their_literal_values() -> None:
    assert (MAX_TXN_OPS, MIN_TXN_OPS, MAX_TXN_BYTES) == (128, 4, 1 << 20)
    assert (RECORD_BYTES, MARKER_BYTES, GUARD_BYTES) == (1024, 80, 48)
    assert key_cost("abc") == 9 + 1024
    assert key_cost("é") == 6 + 1024  # bytes, not characters
    assert marker_cost("abc") == 9 + 80
    assert marker_cost("é") == 6 + 80
    assert range_guard_cost("ab", "c") == 6 + 48
    assert range_guard_cost("é", "") == 4 + 48


# The largest record a sensor can hold: a count past any real one, a mantissa of
# the ~2,150 bits the sum of finite doubles can reach, the smallest exponent, and
# a long timestamp.
LARGEST = Stats(
    10**15,
    (1 << 2150) - 1,
    -1074,
    Timestamp.parse("2021-11-09T12:00:00.123456+14:00"),
)


def test_the_largest_record_fits_record_bytes() -> None:
    assert len(LARGEST.encode()) < RECORD_BYTES - 64


def _keys(count: int, length: int) -> list[str]:
    return [
        sensor_key(PREFIX, f"{i:06d}".ljust(length - len(PREFIX) - 8, "x")) for i in range(count)
    ]


@pytest.mark.parametrize(
    ("sensors", "key_length"),
    [
        pytest.param(MAX_TXN_OPS, 64, id="max-ops-short-keys"),
        pytest.param(MAX_TXN_OPS, 2700, id="max-ops-at-the-byte-limit"),
        pytest.param(4, 80_000, id="few-long-keys"),
        pytest.param(1, 3, id="one-tiny-key"),
    ],
)
def test_the_size_estimate_bounds_the_serialized_request(sensors: int, key_length: int) -> None:
    keys = _keys(sensors, key_length)
    seen = {key: Seen(1 << 40, LARGEST) for key in keys}
    request = write_txn(seen, dict.fromkeys(keys, LARGEST), [])
    estimate = sum(key_cost(key) for key in keys)
    actual = len(request.SerializeToString())
    assert actual <= estimate
    # And not so far over that it splits batches that would fit: the record bound
    # is the only slack.
    assert estimate - actual <= sensors * RECORD_BYTES


@pytest.mark.parametrize(
    "length",
    [
        pytest.param(1, id="one-byte"),
        pytest.param(127, id="last-one-byte-length"),
        pytest.param(128, id="first-two-byte-length"),
        # A sensor marker of the longest sensor id, every character four UTF-8 bytes.
        pytest.param(
            len(sensor_marker_key(PREFIX, "f" * 32, sensor_key(PREFIX, "\U0001f600" * 256))),
            id="longest-sensor-marker",
        ),
        pytest.param(20_000, id="three-byte-length"),
    ],
)
def test_a_markers_estimate_bounds_what_it_adds_to_the_request(length: int) -> None:
    # What a marker holds at most: a 32-hex fingerprint, on the longest lease id.
    marker = Marker("m" * length, b"0" * 32, (1 << 63) - 1)
    seen = {A: Seen(1 << 40, LARGEST)}
    alone = len(write_txn(seen, {A: LARGEST}, []).SerializeToString())
    added = len(write_txn(seen, {A: LARGEST}, [marker]).SerializeToString()) - alone
    assert added <= marker_cost(marker.key) <= added + 32


@pytest.mark.parametrize("length", [1, 60, 126, 16_390, 200_000])
def test_a_range_guards_estimate_bounds_what_it_adds_to_the_request(length: int) -> None:
    # The range of the previous release's markers under a key marker this long.
    start, end = "m" * length + "/0", "m" * length + "/:"
    guard = Guard(start, range_end=end, created_before=(1 << 63) - 1)
    seen = {A: Seen(1 << 40, LARGEST)}
    alone = len(write_txn(seen, {A: LARGEST}, []).SerializeToString())
    added = len(write_txn(seen, {A: LARGEST}, [], [guard]).SerializeToString()) - alone
    assert added <= range_guard_cost(start, end) <= added + 32


def test_a_chunk_split_at_the_byte_limit_stays_under_etcds_request_limit() -> None:
    keys = _keys(3 * MAX_TXN_OPS, 2900)
    updates = [Update(key, LARGEST) for key in keys]
    chunks = split_batch(updates, MAX_TXN_OPS)
    assert len(chunks) > 1
    for chunk in chunks:
        request = write_txn(
            {u.key: Seen(1 << 40, LARGEST) for u in chunk}, {u.key: LARGEST for u in chunk}, []
        )
        assert len(request.SerializeToString()) <= MAX_TXN_BYTES < 1536 * 1024


def test_a_keyed_chunk_fits_its_estimate_with_the_largest_records() -> None:
    # A keyed write at the most sensors a transaction takes, as `combining` sizes it:
    # each sensor's key cost plus its marker's, plus the key marker and the range
    # guard (a later transaction's value guard replaces the key marker's put). The
    # markers hold the 32-hex fingerprint and the longest lease id.
    digest = "f" * 32
    keys = _keys(MAX_TXN_OPS // 2 - 1, 64)
    lease = (1 << 63) - 1
    key_marker = key_marker_key(PREFIX, digest)
    start, end = legacy_marker_range(PREFIX, digest)
    markers = [Marker(sensor_marker_key(PREFIX, digest, k), b"0" * 32, lease) for k in keys]
    markers.append(Marker(key_marker, b"0" * 32, lease))
    guards = [Guard(start, range_end=end, created_before=lease)]
    request = write_txn(
        {k: Seen(1 << 40, LARGEST) for k in keys}, dict.fromkeys(keys, LARGEST), markers, guards
    )
    estimate = sum(map(key_cost, keys)) + sum(marker_cost(m.key) for m in markers)
    estimate += range_guard_cost(start, end)
    assert len(request.SerializeToString()) <= estimate


def _updates(*lengths: int) -> list[Update]:
    return [Update("k" * n, STATS_A) for n in lengths]


def test_split_batch_keeps_order_and_cuts_at_max_sensors() -> None:
    updates = _updates(1, 2, 3, 4, 5)
    assert split_batch(updates, 2) == [updates[0:2], updates[2:4], updates[4:5]]
    assert split_batch(updates, 5) == [updates]
    assert split_batch([], 5) == []


def test_split_batch_cuts_when_the_next_key_would_pass_max_bytes() -> None:
    updates = _updates(10, 10, 10)
    cost = key_cost("k" * 10)
    # Exactly at the limit still fits; one byte less does not.
    assert split_batch(updates, 10, max_bytes=2 * cost) == [updates[0:2], updates[2:3]]
    assert split_batch(updates, 10, max_bytes=2 * cost - 1) == [[u] for u in updates]
    # A key costlier than the limit still goes, alone.
    assert split_batch(updates, 10, max_bytes=1) == [[u] for u in updates]


def test_split_batch_counts_the_extra_cost_of_each_update() -> None:
    updates = _updates(10, 10, 10)
    cost = key_cost("k" * 10)
    seen: list[Update] = []

    def extra(update: Update) -> int:
        seen.append(update)
        return 100

    assert split_batch(updates, 10, max_bytes=2 * cost + 200, extra_cost=extra) == [
        updates[0:2],
        updates[2:3],
    ]
    assert seen == updates
    assert split_batch(updates, 10, max_bytes=2 * cost + 199, extra_cost=extra) == [
        [u] for u in updates
    ]
