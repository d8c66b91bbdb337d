"""/openapi.json held against the app, both ways, and schemathesis against running instances.

- Every route and method the app serves is an operation of the document,
  and every operation is served.
- For each operation, the statuses documented are exactly those the app
  answers (each provoked here through falcon.testing) plus those the server
  answers by itself to any request (each provoked against a real process).
- Every answer provoked conforms: its media type, its body's schema, the
  headers the document marks required.
- schemathesis, against a real `python -m sensorstats` on the embedded store
  and on etcd, bounded in examples and time: no 5xx, every answer conforms.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import schemathesis
from falcon import inspect, testing

from sensorstats.core.body import CODING_RULES, MEDIA_TYPE_RULES
from sensorstats.core.errors import StoreUnavailable
from sensorstats.core.timestamps import TIMESTAMP_RULES
from sensorstats.core.tokens import tokens_from_list
from sensorstats.ops.readiness import Readiness
from sensorstats.settings import Settings
from sensorstats.store import Store
from sensorstats.store.memory import MemoryStore
from sensorstats.web import problems
from sensorstats.web.app import create_app
from sensorstats.web.openapi import SERVER_STATUSES, openapi_document
from tests.support.etcd_process import EtcdProcess
from tests.support.examples import examples
from tests.support.service import Service, read_response, start_service
from tests.unit.web.test_app import SAMPLE, FailingStore, measurement

SCHEMATHESIS_CONFIG = Path(__file__).resolve().parent / "schemathesis.toml"
TOKEN = "0123456789abcdefXYZ"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
STATISTICS = "/statistics/{sensor_id}"
# Seconds a schemathesis run may take at most (it normally takes a fraction).
SCHEMATHESIS_TIMEOUT = 300


def template(path: str) -> str:
    """A falcon route template as OpenAPI writes it: no field converters."""
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)


def operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method.upper()) for path, item in document["paths"].items() for method in item}


def documented_statuses(document: dict[str, Any], path: str, method: str) -> set[int]:
    return {int(status) for status in document["paths"][path][method.lower()]["responses"]}


def served(settings: Settings) -> tuple[testing.TestClient, dict[str, Any]]:
    client = testing.TestClient(create_app(settings, MemoryStore()))
    return client, client.simulate_get("/openapi.json").json


# --- the document itself -------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1():
    client, document = served(Settings())
    assert document["openapi"] == "3.1.0"
    # schemathesis checks it against the OpenAPI 3.1 meta-schema.
    schemathesis.openapi.from_dict(document).validate()
    assert document == json.loads(json.dumps(openapi_document(Settings())))
    head = client.simulate_head("/openapi.json")
    assert (head.status_code, head.content) == (200, b"")


def test_the_document_states_the_rules_of_a_body_as_the_core_does():
    _, document = served(Settings())
    body = document["paths"]["/data"]["post"]["requestBody"]["description"]
    assert MEDIA_TYPE_RULES in body
    assert CODING_RULES in body
    timestamp = document["components"]["schemas"]["Measurement"]["properties"]["timestamp"]
    assert timestamp["description"] == TIMESTAMP_RULES


# The HTTP contract in words; this document is its machine-readable twin.
CONTRACT = Path(__file__).resolve().parents[3] / "sensorstats" / "web" / "README.md"


@pytest.mark.parametrize("rule", [MEDIA_TYPE_RULES, CODING_RULES, TIMESTAMP_RULES])
def test_the_http_contract_states_the_same_rules(rule):
    assert rule in " ".join(CONTRACT.read_text().split())


def test_the_http_contract_lists_every_route_and_method():
    routes = CONTRACT.read_text().partition("## Routes\n")[2].partition("\n## ")[0]
    listed = set(re.findall(r"^\| `(GET|POST|DELETE) (/\S*)` \|", routes, re.MULTILINE))
    document = openapi_document(Settings())
    # HEAD and OPTIONS are stated once for every route.
    assert listed == {
        (method, path) for path, method in operations(document) if method not in ("HEAD", "OPTIONS")
    }


def test_the_http_contract_lists_every_problem_type_with_its_status():
    rows = re.findall(r"^\| (\d{3}) \| `([a-z-]+)` \|", CONTRACT.read_text(), re.MULTILINE)
    by_kind = {(kind.status[:3], kind.name) for kind in problems.KINDS.values()}
    elsewhere = {problems.NOT_READY, problems.UNAUTHORIZED, problems.SERVER_BUSY}
    named = {uri.removeprefix(problems.problem_type("")) for uri in elsewhere}
    assert {name for _, name in rows} == {name for _, name in by_kind} | named
    assert by_kind <= set(rows)


def test_the_document_states_this_instances_limits():
    _, document = served(Settings(max_batch=20, max_sensor_id=64))
    schemas = document["components"]["schemas"]
    assert schemas["Batch"]["maxItems"] == 20
    assert schemas["SensorId"]["maxLength"] == 64


def test_every_route_and_method_is_an_operation_and_nothing_else():
    app = create_app(Settings(), MemoryStore())
    in_app = {
        (template(route.path), method.method)
        for route in inspect.inspect_routes(app)
        for method in route.methods
        if not method.internal  # falcon's own 405 responders
    }
    assert in_app == operations(openapi_document(Settings()))


# --- statuses: each one documented is answered, each one answered is documented ---------


@dataclass
class Case:
    """A request that makes the app answer `status` for the operation (path, method)."""

    path: str
    method: str
    status: int
    url: str
    store: Callable[[], Store] = MemoryStore
    settings: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    before: list[tuple[str, str, Any, dict[str, str]]] = field(default_factory=list)


def failing(error: Exception) -> Callable[[], Store]:
    return lambda: FailingStore(error)  # type: ignore[return-value]


UNAVAILABLE = failing(StoreUnavailable("etcd has no leader", retry_after=2))
BUG = failing(RuntimeError("a bug"))
KEYED = {"Idempotency-Key": "k-1"}

CASES = [
    Case("/data", "POST", 204, "/data", body=SAMPLE),
    Case("/data", "POST", 400, "/data", body="[{]"),
    Case("/data", "POST", 400, "/data", body=SAMPLE, headers={"Idempotency-Key": "a b"}),
    Case("/data", "POST", 400, "/data", body="[]", headers={"Content-Encoding": "gzip"}),
    Case("/data", "POST", 413, "/data", body=[measurement("a", 1)] * 3, settings={"max_batch": 2}),
    Case("/data", "POST", 415, "/data", body="[]", headers={"Content-Type": "application/xml"}),
    Case("/data", "POST", 415, "/data", body="[]", headers={"Content-Encoding": "br"}),
    Case(
        "/data",
        "POST",
        422,
        "/data",
        body=[measurement("a", 2)],
        headers=KEYED,
        before=[("POST", "/data", [measurement("a", 1)], KEYED)],
    ),
    Case("/data", "POST", 500, "/data", body=SAMPLE, store=BUG),
    Case("/data", "POST", 503, "/data", body=SAMPLE, store=UNAVAILABLE),
    Case(
        "/data",
        "POST",
        507,
        "/data",
        body=[measurement("a", 1), measurement("b", 1)],
        store=lambda: MemoryStore(max_sensors=1),
    ),
    Case("/data", "OPTIONS", 204, "/data"),
    *(
        case
        for method in ("GET", "HEAD")
        for case in (
            Case(STATISTICS, method, 200, "/statistics/abc"),
            Case(STATISTICS, method, 400, "/statistics/%01"),
            Case(STATISTICS, method, 404, "/statistics/"),
            Case(STATISTICS, method, 500, "/statistics/abc", store=BUG),
            Case(STATISTICS, method, 503, "/statistics/abc", store=UNAVAILABLE),
            Case("/healthz", method, 204, "/healthz"),
            Case("/healthz", method, 503, "/healthz", store=UNAVAILABLE),
            Case("/livez", method, 204, "/livez"),
            Case("/metrics", method, 200, "/metrics"),
            Case("/openapi.json", method, 200, "/openapi.json"),
        )
    ),
    Case(STATISTICS, "DELETE", 204, "/statistics/abc"),
    Case(STATISTICS, "DELETE", 400, "/statistics/%01"),
    Case(STATISTICS, "DELETE", 404, "/statistics/"),
    Case(STATISTICS, "DELETE", 500, "/statistics/abc", store=BUG),
    Case(STATISTICS, "DELETE", 503, "/statistics/abc", store=UNAVAILABLE),
    *(
        Case(path, "OPTIONS", 204, url)
        for path, url in (
            (STATISTICS, "/statistics/abc"),
            ("/healthz", "/healthz"),
            ("/livez", "/livez"),
            ("/metrics", "/metrics"),
            ("/openapi.json", "/openapi.json"),
        )
    ),
]


def send(client: testing.TestClient, method: str, url: str, body: Any, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    if body is None:
        return client.simulate_request(method, url, headers=headers)
    if isinstance(body, str):
        return client.simulate_request(method, url, body=body, headers=headers)
    return client.simulate_request(method, url, json=body, headers=headers)


def answer(case: Case) -> testing.Result:
    store = case.store()
    client = testing.TestClient(
        create_app(Settings(**case.settings), store, Readiness(store, ttl=0.0))
    )
    for method, url, body, headers in case.before:
        send(client, method, url, body, headers)
    return send(client, case.method, case.url, case.body, case.headers)


def assert_conforms(document: dict[str, Any], path: str, method: str, result: testing.Result):  # type: ignore[no-untyped-def]
    """`result` is what the document says `method path` answers with its status."""
    responses = document["paths"][path][method.lower()]["responses"]
    response = responses[str(result.status_code)]
    headers = document["components"]["headers"]
    for name, ref in response.get("headers", {}).items():
        header = headers[ref["$ref"].rsplit("/", 1)[1]]
        if header["required"]:
            assert name.lower() in result.headers, f"{name} missing"
            assert re.fullmatch(header["schema"].get("pattern", ".*"), result.headers[name])
    content = response.get("content")
    if not content:
        assert result.content == b""
        return
    media_type = result.headers["content-type"].split(";")[0]
    matches = [m for m in content if m.split(";")[0] == media_type]
    assert matches, f"{media_type} is not documented for {method} {path} {result.status_code}"
    schema = content[matches[0]]["schema"]
    if media_type.endswith("json"):
        jsonschema.Draft202012Validator({**schema, "components": document["components"]}).validate(
            result.json
        )


@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: f"{c.method} {c.path} {c.status} {c.url} {c.headers}"
)
def test_each_case_answers_its_status_and_conforms(case):
    result = answer(case)
    assert result.status_code == case.status, result.text
    assert_conforms(openapi_document(Settings(**case.settings)), case.path, case.method, result)


def test_each_operation_documents_exactly_what_is_answered():
    document = openapi_document(Settings())
    answered: dict[tuple[str, str], set[int]] = {}
    for case in CASES:
        answered.setdefault((case.path, case.method), set()).add(case.status)
    assert set(answered) == operations(document)
    for (path, method), statuses in answered.items():
        expected = statuses | set(SERVER_STATUSES)
        assert documented_statuses(document, path, method) == expected, (path, method)


def test_answers_outside_any_operation_are_documented_and_conform():
    client, document = served(Settings())
    not_found = client.simulate_get("/nowhere")
    not_allowed = client.simulate_put("/statistics/abc")
    assert (not_found.status_code, not_allowed.status_code) == (404, 405)
    responses = document["components"]["responses"]
    assert responses["NotFound"]["content"]["application/problem+json"]
    assert "Allow" in responses["MethodNotAllowed"]["headers"]
    assert not_allowed.headers["allow"]


@pytest.mark.parametrize("protect_reads", [False, True])
def test_401_is_documented_exactly_where_a_token_is_needed(protect_reads):
    settings = Settings(
        api_tokens=tokens_from_list(f"ci:{TOKEN}"), read_requires_token=protect_reads
    )
    client, document = served(settings)
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, method in sorted(operations(document)):
        url = path.replace("{sensor_id}", "abc")
        body = SAMPLE if method == "POST" else None
        without = send(client, method, url, body, {})
        documented = 401 in documented_statuses(document, path, method)
        assert (without.status_code == 401) == documented, (method, path)
        has_security = "security" in document["paths"][path][method.lower()]
        assert has_security == documented, (method, path)
        if documented:
            assert_conforms(document, path, method, without)
            assert send(client, method, url, body, BEARER).status_code != 401


def test_without_tokens_nothing_mentions_them():
    document = openapi_document(Settings())
    assert "securitySchemes" not in document["components"]
    assert all(
        "401" not in operation["responses"]
        for item in document["paths"].values()
        for operation in item.values()
    )


# --- what the server answers by itself, from a real process ---------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with start_service(
        args=["--max-body-bytes", "100", "--receive-timeout", "0.5"],
        log_dir=tmp_path_factory.mktemp("logs"),
    ) as running:
        yield running


def raw_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    status, headers, body = read_response(sock)
    return int(status.split()[1]), headers, body


SERVER_REQUESTS = {
    400: b"GET /livez HTTP/1.1\nHost: x\n\n",
    413: b"POST /data HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
    431: b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
    501: b"POST /data HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    408: b"POST /data HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n[",
}


@pytest.mark.parametrize("status", sorted(SERVER_REQUESTS))
def test_the_servers_own_answers_conform(service, status):
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(SERVER_REQUESTS[status])
        got, headers, body = raw_answer(sock)
    assert got == status
    assert headers["content-type"] == "application/problem+json"
    assert headers["x-request-id"]
    problem = json.loads(body)
    document = openapi_document(Settings(max_body_bytes=100))
    components = document["components"]
    jsonschema.Draft202012Validator(
        {"$ref": "#/components/schemas/Problem", "components": components}
    ).validate(problem)
    assert problem["status"] == status
    assert status in documented_statuses(document, "/data", "POST")


def test_the_server_busy_answer_conforms(service):
    # 32 bodies of the maximum size may be in flight; the 33rd is refused on its head.
    head = b"POST /data HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    held = []
    try:
        for _ in range(32):
            sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
            sock.sendall(head)
            held.append(sock)
        time.sleep(0.2)  # the server reads every head first
        with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
            sock.sendall(head)
            got, headers, body = raw_answer(sock)
    finally:
        for sock in held:
            sock.close()
    assert got == 503
    assert headers["retry-after"] == "1"
    assert json.loads(body)["type"] == "urn:sensorstats:problem:server-busy"


# --- schemathesis against running instances --------------------------------------------

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "positive_data_acceptance",
        "missing_required_header",
        "unsupported_method",
        "allow_header_conformance",
    )
)


def run_schemathesis(service: Service, workdir: Path, max_examples: int) -> str:
    """Run schemathesis's CLI against `service`; its output, or a failure with it."""
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(SCHEMATHESIS_CONFIG),
        "--no-color",
        "run",
        f"{service.url}/openapi.json",
        "--checks",
        CHECKS,
        "--max-examples",
        str(max_examples),
        # Fixed, so that CI explores the same cases each run and a failure
        # reproduces; change it to explore others.
        "--seed",
        "20211109",
        "--request-timeout",
        "10",
        "--workers",
        "1",
        "--no-shrink",
    ]
    result = subprocess.run(
        command,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=SCHEMATHESIS_TIMEOUT,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    assert re.search(r"\b0 (errors|failures)|No issues found", output), output[-8000:]
    return output


def test_schemathesis_on_the_embedded_store(tmp_path):
    with start_service(log_dir=tmp_path) as service:
        output = run_schemathesis(service, tmp_path, max_examples=examples(15))
        log = service.log()
    assert "17 selected / 17 total" in output
    # Nothing the fuzzer sent made the service fail unexpectedly.
    assert '"level": "ERROR"' not in log


def test_schemathesis_on_etcd(etcd: EtcdProcess, etcd_prefix: str, tmp_path: Path):
    with start_service(
        env={"SENSORSTATS_ETCD_ENDPOINTS": etcd.url, "SENSORSTATS_ETCD_PREFIX": etcd_prefix},
        log_dir=tmp_path,
    ) as service:
        run_schemathesis(service, tmp_path, max_examples=examples(8))
        log = service.log()
    assert '"level": "ERROR"' not in log
