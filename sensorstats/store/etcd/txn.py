"""Building etcd transactions and reading their answers; no I/O here.

A write transaction carries one or more request markers and the merged
records of every sensor they touch: *if* each sensor key still has the
mod-revision last seen (0 for a key believed absent) *and* no marker exists
*and* every guard holds, *then* put the records and the markers, *else* read
every one of those keys (a guard's whole range). A lost race therefore costs
one round trip, which also brings the current values for the next attempt,
and tells which markers exist. Guards are what a keyed request checks
without writing (see `keyed`): its key marker holds its fingerprint, or no
marker of the previous release appeared in a range.

etcd limits each of the three lists (``--max-txn-ops``) separately: a write
with ``n`` sensors, ``m`` markers and ``g`` guards takes ``n + m + g``
compares and reads and at most ``n + m`` puts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import etcd3.etcdrpc as rpc

from sensorstats.core.errors import StoreUnavailable
from sensorstats.core.stats import EMPTY, Stats, UnknownRecordVersion
from sensorstats.store.etcd.keys import sensor_id_of

MAX_TXN_OPS = 128  # etcd's default --max-txn-ops
# The fewest that leave a keyed chunk one sensor: its record, its marker, two guards.
MIN_TXN_OPS = 4
MAX_TXN_BYTES = 1 << 20  # below etcd's default --max-request-bytes (1.5 MiB)
RECORD_BYTES = 1024  # an upper bound of one encoded record plus framing
# An upper bound of what a marker adds besides its key's three copies: its value
# (a 32-byte fingerprint at most), its lease id (10 bytes at most) and the framing
# of its compare, put and read (a key up to 2 MiB: lengths of 3 bytes at most).
MARKER_BYTES = 80
# The same for a range guard besides its two ends' two copies: its revision (10
# bytes at most), and the framing of its compare and read.
GUARD_BYTES = 48


@dataclass(frozen=True, slots=True)
class Seen:
    """A sensor record as last seen: its mod-revision (0: absent) and value."""

    revision: int
    stats: Stats


ABSENT = Seen(0, EMPTY)


@dataclass(frozen=True, slots=True)
class Marker:
    """A request marker to write: its key, what it holds, and its lease."""

    key: str
    value: bytes
    lease: int


@dataclass(frozen=True, slots=True)
class Guard:
    """A compare with no put: `key` holds `value`, or (no value) no key in the range was
    created at or after revision `created_before`."""

    key: str
    value: bytes | None = None
    range_end: str = ""
    created_before: int = 0


@dataclass(frozen=True, slots=True)
class Found:
    """A key a refused write read: its value and the revision that created it."""

    key: str
    value: bytes
    created: int


@dataclass(frozen=True, slots=True)
class Update:
    """One sensor's delta, addressed by its etcd key."""

    key: str
    delta: Stats


def key_cost(key: str) -> int:
    """Bytes a sensor key adds to a write transaction, record included, at most."""
    # The key travels three times: in the compare, the put and the read.
    return 3 * len(key.encode()) + RECORD_BYTES


def marker_cost(marker: str) -> int:
    """Bytes a request marker adds to a write transaction, at most."""
    return 3 * len(marker.encode()) + MARKER_BYTES


def range_guard_cost(start: str, end: str) -> int:
    """Bytes a guard over the range ``[start, end)`` adds to a write transaction, at most."""
    # Both ends travel twice: in the compare and in the read.
    return 2 * (len(start.encode()) + len(end.encode())) + GUARD_BYTES


def split_batch(
    updates: Sequence[Update],
    max_sensors: int,
    max_bytes: int = MAX_TXN_BYTES,
    extra_cost: Callable[[Update], int] | None = None,
) -> list[list[Update]]:
    """Consecutive runs of `updates` that each fit one transaction.

    `extra_cost`: bytes each update adds beyond its key and record (its marker).
    """
    chunks: list[list[Update]] = []
    size = 0
    for update in updates:
        cost = key_cost(update.key) + (extra_cost(update) if extra_cost else 0)
        if not chunks or len(chunks[-1]) >= max_sensors or size + cost > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(update)
        size += cost
    return chunks


