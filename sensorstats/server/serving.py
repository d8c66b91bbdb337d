"""Serving the app with waitress, and draining it on SIGTERM.

Waitress's own ``serve()`` stops on SIGINT by cancelling queued work. We run
its event loop ourselves instead, so that a stop signal (SIGTERM from a
container runtime, also as PID 1, or SIGINT) drains the instance:

1. /healthz turns 503 at once, so load balancers stop sending new requests;
2. after ``drain_delay`` the connections already in the kernel's accept
   queue are accepted (closing would reset them) and the listening sockets
   close;
3. requests whose head was received are answered and their responses
   flushed, for at most ``shutdown_timeout`` (a head still being received
   is not waited for: it closes with its connection);
4. `serve` returns and the process exits 0.

From SIGTERM on, every response closes its connection, so keep-alive
clients move to other instances. How connections themselves are handled
(limits, timeouts, probes on the loop, error answers) is in the package docstring.
"""

from __future__ import annotations

import logging
import resource
import select
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.task import ThreadedTaskDispatcher

from sensorstats.ops.logs import FIELDS
from sensorstats.ops.metrics import Metrics
from sensorstats.ops.readiness import Readiness
from sensorstats.server.limits import HEADER_LIMIT_BYTES, ConnectionPolicy, ReceiveBudget
from sensorstats.server.listener import ConnectionServer
from sensorstats.server.polling import Poller
from sensorstats.settings import Settings, SettingsError
from sensorstats.web.early import EarlyCalls
from sensorstats.web.telemetry import RequestTelemetry

_log = logging.getLogger(__name__)

# How often the event loop wakes up to look at the drain state when idle.
_LOOP_TICK_SECONDS = 0.2

# Our parser refuses a body over our limit, counting de-chunked bytes. Waitress
# counts the raw bytes of a chunked body, framing included, against its own
# limit: far above ours, so that only absurd framing reaches it.
_WAITRESS_BODY_LIMIT_FACTOR = 16

# File descriptors besides one per connection: the listener, the event loop's
# trigger, etcd's gRPC channels, spooled request bodies, logs, the interpreter.
DESCRIPTOR_RESERVE = 256


