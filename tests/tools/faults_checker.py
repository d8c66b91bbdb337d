"""The fault run's checker: Jepsen's counter checker, extended to the mean and the last.

After healing, every sensor's count must be exactly the number of distinct
measurements sent to it (every batch was retried until acknowledged), its
mean exact (the `Fraction` oracle) and its last measurement the latest sent.
Every read taken during the run must lie between what had been acknowledged
before it started and what had been attempted by the time it ended; when it
sits at either bound the set of applied batches is known, and the read's
mean and last measurement must be that set's.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction

from tests.tools.faults_clients import (
    EXPECTED_READ_FAILURES,
    PARTLY_APPLIED,
    UNKNOWN,
    History,
    WriteOp,
)
from tests.tools.faults_processes import log, since_start


def percentile(values: Sequence[float], share: float) -> float:
    """The value below which `share` of `values` lie (nearest rank)."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


class Violations:
    """What broke the contract, by kind, each with examples."""

    EXAMPLES = 5

    def __init__(self) -> None:
        self.by_kind: dict[str, list[str]] = {}

    def add(self, kind: str, text: str) -> None:
        self.by_kind.setdefault(kind, []).append(text)

    def extend(self, other: Violations) -> None:
        for kind, texts in other.by_kind.items():
            self.by_kind.setdefault(kind, []).extend(texts)

    def __len__(self) -> int:
        return sum(len(texts) for texts in self.by_kind.values())

    def report(self) -> None:
        for kind, texts in self.by_kind.items():
            log(f"VIOLATION: {len(texts)} x {kind}, e.g.")
            for text in texts[: self.EXAMPLES]:
                log(f"    {text}")


# Every double is an integer multiple of 2**-1074, so sums of doubles scaled
# by 2**1074 are exact integers: the `Fraction` oracle's sum, without a gcd
# on every addition (which made the checker take seconds).
SCALE_BITS = 1074


def scaled(value: float | int) -> int:
    """`value` times 2**SCALE_BITS, exactly."""
    numerator, denominator = value.as_integer_ratio()
    return numerator << (SCALE_BITS - denominator.bit_length() + 1)


@dataclass(frozen=True)
class Expected:
    """What a set of applied batches makes of one sensor's statistics."""

    count: int
    total: int  # the sum of the values, scaled by 2**SCALE_BITS
    latest: tuple[datetime, str] | None

    @property
    def avg(self) -> float:
        """The oracle: ``float(sum(map(Fraction, values)) / len(values))``."""
        return float(Fraction(self.total, self.count << SCALE_BITS)) if self.count else 0.0

    @property
    def last(self) -> str | None:
        return self.latest[1] if self.latest else None

    def add(self, other: Expected) -> Expected:
        latest = max(filter(None, [self.latest, other.latest]), default=None)
        return Expected(self.count + other.count, self.total + other.total, latest)

    def mismatch(self, count: int, avg: float, last: str | None) -> str | None:
        """How (count, avg, last) differs from this, or None."""
        if (count, avg, last) == (self.count, self.avg, self.last):
            return None
        return (
            f"got count {count} avg {avg!r} last {last!r}, "
            f"expected {self.count} {self.avg!r} {self.last!r}"
        )


NOTHING = Expected(0, 0, None)


def effects(op: WriteOp) -> dict[str, Expected]:
    """What applying `op` once does to each sensor it touches."""
    found: dict[str, Expected] = {}
    for m in op.measurements:
        one = Expected(1, scaled(m.value), (m.instant, m.timestamp))
        found[m.sensor] = found.get(m.sensor, NOTHING).add(one)
    return found


class Timeline:
    """One sensor's batches ordered by a time, with running totals, for bisection."""

    def __init__(self, events: list[tuple[float, Expected]]) -> None:
        events.sort(key=lambda event: event[0])
        self.times = [time for time, _ in events]
        self.totals = [NOTHING]
        for _, expected in events:
            self.totals.append(self.totals[-1].add(expected))

    def before(self, moment: float) -> Expected:
        """Everything strictly before `moment`."""
        return self.totals[bisect.bisect_left(self.times, moment)]

    def until(self, moment: float) -> Expected:
        """Everything at or before `moment`."""
        return self.totals[bisect.bisect_right(self.times, moment)]


