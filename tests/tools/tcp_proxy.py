"""A loopback TCP proxy that a test controls: pass, refuse or stall, then pass again.

    proxy = TcpProxy(upstream_port).start()   # listens on proxy.port
    proxy.refuse()    # resets every open connection and every new one
    proxy.stall()     # keeps connections open but forwards nothing, in either direction
    proxy.restore()   # forwards again (stalled bytes then flow on, late)
    proxy.stop()

It stands between a client and one server, as a network between them would:
`refuse` is a partition the client notices at once (connections reset,
new ones refused), `stall` one it does not (packets lost, nothing closed),
which only the client's own deadlines and keepalives reveal. Bytes that
arrive while stalled wait in the proxy and the kernel's buffers and are
delivered after `restore`, as a late packet would be: a request the client
gave up on may still reach the server.

Stdlib only; one thread accepts, one thread per connection forwards both
directions; `stop()` closes everything and joins the threads.
"""

from __future__ import annotations

import contextlib
import enum
import select
import socket
import struct
import threading
import time
from collections.abc import Callable

CONNECT_TIMEOUT = 1.0
POLL_SECONDS = 0.05
CHUNK = 65536
JOIN_TIMEOUT = 5.0


class Mode(enum.Enum):
    """What the proxy does with traffic."""

    PASS = "pass"
    REFUSE = "refuse"
    STALL = "stall"


def _reset(sock: socket.socket) -> None:
    """Close `sock` with a TCP reset (SO_LINGER 0), as a dropped route or a crash would."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Pair:
    """One client connection and its upstream connection."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream

    def interrupt(self) -> None:
        """Wake the forwarding thread from a blocking call; it then resets both sides."""
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class TcpProxy:
    """Forwards connections on 127.0.0.1:`port` to 127.0.0.1:`upstream_port`."""

    def __init__(self, upstream_port: int, port: int = 0, name: str = "proxy") -> None:
        self.upstream_port = upstream_port
        self.name = name
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self.port: int = self._listener.getsockname()[1]
        self._mode = Mode.PASS
        self._lock = threading.Lock()  # guards _mode, _pairs, _threads and the counters
        self._pairs: set[_Pair] = set()
        self._threads: list[threading.Thread] = []
        self._running = False
        self.reset = 0  # connections this proxy reset (refused or cut)

    # --- control -----------------------------------------------------------

    @property
    def mode(self) -> Mode:
        with self._lock:
            return self._mode

    def start(self) -> TcpProxy:
        self._listener.listen(128)
        self._listener.settimeout(POLL_SECONDS)
        self._running = True
        self._spawn(self._accept_loop, f"{self.name}-accept")
        return self

    def refuse(self) -> None:
        """Reset every open connection; reset new ones as soon as they connect."""
        with self._lock:
            self._mode = Mode.REFUSE
            pairs = list(self._pairs)
        for pair in pairs:
            pair.interrupt()

    def stall(self) -> None:
        """Forward nothing, close nothing: a silent partition."""
        with self._lock:
            self._mode = Mode.STALL

    def restore(self) -> None:
        """Forward again, including whatever waited while stalled."""
        with self._lock:
            self._mode = Mode.PASS

    def stop(self) -> None:
        """Close the listener and every connection, and join every thread."""
        self._running = False
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            pair.interrupt()
        deadline = time.monotonic() + JOIN_TIMEOUT
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(OSError):
            self._listener.close()

    def open_connections(self) -> int:
        """Connections being forwarded (or stalled) now."""
        with self._lock:
            return len(self._pairs)

    # --- the threads ---------------------------------------------------------

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while self._running:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed
            with self._lock:
                refusing = self._mode is Mode.REFUSE
                if refusing:
                    self.reset += 1
            if refusing:
                _reset(client)
                continue
            self._spawn(self._forward, f"{self.name}-conn", client)

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(
                ("127.0.0.1", self.upstream_port), timeout=CONNECT_TIMEOUT
            )
        except OSError:
            # The server is down: the client sees what it would see directly.
            _reset(client)
            return
        client.settimeout(None)
        upstream.settimeout(None)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(client, upstream)
        with self._lock:
            self._pairs.add(pair)
        try:
            self._pump(pair)
        finally:
            with self._lock:
                self._pairs.discard(pair)
                cut = self._mode is Mode.REFUSE or not self._running
                if cut:
                    self.reset += 1
            if cut:
                _reset(client)
                _reset(upstream)
            else:
                for sock in (client, upstream):
                    with contextlib.suppress(OSError):
                        sock.close()

    def _pump(self, pair: _Pair) -> None:
        """Copy bytes both ways until either side closes or the proxy cuts the pair."""
        other = {pair.client: pair.upstream, pair.upstream: pair.client}
        while self._running:
            mode = self.mode
            if mode is Mode.REFUSE:
                return
            if mode is Mode.STALL:
                time.sleep(POLL_SECONDS)
                continue
            try:
                readable, _, _ = select.select(list(other), [], [], POLL_SECONDS)
                for sock in readable:
                    if self.mode is not Mode.PASS:
                        break  # read nothing more once stalled or cut
                    data = sock.recv(CHUNK)
                    if not data:
                        return
                    other[sock].sendall(data)
            except (OSError, ValueError):
                return  # reset by a side, or interrupted by refuse()/stop()
