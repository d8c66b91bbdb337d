"""The OpenAPI 3.1 document of an instance, served at ``GET /openapi.json``.

Built from the settings, so the limits it states (batch size, sensor id
length, body size) and whether tokens are needed are this instance's own.
`tests/unit/web/test_openapi.py` holds it against the app both ways: every route,
method and status the app answers is here, and everything here is answered.

Statuses come from two places. The app answers those of each operation.
The server answers some before the app sees a request, on any path:
malformed HTTP (400), a request not received in time (408), a declared body
over the limit (413), a head over 16 KiB (431), an unsupported transfer
coding (501), no room for another body in flight (503), and its own failure
(500). They are listed on every operation, since any request can meet them;
so is the app's 501 for a method HTTP does not define, which it answers on
every path.

What a body and its timestamps may be is stated once, in the core
(`MEDIA_TYPE_RULES`, `CODING_RULES`, `TIMESTAMP_RULES`), and repeated here.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from sensorstats import __version__
from sensorstats.core.body import CODING_RULES, MEDIA_TYPE_RULES
from sensorstats.core.timestamps import MAX_TIMESTAMP_LENGTH, TIMESTAMP_RULES
from sensorstats.settings import Settings

PROBLEM_JSON = "application/problem+json"
JSON = "application/json"
MAX_DOUBLE = 1.7976931348623157e308

# `idempotency.parse_key_header`: a bare token, or a Structured Field string
# with \" and \\ escapes; 1 to 255 characters either way once unquoted.
IDEMPOTENCY_KEY_PATTERN = r'^(?:[!#-\[\]-~]{1,255}|"(?:[ !#-\[\]-~]|\\["\\]){1,255}")$'

# What the server itself may answer to any request (see the module docstring).
SERVER_STATUSES = (400, 408, 413, 431, 500, 501, 503)

_STATUS_DESCRIPTIONS = {
    400: "Malformed HTTP, or a request the operation cannot take (see `type`).",
    401: "A bearer token is needed, or the one sent is not valid.",
    404: "No sensor id in the path (`/statistics/`).",
    408: "The request line, headers and body did not arrive within the receive timeout.",
    413: "The body is over the byte limit (compressed or decompressed), or the batch has "
    "too many measurements.",
    415: "The Content-Type is not one a batch is read from "
    "(`urn:sensorstats:problem:unsupported-media-type`), or the Content-Encoding is not "
    "gzip or deflate (`...:unsupported-content-coding`, with Accept-Encoding).",
    422: "This Idempotency-Key was used with another payload; nothing was stored.",
    431: "The request line and headers exceed 16 KiB.",
    500: "An unexpected failure; it has been logged with the request id.",
    501: "A Transfer-Encoding other than chunked, or a method HTTP does not define "
    "(BREW, PROPFIND): no resource here implements it.",
    503: "The store cannot answer now (`urn:sensorstats:problem:store-unavailable`), or "
    "the server holds as many request bodies as it can (`...:server-busy`). Retry after "
    "`Retry-After` seconds.",
    507: "The embedded store holds as many sensors as configured; nothing was stored.",
}


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _headers(*names: str, retry_after: bool = False) -> dict[str, Any]:
    headers: dict[str, Any] = {"X-Request-ID": _ref("headers", "X-Request-ID")}
    if retry_after:
        headers["Retry-After"] = _ref("headers", "Retry-After")
    for name in names:
        headers[name] = _ref("headers", name)
    return headers


def _problem(status: int, description: str | None = None, *, head: bool = False) -> dict[str, Any]:
    """A response whose body is a problem document (none for HEAD)."""
    response: dict[str, Any] = {
        "description": description or _STATUS_DESCRIPTIONS.get(status, HTTPStatus(status).phrase),
        "headers": _headers(
            *(("WWW-Authenticate",) if status == 401 else ()), retry_after=status == 503
        ),
    }
    if not head:
        response["content"] = {PROBLEM_JSON: {"schema": _ref("schemas", "Problem")}}
    return response


def _no_content(description: str, *names: str) -> dict[str, Any]:
    return {"description": description, "headers": _headers(*names)}


def _content(description: str, media: dict[str, Any], *, head: bool) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "headers": _headers()}
    if not head:
        response["content"] = media
    return response


def _operation(
    operation_id: str,
    summary: str,
    responses: dict[int, dict[str, Any]],
    *,
    head: bool = False,
    parameters: list[dict[str, Any]] | None = None,
    request_body: dict[str, Any] | None = None,
    security: bool = False,
) -> dict[str, Any]:
    """An operation with the server's own answers added to `responses`."""
    every = dict(responses)
    for status in SERVER_STATUSES:
        every.setdefault(status, _problem(status, head=head))
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "parameters": [_ref("parameters", "X-Request-ID"), *(parameters or [])],
        "responses": {str(status): every[status] for status in sorted(every)},
    }
    if request_body is not None:
        operation["requestBody"] = request_body
    if security:
        operation["security"] = [{"bearer": []}]
    return operation


