"""The space soak: etcd's database under sustained load levels off, with no NOSPACE.

One etcd member with a small quota and periodic compaction scaled to it, one
instance. wrk (`tests/tools/faults_wrk.lua`) first posts unkeyed, then keyed
one-measurement POSTs to a member that never compacts by itself, to measure
what one POST costs the database: what it grows by (history, until
compaction), what a compaction leaves in use, and what a defragmentation
leaves (the live marker, until its lease expires). Then it posts at full
rate for `SOAK_SECONDS`, sampling the database's size: the size in use must
level off, with no NOSPACE alarm and no "database space exceeded" answer.

The quota is what ``kube/README.md`` ("Capacity") tells an operator to give
the load: twice what its formula says the load holds, with the rates and
bytes per POST just measured (`soak_quota`), and at least `SOAK_QUOTA`. A
fixed quota would make the outcome depend on how fast the machine is: the
faster it posts, the more markers are alive at once.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sensorstats.settings import Settings
from sensorstats.store.etcd.writes import (
    KEYED_LEASE_ROTATION_MAX,
    KEYED_LEASE_ROTATION_SHARE,
    MARKER_LEASE_MARGIN,
    MARKER_LEASE_ROTATION,
)
from tests.support.etcd_process import EtcdProcess
from tests.support.harness import ROOT, SetupFailed, http_request, log, problem_detail
from tests.support.ports import free_ports
from tests.tools.faults_checker import Violations
from tests.tools.faults_processes import Instance, Status, alarms, compact, defragment, now

SOAK_QUOTA = 64 * 1024 * 1024  # the least quota the soak runs with
SOAK_RETENTION_SECONDS = 10
SOAK_RETENTION = f"{SOAK_RETENTION_SECONDS}s"  # compaction every 10 s, keeping 10 s of history
# kube/README.md's advice: keep what the load holds under half the quota.
QUOTA_SHARE = 0.5
SENSOR_BYTES = 200  # a sensor's record, key and bbolt overhead (kube/README.md)
SOAK_SECONDS = 110
SOAK_SAMPLE_EVERY = 2.5
SOAK_PRINT_EVERY = 2  # samples
SOAK_IDEMPOTENCY_TTL = 30
SOAK_SENSORS = 1000
SOAK_CONNECTIONS = 16
MEASURE_SECONDS = 4
# Leveling off: the size in use falls at least once by RECLAIMED of its peak
# so far, and its peak over the last LEVEL_WINDOW seconds is at most
# LEVEL_TOLERANCE times the peak before them (the load's rate varies with
# whatever else the machine runs, and the peaks with it).
RECLAIMED = 0.15
LEVEL_WINDOW = 30.0
LEVEL_TOLERANCE = 1.3
WRK_SCRIPT = ROOT / "tests" / "tools" / "faults_wrk.lua"


def start_wrk(
    wrk: str, instance: Instance, mode: str, seconds: int, prefix: str
) -> subprocess.Popen[str]:
    argv = [wrk, "-t1", f"-c{SOAK_CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s"]
    argv += ["-s", str(WRK_SCRIPT), f"http://127.0.0.1:{instance.port}/"]
    argv += ["--", mode, prefix, str(SOAK_SENSORS)]
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
    )


def wrk_result(process: subprocess.Popen[str], seconds: float) -> dict[str, Any]:
    try:
        output, _ = process.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise SetupFailed("wrk did not finish") from None
    for line in output.splitlines():
        if line.startswith("FAULTS-WRK "):
            result: dict[str, Any] = json.loads(line.removeprefix("FAULTS-WRK "))
            return result
    raise SetupFailed(f"wrk printed no result:\n{output}")


def mib(size: float) -> str:
    return f"{size / 2**20:.1f} MiB"


def space_failures(result: dict[str, Any]) -> list[str]:
    """Answers that say etcd's space ran out."""
    bad = [
        f"{n} x {kind}"
        for kind, n in result["problems"].items()
        if kind.startswith("507") or "space" in kind
    ]
    if result["statuses"].get("507"):
        bad.append(f"{result['statuses']['507']} x 507")
    return bad


