"""sensorstats against a real etcd that demands TLS, client certificates and RBAC users.

Certificates are made here (`tests/support/etcd_tls.py`, with `cryptography`); users
and roles go in through etcd's gRPC Auth API. Each refusal must reach the
client as a 503 whose detail says what is wrong, quickly, never as a 500 or
a hang.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import etcd3.etcdrpc as rpc
import grpc
import pytest
from falcon import testing

from sensorstats.core.errors import StoreUnavailable
from sensorstats.core.stats import Stats, Timestamp
from sensorstats.settings import EtcdEndpoint, Settings
from sensorstats.store.etcd.client import (
    AUTH_REFUSAL_MEMORY,
    EtcdAccess,
    EtcdClient,
    EtcdFailure,
    _AuthToken,
    describe_failure,
)
from sensorstats.store.etcd.store import EtcdStore
from sensorstats.store.events import STORE_EVENTS
from sensorstats.web.app import create_app
from tests.support.etcd_tls import Pki, TlsEtcdProcess, enable_auth, make_pki, start_tls_etcd
from tests.support.ports import free_ports
from tests.support.service import run_module, start_service, statistics_path

USER = "sensorstats"
PASSWORD = "a password for sensorstats"
PREFIX = "/sensorstats-tls/"
SAMPLE = [{"sensor": "abc", "timestamp": "2021-11-09T21:38:09+01:00", "value": 3.14}]
# A refusal must be answered well within this; a hang would take the whole timeout.
PROMPT = 5.0
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_etcd(
    etcd_available: None, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsEtcdProcess]:
    """TLS only, and only for clients with a certificate the CA signed; no RBAC."""
    with start_tls_etcd(tmp_path_factory.mktemp("tls-etcd"), pki) as member:
        yield member


def admin_channel(member: TlsEtcdProcess) -> Any:
    pki = member.pki
    credentials = grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )
    return grpc.secure_channel(f"127.0.0.1:{member.client_port}", credentials)


@pytest.fixture(scope="module")
def rbac_etcd(
    etcd_available: None, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsEtcdProcess]:
    """TLS with client certificates, and RBAC: `USER` may use `PREFIX` only.

    Auth tokens live one second unused, so that a test can watch one expire.
    """
    with start_tls_etcd(
        tmp_path_factory.mktemp("rbac-etcd"), pki, extra_args=["--auth-token-ttl=1"]
    ) as member:
        channel = admin_channel(member)
        try:
            enable_auth(channel, user=USER, password=PASSWORD, prefix=PREFIX)
        finally:
            channel.close()
        yield member


def endpoint(member: TlsEtcdProcess, host: str = "127.0.0.1") -> EtcdEndpoint:
    return EtcdEndpoint(host, member.client_port, secure=True)


def access(pki: Pki, *, ca: Path | None = None, cert: bool = True, **more: Any) -> EtcdAccess:
    return EtcdAccess(
        ca=(ca or pki.ca).read_bytes(),
        cert=pki.client_cert.read_bytes() if cert else None,
        key=pki.client_key.read_bytes() if cert else None,
        **more,
    )


def store_for(
    member: TlsEtcdProcess, etcd_access: EtcdAccess, *, prefix: str = PREFIX, **client: Any
) -> EtcdStore:
    return EtcdStore(
        EtcdClient([endpoint(member)], access=etcd_access, **client),
        prefix=prefix,
        call_timeout=2.0,
        write_timeout=4.0,
    )


def sample_stats(value: float = 1.5) -> dict[str, Stats]:
    return {"abc": Stats.of([value], Timestamp.parse("2021-11-09T21:38:09+01:00"))}


class CallCounter:
    """Counts the store's etcd calls by method, through the store's event fan-out."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def etcd_call(self, method: str, code: str, seconds: float) -> None:
        with self._lock:
            self.calls[method] += 1

    def etcd_failover(self) -> None:
        pass

    def write_attempt(self, outcome: str, retry: bool) -> None:
        pass

    def writes_decided(self, outcomes: Sequence[str]) -> None:
        pass

    def breaker_state(self, state: str) -> None:
        pass


