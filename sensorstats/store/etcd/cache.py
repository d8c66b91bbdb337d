"""What one instance remembers of etcd: last seen records, and the marker lease."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable

from sensorstats.store.etcd.client import EtcdClient, EtcdFailure
from sensorstats.store.etcd.txn import ABSENT, Seen


class SeenCache:
    """The last `Seen` of recently used keys, least recently used evicted.

    Only a guess for the next compare-and-swap: a stale entry costs one round
    trip, never correctness.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[str, Seen] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Seen:
        with self._lock:
            seen = self._entries.get(key)
            if seen is not None:
                self._entries.move_to_end(key)
            return seen or ABSENT

    def update(self, entries: Iterable[tuple[str, Seen]]) -> None:
        with self._lock:
            for key, seen in entries:
                # Never go back to an older revision a slower thread brings.
                known = self._entries.get(key)
                if known is None or seen.revision >= known.revision or seen.revision == 0:
                    self._entries[key] = seen
                self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def discard(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)


class MarkerLease:
    """The lease request markers are written with, granted lazily and rotated.

    Renewing one lease forever would keep every marker ever written; a lease
    used for `rotation` seconds and then replaced lets markers expire in bulk.
    """

    def __init__(self, client: EtcdClient, ttl: int, rotation: float) -> None:
        self._client = client
        self._ttl = ttl
        self._rotation = rotation
        self._id: int | None = None
        self._granted_at = 0.0
        self._lock = threading.Lock()

    def current(self, timeout: float) -> int:
        """The lease to use now, granting one if needed within `timeout` seconds."""
        started = time.monotonic()
        # Held during a grant, so that concurrent writers wait for that one
        # grant rather than each making their own; but never past their own
        # deadline, should etcd be slow to grant.
        if not self._lock.acquire(timeout=timeout):
            raise EtcdFailure("etcd did not grant a request-marker lease in time", retry_after=2)
        try:
            now = time.monotonic()
            if self._id is None or now - self._granted_at >= self._rotation:
                self._id = self._client.grant_lease(self._ttl, timeout - (now - started))
                self._granted_at = now
            return self._id
        finally:
            self._lock.release()

    def forget(self, lease: int) -> None:
        """etcd says `lease` is gone: the next marker gets a new one."""
        with self._lock:
            if self._id == lease:
                self._id = None
