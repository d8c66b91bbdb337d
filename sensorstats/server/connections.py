"""Connections: waitress's server, channel, parser and tasks, each narrowed where needed.

Waitress reads and writes every connection on one event loop and runs the
application in a pool of worker threads. What it does not do by itself, and
where this module does it (each time the narrowest hook waitress offers):

- **Limits** (`ConnectionServer`). Waitress stops accepting at its
  connection limit, so a few hundred idle or slow clients lock out every
  other, probes included. Here the listener always accepts; at the limit a
  new connection displaces the open one that has gone longest without a
  complete request (idle keep-alive, slowloris or lingering), and only if
  every connection has a request in progress is the newcomer closed at once.
  Connections are accepted in batches: waitress takes one per turn of its
  loop, and each turn visits every connection.
  Idle connections close after `idle_timeout`; a request whose line, headers
  and body take longer than `receive_timeout` from its first byte is
  answered 408 (waitress has only the idle timeout, which a slowloris client
  resets with every byte). Request bodies in flight share a `ReceiveBudget`:
  a body the budget cannot cover gets a 503 before it is read, so memory and
  the temporary directory stay bounded however many clients upload at once.
- **Probes on the loop** (`ConnectionServer.add_task`). ``GET`` and ``HEAD``
  of `PROBE_PATHS` are answered on the event loop itself, never queued
  behind worker threads held by slow requests; their handlers must not block
  (`/healthz` reads a cached readiness). So are waitress's own error answers.
  What one connection gets served on the loop is bounded per turn
  (`INLINE_REQUESTS_PER_TURN`, `INLINE_OUTPUT_LIMIT`): pipelined requests
  beyond it wait for a later turn, and for the client to read what it was
  sent, so one client can neither stall the loop nor grow its output without
  bound. Waitress's wait for a channel's output to drain below its high-water
  mark never runs on the loop, which is the thread that would drain it.
- **Store calls started early** (`ConnectionServer.add_task`,
  `KeepAliveTask`). A request the app's `EarlyCalls` starts a call for
  (``GET /statistics/{id}``, a small ``POST /data``) has it started on the
  loop, and once the call is settled the request is served on the loop too,
  like a probe, with the call in its environ: the app takes the outcome and
  never blocks (see `sensorstats.web.early`). No worker thread waits for
  etcd or is woken for these requests at all.
- **Problem documents** (`ProblemErrorTask`). Malformed HTTP, oversized
  heads and bodies, timeouts: RFC 9457 documents, not waitress's text/plain.
- **Lingering close** (`Channel`). After an error answer the client may
  still be sending; closing with unread data makes the kernel send a reset
  that can destroy the answer in flight. The channel shuts down its sending
  side and discards what arrives for at most `LINGER_SECONDS` or
  `LINGER_BYTES`, then closes.
- **Expect: 100-continue** (`Channel.send_continue`). A request refused on
  its head (a declared length over the limit) gets its answer without a
  ``100 Continue`` first, so the client never uploads the body.
- **Bare LF** (`Parser`). Waitress finds the end of a head only at CRLF CRLF,
  so a request with bare LF line endings waited for more forever; it is
  answered 400 as soon as a bare LF shows up in the head.
- **Keep-alive on 204** (`KeepAliveTask`). Waitress closes every HTTP/1.1
  connection whose response has no Content-Length, 204 and 304 included,
  which have no body to delimit; here they keep the connection open unless
  the client asked to close. While the instance drains, every response
  closes its connection, so keep-alive clients move to other instances.
"""

from __future__ import annotations

import functools
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, WSGITask
from waitress.utilities import BadRequest, Error

from sensorstats.ops.logs import CONNECTIONS_LOGGER
from sensorstats.settings import Settings
from sensorstats.store.calls import StartedCall
from sensorstats.web import problems
from sensorstats.web.early import STARTED_CALL, EarlyCalls
from sensorstats.web.request_id import HEADER as REQUEST_ID_HEADER
from sensorstats.web.request_id import WAITRESS_KEY as WAITRESS_REQUEST_ID
from sensorstats.web.request_id import request_id_for
from sensorstats.web.telemetry import RECEIVED_AT, RequestTelemetry

