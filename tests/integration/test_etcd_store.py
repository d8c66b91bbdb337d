"""What only the etcd store must do: key layout, transactions, retries, outages."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import etcd3
import pytest

from sensorstats.core.errors import StoreUnavailable
from sensorstats.core.stats import EMPTY, Stats, Timestamp
from sensorstats.settings import EtcdEndpoint
from sensorstats.store.calls import StartedCall
from sensorstats.store.etcd.client import EtcdClient, EtcdFailure
from sensorstats.store.etcd.store import EtcdStore
from sensorstats.store.etcd.txn import Update, split_batch
from tests.support.etcd_process import EtcdProcess, etcd_settings, start_cluster, start_etcd

# Fails in CI, skips locally, when the etcd binary is missing.
pytestmark = pytest.mark.usefixtures("etcd_available")


def measured(*values: float, at: str = "2021-11-09T21:38:09Z") -> Stats:
    return Stats.of(list(values), Timestamp.parse(at))


def endpoints(*members: EtcdProcess) -> list[EtcdEndpoint]:
    return [EtcdEndpoint("127.0.0.1", m.client_port) for m in members]


@contextmanager
def raw_client(member: EtcdProcess) -> Iterator[Any]:
    """The upstream client, to look at etcd behind the store's back."""
    client = etcd3.client(host="127.0.0.1", port=member.client_port, timeout=5)
    try:
        yield client
    finally:
        client.close()


def lose_answer(call: Callable[[], Any]) -> Any:
    """Run the call for real, then report it as timed out: the answer is lost."""
    call()
    raise EtcdFailure("injected: answer lost", outcome_unknown=True)


def lose_request(call: Callable[[], Any]) -> Any:
    raise EtcdFailure("injected: request lost", outcome_unknown=True)


def refuse(call: Callable[[], Any]) -> Any:
    raise EtcdFailure("injected: refused", transient=False, retry_after=3)


Fault = Callable[[Callable[[], Any]], Any]


class ScriptedClient(EtcdClient):
    """An `EtcdClient` that counts transactions and injects faults into them.

    `faults[i]` wraps the i-th transaction; `then` wraps every later one.
    """

    def __init__(
        self,
        endpoints: Sequence[EtcdEndpoint],
        faults: Sequence[Fault | None] = (),
        then: Fault | None = None,
    ) -> None:
        super().__init__(endpoints)
        self.txn_calls = 0
        self._faults = list(faults)
        self._then = then

    def txn(self, request: Any, timeout: float) -> Any:
        fault = self._faults.pop(0) if self._faults else self._then
        self.txn_calls += 1
        call = lambda: super(ScriptedClient, self).txn(request, timeout)  # noqa: E731
        return fault(call) if fault else call()


@pytest.fixture
def make_store(etcd: EtcdProcess, etcd_prefix: str) -> Iterator[Callable[..., EtcdStore]]:
    """Stores on the session etcd under this test's prefix, closed afterwards."""
    stores: list[EtcdStore] = []

    def make(
        client: EtcdClient | None = None,
        *,
        call_timeout: float = 2.0,
        write_timeout: float = 10.0,
        **options: Any,
    ) -> EtcdStore:
        store = EtcdStore(
            client or EtcdClient(endpoints(etcd)),
            prefix=etcd_prefix,
            call_timeout=call_timeout,
            write_timeout=write_timeout,
            **options,
        )
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


# --- layout ------------------------------------------------------------------


def test_a_started_read_holds_what_was_read_for_its_request(
    make_store: Callable[..., EtcdStore],
) -> None:
    store = make_store()
    store.apply({"ahead": measured(1.0), "other": measured(5.0)})
    settled: list[StartedCall[Any]] = []
    read = store.start_get("ahead", settled.append)
    deadline = time.monotonic() + 10
    while not settled and time.monotonic() < deadline:
        time.sleep(0.01)
    assert settled == [read]
    assert read.sensor == "ahead"
    store.apply({"ahead": measured(2.0)})  # acknowledged after the request's read
    assert read.result() == measured(1.0)  # what was read for this request
    assert store.get("ahead") == measured(1.0, 2.0)  # a later request reads afresh