@pytest.fixture
def counter() -> Iterator[CallCounter]:
    observer = CallCounter()
    STORE_EVENTS.subscribe(observer)
    try:
        yield observer
    finally:
        STORE_EVENTS.unsubscribe(observer)


def refused_promptly(store: EtcdStore, says: str) -> str:
    """The detail of the StoreUnavailable a read raises, which must come within PROMPT."""
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as refused:
        store.get("abc")
    assert time.monotonic() - started < PROMPT
    assert says in refused.value.detail
    return refused.value.detail


# --- how failures read ------------------------------------------------------------------

VERIFY_FAILED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:2379: Tls "
    "handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:"
    "OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate: OK"
)
WRONG_HOST = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:2379: Custom "
    "verification check failed with error: UNAUTHENTICATED: Hostname Verification Check failed."
)
BAD_CERTIFICATE = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:2379: Tls "
    "handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:10000412:SSL routines:"
    "OPENSSL_internal:SSLV3_ALERT_BAD_CERTIFICATE: OK"
)


@pytest.mark.parametrize(
    ("details", "says"),
    [
        (
            VERIFY_FAILED,
            "failed: CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate "
            "(etcd's certificate is not signed by a CA in SENSORSTATS_ETCD_CA_FILE",
        ),
        (BAD_CERTIFICATE, "SSLV3_ALERT_BAD_CERTIFICATE (etcd refused the client certificate"),
        (
            VERIFY_FAILED.replace("CERTIFICATE_VERIFY_FAILED: unable to get local issuer", "X"),
            "failed: X certificate",  # no hint for a reason it does not know
        ),
        (
            WRONG_HOST,
            "failed: Custom verification check failed with error: UNAUTHENTICATED: Hostname "
            "Verification Check failed. (etcd's certificate does not name the host",
        ),
    ],
)
def test_a_failed_handshake_says_so_and_was_never_sent(details: str, says: str) -> None:
    failure = describe_failure(Code.UNAVAILABLE, details, "https://127.0.0.1:2379", 1.0)
    assert failure.detail.startswith("TLS handshake with etcd at https://127.0.0.1:2379 failed: ")
    assert says in failure.detail
    assert not failure.outcome_unknown  # nothing was sent
    assert not failure.transient  # retrying will not fix a certificate: answer now
    assert failure.suspect_member  # but another member may have a good one


@pytest.mark.parametrize(
    ("code", "details", "says"),
    [
        (Code.UNAUTHENTICATED, "etcdserver: invalid auth token", "etcd refused access"),
        (Code.PERMISSION_DENIED, "etcdserver: permission denied", "etcd refused access"),
        (Code.INVALID_ARGUMENT, "etcdserver: user name is empty", "requires authentication"),
    ],
)
def test_access_refusals_are_final_and_say_so(code: Code, details: str, says: str) -> None:
    failure = describe_failure(code, details, "https://127.0.0.1:2379", 1.0)
    assert failure.detail.startswith("etcd refused access")
    assert says in failure.detail
    assert not failure.transient  # no circuit breaker opens for a refusal
    assert failure.retry_after == 5


# --- one renewal for all: the auth token alone -------------------------------------------


class Authenticator:
    """Stands in for etcd's Authenticate: counts calls, may block, may fail."""

    def __init__(self, failure: EtcdFailure | None = None) -> None:
        self.calls = 0
        self.failure = failure
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def __call__(self, timeout: float) -> str:
        self.calls += 1
        self.entered.set()
        assert self.release.wait(PROMPT)
        if self.failure is not None:
            raise self.failure
        return f"token-{self.calls}"


