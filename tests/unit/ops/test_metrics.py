"""GET /metrics: parsed with Prometheus's own text parser, counting what the service does.

Through falcon.testing for what requests and stores count, against a real
etcd for what the store's internals report, and against real processes for
the workers, the queue and the manifest's scrape annotations.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from falcon import testing
from prometheus_client.parser import text_string_to_metric_families

from sensorstats import __version__
from sensorstats.core.errors import StoreUnavailable
from sensorstats.core.idempotency import IdempotencyKey
from sensorstats.core.stats import Stats, Timestamp, instant_of
from sensorstats.ops.metrics import LATENCY_BUCKETS, Metrics
from sensorstats.ops.readiness import Readiness
from sensorstats.settings import EtcdEndpoint, Settings
from sensorstats.store.breaker import BreakerStore
from sensorstats.store.etcd.store import EtcdStore
from sensorstats.store.memory import MemoryStore
from sensorstats.web.app import METRICS_ROUTE, create_app
from tests.support.etcd_process import EtcdProcess, etcd_settings
from tests.support.ports import free_ports
from tests.support.service import Service, request, start_service
from tests.unit.web.test_app import SAMPLE, FailingStore, measurement

MANIFEST = Path(__file__).resolve().parents[3] / "kube" / "base" / "sensorstats.yaml"
STAMP = "2021-11-09T21:38:09+01:00"
SAMPLE_STATS = Stats.of([3.14], Timestamp(instant_of(STAMP), STAMP))
TEMPLATES = {"/data", "/statistics/{sensor_id}", "/healthz", "/livez", "/metrics", "/openapi.json"}


class Scrape:
    """One scrape, parsed by prometheus_client's parser (as Prometheus reads the format)."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples named `name` whose labels include `labels` (0 if none)."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def labels(self, name: str, label: str) -> set[str]:
        return {s.labels[label] for s in self.samples if s.name == name and label in s.labels}


def scrape(client: testing.TestClient) -> Scrape:
    result = client.simulate_get(METRICS_ROUTE)
    assert result.status_code == 200
    return Scrape(result.text)


def client_for(store: object = None, metrics: Metrics | None = None, **settings: object):  # type: ignore[no-untyped-def]
    app = create_app(Settings(**settings), store or MemoryStore(), metrics=metrics)  # type: ignore[arg-type]
    return testing.TestClient(app)


@pytest.fixture
def client() -> testing.TestClient:
    return client_for()


# --- the format ----------------------------------------------------------------------


def test_the_metrics_parse_as_prometheus_text(client):
    result = client.simulate_get("/metrics")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = Scrape(result.text).families
    for name in (
        "sensorstats_http_requests",
        "sensorstats_http_request_duration_seconds",
        "sensorstats_http_requests_in_flight",
        "sensorstats_measurements_ingested",
        "sensorstats_batches_rejected",
        "sensorstats_store_operations",
        "sensorstats_ready",
        "sensorstats_build_info",
        "process_resident_memory_bytes",
    ):
        assert name in families, name
    assert "_created" not in result.text  # no timestamp series doubling every counter


def test_openmetrics_when_the_scraper_asks_for_it(client):
    result = client.simulate_get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert result.headers["content-type"].startswith("application/openmetrics-text")
    assert result.text.endswith("# EOF\n")


def test_head_and_options_as_on_every_route(client):
    get = client.simulate_get("/metrics", headers={"X-Request-ID": "same"})
    head = client.simulate_head("/metrics", headers={"X-Request-ID": "same"})
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-type"] == get.headers["content-type"]
    options = client.simulate_options("/metrics")
    assert options.status_code == 204
    assert options.headers["allow"] == "GET, HEAD, OPTIONS"
    assert client.simulate_post("/metrics").status_code == 405


def test_build_info_names_the_versions(client):
    (info,) = [s for s in scrape(client).samples if s.name == "sensorstats_build_info"]
    assert info.labels["version"] == __version__
    assert set(info.labels) == {"version", "python", "falcon", "waitress"}


# --- requests ------------------------------------------------------------------------


def test_requests_are_labelled_by_route_template_and_status(client):
    client.simulate_post("/data", json=SAMPLE)
    client.simulate_get("/statistics/abc")
    client.simulate_get("/statistics/room%201/temp")
    client.simulate_get("/statistics/%01")
    client.simulate_get("/nowhere/at/all")
    client.simulate_put("/data")
    got = scrape(client)
    count = "sensorstats_http_requests_total"
    statistics = {"method": "GET", "route": "/statistics/{sensor_id}"}
    assert got.value(count, **statistics, status="200") == 2
    assert got.value(count, **statistics, status="400") == 1
    assert got.value(count, method="POST", route="/data", status="204") == 1
    assert got.value(count, method="PUT", route="/data", status="405") == 1
    assert got.value(count, method="GET", route="unmatched", status="404") == 1
    # No raw path, so no sensor id, ever becomes a label value.
    assert got.labels(count, "route") <= TEMPLATES | {"unmatched"}


