"""Request ids: the client's ``X-Request-ID`` when it is sane, else a new one.

A client or a proxy in front may send ``X-Request-ID`` to follow one request
through several services' logs; it is kept when it is 1 to `MAX_LENGTH`
printable ASCII characters without spaces (a value that cannot break a log
line or a header), and replaced otherwise. New ids are 32 random hex digits,
unique across instances and restarts.
"""

from __future__ import annotations

import re
import secrets

HEADER = "X-Request-ID"
MAX_LENGTH = 128
# WSGI's and waitress's spelling of the header.
ENVIRON_KEY = "HTTP_X_REQUEST_ID"
WAITRESS_KEY = "X_REQUEST_ID"

_SANE = re.compile(rf"[\x21-\x7e]{{1,{MAX_LENGTH}}}")


def new_request_id() -> str:
    """A fresh id: 128 random bits as 32 hex digits."""
    return secrets.token_hex(16)


def request_id_for(header: str | None) -> str:
    """The id of a request that sent `header` (None if it sent none)."""
    if header is not None and _SANE.fullmatch(header):
        return header
    return new_request_id()
