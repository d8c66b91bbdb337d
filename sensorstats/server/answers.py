"""The answers the server gives by itself: waitress's errors as problem documents."""

from __future__ import annotations

from typing import Any

from waitress.utilities import Error

from sensorstats.web import problems
from sensorstats.web.early import body_too_large

# Waitress's reasons for a 400 (the start of its message), in words that say
# what to fix. Its own words name its internals ("max_body", "t-e").
_MALFORMED = (
    ("Malformed HTTP method", "the method must be an upper-case token, such as GET or POST"),
    ("Start line is invalid", "the request line must be METHOD TARGET HTTP/1.1"),
    ("Bad URI", "the request target is not a valid URI"),
    ("Content-Length is invalid", "Content-Length must be one decimal number of bytes"),
    ("Invalid chunk", "a chunk size line of the chunked body is malformed"),
    ("Chunk not properly terminated", "a chunk of the chunked body does not end in CRLF"),
)
_MALFORMED_HEADERS = "a header line is malformed: each must be Name: value, ending in CRLF"
_MALFORMED_SEE = "; see RFC 9112"


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


class MalformedRequest(_ProblemError):
    """Malformed HTTP that our parser refuses, where waitress's would not."""

    code = 400
    reason = "Bad Request"


class ServerBusy(_ProblemError):
    code = 503
    reason = "Service Unavailable"
    type_uri = problems.SERVER_BUSY
    title = "Server busy"
    retry_after = 1


class RequestTimeout(_ProblemError):
    code = 408
    reason = "Request Timeout"


def problem_response(
    error: Any, adj: Any, max_body_bytes: int
) -> tuple[str, list[tuple[str, str]], bytes]:
    """Status, headers and body of the problem document for a waitress error.

    `max_body_bytes` is the app's body limit, which waitress's own (16 times
    as large, for raw chunked bytes) is answered as.
    """
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
        detail = body_too_large(f"has more than {max_body_bytes} bytes", max_body_bytes)
    elif code == 500:
        detail = "the request failed unexpectedly; the error has been logged"
    elif code == 400:
        detail = f"malformed HTTP request: {_malformed(str(error.body))}"
    elif code == 501:
        detail = (
            "only the chunked Transfer-Encoding is supported: send the body with "
            "Content-Length or chunked (to compress it, use Content-Encoding: gzip)"
        )
    else:
        detail = str(error.body)
    body = problems.document(code, detail, type_uri=type_uri, title=title)
    headers = [("Content-Type", problems.PROBLEM_JSON)]
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        headers.append(("Retry-After", str(retry_after)))
    return f"{code} {reason}", headers, body


def _malformed(reason: str) -> str:
    for start, words in _MALFORMED:
        if reason.startswith(start):
            return words + _MALFORMED_SEE
    return _MALFORMED_HEADERS + _MALFORMED_SEE