# Answered on the event loop; their handlers must never block.
# /metrics too: a scrape must answer when the workers are all busy, which is
# when its numbers matter most; it only reads counters.
PROBE_PATHS = frozenset({"/livez", "/healthz", "/metrics"})
_PROBE_METHODS = frozenset({"GET", "HEAD"})

# The request line and headers together. Clients of this API send a few
# hundred bytes; 16 KiB (Node's default) leaves room for long tokens and
# proxies' headers, and bounds what each slow connection holds.
HEADER_LIMIT_BYTES = 16 * 1024
# Request bodies in flight at once (declared lengths, a chunked body counted
# at the limit), in bodies of the maximum size: the sum stays within memory
# and the temporary directory whatever the number of uploading clients.
RECEIVE_BUDGET_BODIES = 32
# After an error answer: how long, and how much, to read and discard.
LINGER_SECONDS = 5.0
LINGER_BYTES = 16 << 20
# Connections accepted in one turn of the event loop, at most.
ACCEPT_BATCH = 64
# What the loop serves of one connection's pipelined inline requests in one
# turn: at most this many, and none while this much of its output is unsent
# (far below waitress's 16 MiB high-water mark, which the loop must never
# wait on). The rest wait for a later turn.
INLINE_REQUESTS_PER_TURN = 4
INLINE_OUTPUT_LIMIT = 1 << 20
# How often deadlines (idle, receive, linger) are enforced.
MAINTENANCE_INTERVAL_SECONDS = 0.25

PAYLOAD_TOO_LARGE = "urn:sensorstats:problem:payload-too-large"
SERVER_BUSY = "urn:sensorstats:problem:server-busy"

_BARE_LF = re.compile(rb"(?<!\r)\n")

# Displaced and refused connections: summarised, one line per interval.
_flood_log = logging.getLogger(CONNECTIONS_LOGGER)


@dataclass(frozen=True, slots=True)
class ConnectionPolicy:
    """The limits connections live under; see `Settings` for their meanings."""

    connection_limit: int
    idle_timeout: float
    receive_timeout: float
    max_body_bytes: int
    receive_budget: int
    linger_seconds: float = LINGER_SECONDS
    linger_bytes: int = LINGER_BYTES

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionPolicy:
        return cls(
            connection_limit=settings.connection_limit,
            idle_timeout=settings.idle_timeout,
            receive_timeout=settings.receive_timeout,
            max_body_bytes=settings.max_body_bytes,
            receive_budget=RECEIVE_BUDGET_BODIES * settings.max_body_bytes,
        )


