"""The fault suite's checker and soak verdicts catch what they exist to catch.

The suite itself (`tox -e faults`) only shows a pass against a correct
service; these histories are built by hand so that each kind of violation
is seen to fail.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.tools.faults_checker import (
    SCALE_BITS,
    Expected,
    Final,
    Violations,
    check_history,
    scaled,
)
from tests.tools.faults_clients import (
    NOT_APPLIED,
    UNKNOWN,
    Attempt,
    History,
    Measurement,
    ReadOp,
    WriteOp,
    failure_kind,
)
from tests.tools.faults_processes import Status
from tests.tools.faults_soak import PostCost, leveling, marker_lifetimes, soak_quota

BASE = datetime(2024, 3, 1, tzinfo=UTC)


def batch(number: int, values: list[float], *, start: float, acked: float | None) -> WriteOp:
    """A batch of `values` for sensor "s", sent at `start`, acknowledged at `acked`."""
    instants = [BASE + timedelta(seconds=number * 10 + i) for i in range(len(values))]
    measurements = [
        Measurement("s", instant.isoformat(), instant, value)
        for instant, value in zip(instants, values, strict=True)
    ]
    op = WriteOp(number, f"k{number}", measurements, large=False, hedged=False)
    op.start, op.acked = start, acked
    op.attempts.append(
        Attempt("a", start, acked or start + 1, "204" if acked else "client timeout", "")
    )
    return op


def history_of(*ops: WriteOp, reads: tuple[ReadOp, ...] = ()) -> History:
    history = History(seed=0)
    history.writes.extend(ops)
    history.reads.extend(reads)
    return history


def stats(*ops: WriteOp) -> tuple[int, float, str | None]:
    """What the service should answer once `ops` are applied exactly once."""
    measurements = [m for op in ops for m in op.measurements]
    mean = float(sum(map(Fraction, (m.value for m in measurements))) / len(measurements))
    latest = max(measurements, key=lambda m: m.instant)
    return len(measurements), mean, latest.timestamp


def read(count: int, avg: float, last: str | None, start: float, end: float) -> ReadOp:
    return ReadOp("s", "b", start, end, count, avg, last)


def kinds(violations: Violations) -> set[str]:
    return set(violations.by_kind)


FIRST = batch(0, [0.1, 0.2], start=1.0, acked=2.0)
SECOND = batch(1, [7, 1e15 + 0.5], start=3.0, acked=4.0)


def check(history: History, final: tuple[int, float, str | None]) -> Violations:
    finals: dict[str, Final] = {"a": {"s": final}, "b": {"s": final}}
    return check_history(history, finals, final_start=100.0, final_retry_seconds=30).violations


def test_a_history_counted_exactly_once_passes() -> None:
    reads = (
        read(0, 0.0, None, 0.5, 0.9),  # before anything was sent
        read(2, *stats(FIRST)[1:], 2.5, 2.6),  # after the first, before the second
        read(2, *stats(FIRST)[1:], 3.5, 3.6),  # the second in flight, not yet seen
        read(4, *stats(FIRST, SECOND)[1:], 3.5, 4.5),  # ... or already seen
    )
    assert len(check(history_of(FIRST, SECOND, reads=reads), stats(FIRST, SECOND))) == 0


def test_a_batch_counted_twice_fails() -> None:
    twice = stats(FIRST, SECOND, SECOND)
    assert kinds(check(history_of(FIRST, SECOND), twice)) == {
        "sensors whose final state on a is wrong",
        "sensors whose final state on b is wrong",
    }


def test_an_acknowledged_batch_lost_fails() -> None:
    assert "sensors whose final state on a is wrong" in kinds(
        check(history_of(FIRST, SECOND), stats(SECOND))
    )


def test_a_wrong_mean_or_last_measurement_fails() -> None:
    count, avg, last = stats(FIRST, SECOND)
    one_ulp_off = math.nextafter(avg, math.inf)  # the oracle is exact: so is the check
    assert len(check(history_of(FIRST, SECOND), (count, one_ulp_off, last))) == 2
    assert len(check(history_of(FIRST, SECOND), (count, avg, FIRST.measurements[0].timestamp)))


def test_a_stale_read_fails() -> None:
    stale = read(2, *stats(FIRST)[1:], 4.5, 4.6)  # the second was acknowledged at 4.0
    violations = check(history_of(FIRST, SECOND, reads=(stale,)), stats(FIRST, SECOND))
    assert kinds(violations) == {"reads outside [acknowledged before, attempted by the end]"}


def test_a_read_from_the_future_fails() -> None:
    early = read(4, *stats(FIRST, SECOND)[1:], 2.5, 2.9)  # the second was sent at 3.0
    violations = check(history_of(FIRST, SECOND, reads=(early,)), stats(FIRST, SECOND))
    assert kinds(violations) == {"reads outside [acknowledged before, attempted by the end]"}


def test_a_read_at_a_bound_with_the_wrong_mean_fails() -> None:
    count, avg, last = stats(FIRST)
    wrong = read(count, avg * 2, last, 2.5, 2.6)
    violations = check(history_of(FIRST, SECOND, reads=(wrong,)), stats(FIRST, SECOND))
    assert kinds(violations) == {"reads at a bound with another mean or last"}


def test_a_batch_never_acknowledged_fails_but_bounds_the_final_count() -> None:
    lost = batch(1, [7, 8], start=3.0, acked=None)
    either = [stats(FIRST), stats(FIRST, lost)]
    for final in either:
        assert kinds(check(history_of(FIRST, lost), final)) == {"batches never acknowledged"}
    too_many = (6, *stats(FIRST)[1:])
    assert "sensors whose final state on a is wrong" in kinds(
        check(history_of(FIRST, lost), too_many)
    )


@given(
    st.lists(
        st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(10**30), 10**30)),
        min_size=1,
        max_size=8,
    )
)
def test_the_scaled_sum_is_the_fraction_oracle(values: list[float | int]) -> None:
    expected = Expected(len(values), sum(scaled(v) for v in values), None)
    assert expected.total == sum(map(Fraction, values)) * 2**SCALE_BITS
    assert expected.avg == float(sum(map(Fraction, values)) / len(values))


def problem(detail: str) -> bytes:
    return json.dumps({"status": 503, "detail": detail}).encode()


@pytest.mark.parametrize(
    ("detail", "expected"),
    [
        ("the outcome is unknown: etcd did not confirm within the write deadline", UNKNOWN),
        ("the update was not applied within the write deadline (5 s): no leader", NOT_APPLIED),
        # The breaker never asked etcd, whatever the failure it quotes says.
        (
            "not sent to the store: not calling it for another 1.2 s (circuit breaker open); "
            "the store failed 5 times in a row, most recently: the outcome is unknown: ...",
            NOT_APPLIED,
        ),
        ("etcd unavailable; the first 1 (127 of 200 sensors) were applied", "partly applied"),
    ],
)
def test_what_a_503_says_about_the_outcome(detail: str, expected: str) -> None:
    assert failure_kind(None, 503, problem(detail))[1] == expected


def test_failures_without_an_answer() -> None:
    assert failure_kind(ConnectionRefusedError(), 0, b"") == ("connection refused", NOT_APPLIED)
    assert failure_kind(ConnectionResetError(), 0, b"") == ("connection lost", UNKNOWN)
    assert failure_kind(TimeoutError(), 0, b"") == ("client timeout", UNKNOWN)


def samples(sizes_mib: Sequence[float], every: float = 5.0) -> list[tuple[float, Status]]:
    return [
        (i * every, Status("1", "1", i, int(size * 2**20), int(size * 2**20)))
        for i, size in enumerate(sizes_mib)
    ]


def test_a_sawtooth_levels_off() -> None:
    sawtooth = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 14, 15, 16, 18, 19, 21, 13, 14]
    assert len(leveling(samples(sawtooth))) == 0


def test_steady_growth_does_not_level_off() -> None:
    growth = [2.0 * i for i in range(23)]
    assert len(leveling(samples(growth))) == 2


def test_growth_with_a_small_dip_does_not_level_off() -> None:
    dips = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 20, 24, 26, 28, 30, 32, 34, 36, 40, 44]
    assert kinds(leveling(samples(dips))) == {"soak: no leveling off"}
    assert len(leveling(samples(dips))) == 2


def cost(mode: str, rate: float, compacted_bytes: float) -> PostCost:
    return PostCost(mode, int(rate * 4), int(rate), compacted_bytes, compacted_bytes, 100, rate)


def test_markers_stay_in_use_for_their_lease_and_then_until_a_compaction() -> None:
    # Unkeyed: a 65 s lease (30 s of use, the 5 s write deadline, a 30 s
    # margin); keyed with a 30 s window: 30 + 3 + 5 = 38 s. Then up to two
    # 10 s retention periods until compaction frees the pages.
    assert marker_lifetimes(30) == {"plain": 85, "keyed": 58}
    assert marker_lifetimes(None) == {"plain": 85}


def test_the_soak_quota_is_twice_what_the_capacity_formula_says_the_load_holds() -> None:
    # Alternating a 4,000/s and a 4,000/s mode: 2,000 of each per second.
    costs = [cost("plain", 4000, 250), cost("keyed", 4000, 470)]
    held = 1000 * 200 + 2000 * 250 * 85 + 2000 * 470 * 58
    assert soak_quota(costs, {"plain": 85, "keyed": 58}) == math.ceil(2 * held / 2**20) * 2**20


def test_a_faster_load_gets_a_larger_quota_and_a_slow_one_the_least() -> None:
    lifetimes = {"plain": 85, "keyed": 58}
    slow = soak_quota([cost("plain", 100, 250), cost("keyed", 100, 470)], lifetimes)
    assert slow == 64 * 2**20
    fast = soak_quota([cost("plain", 5000, 250), cost("keyed", 2500, 470)], lifetimes)
    faster = soak_quota([cost("plain", 10000, 250), cost("keyed", 5000, 470)], lifetimes)
    assert fast > slow
    assert abs(faster - 2 * fast) <= 2 * 2**20  # the sensors, and rounding to MiB
