"""Errors as RFC 9457 problem documents, in one place."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import falcon

from sensorstats.core.errors import (
    CorruptBody,
    InvalidBatch,
    InvalidSensorId,
    PayloadTooLarge,
    StoreFull,
    StoreUnavailable,
    UnsupportedContentCoding,
    UnsupportedMediaType,
)
from sensorstats.core.idempotency import IdempotencyKeyReused, InvalidIdempotencyKey
from sensorstats.ops.logs import UNAVAILABLE_LOGGER

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


def problem_type(name: str) -> str:
    """The URI of one of this service's problem types."""
    return f"urn:sensorstats:problem:{name}"


# The problem types answered outside the error handlers below.
NOT_READY = problem_type("not-ready")
UNAUTHORIZED = problem_type("unauthorized")
PAYLOAD_TOO_LARGE = problem_type("payload-too-large")
SERVER_BUSY = problem_type("server-busy")


@dataclass(frozen=True, slots=True)
class _Kind:
    """How one known error type becomes a problem document."""

    status: str
    name: str  # the problem type is urn:sensorstats:problem:<name>
    title: str
    extensions: Callable[[Any], dict[str, Any] | None] = lambda error: None
    headers: Callable[[Any], dict[str, str] | None] = lambda error: None


def _field_errors(error: InvalidBatch) -> dict[str, Any] | None:
    errors = [{"index": e.index, "field": e.field, "message": e.message} for e in error.errors]
    return {"errors": errors} if errors else None


KINDS: dict[type[Exception], _Kind] = {
    InvalidBatch: _Kind(falcon.HTTP_400, "invalid-batch", "Invalid batch", _field_errors),
    PayloadTooLarge: _Kind(falcon.HTTP_413, "payload-too-large", "Payload too large"),
    UnsupportedMediaType: _Kind(
        falcon.HTTP_415, "unsupported-media-type", "Unsupported media type"
    ),
    # RFC 9110 §15.5.16: Accept-Encoding names the codings that would do.
    UnsupportedContentCoding: _Kind(
        falcon.HTTP_415,
        "unsupported-content-coding",
        "Unsupported content coding",
        headers=lambda error: {"Accept-Encoding": ", ".join(error.supported)},
    ),
    CorruptBody: _Kind(falcon.HTTP_400, "corrupt-body", "Corrupt body"),
    InvalidSensorId: _Kind(falcon.HTTP_400, "invalid-sensor-id", "Invalid sensor id"),
    InvalidIdempotencyKey: _Kind(
        falcon.HTTP_400, "invalid-idempotency-key", "Invalid Idempotency-Key"
    ),
    IdempotencyKeyReused: _Kind(
        falcon.HTTP_422, "idempotency-key-reused", "Idempotency-Key reused with another payload"
    ),
    StoreFull: _Kind(
        falcon.HTTP_507, "store-full", "Store full", lambda error: {"limit": error.limit}
    ),
    StoreUnavailable: _Kind(
        falcon.HTTP_503,
        "store-unavailable",
        "Store unavailable",
        headers=lambda error: {"Retry-After": str(error.retry_after)},
    ),
}


def _handler(kind: _Kind) -> Callable[[falcon.Request, falcon.Response, Any, Any], None]:
    def handle(req: falcon.Request, resp: falcon.Response, error: Any, params: Any) -> None:
        req.context.problem = kind.name  # for the metric of rejected batches
        if isinstance(error, StoreUnavailable):
            _unavailable_log.warning(
                "%s %s: store unavailable: %s", req.method, req.path, error.detail
            )
        raise Problem(
            kind.status,
            type_uri=problem_type(kind.name),
            title=kind.title,
            detail=error.detail,
            headers=kind.headers(error),
            extensions=kind.extensions(error),
        )

    return handle


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
    # Falcon picks the handler of the most specific type in an error's MRO.
    for error_type, kind in KINDS.items():
        app.add_error_handler(error_type, _handler(kind))
