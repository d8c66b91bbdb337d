"""Request ids: the client's X-Request-ID echoed when sane, a new one otherwise, on every answer."""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import time
from collections.abc import Iterator

import pytest
from falcon import testing

from sensorstats.core.errors import StoreUnavailable
from sensorstats.settings import Settings
from sensorstats.store.memory import MemoryStore
from sensorstats.web.app import create_app
from sensorstats.web.request_id import MAX_LENGTH, new_request_id, request_id_for
from tests.support.logs import service_logging_as
from tests.support.service import Service, read_response, start_service
from tests.unit.web.test_app import SAMPLE, FailingStore

GENERATED = re.compile(r"[0-9a-f]{32}")


# --- the rule ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent",
    ["abc", "0f8fad5b-d9cb-469f-a165-70867728950e", "x" * MAX_LENGTH, "!#$%&'*+-.^_`|~[]{}"],
)
def test_a_sane_id_is_kept(sent):
    assert request_id_for(sent) == sent


@pytest.mark.parametrize(
    "sent",
    [
        "",
        "x" * (MAX_LENGTH + 1),
        "has space",
        "tab\there",
        "new\nline",
        "caf\u00e9",  # not ASCII
        "\x7f",
    ],
)
def test_anything_else_is_replaced_by_a_new_id(sent):
    replaced = request_id_for(sent)
    assert replaced != sent
    assert GENERATED.fullmatch(replaced)


def test_new_ids_are_distinct():
    assert len({new_request_id() for _ in range(1000)}) == 1000


# --- through the app -------------------------------------------------------------------


@pytest.fixture
def client() -> testing.TestClient:
    return testing.TestClient(create_app(Settings(max_body_bytes=200), MemoryStore()))


ANSWERS = [
    pytest.param("POST", "/data", SAMPLE, 204, id="post-204"),
    pytest.param("GET", "/statistics/abc", None, 200, id="get-200"),
    pytest.param("POST", "/data", "not json", 400, id="invalid-batch-400"),
    pytest.param("GET", "/statistics/%01", None, 400, id="invalid-id-400"),
    pytest.param("GET", "/nowhere", None, 404, id="unknown-404"),
    pytest.param("PUT", "/data", None, 405, id="method-405"),
    pytest.param("POST", "/data", [SAMPLE[0]] * 5, 413, id="too-large-413"),
    pytest.param("OPTIONS", "/data", None, 204, id="options-204"),
    pytest.param("GET", "/livez", None, 204, id="livez-204"),
    pytest.param("GET", "/metrics", None, 200, id="metrics-200"),
]


def _send(client: testing.TestClient, method: str, path: str, body, headers=None):  # type: ignore[no-untyped-def]
    kwargs = {"headers": headers or {}}
    if isinstance(body, str):
        kwargs["body"] = body
    elif body is not None:
        kwargs["json"] = body
    return client.simulate_request(method, path, **kwargs)


@pytest.mark.parametrize(("method", "path", "body", "status"), ANSWERS)
def test_the_clients_id_is_echoed_on_every_answer(client, method, path, body, status):
    result = _send(client, method, path, body, {"X-Request-ID": "trace-42"})
    assert result.status_code == status
    assert result.headers["x-request-id"] == "trace-42"


