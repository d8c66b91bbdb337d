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
back; after a failure the client moves on to the next member rather than
returning to the one that failed. `CHANNEL_OPTIONS` cap gRPC's reconnect
back-off at 1 s, re-resolve names at most every second (a restarted pod may
have a new address) and send keepalive pings to notice a member that
vanished without closing the connection. `tests/integration/test_etcd_client.py`
shows the package's lock-out against a real etcd.

Access (`EtcdAccess`): ``https://`` members are reached over TLS with the
configured CA and, for ``--client-cert-auth``, a client certificate. With an
etcd user, the client asks etcd's ``Authenticate`` for a token on first need
and sends it as the ``token`` call metadata, as etcd's own clients do. etcd
forgets a simple token after ``--auth-token-ttl`` (300 s) unused, a JWT
expires, and a restarted member forgets them all: a call refused with
"invalid auth token" fetches a new token and is sent once more. etcd checks
the token before it proposes anything, so the refused call never took effect.
Concurrent calls refused at once share one renewal, and a refused
authentication is answered from memory for `AUTH_REFUSAL_MEMORY` seconds,
since each attempt costs etcd a bcrypt hash.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import etcd3.etcdrpc as rpc
import grpc  # type: ignore[import-untyped]

from sensorstats.core.errors import StoreUnavailable
from sensorstats.settings import EtcdEndpoint, Settings, read_password
from sensorstats.store.events import STORE_EVENTS

# Seconds a failed member is passed over while another member is available.
AVOID_FAILED_MEMBER = 1.0
# Seconds a refused authentication (a wrong password) is answered from memory:
# each attempt costs etcd a bcrypt hash, and requests must not multiply them.
AUTH_REFUSAL_MEMORY = 1.0