def test_threads_that_need_a_token_at_once_share_one_authentication() -> None:
    token = _AuthToken(time.monotonic)
    authenticate = Authenticator()
    authenticate.release.clear()
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(token.renew(None, authenticate, PROMPT)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    assert authenticate.entered.wait(PROMPT)
    time.sleep(0.05)  # let the others queue behind the one authenticating
    authenticate.release.set()
    for thread in threads:
        thread.join(PROMPT)
    assert results == ["token-1"] * 8
    assert authenticate.calls == 1
    # A thread whose call was refused with an older token takes the new one.
    assert token.renew("token-0", authenticate, PROMPT) == "token-1"
    assert token.renew("token-1", authenticate, PROMPT) == "token-2"
    assert token.current() == "token-2"


def test_a_refused_authentication_reaches_every_waiter_and_is_remembered_a_while() -> None:
    now = [0.0]
    token = _AuthToken(lambda: now[0])
    refusal = EtcdFailure("etcd refused access: no", transient=False)
    authenticate = Authenticator(refusal)
    authenticate.release.clear()
    failures: list[str] = []

    def renew() -> None:
        try:
            token.renew(None, authenticate, PROMPT)
        except EtcdFailure as failure:
            failures.append(failure.detail)

    threads = [threading.Thread(target=renew) for _ in range(4)]
    for thread in threads:
        thread.start()
    assert authenticate.entered.wait(PROMPT)
    time.sleep(0.05)
    authenticate.release.set()
    for thread in threads:
        thread.join(PROMPT)
    assert failures == ["etcd refused access: no"] * 4
    with pytest.raises(EtcdFailure, match="refused access"):
        token.renew(None, authenticate, PROMPT)  # from memory
    assert authenticate.calls == 1
    now[0] += AUTH_REFUSAL_MEMORY
    authenticate.failure = None
    assert token.renew(None, authenticate, PROMPT) == "token-2"


def test_an_outage_during_authentication_is_not_remembered() -> None:
    token = _AuthToken(time.monotonic)
    authenticate = Authenticator(EtcdFailure("etcd unavailable", transient=True))
    with pytest.raises(EtcdFailure, match="unavailable"):
        token.renew(None, authenticate, PROMPT)
    authenticate.failure = None
    assert token.renew(None, authenticate, PROMPT) == "token-2"


def test_a_waiter_gives_up_at_its_own_deadline() -> None:
    token = _AuthToken(time.monotonic)
    authenticate = Authenticator()
    authenticate.release.clear()
    leader = threading.Thread(target=lambda: token.renew(None, authenticate, PROMPT))
    leader.start()
    assert authenticate.entered.wait(PROMPT)
    with pytest.raises(EtcdFailure, match=r"did not finish within 0\.05 s"):
        token.renew(None, authenticate, 0.05)
    authenticate.release.set()
    leader.join(PROMPT)
    assert token.current() == "token-1"


def test_an_etcd_unreachable_while_authenticating_is_an_outage_like_any_other() -> None:
    (port,) = free_ports(1)
    client = EtcdClient(
        [EtcdEndpoint("127.0.0.1", port)], access=EtcdAccess(user=USER, password=PASSWORD)
    )
    try:
        with pytest.raises(EtcdFailure, match="etcd unavailable") as failed:
            client.range(rpc.RangeRequest(key=b"/probe"), PROMPT)
        assert failed.value.transient  # the breaker counts it; nothing is remembered
        assert not failed.value.outcome_unknown
    finally:
        client.close()


# --- TLS with client certificates -------------------------------------------------------


def test_the_store_works_over_tls_with_a_client_certificate(
    tls_etcd: TlsEtcdProcess, pki: Pki, etcd_prefix: str
) -> None:
    store = store_for(tls_etcd, access(pki), prefix=etcd_prefix)
    try:
        store.check()
        store.apply(sample_stats(1.0))
        store.apply(sample_stats(2.0))
        assert store.get("abc").count == 2
        store.delete("abc")
        assert store.get("abc").count == 0
    finally:
        store.close()


def test_a_wrong_ca_is_a_prompt_503_naming_the_tls_handshake(
    tls_etcd: TlsEtcdProcess, pki: Pki, etcd_prefix: str
) -> None:
    store = store_for(tls_etcd, access(pki, ca=pki.other_ca), prefix=etcd_prefix)
    try:
        detail = refused_promptly(store, "TLS handshake with etcd at https://127.0.0.1:")
        assert "CERTIFICATE_VERIFY_FAILED" in detail
        assert "SENSORSTATS_ETCD_CA_FILE" in detail
        client = testing.TestClient(create_app(Settings(), store))
        for answer in (
            client.simulate_post("/data", json=SAMPLE),
            client.simulate_get("/statistics/abc"),
            client.simulate_delete("/statistics/abc"),
        ):
            assert answer.status_code == 503
            assert answer.json["detail"].startswith("TLS handshake with etcd")
            assert "retry-after" in answer.headers
    finally:
        store.close()


def test_no_client_certificate_is_a_prompt_503_saying_etcd_refused_it(
    tls_etcd: TlsEtcdProcess, pki: Pki, etcd_prefix: str
) -> None:
    store = store_for(tls_etcd, access(pki, cert=False), prefix=etcd_prefix)
    try:
        refused_promptly(store, "etcd refused the client certificate")
    finally:
        store.close()


def test_a_certificate_for_another_host_is_refused(
    etcd_available: None, tmp_path: Path, etcd_prefix: str
) -> None:
    """The client checks that etcd's certificate names the host it dialled."""
    elsewhere = make_pki(tmp_path / "pki", hosts=("etcd.example",))
    with start_tls_etcd(tmp_path, elsewhere, client_cert_auth=False) as member:
        store = store_for(member, access(elsewhere), prefix=etcd_prefix)
        try:
            refused_promptly(store, "TLS handshake with etcd at https://127.0.0.1:")
        finally:
            store.close()


def test_a_user_on_an_etcd_without_rbac_goes_without_a_token(
    tls_etcd: TlsEtcdProcess,
    pki: Pki,
    etcd_prefix: str,
    counter: CallCounter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = store_for(tls_etcd, access(pki, user=USER, password=PASSWORD), prefix=etcd_prefix)
    try:
        with caplog.at_level(logging.WARNING, logger="sensorstats.store.etcd.client"):
            store.apply(sample_stats())
            assert store.get("abc").count == 1
        assert counter.calls["Authenticate"] == 1  # asked once, then remembered
        assert "etcd's authentication is off" in caplog.text
    finally:
        store.close()


# --- RBAC users ------------------------------------------------------------------------------


def test_the_store_works_as_an_rbac_user(
    rbac_etcd: TlsEtcdProcess, pki: Pki, counter: CallCounter
) -> None:
    store = store_for(rbac_etcd, access(pki, user=USER, password=PASSWORD))
    try:
        store.check()
        store.apply(sample_stats())
        assert store.get("abc").count >= 1
        store.delete("abc")
        assert store.get("abc").count == 0
        assert counter.calls["Authenticate"] == 1
    finally:
        store.close()


def test_a_wrong_password_is_a_prompt_503_and_etcd_is_not_asked_again_at_once(
    rbac_etcd: TlsEtcdProcess, pki: Pki, counter: CallCounter
) -> None:
    now = [100.0]
    store = store_for(
        rbac_etcd, access(pki, user=USER, password="not the password"), clock=lambda: now[0]
    )
    try:
        for _ in range(5):
            detail = refused_promptly(store, "etcd refused access: authentication as user")
        assert f"{USER!r} failed" in detail
        assert "SENSORSTATS_ETCD_PASSWORD_FILE" in detail
        # Each try costs etcd a bcrypt hash: one try per second at most.
        assert counter.calls["Authenticate"] == 1
        now[0] += 1.5
        refused_promptly(store, "etcd refused access")
        assert counter.calls["Authenticate"] == 2
        client = testing.TestClient(create_app(Settings(), store))
        answer = client.simulate_post("/data", json=SAMPLE)
        assert answer.status_code == 503
        assert answer.json["detail"].startswith("etcd refused access")
    finally:
        store.close()


def test_keys_outside_the_users_role_are_refused_with_a_503(
    rbac_etcd: TlsEtcdProcess, pki: Pki
) -> None:
    store = store_for(rbac_etcd, access(pki, user=USER, password=PASSWORD), prefix="/elsewhere/")
    try:
        refused_promptly(store, "etcd refused access: etcdserver: permission denied")
    finally:
        store.close()


def test_with_rbac_a_client_certificate_alone_acts_as_its_common_name(
    rbac_etcd: TlsEtcdProcess, pki: Pki, counter: CallCounter
) -> None:
    """No password at all: etcd takes the certificate's CN (sensorstats) as the user."""
    store = store_for(rbac_etcd, access(pki))
    elsewhere = store_for(rbac_etcd, access(pki), prefix="/elsewhere/")
    try:
        store.apply(sample_stats())
        assert store.get("abc").count >= 1
        refused_promptly(elsewhere, "etcd refused access: etcdserver: permission denied")
        assert counter.calls["Authenticate"] == 0
    finally:
        store.close()
        elsewhere.close()


def expire_tokens(member: TlsEtcdProcess) -> None:
    """Wait until etcd has dropped every token unused since now (--auth-token-ttl=1)."""
    channel = admin_channel(member)
    try:
        token = (
            rpc.AuthStub(channel)
            .Authenticate(rpc.AuthenticateRequest(name=USER, password=PASSWORD), timeout=5)
            .token
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                rpc.KVStub(channel).Range(
                    rpc.RangeRequest(key=PREFIX.encode()), timeout=2, metadata=(("token", token),)
                )
            except grpc.RpcError as error:
                if error.code() == Code.UNAUTHENTICATED:
                    return
                raise
            assert time.monotonic() < deadline, "etcd never expired the token"
            time.sleep(0.5)  # each use extends it: wait past the TTL between checks
            time.sleep(1.0)
    finally:
        channel.close()


def test_an_expired_token_is_renewed_once_for_all_waiting_requests(
    rbac_etcd: TlsEtcdProcess, pki: Pki, counter: CallCounter
) -> None:
    store = store_for(rbac_etcd, access(pki, user=USER, password=PASSWORD))
    try:
        store.apply(sample_stats())
        assert counter.calls["Authenticate"] == 1
        expire_tokens(rbac_etcd)
        counter.calls.clear()
        # Many requests find the token expired at once, one authentication serves them all.
        barrier = threading.Barrier(12)
        results: list[object] = []

        def read() -> None:
            barrier.wait()
            try:
                results.append(store.get(f"sensor-{threading.get_ident()}").count)
            except StoreUnavailable as error:  # pragma: no cover - reported below
                results.append(error.detail)

        threads = [threading.Thread(target=read) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(PROMPT)
        assert results == [0] * 12
        assert counter.calls["Authenticate"] == 1
        store.apply(sample_stats())  # writes too, with the new token
    finally:
        store.close()


# --- real processes ------------------------------------------------------------------------------


def secure_env(
    member: TlsEtcdProcess, pki: Pki, directory: Path, **overrides: str
) -> dict[str, str]:
    password_file = directory / "etcd-password"
    password_file.write_text(PASSWORD + "\n")
    env = {
        "SENSORSTATS_ETCD_ENDPOINTS": member.url,
        "SENSORSTATS_ETCD_PREFIX": PREFIX,
        "SENSORSTATS_ETCD_CA_FILE": str(pki.ca),
        "SENSORSTATS_ETCD_CERT_FILE": str(pki.client_cert),
        "SENSORSTATS_ETCD_KEY_FILE": str(pki.client_key),
        "SENSORSTATS_ETCD_USER": USER,
        "SENSORSTATS_ETCD_PASSWORD_FILE": str(password_file),
        "SENSORSTATS_API_TOKENS": "writer:w7Kq2v9RfX3mZp8LtY4bNc6H",
    }
    env.update(overrides)
    return env


def wait_ready(service: Any, status: int) -> Any:
    deadline = time.monotonic() + 10
    while (answer := service.get("/healthz")).status != status:
        assert time.monotonic() < deadline, answer
        time.sleep(0.1)
    return answer


def test_the_service_runs_on_etcd_with_tls_client_certificates_and_a_user(
    rbac_etcd: TlsEtcdProcess, pki: Pki, tmp_path: Path
) -> None:
    """The secure overlay's configuration, end to end: a process, HTTP, real etcd."""
    bearer = {"Authorization": "Bearer w7Kq2v9RfX3mZp8LtY4bNc6H"}
    batch = [{**SAMPLE[0], "sensor": "end-to-end"}]
    with start_service(env=secure_env(rbac_etcd, pki, tmp_path), log_dir=tmp_path) as service:
        wait_ready(service, 204)
        assert service.post("/data", batch, headers=bearer).status == 204
        assert service.post("/data", batch).status == 401
        assert service.get(statistics_path("end-to-end")).json["count"] == 1
        assert service.delete(statistics_path("end-to-end"), headers=bearer).status == 204
        assert service.get(statistics_path("end-to-end")).json["count"] == 0
        log = service.log()
    assert PASSWORD not in log
    assert "authenticated to etcd as 'sensorstats'" in log


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"SENSORSTATS_ETCD_CA_FILE": "other-ca"}, "TLS handshake with etcd at https://"),
        ({"SENSORSTATS_ETCD_PASSWORD_FILE": "wrong-password"}, "etcd refused access"),
    ],
    ids=["wrong-ca", "wrong-password"],
)
def test_the_service_answers_503_with_the_reason_when_etcd_refuses_it(
    rbac_etcd: TlsEtcdProcess, pki: Pki, tmp_path: Path, overrides: dict[str, str], says: str
) -> None:
    (tmp_path / "wrong-password").write_text("guess\n")
    files = {"other-ca": str(pki.other_ca), "wrong-password": str(tmp_path / "wrong-password")}
    env = secure_env(rbac_etcd, pki, tmp_path, **{k: files[v] for k, v in overrides.items()})
    bearer = {"Authorization": "Bearer w7Kq2v9RfX3mZp8LtY4bNc6H"}
    with start_service(env=env, log_dir=tmp_path) as service:
        started = time.monotonic()
        posted = service.post("/data", SAMPLE, headers=bearer)
        assert time.monotonic() - started < PROMPT
        assert posted.status == 503
        assert posted.headers["content-type"] == "application/problem+json"
        assert json.loads(posted.body)["detail"].startswith(says)
        assert service.get(statistics_path("abc")).status == 503
        assert says in wait_ready(service, 503).json["detail"]
        assert service.get("/livez").status == 204
        log = service.log()
    assert "Traceback" not in log
    assert "guess" not in log