class ReceiveBudget:
    """Bytes of request bodies that may be in flight at once, shared by all connections."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    def reserve(self, size: int) -> bool:
        """Take `size` bytes if the budget has them; False (nothing taken) otherwise."""
        with self._lock:
            if self._used + size > self.limit:
                return False
            self._used += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self._used -= size


# --- errors answered by the server itself ------------------------------------------


class _ProblemError(Error):  # type: ignore[misc]  # waitress is untyped
    """A waitress error that knows its problem document."""

    type_uri = "about:blank"
    title: str | None = None
    retry_after: int | None = None


class BodyTooLarge(_ProblemError):
    code = 413
    reason = "Payload Too Large"
    type_uri = PAYLOAD_TOO_LARGE
    title = "Payload too large"


class ServerBusy(_ProblemError):
    code = 503
    reason = "Service Unavailable"
    type_uri = SERVER_BUSY
    title = "Server busy"
    retry_after = 1


class RequestTimeout(_ProblemError):
    code = 408
    reason = "Request Timeout"


def problem_response(error: Any, adj: Any) -> tuple[str, list[tuple[str, str]], bytes]:
    """Status, headers and body of the problem document for a waitress error."""
    code: int = error.code
    reason: str = error.reason
    type_uri = getattr(error, "type_uri", "about:blank")
    title = getattr(error, "title", None)
    if isinstance(error, _ProblemError):
        detail = error.body
    elif code == 431:
        detail = f"the request line and headers exceed {adj.max_request_header_size} bytes"
    elif code == 413:
        type_uri, title = PAYLOAD_TOO_LARGE, BodyTooLarge.title
        reason = BodyTooLarge.reason  # as the app says it, not "Request Entity Too Large"
        detail = f"the request body {error.body}"
    elif code == 500:
        detail = "the request failed unexpectedly; the error has been logged"
    elif code == 400:
        detail = f"malformed HTTP request: {error.body}"
    else:
        detail = str(error.body)
    body = problems.document(code, detail, type_uri=type_uri, title=title)
    headers = [("Content-Type", problems.PROBLEM_JSON)]
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        headers.append(("Retry-After", str(retry_after)))
    return f"{code} {reason}", headers, body


# --- parsing -------------------------------------------------------------------------


class Parser(HTTPRequestParser):  # type: ignore[misc]  # waitress is untyped
    """Waitress's parser, plus: bare LF, the body limit and budget on the head, timing."""

    headers_finished: bool

    def __init__(self, adj: Any, *, policy: ConnectionPolicy, budget: ReceiveBudget) -> None:
        super().__init__(adj)
        self.started_at = time.monotonic()  # the first byte of this request
        self.completed_at: float | None = None  # and the last
        self.started_call: StartedCall[Any] | None = None  # its store call, once settled
        self._policy = policy
        self._budget = budget
        self._reserved = 0

    def received(self, data: bytes) -> int:
        if self.completed:
            return 0
        if not self.headers_finished and self._bare_lf(data):
            self.refuse(BadRequest("a line of the request ends in a bare LF; HTTP needs CRLF"))
        else:
            head_done_before = self.headers_finished
            consumed: int = super().received(data)
            self._note_completion()
            if self.error is None and self.headers_finished:
                if not head_done_before:
                    self._admit_body()
                elif self.chunked and self.body_rcv is not None:
                    self._check_chunked_size()
            if self.error is None:
                return consumed
        # After an error nothing more of this connection is parsed: it is
        # answered and closed, and lingering discards the rest.
        return len(data)

    def close(self) -> None:
        super().close()
        self.release_budget()

    def _note_completion(self) -> None:
        if self.completed and self.completed_at is None:
            self.completed_at = time.monotonic()

    @property
    def body_length(self) -> int:
        """The length of the body as received (de-chunked): a `ReceivedRequest`."""
        return len(self.body_rcv) if self.body_rcv is not None else 0

    def body(self) -> bytes:
        """The whole body, left unread for the app."""
        if self.body_rcv is None:
            return b""
        body: bytes = self.body_rcv.getbuf().get()  # reads without consuming
        return body

    def release_budget(self) -> None:
        """Give back the room this request's body took in the budget (once)."""
        reserved, self._reserved = self._reserved, 0
        if reserved:
            self._budget.release(reserved)

    def _bare_lf(self, data: bytes) -> bool:
        head = self.header_plus + data
        end = head.find(b"\r\n\r\n")
        if end >= 0:
            head = head[:end]
        # Empty lines before a request are tolerated, as waitress does.
        return _BARE_LF.search(head.lstrip(b"\r\n")) is not None

    def _admit_body(self) -> None:
        limit = self._policy.max_body_bytes
        if not self.chunked and self.content_length > limit:
            self.refuse(
                BodyTooLarge(f"the body has {self.content_length} bytes; the limit is {limit}")
            )
            return
        need = limit if self.chunked else self.content_length
        if not need:
            return
        if not self._budget.reserve(need):
            self.refuse(
                ServerBusy(
                    "the server is receiving as many request bodies as it can hold; "
                    "retry in a moment"
                )
            )
            return
        self._reserved = need

    def _check_chunked_size(self) -> None:
        limit = self._policy.max_body_bytes
        if len(self.body_rcv) > limit:
            self.refuse(BodyTooLarge(f"the chunked body exceeds the limit of {limit} bytes"))

    def refuse(self, error: Error) -> None:
        """Complete this request as `error`: it is answered, and the connection closed."""
        if not self.headers_finished:
            # What waitress does for an oversized head: a minimal request
            # for the error task to answer.
            self.parse_header(b"GET / HTTP/1.0\r\n")
            self.headers_finished = True
            self.stand_in = True  # its method and path are not the client's
        self.error = error
        self.expect_continue = False
        self.completed = True


