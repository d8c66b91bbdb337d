"""The `Store` contract, one suite run on every implementation (in-memory and etcd)."""

from __future__ import annotations

import random
import threading
import time
from fractions import Fraction

from sensorstats.core.stats import EMPTY, Stats, Timestamp
from sensorstats.store import Store


def measured(*values: float | int, at: str = "2021-11-09T21:38:09+01:00") -> Stats:
    """The statistics of `values`, all taken at the instant `at`."""
    return Stats.of(list(values), Timestamp.parse(at))


def merged(*parts: Stats) -> Stats:
    total = EMPTY
    for part in parts:
        total = total.merge(part)
    return total


def test_unknown_sensor_is_empty(store: Store) -> None:
    assert store.get("never-seen") == EMPTY


def test_apply_then_get_returns_the_delta_exactly(store: Store) -> None:
    delta = measured(3.14, 1, 1e-300, at="2021-11-09T21:38:09.123456+01:00")
    store.apply({"abc": delta})
    assert store.get("abc") == delta
    assert store.get("abc").as_json() == {
        "last_measurement": "2021-11-09T21:38:09.123456+01:00",
        "count": 3,
        "avg": float((Fraction(3.14) + 1 + Fraction(1e-300)) / 3),
    }


def test_one_apply_updates_several_sensors(store: Store) -> None:
    deltas = {"a": measured(1), "b": measured(2, 3), "c": measured(1.7e308, 1.7e308)}
    store.apply(deltas)
    assert {sensor: store.get(sensor) for sensor in deltas} == deltas
    assert store.get("c").mean == 1.7e308


def test_an_empty_apply_stores_nothing(store: Store) -> None:
    store.apply({})
    store.apply({"idle": EMPTY})
    assert store.get("idle") == EMPTY


def test_many_applies_equal_one_big_apply_bit_for_bit(store: Store) -> None:
    rng = random.Random(1)
    values = [rng.choice([0.1, 1e-17, 1e17, -3.5, 2**60 + 1, 5e-324]) for _ in range(60)]
    stamps = [f"2021-11-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:00:00Z" for _ in values]
    for start in range(0, len(values), 7):
        part = values[start : start + 7]
        latest = max(Timestamp.parse(s) for s in stamps[start : start + 7])
        store.apply({"exact": Stats.of(part, latest)})
    expected = Stats.of(values, max(Timestamp.parse(s) for s in stamps))
    assert store.get("exact") == expected
    assert store.get("exact").mean == float(sum(map(Fraction, values)) / len(values))


def test_later_instant_wins_whatever_the_order(store: Store) -> None:
    store.apply({"t": measured(1, at="2021-01-01T06:00:00+00:00")})
    store.apply({"t": measured(1, at="2021-01-01T10:00:00+05:00")})  # 05:00 UTC: earlier
    assert store.get("t").as_json()["last_measurement"] == "2021-01-01T06:00:00+00:00"


def test_delete_forgets_the_sensor(store: Store) -> None:
    store.apply({"gone": measured(5), "kept": measured(6)})
    store.delete("gone")
    assert store.get("gone") == EMPTY
    assert store.get("kept") == measured(6)
    store.apply({"gone": measured(7)})
    assert store.get("gone") == measured(7)


def test_delete_of_an_unknown_sensor_is_fine(store: Store) -> None:
    store.delete("never-seen")
    store.delete("never-seen")
    assert store.get("never-seen") == EMPTY


AWKWARD_IDS = [
    "a",
    "ab",
    "a/b",
    "a/",
    "/a",
    "a%2Fb",
    "a%",
    "%",
    "..",
    "../a",
    ".",
    "a b",
    "a+b",
    "a?b",
    "a#b",
    "a\\b",
    "a*",
    "~",
    "sensors/a",
    "requests/x",
    "healthz",
    "température",
    "温度/1",
    "🌡️",
    "x" * 256,
    "x" * 255,
]


def test_awkward_ids_are_kept_apart(store: Store) -> None:
    store.apply({sensor: measured(*[1] * (i + 1)) for i, sensor in enumerate(AWKWARD_IDS)})
    assert [store.get(sensor).count for sensor in AWKWARD_IDS] == list(
        range(1, len(AWKWARD_IDS) + 1)
    )
    store.delete("a")
    store.delete("x" * 255)
    assert store.get("a") == EMPTY
    assert store.get("ab").count == 2
    assert store.get("a/b").count == 3
    assert store.get("x" * 256).count == len(AWKWARD_IDS) - 1


def test_concurrent_applies_lose_nothing_and_count_nothing_twice(store: Store) -> None:
    sensors = ["hot-1", "hot-2", "hot-3"]
    threads, rounds = 8, 50
    errors: list[BaseException] = []

    def writer(thread: int) -> None:
        try:
            for i in range(rounds):
                # Each thread writes its own values so a lost or doubled update shows in the sum.
                store.apply({s: measured(thread * 1000 + i + 0.5) for s in sensors})
        except BaseException as error:
            errors.append(error)

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    everything = [t * 1000 + i + 0.5 for t in range(threads) for i in range(rounds)]
    for sensor in sensors:
        assert store.get(sensor) == measured(*everything)


def test_a_delete_racing_applies_leaves_a_serial_order_state(store: Store) -> None:
    """Each apply adds a distinct power of two, so the final sum says which applies survive.

    In a serial order consistent with real time: applies that returned before
    the delete began are gone, applies that began after it returned are kept,
    and each thread's surviving applies are a suffix of what it sent.
    """
    threads, rounds = 4, 30
    times: dict[int, tuple[float, float]] = {}
    half_done = threading.Event()
    delete_time: list[float] = []

    def writer(thread: int) -> None:
        for i in range(rounds):
            n = thread * rounds + i
            began = time.monotonic()
            store.apply({"raced": measured(2**n, at=f"2021-01-01T00:00:{i:02d}Z")})
            times[n] = (began, time.monotonic())
            if len(times) >= threads * rounds // 2:
                half_done.set()

    def deleter() -> None:
        half_done.wait(30)
        began = time.monotonic()
        store.delete("raced")
        delete_time.extend([began, time.monotonic()])

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    workers.append(threading.Thread(target=deleter))
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    final = store.get("raced")
    total = final.mantissa << final.exponent if final.count else 0
    kept = {n for n in range(threads * rounds) if total >> n & 1}
    assert final.count == len(kept)  # no apply counted twice
    delete_began, delete_ended = delete_time
    for n, (began, ended) in times.items():
        if ended < delete_began:
            assert n not in kept, f"apply {n} finished before the delete, yet survived it"
        if began > delete_ended:
            assert n in kept, f"apply {n} started after the delete, yet is lost"
    for thread in range(threads):
        mine = [thread * rounds + i in kept for i in range(rounds)]
        assert mine == sorted(mine), f"thread {thread}'s surviving applies are not a suffix"


def test_a_batch_larger_than_one_transaction_lands_whole(store: Store) -> None:
    deltas = {f"big-{i:03d}": measured(i, i + 0.25) for i in range(300)}
    store.apply(deltas)
    assert {sensor: store.get(sensor) for sensor in deltas} == deltas
