"""Request ids: the client's ``X-Request-ID`` when it is sane, else a new one.

A client or a proxy in front may send ``X-Request-ID`` to follow one request
through several services' logs; it is kept when it is 1 to `MAX_LENGTH`
printable ASCII characters without spaces (a value that cannot break a log
line or a header), and replaced otherwise. New ids are 32 hex digits: 64
random bits drawn once per process, then a counter, so unique across
instances and restarts without a system call per request (asking the kernel
for random bytes releases the GIL, and getting it back under load costs far
more than the call).
"""

from __future__ import annotations

import itertools
import re
import secrets

HEADER = "X-Request-ID"
MAX_LENGTH = 128
# WSGI's spelling of the header.
ENVIRON_KEY = "HTTP_X_REQUEST_ID"

_SANE = re.compile(rf"[\x21-\x7e]{{1,{MAX_LENGTH}}}")


_PROCESS = secrets.token_hex(8)
_COUNTER = itertools.count(1)  # next() is atomic under the GIL


def new_request_id() -> str:
    """A fresh id: this process's random prefix and the next number, 32 hex digits."""
    return f"{_PROCESS}{next(_COUNTER):016x}"


def request_id_for(header: str | None) -> str:
    """The id of a request that sent `header` (None if it sent none)."""
    if header is not None and _SANE.fullmatch(header):
        return header
    return new_request_id()
