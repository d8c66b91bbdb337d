"""One client connection: waitress's channel with deadlines, inline answers, lingering."""

from __future__ import annotations

import functools
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from waitress.channel import HTTPChannel

from sensorstats.server.answers import RequestTimeout
from sensorstats.server.limits import INLINE_OUTPUT_LIMIT, INLINE_REQUESTS_PER_TURN
from sensorstats.server.parser import Parser
from sensorstats.server.tasks import KeepAliveTask, ProblemErrorTask
from sensorstats.store.calls import StartedCall
from sensorstats.web.app import LOOP_PATHS
from sensorstats.web.early import EarlyCalls

if TYPE_CHECKING:
    from sensorstats.server.listener import ConnectionServer

_LOOP_METHODS = frozenset({"GET", "HEAD"})


class Channel(HTTPChannel):  # type: ignore[misc]  # waitress is untyped
    """One client connection: waitress's channel with deadlines, inline answers, lingering."""

    task_class = KeepAliveTask
    error_task_class = ProblemErrorTask
    request: Any  # the request being received, if any (waitress's attribute)
    # For `sensorstats.server.polling`: while the connection only wants to
    # read, no worker holds a request of it (waitress's
    # ``channel_request_lookahead`` is 0: a queued request stops the reading),
    # and what it wants changes only on the loop, through its own events, or
    # as `send_continue` says.
    idle_is_stable = True

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
            request.command in _LOOP_METHODS and request.path in LOOP_PATHS
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
        # A worker sends it after taking this connection's last queued
        # request: the loop may already have seen the connection idle, and
        # must now send what is left of it.
        poller = self.server.poller
        if poller is not None:
            poller.touch(self)

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
    # busy connection two more calls on every turn of the loop, and the loop
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