def test_counters_move_with_traffic(client):
    before = scrape(client).value("sensorstats_http_requests_total", route="/livez")
    for _ in range(5):
        client.simulate_get("/livez")
    after = scrape(client).value("sensorstats_http_requests_total", route="/livez")
    assert after - before == 5


def test_latency_buckets_span_sub_millisecond_to_seconds(client):
    for _ in range(3):
        client.simulate_get("/statistics/abc")
    got = scrape(client)
    histogram = "sensorstats_http_request_duration_seconds"
    route = {"method": "GET", "route": "/statistics/{sensor_id}"}
    bounds = {
        s.labels["le"]
        for s in got.samples
        if s.name == f"{histogram}_bucket" and s.labels["route"] == route["route"]
    }
    assert bounds == {str(b) for b in LATENCY_BUCKETS} | {"+Inf"}
    assert min(LATENCY_BUCKETS) <= 0.0005
    assert max(LATENCY_BUCKETS) >= 5.0  # the default write deadline
    assert got.value(f"{histogram}_count", **route) == 3
    assert got.value(f"{histogram}_bucket", **route, le="+Inf") == 3


# falcon's test client warns about a method WSGI's validator does not know: that is the point.
@pytest.mark.filterwarnings("ignore::wsgiref.validate.WSGIWarning")
def test_a_method_nobody_defined_is_labelled_other(client):
    client.simulate_request("BREW", "/data")
    assert scrape(client).value("sensorstats_http_requests_total", method="other") == 1


def test_body_bytes_in_and_out(client):
    body = json.dumps(SAMPLE)
    client.simulate_post("/data", body=body)
    answer = client.simulate_get("/statistics/abc")
    got = scrape(client)
    assert got.value("sensorstats_http_request_body_bytes_total", route="/data") == len(body)
    assert got.value(
        "sensorstats_http_response_body_bytes_total", route="/statistics/{sensor_id}"
    ) == len(answer.content)


# --- measurements and batches ------------------------------------------------------


def test_ingested_measurements_and_rejected_batches_by_reason():
    client = client_for(MemoryStore(max_sensors=3), max_batch=4)
    assert (
        client.simulate_post("/data", json=[measurement("a", 1), measurement("b", 2)]).status_code
        == 204
    )
    client.simulate_post("/data", json=[measurement("a", 3)])
    client.simulate_post("/data", body="not json")
    client.simulate_post("/data", json=[measurement("x", 1)] * 5)  # over max_batch
    client.simulate_post("/data", json=[measurement(s, 1) for s in "cde"])  # past max_sensors
    keyed = {"Idempotency-Key": "k-1"}
    client.simulate_post("/data", json=[measurement("a", 1)], headers=keyed)
    client.simulate_post("/data", json=[measurement("a", 2)], headers=keyed)
    client.simulate_post("/data", json=[], headers={"Idempotency-Key": "bad key"})
    got = scrape(client)
    assert got.value("sensorstats_measurements_ingested_total") == 4
    rejected = "sensorstats_batches_rejected_total"
    assert got.value(rejected, reason="invalid-batch") == 1
    assert got.value(rejected, reason="payload-too-large") == 1
    assert got.value(rejected, reason="store-full") == 1
    assert got.value(rejected, reason="idempotency-key-reused") == 1
    assert got.value(rejected, reason="invalid-idempotency-key") == 1
    assert got.value(rejected) == 5


# --- the store -----------------------------------------------------------------------


class FlakyStore(MemoryStore):
    """A memory store whose calls fail while `down` is set."""

    description = "a flaky store"
    starts_calls = False

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.calls = 0

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.down:
            raise StoreUnavailable("etcd has no leader", retry_after=2)

    def apply(self, deltas: Mapping[str, Stats], key: IdempotencyKey | None = None) -> None:
        self._maybe_fail()
        super().apply(deltas, key)

    def get(self, sensor: str) -> Stats:
        self._maybe_fail()
        return super().get(sensor)

    def check(self) -> None:
        self._maybe_fail()


def test_store_operations_by_outcome():
    flaky = FlakyStore()
    client = client_for(flaky)
    client.simulate_post("/data", json=SAMPLE)
    client.simulate_get("/statistics/abc")
    flaky.down = True
    client.simulate_get("/statistics/abc")
    broken = client_for(FailingStore(RuntimeError("a bug")))
    broken.simulate_get("/statistics/abc")
    got, got_broken = scrape(client), scrape(broken)
    operations = "sensorstats_store_operations_total"
    assert got.value(operations, operation="apply", outcome="ok") == 1
    assert got.value(operations, operation="get", outcome="ok") == 1
    assert got.value(operations, operation="get", outcome="unavailable") == 1
    assert got_broken.value(operations, operation="get", outcome="error") == 1
    assert got.value("sensorstats_store_operation_duration_seconds_count", operation="get") == 2


