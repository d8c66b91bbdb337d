"""The poll set kept between turns: idle connections left alone, nothing missed, nothing stale.

Real socket pairs and wasyncore dispatchers, driven one turn at a time, on
epoll and on poll.
"""

from __future__ import annotations

import os
import select
import socket
import threading
from collections.abc import Iterator
from contextlib import suppress

import pytest
from waitress import wasyncore

from sensorstats.ops.readiness import Readiness
from sensorstats.server import polling
from sensorstats.server.channel import Channel
from sensorstats.server.polling import HAS_EPOLL, Poller
from sensorstats.server.serving import Server
from sensorstats.settings import Settings
from sensorstats.store.memory import MemoryStore
from tests.support.listeners import listener_on

BACKENDS = [pytest.param(True, id="epoll"), pytest.param(False, id="poll")]
if not HAS_EPOLL:
    BACKENDS = BACKENDS[1:]


class Connection(wasyncore.dispatcher):  # type: ignore[misc]
    """A connection that says what it wants as told, and records what the loop asks and hands it."""

    idle_is_stable = True

    def __init__(self, sock: socket.socket, poller: Poller) -> None:
        super().__init__(sock, map=poller.socket_map)
        self.connected = True  # a socket pair: connected from the start
        self.wants_to_read = True
        self.wants_to_write = False
        self.asked = 0
        self.events: list[str] = []

    def readable(self) -> bool:
        self.asked += 1
        return self.wants_to_read

    def writable(self) -> bool:
        return self.wants_to_write

    def handle_read(self) -> None:
        self.events.append("read")
        self.recv(4096)

    def handle_write(self) -> None:
        self.events.append("write")
        self.wants_to_write = False

    def handle_close(self) -> None:
        self.events.append("close")
        self.close()


class Restless(Connection):
    """Like waitress's trigger and listener: does not say its wants are stable while idle."""

    idle_is_stable = False


@pytest.fixture(params=BACKENDS)
def poller(request: pytest.FixtureRequest) -> Iterator[Poller]:
    made = Poller(use_epoll=request.param)
    try:
        yield made
    finally:
        wasyncore.close_all(made.socket_map)
        made.close()


@pytest.fixture
def peers() -> Iterator[list[socket.socket]]:
    theirs: list[socket.socket] = []
    yield theirs
    for sock in theirs:
        sock.close()


def connect(poller: Poller, peers: list[socket.socket], kind: type = Connection) -> Connection:
    ours, theirs = socket.socketpair()
    peers.append(theirs)
    made: Connection = kind(ours, poller)
    return made


def test_the_flags_mean_the_same_to_poll_and_epoll() -> None:
    # wasyncore.readwrite reads poll's flags, whichever set reported them.
    if HAS_EPOLL:
        assert select.EPOLLIN | select.EPOLLPRI == polling.READ
        assert select.EPOLLOUT == polling.WRITE
        assert (select.EPOLLERR, select.EPOLLHUP) == (select.POLLERR, select.POLLHUP)


def test_an_idle_connection_is_asked_once_then_left_alone(
    poller: Poller, peers: list[socket.socket]
) -> None:
    idle = connect(poller, peers)
    for _ in range(5):
        poller.turn(0)
    assert idle.asked == 1
    assert idle.events == []


def test_an_idle_connection_gets_what_arrives_and_is_asked_again(
    poller: Poller, peers: list[socket.socket]
) -> None:
    idle = connect(poller, peers)
    poller.turn(0)
    peers[0].sendall(b"request")
    poller.turn(1.0)
    assert idle.events == ["read"]
    poller.turn(0)
    assert idle.asked == 2


def test_objects_not_stable_while_idle_are_asked_every_turn(
    poller: Poller, peers: list[socket.socket]
) -> None:
    restless = connect(poller, peers, Restless)
    for _ in range(4):
        poller.turn(0)
    assert restless.asked == 4


def test_a_busy_connection_is_asked_every_turn_until_it_is_idle(
    poller: Poller, peers: list[socket.socket]
) -> None:
    busy = connect(poller, peers)
    busy.wants_to_read = False  # a request being served
    for _ in range(3):
        poller.turn(0)
    assert busy.asked == 3
    busy.wants_to_read = True
    for _ in range(3):
        poller.turn(0)
    assert busy.asked == 4


class Served(Connection):
    """Takes one request per read, and wants nothing more until it is answered."""

    def handle_read(self) -> None:
        super().handle_read()
        self.wants_to_read = False