Final = dict[str, tuple[int, float, str | None]]  # sensor: (count, avg, last_measurement)


@dataclass
class Timelines:
    """Every sensor's batches, by when they were acknowledged and when first sent."""

    acked: dict[str, Timeline]
    sent: dict[str, Timeline]

    @classmethod
    def of(cls, writes: Sequence[WriteOp]) -> Timelines:
        acked: dict[str, list[tuple[float, Expected]]] = {}
        sent: dict[str, list[tuple[float, Expected]]] = {}
        for op in writes:
            assert op.start is not None
            for sensor, expected in effects(op).items():
                sent.setdefault(sensor, []).append((op.start, expected))
                if op.acked is not None:
                    acked.setdefault(sensor, []).append((op.acked, expected))
        return cls(
            {sensor: Timeline(acked.get(sensor, [])) for sensor in sent},
            {sensor: Timeline(events) for sensor, events in sent.items()},
        )

    @property
    def sensors(self) -> list[str]:
        return sorted(self.sent)

    def acked_before(self, sensor: str, moment: float) -> Expected:
        line = self.acked.get(sensor)
        return line.before(moment) if line else NOTHING

    def sent_by(self, sensor: str, moment: float) -> Expected:
        line = self.sent.get(sensor)
        return line.until(moment) if line else NOTHING


@dataclass
class Verdict:
    """The violations found, and the history's figures to print."""

    violations: Violations = field(default_factory=Violations)
    lines: list[str] = field(default_factory=list)


def check_history(
    history: History, finals: dict[str, Final], final_start: float, final_retry_seconds: float
) -> Verdict:
    """Jepsen's counter checker, extended to the mean and the last measurement.

    `finals` holds each instance's answers after healing; `final_start` is
    when the retry of unacknowledged batches began.
    """
    verdict = Verdict()
    writes = [op for op in history.writes if op.start is not None]
    for op in writes:
        if op.violation:
            verdict.violations.add("batch refused by the service", op.violation)
    unacked = [op for op in writes if op.acked is None]
    if unacked:
        verdict.violations.add(
            "batches never acknowledged",
            f"{len(unacked)} batch(es) never acknowledged, even after healing and "
            f"{final_retry_seconds:g} s of retries: "
            + "; ".join(
                f"batch {op.number}: "
                + ", ".join(f"{a.instance} {a.kind}" for a in op.attempts[-3:])
                for op in unacked[:5]
            ),
        )
    timelines = Timelines.of(writes)
    exact_reads = check_reads(history, timelines, verdict.violations)
    for kind, n in history.read_failures.items():
        if kind not in EXPECTED_READ_FAILURES:
            verdict.violations.add("reads answered with an unexpected status", f"{n} x {kind}")
    in_doubt = {m.sensor for op in unacked for m in op.measurements}
    for instance, final in finals.items():
        check_final(instance, final, timelines, in_doubt, verdict.violations)
    verdict.lines = figures(history, writes, timelines, final_start, exact_reads)
    verdict.lines.append(
        f"final state: {len(timelines.sensors)} sensors read on {len(finals)} instances; "
        f"{len(verdict.violations)} violation(s)"
    )
    return verdict


def check_reads(history: History, timelines: Timelines, violations: Violations) -> int:
    """Every read lay between the acknowledged and the attempted; returns reads at a bound.

    At either bound the set of applied batches is known, and with it the
    mean and the last measurement the read must show.
    """
    at_a_bound = 0
    for read in history.reads:
        acked = timelines.acked_before(read.sensor, read.start)
        attempted = timelines.sent_by(read.sensor, read.end)
        where = (
            f"read of {read.sensor!r} on {read.instance} at "
            f"{since_start(read.start):.2f}-{since_start(read.end):.2f} s"
        )
        if not acked.count <= read.count <= attempted.count:
            violations.add(
                "reads outside [acknowledged before, attempted by the end]",
                f"{where}: count {read.count} outside [{acked.count} acknowledged before it, "
                f"{attempted.count} attempted by its end]",
            )
            continue
        # When the bounds are equal, so are their sets of batches.
        bound = attempted if read.count == attempted.count else None
        if read.count == acked.count:
            bound = acked
        if bound is not None:
            at_a_bound += 1
            wrong = bound.mismatch(read.count, read.avg, read.last)
            if wrong:
                violations.add("reads at a bound with another mean or last", f"{where}: {wrong}")
    return at_a_bound


