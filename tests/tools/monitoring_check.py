"""A real Prometheus scraping real instances: do the alerts fire when their fault happens?

    python tests/tools/monitoring_check.py

One etcd with its metrics on their own port, as the StatefulSet has them, and
two ``python -m sensorstats`` instances on it. Prometheus (Debian's package,
installed with apt-get when missing and running as root on Debian or Ubuntu)
scrapes the three every second and evaluates
kube/monitoring/sensorstats-rules.yaml, copied with every duration shortened:
a minute of the rule file is `SECONDS_PER_MINUTE` seconds here, in its `for:`
and in its range selectors alike. Then, through Prometheus's HTTP API:

- every target is up;
- the request counter rose by exactly the requests sent between the scrapes
  around them, and `increase()` and `rate()` over that window say the same;
- every metric that the rules and the dashboard name has series, every
  expression of every dashboard panel returns data, and no alert is pending
  or firing while all is well;
- a scrape holds the same series after requests for hundreds of new sensor
  ids as before (no sensor id is a label);
- SIGSTOP on etcd makes SensorstatsInstanceNotReady and
  SensorstatsCircuitBreakerOpen fire for both instances and
  SensorstatsEtcdMemberDown for etcd; SIGCONT clears them, and then every
  other alert the outage set off;
- SIGKILL on one instance fires SensorstatsDown for it alone.

It prints what a scrape costs: series and bytes per instance, and how long
the instance takes to answer one (the body is rendered on its event loop).

Exit status: 0 every check passed (or Prometheus is not installed and cannot
be, outside CI: one line says so), 1 a check failed, 2 the set-up failed.
Stdlib only. Every process it starts is stopped by PID before it exits.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: `python tests/tools/monitoring_check.py`
    sys.path.insert(0, str(ROOT))

from tests.support.etcd_process import EtcdProcess  # noqa: E402
from tests.support.harness import (  # noqa: E402
    HTTP_FAILURES,
    CheckFailed,
    Processes,
    SetupFailed,
    answers,
    check,
    eventually,
    http_request,
    log,
    run,
    run_script,
    time_limit,
    wait_until,
)
from tests.support.ports import free_ports  # noqa: E402
from tests.support.programs import ensure_programs  # noqa: E402

MONITORING = ROOT / "kube" / "monitoring"
RULES = MONITORING / "sensorstats-rules.yaml"
DASHBOARD = MONITORING / "dashboard.json"

OVERALL_TIMEOUT = 150  # seconds, start-up to clean-up; apt-get comes before
START_TIMEOUT = 20.0
SCRAPE_INTERVAL = 1.0  # seconds, and the rules' evaluation interval
# One minute of the rule file, in seconds here: `for: 2m` becomes 4 s and
# `[1m]` 2 s, which still holds two samples at one scrape a second.
SECONDS_PER_MINUTE = 2
# Grafana's $__rate_interval in the dashboard's expressions, here.
RATE_INTERVAL = "10s"
# How long an alert may take to fire after its fault, or to clear after it
# ends: detection (the instance's etcd deadline, the breaker's five
# failures), the shortened `for:`, an evaluation and a scrape.
FIRE_WITHIN = 40.0
CLEAR_WITHIN = 40.0
# Requests sent to each instance for the counter check.
SENT = {"sensorstats-0": 40, "sensorstats-1": 25}
SEND_PAUSE = 0.03  # seconds between them: the sending spans a few scrapes
SCRAPE_READ_LAG = 0.2  # seconds from a scrape's timestamp to its read of the counter, at most
NEW_SENSORS = 300  # fresh sensor ids posted between two scrapes that must match
COST_SCRAPES = 50  # GET /metrics timed for the cost figures

APP_ENV = {
    # Short deadlines, so that a paused etcd fails calls within a second.
    "SENSORSTATS_ETCD_TIMEOUT": "1",
    "SENSORSTATS_WRITE_TIMEOUT": "2",
    "SENSORSTATS_LOG_LEVEL": "WARNING",
}
JSON = {"Content-Type": "application/json"}


# --- the rule file, shortened --------------------------------------------------


def _seconds(minutes: str) -> str:
    return f"{int(minutes) * SECONDS_PER_MINUTE}s"


def shortened_rules(text: str) -> str:
    """The rule file with every minute made `SECONDS_PER_MINUTE` seconds."""
    text = re.sub(r"(?m)^(\s*for: )(\d+)m$", lambda m: m[1] + _seconds(m[2]), text)
    text = re.sub(r"\[(\d+)m\]", lambda m: f"[{_seconds(m[1])}]", text)
    left = re.findall(r"(?m)^\s*for: \S*[^s\s]$|\[\d+[hdwy]\]", text)
    if left:
        raise SetupFailed(f"durations this script cannot shorten in {RULES.name}: {left}")
    return text


# --- Prometheus ---------------------------------------------------------------


class Prometheus:
    """A Prometheus process and its HTTP API."""

    def __init__(self, port: int) -> None:
        self.port = port

    def get(self, path: str, **params: object) -> Any:
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        url = f"http://127.0.0.1:{self.port}{path}" + (f"?{query}" if query else "")
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.load(response)
        if answer.get("status") != "success":
            raise SetupFailed(f"Prometheus refused {path} {params}: {answer}")
        return answer["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's vector (a scalar comes as one unlabelled sample)."""
        params: dict[str, object] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.get("/api/v1/query", **params)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def by_pod(self, expr: str, at: float | None = None) -> dict[str, float]:
        return {s["metric"].get("pod", ""): float(s["value"][1]) for s in self.query(expr, at)}

    def alerts(self) -> dict[tuple[str, str], str]:
        """{(alertname, pod): state} of every pending or firing alert; pod '' if it has none."""
        return {
            (a["labels"]["alertname"], a["labels"].get("pod", "")): a["state"]
            for a in self.get("/api/v1/alerts")["alerts"]
        }

    def targets(self) -> dict[str, str]:
        """{pod: health} of the active targets."""
        return {
            t["labels"]["pod"]: t["health"] for t in self.get("/api/v1/targets")["activeTargets"]
        }


