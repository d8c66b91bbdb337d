"""Which requests have their store read started on the event loop, and for which sensor."""

from __future__ import annotations

from typing import Any

import pytest

from sensorstats.app import read_ahead_route
from sensorstats.batch import Limits
from sensorstats.read_ahead import ReadAhead, Ready
from sensorstats.resources import StatisticsReadAhead
from sensorstats.settings import load_settings


class Recorder:
    """A store that records the reads asked ahead of it; `reads` False: it declines."""

    def __init__(self, reads: bool = True) -> None:
        self.sensors: list[str] = []
        self._reads = reads

    def read_ahead(self, sensor: str, ready: Ready) -> ReadAhead[Any] | None:
        self.sensors.append(sensor)
        return ReadAhead(sensor, deadline=0.0, ready=ready) if self._reads else None


def route(store: Recorder) -> StatisticsReadAhead:
    return StatisticsReadAhead(store, Limits(max_batch=100, max_sensor_id=16))  # type: ignore[arg-type]


def ignore(read: ReadAhead[Any]) -> None:
    pass


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
    assert route(store).start(method, path, ignore)
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
    assert not route(store).start(method, path, ignore)
    assert store.sensors == []


def test_a_store_that_declines_leaves_the_request_to_a_worker() -> None:
    store = Recorder(reads=False)
    assert not route(store).start("GET", "/statistics/s1", ignore)
    assert store.sensors == ["s1"]


def test_nothing_is_read_ahead_when_reads_need_a_token() -> None:
    protected = load_settings(
        [],
        {
            "SENSORSTATS_API_TOKENS": "reader:t0k3n-long-enough-to-pass",
            "SENSORSTATS_READ_REQUIRES_TOKEN": "true",
        },
    )
    assert read_ahead_route(protected, Recorder()) is None  # type: ignore[arg-type]
    assert read_ahead_route(load_settings([], {}), Recorder()) is not None  # type: ignore[arg-type]
