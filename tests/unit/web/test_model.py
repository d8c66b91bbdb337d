"""Model-based tests: random request sequences through the HTTP app, checked against a model.

A `RuleBasedStateMachine` posts batches (with and without `Idempotency-Key`,
replays of earlier keyed requests, a key reused with another payload,
rejected batches, concurrent posts from several threads) and deletes
sensors through `falcon.testing.TestClient`, and keeps a plain model beside
the service: each sensor's list of values and its latest (instant, text),
and the effect each idempotency key was first used with. After every step
every instance must answer `GET /statistics/{id}` for every sensor exactly
as the model says: the count, the mean bit for bit (the contract's oracle
``float(sum(map(Fraction, values)) / len(values))``) and `last_measurement`
(the HTTP contract, "Timestamps": the latest instant, ties broken by the
greater string).

It runs on the embedded store (one instance, which applies a batch whole),
and on a real etcd with four `EtcdStore` objects on one prefix behind four
apps, each request going to any of them at random, so replays, key reuse
and concurrent duplicates cross instances, and concurrent posts share
transactions (group commit). The four split batches differently
(`ETCD_MAX_TXN_OPS`), as instances do while an operator changes the
setting: each attempt of a keyed request is chunked by whichever instance
serves it, more finely, more coarsely or alike.
"""

from __future__ import annotations

import json
import random
import secrets
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction
from typing import Any
from urllib.parse import quote

from falcon import testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from sensorstats.settings import Settings
from sensorstats.store import Store
from sensorstats.store.etcd.store import EtcdStore
from sensorstats.store.memory import MemoryStore
from sensorstats.web.app import create_app
from tests.support.etcd_process import EtcdProcess, etcd_settings
from tests.support.examples import examples

# Few sensors, so that rules keep meeting the same ones. Ids that are
# prefixes of each other, contain "/" or characters a URL must encode.
SENSORS = ("a", "ab", "a/b", "a b", "ü/temp", "x?y#z%41", "..", "room 1/temp")

# Few instants, so that equal instants written differently (ties) are common.
_INSTANTS = tuple(
    datetime(2021, 11, 9, 20, 0, tzinfo=UTC) + offset
    for offset in (
        timedelta(0),
        timedelta(microseconds=1),
        timedelta(seconds=1, microseconds=500_000),
        timedelta(hours=1),
    )
)
_ZONES = (UTC, timezone(timedelta(hours=1)), timezone(timedelta(hours=-5, minutes=-30)))


def _render(instant: datetime, zone: timezone, form: str) -> str:
    """One of the ways a client may write `instant`, all accepted by `fromisoformat`."""
    local = instant.astimezone(zone)
    if form == "naive":  # no offset: taken as UTC
        return instant.replace(tzinfo=None).isoformat()
    if form == "space":
        return local.isoformat(sep=" ")
    if form == "micro":
        return local.isoformat(timespec="microseconds")
    if form == "nano":  # digits past the sixth: the instant is the same, the text differs
        text = local.isoformat(timespec="microseconds")
        return text[:26] + "999" + text[26:]
    text = local.isoformat()
    return text.replace("+00:00", "Z") if form == "z" else text


TIMESTAMPS = st.builds(
    _render,
    st.sampled_from(_INSTANTS),
    st.sampled_from(_ZONES),
    st.sampled_from(("iso", "z", "naive", "space", "micro", "nano")),
)
VALUES = st.one_of(
    st.integers(min_value=-1000, max_value=1000),
    st.floats(allow_nan=False, allow_infinity=False),
    # Integers are summed exactly as integers; extremes must not overflow.
    st.sampled_from([0.1, -0.0, 5e-324, 1.7e308, -1.7e308, 2**53 + 1, 10**308, -(2**63)]),
)


@dataclass(frozen=True)
class Item:
    sensor: str
    timestamp: str
    value: int | float

    def document(self) -> dict[str, Any]:
        return {"sensor": self.sensor, "timestamp": self.timestamp, "value": self.value}


ITEMS = st.builds(Item, st.sampled_from(SENSORS), TIMESTAMPS, VALUES)
BATCHES = st.lists(ITEMS, min_size=1, max_size=10).map(tuple)
# Which instance serves a request: of four on etcd, of the one embedded store.
INSTANCE = st.integers(min_value=0, max_value=3)
# Operations per transaction of the four etcd instances: a keyed chunk holds 1,
# 2, 3 or 63 sensors, an unkeyed one 3, 5, 8 or 127 (batches here touch up to 8).
ETCD_MAX_TXN_OPS = (4, 6, 9, 128)
# Threads of a machine: as many as one concurrent step sends requests.
THREADS = 8

