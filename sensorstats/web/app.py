"""The application factory: settings and collaborators in, a WSGI app out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import falcon

from sensorstats.core.batch import Limits
from sensorstats.core.tokens import StaticTokens, TokenFile, TokenSource
from sensorstats.ops.metrics import Metrics
from sensorstats.ops.readiness import Readiness
from sensorstats.settings import Settings
from sensorstats.store import Store
from sensorstats.web import problems
from sensorstats.web.auth import BearerAuth
from sensorstats.web.early import DATA_PATH, STATISTICS_PREFIX, EarlyCalls
from sensorstats.web.methods import KnownMethods
from sensorstats.web.openapi import openapi_document
from sensorstats.web.resources import (
    DataResource,
    HealthResource,
    LiveResource,
    MetricsResource,
    OpenApiResource,
    StatisticsResource,
    server_options,
)
from sensorstats.web.telemetry import RequestTelemetry

ROUTES = (DATA_PATH, STATISTICS_PREFIX + "{sensor_id:path}", "/healthz", "/livez")
HEALTH_ROUTE, LIVE_ROUTE = ROUTES[2:]
# For operators and client authors: never behind a token, never asking the store.
METRICS_ROUTE = "/metrics"
# GET and HEAD of these are answered on the server's event loop, never queued
# behind busy workers: their responders never block (/healthz reads a
# cached readiness, /metrics only counters). A scrape must answer when the
# workers are all busy, which is when its numbers matter most.
LOOP_PATHS = frozenset({HEALTH_ROUTE, LIVE_ROUTE, METRICS_ROUTE})
OPENAPI_ROUTE = "/openapi.json"
# The request target "*" (RFC 9110 §7.1), which only OPTIONS may use.
ASTERISK = r"^\*$"


@dataclass(frozen=True)
class Web:
    """The WSGI app, and the store calls the server may start for it on its event loop."""

    app: falcon.App[Any, Any]
    early: EarlyCalls | None  # None: nothing starts early (see `sensorstats.web.early`)


def create_app(
    settings: Settings,
    store: Store,
    readiness: Readiness | None = None,
    metrics: Metrics | None = None,
) -> falcon.App[Any, Any]:
    """The WSGI app alone (see `create_web`)."""
    return create_web(settings, store, readiness, metrics).app


def create_web(
    settings: Settings,
    store: Store,
    readiness: Readiness | None = None,
    metrics: Metrics | None = None,
) -> Web:
    """Wire `store` (and `readiness`, made from the store if not given) into the routes.

    `metrics` is the process's registry; an app of its own gets one if not
    given. The early calls see the app's own middleware: what it would
    refuse starts nothing.
    """
    metrics = metrics or Metrics()
    store = metrics.measured(store)
    limits = _limits(settings)
    readiness = readiness or Readiness(store)
    metrics.watch_readiness(readiness)
    data, statistics, health, live = ROUTES
    # First: it sees every request, and every answer last, whoever refused it.
    # Then a method no resource implements is refused before anything else.
    middleware: list[Any] = [RequestTelemetry(metrics), KnownMethods()]
    tokens = _token_source(settings)
    if tokens is not None:
        middleware.append(
            BearerAuth(
                tokens,
                protect_reads=settings.read_requires_token,
                open_routes=(health, live, METRICS_ROUTE, OPENAPI_ROUTE),
            )
        )
    app = falcon.App(middleware=middleware)
    problems.register(app)
    app.add_route(data, DataResource(store, limits, settings.max_body_bytes))
    app.add_route(statistics, StatisticsResource(store, limits))
    app.add_route(health, HealthResource(readiness))
    app.add_route(live, LiveResource())
    app.add_route(METRICS_ROUTE, MetricsResource(metrics))
    app.add_route(OPENAPI_ROUTE, OpenApiResource(openapi_document(settings)))
    app.add_sink(server_options, ASTERISK)
    early = EarlyCalls(store, limits, settings.max_body_bytes, middleware)
    return Web(app, early if early.enabled else None)


def _limits(settings: Settings) -> Limits:
    return Limits(max_batch=settings.max_batch, max_sensor_id=settings.max_sensor_id)


def _token_source(settings: Settings) -> TokenSource | None:
    if settings.api_tokens is not None:
        return StaticTokens(settings.api_tokens)
    if settings.api_tokens_file:
        return TokenFile(settings.api_tokens_file)
    return None
