"""The event loop's poll set, kept between turns: an idle connection costs a turn nothing.

Waitress's loop builds a new poll set on every turn, asking every object in
its map whether it wants to read or write: about 0.3 µs of interpreter time
per open connection per turn. 500 idle keep-alive connections cost every
turn 160 µs, which serving traffic pays again and again (a quarter of an
instance's GET rate, measured). `Poller` keeps one poll set (epoll where
the kernel has it, else poll) and asks again, before each poll, only the
objects whose answer may have changed since they were last asked:

- those that had an event in the last turn, and those added to the map;
- those that want something other than to read, or that do not declare
  `idle_is_stable` (the listener, waitress's trigger): a connection with a
  request being served, output to send, or closing is asked every turn;
- those passed to `touch` (by a thread other than the loop that changed them);
- every object after `ask_all` (`server.Server` calls it after enforcing
  deadlines, which may close or answer any connection).

A connection that only waits to read (`Channel` declares `idle_is_stable`)
is left alone until it has an event: no request of its is queued, so no
worker holds it, and its wants change only on the loop, through its own
events, or through the one thing a worker does after taking its last
request (``100 Continue`` for the next one, see `Channel.send_continue`),
which touches it.

The kernel's registration may want more than the object does. An object
that stops wanting to read while its request is served is not unregistered
then (a system call, and the interpreter lock released, twice per
request); if an event it does not want arrives, it is not delivered and the
registration is narrowed to what the object wants. A descriptor leaves the
poll set the moment its object leaves the map, while it is still open, so
that the kernel never reports a closed descriptor's events for a new
connection that reuses its number; an event already polled for it is
dropped.
"""

from __future__ import annotations

import select
from collections import deque
from collections.abc import Iterable
from typing import Any

from waitress import wasyncore

# Values shared by poll and epoll on Linux (and what wasyncore.readwrite reads).
READ = select.POLLIN | select.POLLPRI
WRITE = select.POLLOUT
# Reported whatever was asked for: delivered only to an object that wants something.
_TROUBLE = select.POLLERR | select.POLLHUP | select.POLLNVAL


HAS_EPOLL = hasattr(select, "epoll")


class _PollSet:
    """epoll (`use_epoll`), else poll: one registration per descriptor."""

    def __init__(self, use_epoll: bool) -> None:
        self._epoll = select.epoll() if use_epoll else None
        self._poll = None if use_epoll else select.poll()

    def register(self, fd: int, events: int) -> None:
        if self._epoll is not None:
            self._epoll.register(fd, events)
        else:
            self._poll.register(fd, events)  # type: ignore[union-attr]

    def modify(self, fd: int, events: int) -> None:
        if self._epoll is not None:
            self._epoll.modify(fd, events)
        else:
            self._poll.modify(fd, events)  # type: ignore[union-attr]

    def unregister(self, fd: int) -> None:
        try:
            if self._epoll is not None:
                self._epoll.unregister(fd)
            else:
                self._poll.unregister(fd)  # type: ignore[union-attr]
        except (OSError, KeyError):
            pass  # already gone from the kernel's set

    def poll(self, timeout: float) -> Iterable[tuple[int, int]]:
        if self._epoll is not None:
            return self._epoll.poll(timeout)
        return self._poll.poll(int(timeout * 1000))  # type: ignore[union-attr]

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()


class SocketMap(dict[int, Any]):
    """Waitress's map of descriptors to their objects, telling its `Poller` of every change."""

    def __init__(self, poller: Poller) -> None:
        super().__init__()
        self._poller = poller

    def __setitem__(self, fd: int, obj: Any) -> None:
        self._poller.removed(fd)  # a descriptor reused without leaving the map first
        super().__setitem__(fd, obj)
        self._poller.added(fd, obj)

    def __delitem__(self, fd: int) -> None:
        super().__delitem__(fd)
        self._poller.removed(fd)

    def pop(self, fd: int, *default: Any) -> Any:
        obj = super().pop(fd, *default)
        self._poller.removed(fd)
        return obj

    def clear(self) -> None:
        for fd in list(self):
            self._poller.removed(fd)
        super().clear()