# Items the contract refuses; one of them rejects a whole batch.
BAD_ITEMS: tuple[object, ...] = (
    {"sensor": "a", "timestamp": "yesterday", "value": 1},
    {"sensor": "a", "timestamp": "2021-13-01T00:00:00Z", "value": 1},
    {"sensor": "a", "timestamp": "2021-11-09T20:00:00Z", "value": True},
    {"sensor": "a", "timestamp": "2021-11-09T20:00:00Z", "value": "1"},
    {"sensor": "a", "timestamp": "2021-11-09T20:00:00Z", "value": None},
    {"sensor": "a", "timestamp": "2021-11-09T20:00:00Z"},
    {"sensor": "", "timestamp": "2021-11-09T20:00:00Z", "value": 1},
    {"sensor": "a\u0000", "timestamp": "2021-11-09T20:00:00Z", "value": 1},
    {"sensor": "a" * 257, "timestamp": "2021-11-09T20:00:00Z", "value": 1},
    ["a", "2021-11-09T20:00:00Z", 1],
    5,
)


@dataclass(frozen=True)
class Layout:
    """How a client writes a batch; none of it changes what the batch means."""

    indent: int | None
    ensure_ascii: bool
    extra_key: bool  # keys other than the three are ignored
    shuffle_seed: int | None  # item order does not matter either


LAYOUTS = st.builds(
    Layout,
    st.sampled_from([None, 0, 2]),
    st.booleans(),
    st.booleans(),
    st.none() | st.integers(min_value=0, max_value=2**32),
)


def body(items: Sequence[Item], layout: Layout = Layout(None, False, False, None)) -> str:
    documents = [item.document() for item in items]
    if layout.shuffle_seed is not None:
        random.Random(layout.shuffle_seed).shuffle(documents)
    if layout.extra_key:
        documents = [{"unit": "°C", **document} for document in documents]
    return json.dumps(documents, indent=layout.indent, ensure_ascii=layout.ensure_ascii)


def key_header(key: str, quoted: bool) -> str:
    """`key` as a Structured Field string, or as a bare token where it is one."""
    if quoted or any(c in key for c in ' "\\'):
        return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return key


# Printable ASCII: what a key may hold; space, quote and backslash only when quoted.
KEYS = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40)

# --- the model ------------------------------------------------------------------------