def test_each_sensor_is_one_readable_key_and_markers_expire(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess, etcd_prefix: str
) -> None:
    store = make_store(write_timeout=10.0)
    store.apply({"room 1/temp": measured(21), "a%2Fb": measured(1, 2)})
    with raw_client(etcd) as raw:
        value, _ = raw.get(etcd_prefix + "sensors/room%201%2Ftemp")
        assert value == measured(21).encode()
        keys = {meta.key.decode(): meta for _, meta in raw.get_prefix(etcd_prefix)}
        sensors = {key for key in keys if key.startswith(etcd_prefix + "sensors/")}
        assert sensors == {
            etcd_prefix + "sensors/room%201%2Ftemp",
            etcd_prefix + "sensors/a%252Fb",
        }
        (marker,) = set(keys) - sensors
        assert marker.startswith(etcd_prefix + "requests/")
        # The marker must outlive the write deadline, and must not live for ever.
        lease = raw.get_lease_info(keys[marker].lease_id)
        assert 10 < lease.grantedTTL <= 10 + 120


def test_the_description_names_the_endpoints_and_prefix(etcd: EtcdProcess) -> None:
    store = EtcdStore.from_settings(etcd_settings(etcd, etcd, prefix="/p/"))
    try:
        assert store.description == f"etcd at {etcd.url},{etcd.url} under prefix '/p/'"
    finally:
        store.close()


def test_a_record_this_version_cannot_read_is_unavailable_not_a_crash(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess, etcd_prefix: str
) -> None:
    with raw_client(etcd) as raw:
        raw.put(etcd_prefix + "sensors/future", b"[2,1,2,3]")
    store = make_store(write_timeout=1.0)
    with pytest.raises(StoreUnavailable, match="cannot read"):
        store.get("future")
    with pytest.raises(StoreUnavailable, match="cannot read"):
        store.apply({"future": measured(1)})


# --- transactions ------------------------------------------------------------


def test_batches_are_cut_at_the_operation_limit_in_key_order() -> None:
    updates = [Update(f"/k/{i:03d}", measured(i)) for i in range(300)]
    chunks = split_batch(updates, max_sensors=127)
    assert [len(c) for c in chunks] == [127, 127, 46]
    assert [u for c in chunks for u in c] == updates


def test_batches_are_cut_before_etcd_request_size_limit() -> None:
    updates = [Update("/k/" + "%E6" * 20_000 + str(i), measured(i)) for i in range(40)]
    chunks = split_batch(updates, max_sensors=127, max_bytes=1 << 20)
    assert len(chunks) > 1
    assert all(sum(3 * len(u.key) + 1024 for u in c) <= 1 << 20 for c in chunks)


def test_a_batch_over_the_op_limit_is_split_and_lands_whole(tmp_path: Path) -> None:
    with start_etcd(tmp_path, extra_args=["--max-txn-ops", "8"]) as small:
        deltas = {f"s{i:02d}": measured(i) for i in range(30)}
        client = ScriptedClient(endpoints(small))
        store = EtcdStore(client, prefix="/p/", call_timeout=2, write_timeout=5, max_txn_ops=8)
        try:
            store.apply(deltas)
            assert client.txn_calls == 5  # 7 sensors + 1 marker per transaction
            assert {s: store.get(s) for s in deltas} == deltas
        finally:
            store.close()
        # Without the split etcd refuses the transaction, and nothing is applied.
        unsplit = EtcdStore.from_settings(etcd_settings(small, prefix="/q/", write_timeout=2))
        try:
            with pytest.raises(StoreUnavailable, match="--max-txn-ops"):
                unsplit.apply(deltas)
            assert unsplit.get("s00") == EMPTY
        finally:
            unsplit.close()


def test_a_split_batch_that_fails_midway_says_what_stayed_applied(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess
) -> None:
    client = ScriptedClient(endpoints(etcd), faults=[None, refuse])
    store = make_store(client, max_txn_ops=8)
    deltas = {f"s{i:02d}": measured(i) for i in range(30)}
    with pytest.raises(StoreUnavailable) as raised:
        store.apply(deltas)
    assert "injected: refused" in raised.value.detail
    assert "the first 1 (7 of 30 sensors) were applied" in raised.value.detail
    assert "count them twice" in raised.value.detail
    assert raised.value.retry_after == 3
    assert [store.get(f"s{i:02d}").count for i in range(30)] == [1] * 7 + [0] * 23