def served_a_request(poller: Poller, peers: list[socket.socket]) -> Connection:
    """A connection that has read its request and now waits for its answer."""
    conn = connect(poller, peers, Served)
    poller.turn(0)
    peers[0].sendall(b"request")
    poller.turn(1.0)
    return conn


def test_a_connection_that_does_not_want_to_read_is_not_handed_its_input(
    poller: Poller, peers: list[socket.socket]
) -> None:
    conn = served_a_request(poller, peers)
    assert conn.events == ["read"]
    peers[0].sendall(b"pipelined")  # while the request is served
    for _ in range(3):
        poller.turn(0.01)
    assert conn.events == ["read"]
    conn.wants_to_read = True  # answered
    poller.turn(1.0)
    assert conn.events == ["read", "read"]


def test_a_touched_connection_is_asked_and_served_before_the_next_poll(
    poller: Poller, peers: list[socket.socket]
) -> None:
    idle = connect(poller, peers)
    poller.turn(0)

    def worker() -> None:  # as a worker sending "100 Continue" after the last request
        idle.wants_to_write = True
        poller.touch(idle)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    poller.turn(1.0)
    assert idle.events == ["write"]


def test_without_a_touch_a_change_from_elsewhere_waits_for_ask_all(
    poller: Poller, peers: list[socket.socket]
) -> None:
    # The contract that makes touching necessary, and `ask_all` a remedy.
    idle = connect(poller, peers)
    poller.turn(0)
    idle.wants_to_write = True
    poller.turn(0)
    assert idle.events == []
    poller.ask_all()
    poller.turn(1.0)
    assert idle.events == ["write"]


def reports(poller: Poller) -> list[int]:
    """The number of events the kernel reports at each later turn."""
    counts: list[int] = []
    polled = poller._set.poll

    def counting(timeout: float) -> list[tuple[int, int]]:
        events = list(polled(timeout))
        counts.append(len(events))
        return events

    poller._set.poll = counting  # type: ignore[method-assign]
    return counts


def test_a_connection_written_to_is_narrowed_back_to_reading(
    poller: Poller, peers: list[socket.socket]
) -> None:
    conn = connect(poller, peers)
    conn.wants_to_write = True
    poller.turn(1.0)
    assert conn.events == ["write"]
    # A socket stays writable: unless its registration is narrowed back to
    # reading, the kernel reports it on every turn, and the loop never sleeps.
    counts = reports(poller)
    for _ in range(3):
        poller.turn(0)
    assert conn.events == ["write"]
    assert counts[1:] == [0, 0]


def test_input_for_a_connection_that_wants_nothing_stops_being_reported(
    poller: Poller, peers: list[socket.socket]
) -> None:
    conn = served_a_request(poller, peers)
    peers[0].sendall(b"pipelined")
    counts = reports(poller)
    for _ in range(3):
        poller.turn(0)
    assert counts[1:] == [0, 0]
    assert conn.events == ["read"]


def test_a_hang_up_reaches_an_idle_connection(poller: Poller, peers: list[socket.socket]) -> None:
    idle = connect(poller, peers)
    poller.turn(0)
    peers[0].close()
    peers.clear()
    poller.turn(1.0)
    assert "close" in idle.events
    assert not poller.socket_map


def test_a_hang_up_does_not_reach_a_connection_that_wants_nothing(
    poller: Poller, peers: list[socket.socket]
) -> None:
    # As waitress: a connection whose request is being served learns of the
    # hang-up when it answers, not from the loop meanwhile.
    busy = connect(poller, peers)
    busy.wants_to_read = False
    poller.turn(0)
    peers[0].close()
    peers.clear()
    for _ in range(3):
        poller.turn(0.01)
    assert busy.events == []


def test_connections_that_come_and_go_leave_nothing_in_the_poll_set(
    poller: Poller, peers: list[socket.socket]
) -> None:
    survivor = connect(poller, peers)
    for _ in range(50):
        gone = connect(poller, peers)
        poller.turn(0)
        gone.close()
        poller.turn(0)
    peers[0].sendall(b"still here")
    poller.turn(1.0)
    assert survivor.events == ["read"]
    assert set(poller.socket_map) == {survivor._fileno}
    # The poll set holds what the map holds, and nothing closed.
    assert list(poller._registered) == [survivor._fileno]


