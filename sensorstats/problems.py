"""Errors as RFC 9457 problem documents, in one place."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

import falcon

from sensorstats.errors import (
    InvalidBatch,
    InvalidSensorId,
    PayloadTooLarge,
    StoreFull,
    StoreUnavailable,
)
from sensorstats.logs import UNAVAILABLE_LOGGER

PROBLEM_JSON = "application/problem+json"

_log = logging.getLogger(__name__)
_unavailable_log = logging.getLogger(UNAVAILABLE_LOGGER)


class Problem(falcon.HTTPError):
    """An HTTP error with a problem type and optional extension members."""

    def __init__(
        self,
        status: str,
        *,
        type_uri: str = "about:blank",
        title: str | None = None,
        detail: str | None = None,
        headers: dict[str, str] | None = None,
        extensions: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(status, title=title, description=detail, headers=headers)
        self.type_uri = type_uri
        self.extensions = extensions or {}


def document(
    status: int,
    detail: str,
    *,
    type_uri: str = "about:blank",
    title: str | None = None,
    extensions: dict[str, Any] | None = None,
) -> bytes:
    """An RFC 9457 problem document, encoded; the title defaults to the status phrase."""
    body: dict[str, Any] = {
        "type": type_uri,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    body.update(extensions or {})
    return json.dumps(body, ensure_ascii=False).encode()


def serialize_problem(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    """Falcon's error serializer: every error body is application/problem+json."""
    status = error.status_code
    title: str | None = error.title
    if not title or title == falcon.code_to_http_status(status):
        title = None  # the plain phrase: "Not Found", not "404 Not Found"
    resp.data = document(
        status,
        error.description or _default_detail(req, status),
        type_uri=getattr(error, "type_uri", "about:blank"),
        title=title,
        extensions=getattr(error, "extensions", None),
    )
    resp.content_type = PROBLEM_JSON


def _default_detail(req: falcon.Request, status: int) -> str:
    if status == 404:
        return f"nothing is served at {req.path}"
    if status == 405:
        return f"{req.method} is not allowed on {req.path}"
    return HTTPStatus(status).description


def _invalid_batch(
    req: falcon.Request, resp: falcon.Response, error: InvalidBatch, params: Any
) -> None:
    errors = [{"index": e.index, "field": e.field, "message": e.message} for e in error.errors]
    raise Problem(
        falcon.HTTP_400,
        type_uri="urn:sensorstats:problem:invalid-batch",
        title="Invalid batch",
        detail=error.detail,
        extensions={"errors": errors} if errors else None,
    )


def _payload_too_large(
    req: falcon.Request, resp: falcon.Response, error: PayloadTooLarge, params: Any
) -> None:
    raise Problem(
        falcon.HTTP_413,
        type_uri="urn:sensorstats:problem:payload-too-large",
        title="Payload too large",
        detail=error.detail,
    )


def _invalid_sensor_id(
    req: falcon.Request, resp: falcon.Response, error: InvalidSensorId, params: Any
) -> None:
    raise Problem(
        falcon.HTTP_400,
        type_uri="urn:sensorstats:problem:invalid-sensor-id",
        title="Invalid sensor id",
        detail=error.detail,
    )


def _store_unavailable(
    req: falcon.Request, resp: falcon.Response, error: StoreUnavailable, params: Any
) -> None:
    _unavailable_log.warning("%s %s: store unavailable: %s", req.method, req.path, error.detail)
    raise Problem(
        falcon.HTTP_503,
        type_uri="urn:sensorstats:problem:store-unavailable",
        title="Store unavailable",
        detail=error.detail,
        headers={"Retry-After": str(error.retry_after)},
    )


def _store_full(req: falcon.Request, resp: falcon.Response, error: StoreFull, params: Any) -> None:
    raise Problem(
        falcon.HTTP_507,
        type_uri="urn:sensorstats:problem:store-full",
        title="Store full",
        detail=error.detail,
        extensions={"limit": error.limit},
    )


def _unexpected(req: falcon.Request, resp: falcon.Response, error: Exception, params: Any) -> None:
    # The traceback goes to the log, never to the client.
    _log.exception("%s %s: unexpected error", req.method, req.path)
    raise Problem(
        falcon.HTTP_500, detail="the request failed unexpectedly; the error has been logged"
    )


def register(app: falcon.App[Any, Any]) -> None:
    """Map every known error type to its problem document on `app`."""
    app.set_error_serializer(serialize_problem)
    app.add_error_handler(Exception, _unexpected)
    app.add_error_handler(InvalidBatch, _invalid_batch)
    app.add_error_handler(PayloadTooLarge, _payload_too_large)
    app.add_error_handler(InvalidSensorId, _invalid_sensor_id)
    app.add_error_handler(StoreUnavailable, _store_unavailable)
    app.add_error_handler(StoreFull, _store_full)