@pytest.fixture
def observing() -> Iterator[Metrics]:
    """Metrics that hear the store's events, for this test only."""
    metrics = Metrics()
    metrics.observe_store_events()
    try:
        yield metrics
    finally:
        metrics.close()


def test_the_circuit_breaker_shows_open_fast_failures_and_closing(observing):
    flaky = FlakyStore()
    breaker = BreakerStore(flaky, threshold=2, open_seconds=0.05, jitter=lambda: 0.0)
    client = client_for(breaker, observing)
    flaky.down = True
    for _ in range(3):
        client.simulate_get("/statistics/abc")
    got = scrape(client)
    assert got.value("sensorstats_store_circuit_breaker_open") == 1
    assert got.value("sensorstats_store_circuit_breaker_openings_total") == 1
    operations = "sensorstats_store_operations_total"
    assert got.value(operations, operation="get", outcome="unavailable") == 2
    assert got.value(operations, operation="get", outcome="circuit_open") == 1
    assert flaky.calls == 2  # the third failed fast
    flaky.down = False
    time.sleep(0.15)  # past the open interval: the next call is the trial
    assert client.simulate_get("/statistics/abc").status_code == 200
    assert scrape(client).value("sensorstats_store_circuit_breaker_open") == 0


# --- readiness, and what a scrape costs ----------------------------------------------


def test_readiness_and_draining_as_healthz_reports_them():
    flaky = FlakyStore()
    readiness = Readiness(flaky, ttl=0.0)
    client = testing.TestClient(create_app(Settings(), flaky, readiness))
    got = scrape(client)
    assert (got.value("sensorstats_ready"), got.value("sensorstats_draining")) == (1, 0)
    flaky.down = True
    assert scrape(client).value("sensorstats_ready") == 0
    flaky.down = False
    readiness.start_draining()
    got = scrape(client)
    assert (got.value("sensorstats_ready"), got.value("sensorstats_draining")) == (0, 1)


def test_a_scrape_never_asks_the_store():
    flaky = FlakyStore()
    readiness = Readiness(flaky, ttl=3600.0)
    readiness.start()  # as the server does: checked in the background
    try:
        client = testing.TestClient(create_app(Settings(), flaky, readiness))
        deadline = time.monotonic() + 5
        while not readiness.is_ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        before = flaky.calls
        for _ in range(10):
            assert scrape(client).value("sensorstats_ready") == 1
        assert flaky.calls == before
    finally:
        readiness.stop()


# --- the etcd store's internals ------------------------------------------------------


@pytest.fixture
def etcd_stores(etcd: EtcdProcess, etcd_prefix: str) -> Iterator[tuple[EtcdStore, EtcdStore]]:
    """Two instances' stores on one etcd and prefix."""
    first = EtcdStore.from_settings(etcd_settings(etcd, prefix=etcd_prefix))
    second = EtcdStore.from_settings(etcd_settings(etcd, prefix=etcd_prefix))
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def events(metrics: Metrics) -> Scrape:
    return Scrape(metrics.exposition(None)[0].decode())


def test_etcd_calls_transactions_and_outcomes_are_counted(observing, etcd_stores):
    first, second = etcd_stores
    first.apply({"hot": SAMPLE_STATS})
    first.get("hot")
    # The second instance has never seen the key: its first compare fails
    # (another writer moved it on), the retry commits.
    second.apply({"hot": SAMPLE_STATS})
    got = events(observing)
    assert got.value("sensorstats_etcd_calls_total", method="Txn", code="OK") >= 3
    assert got.value("sensorstats_etcd_calls_total", method="Range", code="OK") >= 1
    attempts = "sensorstats_etcd_write_attempts_total"
    assert got.value(attempts, outcome="committed", attempt="first") == 1
    assert got.value(attempts, outcome="conflict", attempt="first") == 1
    assert got.value(attempts, outcome="committed", attempt="retry") == 1
    assert got.value("sensorstats_etcd_writes_total", outcome="applied") == 2
    assert got.value("sensorstats_etcd_writes_per_transaction_count") == 2
    assert got.value("sensorstats_etcd_call_duration_seconds_count", method="Txn") >= 3
    assert second.get("hot").count == 2