def _options(
    name: str, allowed: str, parameters: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return _operation(
        f"options{name}",
        f"The methods served here, in Allow: {allowed}.",
        {204: _no_content(f"Allow: {allowed}.", "Allow")},
        head=True,
        parameters=parameters,
    )


def openapi_document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document describing an instance with `settings`."""
    tokens = settings.api_tokens is not None or bool(settings.api_tokens_file)
    reads_need_token = tokens and settings.read_requires_token
    auth = {401: _problem(401)} if tokens else {}
    read_auth = {401: _problem(401)} if reads_need_token else {}
    read_auth_head = {401: _problem(401, head=True)} if reads_need_token else {}
    sensor = [_ref("parameters", "sensor_id")]

    statistics_errors = {
        400: _problem(400, "Malformed HTTP, or a sensor id no measurement could carry."),
        404: _problem(404),
        500: _problem(500),
        503: _problem(503),
    }
    statistics_head_errors = {
        status: _problem(status, response["description"], head=True)
        for status, response in statistics_errors.items()
    }
    paths: dict[str, Any] = {
        "/data": {
            "post": _operation(
                "postData",
                "Store a batch of measurements, all or nothing.",
                {
                    204: _no_content("Stored (or, with an Idempotency-Key, stored before)."),
                    400: _problem(
                        400,
                        "Malformed HTTP, a body that is not a valid batch (`invalid-batch`, "
                        "each bad field listed in `errors`), a compressed body that does not "
                        "decompress (`corrupt-body`), or a malformed Idempotency-Key.",
                    ),
                    **auth,
                    413: _problem(413),
                    415: {
                        **_problem(415),
                        "headers": _headers("Accept-Encoding"),
                    },
                    422: _problem(422),
                    500: _problem(500),
                    503: _problem(
                        503,
                        "The store could not commit the batch in time; `detail` says whether "
                        "it was not applied or its outcome is unknown. Or the server is busy.",
                    ),
                    507: _problem(507),
                },
                parameters=[_ref("parameters", "Idempotency-Key")],
                request_body={
                    "required": True,
                    "description": (
                        f"A JSON array of measurements, at most {settings.max_batch} of them "
                        f"and {settings.max_body_bytes} bytes. Content-Type: "
                        f"{MEDIA_TYPE_RULES}. Content-Encoding: {CODING_RULES}."
                    ),
                    "content": {JSON: {"schema": _ref("schemas", "Batch")}},
                },
                security=tokens,
            ),
            "options": _options("Data", "POST, OPTIONS"),
        },
        "/statistics/{sensor_id}": {
            "get": _operation(
                "getStatistics",
                "A sensor's statistics (count 0 for a sensor never seen).",
                {
                    200: _content(
                        "The statistics.",
                        {JSON: {"schema": _ref("schemas", "Statistics")}},
                        head=False,
                    ),
                    **read_auth,
                    **statistics_errors,
                },
                parameters=sensor,
                security=reads_need_token,
            ),
            "head": _operation(
                "headStatistics",
                "GET's headers, without the body.",
                {
                    200: _content("The statistics' headers.", {}, head=True),
                    **read_auth_head,
                    **statistics_head_errors,
                },
                head=True,
                parameters=sensor,
                security=reads_need_token,
            ),
            "delete": _operation(
                "deleteStatistics",
                "Forget a sensor's measurements (nothing to forget is no error).",
                {204: _no_content("Forgotten."), **auth, **statistics_errors},
                parameters=sensor,
                security=tokens,
            ),
            # OPTIONS answers whatever the id: it describes the resource.
            "options": _options(
                "Statistics", "GET, HEAD, DELETE, OPTIONS", [_ref("parameters", "any_sensor_id")]
            ),
        },
    }
    not_ready = (
        "Not ready: the store is unreachable, the circuit breaker is open, the store check "
        "hangs, or the instance drains (`detail` says which)."
    )
    for path, name, summary, answers in (
        (
            "/healthz",
            "Health",
            "Readiness: 204 while the store answers and the instance is not draining.",
            {204: "Ready.", 503: not_ready},
        ),
        ("/livez", "Live", "Liveness: 204 while the process serves.", {204: "Alive."}),
    ):
        for method, head in (("get", False), ("head", True)):
            responses = {
                status: _no_content(text) if status < 300 else _problem(status, text, head=head)
                for status, text in answers.items()
            }
            paths.setdefault(path, {})[method] = _operation(
                f"{method}{name}", summary, responses, head=head
            )
        paths[path]["options"] = _options(name, "GET, HEAD, OPTIONS")

    metrics_media = {
        media: {"schema": {"type": "string"}}
        for media in (
            "text/plain; version=0.0.4",
            "text/plain; version=1.0.0",
            "application/openmetrics-text",
        )
    }
    for path, name, summary, media in (
        (
            "/metrics",
            "Metrics",
            "Prometheus metrics (OpenMetrics when the Accept header asks for it).",
            metrics_media,
        ),
        (
            "/openapi.json",
            "OpenApi",
            "This document.",
            {JSON: {"schema": {"type": "object"}}},
        ),
    ):
        paths[path] = {
            "get": _operation(f"get{name}", summary, {200: _content(summary, media, head=False)}),
            "head": _operation(
                f"head{name}",
                "GET's headers, without the body.",
                {200: _content(summary, {}, head=True)},
                head=True,
            ),
            "options": _options(name, "GET, HEAD, OPTIONS"),
        }

    components: dict[str, Any] = {
        "schemas": _schemas(settings),
        "parameters": {
            "X-Request-ID": {
                "name": "X-Request-ID",
                "in": "header",
                "required": False,
                "description": (
                    "An id to follow the request by: kept if it is 1 to 128 printable ASCII "
                    "characters without spaces, else replaced by a new one. Echoed on the "
                    "answer and written on every log line about the request."
                ),
                "schema": {"type": "string"},
            },
            "Idempotency-Key": {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": (
                    "A Structured Field string or a token of printable ASCII, up to 255 "
                    "characters. The same key and payload again answers the first outcome "
                    f"without counting again, for {settings.idempotency_ttl:g} s; the same key "
                    "with another payload is 422."
                ),
                "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
            },
            "sensor_id": {
                "name": "sensor_id",
                "in": "path",
                "required": True,
                "description": (
                    "The sensor id: the rest of the path, percent-encoded or not "
                    "(`/statistics/a/b` and `/statistics/a%2Fb` both name `a/b`)."
                ),
                "schema": _ref("schemas", "SensorId"),
            },
            "any_sensor_id": {
                "name": "sensor_id",
                "in": "path",
                "required": True,
                "description": "Any path below /statistics/.",
                "schema": {"type": "string"},
            },
        },
        "headers": {
            "X-Request-ID": {
                "description": "The request's id: the client's, if sane, else a new one.",
                "required": True,
                "schema": {"type": "string", "pattern": "^[!-~]{1,128}$"},
            },
            "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "required": True,
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            },
            "Allow": {
                "description": "The methods the resource serves.",
                "required": True,
                "schema": {"type": "string"},
            },
            "Accept-Encoding": {
                "description": "On a 415 for the Content-Encoding: the codings that would do.",
                "required": False,
                "schema": {"type": "string", "enum": ["gzip, deflate"]},
            },
            "WWW-Authenticate": {
                "description": 'The challenge: `Bearer realm="sensorstats"`, with '
                '`error="invalid_token"` for a token that is not valid.',
                "required": True,
                "schema": {"type": "string"},
            },
        },
        "responses": {
            "NotFound": _problem(404, "Nothing is served at this path."),
            "MethodNotAllowed": {
                **_problem(
                    405, "The resource does not serve this method; Allow lists those it does."
                ),
                "headers": _headers("Allow"),
            },
        },
    }
    if tokens:
        components["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "One of the tokens in SENSORSTATS_API_TOKENS or its file.",
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sensorstats",
            "version": __version__,
            "description": (
                "Per-sensor statistics over HTTP. Every answer carries X-Request-ID; every "
                "error is an RFC 9457 problem document (application/problem+json). Besides "
                "the operations listed: a path nothing is served at answers 404 "
                "(components/responses/NotFound), a method a resource does not serve 405 "
                "with Allow (components/responses/MethodNotAllowed), and `OPTIONS *` 204 "
                "with every method the server serves; a method HTTP does not define (BREW) "
                "501 on any path. The server answers 400, 408, 413, 431, 500, 501 and 503 "
                "by itself to any request, before the app sees it."
            ),
        },
        "paths": paths,
        "components": components,
    }


def _schemas(settings: Settings) -> dict[str, Any]:
    return {
        "SensorId": {
            "type": "string",
            "minLength": 1,
            "maxLength": settings.max_sensor_id,
            # No control characters; lone surrogates, which JSON Schema cannot
            # name, are refused too.
            "pattern": "^[^\x00-\x1f\x7f]+$",
            "description": "Compared exactly as sent.",
        },
        "Measurement": {
            "type": "object",
            "required": ["sensor", "timestamp", "value"],
            "properties": {
                "sensor": _ref("schemas", "SensorId"),
                "timestamp": {
                    "type": "string",
                    "format": "date-time",
                    "maxLength": MAX_TIMESTAMP_LENGTH,
                    "description": TIMESTAMP_RULES,
                },
                "value": {
                    "type": "number",
                    "minimum": -MAX_DOUBLE,
                    "maximum": MAX_DOUBLE,
                    "description": "Finite as an IEEE double; integers are summed exactly.",
                },
            },
        },
        "Batch": {
            "type": "array",
            "maxItems": settings.max_batch,
            "items": _ref("schemas", "Measurement"),
        },
        "Statistics": {
            "type": "object",
            "required": ["last_measurement", "count", "avg"],
            "additionalProperties": False,
            "properties": {
                "last_measurement": {
                    "type": ["string", "null"],
                    "description": "The latest instant's timestamp, exactly as posted.",
                },
                "count": {"type": "integer", "minimum": 0},
                "avg": {
                    "type": "number",
                    "description": "The exact mean, rounded once to the nearest double.",
                },
            },
        },
        "FieldError": {
            "type": "object",
            "required": ["index", "field", "message"],
            "properties": {
                "index": {"type": "integer", "minimum": 0},
                "field": {
                    "type": ["string", "null"],
                    "description": "null when the item as a whole is not an object.",
                },
                "message": {"type": "string"},
            },
        },
        "Problem": {
            "type": "object",
            "description": "An RFC 9457 problem document.",
            "required": ["type", "title", "status", "detail"],
            "properties": {
                "type": {
                    "type": "string",
                    "description": "urn:sensorstats:problem:<name>, or about:blank for "
                    "plain HTTP errors.",
                },
                "title": {"type": "string"},
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": {"type": "string"},
                "errors": {
                    "type": "array",
                    "maxItems": 100,
                    "items": _ref("schemas", "FieldError"),
                    "description": "invalid-batch: each bad field, the first 100.",
                },
                "limit": {
                    "type": "integer",
                    "description": "store-full: the limit that was reached.",
                },
            },
        },
    }