# --- tasks ---------------------------------------------------------------------------


def _asks_to_close(request: Any) -> bool:
    tokens = request.headers.get("CONNECTION", "").lower().split(",")
    return "close" in (token.strip() for token in tokens)


class KeepAliveTask(WSGITask):  # type: ignore[misc]  # waitress is untyped
    """Waitress's WSGI task; a bodiless HTTP/1.1 response keeps the connection."""

    _bodiless_keep_alive = False

    def get_environment(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environment()
        environ[RECEIVED_AT] = getattr(self.request, "completed_at", None)
        call = getattr(self.request, "started_call", None)
        if call is not None:
            environ[STARTED_CALL] = call  # the resource takes its outcome
        return environ

    def build_response_header(self) -> bytes:
        if getattr(self.channel.server, "draining", False):
            self.set_close_on_finish()
        # Waitress closes after any response without Content-Length, so that
        # the end of the body is the end of the connection. A 204 or 304 has
        # no body (and must not carry Content-Length), so nothing needs
        # delimiting: keep the connection unless the client asked to close.
        self._bodiless_keep_alive = (
            self.version == "1.1"
            and not self.has_body
            and not self.close_on_finish
            and not _asks_to_close(self.request)
        )
        try:
            header: bytes = super().build_response_header()
            return header
        finally:
            self._bodiless_keep_alive = False

    def set_close_on_finish(self) -> None:
        if not self._bodiless_keep_alive:
            super().set_close_on_finish()


class ProblemErrorTask(ErrorTask):  # type: ignore[misc]  # waitress is untyped
    """Waitress's error answers as problem documents; the connection then lingers and closes."""

    def execute(self) -> None:
        status, headers, body = problem_response(self.request.error, self.channel.adj)
        self.status = status
        self.response_headers.extend(headers)
        # HEAD: the same headers, no body (waitress would send it).
        if getattr(self.request, "command", "") == "HEAD":
            body = b""
        self.response_headers.append((REQUEST_ID_HEADER, self._request_id(len(body))))
        self.set_close_on_finish()
        self.channel.linger_wanted = True
        self.content_length = len(body)
        self.write(body)

    def _request_id(self, sent: int) -> str:
        """The id to echo; the access line and the metrics hear of the answer."""
        telemetry: RequestTelemetry | None = self.channel.server.telemetry
        if telemetry is None:
            return request_id_for(self.request.headers.get(WAITRESS_REQUEST_ID))
        return telemetry.server_answered(
            self.request,
            self.request.error.code,
            sent,
            self.channel.addr[0] if self.channel.addr else None,
            getattr(self.request, "started_at", None),
        )


# --- the channel ---------------------------------------------------------------------


class Channel(HTTPChannel):  # type: ignore[misc]  # waitress is untyped
    """One client connection: waitress's channel with deadlines, inline answers, lingering."""

    task_class = KeepAliveTask
    error_task_class = ProblemErrorTask
    request: Any  # the request being received, if any (waitress's attribute)

    def __init__(
        self, server: ConnectionServer, sock: Any, addr: Any, adj: Any, map: Any = None
    ) -> None:
        self.policy = server.policy
        self.parser_class = functools.partial(Parser, policy=server.policy, budget=server.budget)
        # Since when this connection has been waiting for a complete request
        # (accepted, or its last response done): the displacement order.
        self.waiting_since = time.monotonic()
        self.inline_pending = False
        self.linger_wanted = False
        self.linger_until: float | None = None
        self._linger_left = 0
        super().__init__(server, sock, addr, adj, map)

    def received(self, data: bytes) -> bool:
        result: bool = super().received(data)
        self.serve_inline()
        return result

    def serve_inline(self) -> None:
        """Serve, here on the event loop, what `ConnectionServer.add_task` kept back.

        A turn's share at most: the rest waits in the server's backlog.
        """
        served = 0
        while self.inline_pending and self.connected:
            if served == INLINE_REQUESTS_PER_TURN or self.total_outbufs_len >= INLINE_OUTPUT_LIMIT:
                self.server.serve_later(self)
                return
            self.inline_pending = False
            self.service()
            served += 1

    def _flush_outbufs_below_high_watermark(self) -> None:
        # Waitress waits here for the event loop to send the output; on the
        # loop itself that wait would never end. Inline work is bounded by
        # `INLINE_OUTPUT_LIMIT` instead.
        if threading.get_ident() != self.server.loop_thread:
            super()._flush_outbufs_below_high_watermark()

    def answers_inline(self) -> bool:
        """Whether the next request is a probe or an error: quick, and never blocking."""
        request = self.requests[0]
        return request.error is not None or (
            request.command in _PROBE_METHODS and request.path in PROBE_PATHS
        )

    def start_early(self, early: EarlyCalls) -> bool:
        """Start the store call of the request just received, if the app wants one early.

        True: the request is served on the loop once the call is settled
        (`ConnectionServer.serve_settled`).
        """
        request = self.requests[0]
        if request.error is not None:
            return False

        def ready(call: StartedCall[Any]) -> None:  # on the store's thread, or this one
            request.started_call = call
            self.server.call_settled(self)

        return early.start(request, ready) is not None

    def service(self) -> None:
        super().service()
        self.waiting_since = time.monotonic()

    def send_continue(self) -> None:
        if self.request.completed:
            # Refused on its head: the answer goes out instead, and the
            # client never sends the body. Or complete without a body (no
            # Content-Length, or 0), where nothing is to continue (RFC 9110
            # §10.1.1): waitress would mark it incomplete again and leave it
            # unanswered until the receive timeout.
            self.request.expect_continue = False
            return
        super().send_continue()

    def displaceable(self) -> bool:
        """No request being served and nothing left to send: idle, partial or lingering."""
        return not self.requests and not self.total_outbufs_len

    def enforce_deadlines(self, now: float, wall_now: float) -> None:
        """Close what idled too long, answer 408 to what is received too slowly.

        Output the client has not taken for the idle timeout counts as idle
        too: a client that sends requests but never reads their answers.
        """
        if self.linger_until is not None:
            if now >= self.linger_until:
                self.close_now()
            return
        if self.total_outbufs_len and wall_now - self.last_activity >= self.policy.idle_timeout:
            self.close_now()
            return
        if self.requests or self.total_outbufs_len or self.will_close or self.close_when_flushed:
            return
        request = self.request
        # Bytes already waiting in the kernel mean the client was neither
        # idle nor slow; the loop was (a starved process): read them first.
        if request is not None and now - request.started_at >= self.policy.receive_timeout:
            if not self._input_pending():
                self._time_out(request)
        elif (
            wall_now - self.last_activity >= self.policy.idle_timeout and not self._input_pending()
        ):
            self.close_now()

    def _input_pending(self) -> bool:
        try:
            return bool(self.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except OSError:  # nothing there (EAGAIN), or the connection is gone
            return False

    def _time_out(self, partial: Parser) -> None:
        timeout = self.policy.receive_timeout
        answer = self.parser_class(self.adj)
        answer.refuse(
            RequestTimeout(f"the request was not received completely within {timeout:g} s")
        )
        if partial.headers_finished:
            answer.version = partial.version
            answer.command = partial.command
        with self.requests_lock:
            self.request = None
            self.requests.append(answer)
        partial.close()
        self.service()

    # Lingering close. While lingering, waitress's own `readable` and
    # `writable` say what is wanted (read and discard, write nothing) once
    # its close flags are cleared; overriding them instead would cost every
    # connection two more calls on every turn of the loop, and the loop
    # turns often while a worker holds a response not yet flushed.

    def handle_read(self) -> None:
        if self.linger_until is None:
            super().handle_read()
            return
        try:
            data = self.socket.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self._linger_left -= len(data)
        if not data or self._linger_left <= 0:
            self.close_now()

    def handle_close(self) -> None:
        if (
            self.linger_wanted
            and self.linger_until is None
            and self.socket is not None
            and not self.total_outbufs_len
        ):
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # already gone: close below
            else:
                self.linger_until = time.monotonic() + self.policy.linger_seconds
                self._linger_left = self.policy.linger_bytes
                self._drop_partial_request()
                # Nothing left to send and no request: readable, not writable.
                self.will_close = self.close_when_flushed = False
                return
        self.close_now()

    def close_now(self) -> None:
        """Close the connection at once, releasing what its partial request holds."""
        self._drop_partial_request()
        self.linger_until = None
        super().handle_close()

    def _drop_partial_request(self) -> None:
        # Only the request still being received belongs to the loop; queued
        # ones are closed by `service` in the worker that has them.
        partial = self.request
        if partial is None:
            return
        # Waitress may close a channel from inside `received`, which holds
        # this (non-reentrant) lock: never wait for it here. The budget is
        # given back in any case; the buffers go with the channel.
        if self.requests_lock.acquire(blocking=False):
            try:
                self.request = None
            finally:
                self.requests_lock.release()
            partial.close()
        else:
            partial.release_budget()


# --- the server ----------------------------------------------------------------------


class ConnectionServer(TcpWSGIServer):  # type: ignore[misc]  # waitress is untyped
    """One listening socket of waitress, with this module's connection handling."""

    channel_class = Channel
    # Hears of the answers the server gives by itself; set by `server.Server`.
    telemetry: RequestTelemetry | None = None
    # Starts store calls for the requests that need one; set by `server.Server`.
    early: EarlyCalls | None = None

    def __init__(
        self,
        application: Any,
        map: dict[int, Any],
        *,
        dispatcher: Any,
        adj: Any,
        sockinfo: Any,
        policy: ConnectionPolicy,
        budget: ReceiveBudget,
    ) -> None:
        self.policy = policy
        self.budget = budget
        self.draining = False  # set when the instance drains: every answer closes
        self.loop_thread = threading.get_ident()  # the thread that runs the loop: `server.Server`'s
        self._next_maintenance = 0.0
        # Requests with a call ahead not served yet; counted on the loop thread only.
        self.awaiting_store = 0
        # Channels whose request's call ahead has settled, to serve on the loop.
        self._settled: list[Channel] = []
        self._settled_lock = threading.Lock()
        # Channels with inline requests left over from an earlier turn; loop thread only.
        self._backlog: dict[Channel, None] = {}
        super().__init__(application, map, dispatcher=dispatcher, adj=adj, sockinfo=sockinfo)

    def readable(self) -> bool:
        # Unlike waitress, keep accepting at the connection limit (see `handle_accept`).
        return bool(self.accepting)

    def maintain_if_due(self) -> None:
        """Enforce deadlines now and then; `server.Server` calls it between turns of the loop.

        Never while the loop polls: a connection closed then would leave its
        descriptor among those being polled, for a new connection to reuse.
        """
        now = time.monotonic()
        if now >= self._next_maintenance:
            self._next_maintenance = now + MAINTENANCE_INTERVAL_SECONDS
            self.maintenance(time.time())

    def maintenance(self, now: float) -> None:
        monotonic_now = time.monotonic()
        for channel in list(self.active_channels.values()):
            channel.enforce_deadlines(monotonic_now, now)

    def handle_accept(self) -> None:
        # Waitress accepts one connection per turn of the loop, and each turn
        # looks at every connection: a burst of new connections would take
        # quadratic time to accept while everything else waits. Take what
        # the kernel has queued, up to a batch.
        for _ in range(ACCEPT_BATCH):
            if not self._accept_one():
                return

    def _accept_one(self) -> bool:
        """Accept one queued connection, making room for it; False when none is queued.

        As waitress's `handle_accept`, except that the limit is enforced here,
        once a connection is really there to be let in or refused.
        """
        try:
            accepted = self.accept()
            if accepted is None:
                return False
            connection, address = accepted
            self.set_socket_options(connection)
        except OSError:
            # A client that gave up before we took its connection, or a
            # bogus socket from accept (waitress logs and carries on too).
            if self.adj.log_socket_errors:
                self.logger.warning("server accept() threw an exception", exc_info=True)
            return True
        if len(self.active_channels) >= self.policy.connection_limit and not self._displace():
            connection.close()
            _flood_log.warning(
                "connection limit (%d) reached and every connection has a request in "
                "progress: refused a new connection",
                self.policy.connection_limit,
            )
            return True
        self.channel_class(self, connection, self.fix_addr(address), self.adj, map=self._map)
        return True

    def add_task(self, channel: Channel) -> None:
        # On the loop thread (a request just received), probes and error
        # answers are served right here, after the channel's parsing is done;
        # a request with a call ahead is served here too, once it is settled;
        # anything else goes to the worker threads now. From a worker thread
        # (the next pipelined request), everything goes to the pool.
        if threading.get_ident() == self.loop_thread:
            if channel.answers_inline():
                channel.inline_pending = True
                return
            if self.early is not None and channel.start_early(self.early):
                self.awaiting_store += 1
                return
        self.dispatch(channel)

    def dispatch(self, channel: Channel) -> None:
        """Queue `channel`'s next request for a worker thread (from any thread)."""
        super().add_task(channel)

    def call_settled(self, channel: Channel) -> None:
        """`channel`'s request has its call's outcome: serve it on the loop (from any thread)."""
        with self._settled_lock:
            self._settled.append(channel)
            first = len(self._settled) == 1
        if first:  # else the loop was woken already and has not taken them yet
            self.pull_trigger()

    def serve_settled(self) -> None:
        """Serve the requests whose calls have settled; `server.Server` calls it each turn."""
        if not self._settled:  # the usual turn; one appended meanwhile pulls the trigger
            return
        with self._settled_lock:
            settled, self._settled = self._settled, []
        self.awaiting_store -= len(settled)
        for channel in settled:
            channel.inline_pending = True
            channel.serve_inline()

    def serve_later(self, channel: Channel) -> None:
        """Keep `channel`'s remaining inline requests for a later turn (loop thread)."""
        self._backlog[channel] = None

    def serve_backlog(self) -> bool:
        """Serve a turn's share of the inline requests kept back; `server.Server` calls it.

        True if some of what is left can be served at once (the loop should
        not sleep); the rest waits for its clients to read their answers.
        """
        if not self._backlog:
            return False
        waiting, self._backlog = list(self._backlog), {}
        for channel in waiting:
            if channel.total_outbufs_len >= INLINE_OUTPUT_LIMIT:
                self._backlog[channel] = None
            else:
                channel.serve_inline()
        return any(c.total_outbufs_len < INLINE_OUTPUT_LIMIT for c in self._backlog)

    def _displace(self) -> bool:
        candidates = [c for c in self.active_channels.values() if c.displaceable()]
        if not candidates:
            return False
        # Lingering ones first (they are closing anyway), then the longest waiting.
        victim = min(candidates, key=lambda c: (c.linger_until is None, c.waiting_since))
        _flood_log.warning(
            "connection limit (%d) reached: closed the connection from %s that had "
            "waited longest for a complete request",
            self.policy.connection_limit,
            victim.addr[0] if victim.addr else "?",
        )
        victim.close_now()
        return True