def start_prometheus(
    processes: Processes, programs: dict[str, str], scrape: dict[str, dict[str, int]]
) -> Prometheus:
    """Prometheus on a free port, scraping {job: {pod: port}}, with the shortened rules."""
    directory = processes.directory / "prometheus"
    directory.mkdir()
    rules = directory / "rules.yaml"
    rules.write_text(shortened_rules(RULES.read_text()))
    config = {
        "global": {
            "scrape_interval": f"{SCRAPE_INTERVAL:g}s",
            "scrape_timeout": f"{SCRAPE_INTERVAL * 800:.0f}ms",
            "evaluation_interval": f"{SCRAPE_INTERVAL:g}s",
        },
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": job,
                "static_configs": [
                    {"targets": [f"127.0.0.1:{port}"], "labels": {"pod": pod}}
                    for pod, port in targets.items()
                ],
            }
            for job, targets in scrape.items()
        ],
    }
    path = directory / "prometheus.yml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    log(
        "promtool check config: "
        + run([programs["promtool"], "check", "config", str(path)], timeout=30)
        .strip()
        .replace("\n", "; ")
    )
    (port,) = free_ports(1)
    process = processes.start(
        "prometheus",
        [
            programs["prometheus"],
            f"--config.file={path}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
    )
    prometheus = Prometheus(port)

    def ready() -> bool:
        if not process.running():
            raise SetupFailed(f"prometheus exited:\n{process.log_tail()}")
        try:
            return http_request(port, "GET", "/-/ready", timeout=1.0)[0] == 200
        except HTTP_FAILURES:
            return False

    wait_until(ready, START_TIMEOUT, "Prometheus to be ready")
    return prometheus


# --- the service ----------------------------------------------------------------


def post(port: int, batch: list[dict[str, Any]], timeout: float = 10.0) -> int:
    return http_request(port, "POST", "/data", json.dumps(batch).encode(), JSON, timeout)[0]


def measurement(sensor: str, value: float = 1.0) -> dict[str, Any]:
    return {"sensor": sensor, "timestamp": "2021-11-09T21:38:09+01:00", "value": value}


def start_instances(processes: Processes, etcd: EtcdProcess) -> dict[str, int]:
    """Two instances on `etcd`: {pod: port}, once both are ready."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENSORSTATS_")}
    env.update(APP_ENV, SENSORSTATS_ETCD_ENDPOINTS=etcd.url, PYTHONPATH=str(ROOT))
    pods = dict(zip(SENT, free_ports(len(SENT)), strict=True))
    for pod, port in pods.items():
        argv = [sys.executable, "-m", "sensorstats", "--host", "127.0.0.1", "--port", str(port)]
        processes.start(pod, argv, env)
    for pod, port in pods.items():
        wait_until(lambda p=port: answers(p, "/healthz", 204), START_TIMEOUT, f"{pod} to be ready")
    return pods


class Writer:
    """One thread per instance posting one measurement at a time, until stopped."""

    def __init__(self, ports: Iterable[int]) -> None:
        self._stop = threading.Event()
        self.statuses: dict[int | str, int] = {}
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(port,), daemon=True) for port in ports
        ]

    def __enter__(self) -> Writer:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def _run(self, port: int) -> None:
        while not self._stop.is_set():
            try:
                status: int | str = post(port, [measurement(f"writer-{port}")], timeout=5)
            except HTTP_FAILURES as error:
                status = type(error).__name__
            with self._lock:
                self.statuses[status] = self.statuses.get(status, 0) + 1  # type: ignore[index]
            time.sleep(0.02)


# --- checks ---------------------------------------------------------------------


def wait_for_scrapes(count: int = 2) -> None:
    """Long enough for `count` scrapes of every target to have happened."""
    time.sleep(count * SCRAPE_INTERVAL + 0.5)


def check_targets(prometheus: Prometheus, pods: Iterable[str]) -> None:
    wanted = set(pods)
    wait_until(
        lambda: {p for p, h in prometheus.targets().items() if h == "up"} >= wanted,
        START_TIMEOUT,
        f"targets {sorted(wanted)} up",
    )
    log(f"targets up: {', '.join(sorted(prometheus.targets()))}")


def check_request_counter(prometheus: Prometheus, pods: dict[str, int]) -> None:
    """The counter rose by exactly what was sent, and increase() and rate() say so.

    Evaluated over the window from the last scrape before the sends to the
    first after them, increase() has nothing to extrapolate: it must be the
    requests sent, and rate() that many over the window.
    """
    counter = 'sensorstats_http_requests_total{route="/data", method="POST", status="204"}'
    wait_for_scrapes(1)
    began = time.time()
    for pod, count in SENT.items():
        for i in range(count):
            status = post(pods[pod], [measurement(f"counted-{pod}", i)])
            check(status == 204, f"POST /data to {pod}: {status}")
            time.sleep(SEND_PAUSE)
    ended = time.time()
    wait_for_scrapes()
    raw = prometheus.query(f"{counter}[{math.ceil(time.time() - began) + 5}s]")
    for series in raw:
        pod = series["metric"]["pod"]
        points = [(float(at), float(value)) for at, value in series["values"]]
        # A scrape's timestamp is when it started; its body a moment later.
        before = max((p for p in points if p[0] < began - SCRAPE_READ_LAG), default=None)
        after = min((p for p in points if p[0] > ended), default=None)
        if before is None or after is None:
            raise CheckFailed(f"{pod}: no scrape of the counter before or after the sends")
        rose, count = after[1] - before[1], SENT[pod]
        check(rose == count, f"{pod}: the counter rose by {rose:g}, {count} requests were sent")
        # Scrape times are whole milliseconds, sent as seconds since the epoch:
        # their difference in floats is off by up to a ten-millionth of a second.
        milliseconds = round((after[0] - before[0]) * 1000)
        window = f"{milliseconds}ms"
        increase = prometheus.by_pod(f"increase({counter}[{window}])", after[0])[pod]
        rate = prometheus.by_pod(f"rate({counter}[{window}])", after[0])[pod]
        seconds = milliseconds / 1000
        check(
            math.isclose(increase, count) and math.isclose(rate, count / seconds),
            f"{pod}: increase()[{window}] = {increase}, rate() = {rate}; sent {count}",
        )
        log(
            f"{pod}: {count} POSTs sent; between the scrapes around them (+{seconds:.1f} s) "
            f"the counter rose by {rose:g}, increase() = {increase:.2f}, rate() = {rate:.2f}/s"
        )
    check({s["metric"]["pod"] for s in raw} == set(SENT), f"the counter of {sorted(SENT)}: {raw}")


def named_metrics(expressions: Iterable[str]) -> set[str]:
    return {
        name
        for expr in expressions
        for name in re.findall(r"\b((?:sensorstats|process|etcd)_\w+|up)\b", expr)
    }


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, expression) of every target of every dashboard panel."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(p["title"], t["expr"]) for p in panels for t in p["targets"]]


def rule_expressions() -> list[str]:
    """The rule file's expressions, read without a YAML parser (the file's own layout)."""
    text = RULES.read_text()
    return re.findall(r"(?ms)^\s*expr: (?:\|\n)?(.*?)(?=^\s*(?:for|labels|annotations):)", text)


def check_metrics_and_panels(prometheus: Prometheus) -> None:
    panels = dashboard_expressions()
    expressions = rule_expressions() + [expr for _, expr in panels]
    names = named_metrics(expressions)
    missing = sorted(n for n in names if not prometheus.query(f'count({{__name__="{n}"}})'))
    check(not missing, f"named by the rules or the dashboard but not scraped: {missing}")
    log(f"all {len(names)} metrics the rules and the dashboard name have series")
    empty = []
    for title, expr in panels:
        if not prometheus.query(expr.replace("$__rate_interval", RATE_INTERVAL)):
            empty.append(f"{title}: {expr}")
    check(not empty, "dashboard expressions without data:\n  " + "\n  ".join(empty))
    log(f"all {len(panels)} expressions of the dashboard's panels return data")


def check_quiet(prometheus: Prometheus) -> None:
    alerts = prometheus.alerts()
    check(not alerts, f"alerts while every part is healthy: {alerts}")
    log("no alert pending or firing while every part is healthy")


def wait_for_alerts(
    prometheus: Prometheus, wanted: set[tuple[str, str]], what: str
) -> dict[tuple[str, str], str]:
    """Until every (alertname, pod) in `wanted` fires; logs each state as first seen."""
    began = time.monotonic()
    seen: dict[tuple[str, str], str] = {}
    last: dict[tuple[str, str], str] = {}

    def firing() -> bool:
        nonlocal last
        last = prometheus.alerts()
        for key, state in last.items():
            if seen.get(key) not in (state, "firing"):
                seen[key] = state
                log(f"  {time.monotonic() - began:5.1f} s: {key[0]} {key[1]} {state}")
        return all(last.get(key) == "firing" for key in wanted)

    check(
        eventually(firing, FIRE_WITHIN, 0.25),
        f"{what}: not all of {sorted(wanted)} fired within {FIRE_WITHIN:.0f} s: {last}",
    )
    return last


def wait_for_clear(prometheus: Prometheus, keys: set[tuple[str, str]] | None, what: str) -> None:
    """Until none of `keys` (every alert, for None) is pending or firing."""
    began = time.monotonic()
    last: dict[tuple[str, str], str] = {}

    def clear() -> bool:
        nonlocal last
        last = prometheus.alerts()
        return not (set(last) if keys is None else set(last) & keys)

    check(
        eventually(clear, CLEAR_WITHIN, 0.25),
        f"{what}: still pending or firing {CLEAR_WITHIN:.0f} s on: {last}",
    )
    log(f"  {time.monotonic() - began:5.1f} s: {what}")


def check_etcd_pause(prometheus: Prometheus, etcd: EtcdProcess, pods: dict[str, int]) -> None:
    wanted = {("SensorstatsInstanceNotReady", pod) for pod in pods}
    wanted |= {("SensorstatsCircuitBreakerOpen", pod) for pod in pods}
    wanted.add(("SensorstatsEtcdMemberDown", "etcd-0"))
    with Writer(pods.values()) as writer:
        etcd.pause()
        log("SIGSTOP etcd, while a writer posts to both instances:")
        try:
            fired = wait_for_alerts(prometheus, wanted, "etcd paused")
        finally:
            etcd.resume()
        others = sorted(f"{name} {pod}" for (name, pod) in fired if (name, pod) not in wanted)
        log("firing: " + ", ".join(sorted(f"{n} {p}" for n, p in wanted)))
        log("also pending or firing then: " + (", ".join(others) or "nothing"))
        log("SIGCONT etcd:")
        wait_for_clear(prometheus, wanted, "not ready, breaker and member down cleared")
    log(f"writer's answers during the outage: {writer.statuses}")
    wait_for_clear(prometheus, None, "every alert cleared")


def check_instance_kill(prometheus: Prometheus, processes: Processes, pods: dict[str, int]) -> None:
    victim, survivor = list(pods)
    (process,) = [p for p in processes.started if p.name == victim]
    process.kill()
    log(f"SIGKILL {victim}:")
    fired = wait_for_alerts(prometheus, {("SensorstatsDown", victim)}, f"{victim} killed")
    check(
        ("SensorstatsDown", survivor) not in fired,
        f"SensorstatsDown fires for {survivor}, which runs",
    )
    log(f"SensorstatsDown fires for {victim} and not for {survivor}")


# --- costs ----------------------------------------------------------------------


def samples(body: bytes) -> int:
    return sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))


def scrape_costs(prometheus: Prometheus, pods: dict[str, int]) -> None:
    """Series and bytes per scrape, its time; the series do not grow with sensor ids."""
    port = pods["sensorstats-0"]
    status, body = http_request(port, "GET", "/metrics")
    check(status == 200, f"GET /metrics: {status}")
    batch = [measurement(f"fresh-{i}") for i in range(NEW_SENSORS)]
    check(post(port, batch) == 204, f"POST of {NEW_SENSORS} new sensors")
    for i in range(0, NEW_SENSORS, 10):
        http_request(port, "GET", f"/statistics/fresh-{i}")
    after = http_request(port, "GET", "/metrics")[1]
    check(
        samples(after) == samples(body),
        f"the scrape went from {samples(body)} to {samples(after)} samples after "
        f"{NEW_SENSORS} new sensor ids",
    )
    times = []
    for _ in range(COST_SCRAPES):
        began = time.perf_counter()
        http_request(port, "GET", "/metrics")
        times.append(time.perf_counter() - began)
    times.sort()
    scraped = prometheus.by_pod('scrape_samples_scraped{job="sensorstats"}')
    duration = prometheus.by_pod('scrape_duration_seconds{job="sensorstats"}')
    log(
        f"a scrape: {samples(after)} samples, {len(after):,} bytes (the same after "
        f"{NEW_SENSORS} new sensor ids); GET /metrics over loopback: median "
        f"{statistics.median(times) * 1000:.1f} ms, p90 {times[int(0.9 * len(times))] * 1000:.1f} "
        f"ms of {COST_SCRAPES}; Prometheus counts "
        + ", ".join(
            f"{pod} {scraped[pod]:g} samples in {duration[pod] * 1000:.1f} ms"
            for pod in sorted(scraped)
        )
    )


# --- main -------------------------------------------------------------------------


def monitor(processes: Processes, programs: dict[str, str]) -> None:
    (metrics_port,) = free_ports(1)
    etcd = EtcdProcess(
        processes.directory / "etcd",
        name="etcd-0",
        extra_args=["--listen-metrics-urls", f"http://127.0.0.1:{metrics_port}"],
    )
    try:
        etcd.start()
        pods = start_instances(processes, etcd)
        log(f"etcd on :{etcd.client_port} (metrics :{metrics_port}); instances {pods}")
        prometheus = start_prometheus(
            processes, programs, {"sensorstats": pods, "etcd": {"etcd-0": metrics_port}}
        )
        log(
            f"Prometheus on :{prometheus.port}, scraping every {SCRAPE_INTERVAL:g} s; rules "
            f"with a minute as {SECONDS_PER_MINUTE} s"
        )
        check_targets(prometheus, [*pods, "etcd-0"])
        for port in pods.values():  # every series the dashboard draws, once
            post(port, [measurement("warm-up")])
            http_request(port, "POST", "/data", b"[", JSON)  # a rejected batch
            http_request(port, "GET", "/statistics/warm-up")
        wait_for_scrapes()
        check_request_counter(prometheus, pods)
        check_metrics_and_panels(prometheus)
        check_quiet(prometheus)
        scrape_costs(prometheus, pods)
        check_etcd_pause(prometheus, etcd, pods)
        check_instance_kill(prometheus, processes, pods)
    finally:
        etcd.stop()


def main(argv: Sequence[str] | None = None) -> int:
    directory = Path(tempfile.mkdtemp(prefix="sensorstats-monitoring-"))
    processes = Processes(directory)

    def work() -> int:
        programs = ensure_programs({"prometheus": "prometheus", "promtool": "prometheus"})
        with time_limit(OVERALL_TIMEOUT, "the monitoring check"):
            monitor(processes, programs)
        return 0

    passed = "monitoring check passed; every process stopped"
    return processes.conclude(run_script(work, processes.stop_all, passed=passed))


if __name__ == "__main__":
    sys.exit(main())