def ensure_descriptors(connection_limit: int) -> None:
    """Make sure the process may open enough files for `connection_limit` connections.

    Raises the soft limit up to the hard one if needed; raises SettingsError
    if even the hard limit is too low.
    """
    needed = connection_limit + DESCRIPTOR_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SettingsError(
            f"SENSORSTATS_CONNECTION_LIMIT ({connection_limit}) needs about {needed} open "
            f"files, but the process may open at most {hard} (ulimit -n); lower the "
            f"connection limit or raise the limit"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    _log.info("raised the open-file limit from %d to %d for the connection limit", soft, needed)


class Server:
    """A waitress server that drains instead of dropping work when told to stop."""

    def __init__(
        self,
        app: Callable[..., Any],
        settings: Settings,
        readiness: Readiness,
        metrics: Metrics | None = None,
        early: EarlyCalls | None = None,
    ) -> None:
        """Listen as `settings` say; `metrics` (the app's) also counts the server's own answers.

        `early` starts the store calls of the requests that need one on
        the event loop (see `sensorstats.web.early`).
        """
        self._settings = settings
        self._readiness = readiness
        self._stop_requested = threading.Event()
        adjustments = Adjustments(
            host=settings.host,
            port=settings.port,
            threads=settings.threads,
            ident="sensorstats",
            max_request_header_size=HEADER_LIMIT_BYTES,
            max_request_body_size=max(
                settings.max_body_bytes * _WAITRESS_BODY_LIMIT_FACTOR, 16 << 20
            ),
            connection_limit=settings.connection_limit,
            expose_tracebacks=False,
        )
        self._dispatcher = ThreadedTaskDispatcher()
        policy = ConnectionPolicy.from_settings(settings)
        budget = ReceiveBudget(policy.receive_budget)
        # One poll set for the loop's life, over the map waitress keeps its objects in.
        self._poller = Poller()
        self._map = self._poller.socket_map
        # Also after a listener is closed (and out of the map): its
        # connections still have requests to serve.
        self._listeners: list[ConnectionServer] = []
        try:
            # What `waitress.create_server` does, with our server class.
            for sockinfo in adjustments.listen:
                listener = ConnectionServer(
                    app,
                    self._map,
                    dispatcher=self._dispatcher,
                    adj=adjustments,
                    sockinfo=sockinfo,
                    policy=policy,
                    budget=budget,
                )
                listener.early = early
                listener.poller = self._poller
                self._listeners.append(listener)
        except OSError:
            wasyncore.close_all(self._map)
            self._poller.close()
            raise
        self._dispatcher.set_thread_count(settings.threads)
        if metrics is not None:
            self._watch(metrics)

    def _watch(self, metrics: Metrics) -> None:
        telemetry = RequestTelemetry(metrics)
        for listener in self._listeners:
            listener.telemetry = telemetry
        dispatcher = self._dispatcher
        # Read at scrape time without the dispatcher's lock: each is one
        # attribute or length, and a scrape may be a moment off.
        metrics.watch_workers(
            waiting=lambda: len(dispatcher.queue),
            in_flight=lambda: dispatcher.active_count,
            threads=lambda: len(dispatcher.threads),
            connections=lambda: sum(len(s.active_channels) for s in self._listeners),
            awaiting_store=lambda: sum(s.awaiting_store for s in self._listeners),
        )

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) pairs actually listened on (port 0 resolved)."""
        return [(s.effective_host, s.effective_port) for s in self._listeners]

    def request_stop(self) -> None:
        """Begin draining; safe to call from a signal handler or any thread."""
        self._stop_requested.set()

    def install_signal_handlers(self) -> None:
        """Drain on SIGTERM and SIGINT (must be called from the main thread)."""

        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def serve(self) -> None:
        """Serve until a stop is requested and the drain has finished."""
        # /healthz is answered on the event loop: readiness must be kept
        # fresh in the background, never checked while a probe waits.
        self._readiness.start()
        try:
            self._serve()
        finally:
            self._readiness.stop()

    def _serve(self) -> None:
        for listener in self._listeners:
            listener.loop_thread = threading.get_ident()
        for host, port in self.addresses:
            _log.info("serving on http://%s:%s", host, port, extra={FIELDS: {"event": "listening"}})
        self._loop_until(self._stop_requested.is_set)

        self._readiness.start_draining()
        for listener in self._listeners:
            listener.draining = True  # every answer from now on closes its connection
        _log.info(
            "stop requested: /healthz now answers 503; closing the listener in %.1f s",
            self._settings.drain_delay,
            extra={FIELDS: {"event": "draining"}},
        )
        close_at = time.monotonic() + self._settings.drain_delay
        self._loop_until(lambda: time.monotonic() >= close_at)

        for listener in self._listeners:
            self._accept_backlog(listener)
            # Only the listening socket: the trigger and channels stay in use.
            wasyncore.dispatcher.close(listener)
        # Read what the connections just accepted have sent, so their
        # requests count as in flight.
        self._poller.turn(timeout=0)
        deadline = time.monotonic() + self._settings.shutdown_timeout
        self._loop_until(lambda: not self._busy_channels() or time.monotonic() >= deadline)

        unfinished = self._busy_channels()
        if unfinished:
            _log.warning(
                "shutdown timeout: abandoning %d unfinished connection(s)",
                unfinished,
                extra={FIELDS: {"event": "drained", "abandoned": unfinished}},
            )
        else:
            _log.info("all requests answered; exiting", extra={FIELDS: {"event": "drained"}})
        self._dispatcher.shutdown(cancel_pending=True, timeout=1)
        wasyncore.close_all(self._map)
        self._poller.close()

    def _loop_until(self, done: Callable[[], bool]) -> None:
        timeout = _LOOP_TICK_SECONDS
        while not done():
            self._poller.turn(timeout)
            more = False
            for listener in self._listeners:
                listener.serve_settled()
                more = listener.serve_backlog() or more
                listener.maintain_if_due()
            # Inline requests left that can be served now: poll without sleeping.
            timeout = 0 if more else _LOOP_TICK_SECONDS

    @staticmethod
    def _accept_backlog(listener: ConnectionServer) -> None:
        """Accept connections the kernel completed but we have not taken yet.

        Closing a listener resets them; their clients already sent requests.
        """
        waiting = select.poll()  # not select(): descriptors may be past 1024
        waiting.register(listener.socket, select.POLLIN)
        while waiting.poll(0):
            listener.handle_accept()

    def _busy_channels(self) -> int:
        """Connections with a request to answer, or a response not yet sent.

        A request counts once its head is in: its body is on the way, and
        its client has committed to it. A head still being received does
        not: its client may take longer than the whole shutdown timeout to
        finish it (the receive timeout outlasts it), and it closes with its
        connection.
        """
        return sum(
            1
            for channel in list(self._map.values())
            if isinstance(channel, HTTPChannel)
            and (
                channel.requests
                or channel.total_outbufs_len
                or (channel.request is not None and channel.request.headers_finished)
            )
        )
