"""One listening socket of waitress: accepting past the limit, deadlines, inline service."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from waitress.server import TcpWSGIServer

from sensorstats.ops.logs import CONNECTIONS_LOGGER
from sensorstats.server.channel import Channel
from sensorstats.server.limits import (
    ACCEPT_BATCH,
    INLINE_OUTPUT_LIMIT,
    MAINTENANCE_INTERVAL_SECONDS,
    ConnectionPolicy,
    ReceiveBudget,
)
from sensorstats.server.polling import Poller
from sensorstats.web.early import EarlyCalls
from sensorstats.web.telemetry import RequestTelemetry

# Displaced and refused connections: summarised, one line per interval.
_flood_log = logging.getLogger(CONNECTIONS_LOGGER)


class ConnectionServer(TcpWSGIServer):  # type: ignore[misc]  # waitress is untyped
    """One listening socket of waitress, with this module's connection handling."""

    channel_class = Channel
    # Hears of the answers the server gives by itself; set by `server.Server`.
    telemetry: RequestTelemetry | None = None
    # Starts store calls for the requests that need one; set by `server.Server`.
    early: EarlyCalls | None = None
    # The event loop's poll set; set by `server.Server` (None: a loop that asks every turn).
    poller: Poller | None = None

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

    def pull_trigger(self) -> None:
        # Waitress wakes the loop after every request it serves, and
        # whenever output is left to send. On the loop thread itself (a
        # request served inline or once its call settled) the loop is not
        # waiting: it polls again right after, for that output too. A wake-up
        # there is a write to the trigger's pipe, a read of it on the next
        # turn, and the interpreter lock handed to another thread twice.
        if threading.get_ident() != self.loop_thread:
            super().pull_trigger()

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
        if self.poller is not None:
            # A deadline may have answered or closed any connection, idle ones too.
            self.poller.ask_all()

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
