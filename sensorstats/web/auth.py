"""Bearer tokens on requests: who may change statistics, and, if configured, read them.

The tokens themselves, and how they are compared, are `sensorstats.core.tokens`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import falcon

from sensorstats.core.tokens import REALM, TokenSource
from sensorstats.web.problems import Problem


def client_identity(req: falcon.Request) -> str:
    """Who sent `req`, as `BearerAuth` established; "" when tokens are not configured."""
    identity: str = getattr(req.context, "client", "")
    return identity


class BearerAuth:
    """Falcon middleware: requests that change state need a valid bearer token.

    POST, PUT, PATCH and DELETE always do; GET and HEAD only with
    `protect_reads`; OPTIONS and the `open_routes` (the probes) never. A
    method the resource does not serve is left to falcon's 405.
    """

    def __init__(
        self, tokens: TokenSource, *, protect_reads: bool, open_routes: Iterable[str]
    ) -> None:
        self._tokens = tokens
        self._protect_reads = protect_reads
        self._open_routes = frozenset(open_routes)

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, params: dict[str, Any]
    ) -> None:
        if not self._needs_token(req, resource):
            return
        scheme, _, credentials = (req.get_header("Authorization") or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            detail = (
                "this request needs a bearer token: Authorization: Bearer <token>"
                if not scheme
                else "only bearer tokens are accepted: Authorization: Bearer <token>"
            )
            raise _unauthorized(detail, f'Bearer realm="{REALM}"')
        identity = self._tokens.current().identify(credentials.strip())
        if identity is None:
            raise _unauthorized(
                "the bearer token is not valid",
                f'Bearer realm="{REALM}", error="invalid_token", '
                'error_description="the token is not valid"',
            )
        req.context.client = identity

    def _needs_token(self, req: falcon.Request, resource: Any) -> bool:
        method = req.method
        if resource is None or method == "OPTIONS" or req.uri_template in self._open_routes:
            return False
        if not hasattr(resource, f"on_{method.lower()}"):
            return False
        return self._protect_reads or method not in ("GET", "HEAD")


def _unauthorized(detail: str, challenge: str) -> Problem:
    return Problem(
        falcon.HTTP_401,
        type_uri="urn:sensorstats:problem:unauthorized",
        title="Unauthorized",
        detail=detail,
        headers={"WWW-Authenticate": challenge},
    )
