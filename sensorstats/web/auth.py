"""Bearer tokens on requests: who may change statistics, and, if configured, read them.

The tokens themselves, and how they are compared, are `sensorstats.core.tokens`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import falcon

from sensorstats.core.tokens import REALM, TokenSource
from sensorstats.web import problems
from sensorstats.web.early import started_call
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

    def admits_early(self, method: str, path: str, header: Callable[[str], str | None]) -> bool:
        """Whether a request the server would start a store call for has a valid token.

        Asked for ``GET /statistics/{id}`` and ``POST /data`` only, on the
        event loop, before the call starts; the app checks again when it
        serves the request (`process_resource`), with the same tokens.
        """
        if method in ("GET", "HEAD") and not self._protect_reads:
            return True
        return self._identify(header("Authorization")) is not None

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, params: dict[str, Any]
    ) -> None:
        if not self._needs_token(req, resource):
            return
        authorization = req.get_header("Authorization")
        identity = self._identify(authorization)
        if identity is None and started_call(req.env) is not None:
            # Admitted when its store call started (`admits_early`): the
            # call was made, and refusing now would deny what was done. Only
            # a token withdrawn in between gets here; it counts as anonymous.
            identity = ""
        if identity is not None:
            req.context.client = identity
            return
        scheme = (authorization or "").strip().partition(" ")[0]
        if scheme.lower() != "bearer":
            detail = (
                "this request needs a bearer token: Authorization: Bearer <token>"
                if not scheme
                else "only bearer tokens are accepted: Authorization: Bearer <token>"
            )
            raise _unauthorized(detail, f'Bearer realm="{REALM}"')
        raise _unauthorized(
            "the bearer token is not valid",
            f'Bearer realm="{REALM}", error="invalid_token", '
            'error_description="the token is not valid"',
        )

    def _identify(self, authorization: str | None) -> str | None:
        """The client a bearer ``Authorization`` header names; None if it names none."""
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        identity: str | None = self._tokens.current().identify(credentials.strip())
        return identity

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
        type_uri=problems.UNAUTHORIZED,
        title="Unauthorized",
        detail=detail,
        headers={"WWW-Authenticate": challenge},
    )
