"""The connection to etcd: member failover, per-call deadlines, errors as types.

We use the pinned ``etcd3`` package (cslab-etcd3, upstream python-etcd3) for
its generated gRPC stubs and messages only, not for its client class.
``MultiEndpointEtcd3Client`` (etcd3/client.py) gets three things wrong for a
long-running service:

- After one UNAVAILABLE or DEADLINE_EXCEEDED it marks the current
  ``Endpoint`` failed, and ``Endpoint.use()`` then raises
  ``ValueError('Trying to use a failed node')`` for ``time_retry`` seconds,
  300 by default (``NoServerAvailableError`` with ``failover=True`` and no
  other endpoint). One timeout or one etcd restart locks the service out for
  five minutes. The check uses the wall clock, so a clock stepped back
  stretches the lock-out further.
- One ``timeout`` for every call: a health probe cannot be shorter than a
  write, and a write cannot be cut to what is left of its deadline.
- Its stub cache and failover state are shared by all threads without a
  lock; a failure seen by one thread marks whichever endpoint is current at
  that moment, which under concurrent failover may be a healthy one. And it
  replaces UNAVAILABLE with a bare ``ConnectionFailedError``, losing etcd's
  reason ("no leader", "request timed out").

`EtcdClient` keeps one gRPC channel per member for the life of the process
(gRPC channels and stubs are thread-safe and reconnect by themselves), takes
a deadline on every call, and holds a lock only to choose a member. A member
that failed is avoided for `AVOID_FAILED_MEMBER` seconds *while another is
available*; when all have failed recently the least recently failed one is
tried anyway, so no failure ever shuts the service out of a cluster that is
back.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import etcd3.etcdrpc as rpc
import grpc  # type: ignore[import-untyped]

from sensorstats.errors import StoreUnavailable
from sensorstats.settings import EtcdEndpoint
from sensorstats.store.events import STORE_EVENTS

# Seconds a failed member is passed over while another member is available.
AVOID_FAILED_MEMBER = 1.0

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    # gRPC's reconnect backoff grows to 120 s by default: after a long outage
    # a channel could sit idle for two minutes after etcd is back.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Notices a member that vanished without closing the connection (host
    # down, partition), which per-call deadlines alone never repair. etcd
    # rejects pings more often than every 5 s (--grpc-keepalive-min-time).
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    # A restarted member may come back at a new address (a Kubernetes pod);
    # gRPC re-resolves a name at most every 30 s by default.
    ("grpc.dns_min_time_between_resolutions_ms", 1_000),
)


class EtcdFailure(StoreUnavailable):
    """An etcd call failed; the flags tell the store what it may do next.

    `outcome_unknown`: the call may have taken effect (its answer was lost).
    `transient`: the same call may succeed if retried soon.
    `suspect_member`: the member itself looks unhealthy; try another.
    `lease_missing`: etcd does not know the lease the request named.
    """

    def __init__(
        self,
        detail: str,
        *,
        retry_after: int = 1,
        outcome_unknown: bool = False,
        transient: bool = True,
        suspect_member: bool = False,
        lease_missing: bool = False,
    ) -> None:
        # A refusal (quota, access, a bad request) shows that etcd answered:
        # no reason for a circuit breaker to stop asking it.
        super().__init__(detail, retry_after, outage=transient)
        self.outcome_unknown = outcome_unknown
        self.transient = transient
        self.suspect_member = suspect_member
        self.lease_missing = lease_missing


def describe_failure(
    code: grpc.StatusCode, details: str, endpoint: str, timeout: float
) -> EtcdFailure:
    """Translate a gRPC status from `endpoint` into an `EtcdFailure` with a useful detail."""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return EtcdFailure(
            f"etcd at {endpoint} did not answer within {timeout:.3g} s (deadline exceeded)",
            retry_after=2,
            outcome_unknown=True,
            suspect_member=True,
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        if "no leader" in details:
            detail = f"etcd has no leader (no quorum?) according to {endpoint}"
        elif "leader changed" in details:
            detail = "etcd changed leader during the request"
        elif "timed out" in details:
            detail = f"etcd at {endpoint} timed out committing the request ({details})"
        else:
            detail = f"etcd unavailable at {endpoint}: {details}"
        # gRPC fails a call with "failed to connect" only when no connection
        # was ready to send it on; any other UNAVAILABLE may follow a commit.
        sent = "failed to connect" not in details.lower()
        return EtcdFailure(detail, retry_after=2, outcome_unknown=sent, suspect_member=True)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        if "database space exceeded" in details:
            return EtcdFailure(
                "etcd database space exceeded (quota); compact/defragment and disarm "
                "the NOSPACE alarm",
                retry_after=5,
                transient=False,
            )
        if "too many requests" in details:
            return EtcdFailure(f"etcd is overloaded ({details})", retry_after=2)
        # Could be gRPC refusing an over-large *answer*: the call ran.
        return EtcdFailure(
            f"etcd resource exhausted: {details}", retry_after=2, outcome_unknown=True
        )
    if code == grpc.StatusCode.NOT_FOUND and "lease not found" in details:
        return EtcdFailure("etcd no longer knows the request-marker lease", lease_missing=True)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        if "too many operations" in details:
            detail = (
                "etcd refused a transaction with too many operations: its --max-txn-ops "
                "is below the default of 128 that sensorstats splits batches by"
            )
        elif "too large" in details:
            detail = f"etcd refused an over-large request ({details}); see --max-request-bytes"
        else:
            detail = f"etcd rejected the request: {details}"
        return EtcdFailure(detail, retry_after=5, transient=False)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return EtcdFailure(f"etcd refused access: {details}", retry_after=5, transient=False)
    return EtcdFailure(
        f"etcd call failed at {endpoint}: {code.name}: {details}",
        retry_after=2,
        outcome_unknown=True,
        suspect_member=code
        in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED),
    )


@dataclass(eq=False)
class _Member:
    endpoint: EtcdEndpoint
    channel: Any
    kv: Any
    lease: Any
    failed_at: float | None = None


def _connect(endpoint: EtcdEndpoint) -> _Member:
    target = endpoint.netloc
    options = list(CHANNEL_OPTIONS)
    if endpoint.secure:
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(), options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    return _Member(endpoint, channel, rpc.KVStub(channel), rpc.LeaseStub(channel))


class EtcdClient:
    """Calls to an etcd cluster through any of its members; thread-safe.

    Every call takes its own timeout in seconds and raises `EtcdFailure`
    (never a gRPC exception) when it does not succeed.
    """

    def __init__(
        self,
        endpoints: Sequence[EtcdEndpoint],
        *,
        avoid_failed_member: float = AVOID_FAILED_MEMBER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = tuple(endpoints)
        self._members = [_connect(endpoint) for endpoint in self.endpoints]
        # Instances start on different members so that they spread the load.
        self._current = random.randrange(len(self._members))  # noqa: S311
        self._avoid = avoid_failed_member
        self._clock = clock
        self._lock = threading.Lock()

    @property
    def member_count(self) -> int:
        return len(self._members)

    def txn(self, request: Any, timeout: float) -> Any:
        """Run a `TxnRequest`; returns the `TxnResponse`."""
        return self._call(lambda m: m.kv.Txn, request, timeout)

    def range(self, request: Any, timeout: float) -> Any:
        """Run a `RangeRequest`; returns the `RangeResponse`."""
        return self._call(lambda m: m.kv.Range, request, timeout)

    def delete_range(self, request: Any, timeout: float) -> Any:
        """Run a `DeleteRangeRequest`; returns the `DeleteRangeResponse`."""
        return self._call(lambda m: m.kv.DeleteRange, request, timeout)

    def grant_lease(self, ttl: int, timeout: float) -> int:
        """A new lease of `ttl` seconds; returns its id."""
        response = self._call(lambda m: m.lease.LeaseGrant, rpc.LeaseGrantRequest(TTL=ttl), timeout)
        return int(response.ID)

    def mark_failed(self, endpoint: EtcdEndpoint) -> None:
        """Treat `endpoint` as just failed, as a timeout on it would."""
        for member in self._members:
            if member.endpoint == endpoint:
                self._failed(member)

    def close(self) -> None:
        for member in self._members:
            member.channel.close()

    def _call(self, method: Callable[[_Member], Any], request: Any, timeout: float) -> Any:
        member = self._choose()
        started = time.monotonic()
        try:
            response = method(member)(request, timeout=timeout)
        except grpc.RpcError as error:
            code, details = _status(error)
            STORE_EVENTS.etcd_call(request, code.name, started)
            failure = describe_failure(code, details, str(member.endpoint), timeout)
            if failure.suspect_member:
                self._failed(member)
            raise failure from None
        except ValueError as error:  # gRPC's answer to a call on a closed channel
            raise EtcdFailure(f"etcd client closed: {error}", transient=False) from None
        STORE_EVENTS.etcd_call(request, "OK", started)
        member.failed_at = None
        return response

    def _choose(self) -> _Member:
        now = self._clock()
        with self._lock:
            count = len(self._members)
            for step in range(count):
                index = (self._current + step) % count
                failed_at = self._members[index].failed_at
                if failed_at is None or now - failed_at >= self._avoid:
                    self._current = index
                    return self._members[index]
            # Every member failed recently. Ask the one that failed longest ago
            # rather than refuse: etcd may be back, and only a call can tell.
            oldest = min(self._members, key=lambda m: m.failed_at or 0.0)
            self._current = self._members.index(oldest)
            return oldest

    def _failed(self, member: _Member) -> None:
        with self._lock:
            member.failed_at = self._clock()
            # Stay on the next member once the pause is over, rather than
            # coming back to one that failed: it may hang every call again.
            if self._members[self._current] is member:
                self._current = (self._current + 1) % len(self._members)
                STORE_EVENTS.etcd_failover()


def _status(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """The status code and message of a failed call."""
    if isinstance(error, grpc.Call):  # what gRPC raises for a finished call
        return error.code(), error.details() or ""
    return grpc.StatusCode.UNKNOWN, str(error)