def test_a_connection_already_closed_when_registered_is_closed(
    poller: Poller, peers: list[socket.socket]
) -> None:
    doomed = connect(poller, peers)
    doomed.socket.close()  # its descriptor is no longer open, yet it is in the map
    poller.turn(0)
    assert doomed.events == ["close"]
    assert not poller.socket_map


class Displacer(Connection):
    """Like the listener at its limit: serving its event closes `victim` and reuses its fd."""

    def __init__(self, sock: socket.socket, poller: Poller, victim: Connection) -> None:
        super().__init__(sock, poller)
        self.poller = poller
        self.victim = victim
        self.newcomer: Connection | None = None
        self.newcomer_peer: socket.socket | None = None

    def handle_read(self) -> None:
        self.recv(1)
        fd = self.victim.socket.fileno()
        self.victim.close()
        ours, theirs = socket.socketpair()
        # As accept() would, the newcomer takes the lowest free descriptor:
        # the victim's.
        if ours.fileno() != fd:
            os.dup2(ours.fileno(), fd)
            ours.close()
            ours = socket.socket(fileno=fd)
        self.newcomer = Connection(ours, self.poller)
        self.newcomer_peer = theirs


def test_an_event_is_delivered_only_to_the_connection_it_was_polled_for(
    poller: Poller, peers: list[socket.socket]
) -> None:
    victim = connect(poller, peers)
    listener_ours, listener_peer = socket.socketpair()
    peers.append(listener_peer)
    listener = Displacer(listener_ours, poller, victim)
    # The listener first among the events, so that its event is served first.
    poller.socket_map.clear()
    poller.socket_map[listener._fileno] = listener
    poller.socket_map[victim._fileno] = victim
    poller.turn(0)
    # Both have an event in the same poll, the listener's first (poll reports
    # in registration order, epoll in the order they happened): the victim's
    # is a hang-up.
    listener_peer.sendall(b"x")
    peers.pop(0).close()
    poller.turn(1.0)
    assert listener.newcomer is not None
    if listener.newcomer_peer is not None:
        peers.append(listener.newcomer_peer)
    # The hang-up was the victim's; the newcomer on its reused fd never saw it.
    assert listener.newcomer.events == []
    assert listener.newcomer.connected
    poller.turn(0)
    peers[-1].sendall(b"for the newcomer")
    poller.turn(1.0)
    assert listener.newcomer.events == ["read"]


def test_a_100_continue_sent_by_a_worker_reaches_an_idle_looking_connection() -> None:
    # A worker takes a connection's last queued request, and then owes the
    # next, half-received one its "100 Continue". The loop may have seen the
    # connection idle in between: the channel touches it, or the answer
    # would wait in its output for an event that never comes.
    poller = Poller()
    listener = listener_on(poller.socket_map)
    adjustments = listener.adj
    listener.poller = poller
    ours, theirs = socket.socketpair()
    try:
        channel = Channel(listener, ours, ("127.0.0.1", 1), adjustments, map=poller.socket_map)
        poller.turn(0)
        head = (
            b"POST /data HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        channel.request = channel.parser_class(adjustments)
        channel.request.received(head)
        ours.setblocking(False)
        with suppress(BlockingIOError):  # the client reads nothing for now
            while True:
                ours.send(b"\0" * 65536)
        worker = threading.Thread(target=channel.send_continue)
        worker.start()
        worker.join()
        theirs.setblocking(False)
        received = b""
        for _ in range(200):
            with suppress(BlockingIOError):
                while chunk := theirs.recv(1 << 20):
                    received += chunk
            if received.endswith(b"HTTP/1.1 100 Continue\r\n\r\n"):
                break
            poller.turn(0.01)
        assert received.endswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    finally:
        theirs.close()
        wasyncore.close_all(poller.socket_map)
        poller.close()


def test_the_server_polls_its_map_and_queued_requests_stop_the_reading() -> None:
    server = Server(
        lambda environ, start_response: [],
        Settings(host="127.0.0.1", port=0),
        Readiness(MemoryStore()),
    )
    listener = server._listeners[0]
    poller = listener.poller
    try:
        assert poller is not None
        assert listener._map is poller.socket_map
        # What `Channel.idle_is_stable` relies on: a connection with a
        # request queued for a worker does not want to read.
        assert listener.adj.channel_request_lookahead == 0
    finally:
        wasyncore.close_all(listener._map)
        if poller is not None:
            poller.close()
