"""The application factory: settings and collaborators in, a WSGI app out."""

from __future__ import annotations

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
from sensorstats.web.openapi import openapi_document
from sensorstats.web.resources import (
    AheadRoutes,
    DataResource,
    DataWriteAhead,
    HealthResource,
    LiveResource,
    MetricsResource,
    OpenApiResource,
    StatisticsReadAhead,
    StatisticsResource,
    server_options,
)
from sensorstats.web.telemetry import RequestTelemetry

ROUTES = ("/data", "/statistics/{sensor_id:path}", "/healthz", "/livez")
# For operators and client authors: never behind a token, never asking the store.
METRICS_ROUTE = "/metrics"
OPENAPI_ROUTE = "/openapi.json"
# The request target "*" (RFC 9110 §7.1), which only OPTIONS may use.
ASTERISK = r"^\*$"


def create_app(
    settings: Settings,
    store: Store,
    readiness: Readiness | None = None,
    metrics: Metrics | None = None,
) -> falcon.App[Any, Any]:
    """Wire `store` (and `readiness`, made from the store if not given) into the routes.

    `metrics` is the process's registry; an app of its own gets one if not given.
    """
    metrics = metrics or Metrics()
    store = metrics.measured(store)
    limits = _limits(settings)
    readiness = readiness or Readiness(store)
    metrics.watch_readiness(readiness)
    data, statistics, health, live = ROUTES
    # First: it sees every request, and every answer last, whoever refused it.
    middleware: list[Any] = [RequestTelemetry(metrics)]
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
    return app


def ahead_route(settings: Settings, store: Store) -> AheadRoutes | None:
    """Whose store calls the server starts ahead (see `sensorstats.store.ahead`); None: nobody's.

    A token is checked by the app, once the call ahead is done, and a
    client without one must make the store neither write nor read: no writes
    ahead when tokens are configured, no reads ahead when reads need one.
    None for a store that never calls ahead (the embedded store).
    """
    if not store.calls_ahead:
        return None
    limits = _limits(settings)
    routes: list[StatisticsReadAhead | DataWriteAhead] = []
    if not settings.read_requires_token:
        routes.append(StatisticsReadAhead(store, limits))
    if _token_source(settings) is None:
        routes.append(DataWriteAhead(store, limits, settings.max_body_bytes))
    return AheadRoutes(*routes) if routes else None


def _limits(settings: Settings) -> Limits:
    return Limits(max_batch=settings.max_batch, max_sensor_id=settings.max_sensor_id)


def _token_source(settings: Settings) -> TokenSource | None:
    if settings.api_tokens is not None:
        return StaticTokens(settings.api_tokens)
    if settings.api_tokens_file:
        return TokenFile(settings.api_tokens_file)
    return None
