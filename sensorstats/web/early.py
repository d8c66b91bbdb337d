"""Which requests get their store call started on the server's event loop, and how.

The server asks `EarlyCalls.start` about every request it has received in
full. For ``GET /statistics/{id}`` and a small unkeyed ``POST /data`` it
starts the store's read or write (`sensorstats.store.calls`) and returns
the call; the server hands it to the app in the environ under
`STARTED_CALL` once it is settled, and the resource takes its outcome
(`started_call`). Everything else, errors included, is served as usual.

A call is started only where the app would make exactly that call:

- the request is prepared by the very functions the resources use
  (`sensor_of_path`, `prepare_post`), so a request they would refuse
  starts nothing;
- every middleware of the app admits it first (`EarlyAdmission`): the
  bearer token is checked before a write is started, by the same code that
  checks it for the app. A middleware without `admits_early` admits nothing
  early, so a new middleware can never be bypassed by accident.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sensorstats.core.batch import Limits, parse_batch, sensor_id_problem
from sensorstats.core.body import check_media_type, content_coding, decode
from sensorstats.core.errors import PayloadTooLarge
from sensorstats.core.idempotency import parse_key_header
from sensorstats.core.stats import Stats
from sensorstats.settings import ENV_PREFIX
from sensorstats.store import Store
from sensorstats.store.calls import Ready, StartedCall, StartedRead, StartedWrite

DATA_PATH = "/data"
STATISTICS_PREFIX = "/statistics/"
# The WSGI environ key of the call started for a request.
STARTED_CALL = "sensorstats.started_call"
# The largest body whose write starts early: parsed on the event loop, so a
# big batch never holds it for long. About 1,300 measurements; larger
# batches are parsed and written by a worker thread.
EARLY_WRITE_MAX_BYTES = 128 * 1024
_READ_METHODS = ("GET", "HEAD")
# Named in every answer about the body limit: the operator's knob.
MAX_BODY_SETTING = f"{ENV_PREFIX}MAX_BODY_BYTES"


class ReceivedRequest(Protocol):
    """A request completely received by the server, as `EarlyCalls` sees it."""

    command: str  # the method
    path: str  # decoded, as WSGI's PATH_INFO
    headers: Mapping[str, str]  # names upper-cased, "-" as "_" (CGI style): "IDEMPOTENCY_KEY"

    @property
    def body_length(self) -> int:
        """The length of the body as received (de-chunked)."""

    def body(self) -> bytes:
        """The whole body, read without consuming it: the app can still read it."""


class EarlyAdmission(Protocol):
    """A middleware's say on a request whose store call would start before the app runs."""

    def admits_early(self, method: str, path: str, header: Callable[[str], str | None]) -> bool:
        """True if this middleware would let the request reach its resource.

        `header` looks a request header up by its HTTP name ("Authorization").
        """


@dataclass(frozen=True, slots=True)
class PreparedPost:
    """A ``POST /data`` as the store needs it: the batch, and its client's key if any."""

    deltas: dict[str, Stats]
    client_key: str | None


def prepare_post(
    header: Callable[[str], str | None], body: bytes, limits: Limits, max_body_bytes: int
) -> PreparedPost:
    """Validate a ``POST /data``; raise what the client sees.

    In order: the key header, the media type and content coding
    (`sensorstats.core.body`), the body's size, its decoded size, the batch.

    The one place a POST is prepared, for the resource and for a write
    started early alike. `max_body_bytes` bounds the body as received and
    as decompressed (`sensorstats.core.body`).
    """
    key_header = header("Idempotency-Key")
    client_key = None if key_header is None else parse_key_header(key_header)
    check_media_type(header("Content-Type"))
    coding = content_coding(header("Content-Encoding"))
    if len(body) > max_body_bytes:
        raise PayloadTooLarge(body_too_large(f"has {len(body)} bytes", max_body_bytes))
    decoded = decode(body, coding, max_body_bytes)
    if decoded is None:
        raise PayloadTooLarge(
            body_too_large(
                f"decompresses to more than {max_body_bytes} bytes", max_body_bytes, compressed=True
            )
        )
    return PreparedPost(parse_batch(decoded, limits), client_key)