def idempotency_ttl_env() -> dict[str, str]:
    """SENSORSTATS_IDEMPOTENCY_TTL for the soak, if this version of the service has it."""
    help_text = subprocess.run(
        [sys.executable, "-m", "sensorstats", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=30,
    ).stdout
    if "--idempotency-ttl" in help_text:
        return {"SENSORSTATS_IDEMPOTENCY_TTL": str(SOAK_IDEMPOTENCY_TTL)}
    return {}


@dataclass(frozen=True)
class PostCost:
    """What one POST costs etcd's database, as measured."""

    mode: str
    posts: int
    revisions: int
    history_bytes: float  # per POST, what the database grows by
    compacted_bytes: float  # per POST, what a compaction leaves in use
    live_bytes: float  # per POST, what a defragmentation leaves: the live marker
    rate: float  # acknowledged POSTs per second


def marker_lifetimes(idempotency_ttl: float | None) -> dict[str, float]:
    """How long a POST's bytes stay in use, by mode: its marker's lease, then a compaction.

    The leases as `sensorstats.store.etcd.writes` makes them with the
    service's default write deadline; periodic compaction then reaches a
    freed page within twice the retention.
    """
    write_timeout = Settings().write_timeout
    compaction_lag = 2 * SOAK_RETENTION_SECONDS
    lifetimes = {
        "plain": math.ceil(MARKER_LEASE_ROTATION + write_timeout + MARKER_LEASE_MARGIN)
        + compaction_lag
    }
    if idempotency_ttl is not None:
        rotation = min(KEYED_LEASE_ROTATION_MAX, idempotency_ttl * KEYED_LEASE_ROTATION_SHARE)
        keyed_ttl = math.ceil(idempotency_ttl + rotation + write_timeout)
        lifetimes["keyed"] = keyed_ttl + compaction_lag
    return lifetimes


def soak_quota(costs: list[PostCost], lifetimes: dict[str, float]) -> int:
    """Twice what the soak's load holds by kube/README.md's formula, in whole MiB; at least 64.

    The soak alternates the measured modes on every connection, so each
    runs at the rate of one request of each in turn.
    """
    rate_of_each = 1 / sum(1 / cost.rate for cost in costs)
    held = SOAK_SENSORS * SENSOR_BYTES + sum(
        rate_of_each * cost.compacted_bytes * lifetimes[cost.mode] for cost in costs
    )
    mebibytes = math.ceil(held / QUOTA_SHARE / 2**20)
    return max(SOAK_QUOTA, mebibytes * 2**20)


def measure_post_costs(directory: Path, wrk: str, env: dict[str, str]) -> list[PostCost]:
    """Bytes per unkeyed and per keyed POST, on a member that never compacts by itself."""
    member = EtcdProcess(directory / "measure", name="measure")
    (port,) = free_ports(1)
    instance = Instance("sensorstats-measure", port, [member.url], directory, **env)
    costs = []
    try:
        member.start()
        instance.start()
        instance.wait_ready()
        # The sensors exist before the baseline: afterwards their records
        # only change, so what compaction leaves behind is the markers.
        warm_up = [
            {"sensor": f"m-{i}", "timestamp": "2024-03-01T00:00:00Z", "value": 1}
            for i in range(SOAK_SENSORS)
        ]
        status, body = http_request(instance.port, "POST", "/data", json.dumps(warm_up).encode())
        if status != 204:
            raise SetupFailed(f"warm-up POST: {status} {problem_detail(body)}")
        compact(member)
        previous = defragment(member)
        for mode in ("plain", "keyed"):
            result = wrk_result(
                start_wrk(wrk, instance, mode, MEASURE_SECONDS, "m"), MEASURE_SECONDS
            )
            posts = result["statuses"].get("204", 0)
            if not posts:
                raise SetupFailed(f"no {mode} POST was acknowledged: {result}")
            time.sleep(0.5)  # a request wrk left in flight may still commit
            grown = Status.of(member)
            compacted = compact(member)
            live = defragment(member)
            costs.append(
                PostCost(
                    mode,
                    posts,
                    grown.revision - previous.revision,
                    (grown.db_size_in_use - previous.db_size_in_use) / posts,
                    (compacted.db_size_in_use - previous.db_size_in_use) / posts,
                    (live.db_size_in_use - previous.db_size_in_use) / posts,
                    posts / MEASURE_SECONDS,
                )
            )
            previous = live
    finally:
        instance.stop()
        member.stop()
    return costs


def run_soak(directory: Path, wrk: str) -> Violations:
    """The space soak; returns its violations."""
    env = idempotency_ttl_env()
    ttl_note = (
        f"keyed and unkeyed POSTs, SENSORSTATS_IDEMPOTENCY_TTL={SOAK_IDEMPOTENCY_TTL}"
        if env
        # Keyed markers would then live the default window, far past the soak.
        else "unkeyed POSTs only: this version has no SENSORSTATS_IDEMPOTENCY_TTL"
    )
    costs = measure_post_costs(directory, wrk, env)
    for cost in costs:
        log(
            f"{cost.mode:>5} POSTs: {cost.posts} in {MEASURE_SECONDS} s ({cost.rate:.0f}/s, "
            f"{cost.posts / max(cost.revisions, 1):.1f} per transaction); per POST etcd's "
            f"database grows {cost.history_bytes:.0f} B, keeps {cost.compacted_bytes:.0f} B "
            f"in use after a compaction and {cost.live_bytes:.0f} B after a defragmentation"
        )
    history_per_post = sum(c.history_bytes for c in costs) / len(costs)
    mode = "mixed" if env else "plain"
    quota = soak_quota(costs, marker_lifetimes(SOAK_IDEMPOTENCY_TTL if env else None))

    violations = Violations()
    member = EtcdProcess(
        directory / "soak",
        name="soak",
        extra_args=[
            f"--quota-backend-bytes={quota}",
            "--auto-compaction-mode=periodic",
            f"--auto-compaction-retention={SOAK_RETENTION}",
        ],
    )
    (port,) = free_ports(1)
    instance = Instance("sensorstats-soak", port, [member.url], directory, **env)
    wrk_process: subprocess.Popen[str] | None = None
    try:
        member.start()
        instance.start()
        instance.wait_ready()
        log(
            f"soak: {SOAK_SECONDS} s at full rate ({SOAK_CONNECTIONS} connections) "
            f"on one etcd member, quota {mib(quota)} (twice what kube/README.md's formula "
            f"says this load holds, at least {mib(SOAK_QUOTA)}), periodic compaction keeping "
            f"{SOAK_RETENTION}; {ttl_note}"
        )
        started = now()
        wrk_process = start_wrk(wrk, instance, mode, SOAK_SECONDS, "s")
        samples: list[tuple[float, Status]] = []
        raised: set[str] = set()
        while True:
            finished = wrk_process.poll() is not None
            status = Status.of(member)
            alarm = alarms(member)
            raised.update(alarm)
            samples.append((now() - started, status))
            if finished or len(samples) % SOAK_PRINT_EVERY == 1:
                log(
                    f"  {now() - started:5.1f} s  revision {status.revision:7d}  dbSize "
                    f"{mib(status.db_size):>9}  in use {mib(status.db_size_in_use):>9}  alarms "
                    f"{','.join(alarm) or 'none'}"
                )
            if finished:
                break
            time.sleep(min(SOAK_SAMPLE_EVERY, max(0.1, started + SOAK_SECONDS - now())))
        result = wrk_result(wrk_process, SOAK_SECONDS)
    finally:
        if wrk_process is not None and wrk_process.poll() is None:
            wrk_process.kill()
            wrk_process.wait()
        instance.stop()
        member.stop()

    posts = result["statuses"].get("204", 0)
    others = {k: v for k, v in result["statuses"].items() if k != "204"}
    log(
        f"soak: {posts} POSTs acknowledged ({posts / SOAK_SECONDS:.0f}/s, {result['keyed']} "
        f"sent with a key), other answers {others or 'none'}, socket errors "
        f"{ {k: v for k, v in result['socket_errors'].items() if v} or 'none' }"
    )
    for kind, n in sorted(result["problems"].items(), key=lambda item: -item[1])[:5]:
        log(f"  {n} x {kind}")
    written = posts * history_per_post
    peak = max(status.db_size_in_use for _, status in samples)
    grew = [
        t for (t, s), (_, p) in zip(samples[1:], samples, strict=False) if s.db_size > p.db_size
    ]
    log(
        f"soak: history written {mib(written)} ({written / quota:.0%} of the quota, at "
        f"{history_per_post:.0f} B per POST); in use at most {mib(peak)}; the file grew to "
        f"{mib(samples[-1][1].db_size)}, last at {grew[-1] if grew else 0:.0f} s"
    )
    if raised - {"NONE"}:
        violations.add("soak: alarms", f"etcd raised {sorted(raised)} during the soak")
    bad = space_failures(result)
    if bad:
        violations.add("soak: answers saying etcd's space ran out", "; ".join(bad))
    if not posts:
        violations.add("soak: no progress", "the soak got no POST acknowledged")

    violations.extend(leveling(samples))
    return violations


def leveling(samples: list[tuple[float, Status]]) -> Violations:
    """Whether the size in use levels off: space reclaimed, and no new heights.

    Markers expire in waves (unkeyed ones every 30 s from about 65 s on,
    keyed ones a little at a time from the idempotency window on), and the
    next compaction frees their pages, so the size in use is a sawtooth:
    it must fall back at least once, and its last peak must be no higher
    than the ones before. A database that keeps its history, or markers
    that never expire, only ever grows.
    """
    violations = Violations()
    sizes = [(t, status.db_size_in_use) for t, status in samples]
    deepest, at, peak = 0.0, 0.0, 0
    for t, size in sizes:
        peak = max(peak, size)
        if peak and (peak - size) / peak > deepest:
            deepest, at = (peak - size) / peak, t
    end = sizes[-1][0]
    earlier = [size for t, size in sizes if t < end - LEVEL_WINDOW]
    recent = [size for t, size in sizes if t >= end - LEVEL_WINDOW]
    if not earlier or not recent:
        violations.add("soak: no leveling off", "too few samples to judge leveling")
        return violations
    log(
        f"soak: the size in use fell by up to {deepest:.0%} of its peak so far (at {at:.0f} s); "
        f"it peaked at {mib(max(earlier))} before the last {LEVEL_WINDOW:g} s and at "
        f"{mib(max(recent))} in them"
    )
    if deepest < RECLAIMED:
        violations.add(
            "soak: no leveling off",
            f"the size in use never fell by {RECLAIMED:.0%} of its peak: compaction and "
            f"expiring markers reclaimed nothing",
        )
    if max(recent) > LEVEL_TOLERANCE * max(earlier):
        violations.add(
            "soak: no leveling off",
            f"the size in use peaked at {mib(max(recent))} in the last {LEVEL_WINDOW:g} s, "
            f"more than {LEVEL_TOLERANCE:g} times the earlier peak {mib(max(earlier))}",
        )
    return violations