def test_every_write_outcome_is_served_at_zero_before_the_first_write():
    """A counter that first appears at 1 shows Prometheus no increase."""
    got = events(Metrics())
    attempts = "sensorstats_etcd_write_attempts_total"
    assert got.labels(attempts, "outcome") == {"committed", "conflict", "marker_found", "failed"}
    assert got.labels(attempts, "attempt") == {"first", "retry"}
    writes = "sensorstats_etcd_writes_total"
    assert got.labels(writes, "outcome") == {"applied", "not_applied", "unknown", "rejected"}
    assert got.value(attempts) == got.value(writes) == 0


def test_failovers_and_errors_by_grpc_status(observing):
    dead = free_ports(2)
    settings = Settings(
        etcd_endpoints=tuple(EtcdEndpoint("127.0.0.1", port) for port in dead),
        etcd_timeout=0.5,
        write_timeout=1.0,
    )
    store = EtcdStore.from_settings(settings)
    try:
        with pytest.raises(StoreUnavailable):
            store.check()
    finally:
        store.close()
    got = events(observing)
    assert got.value("sensorstats_etcd_failovers_total") >= 1
    failed = got.value("sensorstats_etcd_calls_total", method="Range", code="UNAVAILABLE")
    failed += got.value("sensorstats_etcd_calls_total", method="Range", code="DEADLINE_EXCEEDED")
    assert failed >= 2  # one per member


# --- from outside ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with start_service(log_dir=tmp_path_factory.mktemp("logs")) as running:
        yield running


def test_a_running_instance_counts_by_route_and_status(service):
    def count(route: str, status: str) -> float:
        text = service.get("/metrics").body.decode()
        return Scrape(text).value("sensorstats_http_requests_total", route=route, status=status)

    before = count("/statistics/{sensor_id}", "200")
    for sensor in ("a", "b", "c/d"):
        service.get(f"/statistics/{sensor}")
    assert count("/statistics/{sensor_id}", "200") - before == 3
    service.post("/data", "[{}]")
    assert count("/data", "400") >= 1
    assert request(service.url, "HEAD", "/metrics").status == 200
    got = Scrape(service.get("/metrics").body.decode())
    assert got.value("sensorstats_worker_threads") == 16
    assert got.value("sensorstats_ready") == 1
    assert got.value("sensorstats_connections_open") >= 1  # this scrape's own


def test_the_servers_own_answers_are_counted(service):
    def scraped() -> Scrape:
        return Scrape(service.get("/metrics").body.decode())

    before = scraped()
    head = b"POST /data HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n"
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(head)
        assert sock.recv(65536).startswith(b"HTTP/1.1 413 ")
    after = scraped()

    def grew(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert grew("sensorstats_http_requests_total", route="unmatched", status="413") == 1
    assert grew("sensorstats_batches_rejected_total", reason="payload-too-large") == 1


def test_a_scrape_answers_while_every_worker_is_busy(own_etcd: EtcdProcess, tmp_path: Path):
    with start_service(
        env={"SENSORSTATS_ETCD_ENDPOINTS": own_etcd.url},
        # The first DELETE holds the one worker for its whole etcd timeout,
        # longer than the scrapes below look: never between two requests.
        args=["--threads", "1", "--etcd-timeout", "4", "--write-timeout", "5"],
        log_dir=tmp_path,
    ) as service:
        own_etcd.pause()
        posting = ThreadPoolExecutor(max_workers=3)
        try:
            started = threading.Event()

            def delete() -> int:  # served by the worker (POSTs are written ahead)
                started.set()
                return service.delete("/statistics/busy", timeout=30).status

            posts = [posting.submit(delete) for _ in range(3)]
            started.wait(5)
            deadline = time.monotonic() + 2.5
            while True:  # until the posts have reached the worker and the queue
                began = time.monotonic()
                got = Scrape(service.get("/metrics", timeout=10).body.decode())
                took = time.monotonic() - began
                assert took < 2.0  # answered on the event loop, not behind the worker
                if got.value("sensorstats_http_requests_waiting") >= 1:
                    break
                assert time.monotonic() < deadline, "no request was seen waiting"
                time.sleep(0.05)
            assert got.value("sensorstats_http_requests_in_flight") == 1
            assert got.value("sensorstats_worker_threads") == 1
            assert got.value("sensorstats_connections_open") >= 3
        finally:
            own_etcd.resume()
            statuses = [p.result(timeout=30) for p in posts]
            posting.shutdown(wait=True)
    assert set(statuses) <= {204, 503}


# --- Kubernetes ----------------------------------------------------------------------


def test_the_pods_carry_the_scrape_annotations_for_the_apps_own_port():
    documents = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    (deployment,) = [
        d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "sensorstats"
    ]
    template = deployment["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    (container,) = template["spec"]["containers"]
    ports = {p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == METRICS_ROUTE
    assert int(annotations["prometheus.io/port"]) in ports
    assert annotations["prometheus.io/port"] == env["SENSORSTATS_PORT"]
