"""A real listening socket of the server package, on loopback, without the rest of a server."""

from __future__ import annotations

from typing import Any

from waitress.adjustments import Adjustments
from waitress.task import ThreadedTaskDispatcher

from sensorstats.server import limits
from sensorstats.server.listener import ConnectionServer


def listener_on(socket_map: dict[int, Any]) -> ConnectionServer:
    """A `ConnectionServer` on a free loopback port, its objects in `socket_map`; small limits."""
    adjustments = Adjustments(host="127.0.0.1", port=0)
    policy = limits.ConnectionPolicy(
        connection_limit=10,
        idle_timeout=1.0,
        receive_timeout=1.0,
        max_body_bytes=1024,
        receive_budget=4096,
    )
    return ConnectionServer(
        lambda environ, start_response: [],
        socket_map,
        dispatcher=ThreadedTaskDispatcher(),
        adj=adjustments,
        sockinfo=adjustments.listen[0],
        policy=policy,
        budget=limits.ReceiveBudget(policy.receive_budget),
    )