@pytest.mark.parametrize(
    ("setting", "content", "says"),
    [
        ("SENSORSTATS_ETCD_CA_FILE", None, "cannot read"),
        ("SENSORSTATS_ETCD_CA_FILE", "not a certificate", "holds no PEM CERTIFICATE"),
        ("SENSORSTATS_ETCD_CERT_FILE", None, "cannot read"),
        ("SENSORSTATS_ETCD_KEY_FILE", "-----BEGIN PRIVATE KEY-----\n", "usable pair"),
        ("SENSORSTATS_ETCD_PASSWORD_FILE", "\n", "is empty"),
        ("SENSORSTATS_ETCD_PASSWORD_FILE", None, "cannot read"),
    ],
)
def test_unusable_etcd_access_files_stop_start_up_with_exit_2(
    pki: Pki, tmp_path: Path, setting: str, content: str | None, says: str
) -> None:
    path = tmp_path / "the-file"
    if content is not None:
        path.write_text(content)
    password = tmp_path / "password"
    password.write_text(PASSWORD)
    env = {
        "SENSORSTATS_ETCD_ENDPOINTS": "https://127.0.0.1:2379",
        "SENSORSTATS_ETCD_CA_FILE": str(pki.ca),
        "SENSORSTATS_ETCD_CERT_FILE": str(pki.client_cert),
        "SENSORSTATS_ETCD_KEY_FILE": str(pki.client_key),
        "SENSORSTATS_ETCD_USER": USER,
        "SENSORSTATS_ETCD_PASSWORD_FILE": str(password),
        setting: str(path),
    }
    result = run_module("--port", "0", env=env)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("sensorstats: error: ")
    assert setting in line or str(path) in line
    assert says in line
    assert PASSWORD not in line
