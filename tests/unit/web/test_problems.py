"""Errors to RFC 9457 problem documents: each known error type, falcon's own, and the rest.

A bare falcon app with `problems.register` and one route that raises the
error under test, so each mapping is checked on its own, apart from the routes.
"""

from __future__ import annotations

import json

import falcon
import pytest
from falcon import testing

from sensorstats.core.errors import (
    FieldError,
    InvalidBatch,
    InvalidSensorId,
    PayloadTooLarge,
    StoreFull,
    StoreUnavailable,
)
from sensorstats.web import problems
from sensorstats.web.problems import PROBLEM_JSON, Problem


class Raising:
    """A resource whose GET raises the error it was given."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise self.error


def raising(error: Exception) -> testing.Result:
    app = falcon.App()
    problems.register(app)
    app.add_route("/raise", Raising(error))
    return testing.TestClient(app).simulate_get("/raise")


@pytest.mark.parametrize(
    ("error", "status", "type_uri", "title", "detail"),
    [
        pytest.param(
            InvalidBatch("the body is not valid JSON"),
            400,
            "urn:sensorstats:problem:invalid-batch",
            "Invalid batch",
            "the body is not valid JSON",
            id="invalid-batch",
        ),
        pytest.param(
            PayloadTooLarge("the batch has 3 measurements; the limit is 2"),
            413,
            "urn:sensorstats:problem:payload-too-large",
            "Payload too large",
            "the batch has 3 measurements; the limit is 2",
            id="payload-too-large",
        ),
        pytest.param(
            InvalidSensorId("the sensor id must not be empty"),
            400,
            "urn:sensorstats:problem:invalid-sensor-id",
            "Invalid sensor id",
            "the sensor id must not be empty",
            id="invalid-sensor-id",
        ),
        pytest.param(
            StoreUnavailable("etcd: no leader"),
            503,
            "urn:sensorstats:problem:store-unavailable",
            "Store unavailable",
            "etcd: no leader",
            id="store-unavailable",
        ),
    ],
)
def test_known_errors_become_their_problem_documents(error, status, type_uri, title, detail):
    result = raising(error)
    assert result.status_code == status
    assert result.headers["content-type"] == PROBLEM_JSON
    assert result.json == {"type": type_uri, "title": title, "status": status, "detail": detail}


def test_an_invalid_batch_lists_its_field_errors():
    errors = (
        FieldError(1, "timestamp", "must be a string"),
        FieldError(2, None, "must be an object"),
    )
    result = raising(InvalidBatch("2 invalid field(s); nothing was stored", errors))
    assert result.json["errors"] == [
        {"index": 1, "field": "timestamp", "message": "must be a string"},
        {"index": 2, "field": None, "message": "must be an object"},
    ]


def test_an_unavailable_store_says_when_to_retry():
    assert raising(StoreUnavailable("compacting", retry_after=7)).headers["retry-after"] == "7"
    assert raising(StoreUnavailable("no leader")).headers["retry-after"] == "1"


def test_an_unexpected_error_is_a_bare_500_and_logged(caplog):
    result = raising(KeyError("password=hunter2"))
    assert result.status_code == 500
    assert result.headers["content-type"] == PROBLEM_JSON
    assert result.json["title"] == "Internal Server Error"
    assert result.json["status"] == 500
    assert "hunter2" not in result.text
    assert "KeyError" not in result.text
    (record,) = [r for r in caplog.records if r.name == "sensorstats.web.problems"]
    assert record.exc_info[0] is KeyError
    assert "GET /raise" in record.getMessage()


@pytest.mark.parametrize(
    ("error", "status", "title"),
    [
        pytest.param(falcon.HTTPNotFound(), 404, "Not Found", id="not-found"),
        pytest.param(falcon.HTTPBadRequest(), 400, "Bad Request", id="bad-request"),
        pytest.param(falcon.HTTPError(falcon.HTTP_429), 429, "Too Many Requests", id="429"),
        pytest.param(falcon.HTTPBadRequest(title="Custom"), 400, "Custom", id="own-title"),
    ],
)
def test_falcons_errors_are_problem_documents_with_plain_titles(error, status, title):
    result = raising(error)
    assert result.status_code == status
    assert result.headers["content-type"] == PROBLEM_JSON
    assert result.json["type"] == "about:blank"
    assert result.json["title"] == title  # "Not Found", not "404 Not Found"
    assert result.json["status"] == status


def test_falcons_descriptions_are_the_detail():
    result = raising(falcon.HTTPInvalidHeader("must be an integer", "Content-Length"))
    assert result.status_code == 400
    assert "Content-Length" in result.json["detail"]


def test_a_problem_carries_its_type_headers_and_extensions():
    problem = Problem(
        falcon.HTTP_409,
        type_uri="urn:example:conflict",
        title="Conflict",
        detail="température déjà prise",
        headers={"X-Reason": "test"},
        extensions={"sensor": "温度", "attempts": 3},
    )
    result = raising(problem)
    assert result.status_code == 409
    assert result.headers["x-reason"] == "test"
    assert result.json == {
        "type": "urn:example:conflict",
        "title": "Conflict",
        "status": 409,
        "detail": "température déjà prise",
        "sensor": "温度",
        "attempts": 3,
    }


def test_a_full_store_is_507_naming_its_limit():
    result = raising(StoreFull("the store keeps at most 50000 sensors", limit=50_000))
    assert result.status_code == 507
    assert result.headers["content-type"] == PROBLEM_JSON
    assert result.json == {
        "type": "urn:sensorstats:problem:store-full",
        "title": "Store full",
        "status": 507,
        "detail": "the store keeps at most 50000 sensors",
        "limit": 50_000,
    }


def test_a_problem_document_outside_falcon_has_the_same_members():
    body = problems.document(431, "too long", extensions={"limit": 16384})
    assert json.loads(body) == {
        "type": "about:blank",
        "title": "Request Header Fields Too Large",
        "status": 431,
        "detail": "too long",
        "limit": 16384,
    }
