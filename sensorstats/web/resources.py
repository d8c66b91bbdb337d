"""The HTTP resources: translate between requests and the core, nothing more."""

from __future__ import annotations

import json

import falcon

from sensorstats.core.batch import Limits, sensor_id_problem
from sensorstats.core.errors import InvalidSensorId, PayloadTooLarge
from sensorstats.core.idempotency import IdempotencyKey, fingerprint
from sensorstats.ops.metrics import Metrics
from sensorstats.ops.readiness import Readiness
from sensorstats.store import Store
from sensorstats.store.calls import StartedRead, StartedWrite
from sensorstats.web import problems
from sensorstats.web.auth import client_identity
from sensorstats.web.early import (
    STATISTICS_PREFIX,
    body_too_large,
    prepare_post,
    sensor_of_path,
    started_call,
)
from sensorstats.web.methods import SERVED_METHODS
from sensorstats.web.problems import Problem

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
# Made once: `json.dumps` with an option builds an encoder on every call.
_STATISTICS_JSON = json.JSONEncoder(ensure_ascii=False)


class Resource:
    """What every resource answers alike: ``OPTIONS`` is 204 with ``Allow``.

    Falcon's own OPTIONS answers 200, where the HTTP contract
    (``sensorstats/web/README.md``) says 204; HEAD is served by each resource's
    ``on_head = on_get``, and falcon drops the body but keeps the headers.
    """

    def on_options(self, req: falcon.Request, resp: falcon.Response, **params: str) -> None:
        allowed = [m for m in _METHODS if hasattr(self, f"on_{m.lower()}")]
        resp.status = falcon.HTTP_204
        resp.set_header("Allow", ", ".join([*allowed, "OPTIONS"]))


def server_options(req: falcon.Request, resp: falcon.Response, **params: str) -> None:
    """``OPTIONS *``: what the server as a whole supports (RFC 9110 §9.3.7)."""
    if req.method != "OPTIONS":
        raise Problem(falcon.HTTP_400, detail="only OPTIONS may ask about '*'")
    resp.status = falcon.HTTP_204
    resp.set_header("Allow", ", ".join(SERVED_METHODS))


class DataResource(Resource):
    """``POST /data``: validate a batch as a whole, then store it."""

    def __init__(self, store: Store, limits: Limits, max_body_bytes: int) -> None:
        self._store = store
        self._limits = limits
        self._max_body_bytes = max_body_bytes

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        call = started_call(req.env)
        if isinstance(call, StartedWrite):
            # Prepared and sent on the event loop (`EarlyCalls`): only the
            # outcome is left to take.
            call.result()
            resp.status = falcon.HTTP_204
            return
        post = prepare_post(
            req.get_header, self._read_body(req), self._limits, self._max_body_bytes
        )
        if post.deltas:
            key = None
            if post.client_key is not None:
                # Scoped by who sent it, so that one client's keys never
                # collide with another's; "" for everyone without tokens.
                scope = client_identity(req)
                key = IdempotencyKey(scope, post.client_key, fingerprint(post.deltas))
            self._store.apply(post.deltas, key)
        resp.status = falcon.HTTP_204

    def _read_body(self, req: falcon.Request) -> bytes:
        # Waitress always declares the length, de-chunking bodies first, so
        # checking it refuses an oversized body before reading it.
        limit = self._max_body_bytes
        declared = req.content_length
        if declared is not None and declared > limit:
            raise PayloadTooLarge(body_too_large(f"has {declared} bytes", limit))
        body: bytes = req.bounded_stream.read()
        return body


class StatisticsResource(Resource):
    """``GET`` and ``DELETE /statistics/{sensor_id}``; the id is the rest of the path."""

    def __init__(self, store: Store, limits: Limits) -> None:
        self._store = store
        self._limits = limits

    def on_get(self, req: falcon.Request, resp: falcon.Response, sensor_id: str) -> None:
        sensor = self._sensor(req, sensor_id)
        call = started_call(req.env)
        if isinstance(call, StartedRead) and call.sensor == sensor:
            stats = call.result()  # read on the event loop (`EarlyCalls`)
        else:
            stats = self._store.get(sensor)
        resp.data = _STATISTICS_JSON.encode(stats.as_json()).encode()
        resp.content_type = falcon.MEDIA_JSON

    on_head = on_get

    def on_delete(self, req: falcon.Request, resp: falcon.Response, sensor_id: str) -> None:
        self._store.delete(self._sensor(req, sensor_id))
        resp.status = falcon.HTTP_204

    def _sensor(self, req: falcon.Request, routed: str) -> str:
        sensor = routed
        if "\ufffd" in routed:
            # Falcon decodes the path leniently; an id must be exactly what was
            # sent, so invalid UTF-8 is an error rather than U+FFFD.
            path = req.env["PATH_INFO"]
            start = path.find(STATISTICS_PREFIX)
            decoded = sensor_of_path(path[start:]) if start >= 0 else None
            if decoded is None:
                raise InvalidSensorId("the sensor id is not valid UTF-8")
            sensor = decoded
        if not sensor:
            raise Problem(falcon.HTTP_404, detail="no sensor id in the path")
        problem = sensor_id_problem(sensor, self._limits)
        if problem:
            raise InvalidSensorId(f"the sensor id {problem}")
        return sensor


class HealthResource(Resource):
    """``GET /healthz``: 204 while ready to serve, 503 otherwise (never 200).

    Served on the server's event loop: `Readiness.status` never waits on the store.
    """

    def __init__(self, readiness: Readiness) -> None:
        self._readiness = readiness

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        ready, reason = self._readiness.status()
        if ready:
            resp.status = falcon.HTTP_204
            return
        raise Problem(
            falcon.HTTP_503,
            type_uri=problems.NOT_READY,
            title="Not ready",
            detail=reason,
            headers={"Retry-After": "1"},
        )

    on_head = on_get


class LiveResource(Resource):
    """``GET /livez``: 204 while the process serves; never asks the store."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.status = falcon.HTTP_204

    on_head = on_get


class MetricsResource(Resource):
    """``GET /metrics``: the Prometheus text format (OpenMetrics if asked for).

    Served on the server's event loop like the probes, so a scrape answers
    while every worker is busy: it reads counters, never the store.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data, resp.content_type = self._metrics.exposition(req.get_header("Accept"))

    on_head = on_get


class OpenApiResource(Resource):
    """``GET /openapi.json``: the OpenAPI 3.1 document of this instance."""

    def __init__(self, document: dict[str, object]) -> None:
        self._body = json.dumps(document, indent=1).encode()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = self._body
        resp.content_type = falcon.MEDIA_JSON

    on_head = on_get