def body_too_large(size: str, limit: int, *, compressed: bool = False) -> str:
    """The detail of every answer to a body over the limit: "the body <size>; ..."."""
    after = ", counted after decompression" if compressed else ""
    return (
        f"the body {size}; the limit is {limit} bytes ({MAX_BODY_SETTING}){after}: "
        "send the measurements in smaller batches"
    )


def sensor_of_path(path: str) -> str | None:
    """The sensor id a ``/statistics/`` path names (PATH_INFO is Latin-1); None if not UTF-8."""
    try:
        return path[len(STATISTICS_PREFIX) :].encode("iso-8859-1").decode()
    except UnicodeError:
        return None


def started_call(env: Mapping[str, Any]) -> StartedCall[Any] | None:
    """The call the server started for this request, settled; None if none was."""
    call: StartedCall[Any] | None = env.get(STARTED_CALL)
    return call


class EarlyCalls:
    """Starts the store calls of the requests that need exactly one, on the event loop."""

    def __init__(
        self,
        store: Store,
        limits: Limits,
        max_body_bytes: int,
        middleware: Sequence[object],
    ) -> None:
        self._store = store
        self._limits = limits
        self._max_body_bytes = max_body_bytes
        self._admissions = _admissions(middleware)

    @property
    def enabled(self) -> bool:
        """False if the store never starts calls, or a middleware admits nothing early."""
        return self._store.starts_calls and self._admissions is not None

    def start(self, request: ReceivedRequest, ready: Ready) -> StartedCall[Any] | None:
        """Start `request`'s store call if it needs exactly one; None: nothing started.

        Runs on the event loop: never blocks. ``ready`` may be called before
        this returns (a call that fails at once).
        """
        if self._admissions is None:
            return None
        method, path = request.command, request.path
        if method in _READ_METHODS and path.startswith(STATISTICS_PREFIX):
            sensor = sensor_of_path(path)
            if not sensor or sensor_id_problem(sensor, self._limits):
                return None  # the resource answers the error
            if not self._admitted(request):
                return None
            read: StartedRead[Stats] | None = self._store.start_get(sensor, ready)
            return read
        if method == "POST" and path == DATA_PATH:
            return self._start_write(request, ready)
        return None

    def _start_write(self, request: ReceivedRequest, ready: Ready) -> StartedWrite | None:
        # A compressed body is held to the same size once decompressed: a
        # worker takes what inflates beyond it.
        early_limit = min(self._max_body_bytes, EARLY_WRITE_MAX_BYTES)
        if request.body_length > early_limit:
            return None
        # Admitted first: a client the app would refuse costs no parse on the loop.
        if not self._admitted(request):
            return None
        header = _header_lookup(request.headers)
        try:
            post = prepare_post(header, request.body(), self._limits, early_limit)
        except Exception:  # the resource prepares it again and answers the error
            return None
        if post.client_key is not None or not post.deltas:
            return None  # keyed (a worker scopes and fingerprints it), or nothing to write
        return self._store.start_apply(post.deltas, ready)

    def _admitted(self, request: ReceivedRequest) -> bool:
        header = _header_lookup(request.headers)
        admissions = self._admissions or ()
        return all(a.admits_early(request.command, request.path, header) for a in admissions)


def _admissions(middleware: Iterable[object]) -> tuple[EarlyAdmission, ...] | None:
    """Every middleware's admission; None if one has none (then nothing starts early)."""
    admissions = []
    for each in middleware:
        if not hasattr(each, "admits_early"):
            return None
        admissions.append(each)
    return tuple(admissions)


def _header_lookup(headers: Mapping[str, str]) -> Callable[[str], str | None]:
    """Look a header up by its HTTP name in the server's CGI-style header mapping."""

    def header(name: str) -> str | None:
        cgi_name = _CGI_NAMES.get(name)
        if cgi_name is None:
            cgi_name = _CGI_NAMES[name] = name.upper().replace("-", "_")
        return headers.get(cgi_name)

    return header


# HTTP header names as the server's mapping spells them ("Idempotency-Key":
# "IDEMPOTENCY_KEY"); only the names this module and the middleware ask for.
_CGI_NAMES: dict[str, str] = {}
