"""Idempotency-Key over HTTP, on the embedded store (the etcd store: test_etcd_idempotency)."""

from __future__ import annotations

import json

import pytest
from falcon import testing

from sensorstats.settings import Settings
from sensorstats.store.memory import MemoryStore
from sensorstats.web.app import create_app
from tests.unit.web.test_app import SAMPLE, assert_problem, measurement


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client_on(store: MemoryStore) -> testing.TestClient:
    return testing.TestClient(create_app(Settings(), store))


def post(client: testing.TestClient, batch: object, key: str | None) -> testing.Result:
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.simulate_post("/data", body=json.dumps(batch), headers=headers)


def count(client: testing.TestClient, sensor: str = "abc") -> int:
    return int(client.simulate_get(f"/statistics/{sensor}").json["count"])


@pytest.fixture
def client() -> testing.TestClient:
    return client_on(MemoryStore())


def test_a_replay_with_the_same_key_counts_once(client: testing.TestClient) -> None:
    for _ in range(3):
        assert post(client, SAMPLE, '"order-1"').status_code == 204
    assert count(client) == 1


def test_a_quoted_and_a_bare_key_are_the_same_key(client: testing.TestClient) -> None:
    assert post(client, SAMPLE, '"order-1"').status_code == 204
    assert post(client, SAMPLE, "order-1").status_code == 204
    assert count(client) == 1


def test_layout_and_key_order_do_not_change_the_payload(client: testing.TestClient) -> None:
    assert post(client, SAMPLE, "k").status_code == 204
    reordered = '[ {"value": 3.14, "sensor": "abc",\n "timestamp": "2021-11-09T21:38:09+01:00"} ]'
    result = client.simulate_post("/data", body=reordered, headers={"Idempotency-Key": "k"})
    assert result.status_code == 204
    assert count(client) == 1


def test_the_same_key_with_another_payload_is_422_and_stores_nothing(
    client: testing.TestClient,
) -> None:
    assert post(client, SAMPLE, "k").status_code == 204
    other = [measurement("abc", 1), measurement("new", 2)]
    document = assert_problem(post(client, other, "k"), 422)
    assert document["type"] == "urn:sensorstats:problem:idempotency-key-reused"
    assert "different payload" in document["detail"]
    assert count(client) == 1
    assert count(client, "new") == 0


def test_without_a_key_every_post_counts(client: testing.TestClient) -> None:
    for _ in range(3):
        assert post(client, SAMPLE, None).status_code == 204
    assert count(client) == 3


@pytest.mark.parametrize(
    "header",
    ['""', "two words", '"unterminated', "x" * 256, "caf\u00e9".encode().decode("latin-1")],
)
def test_an_invalid_key_is_400_and_stores_nothing(client: testing.TestClient, header: str) -> None:
    document = assert_problem(post(client, SAMPLE, header), 400)
    assert document["type"] == "urn:sensorstats:problem:invalid-idempotency-key"
    assert count(client) == 0


def test_a_key_is_forgotten_after_the_window() -> None:
    clock = Clock()
    client = client_on(MemoryStore(idempotency_ttl=60, clock=clock))
    assert post(client, SAMPLE, "k").status_code == 204
    clock.now += 59
    assert post(client, SAMPLE, "k").status_code == 204
    assert count(client) == 1
    clock.now += 2
    assert post(client, SAMPLE, "k").status_code == 204  # a new request now
    assert count(client) == 2


def test_remembered_keys_are_bounded_and_unkeyed_posts_go_on() -> None:
    clock = Clock()
    client = client_on(MemoryStore(idempotency_ttl=60, max_keys=2, clock=clock))
    assert post(client, SAMPLE, "k1").status_code == 204
    assert post(client, SAMPLE, "k2").status_code == 204
    document = assert_problem(post(client, SAMPLE, "k3"), 507)
    assert document["limit"] == 2
    assert post(client, SAMPLE, "k1").status_code == 204  # a replay still answers
    assert post(client, SAMPLE, None).status_code == 204
    assert count(client) == 3
    clock.now += 61  # both expire: room again
    assert post(client, SAMPLE, "k3").status_code == 204
    assert count(client) == 4