@pytest.mark.parametrize(("method", "path", "body", "status"), ANSWERS)
def test_an_id_is_made_when_none_is_sent(client, method, path, body, status):
    first = _send(client, method, path, body)
    second = _send(client, method, path, body)
    assert first.status_code == status
    assert GENERATED.fullmatch(first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_an_insane_id_is_replaced_on_the_answer(client):
    result = client.simulate_get("/statistics/abc", headers={"X-Request-ID": "a b c"})
    assert GENERATED.fullmatch(result.headers["x-request-id"])


@pytest.mark.parametrize(
    ("store", "status"),
    [
        (FailingStore(StoreUnavailable("etcd has no leader", retry_after=2)), 503),
        (FailingStore(RuntimeError("a bug")), 500),
    ],
)
def test_failures_carry_the_id_too(store, status):
    client = testing.TestClient(create_app(Settings(), store))
    result = client.simulate_get("/statistics/abc", headers={"X-Request-ID": "failing-1"})
    assert result.status_code == status
    assert result.headers["x-request-id"] == "failing-1"


# --- on every log line written while serving the request ------------------------------


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """Logging configured as the service does (JSON), into a buffer; restored afterwards."""
    stream = io.StringIO()
    with service_logging_as("json", stream):
        yield stream


def lines(stream: io.StringIO) -> list[dict]:
    for handler in logging.getLogger().handlers:
        handler.flush()  # access lines are written in batches
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_every_line_logged_while_serving_carries_the_id(log_stream):
    # A bug in the store: the traceback and the access line, both about this request.
    client = testing.TestClient(create_app(Settings(), FailingStore(RuntimeError("a bug"))))
    client.simulate_get("/statistics/abc", headers={"X-Request-ID": "bug-report-7"})
    client.simulate_get("/livez", headers={"X-Request-ID": "another"})
    logged = lines(log_stream)
    about_it = [line for line in logged if line.get("request_id") == "bug-report-7"]
    assert {line["logger"] for line in about_it} == {
        "sensorstats.web.problems",
        "sensorstats.access",
    }
    (error,) = [line for line in about_it if line["level"] == "ERROR"]
    assert "RuntimeError: a bug" in error["exc"]
    # Nothing logged between requests claims an id.
    assert [line["request_id"] for line in logged] == ["bug-report-7", "bug-report-7", "another"]


def test_a_store_warning_carries_the_id(log_stream):
    store = FailingStore(StoreUnavailable("etcd did not answer within 2 s", retry_after=2))
    client = testing.TestClient(create_app(Settings(), store))
    client.simulate_post("/data", json=SAMPLE, headers={"X-Request-ID": "outage-3"})
    (warning,) = [line for line in lines(log_stream) if line["level"] == "WARNING"]
    assert warning["request_id"] == "outage-3"
    assert "store unavailable" in warning["msg"]


# --- from outside: a real process, answers the server gives by itself included --------


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with start_service(
        args=["--max-body-bytes", "4096"], log_dir=tmp_path_factory.mktemp("logs")
    ) as running:
        yield running


def raw_exchange(service: Service, request: bytes) -> tuple[int, dict[str, str]]:
    """Send `request` as is; the status and headers of the answer."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(request)
        status, headers, _ = read_response(sock)
    return int(status.split()[1]), headers


def test_the_process_echoes_and_makes_ids(service):
    sent = service.post("/data", SAMPLE, headers={"X-Request-ID": "e2e-1"})
    assert (sent.status, sent.headers["x-request-id"]) == (204, "e2e-1")
    made = service.get("/statistics/nothing-here")
    assert GENERATED.fullmatch(made.headers["x-request-id"])
    refused = service.post("/data", "[1]", headers={"X-Request-ID": "e2e-400"})
    assert (refused.status, refused.headers["x-request-id"]) == (400, "e2e-400")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(
            b"POST /data HTTP/1.1\r\nHost: x\r\nX-Request-ID: big-1\r\n"
            b"Content-Length: 99999\r\n\r\n",
            413,
            id="declared-body-over-the-limit",
        ),
        pytest.param(
            b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Request-ID: te-1\r\n"
            b"Transfer-Encoding: gzip\r\n\r\n",
            501,
            id="unsupported-transfer-coding",
        ),
    ],
)
def test_answers_of_the_server_itself_echo_the_id(service, request_bytes, status):
    got, headers = raw_exchange(service, request_bytes)
    assert got == status
    sent_id = request_bytes.split(b"X-Request-ID: ")[1].split(b"\r")[0].decode()
    assert headers["x-request-id"] == sent_id
    (line,) = logged_about(service, sent_id)
    assert (line["logger"], line["status"], line["route"]) == (
        "sensorstats.access",
        status,
        "unmatched",
    )


def test_an_oversized_head_still_gets_an_id(service):
    got, headers = raw_exchange(
        service, b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    )
    assert got == 431
    assert GENERATED.fullmatch(headers["x-request-id"])


def logged_about(service: Service, request_id: str) -> list[dict]:
    """The log lines about `request_id`, once there are any (each line is flushed as written)."""
    deadline = time.monotonic() + 10
    while True:
        found = [
            json.loads(line)
            for line in service.log().splitlines()
            if f'"request_id": "{request_id}"' in line
        ]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_the_access_line_of_a_request_carries_its_id(service):
    service.get("/statistics/abc", headers={"X-Request-ID": "find-me-in-the-log"})
    access = logged_about(service, "find-me-in-the-log")
    assert len(access) == 1
    assert access[0]["logger"] == "sensorstats.access"
    assert access[0]["route"] == "/statistics/{sensor_id}"
    assert access[0]["path"] == "/statistics/abc"
    assert access[0]["status"] == 200
