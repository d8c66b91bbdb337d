"""Which requests have their store call started on the event loop, and with what."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from sensorstats.core.batch import Limits, parse_batch
from sensorstats.core.stats import Stats
from sensorstats.settings import load_settings
from sensorstats.store.ahead import Ahead, ReadAhead, Ready, WriteAhead
from sensorstats.store.memory import MemoryStore
from sensorstats.web.app import ahead_route
from sensorstats.web.resources import (
    WRITE_AHEAD_MAX_BYTES,
    AheadRoutes,
    DataWriteAhead,
    StatisticsReadAhead,
)

LIMITS = Limits(max_batch=100, max_sensor_id=16)
MAX_BODY = 1 << 20
TOKEN = "writer:t0k3n-long-enough-to-pass"


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
    """A store that records the calls asked ahead of it; `accept` False: it declines them."""

    calls_ahead = True

    def __init__(self, accept: bool = True) -> None:
        self.sensors: list[str] = []
        self.batches: list[Mapping[str, Stats]] = []
        self._accept = accept

    def read_ahead(self, sensor: str, ready: Ready) -> ReadAhead[Any] | None:
        self.sensors.append(sensor)
        return ReadAhead(sensor, deadline=0.0, ready=ready) if self._accept else None

    def write_ahead(self, deltas: Mapping[str, Stats], ready: Ready) -> WriteAhead | None:
        self.batches.append(deltas)
        return WriteAhead(deltas, deadline=0.0, ready=ready) if self._accept else None


def reads(store: Recorder) -> StatisticsReadAhead:
    return StatisticsReadAhead(store, LIMITS)  # type: ignore[arg-type]


def writes(store: Recorder, max_body: int = MAX_BODY) -> DataWriteAhead:
    return DataWriteAhead(store, LIMITS, max_body)  # type: ignore[arg-type]


def ignore(call: Ahead[Any]) -> None:
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
def test_a_get_of_statistics_reads_its_sensor_ahead(method: str, path: str, sensor: str) -> None:
    store = Recorder()
    assert reads(store).start(Received(method, path), ignore)
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
def test_nothing_else_is_read_ahead(method: str, path: str) -> None:
    store = Recorder()
    assert not reads(store).start(Received(method, path, batch(("s1", 1))), ignore)
    assert store.sensors == []


def test_a_store_that_declines_a_read_leaves_the_request_to_a_worker() -> None:
    store = Recorder(accept=False)
    assert not reads(store).start(Received("GET", "/statistics/s1"), ignore)
    assert store.sensors == ["s1"]


# --- writes --------------------------------------------------------------------------


def test_a_valid_post_is_written_ahead_as_the_resource_would_parse_it() -> None:
    store = Recorder()
    body = batch(("a", 1), ("b", 2.5), ("a", 3))
    assert writes(store).start(Received("POST", "/data", body), ignore)
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
def test_a_post_the_resource_would_refuse_or_treat_apart_is_not_written_ahead(
    request_: Received,
) -> None:
    store = Recorder()
    assert not writes(store).start(request_, ignore)
    assert store.batches == []


def test_a_body_over_the_write_ahead_size_is_left_unread_for_a_worker() -> None:
    store = Recorder()
    padding = " " * WRITE_AHEAD_MAX_BYTES
    large = Received("POST", "/data", batch(("a", 1)) + padding.encode())
    assert not writes(store).start(large, ignore)
    assert large.body_reads == 0
    assert store.batches == []


def test_a_body_over_a_smaller_body_limit_is_left_to_the_resource_413() -> None:
    store = Recorder()
    body = batch(("a", 1))
    assert not writes(store, max_body=len(body) - 1).start(Received("POST", "/data", body), ignore)
    assert store.batches == []


def test_a_store_that_declines_a_write_leaves_the_request_to_a_worker() -> None:
    store = Recorder(accept=False)
    assert not writes(store).start(Received("POST", "/data", batch(("a", 1))), ignore)
    assert len(store.batches) == 1


def test_the_routes_together_start_one_call_for_each_kind() -> None:
    store = Recorder()
    both = AheadRoutes(reads(store), writes(store))
    assert both.start(Received("GET", "/statistics/s1"), ignore)
    assert both.start(Received("POST", "/data", batch(("a", 1))), ignore)
    assert not both.start(Received("DELETE", "/statistics/s1"), ignore)
    assert store.sensors == ["s1"]
    assert len(store.batches) == 1


# --- what the app starts ahead, by configuration --------------------------------------


def kinds(environment: dict[str, str]) -> set[str]:
    """Which kinds of calls the app's route starts ahead under `environment`."""
    store = Recorder()
    route = ahead_route(load_settings([], environment), store)  # type: ignore[arg-type]
    if route is not None:
        route.start(Received("GET", "/statistics/s1"), ignore)
        route.start(Received("POST", "/data", batch(("a", 1))), ignore)
    return {kind for kind, calls in (("read", store.sensors), ("write", store.batches)) if calls}


def test_without_tokens_reads_and_writes_are_started_ahead() -> None:
    assert kinds({}) == {"read", "write"}


def test_with_tokens_no_write_is_started_ahead_as_an_anonymous_client_must_not_write() -> None:
    assert kinds({"SENSORSTATS_API_TOKENS": TOKEN}) == {"read"}


def test_when_reads_need_a_token_nothing_is_started_ahead() -> None:
    protected = {"SENSORSTATS_API_TOKENS": TOKEN, "SENSORSTATS_READ_REQUIRES_TOKEN": "true"}
    assert kinds(protected) == set()


def test_a_store_that_never_calls_ahead_gets_no_route_and_no_body_is_parsed_twice() -> None:
    assert ahead_route(load_settings([], {}), MemoryStore(max_sensors=10)) is None
