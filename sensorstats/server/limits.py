"""The limits connections live under, and the budget request bodies in flight share."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sensorstats.settings import Settings

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