def test_a_stale_cache_costs_one_round_trip_and_counts_exactly(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess
) -> None:
    client = ScriptedClient(endpoints(etcd))
    mine, other = make_store(client), make_store()
    mine.apply({"shared": measured(1), "mine": measured(10)})
    other.apply({"shared": measured(2)})  # `mine` does not know this revision
    calls_before = client.txn_calls
    mine.apply({"shared": measured(3), "mine": measured(20)})
    # The refused attempt read the current values in the same round trip.
    assert client.txn_calls - calls_before == 2
    assert mine.get("shared") == measured(1, 2, 3)
    assert other.get("mine") == measured(10, 20)


def test_the_cache_is_bounded_and_an_evicted_sensor_costs_one_round_trip(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess
) -> None:
    client = ScriptedClient(endpoints(etcd))
    store = make_store(client, cache_size=1)
    store.apply({"a": measured(1)})
    store.apply({"b": measured(2)})  # evicts "a"
    calls_before = client.txn_calls
    store.apply({"a": measured(3)})
    assert client.txn_calls - calls_before == 2
    assert store.get("a") == measured(1, 3)


def test_a_transaction_needs_room_for_a_sensor_and_the_marker(etcd: EtcdProcess) -> None:
    with pytest.raises(ValueError, match="room"):
        EtcdStore(
            EtcdClient(endpoints(etcd)),
            prefix="/p/",
            call_timeout=1,
            write_timeout=1,
            max_txn_ops=1,
        )


def test_two_stores_interleaving_on_one_prefix_lose_nothing(
    make_store: Callable[..., EtcdStore],
) -> None:
    first, second = make_store(), make_store()
    for i in range(20):
        (first if i % 3 else second).apply({"x": measured(i), f"only-{i % 2}": measured(i)})
    assert first.get("x") == measured(*range(20))
    assert second.get("only-0") == measured(*range(0, 20, 2))


# --- lost answers ------------------------------------------------------------


def test_a_lost_answer_after_a_commit_is_not_applied_twice(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess
) -> None:
    client = ScriptedClient(endpoints(etcd), faults=[lose_answer])
    store = make_store(client)
    store.apply({"once": measured(5), "also-once": measured(6)})
    assert client.txn_calls == 2  # the retry found the marker and stopped
    assert store.get("once") == measured(5)
    assert store.get("also-once") == measured(6)


def test_a_lost_request_is_retried_and_applied_once(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess
) -> None:
    client = ScriptedClient(endpoints(etcd), faults=[lose_request])
    store = make_store(client)
    store.apply({"once": measured(5)})
    assert client.txn_calls == 2
    assert store.get("once") == measured(5)


def test_a_lost_answer_after_someone_else_wrote_is_still_not_applied_twice(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess
) -> None:
    other = make_store()

    def lose_answer_then_race(call: Callable[[], Any]) -> Any:
        call()
        other.apply({"once": measured(7)})
        raise EtcdFailure("injected: answer lost", outcome_unknown=True)

    store = make_store(ScriptedClient(endpoints(etcd), faults=[lose_answer_then_race]))
    store.apply({"once": measured(5)})
    assert store.get("once") == measured(5, 7)


def test_an_outcome_never_confirmed_is_reported_unknown_and_applied_at_most_once(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess
) -> None:
    client = ScriptedClient(endpoints(etcd), then=lose_answer)
    store = make_store(client, call_timeout=0.2, write_timeout=0.6)
    with pytest.raises(StoreUnavailable, match="outcome is unknown"):
        store.apply({"unsure": measured(5)})
    assert client.txn_calls >= 2
    assert store.get("unsure") == measured(5)


def test_a_refusal_after_a_lost_answer_says_the_outcome_is_unknown(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess
) -> None:
    client = ScriptedClient(endpoints(etcd), faults=[lose_answer], then=refuse)
    store = make_store(client)
    with pytest.raises(StoreUnavailable, match="refused; an earlier attempt's outcome is unknown"):
        store.apply({"unsure": measured(5)})


