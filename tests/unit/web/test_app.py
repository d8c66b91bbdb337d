"""The service as a client sees it: `create_app` with injected stores, through falcon.testing.

Failures of the store are injected as small fake stores implementing the
`Store` protocol, never by patching.
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from collections.abc import Mapping
from urllib.parse import quote

import pytest
from falcon import testing

from sensorstats.core.body import MEDIA_TYPE_RULES
from sensorstats.core.errors import StoreUnavailable
from sensorstats.core.idempotency import IdempotencyKey
from sensorstats.core.stats import Stats
from sensorstats.ops.readiness import Readiness
from sensorstats.settings import Settings
from sensorstats.store.memory import MemoryStore
from sensorstats.web.app import create_app
from tests.unit.core.test_batch import AWKWARD_SENSOR_IDS, BAD_DOCUMENTS, BAD_FIELDS, GOOD, body

SAMPLE = [{"sensor": "abc", "timestamp": "2021-11-09T21:38:09+01:00", "value": 3.14}]
NOTHING = {"last_measurement": None, "count": 0, "avg": 0.0}
PROBLEM_JSON = "application/problem+json"


def path(sensor: str) -> str:
    """The statistics URL of `sensor`, percent-encoded as a careful client would."""
    return "/statistics/" + quote(sensor, safe="")


def measurement(sensor: str, value: float | int, timestamp: str = GOOD["timestamp"]) -> dict:
    return {"sensor": sensor, "timestamp": timestamp, "value": value}


class FailingStore:
    """A store every call of which raises `error`."""

    description = "a store that always fails"
    starts_calls = False

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls: list[str] = []

    def apply(self, deltas: Mapping[str, Stats], key: IdempotencyKey | None = None) -> None:
        self.calls.append("apply")
        raise self.error

    def get(self, sensor: str) -> Stats:
        self.calls.append("get")
        raise self.error

    def delete(self, sensor: str) -> None:
        self.calls.append("delete")
        raise self.error

    def check(self) -> None:
        self.calls.append("check")
        raise self.error

    def close(self) -> None:
        return None


@pytest.fixture
def client() -> testing.TestClient:
    return testing.TestClient(create_app(Settings(), MemoryStore()))


def client_with(store: object = None, **settings: object) -> testing.TestClient:
    return testing.TestClient(create_app(Settings(**settings), store or MemoryStore()))


def assert_problem(result: testing.Result, status: int) -> dict:
    """`result` is an RFC 9457 document for `status` that names nothing internal."""
    assert result.status_code == status
    assert result.headers["content-type"] == PROBLEM_JSON
    document = result.json
    assert document["status"] == status
    assert isinstance(document["type"], str)
    assert document["type"]
    assert isinstance(document["title"], str)
    assert document["title"]
    assert isinstance(document.get("detail", "?"), str)
    assert document.get("detail", "?")
    assert "Traceback" not in result.text
    return document


# --- the exercise's samples and the basic routes -----------------------------


def test_a_posted_measurement_is_served(client):
    result = client.simulate_post("/data", json=SAMPLE)
    assert result.status_code == 204
    assert result.text == ""
    result = client.simulate_get("/statistics/abc")
    assert result.status_code == 200
    assert result.headers["content-type"] == "application/json"
    assert result.json == {"last_measurement": "2021-11-09T21:38:09+01:00", "count": 1, "avg": 3.14}


def test_an_unknown_sensor_has_empty_statistics(client):
    result = client.simulate_get("/statistics/never-seen")
    assert result.status_code == 200
    assert result.json == NOTHING
    assert isinstance(result.json["avg"], float)


def test_statistics_accumulate_over_requests(client):
    client.simulate_post("/data", json=[measurement("abc", 1, "2021-11-09T06:00:00+00:00")])
    client.simulate_post("/data", json=[measurement("abc", 2, "2021-11-09T10:00:00+05:00")])
    client.simulate_post("/data", json=[measurement("abc", 6, "2021-11-09T06:00:00Z")])
    statistics = client.simulate_get("/statistics/abc").json
    assert statistics == {"last_measurement": "2021-11-09T06:00:00Z", "count": 3, "avg": 3.0}
    assert isinstance(statistics["avg"], float)  # "3.0", not "3", though all values were ints


def test_the_average_is_exact(client):
    client.simulate_post("/data", json=[measurement("abc", v) for v in (0.1, 0.2, 0.3)])
    client.simulate_post("/data", json=[measurement("big", 1.7e308)] * 2)
    client.simulate_post("/data", json=[measurement("int", 2**1023)] * 2)
    assert client.simulate_get("/statistics/abc").json["avg"] == 0.2
    assert client.simulate_get("/statistics/big").json["avg"] == 1.7e308
    assert client.simulate_get("/statistics/int").json["avg"] == 2.0**1023


def test_delete_clears_one_sensor(client):
    client.simulate_post("/data", json=[measurement("abc", 1), measurement("abd", 2)])
    result = client.simulate_delete("/statistics/abc")
    assert result.status_code == 204
    assert result.text == ""
    assert client.simulate_get("/statistics/abc").json == NOTHING
    assert client.simulate_get("/statistics/abd").json["count"] == 1
    client.simulate_post("/data", json=SAMPLE)
    assert client.simulate_get("/statistics/abc").json["count"] == 1


def test_delete_is_idempotent(client):
    assert client.simulate_delete("/statistics/never-seen").status_code == 204
    assert client.simulate_delete("/statistics/never-seen").status_code == 204


def test_an_empty_batch_stores_nothing(client):
    assert client.simulate_post("/data", json=[]).status_code == 204
    assert client.simulate_get("/statistics/abc").json == NOTHING


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "application/json",
        "Application/JSON; Charset=UTF-8",
        'application/json; charset="utf-8"',
        "application/vnd.sensors.batch+json",
        "application/x-www-form-urlencoded",  # what `curl -d` sends
    ],
)
def test_a_body_labelled_as_json_or_as_curl_labels_it_is_read(client, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    result = client.simulate_post("/data", body=json.dumps(SAMPLE), headers=headers)
    assert result.status_code == 204
    assert client.simulate_get("/statistics/abc").json["count"] == 1


@pytest.mark.parametrize(
    "content_type",
    [
        "application/xml",
        "text/plain",
        "text/json",
        "application/octet-stream",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
        "application/json-seq",
        "application/+json",
        "json",
    ],
)
def test_a_body_labelled_as_anything_else_is_415_naming_what_is_accepted(client, content_type):
    result = client.simulate_post(
        "/data", body=json.dumps(SAMPLE), headers={"Content-Type": content_type}
    )
    assert result.status_code == 415
    problem = result.json
    assert problem["type"] == "urn:sensorstats:problem:unsupported-media-type"
    assert content_type in problem["detail"]
    assert MEDIA_TYPE_RULES in problem["detail"]
    assert client.simulate_get("/statistics/abc").json["count"] == 0


# --- sensor ids in URLs ----------------------------------------------------------


@pytest.mark.parametrize("sensor", AWKWARD_SENSOR_IDS)
def test_awkward_sensor_ids_round_trip_through_the_url(client, sensor):
    assert client.simulate_post("/data", json=[measurement(sensor, 7)]).status_code == 204
    assert client.simulate_get(path(sensor)).json == {
        "last_measurement": GOOD["timestamp"],
        "count": 1,
        "avg": 7.0,
    }
    assert client.simulate_delete(path(sensor)).status_code == 204
    assert client.simulate_get(path(sensor)).json == NOTHING


def test_the_id_is_the_rest_of_the_path(client):
    client.simulate_post("/data", json=[measurement("a/b", 1)])
    assert client.simulate_get("/statistics/a/b").json["count"] == 1
    assert client.simulate_get("/statistics/a%2Fb").json["count"] == 1
    assert client.simulate_get("/statistics/a%2fb").json["count"] == 1
    client.simulate_delete("/statistics/a%2Fb")
    assert client.simulate_get("/statistics/a/b").json == NOTHING


def test_ids_that_are_prefixes_of_each_other_stay_separate(client):
    sensors = ["a", "a/", "a/b", "ab", "a%2Fb", "A", "é", "e\u0301"]
    for count, sensor in enumerate(sensors, start=1):
        client.simulate_post("/data", json=[measurement(sensor, count)] * count)
    for count, sensor in enumerate(sensors, start=1):
        assert client.simulate_get(path(sensor)).json["count"] == count, sensor
    client.simulate_delete(path("a"))
    assert client.simulate_get(path("a")).json == NOTHING
    assert client.simulate_get(path("a/")).json["count"] == 2


def test_an_empty_id_is_not_found(client):
    assert_problem(client.simulate_get("/statistics/"), 404)
    assert_problem(client.simulate_delete("/statistics/"), 404)
    assert_problem(client.simulate_get("/statistics"), 404)


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize(
    "url",
    [
        pytest.param("/statistics/%01", id="control-character"),
        pytest.param("/statistics/a%00b", id="nul"),
        pytest.param("/statistics/a%0Ab", id="newline"),
        pytest.param("/statistics/%7F", id="del"),
        pytest.param("/statistics/" + "x" * 257, id="257-chars"),
    ],
)
def test_ids_no_measurement_could_carry_are_rejected(client, method, url):
    assert_problem(client.simulate_request(method, url), 400)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\xff", id="invalid-byte"),
        pytest.param(b"\xed\xa0\x80", id="encoded-surrogate"),
        pytest.param(b"a\xc3", id="truncated"),
    ],
)
def test_ids_that_are_not_utf_8_are_rejected(client, raw):
    # falcon.testing repairs invalid UTF-8 in the path it is given; waitress passes
    # the percent-decoded bytes on as they came (PEP 3333: latin-1), so set them so.
    environ = {"PATH_INFO": "/statistics/" + raw.decode("latin-1")}
    assert_problem(client.simulate_get("/", extras=environ), 400)
    assert_problem(client.simulate_delete("/", extras=environ), 400)


def test_a_literal_replacement_character_is_a_legal_id(client):
    client.simulate_post("/data", json=[measurement("x\ufffd", 1)])
    environ = {"PATH_INFO": "/statistics/x" + "\ufffd".encode().decode("latin-1")}
    assert client.simulate_get("/", extras=environ).json["count"] == 1


def test_the_id_length_limit_is_configurable():
    client = client_with(max_sensor_id=5)
    assert client.simulate_post("/data", json=[measurement("12345", 1)]).status_code == 204
    assert client.simulate_get("/statistics/12345").json["count"] == 1
    assert_problem(client.simulate_get("/statistics/123456"), 400)
    assert_problem(client.simulate_post("/data", json=[measurement("123456", 1)]), 400)


def test_256_characters_is_the_default_limit(client):
    ok, too_long = "x" * 256, "x" * 257
    assert client.simulate_post("/data", json=[measurement(ok, 1)]).status_code == 204
    assert client.simulate_get(path(ok)).json["count"] == 1
    document = assert_problem(client.simulate_post("/data", json=[measurement(too_long, 1)]), 400)
    assert document["errors"][0]["field"] == "sensor"


# --- bad input ---------------------------------------------------------------------


@pytest.mark.parametrize("data", BAD_DOCUMENTS)
def test_a_body_that_is_not_a_batch_is_a_400_problem(client, data):
    document = assert_problem(client.simulate_post("/data", body=data), 400)
    assert document.get("errors", []) == []


@pytest.mark.parametrize(("item", "field"), BAD_FIELDS)
def test_one_bad_item_rejects_the_whole_batch(client, item, field):
    document = assert_problem(client.simulate_post("/data", body=body(GOOD, item, GOOD)), 400)
    assert [(e["index"], e["field"]) for e in document["errors"]] == [(1, field)]
    assert all(isinstance(e["message"], str) and e["message"] for e in document["errors"])
    assert client.simulate_get("/statistics/abc").json == NOTHING


def test_every_bad_item_is_listed(client):
    data = body(GOOD, {"sensor": "", "timestamp": "yesterday", "value": True}, [], GOOD)
    document = assert_problem(client.simulate_post("/data", body=data), 400)
    assert [(e["index"], e["field"]) for e in document["errors"]] == [
        (1, "sensor"),
        (1, "timestamp"),
        (1, "value"),
        (2, None),
    ]
    assert document["type"] == "urn:sensorstats:problem:invalid-batch"


def test_unknown_keys_are_ignored(client):
    item = {**GOOD, "unit": "°C", "id": 7}
    assert client.simulate_post("/data", json=[item]).status_code == 204
    assert client.simulate_get("/statistics/abc").json["count"] == 1


def test_a_batch_over_the_item_limit_is_413_and_stores_nothing():
    client = client_with(max_batch=2)
    document = assert_problem(client.simulate_post("/data", json=SAMPLE * 3), 413)
    assert "limit is 2" in document["detail"]
    assert client.simulate_get("/statistics/abc").json == NOTHING
    assert client.simulate_get("/healthz").status_code == 204
    assert client.simulate_post("/data", json=SAMPLE * 2).status_code == 204
    assert client.simulate_get("/statistics/abc").json["count"] == 2


def test_a_body_over_the_byte_limit_is_413_and_stores_nothing():
    data = json.dumps(SAMPLE).encode()
    client = client_with(max_body_bytes=len(data))
    assert_problem(client.simulate_post("/data", body=data + b" "), 413)
    assert client.simulate_get("/statistics/abc").json == NOTHING
    assert client.simulate_get("/healthz").status_code == 204
    assert client.simulate_post("/data", body=data).status_code == 204
    assert client.simulate_get("/statistics/abc").json["count"] == 1


def test_a_body_announced_as_too_large_is_refused_unread():
    client = client_with(max_body_bytes=1024)
    result = client.simulate_post("/data", body=b"[]", headers={"Content-Length": "1025"})
    assert "1025 bytes" in assert_problem(result, 413)["detail"]


def test_the_default_body_limit_is_one_mebibyte(client):
    padding = b" " * (1_048_576 - 2)
    assert client.simulate_post("/data", body=b"[" + padding + b"]").status_code == 204
    assert_problem(client.simulate_post("/data", body=b"[ " + padding + b"]"), 413)


# --- errors are problem documents ---------------------------------------------------


UNAVAILABLE = StoreUnavailable("etcd has no leader", retry_after=3)
ERRORS = [
    pytest.param(None, "GET", "/nowhere", None, 404, id="unknown-route"),
    pytest.param(None, "GET", "/", None, 404, id="root"),
    pytest.param(None, "GET", "/statistics", None, 404, id="statistics-without-slash"),
    pytest.param(None, "GET", "/statistics/", None, 404, id="empty-id"),
    pytest.param(None, "PUT", "/data", b"[]", 405, id="put-data"),
    pytest.param(None, "GET", "/data", None, 405, id="get-data"),
    pytest.param(None, "POST", "/statistics/abc", b"[]", 405, id="post-statistics"),
    pytest.param(None, "POST", "/healthz", None, 405, id="post-healthz"),
    pytest.param(None, "DELETE", "/livez", None, 405, id="delete-livez"),
    pytest.param(None, "POST", "/data", b"[", 400, id="malformed-json"),
    pytest.param(None, "POST", "/data", b'[{"value": 1}]', 400, id="invalid-item"),
    pytest.param(None, "GET", "/statistics/%01", None, 400, id="invalid-id"),
    pytest.param(None, "POST", "/data", b"[" + b" " * 1_048_576 + b"]", 413, id="too-large"),
    pytest.param(UNAVAILABLE, "GET", "/statistics/abc", None, 503, id="store-unavailable"),
    pytest.param(UNAVAILABLE, "GET", "/healthz", None, 503, id="not-ready"),
    pytest.param(RuntimeError("bug"), "GET", "/statistics/abc", None, 500, id="unexpected"),
]


@pytest.mark.parametrize(("failure", "method", "url", "data", "status"), ERRORS)
def test_every_error_is_a_problem_document(failure, method, url, data, status):
    client = client_with(FailingStore(failure) if failure else None)
    assert_problem(client.simulate_request(method, url, body=data), status)


@pytest.mark.parametrize(("failure", "method", "url", "data", "status"), ERRORS)
def test_every_error_has_a_detail(failure, method, url, data, status):
    # The HTTP contract ("Errors"): every error body has type, title, status and detail.
    client = client_with(FailingStore(failure) if failure else None)
    result = client.simulate_request(method, url, body=data)
    assert result.status_code == status
    assert set(result.json) >= {"type", "title", "status", "detail"}, result.json


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("/data", {"POST"}),
        ("/statistics/abc", {"GET", "DELETE"}),
        ("/healthz", {"GET"}),
        ("/livez", {"GET"}),
    ],
)
def test_a_wrong_method_names_the_allowed_ones(client, url, allowed):
    result = client.simulate_patch(url)
    assert result.status_code == 405
    assert result.headers["content-type"] == PROBLEM_JSON
    assert allowed <= {m.strip() for m in result.headers["allow"].split(",")}


@pytest.mark.parametrize(
    ("method", "url", "data"),
    [
        pytest.param("POST", "/data", json.dumps(SAMPLE), id="post"),
        pytest.param("GET", "/statistics/abc", None, id="get"),
        pytest.param("DELETE", "/statistics/abc", None, id="delete"),
    ],
)
def test_an_unavailable_store_is_a_503_with_retry_after(method, url, data):
    client = client_with(FailingStore(UNAVAILABLE))
    result = client.simulate_request(method, url, body=data)
    document = assert_problem(result, 503)
    assert result.headers["retry-after"] == "3"
    assert "no leader" in document["detail"]


@pytest.mark.parametrize(
    ("method", "url", "data"),
    [
        pytest.param("POST", "/data", json.dumps(SAMPLE), id="post"),
        pytest.param("GET", "/statistics/abc", None, id="get"),
        pytest.param("DELETE", "/statistics/abc", None, id="delete"),
    ],
)
def test_an_unexpected_failure_is_a_500_without_internals(method, url, data, caplog):
    client = client_with(FailingStore(RuntimeError("secret-internal-state")))
    result = client.simulate_request(method, url, body=data)
    assert_problem(result, 500)
    assert "secret" not in result.text
    assert "RuntimeError" not in result.text
    # ...but the operator gets the traceback.
    logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert logged
    assert logged[0].exc_info is not None


# --- health ------------------------------------------------------------------------


def test_healthz_is_204_while_the_store_answers(client):
    result = client.simulate_get("/healthz")
    assert result.status_code == 204
    assert result.text == ""


def test_healthz_is_503_while_the_store_is_unavailable():
    result = client_with(FailingStore(StoreUnavailable("etcd is down"))).simulate_get("/healthz")
    assert_problem(result, 503)
    assert "retry-after" in result.headers


def test_healthz_is_503_once_draining():
    store = MemoryStore()
    readiness = Readiness(store)
    client = testing.TestClient(create_app(Settings(), store, readiness))
    assert client.simulate_get("/healthz").status_code == 204
    readiness.start_draining()
    assert "draining" in assert_problem(client.simulate_get("/healthz"), 503)["detail"]
    # Draining stops new traffic from arriving, not the requests already routed here.
    assert client.simulate_post("/data", json=SAMPLE).status_code == 204


def test_livez_is_204_without_asking_the_store():
    store = FailingStore(StoreUnavailable("etcd is down"))
    result = client_with(store).simulate_get("/livez")
    assert result.status_code == 204
    assert result.text == ""
    assert store.calls == []


def test_healthz_says_why_it_is_not_ready():
    store = FailingStore(StoreUnavailable("etcd has no leader"))
    document = assert_problem(client_with(store).simulate_get("/healthz"), 503)
    assert "etcd has no leader" in document["detail"]


# --- HEAD and OPTIONS (the HTTP contract, "Methods, HEAD and OPTIONS") -----------------


@pytest.mark.parametrize(
    ("store", "url"),
    [
        pytest.param(None, "/statistics/abc", id="statistics"),
        pytest.param(None, "/statistics/%01", id="statistics-invalid-id"),
        pytest.param(None, "/healthz", id="healthz"),
        pytest.param(FailingStore(UNAVAILABLE), "/healthz", id="healthz-not-ready"),
        pytest.param(FailingStore(UNAVAILABLE), "/statistics/abc", id="store-unavailable"),
        pytest.param(None, "/livez", id="livez"),
        pytest.param(None, "/nowhere", id="unknown-route"),
    ],
)
def test_head_answers_as_get_does_without_a_body(store, url):
    client = client_with(store)
    client.simulate_post("/data", json=SAMPLE)
    same_id = {"X-Request-ID": "head-and-get"}  # else each answer has its own
    get = client.simulate_get(url, headers=same_id)
    head = client.simulate_head(url, headers=same_id)
    assert head.status_code == get.status_code
    assert head.content == b""
    assert dict(head.headers) == dict(get.headers)
    if get.content:
        assert head.headers["content-length"] == str(len(get.content))


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("/data", {"POST", "OPTIONS"}),
        ("/statistics/abc", {"GET", "HEAD", "DELETE", "OPTIONS"}),
        ("/healthz", {"GET", "HEAD", "OPTIONS"}),
        ("/livez", {"GET", "HEAD", "OPTIONS"}),
    ],
)
def test_options_is_204_with_allow_and_405_names_the_same(client, url, allowed):
    options = client.simulate_options(url)
    assert options.status_code == 204
    assert options.content == b""
    assert "content-type" not in options.headers
    assert {m.strip() for m in options.headers["allow"].split(",")} == allowed
    wrong = client.simulate_request("PATCH", url)
    assert wrong.status_code == 405
    assert {m.strip() for m in wrong.headers["allow"].split(",")} == allowed


def test_options_never_touches_the_store():
    store = FailingStore(UNAVAILABLE)
    assert client_with(store).simulate_options("/statistics/abc").status_code == 204
    assert store.calls == []


# --- the size of the embedded store ------------------------------------------------


def test_a_full_store_refuses_new_sensors_with_507_and_keeps_the_rest():
    client = client_with(MemoryStore(max_sensors=2))
    two = [measurement("a", 1), measurement("b", 2)]
    assert client.simulate_post("/data", json=two).status_code == 204
    refused = client.simulate_post("/data", json=[measurement("a", 3), measurement("c", 4)])
    document = assert_problem(refused, 507)
    assert document["type"] == "urn:sensorstats:problem:store-full"
    assert document["limit"] == 2
    assert "SENSORSTATS_MAX_SENSORS" in document["detail"]
    # Rejected whole: "a" did not count the 3.
    assert client.simulate_get(path("a")).json["count"] == 1
    assert client.simulate_get(path("c")).json["count"] == 0
    # Existing sensors keep accepting measurements...
    assert client.simulate_post("/data", json=[measurement("b", 5)]).status_code == 204
    # ...and a delete makes room.
    assert client.simulate_delete(path("a")).status_code == 204
    assert client.simulate_post("/data", json=[measurement("c", 4)]).status_code == 204
    assert client.simulate_get(path("c")).json["count"] == 1


# --- compressed bodies, methods no resource implements ------------------------------------


@pytest.mark.parametrize(
    ("coding", "compress"),
    [("gzip", gzip.compress), ("x-gzip", gzip.compress), ("deflate", zlib.compress)],
)
def test_a_compressed_batch_is_counted(client, coding, compress):
    data = compress(json.dumps(SAMPLE).encode())
    result = client.simulate_post("/data", body=data, headers={"Content-Encoding": coding})
    assert result.status_code == 204
    assert client.simulate_get("/statistics/abc").json["count"] == 1


@pytest.mark.parametrize("coding", ["br", "compress", "gzip, gzip"])
def test_an_unsupported_coding_is_415_with_accept_encoding(client, coding):
    result = client.simulate_post("/data", body=b"[]", headers={"Content-Encoding": coding})
    assert result.status_code == 415
    assert result.headers["accept-encoding"] == "gzip, deflate"
    assert result.json["type"] == "urn:sensorstats:problem:unsupported-content-coding"


def test_a_corrupt_gzip_body_is_400_in_plain_words(client):
    truncated = gzip.compress(json.dumps(SAMPLE).encode())[:-8]
    result = client.simulate_post("/data", body=truncated, headers={"Content-Encoding": "gzip"})
    assert result.status_code == 400
    assert result.json["type"] == "urn:sensorstats:problem:corrupt-body"
    assert result.json["detail"].startswith("the body is not valid gzip data: it ends before")


def test_the_body_limit_applies_to_the_decompressed_body():
    client = testing.TestClient(create_app(Settings(max_body_bytes=1000), MemoryStore()))
    padded = json.dumps(SAMPLE).encode() + b" " * 1000
    result = client.simulate_post(
        "/data", body=gzip.compress(padded), headers={"Content-Encoding": "gzip"}
    )
    assert result.status_code == 413
    assert "SENSORSTATS_MAX_BODY_BYTES" in result.json["detail"]
    assert "after decompression" in result.json["detail"]
    assert client.simulate_get("/statistics/abc").json["count"] == 0


@pytest.mark.filterwarnings("ignore::wsgiref.validate.WSGIWarning")
@pytest.mark.parametrize("url", ["/data", "/statistics/abc", "/healthz", "/nowhere"])
def test_a_method_http_does_not_define_is_501_on_any_path(client, url):
    result = client.simulate_request("BREW", url)
    assert result.status_code == 501
    assert "allow" not in result.headers
    assert result.json["detail"] == (
        "no resource here implements the method BREW; "
        "this service serves GET, HEAD, POST, DELETE, OPTIONS"
    )


def test_a_method_http_defines_is_still_405_with_allow_where_not_served(client):
    result = client.simulate_request("PATCH", "/data")
    assert result.status_code == 405
    assert result.headers["allow"] == "OPTIONS, POST"