class Poller:
    """One poll set for the life of the event loop, over `socket_map`; see the module docstring."""

    def __init__(self, *, use_epoll: bool = HAS_EPOLL) -> None:
        self.socket_map = SocketMap(self)
        self._set = _PollSet(use_epoll)
        # fd -> (object, what it wants, what the kernel reports for it).
        self._registered: dict[int, tuple[Any, int, int]] = {}
        # Objects to ask before the next poll; loop thread only.
        self._to_ask: dict[int, Any] = {}
        # Touched by other threads: appended there, taken here (atomic).
        self._touched: deque[Any] = deque()
        self._ask_everything = False

    def added(self, fd: int, obj: Any) -> None:
        """`obj` entered the map on `fd` (`SocketMap`): asked before the next poll."""
        self._to_ask[fd] = obj

    def removed(self, fd: int) -> None:
        """`fd` left the map (`SocketMap`), its descriptor still open: out of the poll set."""
        self._to_ask.pop(fd, None)
        if self._registered.pop(fd, None) is not None:
            self._set.unregister(fd)

    def touch(self, obj: Any) -> None:
        """Ask `obj` again before the next poll; from any thread (wake the loop after)."""
        self._touched.append(obj)

    def ask_all(self) -> None:
        """Ask every object before the next poll."""
        self._ask_everything = True

    def turn(self, timeout: float) -> None:
        """One turn of the event loop: poll, then serve each event to its object.

        An event goes only to the object its descriptor was polled for: one
        whose object left the map during this turn (closed, and maybe its
        number already reused by a connection accepted meanwhile) is dropped.
        """
        self._ask()
        registered = self._registered
        socket_map = self.socket_map
        to_ask = self._to_ask
        for fd, events in self._set.poll(timeout):
            entry = registered.get(fd)
            if entry is None:
                continue  # left the map after it was polled
            obj, wanted, reported = entry
            deliver = events & (wanted | _TROUBLE) if wanted else 0
            if deliver != events and wanted != reported:
                self._narrow(fd, obj, wanted)
            if deliver and socket_map.get(fd) is obj:
                to_ask[fd] = obj
                wasyncore.readwrite(obj, deliver)

    def close(self) -> None:
        """Release the poll set (the map's objects are closed by their owner)."""
        self._set.close()

    def _ask(self) -> None:
        to_ask = self._to_ask
        if self._ask_everything:
            self._ask_everything = False
            to_ask.update(self.socket_map)
        touched = self._touched
        while touched:
            obj = touched.popleft()
            fd = getattr(obj, "_fileno", None)
            if fd is not None:
                to_ask[fd] = obj
        if not to_ask:
            return
        asking, self._to_ask = to_ask, {}
        socket_map = self.socket_map
        for fd, obj in asking.items():
            if socket_map.get(fd) is obj:
                self._want(fd, obj)

    def _want(self, fd: int, obj: Any) -> None:
        wanted = 0
        if obj.readable():
            wanted = READ
        # Listening sockets are never writable.
        if obj.writable() and not obj.accepting:
            wanted |= WRITE
        if wanted != READ or not getattr(obj, "idle_is_stable", False):
            self._to_ask[fd] = obj  # asked again before every poll until idle
        entry = self._registered.get(fd)
        if entry is None:
            if wanted:
                self._register(fd, obj, wanted)
            return
        reported = entry[2]
        if wanted & ~reported:
            self._set.modify(fd, reported | wanted)
            reported |= wanted
        self._registered[fd] = (obj, wanted, reported)

    def _register(self, fd: int, obj: Any, wanted: int) -> None:
        try:
            self._set.register(fd, wanted)
        except OSError:
            # Not an open descriptor any more: as poll reports it.
            wasyncore.readwrite(obj, select.POLLNVAL)
            return
        self._registered[fd] = (obj, wanted, wanted)

    def _narrow(self, fd: int, obj: Any, wanted: int) -> None:
        """The kernel reported what `obj` no longer wants: report only what it wants."""
        if wanted:
            self._set.modify(fd, wanted)
            self._registered[fd] = (obj, wanted, wanted)
        else:
            # Even an empty registration reports hang-ups, again and again.
            del self._registered[fd]
            self._set.unregister(fd)