def instant(text: str) -> datetime:
    """The instant a timestamp names (the HTTP contract: without an offset it is UTC)."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


Effect = tuple[tuple[str, int, Fraction, str], ...]


def effect(items: Sequence[Item]) -> Effect:
    """What a batch does to each sensor; batches with equal effects are the same payload.

    Per sensor: the count, the exact sum and the latest timestamp's text, which
    is what the service's fingerprint covers (idempotency.py).
    """
    by_sensor: dict[str, list[Item]] = {}
    for item in items:
        by_sensor.setdefault(item.sensor, []).append(item)
    return tuple(
        (
            sensor,
            len(group),
            sum((Fraction(item.value) for item in group), Fraction(0)),
            max((instant(item.timestamp), item.timestamp) for item in group)[1],
        )
        for sensor, group in sorted(by_sensor.items())
    )


@dataclass
class Model:
    """What the service must answer: plain lists and dicts, no shared code with it."""

    values: dict[str, list[int | float]] = field(default_factory=dict)
    latest: dict[str, tuple[datetime, str]] = field(default_factory=dict)
    keys: dict[str, Effect] = field(default_factory=dict)

    def apply(self, items: Sequence[Item]) -> None:
        for item in items:
            self.values.setdefault(item.sensor, []).append(item.value)
            candidate = (instant(item.timestamp), item.timestamp)
            self.latest[item.sensor] = max(self.latest.get(item.sensor, candidate), candidate)

    def delete(self, sensor: str) -> None:
        self.values.pop(sensor, None)
        self.latest.pop(sensor, None)

    def expected(self, sensor: str) -> dict[str, Any]:
        values = self.values.get(sensor, [])
        if not values:
            return {"last_measurement": None, "count": 0, "avg": 0.0}
        return {
            "last_measurement": self.latest[sensor][1],
            "count": len(values),
            "avg": float(sum(map(Fraction, values)) / len(values)),
        }


@dataclass(frozen=True)
class KeyedRequest:
    """A keyed POST the service acknowledged: its key and its items."""

    key: str
    items: tuple[Item, ...]


def path(sensor: str) -> str:
    return "/statistics/" + quote(sensor, safe="")


def assert_problem(result: testing.Result, status: int, type_uri: str | None = None) -> None:
    assert result.status_code == status, (result.status_code, result.text)
    assert result.headers["content-type"] == "application/problem+json"
    document = result.json
    assert document["status"] == status
    if type_uri is not None:
        assert document["type"] == type_uri


# --- the machine ----------------------------------------------------------------------


class ServiceMachine(RuleBasedStateMachine):
    """Requests through one or more apps on one store, against `Model`.

    `instance` arguments pick the app; with a single app (the embedded store)
    every request goes to it.
    """

    keyed = Bundle("keyed")

    def __init__(self, stores: Sequence[Store], *, concurrent_reads: bool) -> None:
        super().__init__()
        self.stores = stores
        self.concurrent_reads = concurrent_reads
        self.clients = [testing.TestClient(create_app(Settings(), store)) for store in stores]
        self.model = Model()
        self.threads = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="model")
        self.fresh = 0

    def teardown(self) -> None:
        self.threads.shutdown(wait=True)
        for store in self.stores:
            store.close()

    def client(self, instance: int) -> testing.TestClient:
        return self.clients[instance % len(self.clients)]

    def new_key(self, text: str) -> str:
        """`text` made unique: keys the model has not seen yet."""
        self.fresh += 1
        return f"{text}-{self.fresh}"

    def post(
        self, instance: int, text: str, key: str | None = None, quoted: bool = True
    ) -> testing.Result:
        headers = {} if key is None else {"Idempotency-Key": key_header(key, quoted)}
        return self.client(instance).simulate_post("/data", body=text, headers=headers)

    # --- rules ------------------------------------------------------------------------

    @rule(items=st.lists(ITEMS, max_size=10).map(tuple), layout=LAYOUTS, instance=INSTANCE)
    def post_without_a_key(self, items: tuple[Item, ...], layout: Layout, instance: int) -> None:
        result = self.post(instance, body(items, layout))
        assert result.status_code == 204, result.text
        self.model.apply(items)

    @rule(
        target=keyed,
        items=BATCHES,
        text=KEYS,
        quoted=st.booleans(),
        layout=LAYOUTS,
        instance=INSTANCE,
    )
    def post_with_a_new_key(
        self, items: tuple[Item, ...], text: str, quoted: bool, layout: Layout, instance: int
    ) -> KeyedRequest:
        key = self.new_key(text)
        result = self.post(instance, body(items, layout), key, quoted)
        assert result.status_code == 204, result.text
        self.model.apply(items)
        self.model.keys[key] = effect(items)
        return KeyedRequest(key, items)

    @rule(request=keyed, quoted=st.booleans(), layout=LAYOUTS, instance=INSTANCE)
    def replay(self, request: KeyedRequest, quoted: bool, layout: Layout, instance: int) -> None:
        """The same key and payload again: the first outcome, not counted again.

        Written differently (item order, layout, ignored keys), through either
        instance, and also after its sensors were deleted meanwhile.
        """
        result = self.post(instance, body(request.items, layout), request.key, quoted)
        assert result.status_code == 204, result.text

    @rule(request=keyed, items=BATCHES, instance=INSTANCE)
    def reuse_a_key_with_another_payload(
        self, request: KeyedRequest, items: tuple[Item, ...], instance: int
    ) -> None:
        result = self.post(instance, body(items), request.key)
        if effect(items) == self.model.keys[request.key]:
            # The same payload after all (e.g. the same items in another order).
            assert result.status_code == 204, result.text
        else:
            assert_problem(result, 422, "urn:sensorstats:problem:idempotency-key-reused")

    @rule(
        target=keyed,
        items=st.lists(ITEMS, max_size=6).map(tuple),
        bad=st.sampled_from(BAD_ITEMS),
        position=st.integers(min_value=0, max_value=10),
        key=st.none() | KEYS,
        instance=INSTANCE,
    )
    def post_a_rejected_batch(
        self,
        items: tuple[Item, ...],
        bad: object,
        position: int,
        key: str | None,
        instance: int,
    ) -> Any:
        """One bad item rejects the batch: nothing of it is stored, its key is not used up.

        With a key, the valid items then go through with the same key and count.
        """
        documents: list[object] = [item.document() for item in items]
        documents.insert(position % (len(documents) + 1), bad)
        key = None if key is None else self.new_key(key)
        result = self.post(instance, json.dumps(documents), key)
        assert_problem(result, 400, "urn:sensorstats:problem:invalid-batch")
        if key is None or not items:
            return multiple()
        result = self.post(instance + 1, body(items), key)
        assert result.status_code == 204, result.text
        self.model.apply(items)
        self.model.keys[key] = effect(items)
        return KeyedRequest(key, items)

    @rule(sensor=st.sampled_from(SENSORS), instance=INSTANCE)
    def delete(self, sensor: str, instance: int) -> None:
        result = self.client(instance).simulate_delete(path(sensor))
        assert result.status_code == 204, result.text
        self.model.delete(sensor)

    @rule(
        target=keyed,
        requests=st.lists(
            st.tuples(BATCHES, st.sampled_from([None, 0, 1]), INSTANCE), min_size=2, max_size=4
        ),
        duplicates=st.lists(INSTANCE, max_size=4),
    )
    def post_concurrently(
        self,
        requests: list[tuple[tuple[Item, ...], int | None, int]],
        duplicates: list[int],
    ) -> Any:
        """Several posts at once from threads, through both instances: each applied once.

        Keyed requests share one of two fresh keys; the first one's exact
        copies (`duplicates`) race it. Of the requests sharing a key, the ones
        acknowledged all carry one payload, every request with that payload is
        acknowledged (or 409, still in flight), every other one is refused
        with 422; the payload counts once.
        """
        keys = [self.new_key("concurrent"), self.new_key("concurrent")]
        sent = [(items, None if slot is None else keys[slot], via) for items, slot, via in requests]
        sent += [(sent[0][0], sent[0][1], via) for via in duplicates]
        assert len(sent) <= THREADS  # else the barrier would wait for a thread never started
        barrier = threading.Barrier(len(sent))

        def send(items: tuple[Item, ...], key: str | None, via: int) -> testing.Result:
            barrier.wait(timeout=10)
            return self.post(via, body(items), key)

        futures = [self.threads.submit(send, *request) for request in sent]
        results = [future.result(timeout=30) for future in futures]
        acknowledged = []
        for (items, key, _), result in zip(sent, results, strict=True):
            if key is None:
                assert result.status_code == 204, result.text
                self.model.apply(items)
        for key in keys:
            group = [(items, r) for (items, k, _), r in zip(sent, results, strict=True) if k == key]
            if not group:
                continue
            winners = {effect(items) for items, r in group if r.status_code == 204}
            assert len(winners) == 1, [r.status_code for _, r in group]
            (winner,) = winners
            for items, result in group:
                if result.status_code == 409:
                    assert_problem(result, 409)
                    assert "retry-after" in result.headers
                elif effect(items) == winner:
                    assert result.status_code == 204, result.text
                else:
                    assert_problem(result, 422, "urn:sensorstats:problem:idempotency-key-reused")
            items = next(items for items, r in group if r.status_code == 204)
            self.model.apply(items)
            self.model.keys[key] = winner
            acknowledged.append(KeyedRequest(key, items))
        return multiple(*acknowledged)

    # --- what every instance must answer after every step ---------------------------

    @invariant()
    def every_instance_answers_as_the_model(self) -> None:
        def read(client: testing.TestClient, sensor: str) -> testing.Result:
            return client.simulate_get(path(sensor))

        pairs = [(client, sensor) for client in self.clients for sensor in SENSORS]
        if self.concurrent_reads:  # on etcd, concurrent GETs share read rounds
            results = list(self.threads.map(lambda pair: read(*pair), pairs))
        else:
            results = [read(*pair) for pair in pairs]
        for (_, sensor), result in zip(pairs, results, strict=True):
            assert result.status_code == 200, result.text
            expected = self.model.expected(sensor)
            answer = result.json
            assert answer == expected, sensor
            # Bit for bit: == cannot tell 0.0 from -0.0.
            assert isinstance(answer["avg"], float)
            assert answer["avg"].hex() == expected["avg"].hex(), sensor


# --- the two variants -----------------------------------------------------------------


def run(factory: Callable[[], ServiceMachine], **overrides: Any) -> None:
    run_state_machine_as_test(
        factory,
        settings=settings(
            settings.default,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            **overrides,
        ),
    )


def test_the_embedded_store_answers_as_the_model() -> None:
    # A fifth of the profile's examples (20 locally, 60 in CI): each is 25
    # steps of several requests, and every step reads every sensor.
    run(
        lambda: ServiceMachine([MemoryStore()], concurrent_reads=False),
        max_examples=settings.default.max_examples // 5,
        stateful_step_count=25,
    )


def test_instances_on_etcd_that_split_differently_answer_as_the_model(etcd: EtcdProcess) -> None:
    """Four stores on one prefix, as four instances are; a fresh prefix per example.

    Each has its own `etcd_max_txn_ops` (`ETCD_MAX_TXN_OPS`), so a keyed
    replay through another instance meets markers written by attempts split
    otherwise, while small posts still share transactions.
    """

    def machine() -> ServiceMachine:
        prefix = f"/model-{secrets.token_hex(6)}/"
        stores = [
            EtcdStore.from_settings(etcd_settings(etcd, prefix=prefix, etcd_max_txn_ops=ops))
            for ops in ETCD_MAX_TXN_OPS
        ]
        return ServiceMachine(stores, concurrent_reads=True)

    # The etcd variant is slower: a modest number of examples in every profile.
    run(machine, max_examples=examples(15), stateful_step_count=20)