_log = logging.getLogger(__name__)

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
    if code == grpc.StatusCode.UNAVAILABLE and any(m in details for m in _TLS_FAILURES):
        # A certificate refused is a configuration to fix, not an outage to
        # wait out: the request fails now instead of retrying to its deadline.
        # The member is still set aside, in case only its certificate is bad.
        return EtcdFailure(
            f"TLS handshake with etcd at {endpoint} failed: {_tls_reason(details)}",
            retry_after=5,
            transient=False,
            suspect_member=True,
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT and "user name is empty" in details:
        # etcd's answer to a call without a token (or client certificate)
        # while its authentication is on.
        return EtcdFailure(
            "etcd refused access: it requires authentication; set SENSORSTATS_ETCD_USER and "
            "SENSORSTATS_ETCD_PASSWORD_FILE, or a client certificate whose common name is "
            "an etcd user",
            retry_after=5,
            transient=False,
        )
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


# What gRPC's details say when the TLS handshake failed or its peer was refused.
_TLS_FAILURES = ("andshake failed", "erification check failed")
# The hint for each reason BoringSSL gives, as far as it points at a setting.
_TLS_HINTS = (
    (
        "CERTIFICATE_VERIFY_FAILED",
        "etcd's certificate is not signed by a CA in SENSORSTATS_ETCD_CA_FILE, has expired, "
        "or does not name the host of the endpoint",
    ),
    (
        "ALERT_BAD_CERTIFICATE",
        "etcd refused the client certificate (SENSORSTATS_ETCD_CERT_FILE): missing, or not "
        "signed by a CA in etcd's --trusted-ca-file",
    ),
    (
        "ALERT_CERTIFICATE_REQUIRED",
        "etcd requires a client certificate: set SENSORSTATS_ETCD_CERT_FILE and "
        "SENSORSTATS_ETCD_KEY_FILE",
    ),
    ("WRONG_VERSION_NUMBER", "the endpoint does not speak TLS: should it be http://?"),
    (
        "Hostname Verification",
        "etcd's certificate does not name the host in SENSORSTATS_ETCD_ENDPOINTS",
    ),
)


def _tls_reason(details: str) -> str:
    """BoringSSL's reason from a gRPC handshake failure, with a hint where one helps."""
    if "OPENSSL_internal:" in details:
        reason = details.rsplit("OPENSSL_internal:", 1)[1].removesuffix(": OK").strip()
    else:  # what follows the peer's address, e.g. "ipv4:10.0.0.7:2379: "
        reason = re.split(r"ipv[46]:\S+: ", details)[-1].strip()
    for marker, hint in _TLS_HINTS:
        if marker in details:
            return f"{reason} ({hint})"
    return reason


@dataclass(frozen=True)
class EtcdAccess:
    """What it takes to be let in: TLS material and an etcd user. Defaults: none of it."""

    ca: bytes | None = None  # PEM; None means the system's CAs
    cert: bytes | None = None  # PEM client certificate (chain)
    key: bytes | None = field(default=None, repr=False)
    user: str = ""
    password: str = field(default="", repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> EtcdAccess:
        """Read the files the settings name; `load_settings` has checked them already."""

        def read(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return cls(
            ca=read(settings.etcd_ca_file),
            cert=read(settings.etcd_cert_file),
            key=read(settings.etcd_key_file),
            user=settings.etcd_user,
            password=read_password(settings.etcd_password_file) if settings.etcd_user else "",
        )


@dataclass(eq=False)
class _Member:
    endpoint: EtcdEndpoint
    channel: Any
    kv: Any
    lease: Any
    auth: Any
    failed_at: float | None = None


def _connect(endpoint: EtcdEndpoint, access: EtcdAccess) -> _Member:
    target = endpoint.netloc
    options = list(CHANNEL_OPTIONS)
    if endpoint.secure:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=access.ca, private_key=access.key, certificate_chain=access.cert
        )
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    return _Member(
        endpoint, channel, rpc.KVStub(channel), rpc.LeaseStub(channel), rpc.AuthStub(channel)
    )


class _Renewal:
    """One authentication in flight; the threads that need its token wait on it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.token = ""
        self.failure: EtcdFailure | None = None


class _AuthToken:
    """The etcd auth token of this client, fetched when first needed and when refused.

    One thread authenticates while others that need a token wait for its
    result: a thousand requests finding the token expired cost etcd one
    ``Authenticate``, not a thousand. A refusal is remembered for
    `AUTH_REFUSAL_MEMORY` seconds.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()  # guards the fields below
        self._token: str | None = None  # "" once etcd said its auth is off
        self._renewal: _Renewal | None = None
        self._refused: tuple[float, EtcdFailure] | None = None

    def current(self) -> str | None:
        with self._lock:
            return self._token

    def renew(self, stale: str | None, authenticate: Callable[[float], str], timeout: float) -> str:
        """A token other than `stale`, authenticating unless another thread just did."""
        with self._lock:
            if self._token is not None and self._token != stale:
                return self._token
            if self._refused is not None:
                refused_at, failure = self._refused
                if self._clock() - refused_at < AUTH_REFUSAL_MEMORY:
                    raise failure
            renewal = self._renewal
            leads = renewal is None
            if renewal is None:
                renewal = self._renewal = _Renewal()
        if not leads:
            if not renewal.done.wait(timeout):
                raise EtcdFailure(
                    f"etcd authentication did not finish within {timeout:.3g} s",
                    retry_after=2,
                )
            if renewal.failure is not None:
                raise renewal.failure
            return renewal.token
        try:
            token = authenticate(timeout)
        except EtcdFailure as failure:
            with self._lock:
                self._renewal = None
                if not failure.transient:
                    self._refused = (self._clock(), failure)
            renewal.failure = failure
            renewal.done.set()
            raise
        with self._lock:
            self._token = token
            self._renewal = None
            self._refused = None
        renewal.token = token
        renewal.done.set()
        return token


def _token_refused(code: grpc.StatusCode, details: str) -> bool:
    """etcd did not take the token (expired, forgotten, or none while auth is on)."""
    return (code == grpc.StatusCode.UNAUTHENTICATED and "invalid auth token" in details) or (
        code == grpc.StatusCode.INVALID_ARGUMENT and "user name is empty" in details
    )


def _auth_changed(code: grpc.StatusCode, details: str) -> bool:
    """etcd refused to apply the call because its users or roles changed meanwhile."""
    return code == grpc.StatusCode.INVALID_ARGUMENT and "auth store is old" in details


class EtcdClient:
    """Calls to an etcd cluster through any of its members; thread-safe.

    Every call takes its own timeout in seconds and raises `EtcdFailure`
    (never a gRPC exception) when it does not succeed.
    """

    def __init__(
        self,
        endpoints: Sequence[EtcdEndpoint],
        *,
        access: EtcdAccess | None = None,
        avoid_failed_member: float = AVOID_FAILED_MEMBER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = tuple(endpoints)
        self._access = access or EtcdAccess()
        self._members = [_connect(endpoint, self._access) for endpoint in self.endpoints]
        self._token = _AuthToken(clock) if self._access.user else None
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
        deadline = time.monotonic() + timeout
        token = None
        if self._token is not None:
            token = self._token.current()
            if token is None:
                token = self._authenticate(member, None, timeout)
        # A second attempt only after etcd refused the first without acting on it.
        for attempt in range(2):
            started = time.monotonic()
            left = deadline - started
            if left <= 0:
                # Nothing was sent: authenticating took the whole time.
                raise EtcdFailure(
                    f"etcd at {member.endpoint}: no time left for the call after authenticating",
                    retry_after=2,
                )
            metadata = (("token", token),) if token else None
            try:
                response = method(member)(request, timeout=left, metadata=metadata)
            except grpc.RpcError as error:
                code, details = _status(error)
                STORE_EVENTS.etcd_call(request, code.name, started)
                if attempt == 0 and self._token is not None and _token_refused(code, details):
                    token = self._authenticate(member, token, deadline - time.monotonic())
                    continue
                if attempt == 0 and _auth_changed(code, details):
                    continue
                failure = describe_failure(code, details, str(member.endpoint), left)
                if failure.suspect_member:
                    self._failed(member)
                raise failure from None
            except ValueError as error:  # gRPC's answer to a call on a closed channel
                raise EtcdFailure(f"etcd client closed: {error}", transient=False) from None
            STORE_EVENTS.etcd_call(request, "OK", started)
            member.failed_at = None
            return response
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _authenticate(self, member: _Member, stale: str | None, timeout: float) -> str:
        """A token for the configured user, from `member`, replacing `stale`."""
        assert self._token is not None
        access = self._access

        def authenticate(left: float) -> str:
            request = rpc.AuthenticateRequest(name=access.user, password=access.password)
            started = time.monotonic()
            try:
                response = member.auth.Authenticate(request, timeout=max(left, 0.001))
            except grpc.RpcError as error:
                code, details = _status(error)
                STORE_EVENTS.etcd_call(request, code.name, started)
                if code == grpc.StatusCode.FAILED_PRECONDITION and "not enabled" in details:
                    _log.warning(
                        "etcd user %r is configured, but etcd's authentication is off; "
                        "calls go without a token",
                        access.user,
                    )
                    return ""
                if code == grpc.StatusCode.INVALID_ARGUMENT and "authentication failed" in details:
                    raise EtcdFailure(
                        f"etcd refused access: authentication as user {access.user!r} failed "
                        "(no such user, or not the password in SENSORSTATS_ETCD_PASSWORD_FILE)",
                        retry_after=5,
                        transient=False,
                    ) from None
                failure = describe_failure(code, details, str(member.endpoint), left)
                if failure.suspect_member:
                    self._failed(member)
                raise failure from None
            STORE_EVENTS.etcd_call(request, "OK", started)
            _log.info("authenticated to etcd as %r", access.user)
            return str(response.token)

        return self._token.renew(stale, authenticate, timeout)

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
