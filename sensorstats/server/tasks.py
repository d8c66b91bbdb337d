"""Waitress's tasks: keep-alive on bodiless answers, the started call in the environ, errors."""

from __future__ import annotations

from operator import itemgetter
from typing import Any

from waitress.task import ErrorTask, WSGITask
from waitress.utilities import build_http_date

from sensorstats.server.answers import problem_response
from sensorstats.web.early import STARTED_CALL
from sensorstats.web.request_id import HEADER as REQUEST_ID_HEADER
from sensorstats.web.request_id import request_id_for
from sensorstats.web.telemetry import RECEIVED_AT, RequestTelemetry

# How waitress names the request id header in a parsed request's headers.
WAITRESS_REQUEST_ID = REQUEST_ID_HEADER.upper().replace("-", "_")


# Header names as waitress capitalises them ("content-type": "Content-Type"),
# and the Date header of the current second: both the same for every answer.
_CAPITALISED: dict[str, str] = {}
_NAME = itemgetter(0)


def _capitalised(name: str) -> str:
    capitalised = _CAPITALISED.get(name)
    if capitalised is None:
        capitalised = "-".join([part.capitalize() for part in name.split("-")])
        if len(_CAPITALISED) < 256:  # names are the app's, not the client's; bounded anyway
            _CAPITALISED[name] = capitalised
    return capitalised


class _HttpDate:
    """`build_http_date` of a time, formatted once per second (its resolution)."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            # Two threads may both format a new second: the same text either way.
            self._text = build_http_date(second)
            self._second = second
        return self._text


_http_date = _HttpDate()


def _asks_to_close(request: Any) -> bool:
    tokens = request.headers.get("CONNECTION", "").lower().split(",")
    return "close" in (token.strip() for token in tokens)


class KeepAliveTask(WSGITask):  # type: ignore[misc]  # waitress is untyped
    """Waitress's WSGI task; a bodiless HTTP/1.1 response keeps the connection."""

    _bodiless_keep_alive = False
    wrote_header: bool  # waitress's
    response_headers: list[tuple[str, str]]  # waitress's

    def get_environment(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environment()
        environ[RECEIVED_AT] = getattr(self.request, "completed_at", None)
        call = getattr(self.request, "started_call", None)
        if call is not None:
            environ[STARTED_CALL] = call  # the resource takes its outcome
        return environ

    def build_response_header(self) -> bytes:
        if getattr(self.channel.server, "draining", False):
            self.set_close_on_finish()
        # Waitress closes after any response without Content-Length, so that
        # the end of the body is the end of the connection. A 204 or 304 has
        # no body (and must not carry Content-Length), so nothing needs
        # delimiting: keep the connection unless the client asked to close.
        self._bodiless_keep_alive = (
            self.version == "1.1"
            and not self.has_body
            and not self.close_on_finish
            and not _asks_to_close(self.request)
        )
        try:
            return self._response_head()
        finally:
            self._bodiless_keep_alive = False

    def _response_head(self) -> bytes:
        """Exactly what waitress's ``build_response_header`` makes, for less work.

        The same decisions in the same order, down to the bytes; only done
        cheaper, since every answer pays for it: header names capitalised
        once per name, the Date header formatted once per second, the
        answer's status (`has_body`) looked at once.
        ``tests/unit/server/test_tasks.py`` holds it to waitress's own.
        """
        version = self.version
        connection = self.request.headers.get("CONNECTION", "").lower()
        has_body = self.has_body
        headers = []
        content_length_header = date_header = server_header = None
        for raw_name, value in self.response_headers:
            name = _capitalised(raw_name)
            if name == "Content-Length":
                if not has_body:
                    continue
                content_length_header = value
            elif name == "Date":
                date_header = value
            elif name == "Server":
                server_header = value
            headers.append((name, value))
        self.response_headers = headers
        if content_length_header is None and self.content_length is not None and has_body:
            content_length_header = str(self.content_length)
            headers.append(("Content-Length", content_length_header))
        if version == "1.0":
            if connection == "keep-alive" and content_length_header:
                headers.append(("Connection", "Keep-Alive"))
            else:
                self.set_close_on_finish()
        elif version == "1.1":
            if connection == "close":
                self.set_close_on_finish()
            if not content_length_header:
                # No Transfer-Encoding or Content-Length on 1xx, 204, 304 (RFC 9112).
                if has_body:
                    headers.append(("Transfer-Encoding", "chunked"))
                    self.chunked_response = True
                if not self.close_on_finish:
                    self.set_close_on_finish()
        else:
            raise AssertionError("neither HTTP/1.0 or HTTP/1.1")
        ident = self.channel.server.adj.ident
        if not server_header:
            if ident:
                headers.append(("Server", ident))
        else:
            headers.append(("Via", ident or "waitress"))
        if not date_header:
            headers.append(("Date", _http_date(self.start_time)))
        # Stable: same-named headers keep their order (RFC 9110 §5.3).
        lines = [f"HTTP/{version} {self.status}"]
        lines += [f"{name}: {value}" for name, value in sorted(headers, key=_NAME)]
        lines.append("\r\n")
        return "\r\n".join(lines).encode("latin-1")

    def set_close_on_finish(self) -> None:
        if not self._bodiless_keep_alive:
            super().set_close_on_finish()

    def write(self, data: bytes) -> None:
        # Waitress sends the head and then the body, each at once (its
        # `send_bytes` is 1): two system calls and two TCP segments for
        # every answer with a body. A whole body written in one piece, as
        # falcon writes every answer, goes out with its head. (With its
        # length declared, waitress never chunks it.)
        if (
            data
            and not self.wrote_header
            and self.complete
            and self.has_body
            and self.content_length == len(data)
        ):
            head = self.build_response_header()
            self.wrote_header = True
            self.content_bytes_written += len(data)
            self.channel.write_soon(head + data)
            return
        super().write(data)


class ProblemErrorTask(ErrorTask):  # type: ignore[misc]  # waitress is untyped
    """Waitress's error answers as problem documents; the connection then lingers and closes."""

    def execute(self) -> None:
        channel = self.channel
        status, headers, body = problem_response(
            self.request.error, channel.adj, channel.policy.max_body_bytes
        )
        self.status = status
        self.response_headers.extend(headers)
        # HEAD: the same headers, no body (waitress would send it).
        if getattr(self.request, "command", "") == "HEAD":
            body = b""
        self.response_headers.append((REQUEST_ID_HEADER, self._request_id(len(body))))
        self.set_close_on_finish()
        self.channel.linger_wanted = True
        self.content_length = len(body)
        self.write(body)

    def _request_id(self, sent: int) -> str:
        """The id to echo; the access line and the metrics hear of the answer."""
        request = self.request
        sent_id = request.headers.get(WAITRESS_REQUEST_ID)
        telemetry: RequestTelemetry | None = self.channel.server.telemetry
        if telemetry is None:
            return request_id_for(sent_id)
        refused_unread = getattr(request, "stand_in", False)  # no request line was read
        return telemetry.server_answered(
            sent_id=sent_id,
            user_agent=request.headers.get("USER_AGENT"),
            # A head refused as malformed may lack either.
            method="-" if refused_unread else getattr(request, "command", None) or "-",
            path="-" if refused_unread else getattr(request, "request_uri", None) or "-",
            status=request.error.code,
            sent=sent,
            client=self.channel.addr[0] if self.channel.addr else None,
            started=getattr(request, "started_at", None),
        )
