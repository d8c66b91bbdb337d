"""Which requests have their store call started on the event loop, and with what.

`EarlyCalls` prepares a request as the resources do and asks the app's
middleware first; the calls it starts are values the server hands on.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from sensorstats.core.batch import Limits, parse_batch
from sensorstats.core.errors import StoreUnavailable
from sensorstats.core.stats import Stats
from sensorstats.settings import load_settings
from sensorstats.store.calls import Ready, StartedCall, StartedRead, StartedWrite
from sensorstats.store.memory import MemoryStore
from sensorstats.web.app import create_web
from sensorstats.web.early import EARLY_WRITE_MAX_BYTES, EarlyCalls

LIMITS = Limits(max_batch=100, max_sensor_id=16)
MAX_BODY = 1 << 20
SECRET = "t0k3n-long-enough-to-pass"
TOKEN = f"writer:{SECRET}"
BEARER = {"AUTHORIZATION": f"Bearer {SECRET}"}


@dataclass
class Received:
    """A request as the server hands it to a route: a `ReceivedRequest`."""

    command: str
    path: str
    content: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    body_reads: int = 0

    @property
    def body_length(self) -> int:
        return len(self.content)

    def body(self) -> bytes:
        self.body_reads += 1
        return self.content


class Recorder:
    """A store that records the calls started early; `accept` False: it declines them."""

    starts_calls = True
    description = "a recorder"

    def __init__(self, accept: bool = True) -> None:
        self.sensors: list[str] = []
        self.batches: list[Mapping[str, Stats]] = []
        self._accept = accept

    def start_get(self, sensor: str, ready: Ready) -> StartedRead[Any] | None:
        self.sensors.append(sensor)
        return StartedRead(sensor, sensor, deadline=0.0, ready=ready) if self._accept else None

    def start_apply(self, deltas: Mapping[str, Stats], ready: Ready) -> StartedWrite | None:
        self.batches.append(deltas)
        return StartedWrite(deltas, deadline=0.0, ready=ready) if self._accept else None


def early(store: Recorder, max_body: int = MAX_BODY) -> EarlyCalls:
    return EarlyCalls(store, LIMITS, max_body, middleware=[])  # type: ignore[arg-type]


reads = writes = early


def ignore(call: StartedCall[Any]) -> None:
    pass


def batch(*items: tuple[str, float]) -> bytes:
    return json.dumps(
        [{"sensor": s, "timestamp": "2026-01-01T00:00:00Z", "value": v} for s, v in items]
    ).encode()


# --- reads ---------------------------------------------------------------------------


# PATH_INFO as waitress gives it: the percent-decoded path's bytes as Latin-1.
@pytest.mark.parametrize(
    ("method", "path", "sensor"),
    [
        ("GET", "/statistics/s1", "s1"),
        ("HEAD", "/statistics/s1", "s1"),
        ("GET", "/statistics/a/b", "a/b"),
        ("GET", "/statistics/caf\xc3\xa9", "café"),
    ],
)
def test_a_get_of_statistics_starts_its_read(method: str, path: str, sensor: str) -> None:
    store = Recorder()
    call = reads(store).start(Received(method, path), ignore)
    assert isinstance(call, StartedRead)
    assert call.sensor == sensor
    assert store.sensors == [sensor]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/statistics/s1"),  # only reads
        ("POST", "/data"),
        ("GET", "/healthz"),
        ("GET", "/statistics/"),  # no sensor: 404
        ("GET", "/statistics/\xff"),  # not UTF-8: 400
        ("GET", "/statistics/" + "x" * 17),  # over the id limit: 400
        ("GET", "/statistic/s1"),
    ],
)
def test_nothing_else_starts_a_read(method: str, path: str) -> None:
    store = Recorder()
    call = early(store).start(Received(method, path, batch(("s1", 1))), ignore)
    assert not isinstance(call, StartedRead)
    assert store.sensors == []


def test_a_store_that_declines_a_read_leaves_the_request_to_a_worker() -> None:
    store = Recorder(accept=False)
    assert reads(store).start(Received("GET", "/statistics/s1"), ignore) is None
    assert store.sensors == ["s1"]


# --- writes --------------------------------------------------------------------------


def test_a_valid_post_starts_its_write_as_the_resource_would_parse_it() -> None:
    store = Recorder()
    body = batch(("a", 1), ("b", 2.5), ("a", 3))
    assert isinstance(writes(store).start(Received("POST", "/data", body), ignore), StartedWrite)
    assert store.batches == [parse_batch(body, LIMITS)]


@pytest.mark.parametrize(
    "request_",
    [
        # Refused by the resource before its store call: a worker answers the error.
        Received("POST", "/data", b"[{"),
        Received("POST", "/data", b'[{"sensor": "a", "timestamp": "x", "value": 1}]'),
        Received("POST", "/data", batch(("a", float("nan")))),
        Received("POST", "/data", batch(*[("a", 1)] * 101)),  # over max_batch: 413
        Received("POST", "/data", batch(("x" * 17, 1))),  # sensor id too long
        # Nothing to write.
        Received("POST", "/data", b"[]"),
        # With a key: idempotency is settled by the worker, with the key's marker.
        Received("POST", "/data", batch(("a", 1)), {"IDEMPOTENCY_KEY": "k-1"}),
        # Other routes and methods.
        Received("POST", "/data/", batch(("a", 1))),
        Received("PUT", "/data", batch(("a", 1))),
        Received("POST", "/statistics/a", batch(("a", 1))),
    ],
    ids=lambda r: f"{r.command} {r.path} {r.content[:30]!r} {dict(r.headers)}",
)
def test_a_post_the_resource_would_refuse_or_treat_apart_starts_nothing(
    request_: Received,
) -> None:
    store = Recorder()
    assert writes(store).start(request_, ignore) is None
    assert store.batches == []


def test_a_body_over_the_early_write_size_is_left_unread_for_a_worker() -> None:
    store = Recorder()
    padding = " " * EARLY_WRITE_MAX_BYTES
    large = Received("POST", "/data", batch(("a", 1)) + padding.encode())
    assert writes(store).start(large, ignore) is None
    assert large.body_reads == 0
    assert store.batches == []


def test_a_body_over_a_smaller_body_limit_is_left_to_the_resource_413() -> None:
    store = Recorder()
    body = batch(("a", 1))
    small = writes(store, max_body=len(body) - 1)
    assert small.start(Received("POST", "/data", body), ignore) is None
    assert store.batches == []


def test_a_store_that_declines_a_write_leaves_the_request_to_a_worker() -> None:
    store = Recorder(accept=False)
    assert writes(store).start(Received("POST", "/data", batch(("a", 1))), ignore) is None
    assert len(store.batches) == 1


def test_one_early_calls_starts_one_call_for_each_kind() -> None:
    store = Recorder()
    both = early(store)
    assert both.start(Received("GET", "/statistics/s1"), ignore) is not None
    assert both.start(Received("POST", "/data", batch(("a", 1))), ignore) is not None
    assert both.start(Received("DELETE", "/statistics/s1"), ignore) is None
    assert store.sensors == ["s1"]
    assert len(store.batches) == 1


def test_a_middleware_that_cannot_say_admits_nothing_early() -> None:
    store = Recorder()
    calls = EarlyCalls(store, LIMITS, MAX_BODY, middleware=[object()])  # type: ignore[arg-type]
    assert not calls.enabled
    assert calls.start(Received("POST", "/data", batch(("a", 1))), ignore) is None
    assert store.batches == []


# --- a started call --------------------------------------------------------------------


def test_a_started_call_holds_its_outcome_once_settled() -> None:
    settled: list[StartedCall[Any]] = []
    read: StartedRead[int] = StartedRead("s", "k", 0.0, settled.append, convert=len)
    with pytest.raises(RuntimeError, match="before it settled"):
        read.result()
    read.settle("abc", None)
    assert settled == [read]
    assert read.result() == 3  # converted
    failed = StartedWrite({}, 0.0, settled.append)
    failed.settle(None, StoreUnavailable("etcd is away"))
    assert isinstance(failed.error, StoreUnavailable)
    with pytest.raises(StoreUnavailable):
        failed.result()


# --- what the app starts early, by configuration and credentials -------------------------


def kinds(environment: dict[str, str], headers: Mapping[str, str] | None = None) -> set[str]:
    """Which kinds of calls the app starts early under `environment`, for `headers`."""
    store = Recorder()
    web = create_web(load_settings([], environment), store)  # type: ignore[arg-type]
    if web.early is not None:
        web.early.start(Received("GET", "/statistics/s1", headers=headers or {}), ignore)
        web.early.start(Received("POST", "/data", batch(("a", 1)), headers or {}), ignore)
    return {kind for kind, calls in (("read", store.sensors), ("write", store.batches)) if calls}


def test_without_tokens_reads_and_writes_start_early() -> None:
    assert kinds({}) == {"read", "write"}


def test_with_tokens_a_write_starts_early_only_with_a_valid_token() -> None:
    tokens = {"SENSORSTATS_API_TOKENS": TOKEN}
    assert kinds(tokens, BEARER) == {"read", "write"}
    assert kinds(tokens) == {"read"}  # no token: the app answers 401, nothing is written
    assert kinds(tokens, {"AUTHORIZATION": "Bearer not-the-token-at-all"}) == {"read"}
    assert kinds(tokens, {"AUTHORIZATION": f"Basic {SECRET}"}) == {"read"}


def test_when_reads_need_a_token_they_start_early_only_with_one() -> None:
    protected = {"SENSORSTATS_API_TOKENS": TOKEN, "SENSORSTATS_READ_REQUIRES_TOKEN": "true"}
    assert kinds(protected) == set()
    assert kinds(protected, BEARER) == {"read", "write"}


def test_a_store_that_never_starts_calls_gets_none_and_no_body_is_parsed_twice() -> None:
    assert create_web(load_settings([], {}), MemoryStore(max_sensors=10)).early is None


# --- compressed bodies: prepared on the loop exactly as a worker would ----------------


def test_a_compressed_post_starts_its_write_with_the_batch_decompressed() -> None:
    store = Recorder()
    body = batch(("a", 1), ("b", 2.5))
    for coding, compressed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        request = Received("POST", "/data", compressed, {"CONTENT_ENCODING": coding})
        assert isinstance(writes(store).start(request, ignore), StartedWrite)
    assert store.batches == [parse_batch(body, LIMITS)] * 2


def test_a_compressed_post_inflating_past_the_early_size_is_left_to_a_worker() -> None:
    store = Recorder()
    # Small on the wire, over the early write size once inflated: the event loop
    # inflates no more than that size and one byte, then leaves it.
    body = batch(("a", 1)) + b" " * EARLY_WRITE_MAX_BYTES
    request = Received("POST", "/data", gzip.compress(body), {"CONTENT_ENCODING": "gzip"})
    assert request.body_length < EARLY_WRITE_MAX_BYTES
    assert writes(store).start(request, ignore) is None
    assert store.batches == []


@pytest.mark.parametrize(
    "headers",
    [
        {"CONTENT_ENCODING": "br"},
        {"CONTENT_ENCODING": "gzip"},  # not gzip: corrupt
        {"CONTENT_TYPE": "application/xml"},
    ],
)
def test_a_post_whose_body_the_resource_would_refuse_starts_nothing(
    headers: dict[str, str],
) -> None:
    store = Recorder()
    assert writes(store).start(Received("POST", "/data", batch(("a", 1)), headers), ignore) is None
    assert store.batches == []
