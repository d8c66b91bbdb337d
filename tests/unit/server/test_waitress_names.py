"""Every waitress name the server package relies on, in one place.

`sensorstats.server` narrows waitress where it offers no hook: it subclasses
its channel, parser, tasks and server, overrides some of their methods and
reads some of their attributes. An upgrade of waitress that renames or
re-signs any of them must fail here, by name, rather than somewhere in the
behaviour of a running instance.
"""

from __future__ import annotations

import inspect
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher, WSGITask

from sensorstats.server import polling
from sensorstats.server.channel import Channel
from sensorstats.server.listener import ConnectionServer
from sensorstats.server.parser import Parser
from sensorstats.server.tasks import KeepAliveTask, ProblemErrorTask
from tests.support.listeners import listener_on

# Ours → the waitress class it narrows, and the waitress methods it overrides.
OVERRIDES: dict[type, tuple[type, set[str]]] = {
    Parser: (HTTPRequestParser, {"__init__", "received", "close"}),
    KeepAliveTask: (
        WSGITask,
        {"get_environment", "build_response_header", "set_close_on_finish", "write"},
    ),
    ProblemErrorTask: (ErrorTask, {"execute"}),
    Channel: (
        HTTPChannel,
        {
            "__init__",
            "received",
            "service",
            "send_continue",
            "handle_read",
            "handle_close",
            "_flush_outbufs_below_high_watermark",
        },
    ),
    ConnectionServer: (
        TcpWSGIServer,
        {"__init__", "readable", "maintenance", "handle_accept", "add_task", "pull_trigger"},
    ),
}

# What our constructors take beyond waitress's.
OWN_INIT_PARAMETERS = {"policy", "budget"}

# Attributes (and methods called, not overridden) read on waitress's objects.
CHANNEL_NAMES = (
    "requests",
    "request",
    "requests_lock",
    "outbuf_lock",
    "total_outbufs_len",
    "will_close",
    "close_when_flushed",
    "connected",
    "last_activity",
    "adj",
    "server",
    "addr",
    "socket",
    "task_class",
    "error_task_class",
    "parser_class",
    # What the poll set asks of every object in the map, and how it finds a touched one.
    "readable",
    "writable",
    "accepting",
    "_fileno",
)
PARSER_NAMES = (
    "completed",
    "empty",
    "error",
    "headers_finished",
    "header_plus",
    "expect_continue",
    "chunked",
    "content_length",
    "body_rcv",
    "headers",
    "version",
    "command",
    "path",
    "parse_header",
)
SERVER_NAMES = (
    "active_channels",
    "accepting",
    "adj",
    "accept",
    "channel_class",
    "set_socket_options",
    "fix_addr",
    "pull_trigger",
    "logger",
    "effective_host",
    "effective_port",
    "_map",
)
TASK_NAMES = (
    "channel",
    "request",
    "status",
    "response_headers",
    "close_on_finish",
    "has_body",
    "version",
    "content_length",
    "write",
    "start_time",
    "chunked_response",
    "set_close_on_finish",
)
DISPATCHER_NAMES = ("queue", "active_count", "threads", "set_thread_count", "shutdown")
ADJUSTMENTS = (
    "host",
    "port",
    "threads",
    "ident",
    "max_request_header_size",
    "max_request_body_size",
    "connection_limit",
    "expose_tracebacks",
    "listen",
    "log_socket_errors",
    "outbuf_high_watermark",
    "recv_bytes",
    "channel_request_lookahead",
)
MODULE_FUNCTIONS = ((wasyncore, "readwrite"), (wasyncore, "close_all"), (wasyncore, "dispatcher"))


def _parameters(function: Any) -> list[Any]:
    """The kinds of its parameters, in order: what a caller passing them by position relies on."""
    return [p.kind for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize("ours", list(OVERRIDES), ids=lambda cls: cls.__name__)
def test_each_override_is_of_a_waitress_method_with_the_same_signature(ours: type) -> None:
    base, pinned = OVERRIDES[ours]
    assert issubclass(ours, base)
    overridden = {
        name
        for name, value in vars(ours).items()
        if inspect.isfunction(value) and callable(getattr(base, name, None))
    }
    assert overridden == pinned, "an override was added or removed: pin it here"
    for name in pinned - {"__init__"}:
        assert _parameters(getattr(ours, name)) == _parameters(getattr(base, name)), name
    if "__init__" in pinned:
        # Ours passes waitress's parameters on by name, and adds its own.
        theirs = set(inspect.signature(base.__init__).parameters)
        own = set(inspect.signature(ours.__init__).parameters) - OWN_INIT_PARAMETERS
        assert own <= theirs


@pytest.fixture
def server() -> Iterator[ConnectionServer]:
    socket_map: dict[int, Any] = {}
    try:
        yield listener_on(socket_map)
    finally:
        wasyncore.close_all(socket_map)


def test_the_attributes_read_on_waitress_objects_exist(server: ConnectionServer) -> None:
    ours, theirs = socket.socketpair()
    try:
        channel = Channel(server, ours, ("127.0.0.1", 1), server.adj, map=server._map)
        parser = channel.parser_class(server.adj)
        parser.received(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        task = KeepAliveTask(channel, parser)
        missing = [
            f"{kind}.{name}"
            for kind, obj, names in (
                ("channel", channel, CHANNEL_NAMES),
                ("parser", parser, PARSER_NAMES),
                ("server", server, SERVER_NAMES),
                ("task", task, TASK_NAMES),
                ("dispatcher", ThreadedTaskDispatcher(), DISPATCHER_NAMES),
                ("adjustments", server.adj, ADJUSTMENTS),
            )
            for name in names
            if not hasattr(obj, name)
        ]
        missing += [f"{m.__name__}.{n}" for m, n in MODULE_FUNCTIONS if not hasattr(m, n)]
        assert missing == []
        assert parser.body_rcv is None or hasattr(parser.body_rcv, "getbuf")
    finally:
        theirs.close()


def test_the_event_loop_turn_uses_wasyncore_as_its_own_loop_does() -> None:
    # polling.Poller serves events as wasyncore.poll2 does.
    assert "readwrite(obj, flags)" in inspect.getsource(wasyncore.poll2)
    assert "wasyncore.readwrite(obj, deliver)" in inspect.getsource(polling.Poller.turn)


def test_wasyncore_changes_its_map_only_as_the_poll_set_hears_of() -> None:
    # polling.SocketMap hears of items set, deleted and cleared: every way
    # wasyncore adds objects to its map and takes them out.
    assert "map[self._fileno] = self" in inspect.getsource(wasyncore.dispatcher.add_channel)
    assert "del map[fd]" in inspect.getsource(wasyncore.dispatcher.del_channel)
    assert "map.clear()" in inspect.getsource(wasyncore.close_all)
