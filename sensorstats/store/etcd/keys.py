"""Where things live in etcd, under the configured prefix.

``<prefix>sensors/<id>``
    One sensor's statistics (`Stats.encode`). The id is percent-encoded
    (`urllib.parse.quote` with nothing kept safe but ``A-Za-z0-9_.-~``), so
    the key is printable ASCII that reads back with ``etcdctl``, distinct ids
    give distinct keys (percent-encoding has an inverse), and an encoded id
    never contains ``/``: a per-sensor range ``<prefix>sensors/<id>/`` added
    later cannot cover another sensor, even one whose id extends this one's.

``<prefix>requests/<request id>/<chunk>``
    A request marker: written, with a short lease, by the transaction that
    applies one chunk of one POST, so that a retry can tell whether an
    attempt whose answer was lost did commit. See `writes`.

``<prefix>keys/<digest of client scope and Idempotency-Key>``
    The key marker of a POST with an ``Idempotency-Key``: the same for every
    retry of that request, on any instance, holding the payload's
    fingerprint, on a lease as long as the idempotency window. See `keyed`.

``<prefix>keys/<digest>/sensors/<id>``
    A sensor marker: this sensor's delta of that request was applied (same
    lease, same fingerprint), whichever transaction carried it.

``<prefix>keys/<digest>/<chunk>``
    What the previous release wrote instead of sensor markers: one marker
    per chunk, its number in decimal; only read (`legacy_marker_range`).

``<prefix>healthz``
    Never written; `EtcdStore.check` reads it to prove a quorum answers.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

SENSORS = "sensors/"
REQUESTS = "requests/"
KEYS = "keys/"
HEALTH = "healthz"

# Ids that `quote` leaves as they are; most are, and matching one costs a
# fraction of quoting it, for every sensor of every batch.
_UNQUOTED = re.compile(r"[A-Za-z0-9_.~-]*")


def sensor_key(prefix: str, sensor: str) -> str:
    """The key holding `sensor`'s statistics."""
    encoded = sensor if _UNQUOTED.fullmatch(sensor) else quote(sensor, safe="")
    return prefix + SENSORS + encoded


def sensor_of(prefix: str, key: str) -> str:
    """Inverse of `sensor_key`; raises ValueError for any other key."""
    if not key.startswith(prefix + SENSORS):
        raise ValueError(f"{key!r} is not a sensor key under {prefix!r}")
    return unquote(key[len(prefix + SENSORS) :], errors="strict")


def marker_key(prefix: str, request_id: str, chunk: int) -> str:
    """The key that proves chunk `chunk` of request `request_id` was applied."""
    return f"{prefix}{REQUESTS}{request_id}/{chunk}"


def key_marker_key(prefix: str, digest: str) -> str:
    """The key holding the fingerprint the keyed request `digest` was first applied with."""
    return f"{prefix}{KEYS}{digest}"


def sensor_marker_key(prefix: str, digest: str, sensor_key: str) -> str:
    """The key that proves the keyed request `digest` applied its delta to `sensor_key`."""
    return f"{prefix}{KEYS}{digest}/{sensor_key[len(prefix) :]}"


def legacy_marker_key(prefix: str, digest: str, chunk: int) -> str:
    """The previous release's marker of chunk `chunk` of the keyed request `digest`."""
    return f"{prefix}{KEYS}{digest}/{chunk}"


def legacy_marker_range(prefix: str, digest: str) -> tuple[str, str]:
    """The range ``[start, end)`` holding every `legacy_marker_key` of `digest`, and no other.

    Chunk numbers are decimal digits, which sort between "0" and ":"; a
    sensor marker's ``sensors/`` does not.
    """
    return f"{prefix}{KEYS}{digest}/0", f"{prefix}{KEYS}{digest}/:"


def legacy_chunk_of(prefix: str, digest: str, key: str) -> int | None:
    """The chunk number of a key in `legacy_marker_range`; None if it is not one."""
    suffix = key.removeprefix(f"{prefix}{KEYS}{digest}/")
    return int(suffix) if suffix.isascii() and suffix.isdigit() else None


def sensor_id_of(key: str) -> str:
    """The sensor id a `sensor_key` names, whatever the prefix (for messages)."""
    return unquote(key.rpartition("/")[2])


def health_key(prefix: str) -> str:
    """A key under the prefix that `check` reads and nothing writes."""
    return prefix + HEALTH
