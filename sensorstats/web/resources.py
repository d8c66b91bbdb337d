"""The HTTP resources: translate between requests and the core, nothing more."""

from __future__ import annotations

import json

import falcon

from sensorstats.core.batch import Limits, parse_batch, sensor_id_problem
from sensorstats.core.errors import InvalidSensorId, PayloadTooLarge
from sensorstats.core.idempotency import IdempotencyKey, fingerprint, parse_key_header
from sensorstats.ops.metrics import Metrics
from sensorstats.ops.readiness import Readiness
from sensorstats.store import Store
from sensorstats.store.ahead import AHEAD, Ready, ReceivedRequest, WriteAhead
from sensorstats.web.auth import client_identity
from sensorstats.web.problems import Problem

DATA_PATH = "/data"
STATISTICS_PREFIX = "/statistics/"
# The largest body written ahead (see `DataWriteAhead`): parsed on the event
# loop, so that a big batch never holds it for long. About 1,300 measurements;
# larger batches are parsed and written by a worker thread.
WRITE_AHEAD_MAX_BYTES = 128 * 1024
IDEMPOTENCY_HEADER = "IDEMPOTENCY_KEY"  # as the server's request headers name it

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
_READ_METHODS = ("GET", "HEAD")


class Resource:
    """What every resource answers alike: ``OPTIONS`` is 204 with ``Allow`` (CONTRACT §1).

    Falcon's own OPTIONS answers 200; HEAD is served by each resource's
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
    resp.set_header("Allow", "GET, HEAD, POST, DELETE, OPTIONS")


class DataResource(Resource):
    """``POST /data``: validate a batch as a whole, then store it."""

    def __init__(self, store: Store, limits: Limits, max_body_bytes: int) -> None:
        self._store = store
        self._limits = limits
        self._max_body_bytes = max_body_bytes

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        ahead = AHEAD.get()
        if isinstance(ahead, WriteAhead):
            # Validated and sent on the event loop (`DataWriteAhead`): only
            # the outcome is left to take, from the store as for any write.
            self._store.apply(ahead.batch)
            resp.status = falcon.HTTP_204
            return
        header = req.get_header("Idempotency-Key")
        client_key = None if header is None else parse_key_header(header)
        deltas = parse_batch(self._read_body(req), self._limits)
        if deltas:
            key = None
            if client_key is not None:
                # Scoped by who sent it, so that one client's keys never
                # collide with another's; "" for everyone without tokens.
                scope = client_identity(req)
                key = IdempotencyKey(scope, client_key, fingerprint(deltas))
            self._store.apply(deltas, key)
        resp.status = falcon.HTTP_204

    def _read_body(self, req: falcon.Request) -> bytes:
        # Waitress always declares the length, de-chunking bodies first, so
        # checking it refuses an oversized body before reading it.
        limit = self._max_body_bytes
        declared = req.content_length
        if declared is not None and declared > limit:
            raise PayloadTooLarge(f"the body has {declared} bytes; the limit is {limit}")
        body: bytes = req.bounded_stream.read()
        return body


class StatisticsResource(Resource):
    """``GET`` and ``DELETE /statistics/{sensor_id}``; the id is the rest of the path."""

    def __init__(self, store: Store, limits: Limits) -> None:
        self._store = store
        self._limits = limits

    def on_get(self, req: falcon.Request, resp: falcon.Response, sensor_id: str) -> None:
        stats = self._store.get(self._sensor(req, sensor_id))
        resp.data = json.dumps(stats.as_json(), ensure_ascii=False).encode()
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
            raw = req.env["PATH_INFO"].encode("iso-8859-1")
            try:
                sensor = raw[
                    raw.index(STATISTICS_PREFIX.encode()) + len(STATISTICS_PREFIX) :
                ].decode()
            except (ValueError, UnicodeDecodeError):
                raise InvalidSensorId("the sensor id is not valid UTF-8") from None
        if not sensor:
            raise Problem(falcon.HTTP_404, detail="no sensor id in the path")
        problem = sensor_id_problem(sensor, self._limits)
        if problem:
            raise InvalidSensorId(f"the sensor id {problem}")
        return sensor


class StatisticsReadAhead:
    """Starts the store's read for ``GET /statistics/{id}`` as soon as the request is in.

    A `sensorstats.store.ahead.AheadRoute`: the server calls it on its event loop,
    so it must not block. It finds the sensor id as `StatisticsResource`
    does; should the two ever disagree, the resource's `get` finds no read
    for its own sensor and reads by itself, as for any request not read ahead.
    """

    def __init__(self, store: Store, limits: Limits) -> None:
        self._store = store
        self._limits = limits

    def start(self, request: ReceivedRequest, ready: Ready) -> bool:
        path = request.path
        if request.command not in _READ_METHODS or not path.startswith(STATISTICS_PREFIX):
            return False
        try:  # PATH_INFO: the path's bytes as Latin-1; an id is UTF-8
            sensor = path[len(STATISTICS_PREFIX) :].encode("iso-8859-1").decode()
        except UnicodeError:
            return False  # answered 400 by the resource
        if not sensor or sensor_id_problem(sensor, self._limits):
            return False
        return self._store.read_ahead(sensor, ready) is not None


class DataWriteAhead:
    """Starts the store's write for ``POST /data`` as soon as the request is in.

    A `sensorstats.store.ahead.AheadRoute`, called on the event loop. It starts a
    write exactly where `DataResource.on_post` would reach the store without
    an idempotency key: no ``Idempotency-Key`` header, a body within the
    limit that `parse_batch` accepts, at least one measurement. And only for
    bodies up to `WRITE_AHEAD_MAX_BYTES`, and batches that fit in one
    transaction (the store's `write_ahead` says). Everything else, errors
    included, is served by a worker thread, which parses the body itself.
    Never used when tokens are configured (`app.ahead_route`): the token is
    checked by the app, and a client without one must not write.
    """

    def __init__(self, store: Store, limits: Limits, max_body_bytes: int) -> None:
        self._store = store
        self._limits = limits
        self._max_bytes = min(max_body_bytes, WRITE_AHEAD_MAX_BYTES)

    def start(self, request: ReceivedRequest, ready: Ready) -> bool:
        if (
            request.command != "POST"
            or request.path != DATA_PATH
            or IDEMPOTENCY_HEADER in request.headers
            or request.body_length > self._max_bytes
        ):
            return False
        body = request.body()
        try:
            deltas = parse_batch(body, self._limits)
        except Exception:  # the worker parses again and answers the error
            return False
        if not deltas:
            return False  # an empty batch: nothing to write
        return self._store.write_ahead(deltas, ready) is not None


class AheadRoutes:
    """The first of `routes` that starts a call for a request (see `sensorstats.store.ahead`)."""

    def __init__(self, *routes: StatisticsReadAhead | DataWriteAhead) -> None:
        self._routes = routes

    def start(self, request: ReceivedRequest, ready: Ready) -> bool:
        return any(route.start(request, ready) for route in self._routes)


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
            type_uri="urn:sensorstats:problem:not-ready",
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