def check_final(
    instance: str,
    final: Final,
    timelines: Timelines,
    in_doubt: set[str],
    violations: Violations,
) -> None:
    """After healing, each sensor shows every batch sent to it, exactly once.

    A sensor that a never-acknowledged batch touched (`in_doubt`) may or may
    not show that batch: its count must lie between the two.
    """
    for sensor in timelines.sensors:
        count, avg, last = final[sensor]
        everything = timelines.sent[sensor].totals[-1]
        if sensor in in_doubt:
            acked = timelines.acked[sensor].totals[-1]
            wrong = None
            if not acked.count <= count <= everything.count:
                wrong = f"count {count} outside [{acked.count}, {everything.count}]"
        else:
            wrong = everything.mismatch(count, avg, last)
        if wrong:
            violations.add(
                f"sensors whose final state on {instance} is wrong", f"{sensor!r}: {wrong}"
            )


def figures(
    history: History,
    writes: Sequence[WriteOp],
    timelines: Timelines,
    final_start: float,
    exact_reads: int,
) -> list[str]:
    """The history in numbers: operations, failures by kind, retries, unknown outcomes."""
    attempts = [a for op in writes for a in op.attempts]
    unacked = [op for op in writes if op.acked is None]
    hedged = [op for op in writes if op.hedged]
    retried = [op for op in writes if len(op.attempts) > (2 if op.hedged else 1)]
    failures = Counter(a.kind for a in attempts if a.kind != "204")
    unknown = [a for a in attempts if a.outcome in (UNKNOWN, PARTLY_APPLIED)]
    in_doubt = [
        op for op in writes if any(a.outcome in (UNKNOWN, PARTLY_APPLIED) for a in op.attempts)
    ]
    latencies = [
        op.acked - op.start for op in writes if op.acked is not None and op.start is not None
    ]
    measurements = sum(len(op.measurements) for op in writes)
    large = sum(op.large for op in writes)
    late = sum(1 for op in writes if op.acked is not None and op.acked >= final_start)
    read_failures = ", ".join(f"{n} {kind}" for kind, n in history.read_failures.most_common(4))
    return [
        f"writes: {len(writes)} batches ({len(writes) - large} small, {large} over 127 sensors, "
        f"{len(hedged)} hedged to both instances), {measurements} measurements to "
        f"{len(timelines.sensors)} sensors",
        f"  acknowledged: {len(writes) - len(unacked)} ({late} only in the final retry), "
        f"never: {len(unacked)}",
        f"  attempts: {len(attempts)}; retries: {len(attempts) - len(writes) - len(hedged)} "
        f"in {len(retried)} batches; most attempts for one batch: "
        f"{max((len(op.attempts) for op in writes), default=0)}",
        "  failed attempts by kind: "
        + (", ".join(f"{n} {kind}" for kind, n in failures.most_common()) or "none"),
        f"  unknown outcomes: {len(unknown)} attempts in {len(in_doubt)} batches, "
        f"each retried until acknowledged",
        f"  time to acknowledgement: p50 {percentile(latencies, 0.5) * 1000:.0f} ms, "
        f"p99 {percentile(latencies, 0.99):.2f} s, max {max(latencies, default=0):.2f} s",
        f"reads: {len(history.reads)} checked against the bounds, {exact_reads} of them at a "
        f"bound (mean and last measurement checked too); "
        f"{sum(history.read_failures.values())} failed ({read_failures or 'none'})",
    ]