def test_a_lost_marker_lease_is_granted_again(
    make_store: Callable[..., EtcdStore], etcd: EtcdProcess, etcd_prefix: str
) -> None:
    store = make_store()
    store.apply({"a": measured(1)})
    with raw_client(etcd) as raw:
        ((_, marker),) = raw.get_prefix(etcd_prefix + "requests/")
        raw.revoke_lease(marker.lease_id)  # e.g. etcd restored from an old backup
        store.apply({"a": measured(2)})
        ((_, renewed),) = raw.get_prefix(etcd_prefix + "requests/")
        assert renewed.lease_id != marker.lease_id
    assert store.get("a") == measured(1, 2)


# --- outages -----------------------------------------------------------------


def wait_until_ready(store: EtcdStore, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            store.check()
            return
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_a_restarted_etcd_is_used_again_within_seconds(own_etcd: EtcdProcess) -> None:
    store = EtcdStore.from_settings(
        etcd_settings(own_etcd, prefix="/p/", etcd_timeout=0.5, write_timeout=1.0)
    )
    try:
        store.apply({"s": measured(1)})
        own_etcd.kill()
        with pytest.raises(StoreUnavailable, match="unavailable"):
            store.check()
        # The first attempt may still go out on the connection etcd's death
        # closed (its outcome unknown to the client); later ones are refused.
        with pytest.raises(StoreUnavailable, match=r"Connection refused"):
            store.apply({"s": measured(2)})
        own_etcd.start()
        # Well before the 300 s the upstream client would refuse the endpoint for.
        wait_until_ready(store, within=10.0)
        store.apply({"s": measured(3)})
        assert store.get("s") == measured(1, 3)
    finally:
        store.close()


def test_a_paused_etcd_makes_every_call_unavailable_within_its_deadline(
    own_etcd: EtcdProcess,
) -> None:
    store = EtcdStore.from_settings(
        etcd_settings(own_etcd, prefix="/p/", etcd_timeout=0.3, write_timeout=1.0)
    )
    try:
        store.apply({"s": measured(1)})
        own_etcd.pause()
        operations: list[Callable[[], object]] = [
            store.check,
            lambda: store.get("s"),
            lambda: store.delete("other"),
            lambda: store.apply({"s": measured(2)}),
        ]
        for operation in operations:
            began = time.monotonic()
            with pytest.raises(StoreUnavailable):
                operation()
            # Bounded by the write deadline plus one call, not by etcd coming back.
            assert time.monotonic() - began < 1.0 + 0.3 + 1.0
        own_etcd.resume()
        wait_until_ready(store)
        # The paused apply's outcome was unknown; it may land, but only once.
        assert store.get("s") in (measured(1), measured(1, 2))
    finally:
        own_etcd.resume()
        store.close()


def fill(raw: Any) -> None:
    """Write until etcd raises its NOSPACE alarm."""
    # etcd measures the database as last committed (every 100 ms), so how
    # many writes it takes varies.
    deadline = time.monotonic() + 20
    i = 0
    while time.monotonic() < deadline:
        try:
            raw.put(f"/filler/{i % 50}", b"x" * 50_000)
        except Exception as error:
            assert "space exceeded" in str(error.details())  # noqa: PT017
            return
        i += 1
    raise AssertionError("etcd never ran out of space")


def test_a_full_database_is_a_quota_error_and_reads_go_on(tmp_path: Path) -> None:
    quota = 256 * 1024
    with start_etcd(tmp_path, extra_args=["--quota-backend-bytes", str(quota)]) as full:
        client = ScriptedClient(endpoints(full))
        store = EtcdStore(client, prefix="/p/", call_timeout=2, write_timeout=5)
        try:
            store.apply({"before": measured(1)})
            with raw_client(full) as raw:
                fill(raw)
            calls_before = client.txn_calls
            with pytest.raises(StoreUnavailable) as raised:
                store.apply({"after": measured(2)})
            assert "database space exceeded (quota)" in raised.value.detail
            assert "NOSPACE alarm" in raised.value.detail
            assert raised.value.retry_after == 5
            assert client.txn_calls == calls_before + 1  # retrying cannot help: not retried
            store.check()
            assert store.get("before") == measured(1)
        finally:
            store.close()


def test_without_quorum_the_store_is_unavailable_and_recovers(tmp_path: Path) -> None:
    with start_cluster(tmp_path) as members:
        store = EtcdStore.from_settings(
            etcd_settings(*members, prefix="/p/", etcd_timeout=0.5, write_timeout=1.0)
        )
        try:
            store.apply({"s": measured(1)})
            members[1].kill()
            members[2].kill()
            # Member 0 is alive and would answer Status, but no quorum read.
            with pytest.raises(StoreUnavailable):
                store.check()
            with pytest.raises(StoreUnavailable):
                store.get("s")
            members[1].start()
            wait_until_ready(store, within=15)
            assert store.get("s") == measured(1)
        finally:
            store.close()


def test_a_dead_member_is_failed_over(tmp_path: Path) -> None:
    with start_cluster(tmp_path) as members:
        store = EtcdStore.from_settings(
            etcd_settings(*members, prefix="/p/", etcd_timeout=0.5, write_timeout=3.0)
        )
        try:
            members[0].kill()
            for i in range(10):
                store.apply({"s": measured(i)})
                assert store.get("s").count == i + 1
        finally:
            store.close()


class Refusing(EtcdClient):
    """Every read and delete fails with `failure`; counts the attempts."""

    def __init__(self, endpoints: Sequence[EtcdEndpoint], failure: EtcdFailure) -> None:
        super().__init__(endpoints)
        self.calls = 0
        self._failure = failure

    def range(self, request: Any, timeout: float) -> Any:
        self.calls += 1
        raise self._failure

    delete_range = range


MEMBER_DOWN = EtcdFailure("member down", suspect_member=True)
MEMBER_LOST_ANSWER = EtcdFailure("answer lost", suspect_member=True, outcome_unknown=True)
ACCESS_DENIED = EtcdFailure("access denied", transient=False)


@pytest.mark.parametrize(
    ("operation", "failure", "calls"),
    [
        ("get", MEMBER_DOWN, 3),
        ("get", MEMBER_LOST_ANSWER, 3),
        ("get", ACCESS_DENIED, 1),
        ("check", MEMBER_LOST_ANSWER, 3),
        ("delete", MEMBER_DOWN, 3),
        ("delete", MEMBER_LOST_ANSWER, 1),  # it may have deleted: not repeated
        ("delete", ACCESS_DENIED, 1),
    ],
)
def test_reads_and_deletes_move_to_the_next_member_only_when_safe(
    etcd: EtcdProcess, operation: str, failure: EtcdFailure, calls: int
) -> None:
    client = Refusing(endpoints(etcd, etcd, etcd), failure)
    store = EtcdStore(client, prefix="/p/", call_timeout=1, write_timeout=1)
    try:
        call = store.check if operation == "check" else lambda: getattr(store, operation)("s")
        with pytest.raises(StoreUnavailable, match=failure.detail):
            call()
        assert client.calls == calls
    finally:
        store.close()


class HangingGrants(EtcdClient):
    """Lease grants wait for `release`, as on an etcd too slow to answer."""

    def __init__(self, endpoints: Sequence[EtcdEndpoint]) -> None:
        super().__init__(endpoints)
        self.granting = threading.Event()
        self.release = threading.Event()

    def grant_lease(self, ttl: int, timeout: float) -> int:
        self.granting.set()
        self.release.wait(10)
        return super().grant_lease(ttl, timeout)


def test_a_hanging_lease_grant_holds_no_other_writer_past_its_deadline(
    etcd: EtcdProcess,
) -> None:
    client = HangingGrants(endpoints(etcd))
    # Two transactions in flight, so that the second writer reaches the
    # lease too instead of queueing behind the first (which has a deadline
    # of its own: test_combining).
    store = EtcdStore(
        client, prefix="/p/", call_timeout=0.2, write_timeout=0.5, max_writes_in_flight=2
    )

    def hold_the_grant() -> None:
        with contextlib.suppress(StoreUnavailable):
            store.apply({"a": measured(1)})

    granting = threading.Thread(target=hold_the_grant)
    try:
        granting.start()
        assert client.granting.wait(10)
        with pytest.raises(StoreUnavailable, match="did not grant a request-marker lease in time"):
            store.apply({"b": measured(1)})
    finally:
        client.release.set()
        granting.join()
        store.close()
