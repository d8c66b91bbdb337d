"""The answers the server gives by itself: waitress's errors as problem documents."""

from __future__ import annotations

from typing import Any

from waitress.utilities import Error

from sensorstats.web import problems


class _ProblemError(Error):  # type: ignore[misc]  # waitress is untyped
    """A waitress error that knows its problem document."""

    type_uri = "about:blank"
    title: str | None = None
    retry_after: int | None = None


class BodyTooLarge(_ProblemError):
    code = 413
    reason = "Payload Too Large"
    type_uri = problems.PAYLOAD_TOO_LARGE
    title = "Payload too large"


class ServerBusy(_ProblemError):
    code = 503
    reason = "Service Unavailable"
    type_uri = problems.SERVER_BUSY
    title = "Server busy"
    retry_after = 1


class RequestTimeout(_ProblemError):
    code = 408
    reason = "Request Timeout"


def problem_response(error: Any, adj: Any) -> tuple[str, list[tuple[str, str]], bytes]:
    """Status, headers and body of the problem document for a waitress error."""
    code: int = error.code
    reason: str = error.reason
    type_uri = getattr(error, "type_uri", "about:blank")
    title = getattr(error, "title", None)
    if isinstance(error, _ProblemError):
        detail = error.body
    elif code == 431:
        detail = f"the request line and headers exceed {adj.max_request_header_size} bytes"
    elif code == 413:
        type_uri, title = problems.PAYLOAD_TOO_LARGE, BodyTooLarge.title
        reason = BodyTooLarge.reason  # as the app says it, not "Request Entity Too Large"
        detail = f"the request body {error.body}"
    elif code == 500:
        detail = "the request failed unexpectedly; the error has been logged"
    elif code == 400:
        detail = f"malformed HTTP request: {error.body}"
    else:
        detail = str(error.body)
    body = problems.document(code, detail, type_uri=type_uri, title=title)
    headers = [("Content-Type", problems.PROBLEM_JSON)]
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        headers.append(("Retry-After", str(retry_after)))
    return f"{code} {reason}", headers, body