def write_txn(
    seen: Mapping[str, Seen],
    merged: Mapping[str, Stats],
    markers: Sequence[Marker],
    guards: Sequence[Guard] = (),
) -> Any:
    """The compare-and-swap transaction described in the module docstring.

    `merged` holds the record to put for every key of `seen`, in the same order.
    """
    compare = [
        rpc.Compare(
            key=key.encode(),
            target=rpc.Compare.MOD,
            result=rpc.Compare.EQUAL,
            mod_revision=record.revision,
        )
        for key, record in seen.items()
    ]
    compare += [
        rpc.Compare(
            key=m.key.encode(), target=rpc.Compare.VERSION, result=rpc.Compare.EQUAL, version=0
        )
        for m in markers
    ]
    compare += [_compare(guard) for guard in guards]
    success = [
        rpc.RequestOp(request_put=rpc.PutRequest(key=key.encode(), value=merged[key].encode()))
        for key in seen
    ]
    success += [
        rpc.RequestOp(request_put=rpc.PutRequest(key=m.key.encode(), value=m.value, lease=m.lease))
        for m in markers
    ]
    failure = [rpc.RequestOp(request_range=rpc.RangeRequest(key=key.encode())) for key in seen]
    failure += [rpc.RequestOp(request_range=rpc.RangeRequest(key=m.key.encode())) for m in markers]
    failure += [
        rpc.RequestOp(
            request_range=rpc.RangeRequest(key=g.key.encode(), range_end=g.range_end.encode())
        )
        for g in guards
    ]
    return rpc.TxnRequest(compare=compare, success=success, failure=failure)


def _compare(guard: Guard) -> Any:
    if guard.value is not None:
        return rpc.Compare(
            key=guard.key.encode(),
            target=rpc.Compare.VALUE,
            result=rpc.Compare.EQUAL,
            value=guard.value,
        )
    # Over a range, etcd requires every key in it to pass; an empty range passes.
    return rpc.Compare(
        key=guard.key.encode(),
        range_end=guard.range_end.encode(),
        target=rpc.Compare.CREATE,
        result=rpc.Compare.LESS,
        create_revision=guard.created_before,
    )


def read_failure_branch(
    keys: Sequence[str],
    markers: Sequence[Marker],
    response: Any,
    guards: Sequence[Guard] = (),
) -> tuple[dict[str, Seen], dict[str, bytes], dict[Guard, list[Found]]]:
    """From a refused write: the current records of `keys`, each existing marker's value,
    and what each guard's key or range holds."""
    ranges = [op.response_range for op in response.responses]
    current = {key: seen_of(found.kvs) for key, found in zip(keys, ranges, strict=False)}
    found = {
        m.key: answer.kvs[0].value
        for m, answer in zip(markers, ranges[len(keys) : len(keys) + len(markers)], strict=True)
        if answer.kvs
    }
    guarded = {
        guard: [Found(kv.key.decode(), kv.value, kv.create_revision) for kv in answer.kvs]
        for guard, answer in zip(guards, ranges[len(keys) + len(markers) :], strict=True)
    }
    return current, found, guarded


def read_txn(keys: Iterable[str]) -> Any:
    """A read-only transaction of one range per key: one linearizable read of them all."""
    return rpc.TxnRequest(
        success=[rpc.RequestOp(request_range=rpc.RangeRequest(key=k.encode())) for k in keys]
    )


def read_answer(keys: Sequence[str], response: Any) -> dict[str, Seen]:
    """The records a `read_txn(keys)` found."""
    return {
        key: seen_of(op.response_range.kvs)
        for key, op in zip(keys, response.responses, strict=True)
    }


def seen_of(kvs: Sequence[Any]) -> Seen:
    """The `Seen` of a range answer for one key: `ABSENT` when there is none."""
    if not kvs:
        return ABSENT
    kv = kvs[0]
    try:
        return Seen(kv.mod_revision, Stats.decode(kv.value))
    except UnknownRecordVersion as error:
        # Written by a newer release: never read as an older record, and so never
        # overwritten by one (a write compares the revision it read).
        sensor = sensor_id_of(kv.key.decode(errors="replace"))
        raise StoreUnavailable(
            f"the record of sensor {sensor!r} has version {error.version}, which this "
            f"release cannot read; upgrade every instance to the release that wrote it "
            f"(the record is left as it is)",
            retry_after=5,
            outage=False,
        ) from None
    except ValueError as error:
        raise StoreUnavailable(
            f"etcd key {kv.key.decode(errors='replace')!r} holds a record this "
            f"version cannot read: {error}",
            retry_after=5,
        ) from None
