"""Methods that no resource here implements: 501 on every path (RFC 9110 §15.6.2).

Falcon answers a method outside its own list with 400 ("Invalid HTTP
method") on a route and with 404 elsewhere, and a WebDAV method with 405, as
if another resource might serve it. None does: a method HTTP itself does not
define (`HTTP_METHODS`) is 501 wherever it is sent, before a token or a
route is looked at. A method HTTP defines that a route does not serve stays
405 with ``Allow``, as falcon answers it.
"""

from __future__ import annotations

from collections.abc import Callable

import falcon

from sensorstats.ops.metrics import HTTP_METHODS
from sensorstats.web.problems import Problem

# What of an unknown method a detail repeats: a method may be as long as a head.
_SHOWN_CHARACTERS = 40
# The methods the service serves somewhere: `OPTIONS *` answers them in Allow.
SERVED_METHODS = ("GET", "HEAD", "POST", "DELETE", "OPTIONS")


class KnownMethods:
    """Falcon middleware: 501 for a method HTTP does not define."""

    def admits_early(self, method: str, path: str, header: Callable[[str], str | None]) -> bool:
        """Those it lets through (`sensorstats.web.early`)."""
        return method in HTTP_METHODS

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        method = req.method
        if method in HTTP_METHODS:
            return
        shown = method if len(method) <= _SHOWN_CHARACTERS else method[:_SHOWN_CHARACTERS] + "..."
        raise Problem(
            falcon.HTTP_501,
            detail=(
                f"no resource here implements the method {shown}; "
                f"this service serves {', '.join(SERVED_METHODS)}"
            ),
        )
