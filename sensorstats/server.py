"""Serving the app with waitress, and draining it on SIGTERM.

Waitress's own ``serve()`` stops on SIGINT by cancelling queued work. We run
its event loop ourselves instead, so that a stop signal (SIGTERM from a
container runtime, also as PID 1, or SIGINT) drains the instance:

1. /healthz turns 503 at once, so load balancers stop sending new requests;
2. after ``drain_delay`` the listening sockets close;
3. requests already received are answered and their responses flushed,
   for at most ``shutdown_timeout``;
4. `serve` returns and the process exits 0.
"""

from __future__ import annotations

import logging
import select
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import waitress
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer

from sensorstats.readiness import Readiness
from sensorstats.settings import Settings

_log = logging.getLogger(__name__)

# How often the event loop wakes up to look at the drain state when idle.
_LOOP_TICK_SECONDS = 0.2

# Bodies far past our own limit are cut off by waitress itself, before they are
# buffered to disk; its 413 is plain text. Bodies between our limit and this
# one get our problem document.
_WAITRESS_BODY_LIMIT_FACTOR = 16


class Server:
    """A waitress server that drains instead of dropping work when told to stop."""

    def __init__(self, app: Callable[..., Any], settings: Settings, readiness: Readiness) -> None:
        self._settings = settings
        self._readiness = readiness
        self._stop_requested = threading.Event()
        self._waitress = waitress.create_server(
            app,
            host=settings.host,
            port=settings.port,
            threads=settings.threads,
            ident="sensorstats",
            max_request_body_size=max(
                settings.max_body_bytes * _WAITRESS_BODY_LIMIT_FACTOR, 16 << 20
            ),
            expose_tracebacks=False,
        )
        # A MultiSocketServer (several listen addresses) keeps its map as
        # `map`; a single TcpWSGIServer as `_map`.
        self._map: dict[int, Any] = getattr(self._waitress, "map", None) or self._waitress._map

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) pairs actually listened on (port 0 resolved)."""
        return [(s.effective_host, s.effective_port) for s in self._listeners()]

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
        for host, port in self.addresses:
            _log.info("serving on http://%s:%s", host, port)
        self._loop_until(self._stop_requested.is_set)

        self._readiness.start_draining()
        _log.info(
            "stop requested: /healthz now answers 503; closing the listener in %.1f s",
            self._settings.drain_delay,
        )
        close_at = time.monotonic() + self._settings.drain_delay
        self._loop_until(lambda: time.monotonic() >= close_at)

        for listener in self._listeners():
            self._accept_backlog(listener)
            # Only the listening socket: the trigger and channels stay in use.
            wasyncore.dispatcher.close(listener)
        # Read what the connections just accepted have sent, so their
        # requests count as in flight.
        wasyncore.loop(timeout=0, map=self._map, use_poll=True, count=1)
        deadline = time.monotonic() + self._settings.shutdown_timeout
        self._loop_until(lambda: not self._busy_channels() or time.monotonic() >= deadline)

        unfinished = self._busy_channels()
        if unfinished:
            _log.warning("shutdown timeout: abandoning %d unfinished connection(s)", unfinished)
        else:
            _log.info("all requests answered; exiting")
        self._waitress.task_dispatcher.shutdown(cancel_pending=True, timeout=1)
        wasyncore.close_all(self._map)

    def _loop_until(self, done: Callable[[], bool]) -> None:
        while not done():
            wasyncore.loop(timeout=_LOOP_TICK_SECONDS, map=self._map, use_poll=True, count=1)

    @staticmethod
    def _accept_backlog(listener: BaseWSGIServer) -> None:
        """Accept connections the kernel completed but we have not taken yet.

        Closing a listener resets them; their clients already sent requests.
        """
        while select.select([listener.socket], [], [], 0)[0]:
            listener.handle_accept()

    def _listeners(self) -> list[BaseWSGIServer]:
        return [d for d in self._map.values() if isinstance(d, BaseWSGIServer)]

    def _busy_channels(self) -> int:
        """Connections with a request in progress or a response not yet sent."""
        return sum(
            1
            for channel in list(self._map.values())
            if isinstance(channel, HTTPChannel)
            and (channel.requests or channel.request is not None or channel.total_outbufs_len)
        )
