"""What every request leaves behind: its id on the answer, an access line, its metrics.

`RequestTelemetry` is falcon middleware, first in the app's list, so its
``process_request`` runs before anything can refuse the request and its
``process_response`` runs last, after error handlers, with the final status.
It also hears about the answers waitress gives by itself (malformed HTTP,
timeouts, oversized heads; see `sensorstats.server.answers`) through `server_answered`.

The access line, one per request, at INFO on the ``sensorstats.access``
logger: method, route template, path (as sent, percent-encoding kept),
status, duration, body bytes in and out, client address, user agent and the
request id. A request's duration runs from the moment the server had all of
it (`RECEIVED_AT`, set by `sensorstats.server.tasks`) to its answer: the wait for a
worker thread, or for a store call started ahead (`sensorstats.store.calls`),
counts, as the client sees it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import falcon

from sensorstats.ops.logs import REQUEST_ID, AccessEntry, log_access
from sensorstats.ops.metrics import UNMATCHED, Metrics, method_label
from sensorstats.web.request_id import HEADER, request_id_for

DATA_ROUTE = "/data"
# The WSGI environ key holding when the server had the whole request (monotonic).
RECEIVED_AT = "sensorstats.received_at"
# The route label of ``OPTIONS *``, which a sink answers, not a route.
ASTERISK_ROUTE = "*"

# A falcon template's field converter (``{sensor_id:path}``), left out of
# labels so that routes read as the OpenAPI document names them.
_CONVERTER = re.compile(r"\{(\w+):[^}]*\}")

# Statuses whose answers carry no body whatever the app set (RFC 9110).
_BODILESS = frozenset({204, 304})


class RequestTelemetry:
    """Falcon middleware: request ids, the access line and request metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._routes: dict[str, str] = {}  # falcon template -> route label

    def admits_early(self, method: str, path: str, header: Callable[[str], str | None]) -> bool:
        """Always: it observes requests, and refuses none (`sensorstats.web.early`)."""
        return True

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        context = req.context
        context.started = req.env.get(RECEIVED_AT) or time.monotonic()
        request_id = request_id_for(req.get_header(HEADER))
        context.request_id = request_id
        REQUEST_ID.set(request_id)  # every line logged while serving it carries it

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        context = req.context
        started: float | None = getattr(context, "started", None)
        if started is None:
            # Falcon refused the request before any middleware ran.
            request_id = request_id_for(req.get_header(HEADER))
            seconds = 0.0
        else:
            request_id = context.request_id
            seconds = time.monotonic() - started
        resp.set_header(HEADER, request_id)
        status = resp.status_code
        route = self._route(req)
        method = method_label(req.method)
        received = req.content_length or 0
        sent = _body_length(req, resp, status)
        self._metrics.request_answered(method, route, status, seconds, received, sent)
        if route == DATA_ROUTE and method == "POST" and (400 <= status < 500 or status == 507):
            self._metrics.batch_rejected(getattr(context, "problem", None) or str(status))
        try:
            log_access(
                AccessEntry(
                    time.time(),
                    request_id,
                    req.method,
                    route,
                    req.env.get("REQUEST_URI") or req.relative_uri,
                    status,
                    seconds,
                    received,
                    sent,
                    req.remote_addr,
                    req.user_agent,
                )
            )
        finally:
            REQUEST_ID.set(None)

    def _route(self, req: falcon.Request) -> str:
        template = req.uri_template
        if template is None:
            return ASTERISK_ROUTE if req.path == "*" else UNMATCHED
        route = self._routes.get(template)
        if route is None:
            route = self._routes[template] = _CONVERTER.sub(r"{\1}", template)
        return route

    def server_answered(
        self,
        *,
        sent_id: str | None,
        user_agent: str | None,
        method: str,
        path: str,
        status: int,
        sent: int,
        client: str | None,
        started: float | None,
    ) -> str:
        """The server answered a request itself with `status`; returns the id to echo.

        `sent_id` and `user_agent` are the client's headers, if it sent them;
        `method` and `path` are "-" for a head refused before its request
        line was read.
        """
        request_id = request_id_for(sent_id)
        seconds = 0.0 if started is None else time.monotonic() - started
        self._metrics.request_answered(method_label(method), UNMATCHED, status, seconds, 0, sent)
        if status == 413 and method == "POST" and path.split("?", 1)[0] == DATA_ROUTE:
            # A batch refused on its declared length is as rejected as one the app refused.
            self._metrics.batch_rejected("payload-too-large")
        log_access(
            AccessEntry(
                time.time(),
                request_id,
                method,
                UNMATCHED,
                path,
                status,
                seconds,
                0,
                sent,
                client,
                user_agent,
                by_server=True,
            )
        )
        return request_id


def _body_length(req: falcon.Request, resp: falcon.Response, status: int) -> int:
    """Bytes of body the answer carries; falcon drops it for HEAD and bodiless statuses."""
    if req.method == "HEAD" or status in _BODILESS or status < 200:
        return 0
    body = resp.render_body()
    return len(body) if body else 0
